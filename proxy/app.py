"""The `/v1` ASGI application: a plain ASGI callable, without Django's request cycle.

Lifespan starts and stops the `Runtime`; each HTTP request is routed to its
operation (`proxy.routes`), authenticated (`proxy.auth`) and handed to the
operation's handler; errors become OpenAI-shaped answers; the `finally`
accounts for the request (`proxy.accounting`). Django is used only off the
request path (settings, and the ORM in the catalog and the log writer, each
in a worker thread).
"""

import asyncio
import logging

from aethergate.lib import metrics
from logs.models import Outcome
from proxy import auth, errors, meter, routes
from proxy.accounting import Exchange, account
from proxy.asgi_io import Receive, Responder, Scope, Send
from proxy.errors import APIError, ClientGone
from proxy.runtime import Runtime

log = logging.getLogger(__name__)


class App:
    """The `/v1` ASGI callable; `runtime` exists from lifespan startup to shutdown."""

    def __init__(self):
        self.runtime: Runtime | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.lifespan(receive, send)
        elif scope["type"] == "http":
            await self.http(self.runtime or await self.start(), scope, receive, send)

    async def start(self) -> Runtime:
        runtime = await Runtime.start()
        if self.runtime is None:
            self.runtime = runtime
        else:  # another request (a server without lifespan) started one meanwhile
            await runtime.close()
        return self.runtime

    async def lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.start()
                except Exception as exc:
                    log.exception("AetherGate failed to start")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.runtime is not None:
                    runtime, self.runtime = self.runtime, None
                    await runtime.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def http(self, runtime: Runtime, scope: Scope, receive: Receive, send: Send) -> None:
        ex = Exchange(path=scope["path"], created_at=runtime.clock())
        responder = Responder(send, ex.request_id)
        if runtime.overloaded():
            # Shed load at once rather than queue: a fast 503 lets the client
            # or the load balancer go elsewhere while this process catches up.
            metrics.SHED.inc()
            await responder.error(errors.overloaded())
            return
        runtime.active += 1
        try:
            op = routes.resolve(scope["method"], scope["path"])
            responder.error_body, responder.error_event = op.error_body, op.error_event
            ex.key = await auth.authenticate(runtime, scope, now=ex.created_at)
            await op.handler(runtime, op, ex, scope, receive, responder)
        except APIError as error:
            ex.failed(error.status, error.outcome, error.log_message or error.message)
            await responder.error(error)
        except ClientGone:
            ex.failed(499, Outcome.CLIENT_DISCONNECTED)
        except asyncio.CancelledError:
            # The server cut the request: its shutdown grace period ran out.
            ex.failed(
                503,
                Outcome.GATEWAY_ERROR,
                "cut off: the gateway shut down before the answer was complete",
            )
            raise
        except Exception:
            log.exception("Unhandled error in %s %s [%s]", scope["method"], ex.path, ex.request_id)
            error = errors.internal()
            ex.failed(error.status, error.outcome, error.log_message)
            await responder.error(error)
        finally:
            runtime.active -= 1
            if ex.held is not None:
                try:
                    await meter.settle(runtime, ex)
                except Exception:  # its log record and charge must not be lost with it
                    runtime.faults.report(ex.request_id)
            account(runtime, ex)
