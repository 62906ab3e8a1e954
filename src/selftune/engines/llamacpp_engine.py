"""Inference with llama.cpp (through llama-cpp-python's bindings of its C API).

The base GGUF is loaded once. A version is a GGUF LoRA adapter applied per request with
``llama_set_adapters_lora``, so switching versions never reloads the base.

Every llama.cpp computation runs on one long-lived thread of the engine, in arrival order:
llama.cpp contexts are not thread-safe, and on a CPU two concurrent decodes only slow each
other down. The single thread matters for speed too: ggml parallelizes with OpenMP, whose
thread team belongs to the calling thread and keeps spinning for a while after each call, so a
fresh calling thread per request leaves the previous team spinning against the new one
(measured on 2 cores: 8 tokens in 133 ms from one thread, 268 ms from a new thread per request).
A request sets its adapter when its turn comes and keeps it to its last token, so a promotion
never changes an answer half-way.

The KV cache of the previous request is reused for the longest common prompt prefix when the
adapter is the same (a chat's history, a shared system prompt), as llama.cpp's server does.

Chat templates are rendered with the Hugging Face tokenizer of the same base, the one training
uses, so serving and training see the same prompt text; llama.cpp tokenizes it.
"""

from __future__ import annotations

import codecs
import contextlib
import ctypes
import dataclasses
import logging
import math
import os
import queue
import threading
from collections import OrderedDict
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from selftune.artifacts import GGUF_ADAPTER
from selftune.data.tokenize import LabelledTokens, answer_positions
from selftune.engines.base import (
    STREAM_END,
    AdapterRef,
    Chunk,
    EngineError,
    GenerationParams,
    InvalidRequest,
    Prompt,
    TokenLogprob,
)
from selftune.engines.llamacpp_lib import gguf_weights, llama_cpp_module
from selftune.engines.stops import StopMatcher
from selftune.models.base import load_tokenizer
from selftune.models.templates import render_chat, resolve_template

__all__ = ["LlamaCppEngine", "gguf_adapter_path"]

log = logging.getLogger(__name__)

# Adapters kept loaded; older ones are loaded from disk again if a request names them.
_MAX_LOADED_ADAPTERS = 8
_DEFAULT_SEED = 0xFFFFFFFF  # LLAMA_DEFAULT_SEED: a random seed per sampler
# Sequences a context decodes together (evaluation's greedy answers); serving uses one.
_SEQUENCES = 8
T = TypeVar("T")


def gguf_adapter_path(adapter: AdapterRef) -> Path:
    return adapter.path / GGUF_ADAPTER


