"""The base every AetherGate ModelAdmin shares: activate/deactivate and delete notes."""

from django.contrib import admin, messages
from django.contrib.admin.utils import model_ngettext
from django.utils.translation import ngettext


def count(n: int, singular: str, plural: str) -> str:
    """`count(2, "request log is", "request logs are")` → "2 request logs are"."""
    return f"{n} {ngettext(singular, plural, n)}"


class GatewayAdmin(admin.ModelAdmin):
    """Adds "Activate/Deactivate selected" actions and notes on the delete pages.

    Subclasses override `delete_notes` to say what a delete leaves behind
    (request logs kept, models unlinked, …), which Django's own page omits.
    """

    actions = ["activate_selected", "deactivate_selected"]
    delete_confirmation_template = "admin/aethergate/delete_confirmation.html"
    delete_selected_confirmation_template = "admin/aethergate/delete_selected_confirmation.html"
    list_per_page = 50

    def delete_notes(self, objs) -> list[str]:
        """Sentences about what deleting `objs` also does, keeps or unlinks."""
        return []

    def get_deleted_objects(self, objs, request):
        # Both the single and the bulk delete page call this, so it is the one
        # place to compute the notes; the templates read them from the request.
        request.aethergate_delete_notes = self.delete_notes(objs)
        return super().get_deleted_objects(objs, request)

    @admin.action(description="Activate selected %(verbose_name_plural)s", permissions=["change"])
    def activate_selected(self, request, queryset):
        self._set_active(request, queryset, active=True)

    @admin.action(description="Deactivate selected %(verbose_name_plural)s", permissions=["change"])
    def deactivate_selected(self, request, queryset):
        self._set_active(request, queryset, active=False)

    def _set_active(self, request, queryset, *, active: bool):
        changed = 0
        # Saved one by one, not with .update(): post_save signals must fire so
        # that caches of keys, users, models and endpoints see the change.
        for obj in queryset.exclude(is_active=active):
            obj.is_active = active
            obj.save(update_fields=["is_active", "updated_at"])
            self.log_change(request, obj, "Activated" if active else "Deactivated")
            changed += 1
        verb = "activated" if active else "deactivated"
        noun = model_ngettext(self.opts, changed)
        self.message_user(request, f"{changed} {noun} {verb}.", messages.SUCCESS)
