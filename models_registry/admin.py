"""Admin for the model catalog."""

from django.contrib import admin

from aethergate.lib.admin import GatewayAdmin, count
from models_registry.models import Model


@admin.register(Model)
class ModelAdmin(GatewayAdmin):
    list_display = (
        "name",
        "upstream_name",
        "endpoint",
        "capability",
        "billing_unit",
        "price_in",
        "price_out",
        "fallback",
        "is_active",
    )
    list_editable = ("is_active",)
    list_filter = ("is_active", "capability", "billing_unit", "endpoint")
    list_select_related = ("endpoint", "fallback")
    search_fields = ("name", "upstream_name")
    autocomplete_fields = ("endpoint", "fallback")
    readonly_fields = ("created_at", "updated_at")
    fieldsets = (
        (None, {"fields": ("name", "upstream_name", "endpoint", "capability", "is_active")}),
        ("Billing", {"fields": ("billing_unit", "price_in", "price_out")}),
        ("Limits and fallback", {"fields": ("rpm_limit", "day_limit", "fallback")}),
        ("History", {"fields": ("created_at", "updated_at")}),
    )

    def delete_notes(self, objs):
        fallbacks = sum(model.fallback_for.count() for model in objs)
        return [
            f"{count(fallbacks, 'other model falls', 'other models fall')} back to this "
            "one and will lose that fallback.",
            "Keys that were limited to it lose it from their allowed models.",
            "Request logs are kept; they record the model by name.",
        ]
