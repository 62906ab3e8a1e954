"""The command line: one place for every subcommand, each a thin function over the package.

Commands that change state (train, promote, rollback, keys) work on the store directly, so they
work whether or not a server is running; a running server picks up alias changes by itself.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy import func, select

from selftune.config import Settings, SettingsError, load_settings
from selftune.store.db import Database, StoreError

__all__ = ["app", "main"]

app = typer.Typer(
    help="selftune: a self-hosted LLM service that learns from its own use.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
keys_app = typer.Typer(help="List, create, revoke and rotate API keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
console = Console(stderr=True)


def _fail(message: str, code: int = 1) -> None:
    console.print(f"[red]error:[/red] {message}")
    raise typer.Exit(code)


def _settings(**overrides: Any) -> Settings:
    try:
        return load_settings(**overrides)
    except SettingsError as exc:
        _fail(str(exc), 2)
        raise AssertionError from exc  # unreachable


def _database(settings: Settings) -> Database:
    try:
        db = Database(settings.resolved_database_url)
        db.migrate()
        return db
    except StoreError as exc:
        _fail(str(exc))
        raise AssertionError from exc


def _check_worker(settings: Settings) -> None:
    """Fail before anything starts when this machine cannot run the worker as the settings ask."""
    from selftune.worker.loop import WorkerSettingsError, check_worker_settings

    try:
        check_worker_settings(settings)
    except WorkerSettingsError as exc:
        _fail(str(exc), 2)


def _logging() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


@app.command()
def serve(
    worker: Annotated[bool, typer.Option(help="Also start a training worker process.")] = True,
) -> None:
    """Serve the model over HTTP (OpenAI-compatible) on the configured host and port."""
    _serve(_settings(), worker)


@app.command()
def proxy(
    upstream: Annotated[
        str,
        typer.Option(
            help="The OpenAI-compatible server's base URL, with its /v1 "
            "(http://127.0.0.1:11434/v1): proxy.upstream_url."
        ),
    ],
    worker: Annotated[bool, typer.Option(help="Also start a training worker process.")] = True,
) -> None:
    """Serve in front of another OpenAI-compatible server: forward chat and completions to it,
    record its answers and learn from them (settings: proxy.*; docs/proxy.md)."""
    _serve(_settings(proxy={"upstream_url": upstream}), worker)


def _serve(settings: Settings, worker: bool) -> None:
    import uvicorn

    from selftune.api.app import create_app
    from selftune.api.guards import is_loopback

    serve_settings = settings.serve
    if not (
        is_loopback(serve_settings.host)
        or serve_settings.auth_required
        or serve_settings.allow_open_public
    ):
        _fail(
            f"serve.host is {serve_settings.host!r}, beyond this machine, and anyone who reaches "
            "it could use the API without a key: set serve.auth_required = true (and create "
            "keys with 'selftune keys create'), or serve.allow_open_public = true to serve it "
            "open anyway",
            2,
        )
    _logging()
    _database(settings).dispose()  # fail here, not in the worker, if the store is unusable
    with_worker = worker and settings.serve.start_worker
    if with_worker:
        _check_worker(settings)
    app = create_app(settings, with_worker=with_worker)
    console.print(
        f"serving {settings.serve.model_name!r} on http://{settings.serve.host}:{settings.serve.port}"
    )
    if settings.proxy.upstream_url:
        console.print(f"forwarding chat and completions to {settings.proxy.upstream_url}")
    uvicorn.run(app, host=settings.serve.host, port=settings.serve.port, log_level="info")


@app.command("worker")
def worker_command() -> None:
    """Run a training worker: takes queued jobs from the store and runs them."""
    from selftune.worker.loop import run_worker

    settings = _settings()
    _check_worker(settings)
    _logging()
    run_worker(settings)


def _wait_for_job(db: Database, job_id: int) -> dict[str, Any]:
    from selftune.store.jobs import TERMINAL, job_view
    from selftune.store.schema import Job

    columns = (TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as bar:
        task = bar.add_task(f"job {job_id}: queued", total=1.0)
        while True:
            with db.read() as session:
                job = session.get(Job, job_id)
                assert job is not None
                view = job_view(job)
            bar.update(
                task, completed=view["progress"], description=f"job {job_id}: {view['stage']}"
            )
            if view["status"] in TERMINAL:
                return view
            time.sleep(0.5)


@app.command()
def train(
    wait: Annotated[bool, typer.Option(help="Wait for the job and show its progress.")] = True,
) -> None:
    """Queue a training job on the curated examples (a worker must be running)."""
    from selftune.data.curation import active_examples
    from selftune.store import jobs
    from selftune.store.workers import live_workers

    settings = _settings()
    db = _database(settings)
    with db.read() as session:
        n = len(active_examples(session))
    if n < settings.train.min_new_examples:
        _fail(
            f"nothing to learn yet: {n} curated examples. Rate answers or send corrections "
            "with POST /api/feedback first."
        )
    job_id = jobs.enqueue(db, "train", "cli", {"reason": "selftune train"})
    typer.echo(f"queued job {job_id}")
    if not live_workers(db):
        console.print(
            "[yellow]no training worker is running:[/yellow] the job waits until one starts "
            "('selftune worker', or 'selftune serve' which starts one)"
        )
    if not wait:
        return
    view = _wait_for_job(db, job_id)
    if view["status"] != "succeeded":
        _fail(f"job {job_id} {view['status']}: {view['error']}")
    result = view["result"]
    # The job ran (exit 0) whether or not its version is served; a refused one says so.
    typer.echo(f"version {result['version']}: {_verdict(result)}")
    if not result["promoted"] and view.get("next_step"):
        typer.echo(f"next: {view['next_step']}")


def _verdict(result: dict[str, Any]) -> str:
    """What became of a job's version, in a line."""
    reason = result["gate"]["reason"]
    if result["promoted"]:
        return f"promoted ({reason})"
    if result.get("not_promoted"):  # absent from results stored by earlier releases
        return f"passed its gate but not promoted: {result['not_promoted']}"
    return f"learned, not served: the gate refused it ({reason})"


