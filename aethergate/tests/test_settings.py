"""Production settings: refusal without a real SECRET_KEY, and a clean deploy check."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def manage(*args, **env):
    base = {k: v for k, v in os.environ.items() if k not in {"SECRET_KEY", "DEBUG"}}
    base["AETHERGATE_ENV_FILE"] = ""  # a developer's .env must not change the outcome
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("secret_key", ["", "change-me", "short"])
def test_it_refuses_to_start_without_a_real_secret_key(secret_key):
    result = manage("check", DEBUG="false", SECRET_KEY=secret_key)

    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0
    assert "set SECRET_KEY" in result.stderr


def test_the_deploy_check_is_clean_for_a_production_environment():
    result = manage(
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        DEBUG="false",
        SECRET_KEY="k" * 10 + "production-like-secret-key-with-enough-entropy-0123456789",
        ALLOWED_HOSTS="gateway.example.com",
        AETHERGATE_HTTPS="true",
    )

    assert result.returncode == 0, result.stderr
    assert "no issues" in result.stdout


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("AETHERGATE_UPSTREAM_DENY_CIDRS", "127.0.0.0/8,10.0.0.0/33"),
        ("AETHERGATE_UPSTREAM_ALLOW_CIDRS", "10.0.0.1/8"),
    ],
)
def test_it_refuses_to_start_with_an_invalid_cidr_block(variable, value):
    result = manage("check", DEBUG="true", **{variable: value})

    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0
    assert result.stderr.startswith(f"AetherGate: {variable}: ")
    assert "is not a CIDR block" in result.stderr
