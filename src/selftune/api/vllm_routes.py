"""vLLM's runtime LoRA routes: ``POST /v1/load_lora_adapter`` and ``POST /v1/unload_lora_adapter``.

A loaded adapter answers as ``model=<lora_name>`` until it is unloaded or the server restarts:
as in vLLM, nothing is persisted. It is not a stored version, so its answers are recorded with
``version_id`` None and ``model`` set to its name, and it is never trained on or promoted.

Loading checks the PEFT folder against the base model's weights (every LoRA matrix must fit the
layer it adapts), copies it with its GGUF conversion (the llama.cpp engine's format) into
``<data_dir>/adapters/<lora_name>/`` as one atomic folder, and loads it into the engine before
answering, so a bad adapter is refused here rather than failing a later request.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Iterable
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from selftune.api.deps import ReadyEngine, State, admin_caller
from selftune.api.errors import ApiError
from selftune.api.responses import ERRORS, plain_text
from selftune.api.schemas import LoadLoraRequest, UnloadLoraRequest
from selftune.api.state import AppState
from selftune.api.targets import BASE
from selftune.artifacts import GGUF_ADAPTER
from selftune.atomic import atomic_directory
from selftune.engines.base import AdapterRef, Engine
from selftune.export.gguf_adapter import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    export_gguf_adapter,
)
from selftune.store.schema import Version

__all__ = ["check_against_base", "router"]

log = logging.getLogger(__name__)

router = APIRouter(responses=ERRORS)

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")  # it names a folder, and a PEFT adapter
_VERSION_NAME = re.compile(r"v\d+")  # what training names versions
_PEFT_PREFIX = "base_model.model."
_LORA_SUFFIXES = {".lora_A.weight": "A", ".lora_B.weight": "B"}


# The server reads lora_path from its own disk, and the name is every user's to call: loading
# and unloading need an admin key, checked before anything else (the model loading included).
@router.post(
    "/v1/load_lora_adapter",
    response_class=PlainTextResponse,
    dependencies=[admin_caller("loading an adapter")],
    responses=plain_text(
        "Loaded: the adapter answers as model=<lora_name> (vLLM's plain-text reply)",
        "Success: LoRA adapter 'mine' added successfully.",
    ),
)
async def load_lora_adapter(
    body: LoadLoraRequest, state: State, engine: ReadyEngine
) -> PlainTextResponse:
    await run_in_threadpool(install, state, engine, body.lora_name, Path(body.lora_path))
    return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' added successfully.")


@router.post(
    "/v1/unload_lora_adapter",
    response_class=PlainTextResponse,
    dependencies=[admin_caller("unloading an adapter")],
    responses=plain_text(
        "Unloaded (vLLM's plain-text reply)",
        "Success: LoRA adapter 'mine' removed successfully.",
    ),
)
async def unload_lora_adapter(body: UnloadLoraRequest, state: State) -> PlainTextResponse:
    def remove() -> None:
        with state.runtime_lock:
            adapter = state.runtime_adapters.pop(body.lora_name, None)
            if adapter is None:
                raise ApiError(
                    404,
                    f"The lora adapter '{body.lora_name}' cannot be found.",
                    code="adapter_not_found",
                    param="lora_name",
                )
            # The engine keeps its loaded copy for requests already running on it.
            shutil.rmtree(adapter.path, ignore_errors=True)

    await run_in_threadpool(remove)
    return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' removed successfully.")


def install(state: AppState, engine: Engine, name: str, source: Path) -> AdapterRef:
    """Check, copy, convert and load the adapter in ``source`` as ``name``. Blocking."""
    with state.runtime_lock:
        _check_name(state, name)
        _check_peft_folder(source)
        base = state.base_folder()
        check_against_base(source, base)
        folder = _copy(state, engine, name, source, base)
        runtime_id = state.next_runtime_id()
        # A name of its own in the engine: a later adapter loaded under the same lora_name
        # must not be mistaken for this one in the engine's cache of loaded adapters.
        adapter = AdapterRef(runtime_id, f"{name}-runtime{-runtime_id}", folder)
        try:
            engine.preload_adapter(adapter)
        except Exception as exc:
            shutil.rmtree(folder, ignore_errors=True)
            raise ApiError(
                400, f"the adapter could not be loaded into the model: {exc}", param="lora_path"
            ) from exc
        state.runtime_adapters[name] = adapter
        log.info("loaded runtime adapter %s from %s", name, source)
        return adapter


def _check_name(state: AppState, name: str) -> None:
    if not _NAME.fullmatch(name):
        raise ApiError(
            400,
            f"lora_name {name!r} is not usable: use up to 64 letters, digits, '-' and '_', "
            "starting with a letter or a digit",
            param="lora_name",
        )
    if name in state.runtime_adapters:
        raise ApiError(
            400, f"The lora adapter '{name}' has already been loaded.", param="lora_name"
        )
    if name in (state.settings.serve.model_name, BASE):
        raise ApiError(
            400,
            f"lora_name {name!r} is the name of the served model; choose another name",
            param="lora_name",
        )
    with state.db.read() as session:
        is_version = session.scalar(select(Version.id).where(Version.name == name)) is not None
    if is_version or _VERSION_NAME.fullmatch(name):
        raise ApiError(
            400,
            f"lora_name {name!r} is, or could become, the name of a trained version (v1, v2, "
            "...); choose another name",
            param="lora_name",
        )


def _check_peft_folder(source: Path) -> None:
    if not source.is_dir():
        raise ApiError(
            400, f"lora_path {str(source)!r} is not a folder on the server", param="lora_path"
        )
    missing = [f for f in (ADAPTER_CONFIG, ADAPTER_WEIGHTS) if not (source / f).is_file()]
    if missing:
        raise ApiError(
            400,
            f"lora_path must be a PEFT LoRA folder (adapter_config.json and "
            f"adapter_model.safetensors, as PEFT's save_pretrained writes it); "
            f"{source} has no {' or '.join(missing)}",
            param="lora_path",
        )
    try:
        config = json.loads((source / ADAPTER_CONFIG).read_text())
    except (OSError, ValueError) as exc:
        raise ApiError(400, f"{ADAPTER_CONFIG} is not readable JSON: {exc}") from exc
    if str(config.get("peft_type", "")).upper() != "LORA":
        raise ApiError(
            400,
            f"only LoRA adapters are served; {source} holds a {config.get('peft_type')!r} adapter",
            param="lora_path",
        )


def _shapes(files: Iterable[Path]) -> dict[str, list[int]]:
    """Tensor shapes from safetensors headers, without reading the tensors."""
    from safetensors import safe_open

    shapes: dict[str, list[int]] = {}
    for file in files:
        with safe_open(str(file), framework="pt") as tensors:
            for key in tensors.keys():  # noqa: SIM118 (a safetensors handle, not a dict)
                shapes[key] = list(tensors.get_slice(key).get_shape())
    return shapes


def check_against_base(adapter_dir: Path, base_dir: Path) -> None:
    """Refuse an adapter whose LoRA matrices do not fit the base model's layers (a 400)."""
    base = _shapes(sorted(base_dir.glob("*.safetensors")))
    if not base:
        return  # .bin weights only: loading the adapter into the engine checks it instead
    try:
        adapter = _shapes([adapter_dir / ADAPTER_WEIGHTS])
    except Exception as exc:
        raise ApiError(400, f"{ADAPTER_WEIGHTS} is not readable: {exc}") from exc
    for key, shape in adapter.items():
        module, matrix = _lora_module(key)
        if module is None:
            continue  # not a LoRA matrix; the engine decides whether it can apply it
        weight = base.get(f"{module}.weight")
        if weight is None and module == "lm_head":  # tied to the input embeddings
            weight = base.get("model.embed_tokens.weight")
        if weight is None:
            raise ApiError(
                400,
                f"the adapter changes {module}, which the served base model does not have: "
                "it was trained for another base model",
                param="lora_path",
            )
        out_features, in_features = weight[0], weight[-1]
        fits = shape[-1] == in_features if matrix == "A" else shape[0] == out_features
        if not fits:
            raise ApiError(
                400,
                f"the adapter's {key} has shape {shape}, which does not fit the base model's "
                f"{module} ({out_features} x {in_features}): it was trained for another base "
                "model",
                param="lora_path",
            )


