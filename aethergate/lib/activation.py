"""Turning a row on or off (`is_active`) so that every cache of it hears of the change."""


def set_active(obj, *, active: bool) -> bool:
    """Set `obj.is_active` to `active` and save it; return False when it already was.

    Saved, not `.update()`d: post_save signals must fire so that caches of
    keys, users, models and endpoints (the proxy's among them) see the change.
    """
    if obj.is_active == active:
        return False
    obj.is_active = active
    obj.save(update_fields=["is_active", "updated_at"])
    return True
