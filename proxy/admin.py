"""The admin pages that need the proxy: the endpoint page's "Test connection" (GET
{base_url}/models) and "Import models", the "Deployments now" panel of the model and
endpoint pages, which shows what this process's router knows of each deployment, and the
read-only list of stored responses (the proxy's own model).

Here because only the proxy, at the top of the layers, may use the upstream client
(proxy.upstream), the running Runtime and the model catalog; the endpoints and
models_registry apps know none of them.
"""

import json
import math
import os
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from asgiref.sync import async_to_sync
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.db.models import Exists, OuterRef
from django.http import Http404, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.decorators import method_decorator
from django.utils.html import format_html
from django.views.decorators.http import require_http_methods

from aethergate.lib.admin import count
from endpoints.admin import EndpointAdmin as BaseEndpointAdmin
from endpoints.models import Endpoint
from logs.admin import ModelFilter
from models_registry import services as catalog
from models_registry.admin import ModelAdmin as BaseModelAdmin
from models_registry.models import Deployment, Model
from proxy import upstream
from proxy.health import CLOSED, HALF_OPEN, OPEN, BreakerPolicy
from proxy.models import StoredResponse
from proxy.runtime import Runtime
from proxy.snapshot import EndpointInfo

NAMED_AT_MOST = 10  # models a delete page names before it says "and N more"
UNMEASURED = "\u2013"  # an en dash: nothing measured (no request in the window, no answer yet)


# --------------------------------------------------------------------------- deployments now


@dataclass(frozen=True)
class LiveRow:
    """One deployment on the "Deployments now" panel, in words for people."""

    name: str  # "gpu-a/llama3:8b" on a model's page, "llama3 (llama3:8b)" on an endpoint's
    url: str  # the page of what `name` names besides the deployment
    weight: int
    priority: int
    idle: str  # why it gets no requests whatever its state ("" if it may get some)
    state: str  # "closed", "open", "half_open", or "" when this process has no state for it
    shown: str  # the state as the panel words it
    error_rate: str
    in_flight: str
    ttfb: str


@dataclass(frozen=True)
class LiveState:
    """The "Deployments now" panel: whether a runtime serves `/v1` in this process, and rows."""

    served: bool
    pid: int
    window: float  # seconds the error rate is counted over
    heading: str  # what the first column names: "Deployment" or "Model"
    rows: list[LiveRow]


def idle_reason(deployment: Deployment) -> str:
    """Why `deployment` gets no requests whatever its breaker says; "" when it may get some
    (the rule of Deployment.objects.serving, and an active model)."""
    if not deployment.model.is_active:
        return "model inactive"
    if not deployment.endpoint.is_active:
        return "endpoint inactive"
    if deployment.weight == 0:
        return "drained (weight 0)"
    return ""


def shown_state(state: dict | None, now: datetime) -> str:
    """A deployment's state (Router.states) in words, with `now` the wall-clock time."""
    if state is None:
        return "No traffic seen by this process yet"
    if state["state"] == OPEN:
        seconds = math.ceil(state["reopens_in"])  # whole seconds, both ways: it has by then
        until = timezone.localtime(now + timedelta(seconds=seconds))
        return f"open until {until:%H:%M:%S} (reopens in {seconds} s)"
    if state["state"] == HALF_OPEN:
        return "half-open: the next request is a trial"
    return "closed" if state["state"] == CLOSED else state["state"]


def live_rows(deployments, states: dict[int, dict], now: datetime, *, by_model: bool):
    """The panel's rows for `deployments` (with model and endpoint loaded), given what the
    router knows of them (`states`, by id); named by endpoint, or `by_model` by model."""
    rows = []
    for d in deployments:
        state = states.get(d.pk)
        if by_model:
            name = f"{d.model} ({d.upstream_name})"
            url = reverse("admin:models_registry_model_change", args=[d.model_id])
        else:
            name = f"{d.endpoint}/{d.upstream_name}"
            url = reverse("admin:endpoints_endpoint_change", args=[d.endpoint_id])
        rate = state and state["error_rate"]
        ttfb = state and state["ttfb"]
        rows.append(
            LiveRow(
                name=name,
                url=url,
                weight=d.weight,
                priority=d.priority,
                idle=idle_reason(d),
                state=state["state"] if state else "",
                shown=shown_state(state, now),
                error_rate=UNMEASURED if rate is None else f"{rate:.0%}",
                in_flight=str(state["in_flight"]) if state else UNMEASURED,
                ttfb=UNMEASURED if ttfb is None else milliseconds(ttfb),
            )
        )
    return rows


