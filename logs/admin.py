"""Read-only admin for request logs (totals, filters, CSV export) and the audit log."""

import csv
from urllib.parse import urlencode

from django.contrib import admin
from django.contrib.admin.options import IncorrectLookupParameters
from django.core.exceptions import PermissionDenied
from django.http import HttpResponseBadRequest, StreamingHttpResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.utils.formats import date_format
from django.utils.html import format_html, format_html_join

from accounts.admin import UserAdmin
from aethergate.lib import audit
from aethergate.lib.admin import SecretSearchAdmin
from aethergate.lib.money import format_money
from endpoints.models import Endpoint
from keys.admin import APIKeyAdmin
from keys.models import looks_like_secret
from logs.models import AuditEntry, RequestLog
from logs.services import budget_spent, log_totals, usage_summary
from models_registry.models import Model


class ReadOnlyAdmin(admin.ModelAdmin):
    """Viewable and filterable, never added, edited or deleted here."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class NameFilter(admin.SimpleListFilter):
    """A column of names (model, endpoint) offered from its registry's small table.

    Django's own filter for a column lists its distinct values, a scan of the whole
    log table at every page view. A name no longer registered still filters when
    it comes in the address (the dashboard's links).
    """

    registry: type  # the model whose `name` column lists the choices

    def lookups(self, request, model_admin):
        names = self.registry.objects.order_by("name").values_list("name", flat=True)
        return [(name, name) for name in names]

    def has_output(self):
        return True  # else Django skips it, and an unregistered name in the address too

    def queryset(self, request, queryset):
        value = self.value()
        return queryset if value is None else queryset.filter(**{self.parameter_name: value})


class ModelFilter(NameFilter):
    title = parameter_name = "model"
    registry = Model


class EndpointFilter(NameFilter):
    title = parameter_name = "endpoint"
    registry = Endpoint


class SurfaceFilter(admin.SimpleListFilter):
    """Which API a request used, told by its path (`/v1/responses/{id}` is the Responses API)."""

    title = "API"
    parameter_name = "surface"
    PATHS = {
        "chat": ("Chat completions", "/v1/chat/completions"),
        "completions": ("Completions", "/v1/completions"),
        "embeddings": ("Embeddings", "/v1/embeddings"),
        "responses": ("Responses", "/v1/responses"),
        "messages": ("Anthropic Messages", "/v1/messages"),
        "images": ("Images", "/v1/images/"),
        "audio": ("Audio", "/v1/audio/"),
    }

    def lookups(self, request, model_admin):
        return [(name, label) for name, (label, _) in self.PATHS.items()]

    def queryset(self, request, queryset):
        found = self.PATHS.get(self.value())
        return queryset if found is None else queryset.filter(path__startswith=found[1])


# The list filters the dashboard's links set (`log_list_query`), by parameter.
USER, KEY, OUTCOME = "user__id__exact", "api_key__id__exact", "outcome__exact"
SINCE, UNTIL = "created_at__gte", "created_at__lt"
# The list's parameters the rollups can answer for (`kept_filters`), and those that
# select nothing (ordering, page, facets).
KEPT = {USER: "user_id", KEY: "api_key_id", "model": "model", "endpoint": "endpoint",
        OUTCOME: "outcome"}  # fmt: skip
NEUTRAL = {"o", "p", "_facets"}


def kept_filters(params) -> dict | None:
    """`log_totals`'s `kept` for the list's query `params`, or None when some filter
    (search, status, a date drill-down, …) is one the rollups do not keep."""
    if not set(params) <= {*KEPT, SINCE, UNTIL, *NEUTRAL}:
        return None
    kept = {}
    try:
        for param, name in ((SINCE, "since"), (UNTIL, "until")):
            if param in params:
                when = parse_datetime(params[param])
                if when is None or when.tzinfo is None:
                    return None
                kept[name] = when
        for param, name in KEPT.items():
            if param in params:
                kept[name] = int(params[param]) if name.endswith("_id") else params[param]
    except ValueError:
        return None
    return kept


def log_list_query(*, since, until, **filters) -> str:
    """The request-log list's query string for a range and the filters of a usage row.

    `filters` are UsageRollup columns: user_id, username, api_key_id,
    key_prefix, model, endpoint, outcome; a user or key id of 0 (deleted)
    falls back to its snapshot name.
    """
    params = {SINCE: since.isoformat(), UNTIL: until.isoformat()}
    if filters.get("user_id"):
        params[USER] = filters["user_id"]
    elif filters.get("username"):
        params["username"] = filters["username"]
    if filters.get("api_key_id"):
        params[KEY] = filters["api_key_id"]
    elif filters.get("key_prefix"):
        params["key_prefix"] = filters["key_prefix"]
    for name, param in (("model", "model"), ("endpoint", "endpoint"), ("outcome", OUTCOME)):
        if filters.get(name) is not None:
            params[param] = filters[name]
    return urlencode(params)


UNKNOWN = "the model had no price when the request was made"


def uncached_units(log) -> int:
    """The input units not read from or written to the upstream's prompt cache."""
    return log.input_units - log.cache_read_units - log.cache_write_units


def cached_text(log) -> str:
    """What of a row's input the cache served or took ("" for none): "48 cached", "48
    cached, 8 written"."""
    parts = []
    if log.cache_read_units:
        parts.append(f"{log.cache_read_units} cached")
    if log.cache_write_units:
        parts.append(f"{log.cache_write_units} written")
    return ", ".join(parts)


def usage_summary_text(log) -> str:
    """A row's units in words, for the list cell's title."""
    text = f"{log.input_units} in ({uncached_units(log)} uncached"
    text += f", {log.cache_read_units} read from the cache, {log.cache_write_units} written)"
    return f"{text}; {log.output_units} out ({log.reasoning_units} reasoning)"


@admin.register(RequestLog)
class RequestLogAdmin(SecretSearchAdmin, ReadOnlyAdmin):
    """Logs are an audit trail: viewable and filterable, never added or edited here.

    The list is headed by the totals of what its filters select (`log_totals`)
    and exports them as CSV (`export/`, streamed). Old rows go through
    retention (`prune_logs`), not through the admin.
    """

    date_hierarchy = "created_at"
    # What fits a 1366 px screen; the rest is on each row's page.
    list_display = (
        "time",
        "username",
        "key",
        "model",
        "outcome",
        "units",
        "cost_shown",
        "latency",
    )
    list_filter = (
        ("created_at", admin.DateFieldListFilter),
        "outcome",
        ("user", admin.RelatedFieldListFilter),
        ("api_key", admin.RelatedFieldListFilter),
        ModelFilter,
        EndpointFilter,
        SurfaceFilter,
        "stream",
        "usage_estimated",
        "cost_unknown",
    )
    search_fields = ("request_id", "username", "key_prefix", "model")
    search_help_text = "Request id, username, key prefix or model."
    readonly_fields = ("created_at_exact", "usage_table", "cost_exact")
    fieldsets = (
        (None, {"fields": ("created_at_exact", "request_id", "user", "username", "api_key",
                           "key_prefix", "model", "endpoint", "path", "status", "outcome",
                           "stream", "latency_ms", "ttft_ms", "error", "attempts")}),
        ("Usage and cost", {"fields": ("usage_table", "usage_estimated", "cost_exact")}),
        ("Content", {"fields": ("prompt_text", "completion_text")}),
    )  # fmt: skip
    looks_like_secret = staticmethod(looks_like_secret)
    refused_kind = "key"
    refused_advice = "Search by its prefix, and consider rotating it if that address was logged."
    # Counting a large log table on every page view is what makes admins slow.
    show_full_result_count = False
    list_per_page = 100

    @admin.display(description="time", ordering="created_at")
    def time(self, log):
        # To the second: requests a few seconds apart must read apart. The year is
        # in the title (and on the row's page), to keep the column narrow.
        local = timezone.localtime(log.created_at)
        return format_html(
            '<span title="{}" style="white-space: nowrap">{}</span>',
            date_format(local, "Y-m-d H:i:s T"),
            date_format(local, "m-d H:i:s"),
        )

    @admin.display(description="key", ordering="key_prefix")
    def key(self, log):
        return format_html('<span style="white-space: nowrap">{}</span>', log.key_prefix)

    @admin.display(description="ms", ordering="latency_ms")
    def latency(self, log):
        return "-" if log.latency_ms is None else log.latency_ms

    @admin.display(description="time")
    def created_at_exact(self, log):
        return date_format(timezone.localtime(log.created_at), "Y-m-d H:i:s.u T")

    @admin.display(description="units in / out")
    def units(self, log):
        # The cached part under the totals, small: the whole breakdown is in the title
        # and on the row's page, so the column stays narrow.
        units = format_html(
            '<span title="{}">{} / {}</span>',
            usage_summary_text(log),
            log.input_units,
            log.output_units,
        )
        cached = cached_text(log)
        if not cached:
            return units
        return format_html(
            '{}<br><small style="color: var(--body-quiet-color)">{}</small>', units, cached
        )

    @admin.display(description="cost", ordering="cost")
    def cost_shown(self, log):
        if log.cost_unknown:
            return format_html(
                '<span style="color: var(--error-fg)" title="{}">unknown</span>', UNKNOWN
            )
        return format_money(log.cost)

    @admin.display(description="cost")
    def cost_exact(self, log):
        if log.cost_unknown:
            return f"unknown: {UNKNOWN} ({format_money(log.cost)} charged)"
        return f"{format_money(log.cost)} (exactly {log.cost})"

    @admin.display(description="units")
    def usage_table(self, log):
        rows = [
            ("input", "input (all)", log.input_units),
            ("uncached", "\u2003uncached", uncached_units(log)),
            ("cache-read", "\u2003read from the cache", log.cache_read_units),
            ("cache-write", "\u2003written to the cache", log.cache_write_units),
            ("output", "output", log.output_units),
            ("reasoning", "\u2003reasoning", log.reasoning_units),
        ]
        return format_html(
            '<table class="usage-units"><tbody>{}</tbody></table>',
            format_html_join(
                "",
                '<tr><th scope="row">{}</th><td data-units="{}">{}</td></tr>',
                ((label, name, value) for name, label, value in rows),
            ),
        )

    def get_urls(self):
        export = self.admin_site.admin_view(self.export_view)
        return [path("export/", export, name="logs_requestlog_export"), *super().get_urls()]

    def changelist_view(self, request, extra_context=None):
        response = super().changelist_view(request, extra_context)
        changelist = getattr(response, "context_data", {}).get("cl")
        if changelist is not None:  # not a redirect or an error page
            totals = log_totals(changelist.queryset, kept=kept_filters(request.GET))
            totals["cost_shown"] = format_money(totals["cost"])
            response.context_data["totals"] = totals
            response.context_data["export_query"] = request.GET.urlencode()
        return response

    def export_view(self, request):
        """The rows the list's filters select, as CSV, streamed (see `export_rows`)."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        try:
            changelist = self.get_changelist_instance(request)
        except IncorrectLookupParameters:
            return HttpResponseBadRequest("Those filters are not valid for request logs.")
        response = StreamingHttpResponse(
            csv_lines(export_rows(changelist.queryset)), content_type="text/csv; charset=utf-8"
        )
        response["Content-Disposition"] = 'attachment; filename="request-logs.csv"'
        return response


def usage_panel(*, user_id=None, api_key_id=None) -> str:
    """The "Usage" block of a user's or key's page: requests and spend today, this month and
    in all (`usage_summary`), the last request, and links to its logs and its dashboard."""
    if user_id is None and api_key_id is None:
        return "-"  # a page adding one: no usage yet
    summary = usage_summary(user_id=user_id, api_key_id=api_key_id)
    logs = reverse("admin:logs_requestlog_changelist")
    if user_id is not None:
        logs_query, dashboard_query = f"{USER}={user_id}", f"user={user_id}&range=30d"
    else:
        logs_query, dashboard_query = f"{KEY}={api_key_id}", f"key={api_key_id}&range=30d"
    rows = format_html_join(
        "",
        '<tr><th scope="row">{}</th><td data-usage="{}-requests">{}</td>'
        '<td data-usage="{}-cost" title="{}">{}</td></tr>',
        (
            (label, name, summary[name]["requests"], name, summary[name]["cost"],
             format_money(summary[name]["cost"]))
            for name, label in (("today", "Today"), ("month", "This month"), ("all", "All time"))
        ),
    )  # fmt: skip
    last = summary["last_used"]
    return format_html(
        '<table class="usage-summary"><thead><tr><th></th><th>Requests</th><th>Spend</th></tr>'
        "</thead><tbody>{}</tbody></table>"
        '<p>Last request: <span data-usage="last">{}</span> &middot; '
        '<a href="{}?{}" class="usage-logs-link">Request logs</a> &middot; '
        '<a href="{}?{}">Usage dashboard</a></p>',
        rows,
        date_format(timezone.localtime(last), "Y-m-d H:i:s") if last else "never",
        logs,
        logs_query,
        reverse("admin:usage"),
        dashboard_query,
    )


def budget_line(field: str, owner) -> str:
    """What `owner` (a User or APIKey with a budget) has spent in its budget's current period,
    from the stored usage; "" without a budget."""
    if owner is None or owner.pk is None or (owner.budget is None and owner.budget_soft is None):
        return ""
    start, end, spent = budget_spent(field, owner.pk, owner.budget_period)
    parts = [f"{format_money(spent)} spent"]
    if owner.budget is not None:
        parts[0] += f" of {format_money(owner.budget)}"
    if owner.budget_period != "none":
        parts.append(f"since {date_format(timezone.localtime(start), 'Y-m-d H:i')}")
    if end is not None:
        parts.append(f"resets {date_format(timezone.localtime(end), 'Y-m-d H:i')}")
    return "Budget: " + ", ".join(parts) + "."


def _user_usage(model_admin, user):
    return _with_budget(usage_panel(user_id=user.pk if user else None), "user_id", user)


def _key_usage(model_admin, key):
    return _with_budget(usage_panel(api_key_id=key.pk if key else None), "api_key_id", key)


def _with_budget(panel, field: str, owner):
    line = budget_line(field, owner)
    return format_html('<p class="usage-budget">{}</p>{}', line, panel) if line else panel


# Each user's and key's page gains a "Usage" block. Set from here, as keys/admin.py adds
# a user's keys: accounts and keys, below logs in the layers, cannot import it.
UserAdmin.usage = admin.display(description="usage")(_user_usage)
UserAdmin.readonly_fields = (*UserAdmin.readonly_fields, "usage")
UserAdmin.fieldsets = (*UserAdmin.fieldsets, ("Usage", {"fields": ("usage",)}))
APIKeyAdmin.usage = admin.display(description="usage")(_key_usage)
APIKeyAdmin.readonly_fields = (*APIKeyAdmin.readonly_fields, "usage")
APIKeyAdmin.fieldsets = (*APIKeyAdmin.fieldsets, ("Usage", {"fields": ("usage",)}))


# The exported columns: everything but the prompt and completion text (see the README).
EXPORT_FIELDS = (
    "created_at",
    "request_id",
    "user_id",
    "username",
    "api_key_id",
    "key_prefix",
    "model",
    "endpoint",
    "path",
    "status",
    "outcome",
    "stream",
    "latency_ms",
    "ttft_ms",
    "input_units",
    "cache_read_units",
    "cache_write_units",
    "output_units",
    "reasoning_units",
    "usage_estimated",
    "cost",
    "cost_unknown",
    "error",
)


def export_rows(logs):
    """The header, then one row per log, read a chunk at a time (never all at once)."""
    yield EXPORT_FIELDS
    rows = logs.order_by("-created_at", "-id").values_list(*EXPORT_FIELDS)
    for row in rows.iterator(chunk_size=2000):
        # ISO 8601 in UTC, and the cost in full: an export is for machines.
        yield (row[0].isoformat(), *row[1:])


class _Echo:
    """A file that hands back what is written, so that csv.writer makes lines to stream."""

    def write(self, value):
        return value


def csv_lines(rows):
    """Each row of `rows` as a CSV line."""
    writer = csv.writer(_Echo())
    for row in rows:
        yield writer.writerow(row)


@admin.register(AuditEntry)
class AuditEntryAdmin(ReadOnlyAdmin):
    """Who changed what, from where. Old entries go only through `prune_audit`."""

    date_hierarchy = "at"
    list_display = (
        "at",
        "actor_name",
        "surface",
        "address",
        "action",
        "object_kind",
        "object_name",
        "changed_fields",
    )
    list_filter = (
        "surface",
        "object_kind",
        "action",
        ("actor", admin.RelatedOnlyFieldListFilter),
        "actor_name",
        ("at", admin.DateFieldListFilter),
    )
    search_fields = ("actor_name", "object_name", "object_id", "address", "command")
    fields = (*AuditEntry.SHOWN, "changes_table")
    show_full_result_count = False
    list_per_page = 100

    @admin.display(description="changed")
    def changed_fields(self, entry):
        return ", ".join(entry.changes) if isinstance(entry.changes, dict) else ""

    @admin.display(description="changes")
    def changes_table(self, entry):
        if not isinstance(entry.changes, dict) or not entry.changes:
            return "—"
        rows = (
            (field, "changed (secret)" if value == audit.CHANGED else _transition(value))
            for field, value in entry.changes.items()
        )
        return format_html_join("", "<div><b>{}</b>: {}</div>", rows)


def _transition(value) -> str:
    if isinstance(value, list) and len(value) == 2:
        return f"{value[0]!r} → {value[1]!r}"
    return repr(value)
