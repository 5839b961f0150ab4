"""The outbound address guard: which hosts a webhook may reach, and a connection pinned to the checked one.

A webhook URL comes from a client, so the gateway must not become that client's way into the
network it sits in (SSRF). The rules, from the OWASP SSRF prevention cheat sheet and Stripe's
smokescreen:

* only ``http`` and ``https``; an IP literal in the URL is checked at once, and odd numeric
  spellings (``2130706433``, ``0177.0.0.1``, ``0x7f.1``, ``127.1``) are refused outright;
* a hostname is resolved once, **every** address it answers is checked, and the request then goes
  to a checked address (hookclient.py connects to it), so a second lookup cannot rebind it elsewhere;
* redirects are never followed (a redirect would be an unchecked destination);
* ``Allowlist`` names networks and hosts that are reachable anyway, for in-cluster receivers.

Usage::

    allow = Allowlist.parse(["10.20.0.0/16", "hooks.internal"])
    check_url_literal(url, allow)                           # at intake: BlockedDestination -> 400
    addresses = await resolve_checked(host, port, allow)    # at delivery: connect to one of these
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from urllib.parse import urlsplit

import httpx

from asyncgate.errors import BlockedDestination

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
#: Answers the addresses of ``(host, port)`` as text; the default is the event loop's getaddrinfo.
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]

#: How long a lookup may take before the delivery attempt fails (it is retried like any other).
RESOLVE_TIMEOUT = 5.0
SCHEMES = frozenset({"http", "https"})

_net = ipaddress.ip_network

# Cloud metadata services: checked first so the refusal names them. Most also fall in a class
# below; 168.63.129.16 (Azure's wireserver) is a public address and is refused only here.
_METADATA: tuple[IPNetwork, ...] = (
    _net("169.254.169.254/32"),  # AWS, GCP, Azure, OpenStack, DigitalOcean IMDS
    _net("169.254.170.2/32"),  # AWS ECS task metadata and credentials
    _net("100.100.100.200/32"),  # Alibaba Cloud
    _net("192.0.0.192/32"),  # Oracle Cloud
    _net("168.63.129.16/32"),  # Azure wireserver
    _net("fd00:ec2::254/128"),  # AWS IMDS over IPv6
)

# First match wins, so narrower blocks come before the blocks that contain them.
_IPV4_BLOCKS: tuple[tuple[IPNetwork, str], ...] = (
    (_net("0.0.0.0/8"), "unspecified"),  # "this network"; 0.0.0.0 reaches the local host
    (_net("10.0.0.0/8"), "private"),
    (_net("100.64.0.0/10"), "cgnat"),  # RFC 6598: neither private nor global to Python
    (_net("127.0.0.0/8"), "loopback"),
    (_net("169.254.0.0/16"), "link_local"),
    (_net("172.16.0.0/12"), "private"),
    (_net("192.0.0.0/24"), "reserved"),  # IETF protocol assignments (DS-Lite, NAT64 discovery)
    (_net("192.0.2.0/24"), "reserved"),  # TEST-NET-1
    (_net("192.88.99.0/24"), "reserved"),  # 6to4 relay anycast
    (_net("192.168.0.0/16"), "private"),
    (_net("198.18.0.0/15"), "reserved"),  # benchmarking
    (_net("198.51.100.0/24"), "reserved"),  # TEST-NET-2
    (_net("203.0.113.0/24"), "reserved"),  # TEST-NET-3
    (_net("224.0.0.0/4"), "multicast"),
    (_net("240.0.0.0/4"), "reserved"),  # class E and the limited broadcast 255.255.255.255
)

# IPv6 forms that carry or reach an IPv4 address are refused whatever that address is: each is
# a way round the IPv4 rules (a mapped ::ffff:127.0.0.1 is loopback on a dual-stack socket).
_IPV6_BLOCKS: tuple[tuple[IPNetwork, str], ...] = (
    (_net("::/128"), "unspecified"),
    (_net("::1/128"), "loopback"),
    (_net("::ffff:0:0/96"), "ipv4_mapped"),
    (_net("::ffff:0:0:0/96"), "ipv4_mapped"),  # IPv4-translated (RFC 2765)
    (_net("::/96"), "ipv4_compatible"),  # deprecated ::a.b.c.d
    (_net("64:ff9b::/96"), "nat64"),
    (_net("64:ff9b:1::/48"), "nat64"),  # local-use NAT64 (RFC 8215)
    (_net("100::/64"), "reserved"),  # discard-only
    (_net("2001::/32"), "teredo"),
    (_net("2001::/23"), "reserved"),  # IETF protocol assignments
    (_net("2001:db8::/32"), "reserved"),  # documentation
    (_net("2002::/16"), "6to4"),
    (_net("3fff::/20"), "reserved"),  # documentation (RFC 9637)
    (_net("5f00::/16"), "reserved"),  # SRv6 SIDs
    (_net("fc00::/7"), "private"),  # unique local
    (_net("fe80::/10"), "link_local"),
    (_net("fec0::/10"), "private"),  # deprecated site-local
    (_net("ff00::/8"), "multicast"),
)
_GLOBAL_UNICAST_V6 = _net("2000::/3")

# A DNS name: letters, digits, hyphens (and underscores, which real zones contain), dot-separated.
_HOSTNAME = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)(\.(?!-)[a-z0-9_-]{1,63}(?<!-))*\.?")
# A label that inet_aton or the WHATWG URL parser would read as a number: 127, 0177, 0x7f, 0x.
_NUMERIC_LABEL = re.compile(r"0x[0-9a-f]*|[0-9]+")


@dataclasses.dataclass(frozen=True)
class Allowlist:
    """Networks and exact hostnames that are reachable even though the rules would refuse them."""

    networks: tuple[IPNetwork, ...] = ()
    #: Lowercase, without a trailing dot.
    hosts: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, items: Iterable[str]) -> Allowlist:
        """Build from CIDRs (``10.0.0.0/8``), addresses (``10.1.2.3``) and hostnames; ValueError on junk."""
        networks: list[IPNetwork] = []
        hosts: set[str] = set()
        for item in items:
            if not isinstance(item, str) or not item.strip():
                raise ValueError(f"expected a network or a hostname, got {item!r}")
            text = item.strip()
            try:
                networks.append(ipaddress.ip_network(text))  # strict: 10.0.0.1/8 is an error
                continue
            except ValueError as exc:
                if "/" in text or ":" in text:
                    raise ValueError(f"not a network: {text!r} ({exc})") from None
            host = _normal_host(text)
            if _is_numeric_host(host) or not _HOSTNAME.fullmatch(host):
                raise ValueError(f"not a network or a hostname: {text!r}")
            hosts.add(host)
        return cls(tuple(networks), frozenset(hosts))

    def allows_ip(self, ip: IPAddress) -> bool:
        return any(ip in network for network in self.networks)

    def allows_host(self, host: str) -> bool:
        return _normal_host(host) in self.hosts


def _normal_host(host: str) -> str:
    return host.lower().rstrip(".")


def classify(ip: IPAddress) -> str | None:
    """Why ``ip`` is refused (a reason such as ``"private"``), or None if it is a public address."""
    if any(ip in network for network in _METADATA):
        return "metadata"
    blocks = _IPV4_BLOCKS if ip.version == 4 else _IPV6_BLOCKS
    for network, reason in blocks:
        if ip in network:
            return reason
    if ip.version == 6 and ip not in _GLOBAL_UNICAST_V6:
        return "reserved"  # unallocated space outside 2000::/3
    # Whatever IANA lists as not globally reachable that the tables above do not name yet.
    return None if ip.is_global else "reserved"


def check_ip(ip: IPAddress, allow: Allowlist) -> None:
    """Raise BlockedDestination unless ``ip`` is public or inside an allowed network."""
    if allow.allows_ip(ip):
        return
    reason = classify(ip)
    if reason is not None:
        raise BlockedDestination(reason, str(ip))


def _is_numeric_host(host: str) -> bool:
    """Whether a resolver or a browser would read ``host`` as a number (an address in disguise).

    That is: anything ``inet_aton`` accepts, or any name whose last label is numeric (the WHATWG
    URL parser's rule; no top-level domain is a number).
    """
    host = host.rstrip(".")
    if not host:
        return False
    try:
        socket.inet_aton(host)
        return True
    except OSError:
        pass
    return _NUMERIC_LABEL.fullmatch(host.rsplit(".", 1)[-1].lower()) is not None


def _literal_ip(host: str) -> IPAddress | None:
    """The address if ``host`` is a canonical IPv4 dotted quad or an IPv6 literal, else None."""
    try:
        return ipaddress.ip_address(host.replace("%25", "%"))  # an IPv6 zone id arrives escaped
    except ValueError:
        return None


def check_host(host: str, allow: Allowlist) -> IPAddress | None:
    """Check a host as written in a URL: the address if it is an IP literal, None for a hostname.

    Raises BlockedDestination for a refused literal, an odd numeric spelling or a malformed name.
    """
    ip = _literal_ip(host)
    if ip is not None:
        check_ip(ip, allow)
        return ip
    if allow.allows_host(host):
        return None
    name = _normal_host(host)
    if name == "localhost" or name.endswith(".localhost"):
        raise BlockedDestination("loopback", host)  # RFC 6761: always the local host, whatever DNS says
    if _is_numeric_host(host):
        raise BlockedDestination("odd_numeric_host", host)
    if not _HOSTNAME.fullmatch(host.lower()):
        raise BlockedDestination("invalid_host", host)
    return None


def check_url_literal(url: str, allow: Allowlist) -> None:
    """Refuse at submission what is refused whatever DNS says: the scheme, literal and numeric hosts.

    The URL is read with httpx's parser, the one that will deliver it, so the check and the
    request cannot disagree about the host. Hostnames pass here; delivery resolves and checks them.
    """
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        # httpx refuses some numeric spellings itself (0177.0.0.1); name them for the client.
        host = _host_of_unparsable(url)
        if host and _is_numeric_host(host):
            raise BlockedDestination("odd_numeric_host", host) from exc
        raise BlockedDestination("invalid_url", str(exc)) from exc
    if parsed.scheme not in SCHEMES:
        raise BlockedDestination("scheme", parsed.scheme)
    if not parsed.raw_host:
        raise BlockedDestination("no_host", url)
    check_host(_ascii_host(parsed), allow)


def _ascii_host(url: httpx.URL) -> str:
    """The host as it goes on the wire: IDNA A-labels, IPv6 without brackets."""
    return url.raw_host.decode("ascii")


def _host_of_unparsable(url: str) -> str | None:
    try:
        return urlsplit(url).hostname
    except ValueError:
        return None


async def _getaddrinfo(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


async def resolve_checked(
    host: str,
    port: int,
    allow: Allowlist,
    *,
    resolver: Resolver | None = None,
    resolve_timeout: float = RESOLVE_TIMEOUT,
) -> list[IPAddress]:
    """Resolve ``host`` once and return its addresses, every one of them checked, in answer order.

    One refused address refuses the host: a name that answers both a public and a private
    address is how a rebinding attack hedges its bets. An allowed hostname skips the checks.
    Raises BlockedDestination, ``TimeoutError`` after ``resolve_timeout`` s, or ``OSError`` (gaierror)
    when the name does not resolve.
    """
    literal = check_host(host, allow)
    if literal is not None:
        return [literal]
    resolve = resolver or _getaddrinfo
    async with asyncio.timeout(resolve_timeout):
        answers = await resolve(host, port)
    addresses: list[IPAddress] = []
    for answer in answers:
        ip = ipaddress.ip_address(answer)
        if ip not in addresses:
            addresses.append(ip)
    if not addresses:
        raise BlockedDestination("no_address", host)
    if not allow.allows_host(host):
        for ip in addresses:
            check_ip(ip, allow)
    return addresses
