"""What the worker does for each kind of job: one table, :data:`HANDLERS`, keyed by ``Job.kind``.

A handler gets a :class:`JobRun` (the worker, the job's id and parameters, and a ``report``
callback for progress that raises ``JobCancelled`` once a cancel is asked for) and returns the
job's result, a JSON-able dict. It raises ``JobFailed`` for a failure whose message is for the
user; any other exception fails the job with its traceback in the log. A new kind of job is a
function registered here with :func:`handles`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast, get_args

from selftune.export.check import EXPORT_ERRORS, export_and_check, export_summary
from selftune.export.gguf_model import OutputType
from selftune.store.jobs import JobFailed
from selftune.training.pipeline import run_training_job

if TYPE_CHECKING:
    from selftune.worker.loop import Worker

__all__ = ["HANDLERS", "Handler", "JobRun", "handles"]


@dataclasses.dataclass(frozen=True)
class JobRun:
    worker: Worker
    job_id: int
    params: dict[str, Any]
    report: Callable[[float, str], None]  # (progress 0..1, stage); raises JobCancelled


Handler = Callable[[JobRun], dict[str, Any]]
HANDLERS: dict[str, Handler] = {}


def handles(kind: str) -> Callable[[Handler], Handler]:
    """Register the decorated function as the handler of jobs of ``kind``."""

    def register(handler: Handler) -> Handler:
        if kind in HANDLERS:
            raise ValueError(f"jobs of kind {kind!r} already have a handler")
        HANDLERS[kind] = handler
        return handler

    return register


@handles("train")
def train(run: JobRun) -> dict[str, Any]:
    """Train an adapter on the curated examples, evaluate it, gate it, maybe promote it.
    Between steps it waits while the server answers chats (``selftune.autopilot.pacing``)."""
    from selftune.autopilot.pacing import pacer_for

    pacer = pacer_for(run.worker.settings, run.worker.db)
    result = run_training_job(
        run.worker.context(),
        run.job_id,
        pacer.paced(run.report),
        worker_id=run.worker.worker_id,
        overrides=run.params.get("overrides"),
    )
    result["seconds"]["paused"] = round(pacer.paused, 3)  # waited for serving, in its stages
    return result


@handles("export")
def export(run: JobRun) -> dict[str, Any]:
    """Merge a version into its base as one GGUF in ``params["format"]``, with its Modelfile,
    and check it on the version's held-out material (``selftune.export.check``)."""
    version_id, fmt = run.params.get("version_id"), run.params.get("format")
    if not isinstance(version_id, int) or fmt not in get_args(OutputType):
        raise JobFailed(f"an export job needs a version_id and a format, not {run.params}")
    try:
        result, check = export_and_check(
            run.worker.settings, run.worker.db, version_id, cast(OutputType, fmt), run.report
        )
    except (LookupError, *EXPORT_ERRORS) as exc:  # type: ignore[misc]
        raise JobFailed(str(exc)) from exc
    return export_summary(result, check)


@handles("timestep")
def timestep(run: JobRun) -> dict[str, Any]:
    """Run one connector (``params["connector"]``) once: ``selftune.connectors.schedule``."""
    from selftune.connectors import ConnectorUnavailable
    from selftune.connectors.schedule import run_connector

    name = str(run.params.get("connector"))
    engine = run.worker.context().engine
    try:
        return run_connector(
            run.worker.settings, run.worker.db, engine, name, run.report, run.job_id
        )
    except ConnectorUnavailable as exc:
        raise JobFailed(f"connector {name}: {exc}") from exc


@handles("import")
def import_document(run: JobRun) -> dict[str, Any]:
    """Fetch or read, parse, chunk and store one import (``params["import_id"]``):
    ``selftune.data.documents.run_import``."""
    from selftune.data.documents import run_import

    import_id = run.params.get("import_id")
    if not isinstance(import_id, int):
        raise JobFailed(f"an import job needs an import_id, not {run.params}")
    worker = run.worker
    return run_import(
        worker.settings,
        worker.db,
        run.job_id,
        import_id,
        run.report,
        worker_id=worker.worker_id,
        engine=lambda: worker.context().engine,
        depth=int(run.params.get("depth") or 0),
    )


@handles("memory_reembed")
def memory_reembed(run: JobRun) -> dict[str, Any]:
    """Embed every memory record with ``params["model"]`` (the embedding model just
    configured); the server switches its search to it once every record has a vector."""
    from sqlalchemy import func, select

    from selftune.memory.embedder import EmbedderError
    from selftune.memory.served import embedder_loaders
    from selftune.memory.vectors import embed_records
    from selftune.store.schema import MemoryRecord

    spec = run.params.get("model")
    if not isinstance(spec, str):
        raise JobFailed(f"a memory_reembed job needs a model, not {run.params}")
    settings = run.worker.settings
    load, _name = embedder_loaders(
        settings.base_model, settings.memory.embedding_device, lambda: run.worker.context().engine
    )
    try:
        embedder = load(spec)
    except EmbedderError as exc:
        raise JobFailed(f"memory.embedding_model: {exc}") from exc
    db = run.worker.db
    with db.read() as session:
        total = session.scalar(select(func.count()).select_from(MemoryRecord)) or 1
    run.report(0.0, "embedding")
    done = embed_records(
        db, embedder, progress=lambda n: run.report(min(n / total, 0.99), "embedding")
    )
    return {"model": embedder.name, "dim": embedder.dim, "embedded": done}


@handles("memory_summary")
def memory_summary(run: JobRun) -> dict[str, Any]:
    """Summarize one channel of memory (``params["tag"]``) as one scope sees it (``user_id``'s
    records and the shared ones, or with ``everything`` all records) with the served model:
    ``selftune.memory.summaries.summarize_channel``."""
    from selftune.memory.records import Scope
    from selftune.memory.summaries import SUMMARY_TOKENS, SummaryError, summarize_channel
    from selftune.memory.tags import normalize_tag

    tag, user_id = run.params.get("tag"), run.params.get("user_id")
    everything = run.params.get("everything", False)
    if (
        not isinstance(tag, str)
        or not normalize_tag(tag)
        or not (user_id is None or isinstance(user_id, str))
        or not isinstance(everything, bool)
    ):
        raise JobFailed(
            "a memory_summary job needs a tag, a user_id (or null) and everything, not "
            f"{run.params}"
        )
    engine = run.worker.context().engine
    try:
        return summarize_channel(
            run.worker.db,
            engine,
            tag,
            Scope(user_id, everything=everything),
            run.report,
            max_tokens=SUMMARY_TOKENS,
            job_id=run.job_id,
        )
    except SummaryError as exc:
        raise JobFailed(str(exc)) from exc
