"""The autopilot's settings as they are now: the settings file's, with the values changed at
run time (PATCH /api/settings/autopilot, ``selftune autopilot on|off``) laid over them.

Both processes read them from the store, so a change reaches the worker's next look without a
restart, and survives one. Every change is validated as a whole section and recorded as an
``autopilot_settings_changed`` event with who made it.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from sqlalchemy.orm import Session

from selftune.config import AutopilotSettings, Settings
from selftune.store.db import Database
from selftune.store.schema import Event, SettingOverride, utcnow

__all__ = ["AutopilotSettingsError", "alert", "apply", "current", "update"]

SECTION = "autopilot"


class AutopilotSettingsError(ValueError):
    """A change that would leave the autopilot's settings invalid; nothing was changed."""


def current(settings: Settings, session: Session) -> AutopilotSettings:
    """The autopilot settings in effect: the file's, with the stored changes over them."""
    row = session.get(SettingOverride, SECTION)
    if row is None or not row.values:
        return settings.autopilot
    merged = {**settings.autopilot.model_dump(), **row.values}
    try:
        return AutopilotSettings.model_validate(merged)
    except ValidationError:  # a field's rules tightened since the change: the file's values
        return settings.autopilot


def update(
    settings: Settings, db: Database, changes: dict[str, Any], *, actor: str, reason: str = ""
) -> AutopilotSettings:
    """Apply ``changes`` (field: value) on top of the current settings and store them, with an
    event; raise :class:`AutopilotSettingsError` naming what is wrong, changing nothing."""
    with db.write() as session:
        return apply(settings, session, changes, actor=actor, reason=reason)


def apply(
    settings: Settings, session: Session, changes: dict[str, Any], *, actor: str, reason: str = ""
) -> AutopilotSettings:
    """:func:`update` in the caller's write transaction (the troubleshooter's, with its alert)."""
    unknown = sorted(set(changes) - set(AutopilotSettings.model_fields))
    if unknown:
        raise AutopilotSettingsError(
            f"no autopilot setting named {', '.join(unknown)}; the settings are "
            f"{', '.join(AutopilotSettings.model_fields)}"
        )
    before = current(settings, session)
    try:
        after = AutopilotSettings.model_validate({**before.model_dump(), **changes})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc']) or 'autopilot'}: {error['msg']}"
            for error in exc.errors()
        )
        raise AutopilotSettingsError(f"invalid autopilot settings: {problems}") from None
    file_values = settings.autopilot.model_dump()
    stored = {k: v for k, v in after.model_dump().items() if v != file_values[k]}
    row = session.get(SettingOverride, SECTION)
    if row is None:
        row = SettingOverride(section=SECTION)
        session.add(row)
    row.values, row.updated_by, row.updated_at = stored, actor, utcnow()
    changed = {
        name: {"from": getattr(before, name), "to": getattr(after, name)}
        for name in changes
        if getattr(before, name) != getattr(after, name)
    }
    session.add(
        Event(
            kind="autopilot_settings_changed",
            payload={"changed": changed, "by": actor, "reason": reason},
        )
    )
    return after


def alert(session: Session, message: str, **figures: Any) -> None:
    """Record an alert for the admin: something the autopilot could not fix by itself."""
    session.add(Event(kind="autopilot_alert", payload={"message": message, **figures}))
