"""The model catalog in admin: deployments, validation, fallbacks, activation, deletion."""

from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError
from django.db import connection, reset_queries
from django.test.utils import CaptureQueriesContext
from django.urls import reverse, reverse_lazy

from aethergate.testing import VIEW, deploy, make_model, make_staff
from endpoints.models import Endpoint
from models_registry.models import MAX_FALLBACK_DEPTH, Deployment, Model

pytestmark = pytest.mark.django_db

ADD = reverse_lazy("admin:models_registry_model_add")
CHANGELIST = reverse_lazy("admin:models_registry_model_changelist")
DUPLICATE = (
    "Two rows deploy the same upstream name on the same endpoint: keep one (weights and "
    "priorities belong to it)."
)


@pytest.fixture
def endpoint():
    return Endpoint.objects.create(name="ollama", base_url="http://127.0.0.1:11434/v1")


def deployments(*rows, model=None):
    """The deployment inline's POST data: `model`'s saved deployments (as the page shows
    them, unchanged), then each of `rows` (dicts of the inline's fields) as a new one."""
    saved = list(model.deployments.all()) if model else []
    data = {
        "deployments-TOTAL_FORMS": str(len(saved) + len(rows)),
        "deployments-INITIAL_FORMS": str(len(saved)),
        "deployments-MIN_NUM_FORMS": "0",
        "deployments-MAX_NUM_FORMS": "1000",
    }
    for i, d in enumerate(saved):
        data |= {
            f"deployments-{i}-id": str(d.pk),
            f"deployments-{i}-model": str(model.pk),
            f"deployments-{i}-endpoint": str(d.endpoint_id),
            f"deployments-{i}-upstream_name": d.upstream_name,
            f"deployments-{i}-weight": str(d.weight),
            f"deployments-{i}-priority": str(d.priority),
        }
    for i, row in enumerate(rows, start=len(saved)):
        data |= {f"deployments-{i}-{name}": str(value) for name, value in row.items()}
    return data


def row(endpoint, upstream_name="llama3:8b", weight=1, priority=0):
    return {
        "endpoint": endpoint.pk,
        "upstream_name": upstream_name,
        "weight": weight,
        "priority": priority,
    }


def form(endpoint=None, *, model=None, rows=None, **overrides):
    """The model page's POST data: the model's fields, and its deployments (one new one on
    `endpoint` by default; `model`'s saved ones as they are on its change page)."""
    if rows is None:
        rows = [] if model else [row(endpoint)]
    return {
        "name": "llama3",
        "capability": "TEXT",
        "billing_unit": "TOKEN",
        "strategy": "weighted",
        "price_in": "1",
        "price_out": "2",
        "is_active": "on",
        **deployments(*rows, model=model),
        **overrides,
    }


def served(model) -> list[tuple]:
    return [
        (d.endpoint.name, d.upstream_name, d.weight, d.priority)
        for d in model.deployments.select_related("endpoint")
    ]


# --------------------------------------------------------------------------- deployments


def test_it_adds_a_model_with_two_deployments(admin_client, endpoint):
    other = Endpoint.objects.create(name="gpu-b", base_url="http://127.0.0.1:8001/v1")

    response = admin_client.post(
        ADD,
        form(
            rows=[row(endpoint, weight=2), row(other, "llama3", weight=1, priority=1)],
            strategy="least_busy",
        ),
    )

    assert response.status_code == 302
    model = Model.objects.get()
    assert model.strategy == "least_busy"
    assert served(model) == [("ollama", "llama3:8b", 2, 0), ("gpu-b", "llama3", 1, 1)]


def test_a_new_model_page_offers_one_deployment_row_under_its_help(admin_client):
    page = admin_client.get(ADD)

    html = page.content.decode()
    assert page.context["inline_admin_formsets"][0].formset.total_form_count() == 1
    assert 'id="deployments-help"' in html
    assert "a higher number is a standby tier" in html
    assert "Weight 0 drains a deployment" in html
    assert html.index('id="deployments-help"') < html.index('id="deployments-group"')


