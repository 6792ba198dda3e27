"""The endpoint page's actions that need the upstream client: "Test connection" lists the
upstream's models (GET {base_url}/models) and "Import models" adds the ones staff pick.

Here because only the proxy, at the top of the layers, may use both the upstream
client (proxy.upstream) and the model catalog; the endpoints app knows neither.
"""

import time

from asgiref.sync import async_to_sync
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.decorators import method_decorator
from django.views.decorators.http import require_http_methods

from aethergate.lib.admin import count
from endpoints.admin import EndpointAdmin as BaseEndpointAdmin
from endpoints.models import Endpoint
from models_registry import services as catalog
from models_registry.models import Model
from proxy import upstream
from proxy.snapshot import EndpointInfo


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


class EndpointAdmin(BaseEndpointAdmin):
    """The endpoints app's admin, with the "Test connection" page and its import form."""

    change_form_template = "admin/proxy/endpoint_change_form.html"

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


admin.site.unregister(Endpoint)
admin.site.register(Endpoint, EndpointAdmin)
