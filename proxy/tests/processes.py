"""Real OS processes and sockets for multi-process tests: Redis, a fault proxy, servers.

    RedisServer      a private `redis-server` on a free port that a test may stop and restart
    FaultProxy       a TCP forwarder whose `cut()` breaks every connection, as an outage would
    ServerProcess    a server command (uvicorn, gunicorn, ...) run until its ready URL answers 200

Every helper is a context manager that cleans up on exit, and every wait polls against a
deadline, so a broken process makes a test fail with its log instead of hanging.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from aethergate import server
from aethergate.testing import NotYet, wait_for

# The repository root (proxy/tests/processes.py is two levels below it): servers run from
# there so `aethergate.asgi` and `gunicorn.conf.py` resolve as they do in production.
REPO_ROOT = Path(__file__).resolve().parents[2]

LOOPBACK = "127.0.0.1"
POLL_SECONDS = 0.05
LOG_TAIL_CHARS = 4000


def free_port() -> int:
    """An unused TCP port on 127.0.0.1 (free now; nothing reserves it for the caller)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def _port_taken(port: int) -> bool:
    """Whether something already accepts connections on 127.0.0.1:`port`."""
    try:
        with socket.create_connection((LOOPBACK, port), timeout=0.5):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------------- process plumbing


def _new_log_file(prefix: str) -> Path:
    """A new empty temporary file for a child's output."""
    fd, path = tempfile.mkstemp(prefix=prefix, suffix=".log")
    os.close(fd)
    return Path(path)


def _popen(args: list[str], log_path: Path, **options) -> subprocess.Popen:
    """Start `args` with stdout and stderr appended to `log_path` and no stdin."""
    # Append mode: the child then always writes at the end, whatever else reads the file.
    with log_path.open("ab") as log:
        return subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, **options
        )


def _read_log(log_path: Path | None) -> str:
    """The text of a log file, or "" when there is none (any undecodable bytes replaced)."""
    if log_path is None or not log_path.exists():
        return ""
    return log_path.read_text(encoding="utf-8", errors="replace")


def _tail(text: str) -> str:
    """The last LOG_TAIL_CHARS characters of `text`: enough to show why a start failed."""
    return text[-LOG_TAIL_CHARS:]


