"""The management API: feedback, training jobs, versions, promotion and rollback."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse, Response
from pydantic import ConfigDict
from sqlalchemy import func, select
from starlette.concurrency import run_in_threadpool

from selftune.api.auth import Caller
from selftune.api.chat_memory import remember_correction
from selftune.api.deps import CurrentCaller, State, admin_caller
from selftune.api.errors import ApiError
from selftune.api.responses import (
    ERRORS,
    ExportQueued,
    ExportSummary,
    FeedbackRecorded,
    JobList,
    JobQueued,
    JobView,
    Serving,
    VersionList,
)
from selftune.api.schemas import (
    FeedbackRequest,
    PromoteRequest,
    RequestModel,
    RollbackRequest,
    TrainRequest,
)
from selftune.api.state import AppState
from selftune.atomic import ArtifactError
from selftune.data.curation import active_examples, example_from_feedback
from selftune.export.check import find_checked_export
from selftune.export.gguf_model import OutputType
from selftune.registry import versions as registry
from selftune.store import jobs
from selftune.store.schema import MAX_ID, Feedback, Interaction, Job, Version
from selftune.store.users import ensure_user

__all__ = ["move_alias", "resolve_version_id", "router"]

router = APIRouter(prefix="/api", responses=ERRORS)


@router.post("/feedback", response_model=FeedbackRecorded)
async def feedback(body: FeedbackRequest, state: State, caller: CurrentCaller) -> dict[str, Any]:
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
            if state.memory is not None and body.rating < 0:
                # In memory at once (found by keyword now, by meaning within a second): the
                # next chat can use a correction before any training job runs.
                remember_correction(session, state.memory, interaction, item)
            return {
                "feedback_id": item.id,
                "interaction_id": interaction.id,
                "example_id": example.id if example else None,
            }

    return await run_in_threadpool(write)


@router.post("/train", response_model=JobQueued)
async def train(
    state: State, caller: CurrentCaller, body: TrainRequest | None = None
) -> dict[str, Any]:
    def queue() -> int:
        with state.db.read() as session:
            n = len(active_examples(session))
        if n < state.settings.train.min_new_examples:
            raise ApiError(
                400,
                f"nothing to learn yet: {n} curated examples, need "
                f"{state.settings.train.min_new_examples}. Rate answers or send corrections "
                "with POST /api/feedback, or submit conversations with POST /api/examples, "
                "first.",
                code="no_training_data",
            )
        reason = body.reason if body else "requested through the API"
        return jobs.enqueue(state.db, "train", caller.user(None), {"reason": reason})

    job_id = await run_in_threadpool(queue)
    return {"job_id": job_id, "status": "queued"}


def _job_or_404(state: AppState, caller: Caller, job_id: int) -> Job:
    """The job, if ``caller`` may see it (and so act on it): a user's key its own jobs, an
    admin's any job. Another user's job answers 404, as if it did not exist."""
    job = None
    if 0 < job_id <= MAX_ID:  # an id beyond the store's integers names no job
        with state.db.read() as session:
            job = session.get(Job, job_id)
    owner = caller.reads(None)
    if job is None or (owner is not None and job.user_id != owner):
        raise ApiError(404, f"no job {job_id}", code="job_not_found")
    return job


@router.get("/jobs/{job_id}", response_model=JobView)
async def get_job(job_id: int, state: State, caller: CurrentCaller) -> dict[str, Any]:
    job = await run_in_threadpool(_job_or_404, state, caller, job_id)
    return jobs.job_view(job)


@router.get("/jobs", response_model=JobList)
async def list_jobs(
    state: State,
    caller: CurrentCaller,
    user: Annotated[
        str | None, Query(max_length=128, description="Only this user's (an admin's view)")
    ] = None,
) -> dict[str, Any]:
    """The latest 100 jobs, newest first: a user's key sees its own, an admin's everyone's
    (``?user=`` for one)."""
    owner = caller.reads(user)
    if owner is False:
        return {"data": []}

    def read() -> list[dict[str, Any]]:
        with state.db.read() as session:
            query = select(Job).order_by(Job.id.desc()).limit(100)
            if owner is not None:
                query = query.where(Job.user_id == owner)
            return [jobs.job_view(j) for j in session.scalars(query)]

    return {"data": await run_in_threadpool(read)}


async def _job_action(
    state: AppState, caller: Caller, job_id: int, action: Callable[..., Any]
) -> dict[str, Any]:
    await run_in_threadpool(_job_or_404, state, caller, job_id)
    try:
        await run_in_threadpool(action, state.db, job_id)
    except jobs.JobError as exc:
        raise ApiError(409, str(exc), code="job_conflict") from exc
    job = await run_in_threadpool(_job_or_404, state, caller, job_id)
    return jobs.job_view(job)


@router.post("/jobs/{job_id}/retry", response_model=JobView)
async def retry_job(job_id: int, state: State, caller: CurrentCaller) -> dict[str, Any]:
    return await _job_action(state, caller, job_id, jobs.retry)


@router.post("/jobs/{job_id}/cancel", response_model=JobView)
async def cancel_job(job_id: int, state: State, caller: CurrentCaller) -> dict[str, Any]:
    return await _job_action(state, caller, job_id, jobs.cancel)


@router.get("/versions", response_model=VersionList)
async def list_versions(
    state: State,
    _caller: CurrentCaller,
    limit: Annotated[
        int | None,
        Query(ge=1, le=200, description="Page: at most this many (50 if only ?before=)"),
    ] = None,
    before: Annotated[
        int | None,
        Query(ge=1, le=MAX_ID, description="Page: versions older than this id (a page's next)"),
    ] = None,
) -> dict[str, Any]:
    """Versions. Without ``?limit=`` or ``?before=``, every one, oldest first (as earlier
    releases answered); with either, newest first, a page at a time: ``next`` is the
    ``?before=`` of the next (older) page."""
    paged = limit is not None or before is not None

    def read() -> dict[str, Any]:
        with state.db.read() as session:
            serving = registry.serving_target(session)
            total = session.scalar(select(func.count()).select_from(Version)) or 0
            query = select(Version)
            if not paged:
                rows = list(session.scalars(query.order_by(Version.id)))
                more = False
            else:
                if before is not None:
                    query = query.where(Version.id < before)
                size = limit or 50
                rows = list(session.scalars(query.order_by(Version.id.desc()).limit(size + 1)))
                more, rows = len(rows) > size, rows[:size]
            return {
                "serving": serving.name,
                "total": total,
                "next": rows[-1].id if more else None,
                "data": [registry.version_summary(session, v, serving.version_id) for v in rows],
            }

    return await run_in_threadpool(read)


def resolve_version_id(state: AppState, ref: str) -> int:
    with state.db.read() as session:
        version_id = session.scalar(select(Version.id).where(registry.version_ref(ref)))
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


@router.post("/versions/{ref}/promote", response_model=Serving)
async def promote_version(
    ref: str,
    state: State,
    caller: Annotated[Caller, admin_caller("promoting a version")],
    body: PromoteRequest | None = None,
) -> dict[str, Any]:
    version_id = await run_in_threadpool(resolve_version_id, state, ref)
    reason = body.reason if body else "promoted through the API"
    return await move_alias(
        state, lambda s: registry.promote(s, version_id, actor=caller.user(None), reason=reason)
    )


@router.post("/rollback", response_model=Serving)
async def rollback(
    state: State,
    caller: Annotated[Caller, admin_caller("rolling back")],
    body: RollbackRequest | None = None,
) -> dict[str, Any]:
    body = body or RollbackRequest()
    return await move_alias(
        state,
        lambda s: registry.rollback(
            s, actor=caller.user(None), reason=body.reason, to_version_id=body.version_id
        ),
    )


class ExportRequest(RequestModel):
    model_config = ConfigDict(extra="forbid")
    # The GGUF weight type of the merged model; q4_k_m is llama.cpp's quantizer.
    format: OutputType = "f16"


@router.post(
    "/versions/{ref}/export",
    status_code=202,
    response_model=ExportQueued,
    responses={
        200: {"model": ExportSummary, "description": "Already exported and checked"},
        202: {"description": "Queued: follow the job with GET /api/jobs/{job_id}"},
    },
)
async def export_merged(
    ref: str, state: State, caller: CurrentCaller, body: ExportRequest | None = None
) -> Response | dict[str, Any]:
    """Queue the worker to merge a version into its base as one GGUF (with an ollama Modelfile)
    and check it on the version's held-out examples: 202 with the job's id, followed with
    ``GET /api/jobs/{id}``. An export that exists and was checked answers 200 at once."""
    fmt = (body or ExportRequest()).format
    version_id = await run_in_threadpool(resolve_version_id, state, ref)

    def queue() -> JSONResponse | dict[str, Any]:
        with state.db.read() as session:
            version = session.get(Version, version_id)
        assert version is not None  # resolve_version_id found it; versions are never deleted
        if not Path(version.path).is_dir():
            raise ApiError(
                404,
                f"version {version.name} has no stored adapter at {version.path}",
                code="no_artifact",
            )
        try:
            done = find_checked_export(state.settings, version.name, fmt)
        except ArtifactError as exc:
            raise ApiError(500, str(exc), type="server_error", code="artifact_corrupted") from exc
        if done is not None:
            return JSONResponse(done)
        params = {"version_id": version_id, "format": fmt}
        job_id, _new = jobs.enqueue_once(state.db, "export", caller.user(None), params)
        return {"job_id": job_id, "status": "queued", "version": version.name, "format": fmt}

    return await run_in_threadpool(queue)