class LlamaCppEngine:
    name = "llama.cpp"

    def __init__(
        self,
        gguf_path: Path,
        tokenizer_dir: Path,
        *,
        chat_template: str = "",
        context_length: int = 2048,
        threads: int = 0,
        gpu_layers: int = -1,
        f32_kv_cache: bool = False,
        own_thread: bool = True,
    ) -> None:
        self.lib = llama_cpp_module()
        self.gpu_layers = gpu_layers
        self.f32_kv_cache = f32_kv_cache  # exact parity checks; f16 (the default) serves
        self.gguf_path = gguf_path
        self.hf_dir = tokenizer_dir
        self.tokenizer = load_tokenizer(tokenizer_dir)
        self.default_template = resolve_template(chat_template, self.tokenizer.chat_template)
        self.threads = threads or len(os.sched_getaffinity(0))
        self._model = self._load_model(gguf_path)
        self._vocab = self.lib.llama_model_get_vocab(self._model)
        self.vocab = self._vocab  # llama.cpp's vocabulary handle, for samplers built outside
        self.n_vocab = int(self.lib.llama_vocab_n_tokens(self._vocab))
        self._eog_tokens: list[int] | None = None
        self.context_length = min(
            context_length, int(self.lib.llama_model_n_ctx_train(self._model))
        )
        # The server gives llama.cpp a thread of its own. The training worker calls it from the
        # thread that trains with PyTorch instead: both use the same libgomp, whose OpenMP team
        # belongs to the calling thread, and two teams in one process slowed training 1.7x and
        # evaluation 1.8x on 2 cores.
        self._compute: Executor = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="llama.cpp")
            if own_thread
            else _CallerThread()
        )
        self._ctx = self.on_compute_thread(
            lambda: _Context(self, n_ctx=self.context_length, embeddings=False)
        )
        self._embed_ctx: _Context | None = None
        self._adapters: OrderedDict[Path, Any] = OrderedDict()

    def on_compute_thread(self, work: Callable[[], T]) -> T:
        """Run ``work`` on the engine's llama.cpp thread, after what is queued, and wait."""
        return self._compute.submit(work).result()

    def _load_model(self, path: Path) -> Any:
        lib = self.lib
        params = lib.llama_model_default_params()
        # llama.cpp's extra CPU buffer types (AMX, weight repacking) crash (SIGSEGV) on Q4_1
        # and Q8_0 weights in llama-cpp-python 0.3.36 on AVX-512/AMX machines once a batch has
        # two or more tokens; without them quantized weights stay in their file layout and
        # compute correctly. Unquantized weights use them safely, and they make the first
        # token 10-15% faster.
        params.use_extra_bufts = not gguf_weights(path).quantized
        params.n_gpu_layers = self.gpu_layers
        model = lib.llama_model_load_from_file(str(path).encode(), params)
        if not model:
            raise EngineError(f"llama.cpp could not load {path}; is it a valid GGUF model?")
        return model

    def close(self) -> None:
        self.on_compute_thread(self._free)
        self._compute.shutdown()

    def _free(self) -> None:
        for ctx in (self._ctx, self._embed_ctx):
            if ctx is not None:
                ctx.close()
        self._adapters.clear()  # freed with the model
        if self._model:
            self.lib.llama_model_free(self._model)
            self._model = None

    # --- prompts ---------------------------------------------------------------------------
    def count_tokens(self, text: str) -> int:
        return len(self.tokenize(text))

    def tokenize(self, text: str, *, add_special: bool = False) -> list[int]:
        data = text.encode("utf-8")
        room = len(data) + 8
        for _ in range(2):
            buffer = (self.lib.llama_token * room)()
            n = self.lib.llama_tokenize(
                self._vocab, data, len(data), buffer, room, add_special, True
            )
            if n >= 0:
                return list(buffer[:n])
            room = -n
        raise EngineError("llama.cpp could not tokenize the text")

    def check_tokens(self, tokens: Sequence[int]) -> None:
        """Refuse token ids outside the vocabulary before they reach llama.cpp, which reads
        memory beyond its tables for them (and aborts the process) instead of failing."""
        for token in tokens:
            if not 0 <= token < self.n_vocab:
                raise InvalidRequest(
                    f"token id {token} is not in this model's vocabulary (0-{self.n_vocab - 1})"
                )

    def detokenize(self, tokens: Sequence[int]) -> str:
        self.check_tokens(tokens)
        ids = (self.lib.llama_token * len(tokens))(*tokens)
        room = max(64, 8 * len(tokens))
        for _ in range(2):
            buffer = ctypes.create_string_buffer(room)
            n = self.lib.llama_detokenize(self._vocab, ids, len(tokens), buffer, room, False, True)
            if n >= 0:
                return buffer.raw[:n].decode("utf-8", errors="replace")
            room = -n
        raise EngineError("llama.cpp could not detokenize the tokens")

    def piece(self, token: int) -> bytes:
        """The bytes of one token as generated text (special tokens render as nothing)."""
        buffer = ctypes.create_string_buffer(64)
        n = self.lib.llama_token_to_piece(self._vocab, token, buffer, 64, 0, False)
        if n < 0:
            buffer = ctypes.create_string_buffer(-n)
            n = self.lib.llama_token_to_piece(self._vocab, token, buffer, -n, 0, False)
        return buffer.raw[:n]

    def is_end_of_generation(self, token: int) -> bool:
        return bool(self.lib.llama_vocab_is_eog(self._vocab, token))

    def render_chat(self, messages: list[dict[str, str]], template: str | None = None) -> str:
        chosen = resolve_template(template, None) if template else self.default_template
        return render_chat(self.tokenizer, messages, chosen, add_generation_prompt=True)

    # --- adapters --------------------------------------------------------------------------
    def preload_adapter(self, adapter: AdapterRef) -> None:
        self.on_compute_thread(lambda: self._adapter_handle(adapter))

    def _adapter_handle(self, adapter: AdapterRef) -> Any:
        """The loaded llama.cpp adapter for ``adapter``; loads it on first use."""
        path = gguf_adapter_path(adapter)
        handle = self._adapters.get(path)
        if handle is None:
            if not path.is_file():
                raise EngineError(
                    f"version {adapter.name} has no GGUF adapter at {path}; export it with "
                    "'selftune export' or serve with engine = 'transformers'"
                )
            handle = self.lib.llama_adapter_lora_init(self._model, str(path).encode())
            if not handle:
                raise EngineError(f"llama.cpp refused the adapter {path} (wrong base model?)")
            self._adapters[path] = handle
            self._evict()
        self._adapters.move_to_end(path)
        return handle

    def _evict(self) -> None:
        while len(self._adapters) > _MAX_LOADED_ADAPTERS:
            _, oldest = self._adapters.popitem(last=False)
            for ctx in (self._ctx, self._embed_ctx):
                if ctx is not None and ctx.adapter_handle == oldest:
                    ctx.set_adapter(None, 1.0)
            self.lib.llama_adapter_lora_free(oldest)

    def _use(self, ctx: _Context, adapter: AdapterRef | None) -> None:
        handle = self._adapter_handle(adapter) if adapter is not None else None
        ctx.set_adapter(handle, adapter.scale if adapter is not None else 1.0)

    # --- generation ------------------------------------------------------------------------
    def stream(
        self, prompt: Prompt, params: GenerationParams, adapter: AdapterRef | None
    ) -> Iterator[Chunk]:
        chunks: queue.SimpleQueue[Any] = queue.SimpleQueue()
        cancel = self.push_stream(prompt, params, adapter, chunks.put)
        try:
            while (item := chunks.get()) is not STREAM_END:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            cancel()

    def pushes_from_own_thread(self) -> bool:
        return isinstance(self._compute, ThreadPoolExecutor)

    def push_stream(
        self,
        prompt: Prompt,
        params: GenerationParams,
        adapter: AdapterRef | None,
        emit: Callable[[Any], None],
    ) -> Callable[[], None]:
        ids = self.tokenize(prompt) if isinstance(prompt, str) else list(prompt)
        self.check_tokens(ids)
        if not ids:
            ids = [int(self.lib.llama_vocab_bos(self._vocab))]
        self.check_params(params)
        if len(ids) + params.max_tokens > self.context_length:
            raise EngineError(
                f"{len(ids)} prompt tokens + {params.max_tokens} to generate exceed the "
                f"context of {self.context_length}"
            )
        cancelled = threading.Event()

        def produce() -> None:
            if cancelled.is_set():  # its client left while it waited: not even the prompt
                emit(STREAM_END)
                return
            try:
                self._use(self._ctx, adapter)
                with contextlib.closing(self._generate(ids, params)) as generation:
                    for chunk in generation:
                        emit(chunk)
                        if cancelled.is_set():  # the client left: free the thread
                            break
            except BaseException as exc:  # handed to the caller's thread
                emit(exc)
            finally:
                emit(STREAM_END)

        self._compute.submit(produce)
        return cancelled.set

    def _generate(self, ids: list[int], params: GenerationParams) -> Generator[Chunk, None, None]:
        ctx = self._ctx
        ctx.prefill(ids)
        sampler = _Sampler(self, params, ids)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        matcher = StopMatcher(params.stop)
        text, n_generated, finish = "", 0, "length"
        pending: list[TokenLogprob] = []  # logprobs of tokens not yet handed out in a chunk
        try:
            while n_generated < params.max_tokens:
                token = sampler.sample(ctx.ctx)
                if self.is_end_of_generation(token) and not params.ignore_eos:
                    finish = "stop"
                    break
                n_generated += 1
                piece_bytes = self.piece(token)
                if params.top_logprobs is not None:
                    pending.append(self._logprob(ctx.ctx, token, piece_bytes, params))
                text += decoder.decode(piece_bytes)
                piece, stopped = matcher.feed(text)
                if piece:
                    yield Chunk(piece, completion_tokens=n_generated, logprobs=tuple(pending))
                    pending.clear()
                if stopped:
                    finish = "stop"
                    break
                if n_generated < params.max_tokens:
                    ctx.append(token)
        finally:
            sampler.close()
        text += decoder.decode(b"", final=True)
        if finish == "length":
            matcher.feed(text)
        yield Chunk(
            matcher.flush(),
            finish_reason=finish,
            completion_tokens=n_generated,
            logprobs=tuple(pending),
        )

    def _logprob(
        self, ctx: Any, token: int, piece: bytes, params: GenerationParams
    ) -> TokenLogprob:
        """The log-probability of ``token`` under the model's next-token distribution (with
        the request's logit bias), and the ``params.top_logprobs`` likeliest tokens."""
        pointer = self.lib.llama_get_logits_ith(ctx, -1)
        logits = np.ctypeslib.as_array(pointer, shape=(self.n_vocab,)).astype(np.float64)
        for biased, bias in params.logit_bias:
            logits[biased] += bias
        shifted = logits - logits.max()
        log_probs = shifted - np.log(np.exp(shifted).sum())
        top: tuple[tuple[int, bytes, float], ...] = ()
        n = params.top_logprobs or 0
        if n:
            best = np.argpartition(-log_probs, n)[:n]
            best = best[np.argsort(-log_probs[best])]
            top = tuple((int(t), self.piece(int(t)), float(log_probs[t])) for t in best)
        return TokenLogprob(token, piece, float(log_probs[token]), top)

    def end_of_generation_tokens(self) -> list[int]:
        """Every token that ends a generation (end of turn, end of text, ...), found once."""
        if self._eog_tokens is None:
            self._eog_tokens = [t for t in range(self.n_vocab) if self.is_end_of_generation(t)]
        return self._eog_tokens

    def check_params(self, params: GenerationParams) -> None:
        """Refuse what would reach llama.cpp unchecked: token ids outside the vocabulary, a
        grammar that does not parse. Raises :class:`InvalidRequest`."""
        for token, bias in params.logit_bias:
            if not 0 <= token < self.n_vocab:
                raise InvalidRequest(
                    f"logit_bias names token {token}; this model's tokens are 0-{self.n_vocab - 1}"
                )
            if not math.isfinite(bias) and bias != -math.inf:
                raise InvalidRequest(f"logit_bias for token {token} must be a finite number")
        if params.top_logprobs is not None and not 0 <= params.top_logprobs <= self.n_vocab:
            raise InvalidRequest(f"top_logprobs must be between 0 and {self.n_vocab}")
        if params.grammar is not None:
            grammar = self.lib.llama_sampler_init_grammar(
                self._vocab, params.grammar.encode(), b"root"
            )
            if not grammar:
                raise InvalidRequest(
                    "the grammar does not parse as GBNF with a 'root' rule (see llama.cpp's "
                    "grammars/README.md)"
                )
            self.lib.llama_sampler_free(grammar)

    # --- evaluation ------------------------------------------------------------------------
    def greedy_batch(
        self,
        prompts: list[str],
        max_tokens: int,
        adapter: AdapterRef | None,
        batch: int = _SEQUENCES,
        until: Sequence[Callable[[str], bool]] | None = None,
    ) -> list[str]:
        """Greedy answers to many prompts, up to ``batch`` decoded together as sequences of one
        batch (one pass over the weights per token for all of them); an answer ends early once
        its ``until`` test holds.

        Decoding together is what makes evaluation cheap on a CPU, where a step of one
        sequence costs nearly as much as a step of several: on 2 cores, the default model
        answered the 52 probe prompts (32 tokens) in 9.0 s together against 22.3 s one after
        another, and a gate's 8 retention questions in 0.84 s against 1.86 s. The answers are
        the ones served, one at a time, but for near-ties that rounding decides, since a
        batch's arithmetic runs in another order: 1 of those 52 went on past the end of turn
        that one at a time chose.
        """
        tests = list(until) if until is not None else [None] * len(prompts)
        if len(tests) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(tests)} 'until' tests")
        bos = int(self.lib.llama_vocab_bos(self._vocab))
        encoded = [self.tokenize(prompt) or [bos] for prompt in prompts]
        groups = _fitting_groups(
            [len(ids) + max_tokens for ids in encoded], min(batch, _SEQUENCES), self.context_length
        )

        def answer_all() -> list[str]:
            self._use(self._ctx, adapter)
            answers: list[str] = []
            for group in groups:
                answers += self._greedy_together(encoded[group], max_tokens, tests[group])
            return answers

        return self.on_compute_thread(answer_all)

    def _greedy_together(
        self,
        prompts: list[list[int]],
        max_tokens: int,
        tests: Sequence[Callable[[str], bool] | None],
    ) -> list[str]:
        """Greedy answers to ``prompts``, each its own sequence in one llama.cpp batch."""
        ctx = self._ctx
        answers = [_Answer(len(ids)) for ids in prompts]
        try:
            logits = ctx.prefill_sequences(prompts)
            live = list(range(len(prompts))) if max_tokens > 0 else []
            while live:
                picked = logits.argmax(axis=1)  # greedy: llama.cpp's greedy sampler is argmax
                still = []
                for seq, token in zip(live, picked.tolist(), strict=True):
                    answer, test = answers[seq], tests[seq]
                    if self.is_end_of_generation(token):
                        continue
                    answer.add(token, self.piece(token))
                    if len(answer.tokens) < max_tokens and not (test and test(answer.text)):
                        still.append(seq)
                live = still
                if live:
                    logits = ctx.decode_next([(seq, *answers[seq].next_token) for seq in live])
        finally:
            ctx.end_sequences(len(prompts))
        return [answer.finish() for answer in answers]

    def answer_nll(self, examples: Sequence[LabelledTokens], adapter: AdapterRef | None) -> float:
        """Mean loss per answer token of tokenized examples (``input_ids``/``labels``)."""
        if not examples:
            return float("nan")
        return self.on_compute_thread(lambda: self._answer_nll(examples, adapter))

    def _answer_nll(self, examples: Sequence[LabelledTokens], adapter: AdapterRef | None) -> float:
        total, count = 0.0, 0
        for ids, positions, logits in self._answer_logits(examples, adapter):
            if not positions:
                continue
            targets = np.array([ids[t + 1] for t in positions])
            shifted = logits - logits.max(axis=1, keepdims=True)
            log_norm = np.log(np.exp(shifted).sum(axis=1))
            picked = shifted[np.arange(len(positions)), targets]
            total += float((log_norm - picked).sum())
            count += len(positions)
        return total / max(count, 1)

    def answer_margins(
        self, examples: Sequence[LabelledTokens], adapter: AdapterRef | None
    ) -> list[float]:
        def margins() -> list[float]:
            found = []
            for _, positions, logits in self._answer_logits(examples, adapter):
                if not positions:
                    found.append(float("inf"))
                    continue
                top2 = np.sort(logits, axis=1)[:, -2:]
                found.append(float((top2[:, 1] - top2[:, 0]).min()))
            return found

        return self.on_compute_thread(margins)

    def _answer_logits(
        self, examples: Sequence[LabelledTokens], adapter: AdapterRef | None
    ) -> Iterator[tuple[list[int], list[int], np.ndarray]]:
        """Each example's ids, answer positions and the logits after them, up to _SEQUENCES
        examples evaluated together as sequences of one batch (compute thread only).

        Together, as for greedy answers, because a pass over the weights for several sequences
        costs less than a pass for each: the default model scored the 40 replay chats of a
        gate in 2.1 s this way against 2.7 s one by one (2 cores, idle); losses agree to 1e-4.
        """
        self._use(self._ctx, adapter)
        items = [(list(e.input_ids), answer_positions(e)) for e in examples]
        scored = [i for i, (_, positions) in enumerate(items) if positions]
        sizes = [items[i][1][-1] + 1 for i in scored]  # cells: up to the last scored position
        logits: dict[int, np.ndarray] = {}
        for group in _fitting_groups(sizes, _SEQUENCES, self.context_length):
            members = scored[group]
            found = self._ctx.logits_together(
                [items[i][0] for i in members], [items[i][1] for i in members]
            )
            logits.update(zip(members, found, strict=True))
        empty = np.empty((0, self.n_vocab), dtype=np.float32)
        for i, (ids, positions) in enumerate(items):
            yield ids, positions, logits.get(i, empty)

    def next_token_logits(self, ids: list[int], adapter: AdapterRef | None) -> np.ndarray:
        """Logits after every position of ``ids``: (len(ids), n_vocab); for parity checks."""

        def logits() -> np.ndarray:
            self._use(self._ctx, adapter)
            return self._ctx.logits_at(ids, list(range(len(ids))))

        return self.on_compute_thread(logits)

    # --- embeddings ------------------------------------------------------------------------
    def embed(self, texts: Sequence[str], adapter: AdapterRef | None = None) -> list[list[float]]:
        encoded = []
        for text in texts:
            ids = self.tokenize(text) or [int(self.lib.llama_vocab_bos(self._vocab))]
            if len(ids) > self.context_length:
                raise EngineError(
                    f"the text has {len(ids)} tokens; the embedding context holds "
                    f"{self.context_length}"
                )
            encoded.append(ids)
        return self.on_compute_thread(lambda: self._embed(encoded, adapter))

    def _embed(self, encoded: list[list[int]], adapter: AdapterRef | None) -> list[list[float]]:
        if self._embed_ctx is None:  # made on first use: most servers never embed
            self._embed_ctx = _Context(self, n_ctx=self.context_length, embeddings=True)
        self._use(self._embed_ctx, adapter)
        return [self._embed_ctx.pooled_embedding(ids) for ids in encoded]


