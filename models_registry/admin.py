"""Admin for the model catalog; prices entered and shown per 1M tokens (or per image, …)."""

import json
from decimal import Decimal

from django import forms
from django.conf import settings
from django.contrib import admin
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe

from aethergate.lib import money
from aethergate.lib.admin import GatewayAdmin, count, swap_fields
from endpoints.admin import LIMITS_NOTE, widen_token_limits
from models_registry.models import BillingUnit, Deployment, Model, is_unpriced

PRICE_HELP = (
    "Per 1M tokens for Token models; per image, minute or request for those units (see the "
    "billing unit). Stored per single unit, exactly."
)
CACHE_HELP = (
    "Per 1M input tokens {what} the upstream's prompt cache, as it reports them (Token "
    "models). Empty: the input price."
)
# Each price the form enters per the unit's basis: its label and help.
PRICES = {
    "price_in": ("Input price", PRICE_HELP),
    "price_out": ("Output price", PRICE_HELP),
    "price_cache_read": ("Cache-read price", CACHE_HELP.format(what="read from")),
    "price_cache_write": ("Cache-write price", CACHE_HELP.format(what="written to")),
}


def price_basis(unit: str | None) -> tuple[int, str]:
    """(units, words) a price is entered and shown for, under billing unit `unit`."""
    try:
        return BillingUnit(unit).price_basis
    except ValueError:  # no unit chosen yet, or one no longer offered
        return BillingUnit.TOKEN.price_basis


class ModelForm(forms.ModelForm):
    """The model page, with prices entered per the billing unit's basis (1M tokens, image, …).

    The PRICES fields hold what the staff typed; `clean` turns them into the
    stored per-unit prices with `money.price_to_store`, refusing an entry the
    column cannot hold exactly. An empty cache price stays empty (the input price).
    """

    # 20 digits either way: 10 + 10 decimals per unit, or 16 + 4 decimals per 1M tokens.
    price_in = forms.DecimalField(min_value=0, max_digits=20, initial=0)
    price_out = forms.DecimalField(min_value=0, max_digits=20, initial=0)
    price_cache_read = forms.DecimalField(min_value=0, max_digits=20, required=False)
    price_cache_write = forms.DecimalField(min_value=0, max_digits=20, required=False)

    class Meta:
        model = Model
        fields = Model.shared_fields

    class Media:
        js = ("models_registry/price_basis.js",)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        widen_token_limits(self)
        if "billing_unit" in self.fields:  # not on a read-only page
            # For price_basis.js, which relabels the prices when another unit is picked.
            self.fields["billing_unit"].widget.attrs["data-price-basis"] = json.dumps(
                {unit.value: unit.price_basis[1] for unit in BillingUnit}
            )
        unit = self.data.get("billing_unit") if self.is_bound else self.instance.billing_unit
        words = price_basis(unit)[1]
        # What the page showed, per the saved unit: a bound form compares it with
        # what came back (`changed_data`).
        saved_per = price_basis(self.instance.billing_unit)[0]
        for name, (label, help_text) in PRICES.items():
            field = self.fields.get(name)
            if field is None:  # a read-only page (ModelAdmin.get_fieldsets shows it)
                continue
            field.label = f"{label} (per {words})"
            field.help_text = help_text
            if self.instance.pk:
                shown = money.price_to_show(getattr(self.instance, name), per=saved_per)
                # A Decimal, so that `changed_data` compares numbers; without the
                # column's trailing zeros, so that the input reads "2.5".
                self.initial[name] = None if shown is None else Decimal(money.plain_amount(shown))

    def clean(self):
        cleaned = super().clean()
        per, words = price_basis(cleaned.get("billing_unit"))
        rebased = self.instance.pk and "billing_unit" in self.changed_data
        for name in PRICES:
            entered = cleaned.get(name)
            if entered is None or name not in self.fields:
                continue
            if rebased and entered and name not in self.changed_data:
                # The figure shown was per the old unit: kept as it is, it would now
                # mean a price per the new one (per 1M tokens read as per request).
                self.add_error(name, f"The billing unit changed: enter this price per {words}.")
                continue
            try:
                cleaned[name] = money.price_to_store(entered, per=per, what=words)
            except money.InexactPrice as refusal:
                self.add_error(name, str(refusal))
        return cleaned


