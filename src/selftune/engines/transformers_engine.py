"""Inference with PyTorch + transformers, adapters through PEFT.

One generation runs at a time (a lock around the model): PEFT's active adapter is model-wide
state, and on a CPU two concurrent generations only slow each other down. Each request names its
adapter up front and keeps it to the end, so a promotion never changes an answer half-way.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from selftune.data.tokenize import IGNORE_INDEX, LabelledTokens, answer_positions, collate
from selftune.engines.base import (
    AdapterRef,
    Chunk,
    EngineError,
    GenerationParams,
    InvalidRequest,
    Prompt,
    TokenLogprob,
)
from selftune.models.base import load_model, load_tokenizer
from selftune.models.templates import render_chat, resolve_template

__all__ = ["TransformersEngine", "greedy_answers"]

log = logging.getLogger(__name__)

# Adapters kept in memory; older ones are reloaded from disk if a request asks for them.
_MAX_LOADED_ADAPTERS = 8


class TransformersEngine:
    name = "transformers"

    def __init__(
        self, model_dir: Path, *, chat_template: str = "", context_length: int = 2048
    ) -> None:
        self.tokenizer = load_tokenizer(model_dir)
        self.model: Any = load_model(model_dir)
        self.default_template = resolve_template(chat_template, self.tokenizer.chat_template)
        model_limit = getattr(self.model.config, "max_position_embeddings", context_length)
        self.context_length = min(context_length, model_limit)
        self.stop_token_ids = _stop_token_ids(self.model, self.tokenizer)
        self._lock = threading.Lock()
        self._loaded: collections.OrderedDict[str, AdapterRef] = collections.OrderedDict()

    # --- prompts ---------------------------------------------------------------------------
    def count_tokens(self, text: str) -> int:
        return len(self._encode(text))

    def render_chat(self, messages: list[dict[str, str]], template: str | None = None) -> str:
        chosen = resolve_template(template, None) if template else self.default_template
        return render_chat(self.tokenizer, messages, chosen, add_generation_prompt=True)

    def _encode(self, text: str) -> list[int]:
        # Templates already contain any BOS token they need.
        ids: list[int] = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return ids

    def tokenize(self, text: str, *, add_special: bool = False) -> list[int]:
        ids: list[int] = self.tokenizer(text, add_special_tokens=add_special)["input_ids"]
        return ids

    def detokenize(self, tokens: Sequence[int]) -> str:
        text: str = self.tokenizer.decode(list(tokens))
        return text

    @torch.inference_mode()
    def embed(self, texts: Sequence[str], adapter: AdapterRef | None = None) -> list[list[float]]:
        vectors: list[list[float]] = []
        with self._lock:
            self._activate(adapter)
            with self._bare_context(adapter):
                for text in texts:
                    ids = self._encode(text) or [self.tokenizer.eos_token_id or 0]
                    out = self.model(input_ids=torch.tensor([ids]), output_hidden_states=True)
                    vectors.append(out.hidden_states[-1][0].float().mean(dim=0).tolist())
        return vectors

    # --- adapters --------------------------------------------------------------------------
    def preload_adapter(self, adapter: AdapterRef) -> None:
        with self._lock:
            self._activate(adapter)

    def _activate(self, adapter: AdapterRef | None) -> None:
        """Make ``adapter`` (or the bare base) the active weights. Caller holds the lock."""
        if adapter is None:
            return
        if adapter.scale != 1.0:
            raise EngineError(
                "the transformers engine applies an adapter at scale 1.0 only; "
                "serve a GGUF base (llama.cpp engine) for other scales"
            )
        from peft import PeftModel

        if adapter.name not in self._loaded:
            if not (adapter.path / "adapter_config.json").is_file():
                raise EngineError(f"version {adapter.name} has no adapter at {adapter.path}")
            if isinstance(self.model, PeftModel):
                self.model.load_adapter(str(adapter.path), adapter_name=adapter.name)
            else:
                self.model = PeftModel.from_pretrained(
                    self.model, str(adapter.path), adapter_name=adapter.name
                )
            self.model.eval()
            self._loaded[adapter.name] = adapter
            self._evict(keep=adapter.name)
        self._loaded.move_to_end(adapter.name)
        self.model.set_adapter(adapter.name)

    def _evict(self, keep: str) -> None:
        while len(self._loaded) > _MAX_LOADED_ADAPTERS:
            oldest = next(name for name in self._loaded if name != keep)
            self.model.set_adapter(keep)
            self.model.delete_adapter(oldest)
            del self._loaded[oldest]

    # --- evaluation ------------------------------------------------------------------------
    @torch.inference_mode()
    def answer_nll(self, examples: Sequence[LabelledTokens], adapter: AdapterRef | None) -> float:
        """Mean loss per answer token of tokenized examples under ``adapter`` (or the base)."""
        if not examples:
            return float("nan")
        pad_id = self.tokenizer.pad_token_id or 0
        with self._lock:
            self._activate(adapter)
            context = self._bare_context(adapter)
            with context:
                return mean_answer_nll(self.model, examples, pad_id)

    @torch.inference_mode()
    def answer_margins(
        self, examples: Sequence[LabelledTokens], adapter: AdapterRef | None
    ) -> list[float]:
        found = []
        with self._lock:
            self._activate(adapter)
            with self._bare_context(adapter):
                for example in examples:
                    ids, positions = list(example.input_ids), answer_positions(example)
                    if not positions:
                        found.append(float("inf"))
                        continue
                    logits = self.model(input_ids=torch.tensor([ids])).logits[0, positions]
                    top2 = logits.float().topk(2, dim=-1).values
                    found.append(float((top2[:, 0] - top2[:, 1]).min()))
        return found

    def _bare_context(self, adapter: AdapterRef | None) -> Any:
        if adapter is None and _is_peft(self.model):
            return self.model.disable_adapter()
        return contextlib.nullcontext()

    def greedy_batch(
        self,
        prompts: list[str],
        max_tokens: int,
        adapter: AdapterRef | None,
        batch: int = 16,
        until: Sequence[Callable[[str], bool]] | None = None,
    ) -> list[str]:
        """Greedy answers to many prompts at once (left-padded batches): for evaluation. An
        answer ends once its ``until`` test holds, and a batch once all of its answers have."""
        if until is not None and len(until) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(until)} 'until' tests")
        with self._lock:
            self._activate(adapter)
            with self._bare_context(adapter):
                return greedy_answers(
                    self.model,
                    self.tokenizer,
                    [self._encode(p) for p in prompts],
                    max_tokens,
                    batch=batch,
                    until=until,
                )

    # --- generation ------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return int(self.model.get_output_embeddings().weight.shape[0])

    def check_params(self, params: GenerationParams) -> None:
        """Refuse what this engine cannot do (grammars) and token ids outside the vocabulary.
        Raises :class:`InvalidRequest`."""
        if params.grammar is not None:
            raise InvalidRequest(
                "grammars (structured output, json_schema, forced tool calls) need the llama.cpp "
                "engine: serve a GGUF base model (engine = 'auto' or 'llama.cpp')"
            )
        vocab = self.vocab_size
        for token, _ in params.logit_bias:
            if not 0 <= token < vocab:
                raise InvalidRequest(
                    f"logit_bias names token {token}; this model's tokens are 0-{vocab - 1}"
                )
        if params.top_logprobs is not None and not 0 <= params.top_logprobs <= vocab:
            raise InvalidRequest(f"top_logprobs must be between 0 and {vocab}")

    def stream(
        self, prompt: Prompt, params: GenerationParams, adapter: AdapterRef | None
    ) -> Iterator[Chunk]:
        self.check_params(params)
        prompt_ids = self._encode(prompt) if isinstance(prompt, str) else list(prompt)
        vocabulary = int(self.model.config.vocab_size)
        if any(not 0 <= token < vocabulary for token in prompt_ids):
            raise InvalidRequest(
                f"a token id is not in this model's vocabulary (0-{vocabulary - 1})"
            )
        if not prompt_ids:  # generate from the start of a text, as the llama.cpp engine does
            bos = self.tokenizer.bos_token_id
            prompt_ids = [bos if bos is not None else (self.tokenizer.eos_token_id or 0)]
        with self._lock:
            self._activate(adapter)
            with self._bare_context(adapter):
                yield from self._generate(prompt_ids, params)

    @torch.inference_mode()
    def _generate(self, prompt_ids: list[int], params: GenerationParams) -> Iterator[Chunk]:
        from selftune.engines.sampling import next_token, penalized
        from selftune.engines.stops import StopMatcher

        generator = None
        if params.seed is not None:
            generator = torch.Generator().manual_seed(params.seed)
        matcher = StopMatcher(params.stop)
        generated: list[int] = []
        input_ids = torch.tensor([prompt_ids])
        past: Any = None
        finish = "length"
        bias = self._bias(params)
        pending: list[TokenLogprob] = []  # logprobs of tokens not yet handed out in a chunk

        def recent() -> list[int]:  # what the repetition penalties look at
            last_n = self.context_length if params.penalty_last_n < 0 else params.penalty_last_n
            return [*prompt_ids, *generated][-last_n:] if last_n else []

        for _ in range(params.max_tokens):
            out = self.model(input_ids=input_ids, past_key_values=past, use_cache=True)
            past = out.past_key_values
            logits = out.logits[0, -1].float()
            if bias is not None:
                logits = logits + bias
            # Log-probabilities are the model's with the bias, before penalties (as llama.cpp's).
            scores = penalized(logits, recent(), params) if params.penalizes else logits
            token = next_token(scores, params, generator)
            if token in self.stop_token_ids and not params.ignore_eos:
                finish = "stop"
                break
            generated.append(token)
            if params.top_logprobs is not None:
                pending.append(self._logprob(logits, token, params.top_logprobs))
            input_ids = torch.tensor([[token]])
            text = self.tokenizer.decode(generated, skip_special_tokens=True)
            piece, stopped = matcher.feed(text)
            if piece:
                yield Chunk(piece, completion_tokens=len(generated), logprobs=tuple(pending))
                pending.clear()
            if stopped:
                finish = "stop"
                break
        tail = matcher.flush()
        yield Chunk(
            tail, finish_reason=finish, completion_tokens=len(generated), logprobs=tuple(pending)
        )

    def _bias(self, params: GenerationParams) -> torch.Tensor | None:
        """What the request adds to each logit: its logit bias, and with ``ignore_eos`` minus
        infinity on the tokens that end a generation. None: nothing."""
        if not params.logit_bias and not params.ignore_eos:
            return None
        bias = torch.zeros(self.vocab_size)
        for token, value in params.logit_bias:
            bias[token] += value
        if params.ignore_eos:
            bias[sorted(t for t in self.stop_token_ids if t < self.vocab_size)] = -torch.inf
        return bias

    def _logprob(self, logits: torch.Tensor, token: int, top: int) -> TokenLogprob:
        """``token``'s log-probability under (biased) ``logits``, and the ``top`` likeliest."""
        log_probs = torch.log_softmax(logits.double(), dim=-1)
        alternatives: tuple[tuple[int, bytes, float], ...] = ()
        if top:
            best = torch.topk(log_probs, top)
            alternatives = tuple(
                (int(t), self._piece(int(t)), float(lp))
                for lp, t in zip(best.values, best.indices, strict=True)
            )
        return TokenLogprob(token, self._piece(token), float(log_probs[token]), alternatives)

    def _piece(self, token: int) -> bytes:
        """A token's text on its own (a token holding part of a character shows U+FFFD)."""
        text: str = self.tokenizer.decode([token], skip_special_tokens=True)
        return text.encode()


