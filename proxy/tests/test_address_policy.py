"""The address policy at connect time: the address actually dialled, whatever the URL says.

Names are judged by what they resolve to (the connector's resolver), IP addresses
in the URL as written; a refusal is an OpenAI-shaped 503 that names no address.
"""

import asyncio
import logging
import socket

import openai
import pytest

from proxy import upstream as upstream_client
from proxy.tests.fakes import without_upstream_ids
from proxy.tests.test_forwarding import (
    HELLO,
    HELLO_TEXT,
    assert_no_internals,
    assert_openai_error,
    only_log,
)

LOOPBACK_DENIED = ["127.0.0.0/8", "::1/128"]


@pytest.fixture
def secret(make_key):
    return make_key()[1]


def refused_request(client_for, secret, upstream, base_url, *, stream=False):
    """Send one chat request that must be refused; check what the client and the log got."""
    with pytest.raises(openai.InternalServerError) as caught:
        client_for(secret).chat.completions.create(model="gpt-test", messages=HELLO, stream=stream)

    error = caught.value
    assert error.status_code == 503
    assert_openai_error(error.response.json(), "upstream_address_refused")
    assert_no_internals(error.response.text, upstream, base_url)
    assert str(upstream.port) not in error.response.text
    row = only_log()
    assert (row.model, row.status, row.outcome) == ("gpt-test", 503, "upstream_error")
    assert without_upstream_ids(row.attempts) == [
        {
            "model": "gpt-test",
            "endpoint": "local",
            "deployment": "local/echo",
            "error": "address refused",
        }
    ]
    assert_no_internals(row.error, upstream, base_url)
    assert upstream.received == []


def test_an_endpoint_named_localhost_reaches_the_upstream(
    gateway, upstream, make_endpoint, make_model, secret, client_for
):
    endpoint = make_endpoint(name="local", base_url=f"http://localhost:{upstream.port}/v1")
    make_model(endpoint=endpoint)

    answer = client_for(secret).chat.completions.create(model="gpt-test", messages=HELLO)

    assert answer.choices[0].message.content == HELLO_TEXT
    assert [r.model for r in upstream.received] == ["echo"]
    assert only_log().outcome == "ok"


@pytest.mark.parametrize("stream", [False, True], ids=["non-stream", "stream"])
def test_a_deny_list_refuses_a_name_by_the_address_it_resolves_to(
    gateway, upstream, make_endpoint, make_model, secret, client_for, settings, caplog, stream
):
    base_url = f"http://localhost:{upstream.port}/v1"
    make_model(endpoint=make_endpoint(name="local", base_url=base_url))
    # Read by the resolver when the name is looked up, after the gateway started.
    settings.AETHERGATE_UPSTREAM_DENY_CIDRS = LOOPBACK_DENIED

    with caplog.at_level(logging.WARNING, logger="proxy.forwarding"):
        refused_request(client_for, secret, upstream, base_url, stream=stream)

    assert any(
        "Upstream local refused by the address policy" in r.getMessage()
        and "AETHERGATE_UPSTREAM_DENY_CIDRS" in r.getMessage()
        for r in caplog.records
    )


@pytest.mark.parametrize(
    "host",
    [
        "0.0.0.0",  # noqa: S104 -- Linux dials it as this host, so it would reach the stand-in
        "[::ffff:127.0.0.1]",
        "2130706433",
    ],
)
def test_an_address_saved_before_the_policy_is_refused_at_connect_time(
    gateway, upstream, make_endpoint, make_model, secret, client_for, host
):
    # .save() without full_clean(): a row written before the policy existed.
    base_url = f"http://{host}:{upstream.port}/v1"
    make_model(endpoint=make_endpoint(name="local", base_url=base_url))

    refused_request(client_for, secret, upstream, base_url)


def test_a_deny_list_refuses_an_ip_address_in_the_url_in_any_spelling(
    gateway, upstream, make_endpoint, make_model, secret, client_for, settings
):
    base_url = f"http://127.0.0.1:{upstream.port}/v1"
    make_model(endpoint=make_endpoint(name="local", base_url=base_url))
    settings.AETHERGATE_UPSTREAM_DENY_CIDRS = LOOPBACK_DENIED

    refused_request(client_for, secret, upstream, base_url)


# --------------------------------------------------------------------------- the resolver


class _FixedResolver:
    """Answers every lookup with the given addresses, as a DNS server could."""

    def __init__(self, *hosts):
        self.hosts = hosts

    async def resolve(self, host, port=0, family=socket.AF_INET):
        return [
            {"hostname": host, "host": h, "port": port, "family": family, "proto": 0, "flags": 0}
            for h in self.hosts
        ]

    async def close(self):
        pass


def resolve(*hosts, name="upstream.example"):
    async def run():
        resolver = upstream_client.PolicyResolver()
        await resolver.close()
        resolver._resolver = _FixedResolver(*hosts)
        return [r["host"] for r in await resolver.resolve(name, 443)]

    return asyncio.run(run())


def test_the_resolver_drops_refused_addresses_and_keeps_the_others():
    assert resolve("169.254.169.254", "10.0.0.5", "::ffff:169.254.169.254", "fd12::5") == [
        "10.0.0.5",
        "fd12::5",
    ]


@pytest.mark.parametrize(
    ("hosts", "reason"),
    [
        (("169.254.169.254",), "169.254.169.254 is a cloud metadata service"),
        (("fd00:ec2::254", "0.0.0.0"), "fd00:ec2::254 is a cloud metadata service"),  # noqa: S104 -- an address to refuse, never to bind
    ],
)
def test_the_resolver_refuses_a_name_whose_every_address_is_refused(hosts, reason):
    with pytest.raises(upstream_client.AddressRefused, match=f"upstream.example: {reason}"):
        resolve(*hosts)


def test_the_resolver_refuses_a_metadata_name_without_looking_it_up():
    with pytest.raises(upstream_client.AddressRefused, match="cloud metadata service"):
        resolve("10.0.0.5", name="metadata.google.internal.")
