"""Turning a row on or off (`is_active`) so that every cache of it hears of the change."""


def set_active(obj, *, active: bool) -> bool:
    """Set `obj.is_active` to `active` and save it; return False when it already was.

    Saved, not `.update()`d: the audit log records an activation from the
    post_save signal, with its actor.
    """
    if obj.is_active == active:
        return False
    obj.is_active = active
    obj.save(update_fields=["is_active", "updated_at"])
    return True