@app.command()
def status(
    show_settings: Annotated[
        bool,
        typer.Option("--settings", help="Print every setting, its value and what it does."),
    ] = False,
) -> None:
    """Show what is served, the versions, and recent jobs."""
    from selftune.registry.versions import serving_target
    from selftune.store.jobs import train_outcome
    from selftune.store.schema import Interaction, Job, TrainingExample, Version

    settings = _settings()
    if show_settings:
        from selftune.config import iter_settings

        table = Table("setting", "value", "description", title="settings")
        for name, value, description in iter_settings(settings):
            table.add_row(name, repr(value), description)
        Console().print(table)
        return
    db = _database(settings)
    with db.read() as session:
        target = serving_target(session)
        typer.echo(f"serving: {target.name}")
        typer.echo(f"interactions: {session.scalar(select(func.count(Interaction.id)))}")
        n_examples = session.scalar(
            select(func.count(TrainingExample.id)).where(TrainingExample.active)
        )
        typer.echo(f"curated examples: {n_examples}")
        table = Table("version", "parent", "gate", "reason", title="versions")
        for v in session.scalars(select(Version).order_by(Version.id)):
            parent = session.get(Version, v.parent_id).name if v.parent_id else "base"  # type: ignore[union-attr]
            table.add_row(v.name, parent, *_gate_columns(v.gate))
        Console().print(table)
        jobs_table = Table(
            "job", "kind", "status", "stage", "outcome", "error", title="recent jobs"
        )
        for j in session.scalars(select(Job).order_by(Job.id.desc()).limit(10)):
            outcome, _ = train_outcome(j.kind, j.status, j.result)
            jobs_table.add_row(str(j.id), j.kind, j.status, j.stage, outcome or "", j.error or "")
        Console().print(jobs_table)


def _gate_columns(gate: dict[str, Any]) -> tuple[str, str]:
    """(verdict, reason) of a version's gate. A version whose job was cancelled, or lost to
    another worker, before its gate ran has none."""
    if not gate:
        return "-", "not evaluated"
    return ("passed" if gate.get("passed") else "failed"), gate.get("reason", "")


def _move_alias(action: Any) -> None:
    from selftune.registry.versions import RegistryError, serving_target

    db = _database(_settings())
    try:
        with db.write() as session:
            action(session)
            target = serving_target(session)
    except RegistryError as exc:
        _fail(str(exc))
    typer.echo(f"now serving: {target.name}")


@app.command()
def promote(
    version: Annotated[str, typer.Argument(help="Version name (v3) or id (3).")],
    reason: Annotated[
        str, typer.Option(help="Recorded in the alias history.")
    ] = "selftune promote",
) -> None:
    """Serve a version that passed its gate."""
    from selftune.registry.versions import RegistryError, version_ref
    from selftune.registry.versions import promote as do_promote
    from selftune.store.schema import Version

    def action(session: Any) -> None:
        version_id = session.scalar(select(Version.id).where(version_ref(version)))
        if version_id is None:
            raise RegistryError(f"no version {version!r}; see 'selftune status'")
        do_promote(session, version_id, actor="cli", reason=reason)

    _move_alias(action)