DEPLOYMENTS_HELP = (
    "Each row sends this model's requests to an upstream model on an endpoint. Priority 0 "
    "is used first; a higher number is a standby tier, used only while every deployment "
    "with a lower number is unavailable (its circuit open after failures, or its endpoint "
    "inactive). Within one priority, the balancing strategy (Routing, above) spreads the "
    "requests: weighted random gives weight 2 twice the share of weight 1. Weight 0 drains "
    "a deployment: it gets no requests but stays listed, ready to be weighted again."
)


class DeploymentFormSet(forms.BaseInlineFormSet):
    """A model's deployments; two rows for one upstream name on one endpoint are refused."""

    def get_unique_error_message(self, unique_check):
        # Django's own message names the columns ("endpoint and upstream_name").
        return (
            "Two rows deploy the same upstream name on the same endpoint: "
            "keep one (weights and priorities belong to it)."
        )


class DeploymentInline(admin.TabularInline):
    """A model's deployments, edited on its page, under a line that says how they are used."""

    model = Deployment
    formset = DeploymentFormSet
    autocomplete_fields = ("endpoint",)
    fields = Deployment.shared_fields
    template = "admin/models_registry/deployment_inline.html"
    help = DEPLOYMENTS_HELP

    def get_extra(self, request, obj=None, **kwargs):
        return 0 if obj else 1  # a new model: one empty row, as it needs one to be served


