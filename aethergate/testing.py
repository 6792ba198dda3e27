"""Test personas shared by every app's tests: staff members holding chosen model permissions.

Permissions are Django's own (`accounts.view_user`, …), granted to the user
directly, as a superuser would in the admin. Tests only; nothing imports it
at run time.
"""

from django.contrib.auth.models import Permission
from django.db.models import Q

# The apps whose models staff manage in the admin and the API.
GATEWAY_APPS = ("accounts", "keys", "endpoints", "models_registry", "logs")
VIEW = ("view",)
CHANGE = ("view", "add", "change", "delete")


def permissions(actions=CHANGE, apps=GATEWAY_APPS):
    """The Permission rows for `actions` ("view", "add", …) on every model of `apps`."""
    by_action = Q()
    for action in actions:
        by_action |= Q(codename__startswith=f"{action}_")
    return Permission.objects.filter(by_action, content_type__app_label__in=apps)


def grant(user, actions=CHANGE, apps=GATEWAY_APPS):
    """Give `user` the `actions` permissions on `apps`' models; return the user, reloaded.

    Reloaded because Django caches a user's permissions on the instance.
    """
    user.user_permissions.add(*permissions(actions, apps))
    return type(user).objects.get(pk=user.pk)


def make_staff(username, actions=(), apps=GATEWAY_APPS, **fields):
    """A staff member (not a superuser) holding `actions` on `apps` (none by default)."""
    from accounts.models import User

    user = User.objects.create_user(username, is_staff=True, **fields)
    return grant(user, actions, apps) if actions else user