@app.command()
def rollback(
    reason: Annotated[
        str, typer.Option(help="Recorded in the alias history.")
    ] = "selftune rollback",
) -> None:
    """Serve again what was served before the current version."""
    from selftune.registry.versions import rollback as do_rollback

    _move_alias(lambda session: do_rollback(session, actor="cli", reason=reason))


@app.command()
def autopilot(
    action: Annotated[
        Literal["on", "off", "status"],
        typer.Argument(help="on / off: let it train by itself or not; status: what it does."),
    ] = "status",
    reason: Annotated[str, typer.Option(help="Recorded in the event timeline.")] = "",
) -> None:
    """Switch the autopilot on or off, or show what it is doing and why."""
    from selftune.autopilot.control import current, update
    from selftune.autopilot.scheduler import scheduler_state

    settings = _settings()
    db = _database(settings)
    if action != "status":
        update(settings, db, {"enabled": action == "on"}, actor="cli", reason=reason)
    with db.read() as session:
        state = scheduler_state(settings, session)
        config = current(settings, session)
    typer.echo(f"autopilot: {'on' if state['enabled'] else 'off'}")
    running = state["job_id"] if state["running"] or state["scheduled"] else None
    if running is not None:
        paused = " (paused for serving)" if state["paused"] else ""
        typer.echo(f"training job: {running} {'running' if state['running'] else 'queued'}{paused}")
    last = state["last_run"]
    if last:
        typer.echo(
            f"last run: {last['at']} job {last['job_id']} ({last['trigger']}): {last['reason']}"
        )
    typer.echo(f"next run: {state['next_run'] or '-'}")
    typer.echo(f"why: {state['why']}")
    on = [name for name, enabled in state["triggers"].items() if enabled]
    typer.echo(f"triggers on: {', '.join(on) or 'none'}")
    typer.echo(
        f"troubleshooter: {'on' if config.troubleshoot else 'off'}, "
        f"pause while serving: {'on' if config.pause_on_inference else 'off'}"
    )


def _version_id(settings: Settings, version: str) -> int:
    """The id of a version given by name or id; fails with a hint when there is none."""
    from selftune.registry.versions import version_ref
    from selftune.store.schema import Version

    with _database(settings).read() as session:
        version_id = session.scalar(select(Version.id).where(version_ref(version)))
    if version_id is None:
        _fail(f"no version {version!r}; see 'selftune status' (or export 'base')")
    assert version_id is not None
    return version_id


@app.command("export")
def export_command(
    version: Annotated[
        str, typer.Argument(help="Version name (v3), id (3), or 'base' for the base model alone.")
    ],
    fmt: Annotated[
        # selftune.export.gguf_model.OutputType, spelled out: that module loads numpy and gguf.
        Literal["f16", "f32", "q8_0", "q4_k_m"],
        typer.Option("--format", help="GGUF weight type; q4_k_m uses llama.cpp's quantizer."),
    ] = "f16",
) -> None:
    """Write a version merged into its base as one GGUF, with an ollama Modelfile beside it,
    and check on the version's held-out examples that the export still knows what it was taught.

    With a worker running, the export is its job (this waits for it, as 'selftune train' does);
    without one, it runs here."""
    from selftune.export.merged import BASE
    from selftune.store.workers import live_workers

    settings = _settings()
    if version == BASE:
        _export_here(settings, None, version, fmt)
        return
    version_id = _version_id(settings, version)
    db = _database(settings)
    try:
        if not live_workers(db):
            _export_here(settings, db, version, fmt, version_id)
            return
        from selftune.store import jobs

        params = {"version_id": version_id, "format": fmt}
        job_id, new = jobs.enqueue_once(db, "export", "cli", params)
        typer.echo(f"{'queued' if new else 'waiting for'} export job {job_id}")
        view = _wait_for_job(db, job_id)
    finally:
        db.dispose()
    if view["status"] != "succeeded":
        _fail(f"export job {job_id} {view['status']}: {view['error']}")
    summary = view["result"]
    typer.echo(f"folder: {Path(summary['path']).parent}")
    typer.echo(f"model: {Path(summary['path']).name} ({summary['size_bytes'] / 1e6:.1f} MB)")
    typer.echo(f"sha256: {summary['sha256']}")
    _report_check(summary["check"], fmt)


