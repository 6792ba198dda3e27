"""The catalog's records (`proxy.snapshot`), read from the database as the catalog reads them."""

from aethergate.testing import make_endpoint, make_model
from endpoints.models import Endpoint
from proxy.snapshot import load_snapshot


def test_each_served_endpoint_record_carries_its_kind(db):
    ollama = make_endpoint("ollama", kind=Endpoint.Kind.OLLAMA)
    make_model("llama3", endpoint=ollama)
    make_model("any", endpoint=make_endpoint("any"))

    models = load_snapshot().models

    assert [d.endpoint.kind for d in models["llama3"].deployments] == ["ollama"]
    assert [d.endpoint.kind for d in models["any"].deployments] == ["generic"]