def test_it_adds_a_deployment_on_the_change_page_and_keeps_the_others(admin_client, endpoint):
    model = make_model("llama3", "llama3:8b", endpoint)
    other = Endpoint.objects.create(name="gpu-b", base_url="http://127.0.0.1:8001/v1")
    url = reverse("admin:models_registry_model_change", args=[model.pk])

    response = admin_client.post(
        url, form(model=model, rows=[row(other, "llama3", priority=1)], price_in="0")
    )

    assert response.status_code == 302
    assert served(model) == [("ollama", "llama3:8b", 1, 0), ("gpu-b", "llama3", 1, 1)]


def test_it_drains_and_deletes_deployments_from_the_change_page(admin_client, endpoint):
    model = make_model("llama3", "llama3:8b", endpoint)
    deploy(model, endpoint, "llama3:70b")
    url = reverse("admin:models_registry_model_change", args=[model.pk])
    data = form(model=model, price_in="0")
    data |= {"deployments-0-weight": "0", "deployments-1-DELETE": "on"}

    response = admin_client.post(url, data)

    assert response.status_code == 302
    assert served(model) == [("ollama", "llama3:8b", 0, 0)]


def test_a_duplicate_deployment_in_one_form_is_a_form_error(admin_client, endpoint):
    response = admin_client.post(ADD, form(rows=[row(endpoint), row(endpoint, weight=3)]))

    assert response.status_code == 200
    formset = response.context["inline_admin_formsets"][0].formset
    assert formset.non_form_errors() == [DUPLICATE]
    assert formset.errors[1] == {"__all__": ["Please correct the duplicate values below."]}
    assert DUPLICATE in response.content.decode()
    assert not Model.objects.exists()
    assert not Deployment.objects.exists()


def test_a_deployment_already_saved_cannot_be_added_again(admin_client, endpoint):
    model = make_model("llama3", "llama3:8b", endpoint)
    url = reverse("admin:models_registry_model_change", args=[model.pk])

    response = admin_client.post(url, form(model=model, rows=[row(endpoint)], price_in="0"))

    assert response.status_code == 200
    formset = response.context["inline_admin_formsets"][0].formset
    assert formset.non_form_errors() == [DUPLICATE]
    assert served(model) == [("ollama", "llama3:8b", 1, 0)]
    model.refresh_from_db()
    assert model.price_in == Decimal("0")  # the model's own fields were not saved either


def test_a_negative_weight_or_priority_is_a_field_error(admin_client, endpoint):
    response = admin_client.post(ADD, form(rows=[row(endpoint, weight=-1, priority=-2)]))

    assert response.status_code == 200
    errors = response.context["inline_admin_formsets"][0].formset.errors[0]
    assert errors["weight"] == ["Ensure this value is greater than or equal to 0."]
    assert errors["priority"] == ["Ensure this value is greater than or equal to 0."]
    assert not Model.objects.exists()


def test_the_list_names_each_deployment_with_its_weight_and_tier(admin_client, endpoint):
    """One a line, in the order requests try them, and escaped."""
    gpu_a = Endpoint.objects.create(name="gpu-a", base_url="http://127.0.0.1:8001/v1")
    gpu_b = Endpoint.objects.create(name="gpu-b", base_url="http://127.0.0.1:8002/v1")
    model = make_model("llama3", "llama3:8b", gpu_a)
    model.deployments.update(weight=2)
    deploy(model, gpu_b, "llama3", priority=1)
    deploy(model, endpoint, "llama3:8b-q4", weight=0)
    Model.objects.create(name="nowhere")
    make_model("odd", "<b>bold</b>", endpoint)

    listed = admin_client.get(CHANGELIST)

    cells = dict(
        (m.name, listed.context["cl"].model_admin.served_by(m))
        for m in listed.context["cl"].result_list
    )
    assert cells == {
        "llama3": "gpu-a/llama3:8b \u00d72,<br>ollama/llama3:8b-q4 (drained),<br>"
        "gpu-b/llama3 (standby)",
        "nowhere": "-",
        "odd": "ollama/&lt;b&gt;bold&lt;/b&gt;",
    }
    assert '<td class="field-served_by">gpu-a/llama3:8b \u00d72,<br>ollama' in (
        listed.content.decode()
    )


