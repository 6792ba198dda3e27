"""`GET /v1/models` and `GET /v1/models/{model}` (`proxy.listing`), in process.

Which models a key sees: those served (active, on an active endpoint),
allowed to it and of its capabilities. The first test reads its snapshot
from the database, as the catalog does, so that what the database's rows
say (inactive, unlinked) is what the listing shows.
"""

from aethergate import testing
from proxy.snapshot import load_snapshot
from proxy.tests import fakes
from proxy.tests.fakes import SECRET, call, error_of


def listed_ids(body: dict) -> list[str]:
    """The model ids of a `GET /v1/models` answer, sorted, once its shape is checked."""
    assert set(body) == {"object", "data"} and body["object"] == "list"
    for item in body["data"]:
        assert set(item) == {"id", "object", "created", "owned_by"}
        assert item["object"] == "model"
        assert isinstance(item["created"], int) and isinstance(item["owned_by"], str)
    return sorted(item["id"] for item in body["data"])


def list_ids(rt, secret=SECRET) -> list[str]:
    answer = call(rt, "GET", "/v1/models", secret=secret)
    assert answer.status == 200, answer.body
    return listed_ids(answer.json())


def deployed(model, endpoint):
    if endpoint is not None:
        testing.deploy(model, endpoint, "echo")
    return model


def test_it_lists_only_active_models_that_have_an_active_endpoint(db):
    from accounts.models import User
    from endpoints.models import Endpoint
    from keys.services import create_key
    from models_registry.models import Model

    served = Endpoint.objects.create(name="on", base_url="http://127.0.0.1:9/v1")
    off = Endpoint.objects.create(name="off", base_url="http://127.0.0.1:9/v1", is_active=False)
    made = {
        name: deployed(Model.objects.create(name=name, **fields), endpoint)
        for name, endpoint, fields in (
            ("gpt-test", served, {}),
            ("embed", served, {"capability": "EMBEDDING"}),
            ("gone", served, {"is_active": False}),
            ("orphan", off, {}),
            ("loose", None, {}),
        )
    }
    alice = User.objects.create_user("alice")
    _, secret = create_key(owner=alice, name="test")
    _, only_gone = create_key(owner=alice, name="only gone", allowed_models=[made["gone"]])
    rt = fakes.runtime(load_snapshot())

    assert list_ids(rt, secret) == ["embed", "gpt-test"]
    assert list_ids(rt, only_gone) == []  # an allowed list of one inactive model allows none
    retrieved = call(rt, "GET", "/v1/models/gpt-test", secret=secret)
    assert retrieved.status == 200
    assert (retrieved.json()["id"], retrieved.json()["object"]) == ("gpt-test", "model")
    for hidden in ("gone", "orphan", "loose", "nope"):
        answer = call(rt, "GET", f"/v1/models/{hidden}", secret=secret)
        error = error_of(answer, 404, "model_not_found")
        assert hidden in error["message"] and error["param"] == "model"


def test_it_filters_the_model_list_by_the_keys_allowed_models_and_capabilities():
    keys = {
        "ag-only-chat": fakes.key_info(id=1, models=frozenset({"gpt-test"})),
        "ag-only-embeddings": fakes.key_info(id=2, capabilities=frozenset({"EMBEDDING"})),
        "ag-both-but-text": fakes.key_info(
            id=3, models=frozenset({"gpt-test", "embed"}), capabilities=frozenset({"TEXT"})
        ),
        # allowed only a model that is no longer served (inactive: not in the snapshot)
        "ag-only-gone": fakes.key_info(id=4, models=frozenset({"gone"})),
    }
    models = [fakes.model_info(id=1), fakes.model_info("embed", id=2, capability="EMBEDDING")]
    rt = fakes.runtime(fakes.snapshot(keys, models))

    assert list_ids(rt, "ag-only-chat") == ["gpt-test"]
    assert list_ids(rt, "ag-only-embeddings") == ["embed"]
    assert list_ids(rt, "ag-both-but-text") == ["gpt-test"]
    assert list_ids(rt, "ag-only-gone") == []

    assert call(rt, "GET", "/v1/models/gpt-test", secret="ag-only-chat").status == 200
    assert call(rt, "GET", "/v1/models/embed", secret="ag-only-embeddings").status == 200
    for secret, name in (
        ("ag-only-chat", "embed"),
        ("ag-only-embeddings", "gpt-test"),
        ("ag-both-but-text", "embed"),
        ("ag-only-gone", "gone"),
    ):
        answer = call(rt, "GET", f"/v1/models/{name}", secret=secret)
        error_of(answer, 404, "model_not_found")


def test_a_model_object_names_the_public_model_and_its_creation_time_only():
    model = fakes.model_info("gpt-test", upstream_name="llama3:8b-secret-name", created=1234)
    rt = fakes.runtime(fakes.snapshot(models=[model]))

    listed = call(rt, "GET", "/v1/models")
    retrieved = call(rt, "GET", "/v1/models/gpt-test")

    expected = {"id": "gpt-test", "object": "model", "created": 1234, "owned_by": "aethergate"}
    assert listed.json() == {"object": "list", "data": [expected]}
    assert retrieved.json() == expected
    for answer in (listed, retrieved):
        assert b"llama3" not in answer.body and b"upstream.test" not in answer.body
        assert answer.headers["content-type"] == "application/json"


def test_listing_and_retrieving_are_logged_and_cost_nothing():
    rt = fakes.runtime()

    listed = call(rt, "GET", "/v1/models")
    retrieved = call(rt, "GET", "/v1/models/gpt-test")
    missing = call(rt, "GET", "/v1/models/nope")

    assert [(r.path, r.model, r.status, r.outcome, r.cost) for r in rt.writer.records] == [
        ("/v1/models", "", 200, "ok", 0),
        ("/v1/models/gpt-test", "gpt-test", 200, "ok", 0),
        ("/v1/models/nope", "nope", 404, "model_not_found", 0),
    ]
    assert [r.request_id for r in rt.writer.records] == [
        a.headers["x-request-id"] for a in (listed, retrieved, missing)
    ]
    assert rt.upstream.calls == []
