"""Self-tests of the process helpers: real processes and sockets, no database."""

import http.client
import os
import signal
import socket
import sys
import threading
import time

import pytest

from proxy.tests.processes import FaultProxy, RedisServer, ServerProcess, free_port

IO_TIMEOUT_SECONDS = 5.0

needs_redis = pytest.mark.skipif(
    not RedisServer.available(), reason="the redis-server binary is not on PATH"
)


def _ping(port: int) -> bytes:
    """Send PING to a Redis on `port` over a raw socket and return the reply."""
    with socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT_SECONDS) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(64)


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    """Read exactly `size` bytes from `sock` (fail on an early end of stream)."""
    chunks = []
    while size:
        chunk = sock.recv(min(size, 65536))
        assert chunk, "the connection ended early"
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _echo_roundtrip(port: int, payload: bytes) -> bytes:
    """Send `payload` through a new connection to `port` and return what comes back."""
    with socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT_SECONDS) as sock:
        sock.sendall(payload)
        return _recv_exactly(sock, len(payload))


def _assert_broken(sock: socket.socket) -> None:
    """Assert that `sock` is dead: reading gives end of stream or an error, never a hang."""
    sock.settimeout(IO_TIMEOUT_SECONDS)
    try:
        # Writing first: the peer may already have reset it (then this raises).
        sock.sendall(b"anyone there?")
        data = sock.recv(64)
    except TimeoutError:
        pytest.fail("the connection hung instead of breaking")
    except OSError:
        return
    assert data == b""


class EchoServer:
    """A loopback TCP server that sends every byte back, one thread per connection."""

    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return  # closed by the test
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn):
        with conn:
            try:
                while data := conn.recv(65536):
                    conn.sendall(data)
            except OSError:
                pass

    def close(self):
        # shutdown() wakes the blocked accept() on Linux; close() alone may not.
        try:
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()
        self.thread.join(IO_TIMEOUT_SECONDS)


@pytest.fixture
def echo_server():
    server = EchoServer()
    yield server
    server.close()


# --------------------------------------------------------------------------- free_port


def test_it_finds_a_port_that_can_be_bound():
    port = free_port()

    with socket.create_server(("127.0.0.1", port)) as sock:
        assert sock.getsockname()[1] == port


# --------------------------------------------------------------------------- RedisServer


@needs_redis
def test_it_runs_stops_and_restarts_redis_on_the_same_port():
    with RedisServer() as redis:
        assert redis.url == f"redis://127.0.0.1:{redis.port}/0"
        assert _ping(redis.port) == b"+PONG\r\n"

        redis.stop()
        with pytest.raises(ConnectionRefusedError):
            _ping(redis.port)

        port = redis.port
        redis.restart()
        assert redis.port == port
        assert _ping(port) == b"+PONG\r\n"
    with pytest.raises(ConnectionRefusedError):
        _ping(port)


@needs_redis
def test_it_refuses_to_start_redis_on_a_taken_port():
    with RedisServer() as running, pytest.raises(RuntimeError, match="already in use"):
        # Its PING check would otherwise be answered by the running server.
        RedisServer(port=running.port).start()


# --------------------------------------------------------------------------- FaultProxy


def test_it_forwards_large_bidirectional_traffic(echo_server):
    payload = os.urandom(8 * 1024 * 1024)
    with FaultProxy("127.0.0.1", echo_server.port) as proxy:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
            # Write from a thread while reading here: the echo fills both directions at once.
            writer = threading.Thread(target=sock.sendall, args=(payload,))
            writer.start()
            received = _recv_exactly(sock, len(payload))
            writer.join()

    assert received == payload


def test_it_forwards_many_concurrent_connections(echo_server):
    results = {}

    with FaultProxy("127.0.0.1", echo_server.port) as proxy:

        def roundtrip(index):
            results[index] = _echo_roundtrip(proxy.port, f"message {index}".encode() * 1000)

        threads = [threading.Thread(target=roundtrip, args=(i,)) for i in range(50)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(IO_TIMEOUT_SECONDS)

    assert results == {i: f"message {i}".encode() * 1000 for i in range(50)}


def test_it_passes_a_half_close_on(echo_server):
    with FaultProxy("127.0.0.1", echo_server.port) as proxy:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=IO_TIMEOUT_SECONDS) as s:
            s.sendall(b"last words")
            s.shutdown(socket.SHUT_WR)
            # The echo server sees the end of stream, answers, and closes its side too.
            assert _recv_exactly(s, 10) == b"last words"
            assert s.recv(64) == b""


