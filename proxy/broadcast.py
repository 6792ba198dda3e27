"""Cross-process catalog invalidation over Redis pub/sub (when REDIS_URL is set).

A commit that changes a key, user, model or endpoint is announced on one
channel; every gateway process listening marks its catalog stale at once.
The database poll in `Catalog.watch` remains the backstop for a message
missed while Redis was unreachable.
"""

import asyncio
import logging
import secrets

import redis
import redis.asyncio as aioredis
from django.conf import settings
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

# Identifies this process's own announcements, which it has already acted on.
SENDER = secrets.token_hex(8)
_clients: dict[str, redis.Redis] = {}


def channel() -> str:
    return f"{settings.AETHERGATE_REDIS_PREFIX}:catalog"


def publish() -> None:
    """Announce a committed change (sync: admin, API and commands call it)."""
    url = settings.REDIS_URL
    if not url:
        return
    try:
        if url not in _clients:
            _clients[url] = redis.Redis.from_url(
                url, socket_timeout=0.5, socket_connect_timeout=0.5
            )
        _clients[url].publish(channel(), SENDER)
    except (RedisError, OSError) as exc:
        log.warning(
            "Could not announce a change over Redis (%s); other processes will see it "
            "at their next database check",
            type(exc).__name__,
        )


async def listen(on_change) -> None:
    """Call `on_change()` for each announcement from another process; reconnect forever."""
    client = aioredis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=0.5)
    reconnecting = False
    try:
        while True:
            try:
                async with client.pubsub() as pubsub:
                    await pubsub.subscribe(channel())
                    if reconnecting:
                        # Announcements sent while disconnected are lost: assume one was.
                        on_change()
                    reconnecting = True
                    async for message in pubsub.listen():
                        if message["type"] == "message" and message["data"] != SENDER.encode():
                            on_change()
            except (RedisError, OSError):
                await asyncio.sleep(1.0)
    finally:
        await client.aclose()