def milliseconds(seconds: float) -> str:
    """ "420 ms"; under 10 ms with a decimal ("0.4 ms"), as a local upstream answers."""
    ms = seconds * 1000
    return f"{ms:.1f} ms" if ms < 10 else f"{ms:.0f} ms"


async def _states(runtime: Runtime, ids: list[int]) -> dict[int, dict]:
    return runtime.router.states(ids)


class LiveStateAdmin(admin.ModelAdmin):
    """Adds the "Deployments now" panel (`deployments_now` in the change page's context)."""

    wall_clock = staticmethod(timezone.now)  # what "open until" counts from (a test seam)
    live_by_model = False  # the rows named by endpoint (a model's page) or by model

    class Media:
        css = {"all": ("proxy/deployments_now.css",)}

    def live_deployments(self, obj):
        """The deployments of `obj` the panel lists, with their model and endpoint."""
        raise NotImplementedError

    def render_change_form(self, request, context, add=False, change=False, form_url="", obj=None):
        if obj is not None and change:
            context["deployments_now"] = self.live_state(request, list(self.live_deployments(obj)))
        return super().render_change_form(request, context, add, change, form_url, obj)

    def live_state(self, request, deployments) -> LiveState:
        runtime = Runtime.of_request(request)
        states = {}
        if runtime is not None and deployments:
            # On the server's event loop, where the router's requests change it: reading
            # it from this worker thread could interleave with a trip half made.
            states = async_to_sync(_states)(runtime, [d.pk for d in deployments])
        policy = runtime.router.policy if runtime else BreakerPolicy.from_settings()
        return LiveState(
            served=runtime is not None,
            pid=os.getpid(),
            window=policy.window,
            heading="Model" if self.live_by_model else "Deployment",
            rows=live_rows(deployments, states, self.wall_clock(), by_model=self.live_by_model),
        )


class ModelAdmin(LiveStateAdmin, BaseModelAdmin):
    """The models_registry admin, with the live state of the model's deployments."""

    change_form_template = "admin/proxy/model_change_form.html"

    def live_deployments(self, obj):
        return obj.deployments.select_related("model", "endpoint")


def upstream_models(endpoint: Endpoint) -> tuple[list[str], str, float]:
    """(model ids, "" or why there are none, seconds taken) from GET {base_url}/models."""
    info = EndpointInfo.from_model(endpoint)
    if not info.usable:
        return [], "Its credential cannot be decrypted (was the encryption key changed?).", 0.0
    started = time.monotonic()
    try:
        ids = async_to_sync(upstream.list_models)(info, seconds=upstream.MODEL_LIST_TIMEOUT)
    except upstream.ModelListFailed as failure:
        return [], str(failure), time.monotonic() - started
    return ids, "", time.monotonic() - started


