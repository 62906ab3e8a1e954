"""The documents agree with the code: the README's API table lists exactly the app's routes
(those of its OpenAPI schema), docs/configuration.md every setting with its default, every
setting a document names exists, every relative link resolves, and the files, modules and
``python -m`` commands that README.md and docs/*.md name exist.

Conventions the documents keep, so that they can be read here:

- a table's header row names it: the API table's first column is ``route``, a settings table's
  ``setting``;
- a route cell holds one or more code spans `` `METHOD /path` ``; path parameters may be named
  differently from the code's (``{ref}``, ``{id}``) and a query string may follow;
- a setting is named by its dotted name (`` `train.steps` ``), and a default cell holds the
  value as written in selftune.toml, in a code span, or no code span for no value;
- fenced code blocks are examples, not claims: they are not read.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from selftune.config import Settings, iter_settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
CONFIGURATION = ROOT / "docs" / "configuration.md"
DOCUMENTS = [README, *sorted((ROOT / "docs").glob("*.md"))]

# The methods of an OpenAPI path item; its other keys (parameters, summary, ...) are not.
HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}

FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"`([^`]+)`")
ROUTE = re.compile(r"(GET|POST|PUT|PATCH|DELETE) (/\S*)")
PARAMETER = re.compile(r"\{[^}]*\}")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^(#+)\s+(.*)$", re.MULTILINE)
REPOSITORY_PATH = re.compile(r"(?<![\w./<-])((?:bench|docs|src|tests)/[\w./-]*\w)")
RUN_MODULE = re.compile(r"-m ((?:bench|selftune)(?:\.\w+)+)")
DOTTED_NAME = re.compile(r"selftune(?:\.\w+){2,}")


def _prose(path: Path) -> str:
    """A document without its fenced code blocks."""
    return FENCE.sub("", path.read_text(encoding="utf-8"))


def _section(text: str, heading: str) -> str:
    """The text under ``heading`` (such as ``## The API``) up to the next heading of its level
    or above; empty when the document has no such heading."""
    level = len(heading) - len(heading.lstrip("#"))
    lines = text.splitlines()
    if heading not in lines:
        return ""
    start = lines.index(heading) + 1
    end = next(
        (i for i in range(start, len(lines)) if re.match(rf"#{{1,{level}}}\s", lines[i])),
        len(lines),
    )
    return "\n".join(lines[start:end])


def _tables(text: str, first_header: str) -> Iterator[list[str]]:
    """The body rows, as lists of cells, of every table whose header's first cell is
    ``first_header``. Cells split at unescaped pipes."""
    header: str | None = None
    for line in text.splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip()[1:-1])]
        if header is None:
            header = cells[0]
        elif header == first_header and not all(re.fullmatch(r":?-+:?", c) for c in cells):
            yield cells


def _route(method: str, path: str) -> tuple[str, str]:
    """A route as the comparison sees it: parameters unnamed, no query string."""
    return method, PARAMETER.sub("{}", path.split("?")[0])


def _readme_routes() -> set[tuple[str, str]]:
    api = _section(_prose(README), "## The API")
    routes = set()
    for cells in _tables(api, "route"):
        for span in CODE_SPAN.findall(cells[0]):
            match = ROUTE.fullmatch(span)
            if match:
                routes.add(_route(match[1], match[2]))
    return routes


@pytest.fixture
def app_routes(settings_env: Path) -> set[tuple[str, str]]:
    """The app's routes, read from its OpenAPI schema: every route of selftune's API, and none
    of FastAPI's own pages (/docs, /openapi.json, ...). Building the app loads no model (that
    happens in its lifespan)."""
    from selftune.api.app import create_app

    app = create_app(load_settings())
    try:
        paths: dict[str, dict[str, Any]] = app.openapi()["paths"]
    finally:
        app.state.selftune.db.dispose()
    return {
        _route(method.upper(), path)
        for path, item in paths.items()
        for method in item
        if method in HTTP_METHODS
    }


def test_readme_lists_every_route_and_no_other(app_routes: set[tuple[str, str]]) -> None:
    documented = _readme_routes()
    assert documented, "no routes found in the README's '## The API' table (its format changed?)"

    def shown(routes: set[tuple[str, str]]) -> str:
        return ", ".join(f"{method} {path}" for method, path in sorted(routes))

    problems = []
    if app_routes - documented:
        problems.append(
            "routes missing from the README's API table: " + shown(app_routes - documented)
        )
    if documented - app_routes:
        problems.append(
            "routes in the README's API table that the app does not have: "
            + shown(documented - app_routes)
        )
    assert not problems, "\n".join(problems)


@pytest.fixture
def defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The settings with nothing set: no selftune.toml, no SELFTUNE_* variables."""
    monkeypatch.setenv("SELFTUNE_CONFIG", str(tmp_path / "absent.toml"))
    for key in list(os.environ):
        if key.startswith("SELFTUNE_") and key != "SELFTUNE_CONFIG":
            monkeypatch.delenv(key)
    return load_settings()


