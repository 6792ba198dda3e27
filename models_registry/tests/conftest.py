"""The model catalog tests' endpoints: `local` (the default local upstream) and `gpu`."""

import pytest

from aethergate.testing import make_endpoint


@pytest.fixture
def local(db):
    return make_endpoint("local")


@pytest.fixture
def gpu(db):
    return make_endpoint("gpu", "http://gpu.example/v1")