def _fitting_groups(sizes: list[int], most: int, room: int) -> list[slice]:
    """Consecutive groups of at most ``most`` items whose ``sizes`` (cells of the KV cache)
    add up to at most ``room``; an item larger than ``room`` alone in its group."""
    groups: list[slice] = []
    start, used = 0, 0
    for i, size in enumerate(sizes):
        if i > start and (i - start == most or used + size > room):
            groups.append(slice(start, i))
            start, used = i, 0
        used += size
    if sizes:
        groups.append(slice(start, len(sizes)))
    return groups


class _CallerThread(Executor):
    """Runs each submitted call at once in the submitting thread (see ``own_thread``)."""

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        future: Future[T] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            future.set_exception(exc)
        return future


@dataclasses.dataclass
class _Answer:
    """One greedy answer being decoded: its tokens and its text so far."""

    prompt_length: int
    tokens: list[int] = dataclasses.field(default_factory=list)
    text: str = ""
    _decoder: Any = dataclasses.field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="replace")
    )

    def add(self, token: int, piece: bytes) -> None:
        self.tokens.append(token)
        self.text += self._decoder.decode(piece)

    @property
    def next_token(self) -> tuple[int, int]:
        """(position, token) of the last token, to be appended to the sequence's cache."""
        return self.prompt_length + len(self.tokens) - 1, self.tokens[-1]

    def finish(self) -> str:
        return (self.text + self._decoder.decode(b"", final=True)).strip()