def _documented_defaults() -> dict[str, str]:
    """docs/configuration.md's settings tables: each setting's default cell, by name."""
    found: dict[str, str] = {}
    for cells in _tables(_prose(CONFIGURATION), "setting"):
        name = CODE_SPAN.fullmatch(cells[0])
        assert name, f"docs/configuration.md: a setting cell is not one code span: {cells[0]}"
        assert name[1] not in found, f"docs/configuration.md lists {name[1]} twice"
        found[name[1]] = cells[1]
    return found


def _toml_value(cell: str) -> Any:
    """A default cell's value: the TOML value in its code span; None without one."""
    span = CODE_SPAN.search(cell)
    return None if span is None else tomllib.loads(f"value = {span[1]}")["value"]


def test_configuration_lists_every_setting_with_its_default(defaults: Settings) -> None:
    actual = {name: value for name, value, _ in iter_settings(defaults)}
    documented = _documented_defaults()
    problems = []
    if actual.keys() - documented.keys():
        missing = sorted(actual.keys() - documented.keys())
        problems.append(f"settings missing from docs/configuration.md: {', '.join(missing)}")
    if documented.keys() - actual.keys():
        unknown = sorted(documented.keys() - actual.keys())
        problems.append(f"docs/configuration.md lists settings that do not exist: {unknown}")
    for name in sorted(actual.keys() & documented.keys()):
        value = str(actual[name]) if isinstance(actual[name], Path) else actual[name]
        shown = _toml_value(documented[name])
        if shown != value:
            problems.append(
                f"docs/configuration.md gives {name} the default {documented[name]}; "
                f"the code's is {value!r}"
            )
    assert not problems, "\n".join(problems)


def test_settings_named_in_the_documents_exist(defaults: Settings) -> None:
    names = {name for name, _, _ in iter_settings(defaults)}
    sections = sorted({name.split(".")[0] for name in names if "." in name})
    dotted = re.compile(rf"({'|'.join(sections)})\.\w+")
    unknown = []
    for path in DOCUMENTS:
        text = _prose(path)
        spans = CODE_SPAN.findall(text)
        # `train.steps`, also at the start of `train.device = "auto"`
        named = [m[0] for m in map(dotted.match, spans) if m]
        # the README's table of main settings names top-level ones too
        if path == README:
            named += [s for cells in _tables(text, "setting") for s in CODE_SPAN.findall(cells[0])]
        unknown += [f"{path.relative_to(ROOT)}: {name}" for name in named if name not in names]
    assert not unknown, "settings named in the documents that do not exist:\n" + "\n".join(
        sorted(set(unknown))
    )


def _anchors(path: Path) -> set[str]:
    """The anchors GitHub gives a document's headings: lower case, punctuation dropped,
    spaces as hyphens."""
    titles = (title for _, title in HEADING.findall(_prose(path)))
    return {re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-") for title in titles}


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_resolve_inside_the_repository(document: Path) -> None:
    broken = []
    for target in LINK.findall(_prose(document)):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        resolved = (document.parent / file).resolve() if file else document
        if not resolved.is_relative_to(ROOT) or not resolved.exists():
            broken.append(f"{target}: no such file in the repository")
        elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            broken.append(f"{target}: {resolved.relative_to(ROOT)} has no heading #{anchor}")
    assert not broken, f"broken links in {document.relative_to(ROOT)}:\n" + "\n".join(broken)


def _resolves(dotted: str) -> bool:
    """Whether ``selftune.a.b`` names a module, or something in one."""
    parts = dotted.split(".")
    for split in range(len(parts), 0, -1):
        try:
            found: Any = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for attribute in parts[split:]:
            found = getattr(found, attribute, None)
        return found is not None
    return False


def _module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:  # a parent package is missing
        return False


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_named_files_and_modules_exist(document: Path) -> None:
    """Paths (``bench/gpu_check.sh``, in commands too), ``python -m`` modules and dotted names
    (``selftune.worker.handlers``) that a document gives: they move when code is reorganized."""
    text = document.read_text(encoding="utf-8")
    paths = [path for path in REPOSITORY_PATH.findall(text) if not (ROOT / path).exists()]
    modules = [name for name in RUN_MODULE.findall(text) if not _module_exists(name)]
    names = [span for span in CODE_SPAN.findall(_prose(document)) if DOTTED_NAME.fullmatch(span)]
    missing = [
        *(f"{path}: no such file or folder" for path in paths),
        *(f"python -m {name}: no such module" for name in modules),
        *(f"{name}: not found" for name in names if not _resolves(name)),
    ]
    assert not missing, f"{document.relative_to(ROOT)} names what does not exist:\n" + "\n".join(
        missing
    )
