"""docker-compose.yml is checked here, since no Docker engine can run it: syntax, references,
documented variables, health checks and volumes. The image itself is built and served in CI
(`.ci/image`)."""

import re
import shlex
from pathlib import Path

import pytest
import yaml
from django.core.management import get_commands

ROOT = Path(__file__).resolve().parents[2]
# `${NAME}`, `${NAME:-default}`, `${NAME:?message}`: compose's interpolation forms.
INTERPOLATION = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)(?::?[-?][^}]*)?\}")
# Variables of the compose file itself rather than of AetherGate, so not in .env.example.
COMPOSE_ONLY = {
    "POSTGRES_PASSWORD": "the database container's password, also in DATABASE_URL",
    "AETHERGATE_PORT": "the host port the gateway is published on",
}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def documented() -> set[str]:
    lines = (ROOT / ".env.example").read_text().splitlines()
    return {m[1] for line in lines if (m := re.match(r"#?\s*([A-Z_][A-Z0-9_]*)=", line))}


def test_it_uses_only_variables_documented_in_env_example():
    used = set(INTERPOLATION.findall((ROOT / "docker-compose.yml").read_text()))

    assert used, "no interpolated variable found: the pattern is wrong"
    assert used - documented() - set(COMPOSE_ONLY) == set()
    assert set(COMPOSE_ONLY) <= used, "a compose-only variable is no longer used"


def test_the_gateway_environment_names_only_settings_the_gateway_reads(compose):
    env = compose["x-gateway"]["environment"]
    settings_source = (ROOT / "aethergate" / "settings.py").read_text()
    gunicorn_source = (ROOT / "gunicorn.conf.py").read_text()

    for name in env:
        assert f'"{name}"' in settings_source + gunicorn_source, name
        assert name in documented(), name


def test_every_dependency_names_a_service_and_the_condition_it_has(compose):
    services = compose["services"]

    for name, service in services.items():
        for needed, how in (service.get("depends_on") or {}).items():
            assert needed in services, (name, needed)
            if how["condition"] == "service_healthy":
                assert "healthcheck" in services[needed], (name, needed)
            else:
                assert how["condition"] == "service_completed_successfully"
                assert services[needed].get("restart") == "no", needed


def test_the_gateway_is_built_here_and_its_health_check_asks_for_readiness(compose):
    gateway = compose["services"]["gateway"]

    assert gateway["build"] == "."
    assert (ROOT / gateway["build"] / "Dockerfile").exists()
    assert "/health/ready" in " ".join(gateway["healthcheck"]["test"])
    assert gateway["ports"] == ["${AETHERGATE_PORT:-8000}:8000"]
    assert "EXPOSE 8000" in (ROOT / "Dockerfile").read_text()


def test_the_migrate_service_runs_commands_that_exist(compose):
    command = compose["services"]["migrate"]["command"]
    assert command[:2] == ["sh", "-c"]
    steps = [shlex.split(step) for step in command[2].split("&&")]

    for step in steps:
        assert step[:2] == ["python", "manage.py"], step
        assert step[2] in get_commands(), step
    assert [s[2] for s in steps] == ["migrate", "ensure_admin"]


def test_every_named_volume_is_declared(compose):
    declared = set(compose.get("volumes") or {})
    used = {
        volume.split(":")[0]
        for service in compose["services"].values()
        for volume in service.get("volumes", [])
        if not volume.startswith((".", "/"))
    }

    assert used and used == declared
