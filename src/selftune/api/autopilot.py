"""The autopilot's controls: ``GET /api/autopilot`` (what it is doing and why, and its
settings in effect) and ``PATCH /api/settings/autopilot`` (an admin changes them at run time).

A change is validated as a whole section, stored, and recorded as an event; the worker reads
it at its next look (``autopilot.check_seconds``), with no restart.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body
from starlette.concurrency import run_in_threadpool

from selftune.api.auth import Caller
from selftune.api.deps import CurrentCaller, State, admin_caller
from selftune.api.errors import ApiError
from selftune.api.responses import ERRORS
from selftune.autopilot.control import AutopilotSettingsError, current, update
from selftune.autopilot.scheduler import scheduler_state

__all__ = ["router"]

router = APIRouter(prefix="/api", responses=ERRORS)


@router.get("/autopilot")
async def get_autopilot(state: State, _caller: CurrentCaller) -> dict[str, Any]:
    """The scheduler's state (enabled, scheduled, running, paused, last run, next run, why) and
    the autopilot settings in effect."""

    def read() -> dict[str, Any]:
        with state.db.read() as session:
            return {
                "state": scheduler_state(state.settings, session),
                "settings": current(state.settings, session).model_dump(),
            }

    return await run_in_threadpool(read)


@router.patch("/settings/autopilot")
async def patch_autopilot(
    state: State,
    caller: Annotated[Caller, admin_caller("changing the autopilot's settings")],
    changes: Annotated[
        dict[str, Any],
        Body(
            description="autopilot settings to change, by name (see GET /api/settings), e.g. "
            '{"enabled": false} or {"volume_examples": 5}',
            examples=[{"enabled": False}, {"failure_streak": 5, "debounce_seconds": 30}],
        ),
    ],
) -> dict[str, Any]:
    """Change autopilot settings at run time; an admin's key only. The answer is the settings
    in effect after the change."""
    if not changes:
        raise ApiError(400, "name at least one autopilot setting to change", code="empty_change")

    def change() -> dict[str, Any]:
        actor = f"api:{caller.user_id or 'admin'}"
        return update(state.settings, state.db, changes, actor=actor).model_dump()

    try:
        return {"settings": await run_in_threadpool(change)}
    except AutopilotSettingsError as exc:
        raise ApiError(400, str(exc), code="invalid_settings") from exc
