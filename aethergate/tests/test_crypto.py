"""Encryption of upstream credentials at rest."""

import pytest
from django.core.exceptions import ImproperlyConfigured

from aethergate.lib import crypto


def test_it_round_trips_and_never_repeats_a_token():
    first, second = crypto.encrypt("sk-upstream"), crypto.encrypt("sk-upstream")
    assert first != second
    assert "sk-upstream" not in first
    assert crypto.decrypt(first) == crypto.decrypt(second) == "sk-upstream"


def test_it_refuses_to_decrypt_after_the_secret_key_changed(settings):
    token = crypto.encrypt("sk-upstream")
    settings.SECRET_KEY = "another-secret-key-" + "x" * 40
    with pytest.raises(ImproperlyConfigured, match="SECRET_KEY"):
        crypto.decrypt(token)


def test_a_dedicated_key_encrypts_and_old_tokens_still_decrypt(settings):
    old = crypto.encrypt("sk-old")
    settings.AETHERGATE_ENCRYPTION_KEYS = ["dedicated-key-1"]
    new = crypto.encrypt("sk-new")

    assert crypto.decrypt(old) == "sk-old"
    assert crypto.decrypt(new) == "sk-new"
    settings.AETHERGATE_ENCRYPTION_KEYS = []
    with pytest.raises(ImproperlyConfigured):
        crypto.decrypt(new)
