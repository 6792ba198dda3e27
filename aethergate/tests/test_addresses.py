"""The upstream address policy: every spelling judged as what would be dialled."""

import re
import socket

import pytest

from aethergate.lib import addresses
from aethergate.lib.addresses import AddressRefused, check_address, check_host


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", "127.0.0.1"),  # Ollama on the same host
        ("::1", "::1"),
        ("10.0.0.5", "10.0.0.5"),
        ("172.16.3.4", "172.16.3.4"),
        ("192.168.1.20", "192.168.1.20"),
        ("100.64.0.1", "100.64.0.1"),  # CGNAT / Tailscale: only Alibaba's one address is refused
        ("fc00::1", "fc00::1"),
        ("fd12:3456::1", "fd12:3456::1"),
        ("8.8.8.8", "8.8.8.8"),
        ("2606:4700::1111", "2606:4700::1111"),
        ("64:ff9b::808:808", "64:ff9b::808:808"),  # NAT64 of a public address
        ("ollama", None),  # a Compose service name
        ("vllm", None),
        ("localhost", None),
        ("api.openai.com", None),
        ("api.openai.com.", None),  # a fully qualified name
        ("metadata-proxy.example.com", None),
    ],
)
def test_it_allows_loopback_private_public_and_names(host, expected):
    ip = check_host(host)

    assert (None if ip is None else str(ip)) == expected


@pytest.mark.parametrize(
    ("host", "reason"),
    [
        ("169.254.169.254", "169.254.169.254 is a cloud metadata service"),
        ("100.100.100.200", "100.100.100.200 is a cloud metadata service"),
        ("168.63.129.16", "168.63.129.16 is a cloud metadata service"),
        ("192.0.0.192", "192.0.0.192 is a cloud metadata service"),
        ("169.254.170.2", "cloud metadata"),
        ("fd00:ec2::254", "fd00:ec2::254 is a cloud metadata service"),
        ("fd20:ce::254", "cloud metadata"),
        ("metadata.google.internal", "metadata.google.internal is a cloud metadata service"),
        ("metadata.google.internal.", "metadata.google.internal is a cloud metadata service"),
        ("METADATA.Google.Internal", "metadata.google.internal is a cloud metadata service"),
        ("metadata", "metadata is a cloud metadata service"),
        ("metadata.goog", "cloud metadata"),
        ("instance-data", "cloud metadata"),
        ("169.254.1.1", "169.254.1.1 is a link-local address"),
        ("fe80::1", "fe80::1 is a link-local address"),
        ("0.0.0.0", "0.0.0.0 is an unspecified address"),  # noqa: S104 -- an address to refuse, never to bind
        ("0.1.2.3", "0.1.2.3 is an unspecified address"),
        ("::", ":: is an unspecified address"),
        ("224.0.0.1", "a multicast address"),
        ("ff02::1", "a multicast address"),
        ("240.0.0.1", "a reserved or broadcast address"),
        ("255.255.255.255", "a reserved or broadcast address"),
    ],
)
def test_it_refuses_metadata_link_local_unspecified_and_multicast(host, reason):
    with pytest.raises(AddressRefused, match=reason):
        check_host(host)


@pytest.mark.parametrize(
    ("host", "reason"),
    [
        # Numeric IPv4 spellings that inet_aton, getaddrinfo and yarl accept,
        # judged as the address they dial, then refused as not canonical.
        ("2130706433", "Write the address as 127.0.0.1."),
        ("0x7f000001", "Write the address as 127.0.0.1."),
        ("0x7F000001", "Write the address as 127.0.0.1."),
        ("127.1", "Write the address as 127.0.0.1."),
        ("0177.0.0.1", "Write the address as 127.0.0.1."),
        ("127.0.0.01", "Write the address as 127.0.0.1."),
        ("0x7f.0.0.1", "Write the address as 127.0.0.1."),
        ("127.0.0.1.", "Write the address as 127.0.0.1."),
        ("10.1", "Write the address as 10.0.0.1."),
        # The same spellings of a refused address name the refusal, never suggest it.
        ("2852039166", "169.254.169.254 is a cloud metadata service"),
        ("0xa9fea9fe", "169.254.169.254 is a cloud metadata service"),
        ("0251.0376.0251.0376", "169.254.169.254 is a cloud metadata service"),
        ("169.254.43518", "169.254.169.254 is a cloud metadata service"),
        ("0", "0.0.0.0 is an unspecified address"),
        # IPv6 carrying an IPv4 address: judged as that address.
        ("::ffff:127.0.0.1", "Write the address as 127.0.0.1."),
        ("::ffff:7f00:1", "Write the address as 127.0.0.1."),
        ("::ffff:169.254.169.254", "169.254.169.254 is a cloud metadata service"),
        ("::ffff:a9fe:a9fe", "169.254.169.254 is a cloud metadata service"),
        ("::ffff:0.0.0.0", "0.0.0.0 is an unspecified address"),
        ("64:ff9b::a9fe:a9fe", "169.254.169.254 is a cloud metadata service"),
        ("::127.0.0.1", "deprecated IPv4-compatible"),
        ("::a9fe:a9fe", "deprecated IPv4-compatible"),
        # Zones only mean something on link-local addresses.
        ("fe80::1%25eth0", "without a zone"),
        ("fe80::1%eth0", "without a zone"),
        # Ends in a number, so an IPv4 address to URL parsers, but not a valid one.
        ("1.2.3.4.5", "not a valid IPv4 address"),
        ("999.0.0.1", "not a valid IPv4 address"),
        ("host.123", "not a valid IPv4 address"),
    ],
)
def test_it_judges_every_spelling_as_the_address_it_dials(host, reason):
    with pytest.raises(AddressRefused, match=re.escape(reason)):
        check_host(host)


