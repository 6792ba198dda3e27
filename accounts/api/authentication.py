"""Who may call the management API: staff tokens, the master key, or a staff session."""

import hmac

from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.permissions import BasePermission

from accounts import services, throttling
from aethergate.lib import audit


class TokenAuthentication(BaseAuthentication):
    """`Authorization: Token <token>` or `Authorization: Bearer <token>` with a staff API token.

    First in DEFAULT_AUTHENTICATION_CLASSES, so that a request without
    credentials gets 401 with this class's WWW-Authenticate challenge.
    """

    keywords = ("token", "bearer")

    def authenticate(self, request):
        scheme, _, presented = get_authorization_header(request).decode("latin-1").partition(" ")
        if scheme.lower() not in self.keywords:
            return None
        presented = presented.strip()
        if not presented or " " in presented:
            raise exceptions.AuthenticationFailed("Malformed Authorization header.")
        try:
            token = services.authenticate_api_token(
                presented, address=request.META.get("REMOTE_ADDR")
            )
        except throttling.LockedOut as locked:
            raise throttled(locked) from None
        if token is None:
            raise exceptions.AuthenticationFailed("Invalid, expired or revoked API token.")
        return token.user, token

    def authenticate_header(self, request):
        return 'Bearer realm="api"'


class MasterKeyUser(AnonymousUser):
    """The principal behind `X-Admin-Key`: all-powerful in the management API, no row in the DB.

    Whoever holds MASTER_API_KEY may do anything the API offers, as a
    superuser may: it holds every permission and passes every privilege rule
    (accounts.permissions). Keep it for bootstrap and break-glass use; give
    scripts staff tokens with only the permissions they need. It has no id,
    so nothing can be saved in its name; it exists only for the duration of
    the request.
    """

    username = "master-key"
    is_staff = True
    is_superuser = True
    is_active = True

    def has_perm(self, perm, obj=None):
        return True

    def has_perms(self, perm_list, obj=None):
        return True

    def has_module_perms(self, module):
        return True

    @property
    def is_anonymous(self):
        return False

    @property
    def is_authenticated(self):
        return True

    def __str__(self):
        return "master key"


class MasterKeyAuthentication(BaseAuthentication):
    """`X-Admin-Key: <MASTER_API_KEY>`; refused outright when MASTER_API_KEY is empty.

    Wrong keys are throttled per client address like token failures
    (accounts.throttling), never per key: anyone could otherwise lock the
    operators out of their break-glass credential.
    """

    def authenticate(self, request):
        presented = request.META.get("HTTP_X_ADMIN_KEY")
        if presented is None:
            return None
        attempt = throttling.Attempt(audit.Surface.API, None, request.META.get("REMOTE_ADDR"))
        try:
            throttling.check(attempt)
        except throttling.LockedOut as locked:
            raise throttled(locked) from None
        expected = settings.MASTER_API_KEY
        # Bytes, because compare_digest refuses str with non-ASCII characters.
        if not expected or not hmac.compare_digest(presented.encode(), expected.encode()):
            locked = throttling.failed(attempt)
            if locked is not None:
                raise throttled(locked)
            raise exceptions.AuthenticationFailed("Invalid admin key.")
        return MasterKeyUser(), None


def throttled(locked: throttling.LockedOut) -> exceptions.Throttled:
    return exceptions.Throttled(
        wait=locked.retry_after,
        detail="Too many failed API credential attempts from this client or for this token.",
    )


class IsActiveStaff(BasePermission):
    """Allows authenticated, active staff; everyone else gets 401 (no credentials) or 403."""

    def has_permission(self, request, view):
        user = request.user
        return bool(user and user.is_authenticated and user.is_active and user.is_staff)


# How the OpenAPI schema describes the two custom schemes (sessions are built in).
class TokenScheme(OpenApiAuthenticationExtension):
    target_class = TokenAuthentication
    name = "tokenAuth"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "A staff API token (`agt-…`), as `Bearer <token>` or `Token <token>`.",
        }


class MasterKeyScheme(OpenApiAuthenticationExtension):
    target_class = MasterKeyAuthentication
    name = "adminKey"

    def get_security_definition(self, auto_schema):
        return {
            "type": "apiKey",
            "in": "header",
            "name": "X-Admin-Key",
            "description": "The MASTER_API_KEY from the environment (disabled when unset).",
        }
