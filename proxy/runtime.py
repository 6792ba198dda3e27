"""The per-process state `/v1` serves from, made at lifespan startup and passed to every step.

A `Runtime` holds the catalog, the rate limiter, the concurrency leases, the
budgets and their alerts, the log writer, the upstream client, the deployment
router, the invalid-key throttle and the drain state; nothing of it
lives in module globals, so every server (or test) starts clean.
"""

import asyncio
import logging
import signal
import threading

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connections
from django.utils import timezone

from aethergate.lib import changes
from aethergate.lib.budgets import Budgets
from aethergate.lib.leases import Leases
from aethergate.lib.ratelimit import make_limiter, make_shared
from logs.writer import LogWriter
from proxy import broadcast
from proxy.alerts import Alerts
from proxy.catalog import Catalog
from proxy.faults import FaultReporter
from proxy.routing import Router
from proxy.throttle import InvalidKeyThrottle
from proxy.upstream import Client

log = logging.getLogger(__name__)

# The scope key under which aethergate.asgi hands each Django request it serves the
# Runtime of the `/v1` app beside it (None before that starts), so that admin pages
# can show what this process's router knows without a module-global runtime.
SCOPE_KEY = "aethergate.runtime"


class Runtime:
    """What one process's `/v1` needs between requests; `start` makes one, `close` ends it."""

    def __init__(
        self,
        *,
        catalog,
        limiter,
        writer,
        upstream,
        key_throttle,
        router=None,
        leases=None,
        budgets=None,
        alerts=None,
    ):
        self.catalog = catalog
        self.router = router or Router()
        self.limiter = limiter
        self.leases = leases or Leases()
        self.budgets = budgets or Budgets()
        self.alerts = alerts or Alerts()
        self.writer = writer
        self.upstream = upstream
        self.key_throttle = key_throttle
        self.faults = FaultReporter()
        self.clock = timezone.now  # the wall clock requests arrive by (a seam for tests)
        self.draining = False  # SIGTERM came: readiness says no, requests are still served
        self.active = 0  # /v1 requests in progress
        self._tasks: list[asyncio.Task] = []

    @classmethod
    async def start(cls) -> "Runtime":
        catalog = Catalog()
        shared = make_shared(settings.REDIS_URL)
        prefix, seconds = settings.AETHERGATE_REDIS_PREFIX, settings.AETHERGATE_LEASE_SECONDS
        runtime = cls(
            catalog=catalog,
            limiter=make_limiter(shared, prefix),
            leases=Leases(shared, prefix=prefix, seconds=seconds),
            budgets=Budgets(shared, prefix=prefix, seconds=seconds),
            writer=LogWriter(on_settled=catalog.settled, on_rejected=catalog.released),
            upstream=Client(max_connections=settings.AETHERGATE_UPSTREAM_MAX_CONNECTIONS),
            key_throttle=InvalidKeyThrottle(settings.AETHERGATE_INVALID_KEY_LIMIT),
        )
        runtime.writer.start()
        # Changes committed in this process, by the admin, the API or a command.
        changes.changed.connect(runtime._changed, weak=False, dispatch_uid=id(runtime))
        await catalog.refresh()
        loop = asyncio.get_running_loop()
        runtime._tasks = [
            loop.create_task(catalog.watch()),
            loop.create_task(runtime.router.watch(runtime.upstream)),
        ]
        if shared is not None:
            runtime._tasks.append(loop.create_task(runtime._renew(seconds / 3)))
        if settings.REDIS_URL:
            runtime._tasks.append(loop.create_task(broadcast.listen(catalog.invalidate)))
        runtime._drain_on_sigterm(loop)
        return runtime

    @staticmethod
    def of_request(request) -> "Runtime | None":
        """The Runtime serving `/v1` beside the Django `request`; None when there is none
        (not started yet, or a server that does not run aethergate.asgi: WSGI, tests)."""
        return getattr(request, "scope", {}).get(SCOPE_KEY)

    async def _renew(self, every: float) -> None:
        """Renew this process's shared leases and budget reservations, so that only a
        process that stopped renewing (crashed) has its expire."""
        while True:
            await asyncio.sleep(every)
            await self.leases.renew()
            await self.budgets.renew()

    def _changed(self, **_signal) -> None:
        self.catalog.invalidate()

    def overloaded(self) -> bool:
        """Whether this process already serves AETHERGATE_MAX_CONCURRENT_REQUESTS (0: no cap)."""
        limit = settings.AETHERGATE_MAX_CONCURRENT_REQUESTS
        return bool(limit) and self.active >= limit

    async def close(self) -> None:
        changes.changed.disconnect(dispatch_uid=id(self))
        for task in self._tasks:
            task.cancel()
        self._tasks = []
        await self.alerts.close()
        await self.writer.close()
        await self.limiter.close()
        await self.upstream.close()
        # The worker thread's database connection would otherwise outlive us.
        await sync_to_async(connections.close_all)()

    def _drain_on_sigterm(self, loop) -> None:
        """On SIGTERM, report not ready for AETHERGATE_DRAIN_SECONDS, then let the server stop.

        The server's own handler (uvicorn's, installed before lifespan
        startup) then stops accepting, lets in-flight requests and streams
        finish within its graceful timeout, and runs `close`.
        """
        if threading.current_thread() is not threading.main_thread():
            return  # signals reach only the main thread (tests serve from others)
        server_handler = signal.getsignal(signal.SIGTERM)
        if not callable(server_handler):
            return

        def on_sigterm(signum, frame):
            if self.draining:
                server_handler(signum, frame)  # a second SIGTERM: stop now
                return
            self.draining = True
            delay = settings.AETHERGATE_DRAIN_SECONDS
            log.warning("SIGTERM: draining; stopping in %s s", delay)
            loop.call_soon_threadsafe(loop.call_later, delay, server_handler, signum, frame)

        signal.signal(signal.SIGTERM, on_sigterm)
