"""Server metrics under llama.cpp's names, in Prometheus' text format, for ``GET /metrics``.

Every generation route counts here (the OpenAI routes and llama.cpp's ``/completion``), so a
dashboard built for ``llama-server --metrics`` works unchanged: llama.cpp's names
(``llamacpp:...``, counters without a ``_created`` series) and help texts. ``prometheus-client``
writes the exposition, from a registry of the app's own (tests make many apps; the client's
global one would mix them); selftune's figures from the store join it at scrape time
(api/store_metrics.py). One type differs: llama.cpp's ``n_tokens_max`` is a counter without the
``_total`` every counter has in the client, so it is a gauge here, under the same name.

Timing is measured around the engine, not inside it: the prompt phase runs from the request's
admission to its first piece of text (so it includes waiting for the engine), the prediction
phase from there to the last token. So are the engine's decode steps: one for the prompt and one
per token after the first. Both engines answer one request at a time, so each step has one busy
slot. Prompt-cache reuse is not reported by the engines, and there is no speculative decoding:
those series stay 0, as llama.cpp's do when the feature is off.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["CONTENT_TYPE", "RequestTimings", "ServerMetrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclasses.dataclass(frozen=True)
class RequestTimings:
    """One finished generation, in llama.cpp's ``timings`` terms."""

    prompt_n: int
    prompt_seconds: float
    predicted_n: int
    predicted_seconds: float

    def as_llamacpp(self) -> dict[str, float]:
        """The ``timings`` object of llama.cpp's responses (``cache_n`` is 0: no prompt cache)."""
        prompt_ms = self.prompt_seconds * 1000
        predicted_ms = self.predicted_seconds * 1000
        return {
            "cache_n": 0,
            "prompt_n": self.prompt_n,
            "prompt_ms": round(prompt_ms, 3),
            "prompt_per_token_ms": round(prompt_ms / max(self.prompt_n, 1), 3),
            "prompt_per_second": _rate(self.prompt_n, self.prompt_seconds),
            "predicted_n": self.predicted_n,
            "predicted_ms": round(predicted_ms, 3),
            "predicted_per_token_ms": round(predicted_ms / max(self.predicted_n, 1), 3),
            "predicted_per_second": _rate(self.predicted_n, self.predicted_seconds),
        }


def _rate(tokens: int, seconds: float) -> float:
    return round(tokens / seconds, 3) if seconds > 0 else 0.0


class ServerMetrics:
    """Counters and gauges of the generation routes; safe to update from any thread. A
    collector, in a registry of its own (``registry``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started_unix = int(time.time())  # when the counters started: a restart changes it
        self.prompt_tokens = 0
        self.prompt_seconds = 0.0
        self.predicted_tokens = 0
        self.predicted_seconds = 0.0
        self.n_tokens_max = 0
        self.decodes = 0  # engine steps: one for the prompt, one per token after the first
        self.processing = 0  # producing text
        self.deferred = 0  # admitted, no text yet: waiting for the engine or reading the prompt
        self.registry = CollectorRegistry()
        self.registry.register(self)

    def admitted(self) -> None:
        with self._lock:
            self.deferred += 1

    def producing(self) -> None:
        with self._lock:
            self.deferred -= 1
            self.processing += 1

    def left(self, *, produced: bool) -> None:
        with self._lock:
            if produced:
                self.processing -= 1
            else:
                self.deferred -= 1

    def busy(self) -> bool:
        """Whether a request is being answered or waits for the engine (the one slot is taken)."""
        with self._lock:
            return self.processing + self.deferred > 0

    def count(self, timings: RequestTimings) -> None:
        with self._lock:
            self.decodes += 1 + max(timings.predicted_n - 1, 0)
            self.prompt_tokens += timings.prompt_n
            self.prompt_seconds += timings.prompt_seconds
            self.predicted_tokens += timings.predicted_n
            self.predicted_seconds += timings.predicted_seconds
            self.n_tokens_max = max(self.n_tokens_max, timings.prompt_n + timings.predicted_n)

    def collect(self) -> Iterator[Metric]:
        """llama.cpp's series, with its names and help texts (the registry calls this)."""
        with self._lock:
            counters = [
                ("prompt_tokens_total", "Number of prompt tokens processed.", self.prompt_tokens),
                ("prompt_tokens_cached_total", "Number of prompt tokens reused from the cache", 0),
                ("prompt_seconds_total", "Prompt process time in seconds.", self.prompt_seconds),
                (
                    "tokens_predicted_total",
                    "Number of generation tokens processed.",
                    self.predicted_tokens,
                ),
                (
                    "tokens_predicted_seconds_total",
                    "Predict process time in seconds.",
                    self.predicted_seconds,
                ),
                ("n_decode_total", "Total number of llama_decode() calls", self.decodes),
                (
                    "spec_decode_num_draft_tokens_total",
                    "Speculative: Total draft tokens generated",
                    0,
                ),
                (
                    "spec_decode_num_accepted_tokens_total",
                    "Speculative: Total draft tokens accepted by the target model",
                    0,
                ),
                (
                    "spec_decode_num_drafts_total",
                    "Speculative: Total speculative decoding verification steps",
                    0,
                ),
            ]
            gauges = [
                # A counter in llama.cpp, but the client names every counter ..._total: a gauge
                # keeps the name (a maximum is a gauge's kind of figure anyway).
                ("n_tokens_max", "Largest observed n_tokens (prompt + predicted).",
                 self.n_tokens_max),
                ("prompt_tokens_seconds", "Average prompt throughput in tokens/s.",
                 _rate(self.prompt_tokens, self.prompt_seconds)),
                ("predicted_tokens_seconds", "Average generation throughput in tokens/s.",
                 _rate(self.predicted_tokens, self.predicted_seconds)),
                ("requests_processing", "Number of requests processing.", self.processing),
                ("requests_deferred", "Number of requests deferred.", self.deferred),
                # One request per engine step: 1 once anything was decoded (llama.cpp: busy
                # slots summed over its decode calls, divided by their number).
                ("n_busy_slots_per_decode", "Average number of busy slots per llama_decode() call",
                 1.0 if self.decodes else 0.0),
            ]  # fmt: skip
        for name, help_text, value in counters:
            yield CounterMetricFamily(f"llamacpp:{name}", help_text, value=value)
        for name, help_text, value in gauges:
            yield GaugeMetricFamily(f"llamacpp:{name}", help_text, value=value)

    def render(self, *more: Collector) -> str:
        """The Prometheus text exposition: this app's registry (llama.cpp's series), then the
        series of ``more``, collected now (selftune's own, read from the store per scrape)."""
        return b"".join(generate_latest(c) for c in (self.registry, *more)).decode()