def _terminate(proc: subprocess.Popen | None, grace_seconds: float) -> None:
    """SIGTERM `proc` and reap it; SIGKILL it if it is still running after `grace_seconds`."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace_seconds)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# --------------------------------------------------------------------------- Redis


def _check_can_start(proc: subprocess.Popen | None, port: int, what: str) -> None:
    if proc is not None and proc.poll() is None:
        raise RuntimeError(f"{what} is already running")
    # Otherwise a readiness check would take another server's answer for ours.
    if _port_taken(port):
        raise RuntimeError(f"port {port} is already in use")


def _wait_until(ready, proc: subprocess.Popen, timeout: float) -> str:
    """Poll `ready()` until true: "" then, else why not (the process exited, or time ran out)."""

    def settled():
        if ready():
            return "ready"
        return "exited" if proc.poll() is not None else None

    try:
        state = wait_for(settled, timeout, interval=POLL_SECONDS)
    except NotYet:
        return f"was not ready within {timeout} s"
    return "" if state == "ready" else f"exited with code {proc.returncode}"


class RedisServer:
    """A private `redis-server` on 127.0.0.1:<free port>, without persistence.

    Tests stop and restart it to simulate a Redis outage without touching the machine's
    shared Redis on 6379. `restart()` reuses the port, so clients configured with `url`
    reconnect to the new process (which starts empty).
    """

    BINARY = "redis-server"
    START_TIMEOUT_SECONDS = 10.0
    STOP_GRACE_SECONDS = 5.0

    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        self._proc: subprocess.Popen | None = None
        self._log_path: Path | None = None

    @staticmethod
    def available() -> bool:
        """Whether the `redis-server` binary is on PATH."""
        return shutil.which(RedisServer.BINARY) is not None

    @property
    def url(self) -> str:
        """The redis:// URL of database 0 on this server."""
        return f"redis://{LOOPBACK}:{self.port}/0"

    def ping(self, timeout: float = 0.5) -> bool:
        """Whether the server answers a PING with +PONG right now (over a fresh raw socket)."""
        try:
            with socket.create_connection((LOOPBACK, self.port), timeout=timeout) as sock:
                sock.sendall(b"*1\r\n$4\r\nPING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def start(self) -> RedisServer:
        """Launch redis-server on `port` and return once it answers PING (raise if it cannot)."""
        _check_can_start(self._proc, self.port, "redis-server")
        self._log_path = _new_log_file("aethergate-redis-")
        self._proc = _popen(
            [
                self.BINARY,
                "--port",
                str(self.port),
                "--bind",
                LOOPBACK,
                # No RDB snapshots and no AOF: nothing is written to disk, and a restart
                # starts empty, as a replaced Redis container would.
                "--save",
                "",
                "--appendonly",
                "no",
                # Stay in the foreground, so the process we started is the server.
                "--daemonize",
                "no",
            ],
            self._log_path,
        )
        failure = _wait_until(self.ping, self._proc, self.START_TIMEOUT_SECONDS)
        if failure:
            log = _read_log(self._log_path)
            self.stop()
            raise RuntimeError(
                f"redis-server {failure} (PING on port {self.port}); its log ends:\n{_tail(log)}"
            )
        return self

    def stop(self) -> None:
        """Terminate the server (SIGKILL after 5 s) and remove its log; safe to call twice."""
        _terminate(self._proc, self.STOP_GRACE_SECONDS)
        if self._log_path is not None:
            self._log_path.unlink(missing_ok=True)
            self._log_path = None

    def restart(self) -> RedisServer:
        """Stop the server if it runs, then start a new, empty one on the same port."""
        self.stop()
        return self.start()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


# --------------------------------------------------------------------------- fault proxy


def _shutdown(sock: socket.socket) -> None:
    """Shut both directions of `sock` down; this also wakes a thread blocked in recv on it."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def _reset_close(sock: socket.socket) -> None:
    """Close `sock` with a TCP reset, so the peer gets an error at once, not an orderly EOF."""
    # SO_LINGER on with a zero timeout makes close() send RST and skip TIME_WAIT.
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class _Link:
    """One forwarded connection: the client's socket, the target's once connected, a thread."""

    def __init__(self, client: socket.socket):
        self.client = client
        self.upstream: socket.socket | None = None
        self.killed = False
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None

    def attach(self, upstream: socket.socket) -> bool:
        """Record the target's socket; False if the link was killed while it connected."""
        with self.lock:
            if not self.killed:
                self.upstream = upstream
            return not self.killed

    def kill(self) -> None:
        """Break both sides now; the link's thread sees it at once and closes the sockets."""
        with self.lock:
            self.killed = True
            sockets = [s for s in (self.client, self.upstream) if s is not None]
        for sock in sockets:
            _shutdown(sock)


class FaultProxy:
    """A TCP forwarder on 127.0.0.1:<free port> to (target_host, target_port), run by threads.

    Point a client (e.g. Django's PostgreSQL connection) at `port`. `cut()` simulates an
    outage: it breaks every forwarded connection and resets new ones until `restore()`.
    A connection is served by two threads, one per direction, each a blocking copy loop;
    an end of stream is passed on as a half-close, as on a direct connection.
    """

    BUFFER_BYTES = 65536
    CONNECT_TIMEOUT_SECONDS = 5.0
    # How often the accept loop checks for close(); it bounds how long close() takes.
    ACCEPT_POLL_SECONDS = 0.1
    JOIN_TIMEOUT_SECONDS = 5.0

    def __init__(self, target_host: str, target_port: int):
        self.target = (target_host, target_port)
        self.host = LOOPBACK
        self._port: int | None = None
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._closing = threading.Event()
        # Guards `_cut` and `_links` together, so no connection is let through after cut().
        self._lock = threading.Lock()
        self._cut = False
        self._links: set[_Link] = set()

    @property
    def port(self) -> int:
        """The port the proxy listens on (known once started)."""
        if self._port is None:
            raise RuntimeError("FaultProxy is not started")
        return self._port

    @property
    def active_connections(self) -> int:
        """How many forwarded connections are open now."""
        with self._lock:
            return len(self._links)

    def start(self) -> FaultProxy:
        """Listen on a free loopback port and start accepting connections."""
        if self._listener is not None:
            raise RuntimeError("FaultProxy is already started")
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((LOOPBACK, 0))
        # A deep backlog: tests open many connections at once (connection pools, workers).
        listener.listen(512)
        listener.settimeout(self.ACCEPT_POLL_SECONDS)
        self._listener = listener
        self._port = listener.getsockname()[1]
        self._accept_thread = threading.Thread(
            target=self._accept_loop,
            args=(listener,),
            name=f"fault-proxy-{self._port}",
            daemon=True,
        )
        self._accept_thread.start()
        return self

    def cut(self) -> None:
        """Break every forwarded connection (both sides) and reset new ones until restore()."""
        with self._lock:
            self._cut = True
            links = list(self._links)
        self._kill(links)

    def restore(self) -> None:
        """Forward new connections normally again (connections broken by cut() stay broken)."""
        with self._lock:
            self._cut = False

    def close(self) -> None:
        """Stop listening, break every connection and wait for all threads; safe to call twice."""
        self._closing.set()
        if self._accept_thread is not None:
            self._accept_thread.join(self.JOIN_TIMEOUT_SECONDS)
            self._accept_thread = None
        # Closed only after the accept thread is gone, so no thread uses a closed socket.
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with self._lock:
            links = list(self._links)
        self._kill(links)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.close()

    # ----------------------------------------------------------------- internals

    def _kill(self, links: list[_Link]) -> None:
        """Kill `links` and wait until their threads have closed every socket."""
        for link in links:
            link.kill()
        deadline = time.monotonic() + self.JOIN_TIMEOUT_SECONDS
        for link in links:
            if link.thread is not None:
                link.thread.join(max(0.0, deadline - time.monotonic()))

    def _accept_loop(self, listener: socket.socket) -> None:
        """Accept connections until close(): forward them, or reset them while cut."""
        while not self._closing.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                # E.g. too many open files: keep serving rather than die silently.
                time.sleep(self.ACCEPT_POLL_SECONDS)
                continue
            # Accepted sockets must block: the copy loops rely on blocking recv/sendall.
            client.settimeout(None)
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                if self._cut or self._closing.is_set():
                    # The handshake already succeeded in the kernel; a reset is the
                    # quickest error we can give the client.
                    _reset_close(client)
                    continue
                link = _Link(client)
                link.thread = threading.Thread(
                    target=self._serve, args=(link,), name="fault-proxy-link", daemon=True
                )
                self._links.add(link)
                link.thread.start()

    def _serve(self, link: _Link) -> None:
        """Connect `link` to the target and copy bytes both ways until both sides are done."""
        try:
            try:
                upstream = socket.create_connection(
                    self.target, timeout=self.CONNECT_TIMEOUT_SECONDS
                )
            except OSError:
                # The target is down: reset the client, as a direct connection would fail.
                link.kill()
                return
            upstream.settimeout(None)
            upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if not link.attach(upstream):
                _reset_close(upstream)
                return
            back = threading.Thread(
                target=self._pump,
                args=(upstream, link.client),
                name="fault-proxy-back",
                daemon=True,
            )
            back.start()
            self._pump(link.client, upstream)
            back.join()
        finally:
            for sock in (link.client, link.upstream):
                if sock is None:
                    continue
                # Only this thread closes the link's sockets, after both copy loops ended,
                # so no loop can touch a closed (and possibly reused) file descriptor.
                if link.killed:
                    _reset_close(sock)
                else:
                    sock.close()
            with self._lock:
                self._links.discard(link)

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        """Copy bytes from `src` to `dst` until `src` ends; on an error break both sockets."""
        try:
            while data := src.recv(self.BUFFER_BYTES):
                dst.sendall(data)
            # Pass the end of stream on, as a direct connection would; the other direction
            # may still carry data (a half-closed connection).
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            # A reset or a kill: a direct connection would be broken both ways too.
            _shutdown(src)
            _shutdown(dst)


# --------------------------------------------------------------------------- server processes


class ServerProcess:
    """A server command run as a subprocess, started once `GET {url}{ready_path}` answers 200.

    `env` is merged over os.environ. Output (stdout and stderr) goes to a temporary file that
    `log_text()` reads; it is kept in memory and the file removed when the server is stopped.
    """

    READY_REQUEST_TIMEOUT_SECONDS = 1.0
    STOP_GRACE_SECONDS = 30.0

    def __init__(
        self,
        args: list[str],
        env: dict[str, str],
        port: int,
        ready_path: str = "/health/live",
        cwd: str | os.PathLike[str] = REPO_ROOT,
    ):
        self.args = list(args)
        self.env = dict(env)
        self.port = port
        self.ready_path = ready_path
        self.cwd = Path(cwd)
        self._proc: subprocess.Popen | None = None
        self._log_path: Path | None = None
        self._final_log = ""

    @classmethod
    def uvicorn(cls, port: int, env: dict[str, str]) -> ServerProcess:
        """AetherGate served by a single uvicorn process on 127.0.0.1:`port`."""
        args = [
            sys.executable,
            "-m",
            "uvicorn",
            "aethergate.asgi:application",
            "--host",
            LOOPBACK,
            "--port",
            str(port),
            "--no-access-log",
            "--http",
            server.HTTP,
        ]
        return cls(args, env, port)

    @classmethod
    def gunicorn(cls, port: int, env: dict[str, str]) -> ServerProcess:
        """AetherGate served by gunicorn with gunicorn.conf.py (WEB_CONCURRENCY sets workers)."""
        args = [
            sys.executable,
            "-m",
            "gunicorn",
            "-c",
            "gunicorn.conf.py",
            "aethergate.asgi:application",
        ]
        # gunicorn.conf.py takes its bind address from AETHERGATE_BIND.
        return cls(args, {**env, "AETHERGATE_BIND": f"{LOOPBACK}:{port}"}, port)

    @property
    def url(self) -> str:
        """The server's base URL, without a trailing slash."""
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The process id, once started."""
        return self._proc.pid if self._proc is not None else None

    def start(self, timeout: float = 30) -> ServerProcess:
        """Launch the command and return once the ready URL answers 200; raise with the log."""
        _check_can_start(self._proc, self.port, str(self.args[:4]))
        self._log_path = _new_log_file("aethergate-server-")
        self._final_log = ""
        # Unbuffered Python output, so log_text() shows what a server printed so far.
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        self._proc = _popen(self.args, self._log_path, env=env, cwd=self.cwd)
        failure = _wait_until(self._ready, self._proc, timeout)
        if failure:
            self.stop()
            raise RuntimeError(
                f"server {self.args} {failure} (GET {self.url}{self.ready_path}); "
                f"its log ends:\n{_tail(self.log_text())}"
            )
        return self

    def log_text(self) -> str:
        """Everything the process wrote to stdout and stderr so far (or until it was stopped)."""
        if self._log_path is None:
            return self._final_log
        return _read_log(self._log_path)

    def signal(self, sig: int) -> None:
        """Send signal `sig` to the process."""
        if self._proc is None:
            raise RuntimeError("ServerProcess is not started")
        self._proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        """Wait up to `timeout` s for the process to exit and return its exit code."""
        if self._proc is None:
            raise RuntimeError("ServerProcess is not started")
        return self._proc.wait(timeout)

    def stop(self) -> None:
        """SIGTERM, wait up to 30 s, then SIGKILL; keep the log in memory; safe to call twice."""
        _terminate(self._proc, self.STOP_GRACE_SECONDS)
        if self._log_path is not None:
            self._final_log = _read_log(self._log_path)
            self._log_path.unlink(missing_ok=True)
            self._log_path = None

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def _ready(self) -> bool:
        """Whether `GET {ready_path}` answers 200 right now."""
        conn = http.client.HTTPConnection(
            LOOPBACK, self.port, timeout=self.READY_REQUEST_TIMEOUT_SECONDS
        )
        try:
            conn.request("GET", self.ready_path)
            response = conn.getresponse()
            response.read()
            return response.status == 200
        except (OSError, http.client.HTTPException):
            return False
        finally:
            conn.close()
