"""Fetching web pages for imports, safely: timeouts, size limits, robots.txt, bounded crawls, and
no requests to loopback, private or link-local addresses unless the policy allows them.

The address check has no DNS-rebinding window: the connection pool's network backend
(:class:`_CheckedBackend`) resolves each host itself, once per connection, checks every address
the answer holds, and connects to a checked address, never to the name again. TLS still
verifies the certificate against the name (SNI), and the ``Host`` header is the name. Redirects
are followed here, not by httpx, so each new URL is checked before it is requested, and its
connection goes through the same backend.

Only fetching lives here; extracting the main text of a page is the parsers' work.
"""

from __future__ import annotations

import html.parser
import ipaddress
import socket
import ssl
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from urllib.parse import urldefrag, urljoin, urlsplit
from urllib.robotparser import RobotFileParser

import httpcore
import httpx

from selftune import __version__

__all__ = [
    "DEFAULT_USER_AGENT",
    "FetchPolicy",
    "FetchRefused",
    "Fetched",
    "Refused",
    "RobotsCache",
    "checked_addresses",
    "crawl",
    "extract_html_links",
    "fetch",
    "is_public_address",
    "system_resolver",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# host, port -> the addresses it resolves to, as strings ("93.184.216.34", "2606:2800::1")
Resolver = Callable[[str, int], Sequence[str]]

DEFAULT_USER_AGENT = f"selftune/{__version__}"
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
# Google reads the first 500 KiB of a robots.txt and ignores the rest (RFC 9309 asks for >= 500).
ROBOTS_MAX_BYTES = 500 * 1024

# IPv6 prefixes that carry an IPv4 address in their last 32 bits and reach it through a
# translator: the address behind them is what gets connected to, so it is what is checked.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_LOCAL_NAT64 = ipaddress.IPv6Network("64:ff9b:1::/48")


def is_public_address(address: IPAddress) -> bool:
    """Whether ``address`` is a globally routable unicast address: not loopback, private,
    link-local, multicast, reserved, unspecified, carrier-grade NAT (100.64.0.0/10),
    documentation or benchmarking space, nor an IPv6 address that embeds one of those
    (IPv4-mapped ``::ffff:a.b.c.d``, 6to4 ``2002::/16``, NAT64 ``64:ff9b::/96``)."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            return is_public_address(embedded)
        if address.is_site_local or address in _LOCAL_NAT64:
            return False
    return (
        not (
            address.is_loopback
            or address.is_private
            or address.is_link_local
            or address.is_multicast
            or address.is_reserved
            or address.is_unspecified
        )
        and address.is_global
    )  # is_global also rules out 100.64.0.0/10


def system_resolver(host: str, port: int) -> list[str]:
    """The addresses ``host`` resolves to, from the system's resolver (``getaddrinfo``)."""
    return [str(info[4][0]) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)]


@dataclass(frozen=True)
class FetchPolicy:
    """What a fetch may do. Imports build it from the ``imports`` settings; the defaults
    suit fetching documents from the public web."""

    allow_private: bool = False
    """Allow loopback, private, link-local and other non-public addresses (an intranet wiki)."""
    timeout_s: float = 10.0
    """Seconds for one fetch, its redirects included (robots.txt is read with a time of its own;
    the system resolver's own timeouts bound name lookups)."""
    max_bytes: int = 10 * 1024 * 1024
    """The largest body read, after decompression; a longer one is refused as ``too_large``."""
    max_redirects: int = 5
    """Redirects followed before ``too_many_redirects``."""
    user_agent: str = DEFAULT_USER_AGENT
    """Sent with every request, and the name robots.txt rules are matched against."""
    respect_robots: bool = True
    """Refuse pages that the site's robots.txt disallows for ``user_agent``."""
    resolver: Resolver = field(default=system_resolver, repr=False)
    """Resolves a host to addresses; tests give their own."""
    is_public: Callable[[IPAddress], bool] = field(default=is_public_address, repr=False)
    """Decides which addresses count as public; tests give their own."""

    def __post_init__(self) -> None:
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be above 0 seconds, not {self.timeout_s}")
        if self.max_bytes < 1:
            raise ValueError(f"max_bytes must be at least 1, not {self.max_bytes}")
        if self.max_redirects < 0:
            raise ValueError(
                f"max_redirects must be 0 (follow none) or more, not {self.max_redirects}"
            )
        if not self.user_agent.strip():
            raise ValueError("user_agent must name the fetcher: robots.txt rules are matched to it")


class FetchRefused(Exception):
    """A URL that was not fetched, and why: ``code`` is one of ``invalid_url``,
    ``private_address``, ``robots_disallowed``, ``timeout``, ``unreachable``, ``too_large``,
    ``too_many_redirects``, ``http_error`` (with ``status``) or ``bad_response``."""

    def __init__(self, code: str, message: str, *, url: str = "", status: int | None = None):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.url = url
        self.status = status


