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


def test_each_served_endpoint_record_says_whether_it_serves_the_responses_api(db):
    make_model("gpt", endpoint=make_endpoint("openai", kind="openai", native_responses=True))
    make_model("claude", endpoint=make_endpoint("claude", kind=Endpoint.Kind.ANTHROPIC))

    models = load_snapshot().models

    assert [d.endpoint.native_responses for d in models["gpt"].deployments] == [True]
    assert [
        (d.endpoint.kind, d.endpoint.native_responses) for d in models["claude"].deployments
    ] == [("anthropic", False)]


def test_a_deployment_whose_endpoint_came_active_between_two_reads_waits_for_the_next(
    db, monkeypatch
):
    make_model("early", endpoint=make_endpoint("early"))
    late = make_endpoint("late")
    make_model("late-model", endpoint=late)
    read = Endpoint.objects.filter

    def endpoints_as_read_a_moment_before(**lookups):
        # The endpoints query ran just before `late` was activated; the deployments one after.
        return read(**lookups).exclude(pk=late.pk)

    monkeypatch.setattr(Endpoint.objects, "filter", endpoints_as_read_a_moment_before)

    models = load_snapshot().models

    assert [d.endpoint.name for d in models["early"].deployments] == ["early"]
    assert models["late-model"].deployments == ()
