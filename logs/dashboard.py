"""The usage dashboard, an admin page of its own (`/admin/usage/`): charts and tables of
`logs.services.usage_report`, each row linked to the matching request-log list, and its
tables as CSV (`?export=csv`, streamed)."""

from datetime import datetime, time, timedelta

from django import forms
from django.core.exceptions import PermissionDenied
from django.http import StreamingHttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.formats import date_format

from accounts.models import User
from aethergate.lib.money import format_money
from endpoints.models import Endpoint
from keys.models import APIKey
from logs.admin import csv_lines, log_list_query
from logs.services import COMPONENTS, PERCENTILES, UsageQuery, usage_report
from models_registry.models import Model

# The ranges offered, in hours back from the end of the current hour, and their bucket.
RANGES = {
    "24h": (24, "hour"),
    "7d": (24 * 7, "day"),
    "30d": (24 * 30, "day"),
    "90d": (24 * 90, "week"),
}
RANGE_CHOICES = [
    ("24h", "Last 24 hours"),
    ("7d", "Last 7 days"),
    ("30d", "Last 30 days"),
    ("90d", "Last 90 days"),
    ("custom", "From … to … (dates)"),
]
# Rows per breakdown chart and table (the most expensive first); totals count them all.
TOP = 10
# The longest range shown in hourly buckets: past it, a chart of hours is unreadable.
MAX_HOURLY_BUCKETS = 24 * 14
BREAKDOWNS = (
    ("by_model", "Model", "model"),
    ("by_user", "Top spenders (users)", "username"),
    ("by_key", "API key", "key_prefix"),
    ("by_endpoint", "Endpoint", "endpoint"),
)


def may_view(user) -> bool:
    """Whether `user` may open the dashboard: who may read request logs may read their usage."""
    return user.is_active and user.is_staff and user.has_perm("logs.view_requestlog")


class NameField(forms.ChoiceField):
    """A name offered from its registry, or any other: usage outlives a deleted model."""

    def valid_value(self, value):
        return True


class UsageForm(forms.Form):
    """The dashboard's question: a range, a bucket size, and optional filters (ids and names)."""

    range = forms.ChoiceField(choices=RANGE_CHOICES, required=False, initial="7d")
    since = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}))
    until = forms.DateField(
        required=False,
        widget=forms.DateInput(attrs={"type": "date"}),
        help_text="Included.",
    )
    bucket = forms.ChoiceField(
        choices=[("", "Automatic"), ("hour", "Hour"), ("day", "Day"), ("week", "Week")],
        required=False,
    )
    user = forms.TypedChoiceField(coerce=int, required=False, empty_value=None)
    key = forms.TypedChoiceField(coerce=int, required=False, empty_value=None, label="API key")
    model = NameField(required=False)
    endpoint = NameField(required=False)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Choices from the small tables (one query each), never from the logs.
        users = User.objects.order_by("username").values_list("pk", "username")
        keys = APIKey.objects.order_by("owner__username", "name").values_list(
            "pk", "name", "prefix", "owner__username"
        )
        self.fields["user"].choices = [("", "All users"), *users]
        self.fields["key"].choices = [
            ("", "All keys"),
            *((pk, f"{owner} / {name} ({prefix}…)") for pk, name, prefix, owner in keys),
        ]
        for name, registry in (("model", Model), ("endpoint", Endpoint)):
            names = list(registry.objects.order_by("name").values_list("name", flat=True))
            asked = self.data.get(name)
            if asked and asked not in names:
                names.append(asked)  # so that the select shows it chosen
            self.fields[name].choices = [("", f"All {name}s"), *((n, n) for n in names)]

    def clean(self):
        data = super().clean()
        if data.get("range") == "custom":
            since, until = data.get("since"), data.get("until")
            if since is None or until is None:
                raise forms.ValidationError("A custom range needs both dates.")
            if until < since:
                raise forms.ValidationError("The range ends before it starts.")
        return data

    def query(self, now: datetime) -> UsageQuery:
        """The UsageQuery of this valid form, ranges ending with the current hour at `now`."""
        data = self.cleaned_data
        chosen = data.get("range") or "7d"
        zone = timezone.get_current_timezone()
        if chosen == "custom":
            since = datetime.combine(data["since"], time(), tzinfo=zone)
            until = datetime.combine(data["until"] + timedelta(days=1), time(), tzinfo=zone)
            hours = (until - since) / timedelta(hours=1)
            bucket = "hour" if hours <= 48 else "day" if hours <= 24 * 62 else "week"
        else:
            hours, bucket = RANGES[chosen]
            until = now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
            since = until - timedelta(hours=hours)
        if data.get("bucket"):
            bucket = data["bucket"]
        if bucket == "hour" and (until - since) > timedelta(hours=MAX_HOURLY_BUCKETS):
            bucket = "day"
        return UsageQuery(
            since=since,
            until=until,
            bucket=bucket,
            user_id=data.get("user"),
            api_key_id=data.get("key"),
            model=data.get("model") or None,
            endpoint=data.get("endpoint") or None,
        )


def usage_view(request, admin_site):
    """The dashboard page; with `?export=csv`, its tables as CSV."""
    if not may_view(request.user):
        raise PermissionDenied
    form = UsageForm(request.GET or None)
    context = {**admin_site.each_context(request), "title": "Usage", "form": form}
    if request.GET and not form.is_valid():
        return TemplateResponse(request, "admin/logs/usage.html", context, status=400)
    if not request.GET:
        form = UsageForm({"range": "7d"})
        form.is_valid()
        context["form"] = form
    query = form.query(timezone.now())
    report = usage_report(query, limit=TOP)
    if request.GET.get("export") == "csv":
        response = StreamingHttpResponse(
            csv_lines(table_rows(query, report)), content_type="text/csv; charset=utf-8"
        )
        response["Content-Disposition"] = 'attachment; filename="usage.csv"'
        return response
    context.update(dashboard(query, report))
    context["export_query"] = f"{request.GET.urlencode() or 'range=7d'}&export=csv"
    return TemplateResponse(request, "admin/logs/usage.html", context)