class _Context:
    """One llama.cpp context with a reusable batch, and the tokens its KV cache holds.

    Serving uses sequence 0 only; evaluation decodes several sequences together
    (:meth:`prefill_sequences`). The KV cache is unified: all sequences share its ``n_ctx``
    cells, so one sequence alone can still use the whole context.
    """

    def __init__(self, engine: LlamaCppEngine, *, n_ctx: int, embeddings: bool) -> None:
        lib = self.lib = engine.lib
        self.n_vocab = engine.n_vocab
        params = lib.llama_context_default_params()
        params.n_ctx = n_ctx
        # An embedding is pooled over one micro-batch, so the whole text must fit in one.
        params.n_batch = n_ctx if embeddings else min(n_ctx, 512)
        params.n_ubatch = params.n_batch if embeddings else min(n_ctx, 512)
        params.n_threads = params.n_threads_batch = engine.threads
        if not embeddings:
            params.n_seq_max = _SEQUENCES
            params.kv_unified = True
        params.embeddings = embeddings
        if embeddings:
            params.pooling_type = lib.LLAMA_POOLING_TYPE_MEAN
        params.no_perf = True
        if engine.f32_kv_cache:
            # Flash attention on the CPU computes in f16 whatever the cache type is.
            params.type_k = params.type_v = lib.GGML_TYPE_F32
            params.flash_attn_type = lib.LLAMA_FLASH_ATTN_TYPE_DISABLED
        self.ctx = lib.llama_init_from_model(engine._model, params)
        if not self.ctx:
            raise EngineError("llama.cpp could not create a context (out of memory?)")
        self.n_batch = int(params.n_batch)
        self.batch = lib.llama_batch_init(self.n_batch, 0, 1)
        self.memory = lib.llama_get_memory(self.ctx)
        self.cached: list[int] = []  # tokens whose keys and values sequence 0 holds
        self.shared_prefix = 0  # of the sequences of prefill_sequences
        self.adapter_handle: Any = None
        self.adapter_scale = 1.0

    def close(self) -> None:
        if self.ctx:
            self.lib.llama_batch_free(self.batch)
            self.lib.llama_free(self.ctx)
            self.ctx = None

    def set_adapter(self, handle: Any, scale: float) -> None:
        if handle == self.adapter_handle and scale == self.adapter_scale:
            return
        if handle is None:
            status = self.lib.llama_set_adapters_lora(self.ctx, None, 0, None)
        else:
            handles = (self.lib.llama_adapter_lora_p_ctypes * 1)(handle)
            scales = (ctypes.c_float * 1)(scale)
            status = self.lib.llama_set_adapters_lora(self.ctx, handles, 1, scales)
        if status != 0:
            raise EngineError(f"llama.cpp could not apply the adapter (status {status})")
        self.adapter_handle, self.adapter_scale = handle, scale
        self.forget()  # keys and values computed under other weights are wrong now

    def forget(self, keep: int = 0) -> None:
        """Drop the cached positions from ``keep`` on."""
        if keep == 0 or not self.lib.llama_memory_seq_rm(self.memory, 0, keep, -1):
            self.lib.llama_memory_clear(self.memory, True)
            keep = 0
        del self.cached[keep:]

    def _reuse_prefix(self, ids: list[int], first_needed: int) -> int:
        """Keep the cached prefix ``ids`` shares, up to ``first_needed`` (the first position
        that must be evaluated again); drop the rest. Returns how many positions were kept."""
        common = 0
        limit = min(len(self.cached), first_needed)
        while common < limit and self.cached[common] == ids[common]:
            common += 1
        self.forget(common)
        return len(self.cached)

    def prefill(self, ids: list[int]) -> None:
        """Evaluate ``ids`` so that the next token can be sampled; reuses a cached prefix."""
        common = self._reuse_prefix(ids, len(ids) - 1)  # the last token is needed: its logits
        self._decode(ids[common:], output_positions=None)

    def append(self, token: int) -> None:
        self._decode([token], output_positions=None)

    def logits_at(self, ids: list[int], positions: list[int]) -> np.ndarray:
        """Logits after each position in ``positions`` of ``ids`` (sorted); a cached prefix
        before the first of them is reused (evaluation sets share their system prompt)."""
        common = self._reuse_prefix(ids, positions[0] if positions else 0)
        return self._decode(ids[common:], output_positions=[p - common for p in positions])

    def pooled_embedding(self, ids: list[int]) -> list[float]:
        self.forget()
        self._decode(ids, output_positions=None)
        self.forget()  # an embedding context keeps nothing between texts
        pointer = self.lib.llama_get_embeddings_seq(self.ctx, 0)
        if not pointer:
            raise EngineError("llama.cpp returned no pooled embedding")
        n_embd = self.lib.llama_model_n_embd(self.lib.llama_get_model(self.ctx))
        return list(np.ctypeslib.as_array(pointer, shape=(n_embd,)).astype(float))

    def prefill_sequences(self, prompts: list[list[int]]) -> np.ndarray:
        """Evaluate each prompt as its own sequence (0, 1, ...), for :meth:`decode_next`.

        Their shared prefix (the system prompt) is evaluated once, or kept from the cache,
        and shared by all. Returns each prompt's next-token logits: (len(prompts), n_vocab).
        """
        return self._evaluate_together(prompts, [[len(ids) - 1] for ids in prompts])

    def logits_together(
        self, sequences: list[list[int]], positions: list[list[int]]
    ) -> list[np.ndarray]:
        """Logits after each of ``positions[i]`` (sorted, non-empty) of each ``sequences[i]``,
        all evaluated together as :meth:`prefill_sequences` does; nothing is kept but the
        shared prefix."""
        rows = self._evaluate_together(sequences, positions)
        try:
            bounds = np.cumsum([len(p) for p in positions])[:-1]
            return list(np.split(rows, bounds))
        finally:
            self.end_sequences(len(sequences))

    def _evaluate_together(
        self, sequences: list[list[int]], positions: list[list[int]]
    ) -> np.ndarray:
        """Sequence i as llama.cpp sequence i, up to its last wanted position; the logits of
        the wanted positions, in order. The prefix all share before the first wanted
        position is evaluated once (or kept from the cache) and copied to the others."""
        ends = [p[-1] + 1 for p in positions]
        shared = min(_common_prefix(sequences), *(p[0] for p in positions))
        first = sequences[0]
        kept = self._reuse_prefix(first, shared)
        self._decode(first[kept:shared], output_positions=[])
        self.shared_prefix = shared
        for seq in range(1, len(sequences)):
            self.lib.llama_memory_seq_cp(self.memory, 0, seq, -1, -1)
        wanted = [set(p) for p in positions]
        return self._decode_entries(
            [
                (seq, pos, ids[pos], pos in wanted[seq])
                for seq, ids in enumerate(sequences)
                for pos in range(shared, ends[seq])
            ]
        )

    def decode_next(self, tokens: list[tuple[int, int, int]]) -> np.ndarray:
        """Append one token to each of several sequences: (sequence, position, token) each.
        Returns their next-token logits, in the same order."""
        return self._decode_entries([(seq, pos, token, True) for seq, pos, token in tokens])

    def end_sequences(self, count: int) -> None:
        """Drop sequences 1 to ``count - 1``, and sequence 0's tokens after the shared prefix
        of :meth:`prefill_sequences`, which later requests may reuse."""
        for seq in range(1, count):
            self.lib.llama_memory_seq_rm(self.memory, seq, -1, -1)
        self.forget(self.shared_prefix)

    def _decode(self, ids: list[int], output_positions: list[int] | None) -> np.ndarray:
        """Append ``ids`` to sequence 0. Returns the logits of ``output_positions`` (indices
        into ``ids``); None: of the last position only, the one the next token is picked at."""
        first = len(self.cached)
        wanted = {len(ids) - 1} if output_positions is None else set(output_positions)
        return self._decode_entries(
            [(0, first + i, token, i in wanted) for i, token in enumerate(ids)]
        )

    def _decode_entries(self, entries: list[tuple[int, int, int, bool]]) -> np.ndarray:
        """Evaluate (sequence, position, token, wants logits) entries in batches of
        ``n_batch``. Returns the logits of the entries that want them, in order."""
        rows: list[np.ndarray] = []
        for start in range(0, len(entries), self.n_batch):
            chunk = entries[start : start + self.n_batch]
            self._fill(chunk)
            status = self.lib.llama_decode(self.ctx, self.batch)
            if status != 0:
                self.forget()
                raise EngineError(f"llama.cpp could not evaluate the prompt (status {status})")
            self.cached.extend(token for seq, _, token, _ in chunk if seq == 0)
            n_out = sum(wants for *_, wants in chunk)
            if n_out:
                pointer = self.lib.llama_get_logits(self.ctx)
                rows.append(np.ctypeslib.as_array(pointer, shape=(n_out, self.n_vocab)).copy())
        if not rows:
            return np.empty((0, self.n_vocab), dtype=np.float32)
        return np.concatenate(rows)

    def _fill(self, entries: list[tuple[int, int, int, bool]]) -> None:
        batch = self.batch
        batch.n_tokens = len(entries)
        for i, (seq, pos, token, wants_logits) in enumerate(entries):
            batch.token[i] = token
            batch.pos[i] = pos
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = seq
            batch.logits[i] = wants_logits