@pytest.mark.parametrize("host", ["2130706433", "0x7f000001", "127.1", "0177.0.0.1", "10.1"])
def test_the_canonical_form_suggested_is_what_the_resolver_dials(host):
    dialled = socket.getaddrinfo(host, 80, type=socket.SOCK_STREAM)[0][4][0]

    with pytest.raises(AddressRefused, match=f"Write the address as {dialled}"):
        check_host(host)


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("169.254.169.254", "cloud metadata"),
        ("::ffff:169.254.169.254", "169.254.169.254 is a cloud metadata service"),
        ("fe80::1%eth0", "fe80::1 is a link-local address"),
        ("0.0.0.0", "unspecified"),  # noqa: S104 -- an address to refuse, never to bind
        ("::", "unspecified"),
    ],
)
def test_it_refuses_resolved_addresses_in_any_form(address, reason):
    with pytest.raises(AddressRefused, match=reason):
        check_address(address)


@pytest.mark.parametrize("address", ["127.0.0.1", "::1", "::ffff:127.0.0.1", "10.1.2.3"])
def test_it_allows_resolved_loopback_and_private_addresses(address):
    check_address(address)


def test_a_deny_list_refuses_addresses_in_it_and_mapped_spellings_of_them(settings):
    settings.AETHERGATE_UPSTREAM_DENY_CIDRS = ["127.0.0.0/8", "::1/128", "10.0.0.0/8"]

    for refused in ("127.0.0.1", "::1", "::ffff:127.0.0.1", "10.9.9.9"):
        with pytest.raises(AddressRefused, match="refused by AETHERGATE_UPSTREAM_DENY_CIDRS"):
            check_address(refused)
    with pytest.raises(AddressRefused, match="refused by AETHERGATE_UPSTREAM_DENY_CIDRS"):
        check_host("10.0.0.5")
    check_address("192.168.1.1")
    assert check_host("ollama") is None  # names are judged by what they resolve to


def test_an_allow_list_admits_only_its_addresses_and_deny_wins(settings):
    settings.AETHERGATE_UPSTREAM_ALLOW_CIDRS = ["10.0.0.0/8", "fd00::/8"]
    settings.AETHERGATE_UPSTREAM_DENY_CIDRS = ["10.6.0.0/16"]

    check_address("10.1.2.3")
    check_address("fd12::1")
    for refused, reason in [
        ("127.0.0.1", "not in AETHERGATE_UPSTREAM_ALLOW_CIDRS"),
        ("8.8.8.8", "not in AETHERGATE_UPSTREAM_ALLOW_CIDRS"),
        ("::1", "not in AETHERGATE_UPSTREAM_ALLOW_CIDRS"),
        ("10.6.0.1", "refused by AETHERGATE_UPSTREAM_DENY_CIDRS"),
    ]:
        with pytest.raises(AddressRefused, match=reason):
            check_address(refused)


def test_an_allow_list_never_admits_what_is_always_refused(settings):
    settings.AETHERGATE_UPSTREAM_ALLOW_CIDRS = ["0.0.0.0/0", "::/0"]

    for refused in ("169.254.169.254", "fd00:ec2::254", "0.0.0.0", "::", "fe80::1"):  # noqa: S104 -- an address to refuse, never to bind
        with pytest.raises(AddressRefused, match="never an upstream"):
            check_address(refused)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (["10.0.0.0/8", " ::1/128 ", ""], ["10.0.0.0/8", "::1/128"]),
        (["192.168.1.5"], ["192.168.1.5/32"]),
        ([], []),
    ],
)
def test_it_reads_cidr_lists(values, expected):
    assert [str(n) for n in addresses.networks(values, "SETTING")] == expected


@pytest.mark.parametrize("value", ["10.0.0.0/33", "10.0.0.1/8", "nonsense", "fe80::/129"])
def test_it_names_a_bad_cidr_block_in_one_line(value):
    with pytest.raises(ValueError, match=f"^SETTING: '{value}' is not a CIDR block") as error:
        addresses.networks([value], "SETTING")

    assert "\n" not in str(error.value)