def _export_here(
    settings: Settings, db: Database | None, version: str, fmt: Any, version_id: int | None = None
) -> None:
    """Export (and, for a stored version, check) in this process, with a progress bar."""
    from selftune.export.check import EXPORT_ERRORS, export_and_check
    from selftune.export.merged import export_version

    columns = (TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
    check = None
    try:
        with Progress(*columns, console=console, transient=True) as bar:
            task = bar.add_task(f"exporting {version} ({fmt})", total=1.0)

            def progress(fraction: float, stage: str) -> None:
                bar.update(task, completed=fraction, description=f"{version} ({fmt}): {stage}")

            if db is None or version_id is None:
                result = export_version(settings, version, fmt, progress)
            else:
                result, check = export_and_check(settings, db, version_id, fmt, progress)
    except EXPORT_ERRORS as exc:
        _fail(str(exc))
        raise AssertionError from exc
    if result.reused:
        console.print("an export in this format already exists (verified); not rewritten")
    typer.echo(f"folder: {result.folder}")
    typer.echo(f"model: {result.model_path.name} ({result.size_bytes / 1e6:.1f} MB)")
    typer.echo(f"sha256: {result.sha256}")
    if check is not None:
        _report_check(check, fmt)


def _report_check(check: dict[str, Any], fmt: str) -> None:
    from selftune.export.check import describe

    typer.echo(describe(check))
    if not check["kept"]:
        better = {"q4_k_m": "q8_0 or f16", "q8_0": "f16", "f16": "f32"}.get(fmt)
        advice = f"export it as {better} instead" if better else "serve the version instead"
        console.print(
            f"[yellow]warning:[/yellow] this {fmt} export lost what the version was taught (its "
            f"held-out recall fell more than {check['tolerance']} below the version's); {advice}"
        )


@app.command("import")
def import_command(
    target: Annotated[
        str, typer.Argument(help="A file, a folder (imported recursively) or an http(s) URL.")
    ],
    tags: Annotated[str, typer.Option(help="Tags for every import, comma-separated.")] = "",
    user: Annotated[str, typer.Option(help="Whose imports they are.")] = "cli",
    depth: Annotated[
        int,
        typer.Option(min=0, max=3, help="A URL: follow its links on the same site this far."),
    ] = 0,
) -> None:
    """Import documents (text, Markdown, HTML, PDF, images) from files, a folder or a web page, one
    import per file, and follow them to their end (docs/imports.md).

    With a worker running, each import is its job; without one, they run here."""
    import os
    import socket

    from selftune.store.workers import live_workers

    settings = _settings()
    db = _database(settings)
    tag_list = tags.split(",")
    try:
        here = None if live_workers(db) else f"cli:{socket.gethostname()}:{os.getpid()}"
        recorded, failures = _record_imports(settings, db, target, tag_list, user, here, depth)
        if here is None:
            views = _wait_for_imports(db, recorded)
        else:
            views = _run_imports_here(settings, db, recorded, here, depth)
    finally:
        db.dispose()
    for name, view in views.items():
        if view["state"] != "succeeded":
            error = view["error"] or {"code": view["state"], "message": ""}
            failures.append(f"{name}: {error['code']}: {error['message']}")
        elif view["duplicates_dropped"]:
            typer.echo(f"{name}: already imported (import {view['duplicate_of']})")
    done = sum(view["state"] == "succeeded" for view in views.values())
    chunks = sum(view["chunks_made"] for view in views.values())
    typer.echo(f"{done} imported ({chunks} chunks), {len(failures)} failed")
    for failure in failures:
        console.print(f"[red]failed:[/red] {failure}")
    if failures:
        raise typer.Exit(1)


def _record_imports(
    settings: Settings,
    db: Database,
    target: str,
    tags: list[str],
    user: str,
    here: str | None,
    depth: int,
) -> tuple[dict[str, tuple[int, int]], list[str]]:
    """Record one import per file of ``target`` (or of the URL): {name: (import id, job id)},
    and the files refused before they were recorded."""
    from selftune.data import documents

    recorded: dict[str, tuple[int, int]] = {}
    failures: list[str] = []
    if target.startswith(("http://", "https://")):
        sources: list[tuple[str, Any, bytes | None]] = [(target, "url", None)]
    else:
        path = Path(target)
        if not path.exists():
            _fail(f"{target} does not exist: name a file, a folder or an http(s) URL")
        files = documents.files_to_import(path)
        if not files:
            suffixes = ", ".join(sorted(documents.IMPORT_SUFFIXES))
            _fail(f"no files to import in {target} (it takes {suffixes})")
        sources = [(str(f), "file", f.read_bytes()) for f in files]
    for name, kind, data in sources:
        try:
            source = Path(name).name if kind == "file" else name
            recorded[name] = documents.record_import(
                settings,
                db,
                user,
                kind,
                source,
                data=data,
                tags=tags,
                worker_id=here,
                depth=depth if kind == "url" else 0,
            )
        except documents.ImportInvalid as exc:
            failures.append(f"{name}: {exc.code}: {exc.message}")
    return recorded, failures


def _import_views(db: Database, recorded: dict[str, tuple[int, int]]) -> dict[str, Any]:
    from selftune.data import documents
    from selftune.store.schema import ImportRecord

    views = {}
    with db.read() as session:
        for name, (import_id, _job) in recorded.items():
            record = session.get(ImportRecord, import_id)
            if record is not None:
                views[name] = documents.import_view(session, record, documents=False)
    return views


def _import_bar() -> Progress:
    columns = (TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
    return Progress(*columns, console=console, transient=True)


def _wait_for_imports(db: Database, recorded: dict[str, tuple[int, int]]) -> dict[str, Any]:
    """Follow imports a worker runs until each has ended, with one bar for all of them."""
    with _import_bar() as bar:
        task = bar.add_task(f"{len(recorded)} imports: queued", total=len(recorded) or 1)
        while True:
            views = _import_views(db, recorded)
            ended = [
                v for v in views.values() if v["state"] in ("succeeded", "failed", "cancelled")
            ]
            bar.update(
                task,
                completed=sum(v["progress"] for v in views.values()),
                description=f"{len(recorded)} imports: {len(ended)} ended",
            )
            if len(ended) == len(views):
                return views
            time.sleep(0.3)


def _import_reporter(
    bar: Progress, task: Any, done: int, name: str, db: Database, job_id: int, worker_id: str
) -> Any:
    """The progress callback of an import run here: the bar, and the job's progress."""
    from selftune.store import jobs

    def report(fraction: float, stage: str) -> None:
        bar.update(task, completed=done + fraction, description=f"{name}: {stage}")
        if jobs.report(db, job_id, fraction, stage, worker_id=worker_id):
            raise jobs.JobCancelled(f"job {job_id} was cancelled")

    return report


def _run_imports_here(
    settings: Settings,
    db: Database,
    recorded: dict[str, tuple[int, int]],
    worker_id: str,
    depth: int,
) -> dict[str, Any]:
    """Run the imports' jobs in this process (no worker is running), one after another."""
    from selftune.data.documents import run_import
    from selftune.store import jobs

    with _import_bar() as bar:
        task = bar.add_task("importing", total=len(recorded) or 1)
        for done, (name, (import_id, job_id)) in enumerate(recorded.items()):
            report = _import_reporter(bar, task, done, name, db, job_id, worker_id)
            try:
                result = run_import(
                    settings, db, job_id, import_id, report, worker_id=worker_id, depth=depth
                )
            except (jobs.JobFailed, jobs.JobCancelled) as exc:
                status = "failed" if isinstance(exc, jobs.JobFailed) else "cancelled"
                jobs.finish(db, job_id, status, error=str(exc), worker_id=worker_id)
            else:
                jobs.finish(db, job_id, "succeeded", result=result, worker_id=worker_id)
    return _import_views(db, recorded)


@app.command()
def timestep(
    config: Annotated[
        Path | None, typer.Option(help="Settings file to read instead of ./selftune.toml.")
    ] = None,
    connector: Annotated[
        str | None, typer.Option(help="Run this connector now, due or not (e.g. youtube).")
    ] = None,
) -> None:
    """Run the connectors that are due (youtube, ...) once, here, each recorded as a job:
    for cron or a systemd timer. A running worker also runs them on their intervals."""
    import os
    import socket

    from selftune.connectors.schedule import run_due

    if config is not None:
        os.environ["SELFTUNE_CONFIG"] = str(config)
    settings = _settings()
    _logging()
    db = _database(settings)

    def engine() -> Any:
        from selftune.engines.factory import build_engine

        return build_engine(settings, own_thread=False)

    worker_id = f"timestep:{socket.gethostname()}:{os.getpid()}"
    try:
        outcomes = run_due(settings, db, engine, worker_id=worker_id, only=connector)
    finally:
        db.dispose()
    if not outcomes:
        typer.echo("no connector is due")
    for outcome in outcomes:
        if "error" in outcome:
            console.print(
                f"[red]{outcome['connector']} (job {outcome['job_id']}):[/red] {outcome['error']}"
            )
        else:
            typer.echo(f"{outcome['connector']} (job {outcome['job_id']}): {outcome['result']}")
    if any("error" in outcome for outcome in outcomes):
        raise typer.Exit(1)


@keys_app.command("list")
def keys_list(
    user: Annotated[str | None, typer.Option(help="Only this user's keys.")] = None,
) -> None:
    """List keys by prefix: owner, rights, dates, status. Never the keys or their hashes."""
    from selftune.api.keys import list_keys

    table = Table("prefix", "user", "admin", "name", "created", "expires", "last used", "status")
    for key in list_keys(_database(_settings()), user):
        table.add_row(
            key["prefix"],
            key["user"],
            "yes" if key["admin"] else "",
            key["name"] or "",
            key["created_at"],
            key["expires_at"] or "never",
            key["last_used_at"] or "never",
            key["status"] + (f" {key['revoked_at']}" if key["revoked_at"] else ""),
        )
    Console().print(table)


@keys_app.command("create")
def keys_create(
    user: Annotated[str, typer.Option(help="The key's owner.")],
    admin: Annotated[
        bool,
        typer.Option(
            help="The key may also change what every user is served: promote, roll back, "
            "load and unload adapters, manage keys."
        ),
    ] = False,
    name: Annotated[str | None, typer.Option(help="A label: where the key is used.")] = None,
    expires_in: Annotated[
        float | None, typer.Option(help="Days until the key expires (default: never).")
    ] = None,
    expires: Annotated[
        str | None, typer.Option(help="When the key expires, ISO 8601 (naive: UTC).")
    ] = None,
) -> None:
    """Create an API key; it is printed once and stored only as a hash."""
    import datetime as dt

    from selftune.api.auth import create_key
    from selftune.api.errors import ApiError
    from selftune.api.keys import expiry

    try:
        at = dt.datetime.fromisoformat(expires) if expires else None
        expires_at = expiry(expires_in, at)
    except ValueError:
        _fail(f"--expires {expires!r} is not an ISO 8601 time (2026-12-31 or 2026-12-31T18:00)")
        return
    except ApiError as exc:
        _fail(exc.message)
        return
    key = create_key(_database(_settings()), user, admin=admin, name=name, expires_at=expires_at)
    typer.echo(key)


@keys_app.command("revoke")
def keys_revoke(
    user: Annotated[str | None, typer.Option(help="Revoke every key of this user.")] = None,
    prefix: Annotated[
        str | None, typer.Option(help="Revoke the one key with this prefix ('keys list').")
    ] = None,
) -> None:
    """Revoke all keys of a user, or one key by its prefix."""
    from selftune.api.auth import revoke_keys
    from selftune.api.errors import ApiError
    from selftune.api.keys import revoke_key

    if (user is None) == (prefix is None):
        _fail("give --user NAME (all their keys) or --prefix PREFIX (one key)", 2)
    db = _database(_settings())
    if user is not None:
        typer.echo(f"revoked {revoke_keys(db, user)} keys")
        return
    assert prefix is not None
    try:
        key = revoke_key(db, prefix)
    except ApiError as exc:
        _fail(exc.message)
        return
    typer.echo(f"revoked {key['prefix']} of {key['user']}")


@keys_app.command("rotate")
def keys_rotate(
    prefix: Annotated[str, typer.Option(help="The key to replace, by its prefix ('keys list').")],
    grace_minutes: Annotated[
        float, typer.Option(min=0, help="How long the old key keeps working.")
    ] = 60,
) -> None:
    """Replace a key: a new one for the same owner and rights is printed once, and the old one
    expires after the grace period, time to move its clients over."""
    import datetime as dt

    from selftune.api.errors import ApiError
    from selftune.api.keys import rotate_key

    try:
        key, old = rotate_key(_database(_settings()), prefix, dt.timedelta(minutes=grace_minutes))
    except ApiError as exc:
        _fail(exc.message)
        return
    console.print(f"{old['prefix']} of {old['user']} now expires at {old['expires_at']}")
    typer.echo(key)


def main() -> None:
    app()
