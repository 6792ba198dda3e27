"""Running ORM code from the event loop, and recovering the connection after an outage."""

from asgiref.sync import sync_to_async
from django.db import close_old_connections


def _guarded(fn, *args):
    try:
        return fn(*args)
    except Exception:
        # A connection broken by an outage stays broken until closed; this
        # thread serves no requests, so nothing else would ever close it.
        close_old_connections()
        raise


async def run_db(fn, *args):
    """Run `fn(*args)` in Django's database thread; after an error the next call reconnects."""
    return await sync_to_async(_guarded)(fn, *args)