@torch.inference_mode()
def greedy_answers(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Sequence[int]],
    max_tokens: int,
    *,
    batch: int = 16,
    until: Sequence[Callable[[str], bool]] | None = None,
) -> list[str]:
    """``model``'s greedy answers to tokenized ``prompts``, in left-padded batches of ``batch``;
    with ``until`` (one test per prompt), each answer ends once its test holds."""
    from transformers import StoppingCriteriaList

    answers: list[str] = []
    pad_id = tokenizer.pad_token_id or 0
    stop_token_ids = sorted(_stop_token_ids(model, tokenizer))
    for start in range(0, len(prompts), batch):
        encoded = prompts[start : start + batch]
        longest = max(len(ids) for ids in encoded)
        rows = [[pad_id] * (longest - len(ids)) + list(ids) for ids in encoded]
        masks = [[0] * (longest - len(ids)) + [1] * len(ids) for ids in encoded]
        input_ids = torch.tensor(rows, device=model.device)  # where the model is: CPU or GPU
        mask = torch.tensor(masks, device=model.device)
        ended = _UntilHolds(tokenizer, longest, until[start : start + batch]) if until else None
        output = model.generate(
            input_ids=input_ids,
            attention_mask=mask,
            max_new_tokens=max_tokens,
            do_sample=False,
            eos_token_id=stop_token_ids,
            pad_token_id=pad_id,
            stopping_criteria=StoppingCriteriaList([ended] if ended else []),
        )
        for row, tokens in enumerate(output[:, longest:]):
            if ended and row in ended.answers:  # the padding after the end is no answer
                answers.append(ended.answers[row])
            else:
                answers.append(tokenizer.decode(tokens, skip_special_tokens=True).strip())
    return answers


