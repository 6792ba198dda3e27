"""Endpoint URL rules."""

import pytest
from django.core.exceptions import ValidationError

from endpoints.models import validate_upstream_url


@pytest.mark.parametrize(
    "url",
    [
        "http://ollama:11434/v1",  # a Docker Compose service name
        "https://api.openai.com/v1",
        "http://127.0.0.1:8000/v1",
        "http://[::1]:8080/v1",
        "http://localhost/v1",
    ],
)
def test_it_accepts_upstream_urls_including_single_label_hosts(url):
    validate_upstream_url(url)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://files.example.com", "http:// or https://"),
        ("http://", "http:// or https://"),
        ("http://user:secret@host/v1", "credential field"),
        ("http://host:99999/v1", "valid URL"),
        ("http://bad_host/v1", "valid URL"),
        ("http://-bad/v1", "valid URL"),
        ("http://host/v1?token=x", "no query"),
    ],
)
def test_it_refuses_what_is_not_an_upstream_base_url(url, message):
    with pytest.raises(ValidationError, match=message):
        validate_upstream_url(url)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://169.254.169.254/latest/meta-data", "cloud metadata service"),
        ("http://metadata.google.internal/computeMetadata/v1", "cloud metadata service"),
        ("http://[fd00:ec2::254]/latest", "cloud metadata service"),
        ("http://0.0.0.0:11434/v1", "unspecified address"),
        ("http://[::]:11434/v1", "unspecified address"),
        ("http://[fe80::1%25eth0]:8000/v1", "without a zone"),
        ("http://[::ffff:127.0.0.1]:11434/v1", "Write the address as 127.0.0.1."),
        ("http://2130706433:11434/v1", "Write the address as 127.0.0.1."),
        ("http://0x7f000001:11434/v1", "Write the address as 127.0.0.1."),
        ("http://127.1:11434/v1", "Write the address as 127.0.0.1."),
        ("http://0177.0.0.1:11434/v1", "Write the address as 127.0.0.1."),
    ],
)
def test_it_refuses_what_the_address_policy_refuses(url, message):
    with pytest.raises(ValidationError, match=message) as error:
        validate_upstream_url(url)

    assert error.value.code == "address_refused"


@pytest.mark.parametrize("url", ["http://10.0.0.5:8000/v1", "http://[fd12::5]:8000/v1"])
def test_it_accepts_private_addresses(url):
    validate_upstream_url(url)
