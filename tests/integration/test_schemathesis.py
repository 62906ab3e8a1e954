"""Schema fuzzing with schemathesis: every operation of ``/openapi.json`` is called with cases
generated from its own schema, valid ones and invalid ones, against the tiny model on the
llama.cpp engine (a real uvicorn server). No answer may be a 5xx, and every answer must match
the schema the operation declares for its status.

A few examples per operation and mode in ``make test`` (deterministic);
``SELFTUNE_FUZZ_EXAMPLES=N`` runs N random ones (``make bench`` runs bench/fuzz.py, which sets
it). Every operation is tried, then all failures are reported together.
"""

from __future__ import annotations

import os
from typing import Any

import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import response_schema_conformance

from tests.integration.conftest import LiveServer

EXAMPLES = int(os.environ.get("SELFTUNE_FUZZ_EXAMPLES", "0"))
CHECKS = [not_a_server_error, response_schema_conformance]


def _settings() -> settings:
    common: dict[str, Any] = {
        "deadline": None,
        "database": None,
        "suppress_health_check": list(HealthCheck),
    }
    if EXAMPLES:
        return settings(max_examples=EXAMPLES, **common)
    # No shrinking in make test: a failure is reported as found, and the run stays short.
    phases = [Phase.explicit, Phase.generate]
    return settings(max_examples=4, derandomize=True, phases=phases, **common)


def test_every_operation_answers_without_5xx_and_as_documented(openai_server: LiveServer) -> None:
    # No operation is left out. The ones that start work finish it at once on this server:
    # POST /api/train only queues a job (no worker runs here), load_lora_adapter refuses a
    # generated path (none holds a PEFT adapter), and generation stops at the 256-token context.
    schema = schemathesis.openapi.from_dict(openai_server.app.openapi())
    failures: list[str] = []
    session = requests.Session()
    operations = 0
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result.err()
        operation = result.ok()
        operations += 1
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @_settings()
            @given(case=operation.as_strategy(generation_mode=mode))
            def run(case: Any) -> None:
                case.call_and_validate(
                    base_url=openai_server.url, session=session, checks=CHECKS, timeout=60
                )

            try:
                run()
            except Unsatisfiable:  # no parameters, hence no invalid ones: nothing to negate
                assert mode is GenerationMode.NEGATIVE, operation.label
            except (Exception, BaseExceptionGroup) as exc:  # collected, reported below
                failures.append(f"{operation.label} ({mode.value}): {exc}"[:3000])
    session.close()
    assert operations > 40, operations  # the schema is all there
    assert not failures, f"{len(failures)} failing operations:\n\n" + "\n\n".join(failures)


def test_apply_template_refuses_what_chat_completions_refuses(openai_server: LiveServer) -> None:
    # Found by the test above: a non-text content part reached the renderer and answered 500.
    part = {"type": "image_url", "image_url": {"url": "data:,"}}
    for message in ({"role": "user", "content": [part]}, {"role": "user", "content": None}):
        response = requests.post(
            f"{openai_server.url}/apply-template", json={"messages": [message]}, timeout=30
        )
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == "messages"
