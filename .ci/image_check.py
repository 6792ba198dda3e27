"""Serve AetherGate from a built image's filesystem and check it answers as deployed.

Usage: image_check.py ROOT IMAGE, where ROOT is the mounted image (`podman image
mount`, with /proc and /dev bound in) and IMAGE its name, for its configuration.
Runs `migrate`, then the image's own command as the image's own user in a chroot,
and checks: /health/live, /health/ready, the admin login page and its static
files, the management API (master key), and one /v1/chat/completions through to
the project's upstream stand-in. Exits non-zero, saying what failed.
"""

import json
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

START_SECONDS = 60
STOP_SECONDS = 30
KEY_PROPAGATION_SECONDS = 5  # a new key reaching every worker (two catalog polls)


def image_config(image: str) -> dict:
    out = subprocess.run(
        ["podman", "image", "inspect", image], check=True, capture_output=True, text=True
    ).stdout
    return json.loads(out)[0]["Config"]


def uid_gid(root: Path, user: str) -> str:
    """The image's `USER` as uid:gid, from the image's own /etc/passwd."""
    for line in (root / "etc/passwd").read_text().splitlines():
        name, _, uid, gid, *_ = line.split(":")
        if user in (name, uid):
            return f"{uid}:{gid}"
    raise SystemExit(f"the image's user {user!r} is not in its /etc/passwd")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def request(url, *, method="GET", body=None, headers=None):
    """(status, headers, body bytes); an HTTP error status is returned, not raised."""
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **(headers or {})}
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def expect(what: str, condition: bool, detail="") -> None:
    if not condition:
        raise SystemExit(f"image check failed: {what} {detail}".rstrip())
    print(f"ok: {what}")


class Image:
    """Runs commands from the image's filesystem as its user, with its environment."""

    def __init__(self, root: Path, config: dict, env: dict):
        self.root = root
        self.user = uid_gid(root, config.get("User") or "root")
        self.workdir = config.get("WorkingDir") or "/"
        image_env = dict(item.split("=", 1) for item in config.get("Env") or [])
        self.env = {**image_env, **env}

    def argv(self, command: list[str]) -> list[str]:
        script = 'cd "$0" && exec "$@"'
        return [
            "chroot", f"--userspec={self.user}", str(self.root),
            "/usr/bin/env", "-i", *(f"{k}={v}" for k, v in self.env.items()),
            "/bin/sh", "-c", script, self.workdir, *command,
        ]  # fmt: skip

    def run(self, command: list[str]) -> None:
        done = subprocess.run(self.argv(command), capture_output=True, text=True, check=False)
        expect(" ".join(command), done.returncode == 0, done.stderr[-2000:])

    def start(self, command: list[str], log: Path) -> subprocess.Popen:
        out = log.open("w")
        return subprocess.Popen(self.argv(command), stdout=out, stderr=subprocess.STDOUT)


def main(root: str, image: str) -> None:
    from proxy.tests.upstream import Upstream

    config = image_config(image)
    secrets_dir = Path(root) / "run/secrets"
    left = list(secrets_dir.iterdir()) if secrets_dir.is_dir() else []
    expect("no build secret (the pip CA) is left in the image", not left, str(left))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    master = secrets.token_urlsafe(24)
    served = Image(
        Path(root),
        config,
        {
            "SECRET_KEY": secrets.token_urlsafe(48),
            "DEBUG": "false",
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
            "MASTER_API_KEY": master,
            "AETHERGATE_BIND": f"127.0.0.1:{port}",
            "WEB_CONCURRENCY": "2",
            "AETHERGATE_DRAIN_SECONDS": "0",
        },
    )
    served.run(["python", "manage.py", "migrate", "--noinput"])
    log = Path(tempfile.gettempdir()) / "aethergate-image-gunicorn.log"
    command = config.get("Cmd") or []
    expect("the image's command is gunicorn", command[:1] == ["gunicorn"], str(command))
    server = served.start(command, log)
    try:
        with Upstream() as upstream:
            check(base, master, upstream, server, log)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            code = server.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            server.kill()
            raise SystemExit(f"gunicorn did not stop within {STOP_SECONDS} s of SIGTERM") from None
    expect("gunicorn stops on SIGTERM", code == 0, f"exit {code}; log: {log}")


def check(base: str, master: str, upstream, server: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_SECONDS
    while True:
        if server.poll() is not None:
            raise SystemExit(f"gunicorn exited ({server.returncode}):\n{log.read_text()[-3000:]}")
        try:
            status, _, _ = request(f"{base}/health/live")
            if status == 200:
                break
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"gunicorn did not listen within {START_SECONDS} s: {log}")
        time.sleep(0.2)
    expect("/health/live", True)
    status, _, body = request(f"{base}/health/ready")
    expect("/health/ready", status == 200 and json.loads(body)["status"] == "ready", body)

    status, _, page = request(f"{base}/admin/login/")
    expect("the admin login page", status == 200 and b"csrfmiddlewaretoken" in page, status)
    stylesheets = re.findall(rb'href="(/static/[^"]+\.css)"', page)
    expect("the login page links its stylesheets", bool(stylesheets))
    for href in stylesheets:
        status, headers, _ = request(base + href.decode())
        expect(f"static {href.decode()}", status == 200 and "css" in headers["Content-Type"])

    admin = {"X-Admin-Key": master}
    api = f"{base}/api/v1"
    status, _, body = request(
        f"{api}/endpoints/",
        method="POST",
        headers=admin,
        body={"name": "stand-in", "base_url": upstream.base_url, "api_key": "sk-upstream"},
    )
    expect("an endpoint created through the API", status == 201, body)
    status, _, body = request(
        f"{api}/models/",
        method="POST",
        headers=admin,
        body={
            "name": "gpt-image",
            "deployments": [{"endpoint": "stand-in", "upstream_name": "echo"}],
        },
    )
    expect("a model created through the API", status == 201, body)
    status, _, body = request(
        f"{api}/users/", method="POST", headers=admin, body={"username": "consumer"}
    )
    expect("a user created through the API", status == 201, body)
    owner = json.loads(body)["id"]
    status, _, body = request(
        f"{api}/keys/", method="POST", headers=admin, body={"owner": owner, "name": "ci"}
    )
    expect("a key issued through the API", status == 201, body)
    secret = json.loads(body)["secret"]

    # Two workers, no Redis: the worker that did not issue the key learns of it at its
    # next catalog poll (AETHERGATE_CATALOG_POLL_SECONDS, 1 s), as the README says.
    deadline = time.monotonic() + KEY_PROPAGATION_SECONDS
    while True:
        status, headers, body = request(
            f"{base}/v1/chat/completions",
            method="POST",
            headers={"Authorization": f"Bearer {secret}"},
            body={"model": "gpt-image", "messages": [{"role": "user", "content": "hi"}]},
        )
        if status != 401 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    answer = json.loads(body)
    expect("/v1/chat/completions answers", status == 200 and answer["model"] == "gpt-image", body)
    (call,) = upstream.wait_for_requests(1)
    sent = {name.lower(): value for name, value in call.headers.items()}
    expect(
        "the upstream got the call with its own model name and the endpoint's key",
        call.json["model"] == "echo" and sent.get("authorization") == "Bearer sk-upstream",
        call,
    )


if __name__ == "__main__":
    main(*sys.argv[1:3])
