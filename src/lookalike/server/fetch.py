"""Fetching images by URL without becoming a proxy into the server's own network.

Only http(s); the host's addresses are resolved first and private, loopback, link-local and
reserved ones are refused (unless the server allows them, e.g. in tests); redirects are followed
by hand so each hop is checked; the body is read with a size cap and a timeout.

Example:
    >>> data = fetch_url("https://example.com/cat.jpg", max_bytes=20_000_000)  # doctest: +SKIP
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urljoin, urlsplit

import httpx

from lookalike.errors import FetchError

MAX_REDIRECTS = 3


def check_url(url: str, *, allow_private: bool = False) -> None:
    """Refuse non-http(s) URLs and hosts that resolve to non-public addresses."""
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise FetchError(f"only http(s) URLs can be fetched: {url!r}")
    if allow_private:
        return
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or 80, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError):
        raise FetchError(f"cannot resolve host {parts.hostname!r}") from None
    for info in infos:
        address = ipaddress.ip_address(info[4][0].split("%")[0])
        if not address.is_global:
            raise FetchError(f"refused to fetch from a non-public address ({address})")


def fetch_url(
    url: str, *, max_bytes: int, timeout: float = 10.0, allow_private: bool = False
) -> bytes:
    """The body of ``url``, at most ``max_bytes`` long, within ``timeout`` seconds per step."""
    with httpx.Client(timeout=timeout, follow_redirects=False) as client:
        for _ in range(MAX_REDIRECTS + 1):
            check_url(url, allow_private=allow_private)
            try:
                with client.stream("GET", url) as response:
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
                    return bytes(body)
            except httpx.HTTPError as exc:
                raise FetchError(f"cannot fetch {url}: {type(exc).__name__}") from None
    raise FetchError(f"{url}: too many redirects")
