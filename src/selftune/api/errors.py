"""OpenAI-style error bodies for every failure the API reports."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from selftune.engines.base import InvalidRequest

__all__ = ["ApiError", "error_body", "install_error_handlers", "storage_error"]


class ApiError(Exception):
    """An error with an HTTP status and an OpenAI-style ``type``/``code``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = (
            status,
            message,
            type,
            code,
            param,
        )
        self.headers = headers  # sent with the error: Retry-After on a 429


def error_body(
    message: str, type: str, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    first = exc.errors()[0]
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    if first.get("type") == "json_invalid":
        return "the request body is not valid JSON", None
    param = ".".join(loc) or None
    where = f" at '{param}'" if param else ""
    return f"invalid request{where}: {first.get('msg', 'invalid value')}", param


def storage_error(exc: OperationalError, data_dir: Any = None) -> ApiError:
    """What a store that cannot take a write means for the caller, who must not think the
    request was recorded: a full disk (507), a read-only data folder or database (503), or a
    store out of reach (503). Nothing of the request was stored; it may be sent again."""
    cause = str(exc.orig) if exc.orig is not None else str(exc)
    reason = cause.strip().splitlines()[0][:200] if cause.strip() else type(exc).__name__
    lowered = reason.lower()
    where = f"the data folder {data_dir}" if data_dir else "the data folder"
    if any(words in lowered for words in ("is full", "disk full", "no space left")):
        return ApiError(
            507,
            f"the store could not save this request: the disk is full ({reason}). Free disk "
            f"space where {where} or the database lives, then send the request again; nothing "
            "of it was recorded.",
            type="server_error",
            code="storage_full",
        )
    if any(words in lowered for words in ("readonly", "read-only", "permission denied")):
        return ApiError(
            503,
            f"the store could not save this request: it is read-only ({reason}). Check that "
            f"{where} and the database file in it are writable by the server (permissions, a "
            "file system mounted read-only), then send the request again; nothing of it was "
            "recorded.",
            type="server_error",
            code="storage_read_only",
        )
    return ApiError(
        503,
        f"the store could not save this request ({reason}); send it again later. Nothing of it "
        "was recorded.",
        type="server_error",
        code="storage_unavailable",
        headers={"Retry-After": "5"},
    )


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_req: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(
            error_body(exc.message, exc.type, exc.code, exc.param),
            status_code=exc.status,
            headers=exc.headers,
        )

    @app.exception_handler(InvalidRequest)
    async def _engine_refused(_req: Request, exc: InvalidRequest) -> JSONResponse:
        # What the engine found wrong with a request: the client's to fix (routes check what
        # they can first, to name the field).
        return JSONResponse(
            error_body(str(exc), "invalid_request_error", "invalid_request"), status_code=400
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(_req: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return JSONResponse(
            error_body(message, "invalid_request_error", "invalid_request", param), status_code=400
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_req: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        code = getattr(exc, "code", None)  # set by the ones selftune raises (a 413's)
        return JSONResponse(
            error_body(str(exc.detail), kind, code),
            status_code=exc.status_code,
            headers=exc.headers,
        )

    @app.exception_handler(OperationalError)
    async def _storage(request: Request, exc: OperationalError) -> JSONResponse:
        selftune = getattr(request.app.state, "selftune", None)
        settings = getattr(selftune, "settings", None)
        error = storage_error(exc, getattr(settings, "data_dir", None))
        return await _api_error(request, error)

    @app.exception_handler(Exception)
    async def _unexpected(_req: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(
            error_body(f"internal error: {type(exc).__name__}", "server_error", "internal_error"),
            status_code=500,
        )
