"""Which weights answer a request: the served version, a named version, the base, a runtime adapter.

A client chooses with ``model`` (the served name, a version name such as ``v3``, ``base``, or a
name loaded through ``POST /v1/load_lora_adapter``) or with llama.cpp's per-request ``lora`` field
(``[{"id": <version id>, "scale": <float>}]``). Every generation and embedding route resolves its
request here, once, at its start, and keeps the answer to its end.

A version named explicitly is served whether or not it passed its gate: asking for it by name is
the client's decision. The served name always follows the serving alias, which only gated
versions reach.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from selftune.api.errors import ApiError
from selftune.api.schemas import LoraScale
from selftune.api.state import AppState, adapter_for
from selftune.artifacts import GGUF_ADAPTER
from selftune.engines.base import AdapterRef
from selftune.store.schema import Version

__all__ = [
    "BASE",
    "Target",
    "artifact_path",
    "has_artifact",
    "model_cards",
    "model_names",
    "resolve_target",
    "target_in_memory",
    "target_of",
    "versions_with_artifacts",
]

BASE = "base"
# Engines that apply an adapter at any scale; the others (PEFT) only at 1.0.
_SCALED_ENGINES = frozenset({"llama.cpp"})


@dataclasses.dataclass(frozen=True)
class Target:
    """What answers one request, and how to report it."""

    model: str  # the model name the client asked for; recorded with the interaction
    name: str  # what answers: a version name, "base", or a runtime adapter's name
    version_id: int | None  # the stored version that answers; None: the base or a runtime adapter
    adapter: AdapterRef | None  # None: the bare base
    chat_template: str | None  # None: the engine's default


def resolve_target(
    state: AppState, engine_name: str, model: str | None, lora: Sequence[LoraScale] | None
) -> Target:
    """Resolve ``model`` and the ``lora`` field into a :class:`Target`, or raise an ApiError.

    ``model`` None means the served name. ``lora`` None means "not given"; given, it decides the
    version (an empty list or all-zero scales: the base), and ``model`` must be the served name.
    Blocking when a version is named (reads the store): call it in a thread.
    """
    known = target_in_memory(state, model, lora)
    if known is not None:
        return known
    served_name = state.settings.serve.model_name
    asked = model or served_name
    if lora is not None:
        if asked != served_name:
            raise ApiError(
                400,
                f"choose the version with either 'model' or 'lora', not both: send "
                f"model={served_name!r} with 'lora', or leave 'lora' out",
                param="lora",
            )
        return _from_lora(state, engine_name, asked, lora)
    with state.db.read() as session:
        version = session.scalar(select(Version).where(Version.name == asked))
    if version is None or not has_artifact(version):
        raise ApiError(
            404,
            f"the model {asked!r} does not exist; use one of {model_names(state)} "
            "(see GET /v1/models)",
            code="model_not_found",
            param="model",
        )
    return _version_target(asked, version, 1.0)


async def target_of(
    state: AppState, engine_name: str, model: str | None, lora: Sequence[LoraScale] | None
) -> Target:
    """:func:`resolve_target` for the event loop: in a thread only when it reads the store."""
    known = target_in_memory(state, model, lora)
    if known is not None:
        return known
    return await run_in_threadpool(resolve_target, state, engine_name, model, lora)


def target_in_memory(
    state: AppState, model: str | None, lora: Sequence[LoraScale] | None
) -> Target | None:
    """The target when the process knows it without the store (the served name, ``base``, a
    runtime adapter), else None. Never blocks: the event loop may call it."""
    if lora is not None:
        return None
    served_name = state.settings.serve.model_name
    asked = model or served_name
    if asked == served_name:
        serving = state.serving  # fixed for the whole request
        return Target(asked, serving.name, serving.version_id, adapter_for(serving),
                      serving.chat_template)  # fmt: skip
    if asked == BASE:
        return Target(asked, BASE, None, None, None)
    runtime = state.runtime_adapters.get(asked)
    if runtime is not None:
        return Target(asked, asked, None, runtime, None)
    return None


def _from_lora(state: AppState, engine_name: str, asked: str, lora: Sequence[LoraScale]) -> Target:
    active = [entry for entry in lora if entry.scale != 0]
    if len(active) > 1:
        raise ApiError(
            400,
            "selftune applies one version per request: give a non-zero scale to at most one "
            "entry of 'lora'",
            param="lora",
        )
    with state.db.read() as session:
        versions = versions_with_artifacts(session, [entry.id for entry in lora])
    if not active:
        return Target(asked, BASE, None, None, None)
    entry = active[0]
    if entry.scale != 1.0 and engine_name not in _SCALED_ENGINES:
        raise ApiError(
            400,
            f"the {engine_name} engine applies a version at scale 1.0 only, not "
            f"{entry.scale}; send scale 1.0, or serve a GGUF base with the llama.cpp engine",
            param="lora",
        )
    return _version_target(asked, versions[entry.id], entry.scale)


def _version_target(asked: str, version: Version, scale: float) -> Target:
    adapter = AdapterRef(version.id, version.name, Path(version.path), scale)
    return Target(asked, version.name, version.id, adapter, version.chat_template)


def has_artifact(version: Version) -> bool:
    """Whether the version's adapter folder is on disk (a crash or a cleanup may remove it)."""
    return Path(version.path).is_dir()


def artifact_path(version: Version) -> Path:
    """llama.cpp's ``path`` of an adapter: the GGUF file where there is one, else the folder."""
    folder = Path(version.path)
    gguf = folder / GGUF_ADAPTER
    return gguf if gguf.is_file() else folder


def versions_with_artifacts(session: Any, ids: Sequence[int]) -> dict[int, Version]:
    """The versions with these ids, or a 400 naming the first id without a stored adapter."""
    found = {v.id: v for v in session.scalars(select(Version).where(Version.id.in_(ids)))}
    for version_id in ids:
        version = found.get(version_id)
        if version is None or not has_artifact(version):
            raise ApiError(
                400,
                f"no version with id {version_id} and a stored adapter; see GET /lora-adapters "
                "for the ids",
                code="adapter_not_found",
                param="lora",
            )
    return found


def _stored_versions(state: AppState) -> list[Version]:
    with state.db.read() as session:
        rows = session.scalars(select(Version).order_by(Version.id)).all()
    return [v for v in rows if has_artifact(v)]


def model_names(state: AppState) -> list[str]:
    """Every name ``model`` accepts: the served name, base, versions, runtime adapters."""
    return [card["id"] for card in model_cards(state)]


def model_cards(state: AppState) -> list[dict[str, Any]]:
    """``GET /v1/models`` entries; ``version`` says what answers under each name. Blocking."""

    def card(model_id: str, version: str, created: int = 0, **extra: Any) -> dict[str, Any]:
        return {"id": model_id, "object": "model", "created": created, "owned_by": "selftune",
                "version": version, **extra}  # fmt: skip

    cards = [card(state.settings.serve.model_name, state.serving.name)]
    if state.settings.serve.model_name != BASE:
        cards.append(card(BASE, BASE))
    for version in _stored_versions(state):
        created = int(version.created_at.timestamp())
        gated = bool(version.gate.get("passed"))
        cards.append(card(version.name, version.name, created, parent=BASE, gated=gated))
    for name, adapter in sorted(state.runtime_adapters.items()):
        cards.append(card(name, name, root=str(adapter.path), parent=BASE))
    return cards
