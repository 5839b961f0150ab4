"""The outbound address guard: the refusal corpus, the allowlist and resolution (tests/test_hookclient.py: delivery)."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable, Sequence

import pytest

from asyncgate.errors import BlockedDestination
from asyncgate.netguard import (
    Allowlist,
    check_ip,
    check_url_literal,
    classify,
    resolve_checked,
)

NOTHING = Allowlist()

# The reference corpus: OWASP's SSRF prevention cheat sheet, smokescreen's deny classes, the IANA
# special-purpose registries and the cloud metadata addresses, each with the reason it is refused.
REFUSED_ADDRESSES = [
    # loopback
    ("127.0.0.1", "loopback"),
    ("127.255.255.254", "loopback"),
    ("::1", "loopback"),
    # private (RFC 1918, unique local, site-local)
    ("10.0.0.1", "private"),
    ("10.255.255.255", "private"),
    ("172.16.0.1", "private"),
    ("172.31.255.254", "private"),
    ("192.168.0.1", "private"),
    ("192.168.255.255", "private"),
    ("fc00::1", "private"),
    ("fd00::1", "private"),
    ("fec0::1", "private"),
    # link-local and the metadata services
    ("169.254.0.1", "link_local"),
    ("169.254.255.254", "link_local"),
    ("fe80::1", "link_local"),
    ("febf::1", "link_local"),
    ("fe80::1%eth0", "link_local"),
    ("169.254.169.254", "metadata"),
    ("169.254.170.2", "metadata"),
    ("100.100.100.200", "metadata"),
    ("192.0.0.192", "metadata"),
    ("168.63.129.16", "metadata"),
    ("fd00:ec2::254", "metadata"),
    # carrier-grade NAT, which Python's ipaddress calls neither private nor global
    ("100.64.0.1", "cgnat"),
    ("100.127.255.254", "cgnat"),
    # unspecified / "this network"
    ("0.0.0.0", "unspecified"),
    ("0.1.2.3", "unspecified"),
    ("::", "unspecified"),
    # multicast
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("ff02::1", "multicast"),
    ("ff05::1:3", "multicast"),
    # reserved, documentation, benchmarking, broadcast
    ("240.0.0.1", "reserved"),
    ("255.255.255.255", "reserved"),
    ("192.0.0.1", "reserved"),
    ("192.0.0.170", "reserved"),
    ("192.0.2.1", "reserved"),
    ("192.88.99.1", "reserved"),
    ("198.18.0.1", "reserved"),
    ("198.19.255.254", "reserved"),
    ("198.51.100.1", "reserved"),
    ("203.0.113.1", "reserved"),
    ("100::1", "reserved"),
    ("2001:db8::1", "reserved"),
    ("2001:10::1", "reserved"),
    ("3fff::1", "reserved"),
    ("4000::1", "reserved"),
    # IPv6 forms carrying an IPv4 address: refused whatever that address is
    ("::ffff:127.0.0.1", "ipv4_mapped"),
    ("::ffff:7f00:1", "ipv4_mapped"),
    ("::ffff:169.254.169.254", "ipv4_mapped"),
    ("::ffff:8.8.8.8", "ipv4_mapped"),
    ("::ffff:0:127.0.0.1", "ipv4_mapped"),
    ("::127.0.0.1", "ipv4_compatible"),
    ("::7f00:1", "ipv4_compatible"),
    ("64:ff9b::7f00:1", "nat64"),
    ("64:ff9b::a9fe:a9fe", "nat64"),
    ("64:ff9b:1::1", "nat64"),
    ("2002:7f00:1::", "6to4"),
    ("2002:a9fe:a9fe::1", "6to4"),
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "teredo"),
    ("2001::1", "teredo"),
]

PUBLIC_ADDRESSES = [
    "8.8.8.8",
    "1.1.1.1",
    "93.184.215.14",
    "100.63.255.255",  # just below 100.64.0.0/10
    "100.128.0.1",  # just above it
    "172.32.0.1",
    "192.169.0.1",
    "2606:4700:4700::1111",
    "2001:4860:4860::8888",
    "2a00:1450:4001:80b::200e",
]

# URLs refused at submission, whatever DNS would say.
REFUSED_URLS = [
    # odd numeric spellings of 127.0.0.1 and friends
    ("http://2130706433/", "odd_numeric_host"),
    ("http://0177.0.0.1/", "odd_numeric_host"),
    ("http://0x7f.1/", "odd_numeric_host"),
    ("http://0x7f000001/", "odd_numeric_host"),
    ("http://017700000001/", "odd_numeric_host"),
    ("http://0x7f.0x0.0x0.0x1/", "odd_numeric_host"),
    ("http://127.1/", "odd_numeric_host"),
    ("http://10.1/", "odd_numeric_host"),
    ("http://127.0.0.01/", "odd_numeric_host"),
    ("http://127.0.0.1./", "odd_numeric_host"),
    ("http://0/", "odd_numeric_host"),
    ("http://1.2.3.4.5/", "odd_numeric_host"),
    ("http://%31%32%37.0.0.1/", "odd_numeric_host"),
    # literal addresses, however they are dressed
    ("http://127.0.0.1/", "loopback"),
    ("http://[::1]:8080/hook", "loopback"),
    ("http://[0:0:0:0:0:0:0:1]/", "loopback"),
    ("http://127。0。0。1/", "loopback"),  # ideographic full stops, which IDNA maps to dots
    ("http://evil.example\\@127.0.0.1/", "loopback"),  # httpx reads the host after the last @
    ("http://user:pw@10.0.0.1/", "private"),
    ("http://169.254.169.254/latest/meta-data/", "metadata"),
    ("http://[fd00:ec2::254]/latest/meta-data/", "metadata"),
    ("http://[::ffff:127.0.0.1]/", "ipv4_mapped"),
    ("http://[::ffff:a9fe:a9fe]/", "ipv4_mapped"),
    ("http://[64:ff9b::a9fe:a9fe]/", "nat64"),
    ("https://[fe80::1%25eth0]/", "link_local"),
    ("http://0.0.0.0:8080/", "unspecified"),
    ("http://100.64.0.1/", "cgnat"),
    # names that are the local host by definition (RFC 6761)
    ("http://localhost/", "loopback"),
    ("http://LOCALHOST./", "loopback"),
    ("http://api.localhost/", "loopback"),
    # schemes other than http(s)
    ("file:///etc/passwd", "scheme"),
    ("gopher://127.0.0.1:6379/_INFO", "scheme"),
    ("dict://127.0.0.1:11211/stat", "scheme"),
    ("ftp://example.com/", "scheme"),
    ("ws://example.com/", "scheme"),
    ("javascript:alert(1)", "scheme"),
    # not a host at all
    ("http://ex%61mple.com/", "invalid_host"),
    ("http:///path-only", "no_host"),
]

ACCEPTED_URLS = [
    "https://hooks.example.com/done",
    "http://hooks.example.com:8080/done?x=1",
    "https://8.8.8.8/",
    "https://[2606:4700:4700::1111]:8443/",
    "https://xn--bcher-kva.example/",
    "https://bücher.example/",
    "https://a_b.example.com/",
]


class CountingResolver:
    """A resolver that answers from a script, one answer per call, and counts its calls."""

    def __init__(self, *answers: Sequence[str]) -> None:
        self.answers = list(answers)
        self.calls: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> Sequence[str]:
        self.calls.append((host, port))
        return self.answers[min(len(self.calls), len(self.answers)) - 1]


def blocked_reason(fn: Callable[..., object], *args: object) -> str:
    with pytest.raises(BlockedDestination) as caught:
        fn(*args)
    return caught.value.reason


@pytest.mark.parametrize(("address", "reason"), REFUSED_ADDRESSES)
def test_forbidden_address_is_refused_with_its_reason(address: str, reason: str) -> None:
    ip = ipaddress.ip_address(address)
    assert blocked_reason(check_ip, ip, NOTHING) == reason
    assert classify(ip) == reason


@pytest.mark.parametrize("address", PUBLIC_ADDRESSES)
def test_public_address_is_allowed(address: str) -> None:
    check_ip(ipaddress.ip_address(address), NOTHING)
    assert classify(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(("url", "reason"), REFUSED_URLS)
def test_url_refused_at_submission(url: str, reason: str) -> None:
    assert blocked_reason(check_url_literal, url, NOTHING) == reason


@pytest.mark.parametrize("url", ACCEPTED_URLS)
def test_url_with_public_literal_or_hostname_passes_submission(url: str) -> None:
    check_url_literal(url, NOTHING)


def test_corpus_covers_every_class() -> None:
    reasons = {reason for _, reason in REFUSED_ADDRESSES} | {reason for _, reason in REFUSED_URLS}
    expected = {
        "loopback",
        "private",
        "link_local",
        "metadata",
        "cgnat",
        "multicast",
        "reserved",
        "unspecified",
        "ipv4_mapped",
        "ipv4_compatible",
        "nat64",
        "6to4",
        "teredo",
        "odd_numeric_host",
        "scheme",
    }
    assert expected <= reasons
    assert len(REFUSED_ADDRESSES) + len(REFUSED_URLS) >= 60


def test_allowlisted_network_is_reachable_and_nothing_else_is() -> None:
    allow = Allowlist.parse(["10.0.0.0/8", "fd12:3456::/32"])
    check_ip(ipaddress.ip_address("10.1.2.3"), allow)
    check_ip(ipaddress.ip_address("fd12:3456::1"), allow)
    check_url_literal("http://10.20.30.40:9000/hook", allow)
    assert blocked_reason(check_ip, ipaddress.ip_address("192.168.1.1"), allow) == "private"
    assert blocked_reason(check_ip, ipaddress.ip_address("127.0.0.1"), allow) == "loopback"
    assert blocked_reason(check_url_literal, "file:///etc/passwd", allow) == "scheme"


def test_allowlist_parse_normalises_and_keeps_networks_and_hosts() -> None:
    allow = Allowlist.parse([" 10.0.0.0/8 ", "Hooks.Internal.", "10.9.8.7", "::1"])
    assert allow.networks == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("10.9.8.7/32"),
        ipaddress.ip_network("::1/128"),
    )
    assert allow.hosts == frozenset({"hooks.internal"})
    assert allow.allows_host("HOOKS.internal") and not allow.allows_host("other.internal")


@pytest.mark.parametrize(
    "item", ["", "  ", "10.0.0.1/8", "10.0.0.0/33", "http://hooks", "hooks.internal:8080", "a b", "127.1", "-x.example"]
)
def test_allowlist_parse_rejects_junk(item: str) -> None:
    with pytest.raises(ValueError):
        Allowlist.parse([item])


def test_resolution_checks_every_address_not_just_the_first() -> None:
    resolver = CountingResolver(["93.184.215.14", "127.0.0.1"])
    with pytest.raises(BlockedDestination) as caught:
        asyncio.run(resolve_checked("rebind.example", 443, NOTHING, resolver=resolver))
    assert caught.value.reason == "loopback"
    assert resolver.calls == [("rebind.example", 443)]


def test_resolution_returns_checked_addresses_in_answer_order_without_duplicates() -> None:
    resolver = CountingResolver(["2606:4700:4700::1111", "1.1.1.1", "1.1.1.1"])
    addresses = asyncio.run(resolve_checked("one.example", 443, NOTHING, resolver=resolver))
    assert addresses == [ipaddress.ip_address("2606:4700:4700::1111"), ipaddress.ip_address("1.1.1.1")]


def test_name_without_addresses_is_refused() -> None:
    resolver = CountingResolver([])
    with pytest.raises(BlockedDestination) as caught:
        asyncio.run(resolve_checked("empty.example", 80, NOTHING, resolver=resolver))
    assert caught.value.reason == "no_address"


def test_literal_and_numeric_hosts_are_never_looked_up() -> None:
    resolver = CountingResolver(["8.8.8.8"])
    assert asyncio.run(resolve_checked("8.8.8.8", 80, NOTHING, resolver=resolver)) == [ipaddress.ip_address("8.8.8.8")]
    with pytest.raises(BlockedDestination) as caught:
        asyncio.run(resolve_checked("0x7f.1", 80, NOTHING, resolver=resolver))
    assert caught.value.reason == "odd_numeric_host"
    assert resolver.calls == []


def test_allowlisted_hostname_skips_the_address_checks() -> None:
    allow = Allowlist.parse(["hooks.internal"])
    resolver = CountingResolver(["10.0.0.5"])
    assert asyncio.run(resolve_checked("HOOKS.internal.", 80, allow, resolver=resolver)) == [
        ipaddress.ip_address("10.0.0.5")
    ]
    with pytest.raises(BlockedDestination) as caught:
        asyncio.run(resolve_checked("other.internal", 80, allow, resolver=resolver))
    assert caught.value.reason == "private"


def test_slow_resolution_is_bounded_by_its_timeout() -> None:
    async def never(host: str, port: int) -> Sequence[str]:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    with pytest.raises(TimeoutError):
        asyncio.run(resolve_checked("slow.example", 80, NOTHING, resolver=never, resolve_timeout=0.05))


def test_default_resolver_answers_localhost() -> None:
    allow_localhost = Allowlist.parse(["localhost"])
    addresses = asyncio.run(resolve_checked("localhost", 80, allow_localhost))
    assert addresses and all(ip.is_loopback for ip in addresses)