class EndpointAdmin(LiveStateAdmin, BaseEndpointAdmin):
    """The endpoints app's admin, with the "Test connection" page and its import form, the
    live state of the deployments on the endpoint, and delete notes that name the models."""

    live_by_model = True

    change_form_template = "admin/proxy/endpoint_change_form.html"

    def live_deployments(self, obj):
        return obj.deployments.select_related("model", "endpoint").order_by(
            "model__name", "priority", "-weight", "pk"
        )

    def delete_notes(self, objs):
        losing = Model.objects.filter(deployments__endpoint__in=objs).distinct()
        elsewhere = Deployment.objects.filter(model=OuterRef("pk")).exclude(endpoint__in=objs)
        stranded = [m.name for m in losing.exclude(Exists(elsewhere))]
        names = [m.name for m in losing]
        if not names:
            return ["No model has a deployment on it.", *super().delete_notes(objs)]
        what = "the endpoint" if len(objs) == 1 else "the endpoints"
        notes = [
            f"{count(len(names), 'model loses', 'models lose')} a deployment, deleted with "
            f"{what}: {listed(names)}. The models stay in the catalog."
        ]
        if stranded:
            notes.append(
                f"{count(len(stranded), 'model has', 'models have')} no other deployment "
                f"and cannot be served until one is added: {listed(stranded)}."
            )
        return [*notes, *super().delete_notes(objs)]

    def get_urls(self):
        page = self.admin_site.admin_view(self.models_view)
        return [
            path("<path:object_id>/models/", page, name="endpoints_endpoint_models"),
            *super().get_urls(),
        ]

    @method_decorator(require_http_methods(["GET", "POST"]))
    def models_view(self, request, object_id):
        """GET: test the connection by listing the upstream's models. POST: import the
        picked ones (`name`, repeated) that the upstream still lists; others are ignored."""
        endpoint = self.get_object(request, unquote(object_id))
        if endpoint is None:
            raise Http404("No such endpoint.")
        if not self.has_view_or_change_permission(request, endpoint):
            raise PermissionDenied
        may_import = request.user.has_perm("models_registry.add_model")
        if request.method == "POST":
            if not may_import:
                raise PermissionDenied
            picked = request.POST.getlist("name")
            if picked:
                return self._import(request, endpoint, picked)
            self.message_user(request, "Pick at least one model to import.", messages.ERROR)
        ids, error, seconds = upstream_models(endpoint)
        known = dict(Model.objects.filter(name__in=ids).values_list("name", "pk"))
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": f"Test connection: {endpoint}",
            "endpoint": endpoint,
            "error": error,
            "milliseconds": round(seconds * 1000),
            "listed": [(name, known.get(name)) for name in ids],
            "new": sum(name not in known for name in ids),
            "may_import": may_import,
        }
        return TemplateResponse(request, "admin/proxy/endpoint_models.html", context)

    def _import(self, request, endpoint, picked):
        ids, error, _ = upstream_models(endpoint)
        page = reverse("admin:endpoints_endpoint_models", args=[endpoint.pk])
        if error:
            self.message_user(request, f"Nothing imported: {error}", messages.ERROR)
            return HttpResponseRedirect(page)
        listed = set(ids)
        result = catalog.import_models(
            endpoint=endpoint, names=[name for name in picked if name in listed]
        )
        for model in result.created:
            self.log_addition(request, model, f"Imported from endpoint {endpoint}.")
        if result.created:
            names = ", ".join(model.name for model in result.created)
            self.message_user(
                request,
                f"{count(len(result.created), 'model', 'models')} imported: {names}. "
                "Their prices are 0 until you set them.",
                messages.SUCCESS,
            )
        if result.existing:
            self.message_user(
                request,
                f"Already in the catalog, left as they are: {', '.join(result.existing)}.",
                messages.WARNING,
            )
        for name, reason in result.refused.items():
            self.message_user(request, f"{name} not imported: {reason}", messages.ERROR)
        if not result.created:
            return HttpResponseRedirect(page)
        models = reverse("admin:models_registry_model_changelist")
        return HttpResponseRedirect(f"{models}?deployments__endpoint__id__exact={endpoint.pk}")


def listed(names: list[str]) -> str:
    """ "a, b, c", or the first NAMED_AT_MOST and "and N more"."""
    shown = ", ".join(names[:NAMED_AT_MOST])
    rest = len(names) - NAMED_AT_MOST
    return f"{shown} and {rest} more" if rest > 0 else shown


admin.site.unregister(Endpoint)
admin.site.register(Endpoint, EndpointAdmin)
admin.site.unregister(Model)
admin.site.register(Model, ModelAdmin)


# --------------------------------------------------------------------------- stored responses

CONTENT_NOT_SHOWN = (
    "Not shown: the key did not log content when this response was stored (metadata only)."
)


def shown_json(value) -> str:
    """`value` as indented JSON in a <pre>, escaped."""
    return format_html(
        '<pre style="white-space: pre-wrap">{}</pre>',
        json.dumps(value, indent=2, ensure_ascii=False),
    )


@admin.register(StoredResponse)
class StoredResponseAdmin(admin.ModelAdmin):
    """Stored responses, read-only: they are written by `/v1/responses` only, deleted here,
    by `DELETE /v1/responses/{id}` or by retention (`prune_responses`). Their input and
    output are shown only if the key logged content when the response was made."""

    list_display = (
        "id",
        "owner",
        "api_key",
        "model",
        "status",
        "created_at",
        "input_size",
        "output_size",
    )
    list_select_related = ("owner", "api_key")
    list_filter = (ModelFilter, "status")
    search_fields = ("^id",)
    search_help_text = "Response id (or its beginning)."
    date_hierarchy = "created_at"
    # Counting a large table on every page view is what makes admins slow.
    show_full_result_count = False
    list_per_page = 100
    fieldsets = (
        (None, {"fields": ("id", "owner", "api_key", "model", "status", "created_at",
                           "previous_id", "log_content", "input_size", "output_size")}),
        ("Content", {"fields": ("input_shown", "output_shown")}),
    )  # fmt: skip

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    @admin.display(description="input items")
    def input_size(self, obj):
        return len(obj.input_items)

    @admin.display(description="output items")
    def output_size(self, obj):
        return len(obj.response.get("output") or [])

    @admin.display(description="input items")
    def input_shown(self, obj):
        return shown_json(obj.input_items) if obj.log_content else CONTENT_NOT_SHOWN

    @admin.display(description="output")
    def output_shown(self, obj):
        return (
            shown_json(obj.response.get("output") or []) if obj.log_content else CONTENT_NOT_SHOWN
        )