def test_the_list_is_filtered_by_the_endpoint_that_serves_a_model(admin_client, endpoint):
    other = Endpoint.objects.create(name="gpu-b", base_url="http://127.0.0.1:8001/v1")
    both = make_model("both", "x", endpoint)
    deploy(both, other, "x")
    deploy(both, other, "y")  # two rows on one endpoint: the model is listed once
    make_model("elsewhere", "x", endpoint)

    page = admin_client.get(CHANGELIST, {"deployments__endpoint__id__exact": other.pk})

    assert [m.name for m in page.context["cl"].result_list] == ["both"]
    assert "By serving endpoint" in page.content.decode()


def test_the_list_finds_a_model_by_a_deployments_upstream_name(admin_client, endpoint):
    model = make_model("llama3", "llama3:8b", endpoint)
    deploy(model, endpoint, "meta-llama/Llama-3.1-8B-Instruct")
    make_model("qwen", "qwen2:7b", endpoint)

    page = admin_client.get(CHANGELIST, {"q": "Llama-3.1"})

    assert [m.name for m in page.context["cl"].result_list] == ["llama3"]


def _list_queries(client) -> int:
    reset_queries()  # each request empties the query log (request_started): start empty too
    with CaptureQueriesContext(connection) as queries:
        assert client.get(CHANGELIST).status_code == 200
    return len(queries)


def _models_with_deployments(start: int, count: int) -> None:
    for n in range(start, start + count):
        endpoint = Endpoint.objects.create(name=f"ep{n}", base_url="http://127.0.0.1:8001/v1")
        model = make_model(f"model{n}", "x", endpoint)
        deploy(model, endpoint, "y", weight=3)
        deploy(model, Endpoint.objects.get(name="ep0"), f"z{n}", priority=1)


def test_the_list_costs_the_same_queries_for_many_models_and_deployments(admin_client):
    _models_with_deployments(0, 2)
    _list_queries(admin_client)  # the session's first use
    few = _list_queries(admin_client)

    _models_with_deployments(2, 20)
    many = _list_queries(admin_client)

    assert few == many
    assert few <= 10  # session, user, counts, rows, deployments with their endpoints, filter


# --------------------------------------------------------------------------- prices


def test_it_stores_token_prices_entered_per_1m_tokens_per_token(admin_client, endpoint):
    response = admin_client.post(
        ADD,
        form(endpoint, price_in="0.15", price_out="0.6"),
    )

    assert response.status_code == 302
    model = Model.objects.get()
    assert served(model) == [("ollama", "llama3:8b", 1, 0)]
    assert model.price_in == Decimal("0.00000015")
    assert model.price_out == Decimal("0.0000006")


@pytest.mark.parametrize(
    ("unit", "capability"), [("IMAGE", "IMAGE"), ("MINUTE", "AUDIO_STT"), ("REQUEST", "TEXT")]
)
def test_it_stores_other_units_prices_as_entered(admin_client, endpoint, unit, capability):
    response = admin_client.post(
        ADD,
        form(
            endpoint,
            billing_unit=unit,
            capability=capability,
            price_in="0.04",
            price_out="0.0000000001",
        ),
    )

    assert response.status_code == 302
    model = Model.objects.get()
    assert (model.price_in, model.price_out) == (Decimal("0.04"), Decimal("0.0000000001"))


def test_it_refuses_a_billing_unit_the_capability_cannot_measure(admin_client, endpoint):
    response = admin_client.post(ADD, form(endpoint, billing_unit="MINUTE"))

    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert errors["billing_unit"] == [
        "Text (chat, completions) cannot be billed per minute of audio: choose one of token, "
        "request."
    ]
    assert not Model.objects.exists()


def test_it_refuses_a_price_per_1m_tokens_with_more_than_4_decimals(admin_client, endpoint):
    response = admin_client.post(ADD, form(endpoint, price_in="0.12345"))

    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert errors["price_in"] == [
        "Enter at most 4 decimal places per 1M tokens: prices are stored per single unit with 10."
    ]
    assert not Model.objects.exists()


def test_it_refuses_a_price_too_large_for_the_column(admin_client, endpoint):
    response = admin_client.post(
        ADD,
        form(endpoint, billing_unit="REQUEST", price_in="12345678901"),
    )

    assert response.status_code == 200
    assert "price_in" in response.context["adminform"].form.errors
    assert not Model.objects.exists()


