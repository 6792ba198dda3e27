"""The key tests' shared fixture: a record of what keys.services.create_key was called with."""

import pytest

from keys import services


@pytest.fixture
def create_key_calls(monkeypatch):
    """The keyword arguments of each call to keys.services.create_key during the test, which
    still creates the key: how a test sees that an entry point goes through the service."""
    made = []
    create_key = services.create_key

    def recording(**fields):
        made.append(fields)
        return create_key(**fields)

    monkeypatch.setattr(services, "create_key", recording)
    return made
