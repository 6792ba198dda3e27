"""The address policy for upstreams: which hosts and IP addresses the gateway may dial.

One policy, judged at save (an endpoint's base URL), at import and at connect
time (every address a name resolves to). Loopback, private ranges, single-label
names and public hosts are allowed; link-local, cloud metadata, unspecified,
multicast and reserved addresses are refused. Operators may narrow it further
with AETHERGATE_UPSTREAM_ALLOW_CIDRS and AETHERGATE_UPSTREAM_DENY_CIDRS.
"""

import functools
import ipaddress
import re
import socket
from collections.abc import Iterable

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Lists = tuple[IPNetwork, ...]

ALLOW_SETTING = "AETHERGATE_UPSTREAM_ALLOW_CIDRS"
DENY_SETTING = "AETHERGATE_UPSTREAM_DENY_CIDRS"

METADATA = "a cloud metadata service"

# Names of metadata services; whatever they resolve to is judged again at connect time.
METADATA_NAMES = frozenset(
    {
        "metadata",  # GCP's short name, through the VM's search domain
        "metadata.google.internal",  # GCP
        "metadata.goog",  # GCP
        "instance-data",  # AWS
        "instance-data.ec2.internal",  # AWS
        "metadata.tencentyun.com",  # Tencent Cloud
    }
)

# Checked in order: the first match names the reason. Metadata addresses come
# first, so that 169.254.169.254 is reported as what it is rather than as link-local.
_REFUSED: tuple[tuple[IPNetwork, str], ...] = tuple(
    (ipaddress.ip_network(block), reason)
    for block, reason in (
        ("169.254.169.254/32", METADATA),  # AWS, GCP, Azure, Oracle OCI, DigitalOcean, …
        ("169.254.170.2/32", METADATA),  # AWS ECS task metadata
        ("169.254.0.23/32", METADATA),  # Tencent Cloud
        ("169.254.42.42/32", METADATA),  # Scaleway
        ("100.100.100.200/32", METADATA),  # Alibaba Cloud (inside 100.64/10, which stays allowed)
        ("168.63.129.16/32", METADATA),  # Azure WireServer (a routable address)
        ("192.0.0.192/32", METADATA),  # Oracle Cloud Classic
        ("fd00:ec2::254/128", METADATA),  # AWS IMDS over IPv6 (unique-local, not link-local)
        ("fd00:ec2::23/128", METADATA),  # AWS EKS Pod Identity Agent
        ("fd20:ce::254/128", METADATA),  # GCP over IPv6
        ("fd00:42::42/128", METADATA),  # Scaleway over IPv6
        ("0.0.0.0/8", "an unspecified address"),  # Linux dials 0.0.0.0 as this host
        ("::/128", "an unspecified address"),
        ("169.254.0.0/16", "a link-local address"),
        ("fe80::/10", "a link-local address"),
        ("224.0.0.0/4", "a multicast address"),
        ("ff00::/8", "a multicast address"),
        ("240.0.0.0/4", "a reserved or broadcast address"),  # 255.255.255.255 included
    )
)

# IPv6 prefixes that carry an IPv4 address the packet is really meant for.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052 well-known prefix
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")  # RFC 4291, deprecated
_IPV6_LOOPBACK = ipaddress.IPv6Address("::1")

# A host whose last label is a number is an IPv4 address to inet_aton and to
# URL parsers (WHATWG "ends in a number"), never a name.
_NUMERIC_LABEL = re.compile(r"[0-9]+|0x[0-9a-f]*")
_IPV4_CHARACTERS = re.compile(r"[0-9a-fx.]+")


class AddressRefused(ValueError):
    """A host or address the policy refuses; the message is a sentence for the operator."""


def check_host(host: str) -> IPAddress | None:
    """Judge a URL's host (brackets removed); return its IP address, or None for a name.

    Raises AddressRefused for a refused address or metadata name, and for an
    address not written in its one canonical form ("write it as 127.0.0.1"),
    so that what is stored is exactly what is dialled. A name is judged by
    the addresses it resolves to, at connect time (`check_address`).
    """
    ip, refusal = _host_verdict(host, *_configured())
    if refusal is not None:
        raise AddressRefused(refusal)
    return ip


def check_address(address: str | IPAddress) -> None:
    """Judge an address about to be dialled: the built-in refusals, then the settings' lists.

    Raises AddressRefused naming the reason.
    """
    ip = ipaddress.ip_address(address) if isinstance(address, str) else address
    _judge(ip, *_configured())


