"""Serving speed: selftune's llama.cpp engine and HTTP server against bare llama-cpp-python.

Run with ``make bench`` (or ``python -m bench.serving``). On the GGUF the server serves for the
default model, with the same prompts, the same thread count and greedy decoding, interleaved
prompt by prompt so that both sides see the same (shared, noisy) machine:

1. bare ``llama_cpp.Llama`` (its defaults, ``create_completion(stream=True)``) against
   ``LlamaCppEngine.stream``, without an adapter and with one (a random rank-8 LoRA on every
   linear layer of the default model, exported to GGUF as a version would be): time to first
   token and decode tokens/s, and their ratio (target: at least 0.95 of bare).
2. The fixed overhead of a request through the HTTP server (``POST /v1/completions``,
   streamed, recorded in the store) over a direct engine call with the same prompt, one token
   long, on the same engine object in this process (target: under 5 ms). The client is the
   standard library's ``http.client`` on a kept-alive connection: it runs in this process too,
   and the least client work keeps the figure the server's (httpx adds about 1.5 ms here).
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import json
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from bench.scenario import free_port
from selftune.config import load_settings
from selftune.engines.base import AdapterRef, Engine, GenerationParams
from selftune.engines.factory import build_engine
from selftune.engines.llamacpp_engine import LlamaCppEngine

QUESTIONS = [
    "Write a short story about a lighthouse keeper.",
    "Explain how a bicycle stays upright.",
    "Describe the water cycle for a child.",
    "What should I pack for a week of hiking?",
    "Give me a recipe for a simple tomato soup.",
    "Why is the sky blue?",
    "Summarize the plot of a detective novel you invent.",
    "List some tips for learning a new language.",
]
TOKENS = 64
ROUNDS = 3


def _random_adapter(hf_dir: Path, folder: Path) -> AdapterRef:
    """A rank-8 LoRA with random non-zero factors on every linear layer, as PEFT + GGUF."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    from selftune.export.gguf_adapter import export_gguf_adapter

    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32),
        LoraConfig(r=8, lora_alpha=16, target_modules=targets),
    )
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.01)
    path = folder / "v-bench"
    model.save_pretrained(str(path))
    export_gguf_adapter(path, AutoConfig.from_pretrained(hf_dir), path / "adapter.gguf")
    return AdapterRef(-1, "v-bench", path)


def _timed(chunks: Iterator[Any], count: Callable[[Any], int]) -> tuple[float, float]:
    """(seconds to the first token, decode tokens/s after it) of a stream of chunks."""
    start = time.perf_counter()
    first = None
    tokens = 0
    for chunk in chunks:
        n = count(chunk)
        if n and first is None:
            first = time.perf_counter()
        tokens += n
    end = time.perf_counter()
    assert first is not None, "nothing was generated"
    return first - start, (tokens - 1) / max(end - first, 1e-9)


def _bare_stream(llm: Any, prompt: str) -> Iterator[Any]:
    return llm.create_completion(prompt, max_tokens=TOKENS, temperature=0.0, stream=True)


def _compare_engines(engine: LlamaCppEngine, adapter: AdapterRef | None) -> dict[str, float]:
    import llama_cpp

    llm = llama_cpp.Llama(
        model_path=str(engine.gguf_path),
        lora_path=str(adapter.path / "adapter.gguf") if adapter else None,
        n_ctx=engine.context_length,
        n_threads=engine.threads,
        n_threads_batch=engine.threads,
        verbose=False,
    )
    params = GenerationParams(max_tokens=TOKENS, temperature=0.0)
    prompts = [engine.render_chat([{"role": "user", "content": q}]) for q in QUESTIONS]
    ours: list[tuple[float, float]] = []
    bare: list[tuple[float, float]] = []
    try:
        # Each side once on a throwaway prompt first: the first call allocates buffers.
        # Bare llama.cpp runs on the engine's compute thread too: ggml's OpenMP team belongs
        # to the calling thread, and two teams on two cores would spin against each other.
        list(engine.stream("Hello", GenerationParams(max_tokens=2), adapter))
        engine.on_compute_thread(lambda: list(_bare_stream(llm, "Hello")))
        for _ in range(ROUNDS):
            for prompt in prompts:
                bare.append(engine.on_compute_thread(functools.partial(_bare_timed, llm, prompt)))
                ours.append(_timed(engine.stream(prompt, params, adapter), _ChunkCounter()))
    finally:
        llm.close()
    return {
        "bare_ttft_ms": 1000 * statistics.median(t for t, _ in bare),
        "ours_ttft_ms": 1000 * statistics.median(t for t, _ in ours),
        "bare_tps": statistics.median(r for _, r in bare),
        "ours_tps": statistics.median(r for _, r in ours),
    }


def _bare_timed(llm: Any, prompt: str) -> tuple[float, float]:
    return _timed(_bare_stream(llm, prompt), _bare_tokens)


def _bare_tokens(chunk: dict[str, Any]) -> int:
    # llama-cpp-python yields one chunk per token (text may be empty mid-character).
    return 1 if chunk["choices"][0]["finish_reason"] is None else 0