def test_the_model_page_shows_prices_per_the_billing_unit(admin_client, endpoint):
    tokens = make_model("chat", "x", endpoint, price_in=Decimal("0.0000025"))
    images = make_model("draw", "y", endpoint, billing_unit="IMAGE", price_out=Decimal("0.04"))

    page = admin_client.get(reverse("admin:models_registry_model_change", args=[tokens.pk]))
    html = page.content.decode()
    assert 'name="price_in" value="2.5"' in html
    assert "Input price (per 1M tokens)" in html
    assert "90 s is 1.5 minutes" in html  # the billing unit's rules, in its help text
    page = admin_client.get(reverse("admin:models_registry_model_change", args=[images.pk]))
    assert 'name="price_out" value="0.04"' in page.content.decode()
    assert "Output price (per image)" in page.content.decode()


def test_saving_a_model_page_unchanged_keeps_its_prices(admin_client, endpoint):
    model = make_model("chat", "x", endpoint, price_in=Decimal("0.0000025"))
    url = reverse("admin:models_registry_model_change", args=[model.pk])
    shown = admin_client.get(url).context["adminform"].form

    admin_client.post(
        url,
        form(
            model=model,
            name="chat",
            price_in=shown["price_in"].value(),
            price_out=shown["price_out"].value(),
        ),
    )

    model.refresh_from_db()
    assert (model.price_in, model.price_out) == (Decimal("0.0000025"), Decimal("0"))
    assert served(model) == [("ollama", "x", 1, 0)]


def test_changing_the_unit_asks_for_prices_per_the_new_unit(admin_client, endpoint):
    model = make_model("chat", "x", endpoint, price_in=Decimal("0.0000025"))
    url = reverse("admin:models_registry_model_change", args=[model.pk])
    fields = {"name": "chat", "billing_unit": "REQUEST", "price_out": "0"}

    kept = admin_client.post(url, form(model=model, price_in="2.5", **fields))
    model.refresh_from_db()
    assert kept.context["adminform"].form.errors["price_in"] == [
        "The billing unit changed: enter this price per request."
    ]
    assert (model.billing_unit, model.price_in) == ("TOKEN", Decimal("0.0000025"))

    admin_client.post(url, form(model=model, price_in="0.01", **fields))
    model.refresh_from_db()
    assert (model.billing_unit, model.price_in) == ("REQUEST", Decimal("0.01"))


def test_a_read_only_model_page_shows_prices_for_people(client, endpoint):
    model = make_model("chat", "x", endpoint, price_in=Decimal("0.00000015"))
    client.force_login(make_staff("viewer", VIEW))
    url = reverse("admin:models_registry_model_change", args=[model.pk])

    page = client.get(url).content.decode()
    posted = client.post(url, {})

    assert '<div class="readonly">$0.15 / 1M tokens</div>' in page
    assert "0.0000001500" not in page
    assert posted.status_code == 403
    model.refresh_from_db()
    assert model.price_in == Decimal("0.00000015")


def test_the_list_shows_prices_for_people(admin_client, endpoint):
    make_model(
        "chat", "x", endpoint, price_in=Decimal("0.00000015"), price_out=Decimal("0.0000006")
    )
    make_model("tts", "y", endpoint, billing_unit="REQUEST", price_in=Decimal("0.015"))

    html = admin_client.get(CHANGELIST).content.decode()

    assert "$0.15 / 1M tokens" in html
    assert "$0.60 / 1M tokens" in html
    assert "$0.015 / request" in html
    assert "0.0000001500" not in html


def test_the_api_keeps_per_unit_prices(admin_client, endpoint):
    make_model("chat", "x", endpoint, price_in=Decimal("0.00000015"))

    listed = admin_client.get("/api/v1/models/").json()

    assert listed["results"][0]["price_in"] == "0.0000001500"


def test_negative_prices_are_refused(admin_client, endpoint):
    response = admin_client.post(ADD, form(endpoint, price_out="-0.1"))

    assert response.status_code == 200
    assert "greater than or equal to 0" in response.content.decode()
    assert not Model.objects.exists()


# --------------------------------------------------------------------------- cache prices


