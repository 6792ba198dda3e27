"""What an import may give a user: staff, superuser and a password hash, only when asked.

Without `grant_privileges` the importer takes them out of each user's row (new
users get none, existing users keep theirs) and warns; with it, it reports each
one given. accounts.permissions decides who may change them in the admin and API.
"""

from django.contrib.auth.hashers import UNUSABLE_PASSWORD_PREFIX

# What a backup may grant a user, by the word the reports use.
PRIVILEGES = {"is_staff": "staff", "is_superuser": "superuser"}
PRIVILEGE_FIELDS = {label: name for name, label in PRIVILEGES.items()}


def held(user) -> tuple[bool, bool, str | None]:
    """`(is_staff, is_superuser, password hash)` of `user`; none of them when there is no user."""
    if user is None:
        return (False, False, None)
    return (user.is_staff, user.is_superuser, user.password)


def withhold(values: dict, password: str | None, existing) -> list[str]:
    """Take staff and superuser out of a user's `values`; the labels of what that withheld.

    A privilege `existing` already holds is not named (leaving it out changes
    nothing), nor a password hash equal to the one it has.
    """
    asked = [PRIVILEGES[name] for name in PRIVILEGES if values.pop(name, False)]
    withheld = [
        label
        for label in asked
        if existing is None or not getattr(existing, PRIVILEGE_FIELDS[label])
    ]
    if password is not None and (existing is None or existing.password != password):
        withheld.append("password")
    return withheld


def granted(user, before: tuple[bool, bool, str | None], password: str | None) -> list[str]:
    """The labels of the privileges `user` now has that it did not hold `before` (see held)."""
    given = [
        label
        for label, now, then in (
            ("staff", user.is_staff, before[0]),
            ("superuser", user.is_superuser, before[1]),
        )
        if now and not then
    ]
    if (
        password is not None
        and password != before[2]
        and not password.startswith(UNUSABLE_PASSWORD_PREFIX)
    ):
        given.append("password")
    return given
