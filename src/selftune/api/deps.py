"""What a route needs before it starts, as FastAPI dependencies: the server's state, who is
calling, and the loaded engine.

A handler names them in its signature, and FastAPI resolves them in that order, once per request
(a dependency two others share runs once), before it validates the request's body::

    async def handler(body: ChatRequest, state: State, caller: CurrentCaller,
                      engine: ReadyEngine) -> ...

so an unknown key (where keys are required) is refused (401) before a model that is still loading
(503), and both before a malformed body (400). Each dependency is ``async``: none hops to a thread
unless it must read the store (a key was given). A caller past ``serve.rate_limit_per_minute``
is refused (429) once its key is known (api/overload.py).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Header, Request

from selftune.api.auth import Caller, caller_of, hash_key
from selftune.api.state import AppState, app_state, ready_engine
from selftune.engines.base import Engine

__all__ = ["CurrentCaller", "ReadyEngine", "State", "admin_caller"]


async def _state(request: Request) -> AppState:
    return app_state(request)


State = Annotated[AppState, Depends(_state)]


async def _current_caller(
    request: Request, state: State, authorization: Annotated[str | None, Header()] = None
) -> Caller:
    # The address failed keys are counted by: the peer's, or with uvicorn's --proxy-headers
    # behind a trusted proxy, the client's the proxy names.
    client = request.client.host if request.client else ""
    caller = await caller_of(state, authorization, client)
    if state.rate_limit.per_minute:
        # Counted per key when the key is valid; a placeholder key names no one, so such
        # callers are counted by address (else every "sk-no-key-required" client would share).
        key = authorization if caller.authenticated else None
        state.rate_limit.check(f"key {hash_key(key)}" if key else f"ip {client}")
    return caller


CurrentCaller = Annotated[Caller, Depends(_current_caller)]


def admin_caller(action: str) -> Any:
    """The caller, who must hold an admin key to do ``action`` ("promoting a version"): use it
    as ``Annotated[Caller, admin_caller(...)]``, or in a route's ``dependencies``."""

    async def admin(caller: CurrentCaller) -> Caller:
        caller.require_admin(action)
        return caller

    return Depends(admin)


async def _ready_engine(state: State) -> Engine:
    return ready_engine(state)


ReadyEngine = Annotated[Engine, Depends(_ready_engine)]
