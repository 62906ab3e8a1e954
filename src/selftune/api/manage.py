"""The management API: feedback, training jobs, versions, promotion and rollback."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Header, Request
from pydantic import BaseModel, ConfigDict
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from selftune.api.auth import Caller
from selftune.api.errors import ApiError
from selftune.api.openai_routes import caller_of
from selftune.api.schemas import FeedbackRequest, PromoteRequest, RollbackRequest, TrainRequest
from selftune.api.state import AppState, app_state
from selftune.atomic import ArtifactError
from selftune.data.curation import active_examples, example_from_feedback
from selftune.engines.base import EngineError
from selftune.export.check import EXPORT_ERRORS, export_and_check
from selftune.export.gguf_model import OutputType
from selftune.registry import versions as registry
from selftune.store.schema import Feedback, Interaction, Job, Version
from selftune.store.users import ensure_user
from selftune.training import jobs

__all__ = ["move_alias", "resolve_version_id", "router"]

router = APIRouter(prefix="/api")


@router.post("/feedback")
async def feedback(
    body: FeedbackRequest, request: Request, authorization: str | None = Header(None)
) -> Any:
    state = app_state(request)
    caller = await caller_of(state, authorization)

    def write() -> dict[str, Any]:
        with state.db.write() as session:
            interaction = session.get(Interaction, body.interaction_id)
            # With keys, only the interaction's owner may rate it; others see no such id.
            if interaction is None or (
                caller.authenticated and interaction.user_id != caller.user_id
            ):
                raise ApiError(
                    404,
                    f"no interaction {body.interaction_id!r}",
                    code="interaction_not_found",
                    param="interaction_id",
                )
            user_id = caller.user_id or body.user or interaction.user_id
            ensure_user(session, user_id)
            item = Feedback(
                interaction_id=interaction.id,
                user_id=user_id,
                rating=body.rating,
                correction=body.correction,
                comment=body.comment,
            )
            session.add(item)
            session.flush()
            example = example_from_feedback(session, interaction, item)
            return {
                "feedback_id": item.id,
                "interaction_id": interaction.id,
                "example_id": example.id if example else None,
            }

    return await run_in_threadpool(write)


@router.post("/train")
async def train(
    request: Request, body: TrainRequest | None = None, authorization: str | None = Header(None)
) -> Any:
    state = app_state(request)
    caller = await caller_of(state, authorization)

    def queue() -> int:
        with state.db.read() as session:
            n = len(active_examples(session))
        if n < state.settings.min_new_examples:
            raise ApiError(
                400,
                f"nothing to learn yet: {n} curated examples, need "
                f"{state.settings.min_new_examples}. Rate answers or send corrections "
                "with POST /api/feedback first.",
                code="no_training_data",
            )
        reason = body.reason if body else "requested through the API"
        return jobs.enqueue(state.db, "train", caller.user(None), {"reason": reason})

    job_id = await run_in_threadpool(queue)
    return {"job_id": job_id, "status": "queued"}


def _job_or_404(state: AppState, caller: Caller, job_id: int) -> Job:
    with state.db.read() as session:
        job = session.get(Job, job_id)
    if job is None or (caller.authenticated and job.user_id != caller.user_id):
        raise ApiError(404, f"no job {job_id}", code="job_not_found")
    return job


@router.get("/jobs/{job_id}")
async def get_job(job_id: int, request: Request, authorization: str | None = Header(None)) -> Any:
    state = app_state(request)
    caller = await caller_of(state, authorization)
    job = await run_in_threadpool(_job_or_404, state, caller, job_id)
    return jobs.job_view(job)


@router.get("/jobs")
async def list_jobs(request: Request, authorization: str | None = Header(None)) -> Any:
    state = app_state(request)
    caller = await caller_of(state, authorization)

    def read() -> list[dict[str, Any]]:
        with state.db.read() as session:
            query = select(Job).order_by(Job.id.desc()).limit(100)
            if caller.authenticated:
                query = query.where(Job.user_id == caller.user_id)
            return [jobs.job_view(j) for j in session.scalars(query)]

    return {"data": await run_in_threadpool(read)}


async def _job_action(request: Request, authorization: str | None, job_id: int, action: Any) -> Any:
    state = app_state(request)
    caller = await caller_of(state, authorization)
    await run_in_threadpool(_job_or_404, state, caller, job_id)
    try:
        await run_in_threadpool(action, state.db, job_id)
    except jobs.JobError as exc:
        raise ApiError(409, str(exc), code="job_conflict") from exc
    job = await run_in_threadpool(_job_or_404, state, caller, job_id)
    return jobs.job_view(job)


@router.post("/jobs/{job_id}/retry")
async def retry_job(job_id: int, request: Request, authorization: str | None = Header(None)) -> Any:
    return await _job_action(request, authorization, job_id, jobs.retry)


@router.post("/jobs/{job_id}/cancel")
async def cancel_job(
    job_id: int, request: Request, authorization: str | None = Header(None)
) -> Any:
    return await _job_action(request, authorization, job_id, jobs.cancel)


@router.get("/versions")
async def list_versions(request: Request, authorization: str | None = Header(None)) -> Any:
    state = app_state(request)
    await caller_of(state, authorization)

    def read() -> dict[str, Any]:
        with state.db.read() as session:
            serving = registry.serving_target(session)
            rows = session.scalars(select(Version).order_by(Version.id))
            return {
                "serving": serving.name,
                "data": [registry.version_summary(session, v, serving.version_id) for v in rows],
            }

    return await run_in_threadpool(read)


def resolve_version_id(state: AppState, ref: str) -> int:
    with state.db.read() as session:
        query = select(Version.id).where(
            Version.id == int(ref) if ref.isdigit() else Version.name == ref
        )
        version_id = session.scalar(query)
    if version_id is None:
        raise ApiError(404, f"no version {ref!r} (see GET /api/versions)", code="version_not_found")
    return version_id


async def move_alias(state: AppState, action: Any) -> dict[str, Any]:
    """Run ``action(session)`` on the serving alias, then serve its new target right away."""

    def write() -> None:
        try:
            with state.db.write() as session:
                action(session)
        except registry.RegistryError as exc:
            raise ApiError(409, str(exc), code="alias_conflict") from exc

    await run_in_threadpool(write)
    serving = await state.refresh_serving()  # switch now, not at the next poll
    return {"serving": serving.name, "version_id": serving.version_id}


@router.post("/versions/{ref}/promote")
async def promote_version(
    ref: str,
    request: Request,
    body: PromoteRequest | None = None,
    authorization: str | None = Header(None),
) -> Any:
    state = app_state(request)
    caller = await caller_of(state, authorization)
    caller.require_admin("promoting a version")
    version_id = await run_in_threadpool(resolve_version_id, state, ref)
    reason = body.reason if body else "promoted through the API"
    return await move_alias(
        state, lambda s: registry.promote(s, version_id, actor=caller.user(None), reason=reason)
    )


@router.post("/rollback")
async def rollback(
    request: Request, body: RollbackRequest | None = None, authorization: str | None = Header(None)
) -> Any:
    state = app_state(request)
    caller = await caller_of(state, authorization)
    caller.require_admin("rolling back")
    body = body or RollbackRequest()
    return await move_alias(
        state,
        lambda s: registry.rollback(
            s, actor=caller.user(None), reason=body.reason, to_version_id=body.version_id
        ),
    )


class ExportRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # The GGUF weight type of the merged model; q4_k_m is llama.cpp's quantizer.
    format: OutputType = "f16"


def _export_error(exc: Exception) -> ApiError:
    """What went wrong in an export, as the API reports it."""
    if isinstance(exc, FileNotFoundError):
        return ApiError(404, str(exc), code="no_artifact")
    if isinstance(exc, ArtifactError):
        return ApiError(500, str(exc), type="server_error", code="artifact_corrupted")
    if isinstance(exc, EngineError):
        return ApiError(500, f"the export cannot be checked: {exc}", type="server_error")
    # The base model or the adapter cannot be merged as configured; the message says why.
    return ApiError(409, str(exc), code="export_unavailable")


@router.post("/versions/{ref}/export")
async def export_merged(
    ref: str,
    request: Request,
    body: ExportRequest | None = None,
    authorization: str | None = Header(None),
) -> Any:
    """Merge a version into its base as one GGUF, check it on the version's held-out examples,
    and say where to download it. Takes seconds to a minute; an existing export returns at once."""
    state = app_state(request)
    await caller_of(state, authorization)
    fmt = (body or ExportRequest()).format
    version_id = await run_in_threadpool(resolve_version_id, state, ref)
    try:
        export, check = await run_in_threadpool(
            export_and_check, state.settings, state.db, version_id, fmt
        )
    except EXPORT_ERRORS as exc:
        raise _export_error(exc) from exc
    name = export.folder.parent.name
    download = f"/api/versions/{name}/download?format="
    return {
        "format": fmt,
        "path": str(export.model_path),
        "size_bytes": export.size_bytes,
        "sha256": export.sha256,
        "check": check,
        "download": {"model": f"{download}merged-{fmt}", "modelfile": f"{download}modelfile-{fmt}"},
    }
