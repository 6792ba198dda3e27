"""The gateway fixture serves the real ASGI app, and the factories build usable data."""

from decimal import Decimal

import httpx


def test_the_gateway_sees_data_the_test_committed(gateway, make_user):
    make_user(username="root", is_staff=True, is_superuser=True, password="pw-root-123")

    with httpx.Client(base_url=gateway.base_url) as browser:
        assert browser.get("/admin/login/").status_code == 200
        response = browser.post(
            "/admin/login/",
            data={
                "username": "root",
                "password": "pw-root-123",
                "csrfmiddlewaretoken": browser.cookies["csrftoken"],
                "next": "/admin/",
            },
        )

    assert response.status_code == 302
    assert response.headers["location"] == "/admin/"


def test_factories_build_a_key_for_a_model_on_the_stand_in(
    upstream, make_endpoint, make_model, make_key
):
    model = make_model(price_in=Decimal("0.001"), rpm_limit=10)
    other = make_model(name="gpt-other", upstream_name="echo+nousage")
    embed = make_model(
        name="embed",
        upstream_name="echo",
        endpoint=make_endpoint(name="second"),
        capability="EMBEDDING",
    )
    key, secret = make_key(allowed_models=[model, embed], rate_limit="60/m")
    _, other_secret = make_key(name="second")

    (deployment,) = model.deployments.all()
    assert deployment.endpoint == other.deployments.get().endpoint
    assert deployment.endpoint.base_url == upstream.base_url
    assert deployment.endpoint.api_key == "sk-upstream-secret"
    assert "sk-upstream-secret" not in deployment.endpoint.api_key_encrypted
    assert embed.deployments.get().endpoint.name == "second"
    assert secret.startswith("ag-") and secret != other_secret
    assert set(key.allowed_models.all()) == {model, embed}
    assert key.owner.username == "alice"