def test_cache_prices_are_entered_per_1m_tokens_and_stored_per_token(admin_client, endpoint):
    response = admin_client.post(
        ADD,
        form(endpoint, price_in="3", price_out="15", price_cache_read="0.3", price_cache_write=""),
    )

    assert response.status_code == 302
    model = Model.objects.get()
    assert (model.price_cache_read, model.price_cache_write) == (Decimal("0.0000003"), None)
    page = admin_client.get(reverse("admin:models_registry_model_change", args=[model.pk]))
    html = page.content.decode()
    assert 'name="price_cache_read" value="0.3"' in html
    assert page.context["adminform"].form["price_cache_write"].value() is None
    assert "Cache-read price (per 1M tokens)" in html
    assert "Empty: the input price." in html


def test_a_cache_price_is_refused_as_an_input_price_would_be(admin_client, endpoint):
    response = admin_client.post(
        ADD, form(endpoint, price_cache_read="0.12345", price_cache_write="-1")
    )

    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert errors["price_cache_read"] == [
        "Enter at most 4 decimal places per 1M tokens: prices are stored per single unit with 10."
    ]
    assert "greater than or equal to 0" in errors["price_cache_write"][0]
    assert not Model.objects.exists()


def test_changing_the_unit_asks_for_cache_prices_per_the_new_unit_too(admin_client, endpoint):
    model = make_model("chat", "x", endpoint, price_cache_read=Decimal("0.0000003"))
    url = reverse("admin:models_registry_model_change", args=[model.pk])
    fields = {"name": "chat", "billing_unit": "REQUEST", "price_in": "0.01", "price_out": "0"}

    response = admin_client.post(url, form(model=model, price_cache_read="0.3", **fields))

    assert response.context["adminform"].form.errors["price_cache_read"] == [
        "The billing unit changed: enter this price per request."
    ]
    model.refresh_from_db()
    assert (model.billing_unit, model.price_cache_read) == ("TOKEN", Decimal("0.0000003"))


def test_a_read_only_model_page_shows_cache_prices_for_people(client, endpoint):
    model = make_model("chat", "x", endpoint, price_cache_write=Decimal("0.00000375"))
    client.force_login(make_staff("viewer", VIEW))

    page = client.get(reverse("admin:models_registry_model_change", args=[model.pk]))

    html = page.content.decode()
    assert '<div class="readonly">$3.75 / 1M tokens</div>' in html
    assert '<div class="readonly">the input price</div>' in html  # cache read: none set
    assert "0.0000037500" not in html


# --------------------------------------------------------------------------- limits


def test_token_and_concurrency_limits_are_set_on_the_model_page(admin_client, endpoint):
    response = admin_client.post(
        ADD,
        form(
            endpoint,
            rpm_limit="60",
            tpm_limit="30000",
            tpd_limit="1000000",
            max_concurrent="4",
            max_output_tokens="1024",
        ),
    )

    assert response.status_code == 302
    model = Model.objects.get()
    assert (model.rpm_limit, model.tpm_limit, model.tpd_limit) == (60, 30_000, 1_000_000)
    assert (model.max_concurrent, model.max_output_tokens) == (4, 1024)
    page = admin_client.get(reverse("admin:models_registry_model_change", args=[model.pk]))
    limits = next(f for f in page.context["adminform"] if f.name == "Limits")
    assert [line.fields for line in limits] == [
        ("rpm_limit", "day_limit"),
        ("tpm_limit", "tpd_limit"),
        ("max_concurrent", "max_output_tokens"),
    ]
    assert "Token limits count input + output tokens" in page.content.decode()


@pytest.mark.parametrize("field", ["tpm_limit", "tpd_limit", "max_concurrent", "max_output_tokens"])
def test_a_limit_of_0_is_refused_on_its_field(admin_client, endpoint, field):
    response = admin_client.post(ADD, form(endpoint, **{field: "0"}))

    assert response.status_code == 200
    assert list(response.context["adminform"].form.errors) == [field]
    assert not Model.objects.exists()


# --------------------------------------------------------------------------- unpriced


