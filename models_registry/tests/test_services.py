"""The catalog's multi-row writes: a model's deployment set, replaced in place, all or nothing."""

from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from aethergate.testing import deploy, make_model, served_by
from models_registry import services
from models_registry.models import Deployment, Model

pytestmark = pytest.mark.django_db


def writes(queries) -> list[str]:
    return [q["sql"] for q in queries if q["sql"].split()[0] in ("INSERT", "UPDATE", "DELETE")]


def test_it_creates_updates_and_deletes_to_match_the_rows(local, gpu):
    model = make_model("llama3", "llama3:8b", endpoint=local)
    kept = model.deployments.get()
    deploy(model, gpu, "llama3:70b")

    written = services.set_deployments(
        model,
        [
            {"endpoint": local, "upstream_name": "llama3:8b", "weight": 3, "priority": 1},
            {"endpoint": gpu, "upstream_name": "llama3:q4"},
        ],
    )

    assert written is True
    assert served_by(model) == [("gpu", "llama3:q4", 1, 0), ("local", "llama3:8b", 3, 1)]
    assert model.deployments.get(endpoint=local).pk == kept.pk


def test_the_same_rows_again_write_nothing(local, gpu):
    model = make_model("llama3", "llama3:8b", endpoint=local)
    rows = [
        {"endpoint": local, "upstream_name": "llama3:8b", "weight": 2},
        {"endpoint": gpu, "upstream_name": "llama3:70b", "priority": 1},
    ]
    services.set_deployments(model, rows)
    stamps = dict(Deployment.objects.values_list("pk", "updated_at"))

    with CaptureQueriesContext(connection) as queries:
        written = services.set_deployments(model, rows)

    assert written is False
    assert writes(queries) == []
    assert dict(Deployment.objects.values_list("pk", "updated_at")) == stamps


def test_it_refuses_a_bad_set_naming_each_row_and_writes_nothing(local):
    model = make_model("llama3", "llama3:8b", endpoint=local)

    with pytest.raises(services.DeploymentsInvalid) as error:
        services.set_deployments(
            model,
            [
                {"endpoint": local, "upstream_name": "a"},
                {"endpoint": local, "upstream_name": ""},
                {"endpoint": local, "upstream_name": "a", "weight": 2},
                {"endpoint": local, "upstream_name": "b", "priority": -1},
            ],
        )

    assert error.value.rows == [
        {},
        {"upstream_name": ["This field cannot be blank."]},
        {"__all__": [services.DUPLICATE]},
        {"priority": ["Ensure this value is greater than or equal to 0."]},
    ]
    assert error.value.message_dict == {
        "deployments[1]": ["upstream_name: This field cannot be blank."],
        "deployments[2]": [services.DUPLICATE],
        "deployments[3]": ["priority: Ensure this value is greater than or equal to 0."],
    }
    assert served_by(model) == [("local", "llama3:8b", 1, 0)]


def test_save_model_writes_the_model_and_its_set_together_or_not_at_all(local):
    model = make_model("llama3", "llama3:8b", endpoint=local)
    model.price_in = Decimal("1")

    with pytest.raises(services.DeploymentsInvalid):
        services.save_model(
            model,
            update_fields=["price_in"],
            deployments=[{"endpoint": local, "upstream_name": "x", "weight": -1}],
        )

    assert Model.objects.get().price_in == 0
    assert served_by(model) == [("local", "llama3:8b", 1, 0)]

    services.save_model(model, deployments=[{"endpoint": local, "upstream_name": "x"}])

    assert Model.objects.get().price_in == 1
    assert served_by(model) == [("local", "x", 1, 0)]


def test_save_model_without_deployments_leaves_the_set(local):
    model = make_model("llama3", "llama3:8b", endpoint=local)
    model.price_in = Decimal("2")

    services.save_model(model, update_fields=["price_in"])

    assert Model.objects.get().price_in == 2
    assert served_by(model) == [("local", "llama3:8b", 1, 0)]


def test_a_new_model_is_saved_first_then_served(local):
    model = Model(name="fresh")

    services.save_model(model, deployments=[{"endpoint": local, "upstream_name": "fresh:1b"}])

    assert served_by(Model.objects.get(name="fresh")) == [("local", "fresh:1b", 1, 0)]
