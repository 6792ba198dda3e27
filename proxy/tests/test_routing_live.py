"""Several deployments of one model on three real stand-in servers, through the served gateway.

The official SDK talks to the gateway over HTTP; each stand-in counts what reached it.
"""

import openai
import pytest

from aethergate import testing
from aethergate.testing import wait_for_logs
from proxy.tests.upstream import Upstream

HELLO = [{"role": "user", "content": "hi there"}]


@pytest.fixture
def standins():
    with Upstream() as a, Upstream() as b, Upstream() as c:
        yield {"a": a, "b": b, "c": c}


@pytest.fixture
def sdk(gateway, make_key):
    with openai.OpenAI(base_url=gateway.v1, api_key=make_key()[1], max_retries=0) as client:
        yield client


def spread_over(standins, names: dict[str, str], **fields):
    """The model `spread`, one deployment per stand-in, with the upstream names `names`."""
    first = testing.make_endpoint("a", standins["a"].base_url)
    model = testing.make_model("spread", names["a"], first, **fields)
    for key in ("b", "c"):
        testing.deploy(model, testing.make_endpoint(key, standins[key].base_url), names[key])
    return model


def test_a_failing_replica_is_opened_and_the_others_answer_every_request(standins, sdk):
    spread_over(standins, {"a": "echo", "b": "echo", "c": "fail=503"})

    answers = [sdk.chat.completions.create(model="spread", messages=HELLO) for _ in range(60)]

    assert {a.model for a in answers} == {"spread"}
    served = len(standins["a"].received) + len(standins["b"].received)
    assert served == 60  # each request answered once, by a or b
    assert min(len(standins["a"].received), len(standins["b"].received)) > 10
    # Five failures in a row open c's circuit; a probe may follow if the run took 5 s.
    assert 5 <= len(standins["c"].received) <= 6
    rows = wait_for_logs(60)
    retried = [r for r in rows if len(r.attempts) == 2]
    assert len(retried) == len(standins["c"].received)
    for row in retried:
        first, second = row.attempts
        assert (first["deployment"], first["status"], first["error"]) == (
            "c/fail=503",
            503,
            "HTTP 503",
        )
        assert second["deployment"] in ("a/echo", "b/echo") and second["status"] == 200
        assert (row.status, row.outcome) == (200, "ok")


def test_a_session_stays_on_the_replica_that_served_it(standins, sdk):
    spread_over(standins, {"a": "echo", "b": "echo", "c": "echo"})

    for _ in range(12):
        sdk.chat.completions.create(
            model="spread", messages=HELLO, extra_headers={"X-Session-Id": "agent-7"}
        )
    assert sorted(len(s.received) for s in standins.values()) == [0, 0, 12]
    for n in range(12):
        sdk.chat.completions.create(model="spread", messages=HELLO, user=f"user-{n % 2}")

    for user in ("user-0", "user-1"):  # the user field names a session too
        homes = [
            name
            for name, standin in standins.items()
            if any(r.json.get("user") == user for r in standin.received)
        ]
        assert len(homes) == 1, (user, homes)