class ServedByFilter(admin.RelatedFieldListFilter):
    """Models with a deployment on the endpoint picked (`?deployments__endpoint__id__exact=`)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.title = "serving endpoint"  # the sidebar reads "By serving endpoint"


class PricingFilter(admin.SimpleListFilter):
    """Models by Model.unpriced: unpriced, free on purpose, or priced."""

    title = "pricing"
    parameter_name = "pricing"

    def lookups(self, request, model_admin):
        return [("unpriced", "Unpriced"), ("free", "Free on purpose"), ("priced", "Priced")]

    def queryset(self, request, queryset):
        if self.value() == "free":
            return queryset.filter(is_free=True)
        if self.value() not in ("unpriced", "priced"):
            return queryset
        # The rule is models_registry.models.is_unpriced, applied in Python rather than
        # restated as SQL, so that the list cannot disagree with the flag and the proxy;
        # one query over a catalog's few rows.
        rows = Model.objects.values_list("pk", "billing_unit", "price_in", "price_out", "is_free")
        unpriced = [pk for pk, *prices in rows if is_unpriced(*prices)]
        if self.value() == "unpriced":
            return queryset.filter(pk__in=unpriced)
        return queryset.filter(is_free=False).exclude(pk__in=unpriced)


UNPRICED_TITLE = (
    "Cost unknown: the prices its billing unit uses are 0, and it is not free on purpose."
)


def unpriced_warning(model: Model) -> str:
    """What the change page of an unpriced `model` warns, per AETHERGATE_UNPRICED_MODELS."""
    if settings.AETHERGATE_UNPRICED_MODELS == "refuse":
        what = (
            "This gateway refuses it to keys with a budget or a prepaid balance "
            "(AETHERGATE_UNPRICED_MODELS=refuse); other keys' requests are logged with "
            "their cost unknown."
        )
    else:
        what = (
            "This gateway serves it and logs its requests with their cost unknown "
            "(AETHERGATE_UNPRICED_MODELS=serve); set to refuse, it would refuse it to keys "
            "with a budget or a prepaid balance."
        )
    return format_html(
        '<p class="unpriced-warning" id="unpriced-warning"><strong>Unpriced.</strong> {} '
        "{} Set its prices, or tick “free on purpose” if it costs nothing.</p>",
        f"Every price its billing unit ({model.get_billing_unit_display().lower()}) uses "
        "is 0, and it is not marked free on purpose: what its requests cost is unknown.",
        what,
    )


TIMES = "\u00d7"  # the multiplication sign, before a weight


def deployment_label(deployment: Deployment) -> str:
    """How a list names a deployment: "gpu-a/llama3:8b", then TIMES and its weight when
    that is not 1, "(drained)" at weight 0, "(standby)" off priority 0."""
    label = f"{deployment.endpoint}/{deployment.upstream_name}"
    if deployment.weight == 0:
        label += " (drained)"
    elif deployment.weight != 1:
        label += f" {TIMES}{deployment.weight}"
    if deployment.priority:
        label += " (standby)"
    return label


@admin.register(Model)
class ModelAdmin(GatewayAdmin):
    form = ModelForm
    list_display = (
        "name",
        "served_by",
        "billing",
        "input_price",
        "output_price",
        "is_active",
    )
    list_editable = ("is_active",)
    list_filter = (
        "is_active",
        "capability",
        "billing_unit",
        PricingFilter,
        ("deployments__endpoint", ServedByFilter),
    )
    search_fields = ("name", "deployments__upstream_name")
    autocomplete_fields = ("fallback", "context_fallback")
    inlines = (DeploymentInline,)
    readonly_fields = ("created_at", "updated_at")
    fieldsets = (
        (None, {"fields": ("name", "capability", "is_active")}),
        (
            "Billing",
            {
                "fields": (
                    "billing_unit",
                    ("price_in", "price_out"),
                    ("price_cache_read", "price_cache_write"),
                    "is_free",
                )
            },
        ),
        (
            "Limits",
            {
                "fields": (
                    ("rpm_limit", "day_limit"),
                    ("tpm_limit", "tpd_limit"),
                    ("max_concurrent", "max_output_tokens"),
                ),
                "description": LIMITS_NOTE,
            },
        ),
        ("History", {"fields": ("created_at", "updated_at"), "classes": ("collapse",)}),
        # Last, so that it stands just above the deployments it chooses among.
        ("Routing", {"fields": ("strategy", "fallback", "context_fallback")}),
    )

    class Media:
        css = {"all": ("models_registry/catalog.css",)}

    def get_fieldsets(self, request, obj=None):
        fieldsets = super().get_fieldsets(request, obj)
        if obj is not None and obj.unpriced:
            # Said where its prices are set: the Billing fieldset's description.
            fieldsets = [
                (name, {**options, "description": unpriced_warning(obj)})
                if name == "Billing"
                else (name, options)
                for name, options in fieldsets
            ]
        if obj is None or self.has_change_permission(request, obj):
            return fieldsets
        # A read-only page shows prices per the unit's basis, not per unit with 10 decimals.
        return swap_fields(fieldsets, READ_ONLY_PRICES)

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("deployments__endpoint")

    @admin.display(description="served by")
    def served_by(self, obj):
        # From the prefetch of get_queryset, in the deployments' order (priority first);
        # one a line, so that a label wraps only when it is longer than the column.
        labels = [(deployment_label(d),) for d in obj.deployments.all()]
        return format_html_join(mark_safe(",<br>"), "{}", labels) or "-"

    @admin.display(description="input price", ordering="price_in")
    def input_price(self, obj):
        return shown_price(obj.price_in, obj.billing_unit)

    @admin.display(description="output price", ordering="price_out")
    def output_price(self, obj):
        return shown_price(obj.price_out, obj.billing_unit)

    @admin.display(description="cache-read price")
    def cache_read_price(self, obj):
        return shown_cache_price(obj.price_cache_read, obj.billing_unit)

    @admin.display(description="cache-write price")
    def cache_write_price(self, obj):
        return shown_cache_price(obj.price_cache_write, obj.billing_unit)

    @admin.display(description="billing", ordering="billing_unit")
    def billing(self, obj):
        """The billing unit, over "unpriced" (a badge) or "free": in the unit's column, as
        a column of its own would not leave a laptop's list room for the others."""
        unit = obj.get_billing_unit_display()
        if obj.unpriced:
            return format_html(
                '{}<br><span class="unpriced-badge" title="{}">unpriced</span>',
                unit,
                UNPRICED_TITLE,
            )
        if obj.is_free:
            return format_html('{}<br><span class="free-note">free</span>', unit)
        return unit

    def delete_notes(self, objs):
        fallbacks = sum(model.fallback_for.count() for model in objs)
        return [
            f"{count(fallbacks, 'other model falls', 'other models fall')} back to this "
            "one and will lose that fallback.",
            "Keys that were limited to it lose it from their allowed models.",
            "Request logs are kept; they record the model by name.",
        ]


def shown_price(stored: Decimal, unit: str) -> str:
    """A stored per-unit price as the list shows it: "$0.15 / 1M tokens", "$0.04 / image"."""
    per, words = price_basis(unit)
    return f"{money.format_price(money.price_to_show(stored, per=per))} / {words}"


def shown_cache_price(stored: Decimal | None, unit: str) -> str:
    """A cache price as `shown_price` words it; none set: "the input price"."""
    return "the input price" if stored is None else shown_price(stored, unit)


# A read-only model page's prices, per the unit's basis rather than per unit with 10 decimals.
READ_ONLY_PRICES = {
    "price_in": "input_price",
    "price_out": "output_price",
    "price_cache_read": "cache_read_price",
    "price_cache_write": "cache_write_price",
}