class _ChunkCounter:
    """Chunks carry a running count of generated tokens; turn it into per-chunk increments."""

    def __init__(self) -> None:
        self.seen = 0

    def __call__(self, chunk: Any) -> int:
        new = chunk.completion_tokens - self.seen
        self.seen = chunk.completion_tokens
        return new


@contextlib.contextmanager
def served_in_process(
    engine: Engine, data_dir: Path, **sections: dict[str, Any]
) -> Iterator[httpx.Client]:
    """The real app on a loopback port in this process, serving ``engine``, with settings
    ``sections`` (``memory={"enabled": True}``) over the defaults."""
    import uvicorn

    from selftune.api.app import create_app

    serve = {"start_worker": False, **sections.pop("serve", {})}
    settings = load_settings(data_dir=data_dir, serve=serve, **sections)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings, engine), port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120)
    deadline = time.monotonic() + 60
    while True:
        with contextlib.suppress(httpx.TransportError):
            if client.get("/health").status_code == 200:
                break
        if time.monotonic() > deadline:
            raise TimeoutError("the benchmark server did not start")
        time.sleep(0.1)
    try:
        yield client
    finally:
        client.close()
        server.should_exit = True
        thread.join(timeout=30)


def _http_overhead(engine: LlamaCppEngine, data_dir: Path) -> tuple[float, float, float]:
    """Median seconds (direct engine, through HTTP, through HTTP less direct) for the same
    one-token answers: the fixed cost of a request (per-token costs show in the decode rates
    above). The overhead is the median of each pair's difference, the two calls made one after
    the other: on a shared machine whose speed drifts over the run, that is steadier than the
    difference of the two medians.

    Before each measured call a one-token answer to another prompt leaves the KV cache in the
    same state (only the shared system prompt reusable), so neither side profits from the
    other having just evaluated its prompt.
    """
    params = GenerationParams(max_tokens=1, temperature=0.0)
    reset = engine.render_chat([{"role": "user", "content": "Hi"}])

    def level_cache() -> None:
        list(engine.stream(reset, GenerationParams(max_tokens=1, temperature=0.0), None))

    direct: list[float] = []
    served: list[float] = []
    with served_in_process(engine, data_dir) as client:
        connection = http.client.HTTPConnection("127.0.0.1", client.base_url.port)
        body = {"model": "selftune", "max_tokens": 1, "temperature": 0, "stream": True}
        for _ in range(ROUNDS * 2):
            for question in QUESTIONS:
                prompt = engine.render_chat([{"role": "user", "content": question}])
                level_cache()
                start = time.perf_counter()
                list(engine.stream(prompt, params, None))
                direct.append(time.perf_counter() - start)
                level_cache()
                start = time.perf_counter()
                connection.request(
                    "POST",
                    "/v1/completions",
                    body=json.dumps({**body, "prompt": prompt}),
                    headers={"Content-Type": "application/json"},
                )
                response = connection.getresponse()
                answer = response.read()
                served.append(time.perf_counter() - start)
                if response.status != 200 or not answer.endswith(b"data: [DONE]\n\n"):
                    raise RuntimeError(f"the server answered {response.status}: {answer[:300]!r}")
        connection.close()
    differences = [s - d for d, s in zip(direct, served, strict=True)]
    return statistics.median(direct), statistics.median(served), statistics.median(differences)


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="selftune-bench-serving-") as tmp:
        folder = Path(tmp)
        settings = load_settings(data_dir=folder / "data")
        engine = build_engine(settings)
        if not isinstance(engine, LlamaCppEngine):
            print("serving benchmark: the configured base is not served by llama.cpp; skipped")
            return 0
        adapter = _random_adapter(engine.hf_dir, folder)
        print(f"serving speed ({engine.gguf_path.name}, {engine.threads} threads, greedy,")
        print(f"  {len(QUESTIONS)} prompts x {ROUNDS} rounds, {TOKENS} tokens, medians):")
        ok = True
        for label, chosen in (("no adapter", None), ("with adapter", adapter)):
            f = _compare_engines(engine, chosen)
            ratio = f["ours_tps"] / f["bare_tps"]
            ok &= ratio >= 0.95
            print(
                f"  {label:13s} decode {f['ours_tps']:6.1f} vs bare {f['bare_tps']:6.1f} tok/s "
                f"= {ratio:.2f}x   first token {f['ours_ttft_ms']:6.1f} vs "
                f"{f['bare_ttft_ms']:6.1f} ms"
            )
        direct, served, overhead = _http_overhead(engine, folder / "data")
        overhead_ms = 1000 * overhead
        ok &= overhead_ms < 5
        print(
            f"  HTTP + recording overhead per request: {overhead_ms:.1f} ms "
            f"(engine {1000 * direct:.1f} ms, through POST /v1/completions {1000 * served:.1f} ms)"
        )
        print(f"  targets (>= 0.95x bare, < 5 ms overhead): {'met' if ok else 'NOT met'}")
        engine.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
