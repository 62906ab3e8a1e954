"""Fetching web pages safely (selftune.imports.fetch) against loopback servers started here.

Loopback is itself a private address, so ordinary fetches use ``allow_private=True``; the
refusals use the default policy, with resolvers and an ``is_public`` that tests give (a name that
"resolves" to 127.0.0.1 and is treated as public stands for a public site)."""

from __future__ import annotations

import gzip
import ipaddress
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from selftune.imports.fetch import (
    Fetched,
    FetchPolicy,
    FetchRefused,
    Refused,
    crawl,
    extract_html_links,
    fetch,
    is_public_address,
)

Route = Callable[[BaseHTTPRequestHandler], None]
LOOPBACK = ipaddress.ip_address("127.0.0.1")


def respond(
    handler: BaseHTTPRequestHandler,
    status: int,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
) -> None:
    handler.send_response(status)
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


class Site:
    """A loopback HTTP/1.1 server whose routes a test sets, and the requests it got."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.requests: list[tuple[str, str]] = []  # (path, Host header)
        self.stop = threading.Event()  # wakes handlers that wait, at teardown
        self.server = _Server(self)
        self.port = self.server.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}"
        serving = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)
        serving.start()

    def page(
        self, path: str, body: bytes | str, status: int = 200, content_type: str = "text/html"
    ) -> None:
        data = body.encode() if isinstance(body, str) else body
        self.routes[path] = lambda h: respond(h, status, data, {"Content-Type": content_type})

    def redirect(self, path: str, location: str, status: int = 302) -> None:
        self.routes[path] = lambda h: respond(h, status, b"", {"Location": location})

    def paths(self) -> list[str]:
        return [path for path, _ in self.requests]

    def close(self) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, site: Site) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.site = site

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hangs up (as a refused body does) is not the test's failure


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        assert isinstance(self.server, _Server)
        site = self.server.site
        site.requests.append((self.path, self.headers.get("Host", "")))
        route = site.routes.get(self.path)
        try:
            if route is None:
                respond(self, 404, b"not found", {"Content-Type": "text/plain"})
            else:
                route(self)
        except (BrokenPipeError, ConnectionResetError):  # the client stopped reading
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def site() -> Iterator[Site]:
    served = Site()
    yield served
    served.close()


OPEN = FetchPolicy(allow_private=True, timeout_s=2, respect_robots=False)


class Resolver:
    """Names to addresses, answer by answer: ``{"a.example": [["127.0.0.1"], ["10.0.0.5"]]}``
    answers the first lookup with 127.0.0.1, later ones with 10.0.0.5."""

    def __init__(self, answers: dict[str, list[list[str]]]) -> None:
        self.answers = answers
        self.calls: list[str] = []

    def __call__(self, host: str, port: int) -> Sequence[str]:
        self.calls.append(host)
        if host not in self.answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        answers = self.answers[host]
        return answers[min(self.calls.count(host), len(answers)) - 1]


def public_loopback(resolver: Resolver, **overrides: Any) -> FetchPolicy:
    """The default policy, except that 127.0.0.1 counts as public: a stand-in for a public
    site that the test's server can play."""
    settings: dict[str, Any] = {"timeout_s": 2, "respect_robots": False} | overrides
    return FetchPolicy(resolver=resolver, is_public=lambda a: a == LOOPBACK, **settings)


