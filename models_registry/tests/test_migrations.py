"""Migration 0005 on the test database: each model's endpoint becomes its deployment, and back."""

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

BEFORE = [("models_registry", "0004_billing_unit_rules")]
AFTER = [("models_registry", "0005_add_deployments")]


def migrate(targets):
    """Migrate the test database to `targets`; the historical models of every app as the
    database now is (the other apps stay at their latest), as `apps`."""
    executor = MigrationExecutor(connection)
    executor.migrate(targets)
    executor.loader.build_graph()  # what is applied now, read again
    return executor.loader.project_state(list(executor.loader.applied_migrations)).apps


@pytest.fixture
def history(transactional_db):
    """Schema changes need a real transaction (SQLite's cannot run inside the test's);
    the database is migrated to the latest state again whatever the test did."""
    yield migrate
    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())


def test_0005_moves_each_endpoint_into_one_deployment_and_back(history):
    apps = history(BEFORE)
    Endpoint = apps.get_model("endpoints", "Endpoint")
    Model = apps.get_model("models_registry", "Model")
    local = Endpoint.objects.create(name="local", base_url="http://127.0.0.1:11434/v1")
    gpu = Endpoint.objects.create(name="gpu", base_url="http://10.0.0.5:8000/v1")
    Model.objects.create(name="llama3", upstream_name="llama3:8b", endpoint=local)
    Model.objects.create(name="unserved", upstream_name="qwen3:4b", endpoint=None)

    apps = history(AFTER)
    Model = apps.get_model("models_registry", "Model")
    Deployment = apps.get_model("models_registry", "Deployment")
    rows = Deployment.objects.order_by("pk").values_list(
        "model__name", "endpoint__name", "upstream_name", "weight", "priority"
    )
    assert list(rows) == [("llama3", "local", "llama3:8b", 1, 0)]
    assert not Deployment.objects.filter(model__name="unserved").exists()
    # After going forward, staff give models more deployments: the first one (lowest
    # priority number, then heaviest) is what going back keeps.
    llama = Model.objects.get(name="llama3")
    # (By id: the endpoints above are rows of the earlier state's classes.)
    deploy = Deployment.objects.create
    deploy(model=llama, endpoint_id=gpu.pk, upstream_name="llama3:70b", priority=1)
    unserved = Model.objects.get(name="unserved")
    deploy(model=unserved, endpoint_id=local.pk, upstream_name="qwen3:4b-q4")
    deploy(model=unserved, endpoint_id=gpu.pk, upstream_name="qwen3:4b", weight=3)
    Model.objects.create(name="bare")

    apps = history(BEFORE)
    Model = apps.get_model("models_registry", "Model")
    back = {
        name: (endpoint, upstream_name)
        for name, endpoint, upstream_name in Model.objects.values_list(
            "name", "endpoint__name", "upstream_name"
        )
    }
    assert back == {
        "llama3": ("local", "llama3:8b"),
        "unserved": ("gpu", "qwen3:4b"),
        "bare": (None, "bare"),
    }
    with pytest.raises(LookupError):
        apps.get_model("models_registry", "Deployment")
