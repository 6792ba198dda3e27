"""Account services (users, balances, tokens), and every entry point going through them."""

import pytest
from django.urls import reverse

from accounts import services
from accounts.models import APIToken, looks_like_token
from keys.models import looks_like_secret

pytestmark = pytest.mark.django_db


@pytest.fixture
def calls(monkeypatch):
    """`calls(name)`: wrap accounts.services.`name`, returning the list of its calls' kwargs."""

    def spy(name):
        made = []
        real = getattr(services, name)

        def recording(*args, **kwargs):
            made.append(kwargs)
            return real(*args, **kwargs)

        monkeypatch.setattr(services, name, recording)
        return made

    return spy


# --------------------------------------------------------------------------- API tokens


def test_find_api_token_by_id_prefix_or_whole_token(ops):
    token, secret = services.create_api_token(user=ops, name="ci")

    for reference in (str(token.pk), token.prefix, f"{token.prefix}…", f" {secret}\n"):
        assert services.find_api_token(reference) == token


def test_find_api_token_never_echoes_a_whole_token(ops):
    _, secret = services.create_api_token(user=ops, name="ci")
    wrong = secret[:-1] + ("A" if secret[-1] != "A" else "B")

    with pytest.raises(services.TokenNotFound) as error:
        services.find_api_token(wrong)

    assert str(error.value) == f"No API token matches {wrong[:12]!r}."


def test_a_whole_token_and_a_whole_key_are_told_from_their_prefixes(ops):
    token, secret = services.create_api_token(user=ops, name="ci")

    assert looks_like_token(secret)
    assert not looks_like_token(token.prefix)
    assert not looks_like_secret(secret)  # a token is not a consumer key
    assert not looks_like_token("agt-")


# --------------------------------------------------------------------------- entry points


def test_the_admin_issues_api_tokens_through_the_service(admin_client, ops, calls):
    made = calls("create_api_token")

    response = admin_client.post(
        reverse("admin:accounts_apitoken_add"), {"user": ops.pk, "name": "billing"}
    )

    assert response.status_code == 200
    assert made == [{"user": ops, "name": "billing", "expires_at": None}]
    token = APIToken.objects.get()
    assert token.prefix in response.content.decode()
