"""Who may change which user and whose API tokens: one rule for the admin, the API and imports.

Django's model permissions say *what kind* of object a staff member may
change (`accounts.change_user`, …). They do not stop a staff member who
holds `change_user` from editing a superuser or ticking `is_superuser`, so
these functions add the privilege rules every entry point asks before it
writes. They are pure: they read the two users and return a reason to
refuse, or None.

Who is all-powerful, and why that is not a gap: a superuser; the master key
(`X-Admin-Key`, whose principal reports itself as a superuser); and
management commands, which run with shell access to the database and the
settings (`import_backup` grants privileges only when asked, see
aethergate/backup/privileges.py).
"""

from collections.abc import Iterable

# Fields whose change grants or removes privileges.
PRIVILEGE_FIELDS = frozenset({"is_staff", "is_superuser", "groups", "user_permissions"})


def user_change_refusal(*, actor, target, changed: Iterable[str] = ()) -> str | None:
    """Why `actor` may not make this change to `target` (None: a new user), or None if allowed.

    `changed` names the fields being set to a new value ("password" for a
    password set or reset; nothing for a delete, a credit or an activation).
    Only superusers may change a superuser in any way (a delete included),
    grant or remove `is_staff`/`is_superuser`, change groups or user
    permissions, or set another user's password; a staff member may set their
    own. A new user's first password is allowed: the account has no
    privileges to take over.
    """
    if getattr(actor, "is_superuser", False):
        return None
    if target is not None and target.is_superuser:
        return "Only a superuser may change a superuser."
    privileged = sorted(PRIVILEGE_FIELDS.intersection(changed))
    if privileged:
        return f"Only a superuser may change {', '.join(privileged)}."
    if "password" in changed and target is not None and target.pk != actor.pk:
        return "Only a superuser may set another user's password."
    return None


def token_refusal(*, actor, owner) -> str | None:
    """Why `actor` may not issue, revoke or delete an API token of `owner`, or None if allowed.

    A token acts as its owner with all of the owner's permissions, so issuing
    one for someone else is acting as them: a staff member with few
    permissions could issue a token for a colleague (or a superuser) with
    more, and escalate. So a non-superuser manages only their own tokens,
    which grant nothing they do not already hold; superusers manage anyone's.
    Revoking someone else's token escalates nothing, but cuts their scripts
    off, so it falls under the same rule.
    """
    if getattr(actor, "is_superuser", False):
        return None
    if owner is None or owner.pk != actor.pk:
        return "Only a superuser may manage another user's API tokens."
    return None