def test_the_list_flags_unpriced_models_and_filters_by_pricing(admin_client, endpoint):
    make_model("unset", "a", endpoint)
    make_model("local", "b", endpoint, is_free=True)
    make_model("paid", "c", endpoint, price_out=Decimal("0.000001"))
    make_model("draw", "d", endpoint, capability="IMAGE", billing_unit="IMAGE", price_in=1)

    def listed(**params):
        page = admin_client.get(CHANGELIST, params)
        return {
            m.name: page.context["cl"].model_admin.billing(m)
            for m in page.context["cl"].result_list
        }

    everything = listed()
    assert {name for name, shown in everything.items() if "unpriced-badge" in shown} == {
        "unset",
        "draw",  # an image's price is its output price
    }
    assert everything["local"] == 'Token<br><span class="free-note">free</span>'
    assert everything["paid"] == "Token"
    assert set(listed(pricing="unpriced")) == {"unset", "draw"}
    assert set(listed(pricing="free")) == {"local"}
    assert set(listed(pricing="priced")) == {"paid"}
    html = admin_client.get(CHANGELIST).content.decode()
    assert html.count('<span class="unpriced-badge"') == 2
    assert "Free on purpose" in html  # the filter's choice


@pytest.mark.parametrize(
    ("mode", "said"),
    [
        ("serve", "This gateway serves it and logs its requests with their cost unknown"),
        ("refuse", "This gateway refuses it to keys with a budget or a prepaid balance"),
    ],
)
def test_an_unpriced_models_page_warns_what_that_means(
    admin_client, endpoint, settings, mode, said
):
    settings.AETHERGATE_UNPRICED_MODELS = mode
    model = make_model("unset", "a", endpoint)

    page = admin_client.get(reverse("admin:models_registry_model_change", args=[model.pk]))

    html = page.content.decode()
    assert 'id="unpriced-warning"' in html
    assert "what its requests cost is unknown" in html
    assert said in html
    assert "tick “free on purpose”" in html
    billing = next(f for f in page.context["adminform"] if f.name == "Billing")
    assert "unpriced-warning" in billing.description


@pytest.mark.parametrize(
    "fields", [{"is_free": True}, {"price_in": Decimal("0.000001")}], ids=["free", "priced"]
)
def test_a_free_or_priced_models_page_has_no_warning(admin_client, endpoint, fields):
    model = make_model("m", "a", endpoint, **fields)

    page = admin_client.get(reverse("admin:models_registry_model_change", args=[model.pk]))

    assert 'id="unpriced-warning"' not in page.content.decode()


def test_ticking_free_on_purpose_clears_the_flag(admin_client, endpoint):
    model = make_model("local", "a", endpoint)
    url = reverse("admin:models_registry_model_change", args=[model.pk])

    admin_client.post(
        url, form(model=model, name="local", price_in="0", price_out="0", is_free="on")
    )

    model.refresh_from_db()
    assert model.is_free and not model.unpriced
    assert 'id="unpriced-warning"' not in admin_client.get(url).content.decode()


def test_a_fallback_loop_is_refused(admin_client, endpoint):
    first = make_model("a", "a", endpoint)
    second = make_model("b", "b", endpoint, fallback=first)

    response = admin_client.post(
        reverse("admin:models_registry_model_change", args=[first.pk]),
        form(model=first, name="a", fallback=second.pk),
    )

    assert "loops back" in response.content.decode()
    first.refresh_from_db()
    assert first.fallback is None


def test_a_model_cannot_fall_back_to_itself(endpoint):
    model = make_model("a", "a", endpoint)
    model.fallback = model
    with pytest.raises(ValidationError, match="loops back"):
        model.full_clean()


def test_a_fallback_chain_has_a_depth_limit(endpoint):
    previous = None
    for i in range(MAX_FALLBACK_DEPTH + 1):
        previous = make_model(f"m{i}", "x", endpoint, fallback=previous)
    head = Model(name="head", fallback=previous)
    with pytest.raises(ValidationError, match="at most"):
        head.full_clean()


def test_deleting_a_model_clears_fallbacks_that_point_to_it(admin_client, endpoint):
    target = make_model("a", "a", endpoint)
    user = make_model("b", "b", endpoint, fallback=target)
    url = reverse("admin:models_registry_model_delete", args=[target.pk])

    assert "1 other model falls back" in admin_client.get(url).content.decode()
    admin_client.post(url, {"post": "yes"})

    user.refresh_from_db()
    assert user.fallback is None
    assert not Deployment.objects.filter(model_id=target.pk).exists()  # gone with it


def test_models_are_deactivated_from_the_list(admin_client, endpoint):
    model = make_model("a", "a", endpoint)

    admin_client.post(
        CHANGELIST,
        {"action": "deactivate_selected", "_selected_action": [model.pk]},
    )

    model.refresh_from_db()
    assert not model.is_active