def networks(values: Iterable[str], setting: str) -> Lists:
    """Parse a setting's CIDR blocks; ValueError with a one-line message names a bad one."""
    parsed = []
    for value in values:
        block = value.strip()
        if not block:
            continue
        try:
            parsed.append(ipaddress.ip_network(block))
        except ValueError as error:
            raise ValueError(f"{setting}: {block!r} is not a CIDR block ({error}).") from None
    return tuple(parsed)


@functools.lru_cache(maxsize=1024)
def _host_verdict(host: str, allow: Lists, deny: Lists) -> tuple[IPAddress | None, str | None]:
    # Memoised: the proxy judges its endpoints' hosts on every request.
    try:
        return _judge_host(host, allow, deny), None
    except AddressRefused as refusal:
        return None, str(refusal)


def _judge_host(host: str, allow: Lists, deny: Lists) -> IPAddress | None:
    name = host.lower()
    if name.endswith("."):
        name = name[:-1]
    if ":" in name:
        return _ipv6_literal(host, name, allow, deny)
    if _NUMERIC_LABEL.fullmatch(name.rpartition(".")[2]):
        return _ipv4_literal(host, name, allow, deny)
    if name in METADATA_NAMES:
        raise AddressRefused(f"{name} is {METADATA}, never an upstream.")
    return None


def _ipv4_literal(host: str, name: str, allow: Lists, deny: Lists) -> ipaddress.IPv4Address:
    try:
        # inet_aton reads every spelling resolvers and URL parsers accept
        # (2130706433, 0x7f000001, 127.1, 0177.0.0.1); the character check
        # keeps its leniency about trailing text out.
        if not _IPV4_CHARACTERS.fullmatch(name):
            raise OSError
        canonical = socket.inet_ntoa(socket.inet_aton(name))
    except OSError:
        raise AddressRefused(f"{host} is not a valid IPv4 address.") from None
    ip = ipaddress.IPv4Address(canonical)
    _judge(ip, allow, deny)  # first, so that a refused address is never suggested
    if host != canonical:
        raise AddressRefused(f"Write the address as {canonical}.")
    return ip


def _ipv6_literal(host: str, name: str, allow: Lists, deny: Lists) -> ipaddress.IPv6Address:
    if "%" in name:
        # A zone only means something for link-local addresses, which are refused.
        raise AddressRefused("Write the IPv6 address without a zone (%…).")
    try:
        ip = ipaddress.IPv6Address(name)
    except ValueError:
        raise AddressRefused(f"{host} is not a valid IPv6 address.") from None
    _judge(ip, allow, deny)
    if ip.ipv4_mapped is not None:
        raise AddressRefused(f"Write the address as {ip.ipv4_mapped}.")
    return ip


def _judge(ip: IPAddress, allow: Lists, deny: Lists) -> None:
    if ip.version == 6 and ip.scope_id:
        ip = ipaddress.IPv6Address(str(ip).partition("%")[0])
    judged = _unwrap(ip)
    for candidate in {ip, judged}:
        for network, reason in _REFUSED:
            if candidate.version == network.version and candidate in network:
                raise AddressRefused(f"{judged} is {reason}, never an upstream.")
    if ip.version == 6 and ip in _IPV4_COMPATIBLE and ip != _IPV6_LOOPBACK:
        raise AddressRefused(f"{ip} is a deprecated IPv4-compatible IPv6 address.")
    if any(judged in network for network in deny if network.version == judged.version):
        raise AddressRefused(f"{judged} is refused by {DENY_SETTING}.")
    if allow and not any(judged in net for net in allow if net.version == judged.version):
        raise AddressRefused(f"{judged} is not in {ALLOW_SETTING}.")


def _unwrap(ip: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 address is delivered to (mapped, NAT64), else `ip` itself."""
    if ip.version == 4:
        return ip
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip


@functools.cache
def _configured() -> tuple[Lists, Lists]:
    # Read on first use, never at import; the proxy judges a host on every
    # request, and reading Django settings costs more than the judgement.
    return (
        networks(getattr(settings, ALLOW_SETTING, ()), ALLOW_SETTING),
        networks(getattr(settings, DENY_SETTING, ()), DENY_SETTING),
    )


@receiver(setting_changed)
def _forget_configured(*, setting: str, **kwargs) -> None:
    # Settings change at run time only in tests (override_settings).
    if setting in (ALLOW_SETTING, DENY_SETTING):
        _configured.cache_clear()