def dashboard(query: UsageQuery, report: dict) -> dict:
    """The template's context: shown numbers, each row's log-list link, and the charts' data."""
    logs_url = reverse("admin:logs_requestlog_changelist")
    filters = {
        "user_id": query.user_id,
        "api_key_id": query.api_key_id,
        "model": query.model,
        "endpoint": query.endpoint,
    }

    def link(since, until, **row):
        return f"{logs_url}?{log_list_query(since=since, until=until, **(filters | row))}"

    since, until = report["since"], report["until"]
    series = []
    for index, bucket in enumerate(report["series"]):
        following = (
            report["series"][index + 1]["start"] if index + 1 < len(report["series"]) else until
        )
        start = max(bucket["start"], since)
        series.append(_shown(bucket, label=_label(bucket["start"], query.bucket),
                             link=link(start, following)))  # fmt: skip
    tables = []
    for key, title, name in BREAKDOWNS:
        rows = []
        for group in report[key]:
            dims = {field: group[field] for field in ("user_id", "username", "api_key_id",
                    "key_prefix", "model", "endpoint") if field in group}  # fmt: skip
            rows.append(
                _shown(group, label=_row_label(key, group, name), link=link(since, until, **dims))
            )
        tables.append({"id": key, "title": title, "rows": rows})
    outcomes = [
        {**group, "share_shown": f"{group['share']:.1%}",
         "link": link(since, until, outcome=group["outcome"])}
        for group in report["by_outcome"]
    ]  # fmt: skip
    timings = [
        {
            "name": f"p{p}",
            "latency": report["latency"][f"p{p}_ms"],
            "ttft": report["ttft"][f"p{p}_ms"],
        }
        for p in PERCENTILES
    ]
    totals = report["totals"]
    return {
        "report": report,
        "query": query,
        "range_label": f"{date_format(timezone.localtime(since), 'Y-m-d H:i')} to "
        f"{date_format(timezone.localtime(until), 'Y-m-d H:i')}",
        "totals": {**_shown(totals), "error_rate_shown": f"{totals['error_rate']:.1%}",
                   "link": link(since, until)},
        "series": series,
        "tables": tables,
        "outcomes": outcomes,
        "timings": timings,
        "latency": report["latency"],
        "ttft": report["ttft"],
        "charts": {
            "series": _chart(series, ("requests", "input_units", "output_units", "cost",
                                      "uncached_units", "cache_read_units", "cache_write_units")),
            **{t["id"]: _chart(t["rows"], ("requests", "cost")) for t in tables},
            "outcomes": {
                "labels": [o["outcome"] for o in outcomes],
                "requests": [o["requests"] for o in outcomes],
                "links": [o["link"] for o in outcomes],
            },
            "timings": {
                "labels": [t["name"] for t in timings],
                "latency": [t["latency"] for t in timings],
                "ttft": [t["ttft"] for t in timings],
            },
        },
    }  # fmt: skip


def _shown(group: dict, **extra) -> dict:
    """`group`'s sums, with what the page shows of them: the cost rounded, and the input
    not read from or written to the upstream's cache."""
    uncached = group["input_units"] - group["cache_read_units"] - group["cache_write_units"]
    return {**group, **extra, "cost_shown": format_money(group["cost"]), "uncached_units": uncached}


def _chart(rows: list[dict], fields: tuple[str, ...]) -> dict:
    """A chart's data: labels, one list per field (costs as numbers), and each point's link."""
    data = {"labels": [row["label"] for row in rows], "links": [row["link"] for row in rows]}
    for field in fields:
        data[field] = [float(row[field]) if field == "cost" else row[field] for row in rows]
    return data


def _label(start: datetime, bucket: str) -> str:
    local = timezone.localtime(start)
    if bucket == "hour":
        return date_format(local, "m-d H:i")
    return date_format(local, "Y-m-d") if bucket == "day" else f"week of {local:%Y-%m-%d}"


def _row_label(key: str, group: dict, name: str) -> str:
    if key == "by_key":
        named = f"{group['name']} " if group["name"] else ""
        return f"{group['username']} / {named}({group['key_prefix']}…)"
    return group[name] or "(none)"


# The sums each CSV row has, in its columns' order (the components last, as they came last).
SUMS = ("requests", "input_units", "output_units", "cost", "errors", *COMPONENTS)


def table_rows(query: UsageQuery, report: dict):
    """The dashboard's tables as CSV rows: a header, then a row per bucket, group and outcome,
    in full precision."""
    yield ("table", "label", "start", *SUMS)
    for bucket in report["series"]:
        yield ("time", _label(bucket["start"], query.bucket), bucket["start"].isoformat(),
               *_sums(bucket))  # fmt: skip
    for key, _, name in BREAKDOWNS:
        for group in report[key]:
            yield (key, _row_label(key, group, name), "", *_sums(group))
    for group in report["by_outcome"]:
        yield ("by_outcome", group["outcome"], "", group["requests"], *[""] * (len(SUMS) - 1))


def _sums(group: dict) -> tuple:
    return tuple(group[f] for f in SUMS)