class _UntilHolds:
    """A stopping criterion for ``generate``: a row ends once its answer so far passes its test
    (the text it had then is kept in ``answers``); the batch ends once every row has ended."""

    def __init__(
        self, tokenizer: Any, prompt_length: int, tests: Sequence[Callable[[str], bool] | None]
    ) -> None:
        self.tokenizer, self.prompt_length, self.tests = tokenizer, prompt_length, tests
        self.answers: dict[int, str] = {}

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        for row, test in enumerate(self.tests):
            if test is not None and row not in self.answers:
                new = input_ids[row, self.prompt_length :]
                text = self.tokenizer.decode(new, skip_special_tokens=True).strip()
                if test(text):
                    self.answers[row] = text
        ended = [row in self.answers for row in range(len(self.tests))]
        return torch.tensor(ended, device=input_ids.device)


def _is_peft(model: Any) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def _stop_token_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), model.config):
        value = getattr(source, "eos_token_id", None) if source is not None else None
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list):
            ids.update(value)
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    for token in ("<|im_end|>", "<|eot_id|>", "<|end|>"):
        token_id = tokenizer.convert_tokens_to_ids(token)
        if isinstance(token_id, int) and token_id != tokenizer.unk_token_id:
            ids.add(token_id)
    return ids


@torch.inference_mode()
def mean_answer_nll(model: Any, examples: Sequence[LabelledTokens], pad_id: int) -> float:
    """Mean negative log-likelihood per loss-carrying token over ``examples`` (nats/token)."""
    total, count = 0.0, 0
    for start in range(0, len(examples), 8):
        batch = collate(examples[start : start + 8], pad_id)
        inputs = {name: tensor.to(model.device) for name, tensor in batch.items()}
        logits = model(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]
        ).logits
        # Position t predicts token t+1: shift labels left by one.
        targets = inputs["labels"][:, 1:]
        log_probs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        mask = targets != IGNORE_INDEX
        picked = log_probs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        total += float(-(picked * mask).sum())
        count += int(mask.sum())
    return total / max(count, 1)
