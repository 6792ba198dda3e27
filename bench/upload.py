"""The gateway's memory while it relays large audio uploads: `make bench-upload`.

Starts the project's upstream stand-in (proxy/tests/upstream.py) and AetherGate
(uvicorn, one worker, a fresh SQLite file) as bench/run.py does, with a
per-minute transcription model; sends one small upload to warm up, then
`--uploads` uploads of a `--megabytes` WAV, one after another, sampling the
gateway's VmRSS every 5 ms. Prints the RSS before, the highest seen, what the
uploads added, and each upload's time; each answer must report the length of
the audio sent, so that a file cut short on the way fails the run.
"""

import argparse
import os
import re
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.run import (
    HTTP_PROTOCOL,
    PYTHON,
    ROOT,
    VENV_BIN,
    Processes,
    RssSampler,
    free_port,
    memory_mb,
    wait_for_port,
)
from proxy.tests import media

STAND_IN = """
import threading
from proxy.tests.upstream import Upstream
print(Upstream().start().base_url, flush=True)
threading.Event().wait()
"""
SETUP = """
from accounts.models import User
from endpoints.models import Endpoint
from keys.services import create_key
from models_registry.models import Deployment, Model
user = User.objects.create_user(username="bench", password=None)
endpoint = Endpoint.objects.create(name="stand-in", base_url="{base_url}")
model = Model.objects.create(name="whisper", capability="AUDIO_STT", billing_unit="MINUTE",
                             price_in="0.006")
Deployment.objects.create(model=model, endpoint=endpoint, upstream_name="echo-stt")
key, secret = create_key(owner=user, name="bench")
print("BENCH_SECRET=" + secret)
"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=float, default=20)
    parser.add_argument("--uploads", type=int, default=5)
    args = parser.parse_args(argv)

    procs = Processes({})
    workdir = Path(tempfile.mkdtemp(prefix="aethergate-upload-"))
    env = dict(
        os.environ,
        AETHERGATE_ENV_FILE="",
        DEBUG="false",
        SECRET_KEY=secrets.token_urlsafe(48),
        DATABASE_URL=f"sqlite:///{workdir / 'bench.sqlite3'}",
        AETHERGATE_LOG_LEVEL="WARNING",
        AETHERGATE_MAX_UPLOAD_BYTES=str(int(args.megabytes * 1024 * 1024) + 65536),
        PYTHONPATH=str(ROOT),
    )
    try:
        gateway_port = free_port()
        stand_in = procs.start(
            [PYTHON, "-c", STAND_IN], role="upstream", env=env, stdout=subprocess.PIPE
        )
        base_url = stand_in.stdout.readline().decode().strip()
        procs.run([PYTHON, "manage.py", "migrate", "--noinput"], role="tools", env=env,
                  timeout=300)  # fmt: skip
        out = procs.run(
            [PYTHON, "manage.py", "shell", "-c", SETUP.format(base_url=base_url)],
            role="tools",
            env=env,
            timeout=120,
        )
        secret = re.search(r"^BENCH_SECRET=(\S+)$", out, re.MULTILINE).group(1)
        gateway = procs.start(
            [str(VENV_BIN / "uvicorn"), "aethergate.asgi:application", "--port",
             str(gateway_port), "--log-level", "warning", "--http", HTTP_PROTOCOL],
            role="gateway",
            env=env,
        )  # fmt: skip
        wait_for_port(gateway_port, gateway, "the gateway")
        url = f"http://127.0.0.1:{gateway_port}/v1/audio/transcriptions"
        headers = {"Authorization": f"Bearer {secret}"}
        seconds = args.megabytes * 1024 * 1024 / (media.WAV_RATE * media.WAV_SAMPLE_BYTES)
        audio = media.wav_bytes(seconds)
        with httpx.Client(timeout=120) as client:

            def upload(data: bytes) -> float:
                started = time.perf_counter()
                response = client.post(
                    url, headers=headers, data={"model": "whisper"},
                    files={"file": ("talk.wav", data, "audio/wav")},
                )  # fmt: skip
                if response.status_code != 200:
                    raise SystemExit(f"upload failed: {response.status_code} {response.text[:300]}")
                length = (len(data) - media.WAV_HEADER_BYTES) / media.WAV_RATE / 2
                if abs(response.json()["usage"]["seconds"] - length) > 0.01:
                    raise SystemExit(f"unexpected transcript: {response.text[:200]}")
                return time.perf_counter() - started

            upload(media.wav_bytes(5))
            before = memory_mb(gateway.pid, "VmRSS")
            with RssSampler(gateway.pid, every=0.005) as sampler:
                times = [upload(audio) for _ in range(args.uploads)]
        peak = max(sampler.samples)
        print(
            f"uploads: {args.uploads} x {len(audio) / 1e6:.1f} MB WAV ({seconds:.0f} s of audio)\n"
            f"gateway RSS before: {before:.1f} MB; highest while relaying: {peak:.1f} MB; "
            f"added: {peak - before:.1f} MB\n"
            f"time per upload (s): {', '.join(f'{t:.2f}' for t in times)}"
        )
    finally:
        procs.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