@dataclass(frozen=True)
class Fetched:
    """A page fetched: its final URL (after redirects), status, media type (``text/html``, no
    parameters), body, headers (lower-case names) and the URLs that redirected to it."""

    url: str
    status: int
    content_type: str
    body: bytes
    headers: Mapping[str, str]
    redirects: tuple[str, ...] = ()


@dataclass(frozen=True)
class Refused:
    """A URL that a crawl tried and did not fetch (see :class:`FetchRefused` for the codes)."""

    url: str
    code: str
    message: str
    status: int | None = None


def _refusal_to_record(url: str, refused: FetchRefused) -> Refused:
    return Refused(url=url, code=refused.code, message=refused.message, status=refused.status)


def _checked_url(url: str) -> httpx.URL:
    """``url`` parsed, without its fragment, when it is an http(s) URL with a host and no
    credentials."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise FetchRefused("invalid_url", f"{url!r} is not a URL: {exc}", url=str(url)) from exc
    if parsed.scheme not in ("http", "https"):
        raise FetchRefused(
            "invalid_url", f"{url!r}: only http and https URLs can be fetched", url=url
        )
    if parsed.userinfo:
        raise FetchRefused(
            "invalid_url",
            f"{url!r} holds credentials (user:password@); remove them from the URL",
            url=url,
        )
    if not parsed.host:
        raise FetchRefused("invalid_url", f"{url!r} names no host", url=url)
    return parsed.copy_with(fragment=None)


def _normalized(url: str) -> str:
    """One spelling per page: lower-case scheme and host, no default port, no fragment, and
    ``/`` for an empty path."""
    parsed = _checked_url(url)
    return f"{parsed.scheme}://{parsed.netloc.decode('ascii')}{parsed.raw_path.decode('ascii')}"


def _site(url: str) -> tuple[str, str, int | None]:
    parsed = httpx.URL(url)
    return parsed.scheme, parsed.host, parsed.port


def checked_addresses(host: str, port: int, policy: FetchPolicy) -> list[IPAddress]:
    """The addresses ``host`` resolves to, resolved once; refused as ``private_address`` when
    any of them is not public and the policy does not allow private addresses."""
    try:
        literal: IPAddress | None = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        literal = None
    if literal is not None:
        addresses = [literal]
    else:
        try:
            answers = policy.resolver(host, port)
            addresses = list(dict.fromkeys(ipaddress.ip_address(a) for a in answers))
        except (OSError, UnicodeError, ValueError) as exc:
            raise FetchRefused("unreachable", f"{host} does not resolve: {exc}") from exc
        if not addresses:
            raise FetchRefused("unreachable", f"{host} resolves to no address")
    if not policy.allow_private:
        refused = [address for address in addresses if not policy.is_public(address)]
        if refused:
            raise FetchRefused(
                "private_address",
                f"{host} resolves to {refused[0]}, a loopback, private, link-local or otherwise "
                "non-public address; such addresses are refused unless the policy allows "
                "private addresses (allow_private)",
            )
    return addresses


class _CheckedBackend(httpcore.SyncBackend):
    """Opens every connection to an address it has just resolved and checked itself: the name
    is never resolved again between the check and the connection."""

    def __init__(self, policy: FetchPolicy) -> None:
        self._policy = policy

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        failure: httpcore.ConnectError | None = None
        for address in checked_addresses(host, port, self._policy):
            try:
                # An address literal: create_connection parses it, it resolves nothing.
                return super().connect_tcp(
                    str(address), port, timeout, local_address, socket_options
                )
            except httpcore.ConnectError as exc:
                failure = exc
        assert failure is not None  # checked_addresses returns at least one address
        raise failure

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        raise FetchRefused("invalid_url", "fetching over a Unix socket is not supported")


class _CoreStream(httpx.SyncByteStream):
    def __init__(self, stream: Iterable[bytes]) -> None:
        self._stream = stream

    def __iter__(self) -> Iterator[bytes]:
        yield from self._stream

    def close(self) -> None:
        close = getattr(self._stream, "close", None)
        if close is not None:
            close()


@cache
def _ssl_context() -> ssl.SSLContext:
    """httpx's default (certifi's CAs, certificates and host names verified), made once: loading
    the CAs takes milliseconds that every page of a crawl would pay."""
    return httpx.create_ssl_context()


class _CheckedTransport(httpx.BaseTransport):
    """httpx's transport over an httpcore pool whose connections go through
    :class:`_CheckedBackend` (httpx's own ``HTTPTransport`` takes no network backend). No proxy:
    a proxy would make the connection, to addresses nobody checked."""

    def __init__(self, policy: FetchPolicy) -> None:
        self._pool = httpcore.ConnectionPool(
            ssl_context=_ssl_context(),
            network_backend=_CheckedBackend(policy),
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.SyncByteStream)
        response = self._pool.handle_request(
            httpcore.Request(
                method=request.method,
                url=httpcore.URL(
                    scheme=request.url.raw_scheme,
                    host=request.url.raw_host,
                    port=request.url.port,
                    target=request.url.raw_path,
                ),
                headers=request.headers.raw,
                content=request.stream,
                extensions=request.extensions,
            )
        )
        assert isinstance(response.stream, Iterable)
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_CoreStream(response.stream),
            extensions=response.extensions,
        )

    def close(self) -> None:
        self._pool.close()


class RobotsCache:
    """Each site's robots.txt, fetched once (with the same checks as any page) and kept.

    A missing robots.txt, or one answered with any 4xx, allows everything; a 5xx, a timeout or
    an unreachable site disallows everything, as RFC 9309 and Google do: a server that cannot
    say what it allows is not crawled. Only the first 500 KiB are read."""

    def __init__(self, policy: FetchPolicy) -> None:
        self._policy = policy
        self._agent = policy.user_agent
        self._sites: dict[tuple[str, str, int | None], RobotFileParser | bool] = {}

    def check(self, url: str) -> None:
        """Raise ``robots_disallowed`` when ``url``'s site disallows it for the policy's agent
        (or ``private_address`` when the site's address is refused)."""
        site = _site(url)
        if site not in self._sites:
            try:
                self._sites[site] = self._load(str(httpx.URL(url).join("/robots.txt")))
            except FetchRefused as refused:  # private_address: the page's own refusal
                refused.url = url
                raise
        rules = self._sites[site]
        allowed = rules if isinstance(rules, bool) else rules.can_fetch(self._agent, url)
        if not allowed:
            raise FetchRefused(
                "robots_disallowed",
                f"the site's robots.txt disallows {url} for {self._agent!r}",
                url=url,
            )

    def _load(self, robots_url: str) -> RobotFileParser | bool:
        """The site's rules, or True (all allowed) or False (none allowed)."""
        try:
            found = _fetch(robots_url, self._policy, None, ROBOTS_MAX_BYTES, truncate=True)
        except FetchRefused as refused:
            if refused.code == "private_address":
                raise
            return refused.code == "http_error" and (refused.status or 500) < 500
        rules = RobotFileParser(robots_url)
        rules.parse(found.body.decode("utf-8", errors="replace").splitlines())
        return rules


def fetch(url: str, policy: FetchPolicy, *, robots: RobotsCache | None = None) -> Fetched:
    """GET ``url`` under ``policy``: redirects followed and each one checked, the body read up
    to ``policy.max_bytes``. Raises :class:`FetchRefused` with the reason it was not fetched.

    ``robots`` keeps robots.txt files between calls (a crawl shares one); without it, a fetch
    that respects robots.txt reads the site's afresh."""
    if robots is None and policy.respect_robots:
        robots = RobotsCache(policy)
    return _fetch(url, policy, robots, policy.max_bytes, truncate=False)


def _fetch(
    url: str, policy: FetchPolicy, robots: RobotsCache | None, max_bytes: int, *, truncate: bool
) -> Fetched:
    deadline = time.monotonic() + policy.timeout_s
    current = _checked_url(url)
    redirects: list[str] = []
    with httpx.Client(
        transport=_CheckedTransport(policy),
        headers={"User-Agent": policy.user_agent},
        follow_redirects=False,
        trust_env=False,  # no proxies or .netrc credentials from the environment
    ) as client:
        while True:
            try:
                if robots is not None:
                    robots.check(str(current))
                status, headers, body = _get(client, current, deadline, max_bytes, truncate)
            except FetchRefused as refused:
                refused.url = refused.url or str(current)
                raise
            location = headers.get("location")
            if status in REDIRECT_STATUSES and location:
                if len(redirects) >= policy.max_redirects:
                    raise FetchRefused(
                        "too_many_redirects",
                        f"more than {policy.max_redirects} redirects from {url}",
                        url=str(current),
                    )
                redirects.append(str(current))
                current = _checked_url(str(current.join(location)))
                continue
            return Fetched(
                url=str(current),
                status=status,
                content_type=headers.get("content-type", "").split(";")[0].strip().lower(),
                body=body,
                headers=headers,
                redirects=tuple(redirects),
            )


def _get(
    client: httpx.Client, url: httpx.URL, deadline: float, max_bytes: int, truncate: bool
) -> tuple[int, dict[str, str], bytes]:
    """One request: its status, headers and body (empty for a redirect)."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise FetchRefused("timeout", "the time for this fetch ran out before the request")
    try:
        with client.stream("GET", url, timeout=remaining) as response:
            headers = dict(response.headers.items())
            if response.status_code in REDIRECT_STATUSES and "location" in headers:
                return response.status_code, headers, b""
            if not 200 <= response.status_code < 300:
                raise FetchRefused(
                    "http_error",
                    f"the server answered {response.status_code} {response.reason_phrase}",
                    status=response.status_code,
                )
            return response.status_code, headers, _body(response, deadline, max_bytes, truncate)
    except (httpx.TimeoutException, httpcore.TimeoutException) as exc:
        raise FetchRefused("timeout", f"no answer in time: {exc or type(exc).__name__}") from exc
    except (httpx.NetworkError, httpcore.NetworkError, OSError) as exc:
        raise FetchRefused("unreachable", f"the connection failed: {exc}") from exc
    except (httpx.HTTPError, httpcore.ProtocolError, httpcore.UnsupportedProtocol) as exc:
        raise FetchRefused("bad_response", f"the server's answer is not valid HTTP: {exc}") from exc


def _body(response: httpx.Response, deadline: float, max_bytes: int, truncate: bool) -> bytes:
    """The decoded body, read in chunks and stopped at ``max_bytes`` (refused, or cut there
    when ``truncate``)."""
    declared = response.headers.get("content-length", "")
    if not truncate and declared.isdigit() and int(declared) > max_bytes:
        raise FetchRefused(
            "too_large", f"the body is {declared} bytes, over the limit of {max_bytes}"
        )
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_bytes():
        if size + len(chunk) > max_bytes:
            if truncate:
                chunks.append(chunk[: max_bytes - size])
                break
            raise FetchRefused("too_large", f"the body is over the limit of {max_bytes} bytes")
        chunks.append(chunk)
        size += len(chunk)
        if time.monotonic() > deadline:
            raise FetchRefused("timeout", "the body took longer than the fetch's time limit")
    return b"".join(chunks)


def crawl(
    start_url: str,
    policy: FetchPolicy,
    *,
    max_depth: int = 1,
    max_pages: int = 50,
    same_site: bool = True,
    extract_links: Callable[[bytes, str], list[str]] | None = None,
) -> Iterator[Fetched | Refused]:
    """Fetch ``start_url`` and the pages it links to, breadth-first, up to ``max_depth`` links
    away (0: the start page alone), each URL once (fragments dropped), and yield each page
    fetched or refused: at most ``max_pages`` records in all.

    ``same_site`` keeps to the start page's scheme, host and port (those of its final URL, so
    that a redirect from http to https does not leave every link off-site). Links come from
    ``extract_links(body, url)``; by default, from the ``<a href>`` of HTML pages. A start URL
    that is not an http(s) URL raises :class:`FetchRefused` (``invalid_url``)."""
    if max_depth < 0:
        raise ValueError(f"max_depth must be 0 (the start page alone) or more, not {max_depth}")
    if max_pages < 1:
        raise ValueError(f"max_pages must be at least 1, not {max_pages}")
    robots = RobotsCache(policy) if policy.respect_robots else None
    start = _normalized(start_url)
    queue = deque([(start, 0)])
    seen = {start}
    site: tuple[str, str, int | None] | None = None
    records = 0
    while queue and records < max_pages:
        url, depth = queue.popleft()
        records += 1
        try:
            page = fetch(url, policy, robots=robots)
        except FetchRefused as refused:
            yield _refusal_to_record(url, refused)
            continue
        yield page
        seen.add(_normalized(page.url))
        if site is None:
            site = _site(page.url)
        if depth >= max_depth:
            continue
        if extract_links is None and page.content_type not in HTML_TYPES:
            continue
        for link in (extract_links or extract_html_links)(page.body, page.url):
            try:
                normalized = _normalized(link)
            except FetchRefused:
                continue
            if normalized in seen or (same_site and _site(normalized) != site):
                continue
            seen.add(normalized)
            queue.append((normalized, depth + 1))


class _LinkParser(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.base: str | None = None
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        href = dict(attrs).get("href")
        if href is None:
            return
        if tag == "a":
            self.hrefs.append(href.strip())
        elif tag == "base" and self.base is None:
            self.base = href.strip()


def extract_html_links(body: bytes, url: str) -> list[str]:
    """The http(s) targets of an HTML page's ``<a href>``, absolute (against ``<base href>``
    when the page has one), without fragments, each once, in the page's order."""
    parser = _LinkParser()
    parser.feed(body.decode("utf-8", errors="replace"))
    parser.close()
    links: dict[str, None] = {}
    try:
        base = urljoin(url, parser.base) if parser.base else url
    except ValueError:
        base = url
    for href in parser.hrefs:
        try:
            absolute = urldefrag(urljoin(base, href))[0]
            scheme = urlsplit(absolute).scheme.lower()
        except ValueError:  # a malformed address, such as an unclosed [IPv6 literal
            continue
        if scheme in ("http", "https"):
            links[absolute] = None
    return list(links)
