"""Instructions per /v1 request, counted by callgrind: `make bench-instructions`.

The in-process pipeline (proxy.tests.fakes: no sockets, no database) answers N chat
requests, plain or streamed, under `valgrind --tool=callgrind`; two runs (N=50 and
N=250) are differenced, so start-up cancels out. Instruction counts do not depend on
the machine's load, so two commits compare here even on a busy machine, where wrk's
figures vary by more than the change. PYTHONHASHSEED is fixed: dict layouts move the
count by about 1% from run to run otherwise. Needs valgrind.
"""

# ruff: noqa: S603, S607 -- a harness: it starts valgrind with a fixed argument list.

import argparse
import asyncio
import os
import re
import secrets
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUNS = (50, 250)


def serve(count: int, kind: str, deployments: int, limits: bool) -> None:
    """Answer `count` chat requests of `kind` (json or stream) in this process, for a model
    with `deployments` deployments; with `limits`, from a key with a token limit, a
    concurrency limit and a budget (all in the process, as without Redis)."""
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "aethergate.settings")
    import django

    django.setup()
    from proxy.tests import fakes

    body = {"model": "gpt-test", "messages": fakes.HELLO, "stream": kind == "stream"}
    usage = {"prompt_tokens": 3, "completion_tokens": 20}
    upstream = fakes.FakeUpstream(
        default=(lambda call: fakes.streamed(*["tok"] * 20, usage=usage))
        if kind == "stream"
        else None
    )

    served = tuple(
        fakes.deployment_info("echo", fakes.endpoint_info(id=n, name=f"ep{n}"))
        for n in range(deployments)
    )
    keys = None
    if limits:
        from decimal import Decimal

        from proxy.snapshot import BudgetInfo

        budget = BudgetInfo("k7", "bench", Decimal(10**9), Decimal(10**8), "month")
        key = fakes.key_info(
            rate_limit="1000000/m,1000000000tok/m", max_concurrent=100, budgets=(budget,)
        )
        keys = {fakes.SECRET: key}
    snapshot = fakes.snapshot(keys=keys, models=[fakes.model_info(deployments=served)])

    async def run():
        runtime = fakes.runtime(snapshot, upstream=upstream)
        for _ in range(count):
            answer = await fakes.acall(runtime, "POST", "/v1/chat/completions", body)
            if answer.status != 200:
                raise SystemExit(f"answered {answer.status}")

    asyncio.run(run())


def instructions(count: int, kind: str, deployments: int, limits: bool) -> int:
    env = dict(
        os.environ,
        PYTHONHASHSEED="0",
        AETHERGATE_ENV_FILE="",
        DEBUG="false",
        SECRET_KEY=secrets.token_urlsafe(48),
    )
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable,
             __file__, "--serve", str(count), f"--deployments={deployments}",
             *(["--limits"] if limits else []), kind],
            env=env, check=True, capture_output=True,
        )  # fmt: skip
        return int(re.search(r"^(?:summary|totals): (\d+)", out.read_text(), re.M).group(1))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument(
        "--deployments",
        type=int,
        nargs="+",
        default=[1],
        help="deployments of the model: each count is measured",
    )
    parser.add_argument(
        "--limits",
        action="store_true",
        help="the key has a token limit, a concurrency limit and a budget",
    )
    parser.add_argument("kinds", nargs="*", default=["json", "stream"])
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve, args.kinds[0], args.deployments[0], args.limits)
        return 0
    extra = ", token limit + concurrency + budget" if args.limits else ""
    for deployments in args.deployments:
        for kind in args.kinds:
            low, high = (instructions(n, kind, deployments, args.limits) for n in RUNS)
            per = (high - low) // (RUNS[1] - RUNS[0])
            print(
                f"chat {kind}, {deployments} deployment(s){extra}: {per:,} instructions per request"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