def _lora_module(key: str) -> tuple[str | None, str]:
    for suffix, matrix in _LORA_SUFFIXES.items():
        if key.endswith(suffix):
            return key.removeprefix(_PEFT_PREFIX).removesuffix(suffix), matrix
    return None, ""


def _copy(state: AppState, engine: Engine, name: str, source: Path, base: Path) -> Path:
    folder = state.settings.data_dir / "adapters" / name
    if folder.exists():  # left by an earlier load of this name (unloaded, or before a restart)
        shutil.rmtree(folder)
    with atomic_directory(folder, {"lora_name": name, "source": str(source)}) as tmp:
        for file in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
            shutil.copyfile(source / file, tmp / file)
        _export_gguf(tmp, base, engine.name)
    return folder


def _export_gguf(folder: Path, base: Path, engine_name: str) -> None:
    """The llama.cpp engine applies GGUF adapters only; the others use the PEFT files."""
    base_config = json.loads((base / "config.json").read_text())
    try:
        export_gguf_adapter(folder, base_config, folder / GGUF_ADAPTER)
    except Exception as exc:
        if engine_name == "llama.cpp":
            raise ApiError(
                400,
                f"the llama.cpp engine needs a GGUF adapter, and this one cannot be converted: "
                f"{exc}",
                param="lora_path",
            ) from exc
        log.info("no GGUF copy of this runtime adapter (%s); the PEFT files serve", exc)
