"""Request logs in admin are read-only and filterable."""

import pytest
from django.urls import reverse
from django.utils import timezone

from logs.models import RequestLog

pytestmark = pytest.mark.django_db


@pytest.fixture
def log():
    return RequestLog.objects.create(
        created_at=timezone.now(),
        request_id="req-abc",
        username="alice",
        key_prefix="ag-12345678",
        model="llama3",
        endpoint="ollama",
        status=429,
        outcome="rate_limited",
    )


def test_logs_cannot_be_added_changed_or_deleted(admin_client, log):
    assert admin_client.get(reverse("admin:logs_requestlog_add")).status_code == 403
    assert (
        admin_client.get(reverse("admin:logs_requestlog_delete", args=[log.pk])).status_code == 403
    )

    url = reverse("admin:logs_requestlog_change", args=[log.pk])
    view = admin_client.get(url)
    assert view.status_code == 200
    assert 'name="_save"' not in view.content.decode()
    admin_client.post(url, {"status": 200, "outcome": "ok"})
    log.refresh_from_db()
    assert (log.status, log.outcome) == (429, "rate_limited")


def test_logs_filter_by_outcome_and_model(admin_client, log):
    RequestLog.objects.create(
        created_at=timezone.now(),
        request_id="req-def",
        username="bob",
        key_prefix="ag-87654321",
        model="mistral",
        status=200,
        outcome="ok",
    )
    changelist = reverse("admin:logs_requestlog_changelist")

    by_outcome = admin_client.get(changelist, {"outcome": "rate_limited"})
    by_model = admin_client.get(changelist, {"model": "mistral"})

    assert [r.request_id for r in by_outcome.context["cl"].result_list] == ["req-abc"]
    assert [r.request_id for r in by_model.context["cl"].result_list] == ["req-def"]
    by_day = admin_client.get(changelist, {"created_at__year": timezone.now().year})
    assert by_day.status_code == 200
    assert len(by_day.context["cl"].result_list) == 2


def test_a_whole_key_in_the_log_search_is_not_looked_up_or_echoed(admin_client, log):
    secret = "ag-12345678" + "x" * 35  # the key this log's prefix belongs to
    changelist = reverse("admin:logs_requestlog_changelist")

    response = admin_client.get(changelist, {"q": secret, "outcome": "rate_limited"})
    page = admin_client.get(response["Location"]).content.decode()
    by_prefix = admin_client.get(changelist, {"q": log.key_prefix})

    assert response.status_code == 302
    assert response["Location"] == f"{changelist}?outcome=rate_limited"
    assert secret not in page
    assert "not searched here" in page
    assert [r.request_id for r in by_prefix.context["cl"].result_list] == ["req-abc"]
