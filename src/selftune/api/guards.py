"""What the server checks of every request before any route sees it: that it came for this
server (its ``Host``), that a body is JSON (its ``Content-Type``) and not too large
(``serve.max_request_bytes``), and which browser origins may call it (CORS, closed unless
``serve.cors_origins`` names some).

A request refused here reaches no route, so nothing of it is recorded. The ``Host`` check
blocks DNS rebinding: a web page whose name was re-pointed at 127.0.0.1 sends its own name as
the host. The ``Content-Type`` check keeps a page from posting to the API with a "simple"
request (``text/plain`` or a form), which browsers send without asking the server first.
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any

from fastapi import FastAPI
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from selftune.api.errors import error_body
from selftune.config import ServeSettings

__all__ = [
    "IMPORT_FILE_TYPES",
    "JSONL_TYPES",
    "OTHER_BODY_TYPES",
    "RequestTooLarge",
    "allowed_hosts",
    "install_guards",
    "is_loopback",
]

_WILDCARDS = frozenset({"", "0.0.0.0", "::", "[::]", "*"})
_BODY_METHODS = frozenset({b"POST", b"PUT", b"PATCH", b"DELETE"})
JSONL_TYPES = frozenset({"application/jsonl", "application/x-ndjson"})
# The types a file to import may be sent with, as the raw body of POST /api/import. Not
# text/plain: a .txt file goes as application/octet-stream (its bytes decide what it is).
IMPORT_FILE_TYPES = frozenset(
    {"application/octet-stream", "application/pdf", "text/html", "text/markdown"}
)
# The routes that take a body other than JSON, and which types: a JSONL file of examples, a
# file to import. No browser sends these types without asking the server first (only
# text/plain and forms are "simple"), so the reason for the JSON check still holds for them.
OTHER_BODY_TYPES: dict[tuple[str, str], frozenset[str]] = {
    ("POST", "/api/examples"): JSONL_TYPES,
    ("POST", "/api/import"): IMPORT_FILE_TYPES,
}


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the server to this machine."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name other than localhost: it may resolve anywhere


def _host_name(host: str) -> str:
    """``host`` as a Host header names it, without a port: IPv6 addresses in brackets."""
    host = host.strip().lower()
    if ":" in host and not host.startswith("["):
        return f"[{host}]"
    return host


def allowed_hosts(serve: ServeSettings) -> frozenset[str]:
    """The Host header values (without their port) the server answers; ``*`` in it: any."""
    hosts = {_host_name(h) for h in serve.allowed_hosts}
    if serve.host.strip().lower() not in _WILDCARDS:
        hosts.add(_host_name(serve.host))
    return frozenset(hosts)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def _without_port(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):  # [::1]:8080
        return host[: host.find("]") + 1] if "]" in host else host
    return host.split(":", 1)[0]


async def _refuse(send: Send, status: int, message: str, code: str, param: str | None) -> None:
    body = json.dumps(error_body(message, "invalid_request_error", code, param)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class HostGuard:
    """Answers only requests whose ``Host`` header names this server (400 for others)."""

    def __init__(self, app: ASGIApp, hosts: frozenset[str]) -> None:
        self.app, self.hosts = app, hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or "*" in self.hosts:
            await self.app(scope, receive, send)
            return
        host = _header(scope, b"host")
        if host is not None and _without_port(host) in self.hosts:
            await self.app(scope, receive, send)
            return
        await _refuse(
            send,
            400,
            f"this server does not answer for the host {host!r}; add it to serve.allowed_hosts "
            "if clients reach the server by that name",
            "host_not_allowed",
            None,
        )


class JsonBodyGuard:
    """Requires ``Content-Type: application/json`` on a request with a body (415 without), or
    one of the types :data:`OTHER_BODY_TYPES` allows on its route."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"].encode() not in _BODY_METHODS:
            await self.app(scope, receive, send)
            return
        length = _header(scope, b"content-length")
        has_body = _header(scope, b"transfer-encoding") is not None or (
            length is not None and length.strip() not in ("", "0")
        )
        content_type = (_header(scope, b"content-type") or "").split(";", 1)[0].strip().lower()
        others = OTHER_BODY_TYPES.get((scope["method"], scope["path"]), frozenset())
        if not has_body or content_type == "application/json" or content_type in others:
            await self.app(scope, receive, send)
            return
        sent = f"Content-Type {content_type!r}" if content_type else "no Content-Type"
        also = "".join(f" or {t}" for t in sorted(others))
        await _refuse(
            send,
            415,
            f"the request body must be JSON, sent with 'Content-Type: application/json'{also} "
            f"(this request has {sent})",
            "unsupported_media_type",
            None,
        )


class RequestTooLarge(HTTPException):
    """413 for a body past ``serve.max_request_bytes``. It is raised where the route reads the
    body, so the route's own error shape answers it (OpenAI's, or ollama's ``{"error"}``)."""

    code = "request_too_large"  # the OpenAI-style body's code (api/errors.py)

    def __init__(self, limit: int, declared: int | None) -> None:
        size = f"{declared} bytes" if declared is not None else f"over {limit} bytes"
        super().__init__(
            413,
            f"the request body is {size}; this server takes at most {limit} "
            "(serve.max_request_bytes): send less, or raise that setting",
        )


class BodySizeGuard:
    """Refuses (413) a body larger than ``limit`` before it is read whole: on the route's first
    read when its ``Content-Length`` says so, else as soon as its chunks add up past it.

    A body whose ``Content-Length`` is within the limit passes untouched: the HTTP server
    delivers no more than that length, so there is nothing to count.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"].encode() not in _BODY_METHODS:
            await self.app(scope, receive, send)
            return
        limit = self.limit
        length = _header(scope, b"content-length")
        declared = int(length) if length is not None and length.strip().isdigit() else None
        if declared is not None and declared <= limit:
            await self.app(scope, receive, send)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            if declared is not None:  # over the limit: refused before a byte is read
                raise RequestTooLarge(limit, declared)
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise RequestTooLarge(limit, None)
            return message

        await self.app(scope, limited, send)


def install_guards(app: FastAPI, serve: ServeSettings) -> None:
    """Add the checks, outermost first: Host, then CORS, then the body's content type and size
    (so a refused body still carries CORS headers a browser needs to read the error)."""
    app.add_middleware(BodySizeGuard, limit=serve.max_request_bytes)
    app.add_middleware(JsonBodyGuard)
    if serve.cors_origins:
        cors: dict[str, Any] = {
            "allow_origins": serve.cors_origins,
            "allow_methods": ["*"],
            "allow_headers": ["*"],
            "expose_headers": ["X-Checksum-Sha256", "X-Selftune-Export-Check"],
        }
        app.add_middleware(CORSMiddleware, **cors)
    app.add_middleware(HostGuard, hosts=allowed_hosts(serve))