@pytest.fixture
def connections(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Every address a socket is connected to, in order."""
    made: list[tuple[str, int]] = []
    real = socket.create_connection

    def spy(address: tuple[str, int], *args: Any, **kwargs: Any) -> socket.socket:
        made.append(address)
        return real(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", spy)
    return made


def refusal(url: str, policy: FetchPolicy) -> FetchRefused:
    with pytest.raises(FetchRefused) as caught:
        fetch(url, policy)
    return caught.value


# --- fetching ------------------------------------------------------------------------------


def test_fetches_a_page(site: Site) -> None:
    site.page("/a", "<p>hello</p>", content_type="text/html; charset=utf-8")
    page = fetch(site.base + "/a#section", OPEN)
    assert page == Fetched(
        url=site.base + "/a",
        status=200,
        content_type="text/html",
        body=b"<p>hello</p>",
        headers=page.headers,
        redirects=(),
    )
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert site.requests == [("/a", f"127.0.0.1:{site.port}")]


@pytest.mark.parametrize("status", [404, 500, 503])
def test_an_error_status_is_refused_with_it(site: Site, status: int) -> None:
    site.page("/e", "no", status=status)
    refused = refusal(site.base + "/e", OPEN)
    assert (refused.code, refused.status, refused.url) == ("http_error", status, site.base + "/e")


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/file",
        "file:///etc/passwd",
        "javascript:alert(1)",
        "gopher://example.com/",
        "http://user:secret@example.com/",
        "https://user@example.com/",
        "not a url",
        "http:///no-host",
    ],
)
def test_only_http_urls_without_credentials(url: str, connections: list[tuple[str, int]]) -> None:
    assert refusal(url, OPEN).code == "invalid_url"
    assert connections == []


def test_a_closed_port_is_unreachable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert refusal(f"http://127.0.0.1:{port}/", OPEN).code == "unreachable"


def test_a_name_that_does_not_resolve_is_unreachable() -> None:
    policy = FetchPolicy(resolver=Resolver({}), timeout_s=1, respect_robots=False)
    assert refusal("http://nowhere.example/", policy).code == "unreachable"


def test_policy_checks_its_values() -> None:
    with pytest.raises(ValueError, match="timeout_s"):
        FetchPolicy(timeout_s=0)
    with pytest.raises(ValueError, match="max_bytes"):
        FetchPolicy(max_bytes=0)
    with pytest.raises(ValueError, match="max_redirects"):
        FetchPolicy(max_redirects=-1)


# --- private addresses ---------------------------------------------------------------------


def test_loopback_is_refused_unless_allowed(site: Site, connections: list[tuple[str, int]]) -> None:
    site.page("/a", "secret")
    for url in (site.base + "/a", f"http://localhost:{site.port}/a", f"http://[::1]:{site.port}/"):
        assert refusal(url, FetchPolicy(timeout_s=1)).code == "private_address", url
    assert connections == []
    assert site.requests == []  # robots.txt neither
    assert fetch(site.base + "/a", OPEN).body == b"secret"


PRIVATE = [
    "10.0.0.5",
    "172.16.3.4",
    "192.168.1.1",
    "127.0.0.2",
    "169.254.169.254",  # cloud metadata
    "100.64.0.1",  # carrier-grade NAT
    "0.0.0.0",
    "224.0.0.1",
    "240.0.0.1",
    "255.255.255.255",
    "192.0.2.10",
    "198.18.0.1",
    "::1",
    "::",
    "::ffff:127.0.0.1",
    "::ffff:10.0.0.5",
    "::ffff:169.254.169.254",
    "fe80::1",
    "fc00::1",
    "fd12:3456::1",
    "fec0::1",
    "ff02::1",
    "2001:db8::1",
    "2002:7f00:1::1",  # 6to4 around 127.0.0.1
    "64:ff9b::a9fe:a9fe",  # NAT64 around 169.254.169.254
    "64:ff9b:1::1",
]
PUBLIC = ["8.8.8.8", "1.1.1.1", "93.184.215.14", "2606:4700:4700::1111", "::ffff:8.8.8.8"]


@pytest.mark.parametrize("address", PRIVATE)
def test_a_name_resolving_to_a_private_address_is_refused(
    address: str, monkeypatch: pytest.MonkeyPatch, connections: list[tuple[str, int]]
) -> None:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET

    def getaddrinfo(host: str, port: int, *args: Any, **kwargs: Any) -> list[Any]:
        assert host == "intranet.example"
        sockaddr = (address, port, 0, 0) if family == socket.AF_INET6 else (address, port)
        return [(family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", sockaddr)]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    refused = refusal("http://intranet.example:8080/", FetchPolicy(timeout_s=1))
    assert refused.code == "private_address"
    assert refused.url == "http://intranet.example:8080/"
    assert connections == []


@pytest.mark.parametrize("address", PRIVATE)
def test_a_private_address_in_the_url_is_refused(address: str) -> None:
    host = f"[{address}]" if ":" in address else address
    policy = FetchPolicy(timeout_s=1, respect_robots=False)
    assert refusal(f"http://{host}/", policy).code == "private_address"


def test_which_addresses_are_public() -> None:
    assert [a for a in PUBLIC if not is_public_address(ipaddress.ip_address(a))] == []
    assert [a for a in PRIVATE if is_public_address(ipaddress.ip_address(a))] == []


def test_one_private_address_among_public_ones_refuses_the_name(
    connections: list[tuple[str, int]],
) -> None:
    resolver = Resolver({"mixed.example": [["93.184.215.14", "10.0.0.5"]]})
    policy = FetchPolicy(resolver=resolver, timeout_s=1, respect_robots=False)
    assert refusal("https://mixed.example/", policy).code == "private_address"
    assert connections == []


def test_a_redirect_to_a_private_address_is_refused(
    site: Site, connections: list[tuple[str, int]]
) -> None:
    resolver = Resolver({"public.example": [["127.0.0.1"]], "intranet.example": [["10.0.0.5"]]})
    public = f"http://public.example:{site.port}"
    site.redirect("/to-ip", f"http://127.0.0.2:{site.port}/secret")
    site.redirect("/to-name", "http://intranet.example/secret")
    site.redirect("/to-mapped", f"http://[::ffff:127.0.0.2]:{site.port}/secret")
    for path in ("/to-ip", "/to-name", "/to-mapped"):
        refused = refusal(public + path, public_loopback(resolver))
        assert refused.code == "private_address", path
    assert site.paths() == ["/to-ip", "/to-name", "/to-mapped"]
    assert {address for address, _ in connections} == {"127.0.0.1"}


def test_connections_go_to_the_checked_address_not_a_second_lookup(
    site: Site, connections: list[tuple[str, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """DNS rebinding: the name answers a public address when checked and a private one
    afterwards. The connection goes to the address that was checked; the system resolver never
    sees the name (it could not resolve it: a connection by name would fail)."""
    resolver = Resolver({"public.example": [["127.0.0.1"], ["10.0.0.5"]]})
    real_getaddrinfo = socket.getaddrinfo
    system_lookups: list[str] = []

    def getaddrinfo(host: str, *args: Any, **kwargs: Any) -> Any:
        system_lookups.append(host)
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    site.page("/", "public page")
    policy = public_loopback(resolver)

    page = fetch(f"http://public.example:{site.port}/", policy)

    assert page.body == b"public page"
    assert resolver.calls == ["public.example"]
    assert connections == [("127.0.0.1", site.port)]
    assert "public.example" not in system_lookups
    assert site.requests == [("/", f"public.example:{site.port}")]  # the Host is the name
    # The next connection looks the name up again, gets the private answer, and is refused.
    assert refusal(f"http://public.example:{site.port}/", policy).code == "private_address"
    assert connections == [("127.0.0.1", site.port)]


# --- limits --------------------------------------------------------------------------------


def test_a_declared_length_over_the_limit_is_refused(site: Site) -> None:
    site.page("/big", b"x" * 5000)
    small = FetchPolicy(allow_private=True, timeout_s=2, respect_robots=False, max_bytes=1000)
    refused = refusal(site.base + "/big", small)
    assert (refused.code, refused.url) == ("too_large", site.base + "/big")
    exact = FetchPolicy(allow_private=True, timeout_s=2, respect_robots=False, max_bytes=5000)
    assert len(fetch(site.base + "/big", exact).body) == 5000


def test_a_streamed_body_is_cut_off_at_the_limit(site: Site) -> None:
    """No Content-Length: chunked, and so much of it that reading it all would be slow."""
    sent: list[int] = []

    def chunked(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        for _ in range(20_000):
            handler.wfile.write(b"400\r\n" + b"y" * 1024 + b"\r\n")
            sent.append(1024)
        handler.wfile.write(b"0\r\n\r\n")

    site.routes["/stream"] = chunked
    policy = FetchPolicy(allow_private=True, timeout_s=5, respect_robots=False, max_bytes=10_000)
    assert refusal(site.base + "/stream", policy).code == "too_large"
    assert sum(sent) < 20_000 * 1024  # the server was stopped, not read to the end


def test_the_limit_counts_decompressed_bytes(site: Site) -> None:
    bomb = gzip.compress(b"\0" * 1_000_000)
    site.routes["/bomb"] = lambda h: respond(h, 200, bomb, {"Content-Encoding": "gzip"})
    policy = FetchPolicy(allow_private=True, timeout_s=2, respect_robots=False, max_bytes=50_000)
    assert len(bomb) < 50_000
    assert refusal(site.base + "/bomb", policy).code == "too_large"


def test_a_server_that_does_not_answer_times_out(site: Site) -> None:
    site.routes["/slow"] = lambda h: site.stop.wait(10) and None
    policy = FetchPolicy(allow_private=True, timeout_s=0.3, respect_robots=False)
    began = time.monotonic()
    assert refusal(site.base + "/slow", policy).code == "timeout"
    assert time.monotonic() - began < 5  # well under the server's 10 s


def test_a_body_that_trickles_in_times_out(site: Site) -> None:
    """Every read is quick, the whole is not: the time limit is for the whole fetch."""

    def trickle(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        for _ in range(200):
            handler.wfile.write(b"1\r\nz\r\n")
            handler.wfile.flush()
            if site.stop.wait(0.05):
                return
        handler.wfile.write(b"0\r\n\r\n")

    site.routes["/trickle"] = trickle
    policy = FetchPolicy(allow_private=True, timeout_s=0.5, respect_robots=False)
    began = time.monotonic()
    assert refusal(site.base + "/trickle", policy).code == "timeout"
    assert time.monotonic() - began < 5  # the whole body would take 10 s


# --- redirects -----------------------------------------------------------------------------


def test_redirects_are_followed_and_resolved(site: Site) -> None:
    site.redirect("/dir/start", "../middle", status=301)
    site.redirect("/middle", f"{site.base}/end?x=1#frag", status=307)
    site.page("/end?x=1", "the end")
    page = fetch(site.base + "/dir/start", OPEN)
    assert (page.url, page.body) == (site.base + "/end?x=1", b"the end")
    assert page.redirects == (site.base + "/dir/start", site.base + "/middle")


def test_redirect_limits(site: Site) -> None:
    site.redirect("/loop", "/loop")
    assert refusal(site.base + "/loop", OPEN).code == "too_many_redirects"
    for i in range(3):
        site.redirect(f"/r{i}", f"/r{i + 1}")
    site.page("/r3", "arrived")
    two = FetchPolicy(allow_private=True, timeout_s=2, respect_robots=False, max_redirects=2)
    three = FetchPolicy(allow_private=True, timeout_s=2, respect_robots=False, max_redirects=3)
    assert refusal(site.base + "/r0", two).code == "too_many_redirects"
    assert fetch(site.base + "/r0", three).body == b"arrived"


def test_a_redirect_to_another_scheme_is_refused(site: Site) -> None:
    site.redirect("/ftp", "ftp://example.com/file")
    assert refusal(site.base + "/ftp", OPEN).code == "invalid_url"


# --- robots.txt ----------------------------------------------------------------------------

ROBOTS = FetchPolicy(allow_private=True, timeout_s=2)


def test_robots_txt_is_honoured(site: Site) -> None:
    site.page("/robots.txt", "User-agent: *\nDisallow: /private\n", content_type="text/plain")
    site.page("/private/page", "hidden")
    site.page("/public", "shown")
    assert refusal(site.base + "/private/page", ROBOTS).code == "robots_disallowed"
    assert fetch(site.base + "/public", ROBOTS).body == b"shown"
    assert "/private/page" not in site.paths()
    ignoring = FetchPolicy(allow_private=True, timeout_s=2, respect_robots=False)
    assert fetch(site.base + "/private/page", ignoring).body == b"hidden"


def test_robots_txt_rules_for_our_agent(site: Site) -> None:
    site.page("/robots.txt", "User-agent: selftune\nDisallow: /\n", content_type="text/plain")
    site.page("/page", "x")
    assert refusal(site.base + "/page", ROBOTS).code == "robots_disallowed"
    other = FetchPolicy(allow_private=True, timeout_s=2, user_agent="otherbot/1.0")
    assert fetch(site.base + "/page", other).body == b"x"


@pytest.mark.parametrize(("status", "allowed"), [(404, True), (403, True), (500, False)])
def test_robots_txt_status(site: Site, status: int, allowed: bool) -> None:
    site.page("/robots.txt", "whatever", status=status)
    site.page("/page", "x")
    if allowed:
        assert fetch(site.base + "/page", ROBOTS).body == b"x"
    else:
        assert refusal(site.base + "/page", ROBOTS).code == "robots_disallowed"


# --- crawling ------------------------------------------------------------------------------


def links(*hrefs: str) -> str:
    return "".join(f'<a href="{href}">link</a>' for href in hrefs)


@pytest.fixture
def linked(site: Site) -> Site:
    """/ links to /a and /b (twice, with fragments, and to mail, script and another host);
    /a links to /c, /c to /d, /b back to /."""
    site.page(
        "/",
        links(
            "/a",
            "b#top",
            "/a#again",
            "mailto:someone@example.com",
            "javascript:void(0)",
            f"http://127.0.0.2:{site.port}/elsewhere",
            "/b",
        ),
    )
    site.page("/a", links("/c"))
    site.page("/b", links("/"))
    site.page("/c", links("/d"))
    site.page("/d", "the deepest")
    return site


def urls(records: list[Fetched | Refused]) -> list[str]:
    return [record.url for record in records]


def test_crawl_is_breadth_first_and_bounded_by_depth(linked: Site) -> None:
    base = linked.base
    assert urls(list(crawl(base + "/", OPEN, max_depth=0))) == [base + "/"]
    linked.requests.clear()
    records = list(crawl(base + "/", OPEN, max_depth=2))
    assert urls(records) == [base + "/", base + "/a", base + "/b", base + "/c"]
    assert all(isinstance(record, Fetched) for record in records)
    assert sorted(linked.paths()) == ["/", "/a", "/b", "/c"]  # each once


def test_crawl_is_bounded_by_pages(linked: Site) -> None:
    records = list(crawl(linked.base + "/", OPEN, max_depth=5, max_pages=2))
    assert urls(records) == [linked.base + "/", linked.base + "/a"]
    assert linked.paths() == ["/", "/a"]


def test_crawl_keeps_to_the_site_unless_told(linked: Site) -> None:
    records = list(crawl(linked.base + "/", OPEN, max_depth=1, same_site=False))
    elsewhere = f"http://127.0.0.2:{linked.port}/elsewhere"
    assert urls(records) == [linked.base + "/", linked.base + "/a", linked.base + "/b", elsewhere]
    assert isinstance(records[3], Refused)  # nobody listens on 127.0.0.2
    assert records[3].code == "unreachable"
    assert sorted(urls(list(crawl(linked.base + "/", OPEN, max_depth=1)))) == [
        linked.base + "/",
        linked.base + "/a",
        linked.base + "/b",
    ]


def test_crawl_honours_robots_txt_and_reads_it_once(linked: Site) -> None:
    linked.page("/robots.txt", "User-agent: *\nDisallow: /b\n", content_type="text/plain")
    records = list(crawl(linked.base + "/", ROBOTS, max_depth=2))
    assert urls(records) == [linked.base + p for p in ("/", "/a", "/b", "/c")]
    assert isinstance(records[2], Refused)
    assert records[2].code == "robots_disallowed"
    assert linked.paths().count("/robots.txt") == 1
    assert "/b" not in linked.paths()


def test_crawl_refuses_private_addresses_too(linked: Site) -> None:
    records = list(crawl(linked.base + "/", FetchPolicy(timeout_s=1), max_depth=2))
    assert [(type(r), getattr(r, "code", None)) for r in records] == [(Refused, "private_address")]
    assert linked.requests == []


def test_crawl_with_own_link_extraction(linked: Site) -> None:
    found: list[str] = []

    def only_d(body: bytes, url: str) -> list[str]:
        found.append(url)
        return [linked.base + "/d"]

    records = list(crawl(linked.base + "/", OPEN, max_depth=3, extract_links=only_d))
    assert urls(records) == [linked.base + "/", linked.base + "/d"]


def test_extract_html_links() -> None:
    page = (
        b'<html><head><base href="https://example.com/docs/"></head><body>'
        b'<a href="intro.html#part">x</a><A HREF="/about">y</A><a href="intro.html">again</a>'
        b'<a href="mailto:a@b.c">m</a><a href="ftp://f/">f</a><a>no href</a>'
        b'<a href="http://[bad">broken</a><a href=" https://other.example/ ">z</a>'
        b"</body></html>"
    )
    assert extract_html_links(page, "https://example.com/start") == [
        "https://example.com/docs/intro.html",
        "https://example.com/about",
        "https://other.example/",
    ]
