"""Fetching images by URL without becoming a proxy into the server's own network.

Only http(s); the host's addresses are resolved first and any that is not a global unicast
address is refused (unless the server allows private ones, e.g. in tests): loopback, private,
link-local, shared (CGNAT), reserved, multicast, documentation ranges, and the IPv6 forms that
carry an IPv4 address (IPv4-mapped ``::ffff:0:0/96``, NAT64 ``64:ff9b::/96``, 6to4
``2002::/16``) unless that IPv4 address is global itself; the local-use NAT64 prefix
``64:ff9b:1::/48``, Teredo and IPv4-compatible addresses are refused outright. Redirects are
followed by hand so each hop is checked; the body is read with a size cap, a timeout per step,
and a deadline for the whole fetch (a server dripping a byte every few seconds is cut off).

Example:
    >>> is_public_address(ipaddress.ip_address("64:ff9b::7f00:1"))  # NAT64 of 127.0.0.1
    False
    >>> data = fetch_url("https://example.com/cat.jpg", max_bytes=20_000_000)  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from urllib.parse import urljoin, urlsplit

import httpx

from lookalike.errors import FetchError

MAX_REDIRECTS = 3
NAT64 = ipaddress.ip_network("64:ff9b::/96")
#: Never global, whatever the Python version's ``is_global`` says.
REFUSED_V6 = (
    ipaddress.ip_network("64:ff9b:1::/48"),  # local-use NAT64 (RFC 8215)
    ipaddress.ip_network("2001::/32"),  # Teredo: the client's IPv4 is hidden in it
    ipaddress.ip_network("::/96"),  # IPv4-compatible (deprecated), :: and ::1 among them
    ipaddress.ip_network("fec0::/10"),  # site-local (deprecated)
)

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def is_public_address(address: Address) -> bool:
    """True for a global unicast address, and for an IPv6 one that embeds an IPv4 address only
    when that one is global too."""
    if isinstance(address, ipaddress.IPv4Address):
        return address.is_global and not address.is_multicast
    mapped = address.ipv4_mapped
    if mapped is not None:
        return is_public_address(mapped)
    if address in NAT64:
        return is_public_address(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    if any(address in net for net in REFUSED_V6):
        return False
    if address.sixtofour is not None and not is_public_address(address.sixtofour):
        return False
    return address.is_global and not address.is_multicast


def _check_addresses(infos: list) -> None:
    for info in infos:
        address = ipaddress.ip_address(info[4][0].split("%")[0])
        if not is_public_address(address):
            raise FetchError(f"refused to fetch from a non-public address ({address})")


def _parts(url: str):
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise FetchError(f"only http(s) URLs can be fetched: {url!r}")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise FetchError(f"bad port in {url!r}") from None
    return parts, port


def check_url(url: str, *, allow_private: bool = False) -> None:
    """Refuse non-http(s) URLs and hosts that resolve to non-public addresses."""
    parts, port = _parts(url)
    if allow_private:
        return
    try:
        infos = socket.getaddrinfo(parts.hostname, port, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError):
        raise FetchError(f"cannot resolve host {parts.hostname!r}") from None
    _check_addresses(infos)


async def check_url_async(url: str, *, allow_private: bool = False) -> None:
    """:func:`check_url` without blocking the event loop (the lookup is cancellable)."""
    parts, port = _parts(url)
    if allow_private:
        return
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(parts.hostname, port, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError):
        raise FetchError(f"cannot resolve host {parts.hostname!r}") from None
    _check_addresses(infos)


def fetch_url(
    url: str,
    *,
    max_bytes: int,
    timeout: float = 10.0,
    allow_private: bool = False,
    deadline: float = 15.0,
) -> bytes:
    """The body of ``url``, at most ``max_bytes`` long, within ``timeout`` seconds per step and
    (to within one step) ``deadline`` seconds in all. The server uses :func:`fetch_url_async`,
    whose deadline is exact."""
    end = time.monotonic() + deadline

    def left() -> float:
        remaining = end - time.monotonic()
        if remaining <= 0:
            raise FetchError(f"{url} took longer than {deadline:g} s")
        return min(timeout, remaining)

    with httpx.Client(follow_redirects=False) as client:
        for _ in range(MAX_REDIRECTS + 1):
            check_url(url, allow_private=allow_private)
            try:
                with client.stream("GET", url, timeout=left()) as response:
                    if response.is_redirect and "location" in response.headers:
                        url = urljoin(url, response.headers["location"])
                        continue
                    if response.status_code != 200:
                        raise FetchError(f"{url} answered HTTP {response.status_code}")
                    body = bytearray()
                    for chunk in response.iter_bytes():
                        body += chunk
                        if len(body) > max_bytes:
                            raise FetchError(f"{url} is larger than {max_bytes:,} bytes")
                        left()
                    return bytes(body)
            except httpx.HTTPError as exc:
                raise FetchError(f"cannot fetch {url}: {type(exc).__name__}") from None
    raise FetchError(f"{url}: too many redirects")


async def fetch_url_async(
    url: str,
    *,
    max_bytes: int,
    timeout: float = 10.0,
    allow_private: bool = False,
    deadline: float = 15.0,
) -> bytes:
    """:func:`fetch_url` on the event loop (no thread is held while the remote server is
    slow), cancelled when ``deadline`` seconds have passed, whatever it was doing."""
    try:
        async with asyncio.timeout(deadline):
            return await _fetch_async(url, max_bytes, timeout, allow_private)
    except TimeoutError:
        raise FetchError(f"{url} took longer than {deadline:g} s") from None


async def _fetch_async(url: str, max_bytes: int, timeout: float, allow_private: bool) -> bytes:
    async with httpx.AsyncClient(timeout=timeout, follow_redirects=False) as client:
        for _ in range(MAX_REDIRECTS + 1):
            await check_url_async(url, allow_private=allow_private)
            try:
                async with client.stream("GET", url) as response:
                    if response.is_redirect and "location" in response.headers:
                        url = urljoin(url, response.headers["location"])
                        continue
                    if response.status_code != 200:
                        raise FetchError(f"{url} answered HTTP {response.status_code}")
                    body = bytearray()
                    async for chunk in response.aiter_bytes():
                        body += chunk
                        if len(body) > max_bytes:
                            raise FetchError(f"{url} is larger than {max_bytes:,} bytes")
                    return bytes(body)
            except httpx.HTTPError as exc:
                raise FetchError(f"cannot fetch {url}: {type(exc).__name__}") from None
    raise FetchError(f"{url}: too many redirects")