def _common_prefix(sequences: list[list[int]]) -> int:
    """How many leading tokens all ``sequences`` share."""
    length = 0
    for column in zip(*sequences, strict=False):
        if len(set(column)) > 1:
            break
        length += 1
    return length


class _Sampler:
    """llama.cpp's sampler chain: the grammar, logit bias and repetition penalties first, then
    greedy at temperature 0, else top-k, top-p, min-p, temperature, draw (llama.cpp's order)."""

    def __init__(self, engine: LlamaCppEngine, params: GenerationParams, prompt: list[int]) -> None:
        lib = self.lib = engine.lib
        self.chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
        if params.grammar is not None:
            grammar = lib.llama_sampler_init_grammar(engine.vocab, params.grammar.encode(), b"root")
            if not grammar:
                lib.llama_sampler_free(self.chain)
                raise InvalidRequest("the grammar does not parse as GBNF with a 'root' rule")
            lib.llama_sampler_chain_add(self.chain, grammar)
        biases = list(params.logit_bias)
        if params.ignore_eos:
            biases += [(token, -math.inf) for token in engine.end_of_generation_tokens()]
        if biases:
            array = (lib.llama_logit_bias * len(biases))(*biases)
            lib.llama_sampler_chain_add(
                self.chain, lib.llama_sampler_init_logit_bias(engine.n_vocab, len(biases), array)
            )
        if params.penalizes:
            self._add_penalties(engine, params, prompt)
        if params.temperature <= 0:
            lib.llama_sampler_chain_add(self.chain, lib.llama_sampler_init_greedy())
            return
        if params.top_k > 0:
            lib.llama_sampler_chain_add(self.chain, lib.llama_sampler_init_top_k(params.top_k))
        if params.top_p < 1.0:
            lib.llama_sampler_chain_add(self.chain, lib.llama_sampler_init_top_p(params.top_p, 1))
        if params.min_p > 0:
            lib.llama_sampler_chain_add(self.chain, lib.llama_sampler_init_min_p(params.min_p, 1))
        lib.llama_sampler_chain_add(self.chain, lib.llama_sampler_init_temp(params.temperature))
        seed = _DEFAULT_SEED if params.seed is None else params.seed & 0xFFFFFFFF
        lib.llama_sampler_chain_add(self.chain, lib.llama_sampler_init_dist(seed))

    def _add_penalties(
        self, engine: LlamaCppEngine, params: GenerationParams, prompt: list[int]
    ) -> None:
        """The repetition penalties, told the prompt's last tokens first (as llama.cpp's server
        does); the chain tells them each generated token."""
        lib = self.lib
        last_n = engine.context_length if params.penalty_last_n < 0 else params.penalty_last_n
        penalties = lib.llama_sampler_init_penalties(
            engine.n_vocab,
            last_n,
            params.repeat_penalty,
            params.frequency_penalty,
            params.presence_penalty,
        )
        for token in prompt[-last_n:]:
            lib.llama_sampler_accept(penalties, token)
        lib.llama_sampler_chain_add(self.chain, penalties)

    def sample(self, ctx: Any) -> int:
        return int(self.lib.llama_sampler_sample(self.chain, ctx, -1))

    def close(self) -> None:
        self.lib.llama_sampler_free(self.chain)