def test_it_cuts_and_restores_connections(echo_server):
    with FaultProxy("127.0.0.1", echo_server.port) as proxy:
        established = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        established.sendall(b"before")
        assert _recv_exactly(established, 6) == b"before"

        proxy.cut()

        _assert_broken(established)
        established.close()
        assert proxy.active_connections == 0
        try:
            fresh = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        except OSError:
            pass  # refused outright: just as good
        else:
            with fresh:
                _assert_broken(fresh)

        proxy.restore()

        assert _echo_roundtrip(proxy.port, b"after") == b"after"


@needs_redis
def test_it_cuts_a_redis_connection():
    with RedisServer() as redis, FaultProxy("127.0.0.1", redis.port) as proxy:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
            sock.sendall(b"PING\r\n")
            assert sock.recv(64) == b"+PONG\r\n"

            proxy.cut()

            _assert_broken(sock)
        proxy.restore()
        assert _ping(proxy.port) == b"+PONG\r\n"


def test_it_resets_clients_when_the_target_is_down():
    target_port = free_port()  # nothing listens there
    with FaultProxy("127.0.0.1", target_port) as proxy:
        try:
            sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        except (BrokenPipeError, ConnectionResetError):
            # The reset can come before connect() returns (seen under load): broken, as asked.
            return
        with sock:
            _assert_broken(sock)


# --------------------------------------------------------------------------- ServerProcess


def _http_server(port, directory):
    args = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]
    return ServerProcess([*args, "--directory", str(directory)], {}, port, ready_path="/")


def _get(url_port, path="/"):
    conn = http.client.HTTPConnection("127.0.0.1", url_port, timeout=IO_TIMEOUT_SECONDS)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_it_starts_and_stops_a_server_process(tmp_path):
    (tmp_path / "hello.txt").write_text("hi there")
    port = free_port()
    server = _http_server(port, tmp_path)

    with server:
        assert server.url == f"http://127.0.0.1:{port}"
        assert _get(port, "/hello.txt") == (200, b"hi there")

    assert server.wait(0) is not None
    with pytest.raises(ConnectionRefusedError):
        _get(port)
    # The log outlives the process: http.server logged the requests to stderr.
    assert "GET /hello.txt" in server.log_text()
    server.stop()  # idempotent


def test_it_signals_and_waits_for_a_server_process(tmp_path):
    with _http_server(free_port(), tmp_path) as server:
        server.signal(signal.SIGTERM)

        assert server.wait(IO_TIMEOUT_SECONDS) == -signal.SIGTERM


def test_it_gives_up_on_a_server_that_never_gets_ready():
    never_listens = "import time; print('sleeping'); time.sleep(60)"
    server = ServerProcess([sys.executable, "-c", never_listens], {}, free_port())

    with pytest.raises(RuntimeError, match=r"was not ready within 1.0 s[\s\S]*sleeping"):
        server.start(timeout=1.0)

    # start() stopped it rather than leaving it running.
    assert server.wait(0) == -signal.SIGTERM


def test_it_merges_env_and_reports_an_early_exit_with_the_log():
    script = "import os; print('the marker is', os.environ['MARKER']); raise SystemExit(3)"
    server = ServerProcess([sys.executable, "-c", script], {"MARKER": "xyzzy"}, free_port())

    started = time.monotonic()
    with pytest.raises(RuntimeError, match=r"exited with code 3[\s\S]*the marker is xyzzy"):
        server.start(timeout=10)

    assert time.monotonic() - started < 5  # it noticed the exit instead of waiting it out


def test_it_runs_from_the_repository_root():
    server = ServerProcess([sys.executable, "-c", "import os; print(os.getcwd())"], {}, 1)
    with pytest.raises(RuntimeError):
        server.start(timeout=5)

    assert (server.cwd / "manage.py").exists()
    assert str(server.cwd) in server.log_text()
