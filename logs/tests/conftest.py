"""Fixtures for the logs app's tests."""

import pytest


@pytest.fixture(autouse=True)
def _forget_last_uses():
    # write_batch remembers, per process, when it last stored each key's last use; ids
    # come back in a fresh test database, so one test's times must not reach the next.
    from logs import services

    services._last_used_stored.clear()
    yield
    services._last_used_stored.clear()
