"""Admin for upstream endpoints; the credential is write-only."""

from django import forms
from django.contrib import admin

from aethergate.lib.admin import GatewayAdmin
from endpoints.models import Endpoint

# Under the Limits of endpoints and models (models_registry.admin).
LIMITS_NOTE = (
    "Token limits count input + output tokens: a request is admitted for its estimated "
    "input plus its output cap (its max_tokens, else the model's “output tokens reserved”), "
    "then counted for what it really used."
)


TOKEN_LIMITS = ("tpm_limit", "tpd_limit")


def widen_token_limits(form) -> None:
    """Give `form`'s token limits the admin's wide number input (a BigIntegerField's): the
    narrow default cuts "20000000" off."""
    for name in TOKEN_LIMITS:
        if name in form.fields:  # not on a read-only page
            form.fields[name].widget.attrs["class"] = "vBigIntegerField"


class EndpointForm(forms.ModelForm):
    """Sets, replaces or clears the credential without ever displaying it."""

    new_api_key = forms.CharField(
        label="Set or replace credential",
        required=False,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="The upstream's API key. Leave empty to keep the current one.",
    )
    clear_api_key = forms.BooleanField(label="Clear credential", required=False)

    class Meta:
        model = Endpoint
        fields = Endpoint.shared_fields

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        widen_token_limits(self)

    def clean(self):
        cleaned = super().clean()
        if cleaned.get("new_api_key") and cleaned.get("clear_api_key"):
            raise forms.ValidationError("Either set a new credential or clear it, not both.")
        return cleaned

    def save(self, commit=True):
        endpoint = super().save(commit=False)
        if self.cleaned_data.get("new_api_key"):
            endpoint.set_api_key(self.cleaned_data["new_api_key"])
        elif self.cleaned_data.get("clear_api_key"):
            endpoint.set_api_key("")
        if commit:
            endpoint.save()
        return endpoint


@admin.register(Endpoint)
class EndpointAdmin(GatewayAdmin):
    form = EndpointForm
    list_display = (
        "name",
        "base_url",
        "kind",
        "responses",
        "credential",
        "is_active",
    )
    list_editable = ("is_active",)
    list_filter = ("kind", "native_responses", "is_active")
    radio_fields = {"kind": admin.VERTICAL}
    search_fields = ("name", "base_url")
    readonly_fields = ("credential_status", "created_at", "updated_at")
    fieldsets = (
        (None, {"fields": ("name", "base_url", "kind", "native_responses", "is_active")}),
        ("Credential", {"fields": ("credential_status", "new_api_key", "clear_api_key")}),
        (
            "Limits",
            {
                "fields": (("rpm_limit", "day_limit"), ("tpm_limit", "tpd_limit")),
                "description": LIMITS_NOTE,
            },
        ),
        (
            "Timeouts (seconds)",
            {
                "fields": (
                    "connect_timeout",
                    "first_byte_timeout",
                    "idle_timeout",
                    "total_timeout",
                )
            },
        ),
        ("Health check", {"fields": ("health_path",)}),
        ("History", {"fields": ("created_at", "updated_at")}),
    )

    # The field's own label is too wide for the list at 1366 px (the browser test).
    @admin.display(boolean=True, description="Responses API", ordering="native_responses")
    def responses(self, obj):
        return obj.native_responses

    @admin.display(boolean=True, description="credential")
    def credential(self, obj):
        return obj.has_credential

    @admin.display(description="credential")
    def credential_status(self, obj):
        return "set" if obj and obj.has_credential else "not set"

    def delete_notes(self, objs):
        # The models that lose a deployment are named by the subclass registered in
        # proxy.admin, which may know the catalog; this app does not.
        return ["Request logs are kept; they record the endpoint by name."]
