"""The admin login form, with failed logins throttled (accounts.throttling)."""

import math

from django.contrib.admin.forms import AdminAuthenticationForm
from django.core.exceptions import ValidationError

from accounts import throttling


class ThrottledAdminLoginForm(AdminAuthenticationForm):
    """Django admin's login form, refusing every attempt of a locked-out account or address.

    A refusal sets `request.login_locked_out` (the LockedOut), so that the
    login view can answer 429 with Retry-After instead of 200.
    """

    error_messages = {
        **AdminAuthenticationForm.error_messages,
        "locked_out": (
            "Too many failed logins for this account or from this address. Try again in "
            "%(minutes)s minutes, or ask an administrator to clear the lockout."
        ),
    }

    def clean(self):
        attempt = throttling.Attempt.admin(
            self.cleaned_data.get("username"), self.request.META.get("REMOTE_ADDR")
        )
        try:
            throttling.check(attempt)
        except throttling.LockedOut as locked:
            raise self.locked_out(locked) from None
        try:
            return super().clean()
        except ValidationError as error:
            if error.code != "invalid_login":
                raise
            locked = throttling.failed(attempt)
            if locked is not None:
                raise self.locked_out(locked) from None
            raise

    def locked_out(self, locked: throttling.LockedOut) -> ValidationError:
        self.request.login_locked_out = locked
        return ValidationError(
            self.error_messages["locked_out"],
            code="locked_out",
            params={"minutes": math.ceil(locked.retry_after / 60)},
        )
