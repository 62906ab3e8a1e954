"""The llama.cpp engine on the tiny model: parity with PyTorch, streaming, adapters, threads.

The tiny Llama is written as an f32 GGUF (tests/gguf_base.py) with the default model's
tokenizer, and each "version" is a random LoRA saved as PEFT files plus its exported GGUF, the
layout the training worker writes.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from selftune.data.tokenize import tokenize_chat
from selftune.engines.base import STREAM_END, AdapterRef, EngineError, GenerationParams
from selftune.engines.llamacpp_engine import LlamaCppEngine
from selftune.engines.transformers_engine import TransformersEngine
from selftune.export.gguf_adapter import export_gguf_adapter
from selftune.models.base import default_gguf_path
from tests.gguf_base import write_llama_base_gguf

QUESTIONS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Ünïcödé and emoji 🙂: repeat them.",
    "List three prime numbers.",
]
GREEDY = GenerationParams(max_tokens=24, temperature=0.0)


def _random_lora_version(tiny_model_dir: Path, folder: Path, seed: int, name: str) -> AdapterRef:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=targets))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param_name, param in model.named_parameters():
            if "lora_" in param_name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    path = folder / name
    model.save_pretrained(str(path))
    export_gguf_adapter(path, AutoConfig.from_pretrained(tiny_model_dir), path / "adapter.gguf")
    return AdapterRef(seed, name, path)


@pytest.fixture(scope="module")
def tiny_gguf(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-gguf")
    return write_llama_base_gguf(tiny_model_dir, folder / "tiny.gguf", default_gguf_path())


@pytest.fixture(scope="module")
def engine(tiny_gguf: Path, tiny_model_dir: Path) -> LlamaCppEngine:
    # An f32 KV cache makes llama.cpp's arithmetic match PyTorch's to rounding; the served
    # default (f16) alone moves the tiny model's logits by ~4e-3.
    return LlamaCppEngine(
        tiny_gguf, tiny_model_dir, context_length=256, threads=1, f32_kv_cache=True
    )


@pytest.fixture(scope="module")
def reference(tiny_model_dir: Path) -> TransformersEngine:
    return TransformersEngine(tiny_model_dir, context_length=256)


@pytest.fixture(scope="module")
def versions(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[AdapterRef]:
    folder = tmp_path_factory.mktemp("versions")
    return [_random_lora_version(tiny_model_dir, folder, seed, f"v{seed}") for seed in (1, 2)]


def _text(engine: LlamaCppEngine, prompt: str, adapter: AdapterRef | None) -> str:
    return "".join(chunk.text for chunk in engine.stream(prompt, GREEDY, adapter))


def test_prompts_tokenize_as_in_training(engine: LlamaCppEngine) -> None:
    """Serving tokenizes rendered chats exactly as training does, special tokens included."""
    for question in QUESTIONS:
        prompt = engine.render_chat([{"role": "user", "content": question}])
        assert (
            engine.tokenize(prompt)
            == engine.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        )


def test_the_trained_end_of_turn_stops_generation(engine: LlamaCppEngine) -> None:
    """Training teaches the model to end its turn with a token; llama.cpp must stop on it."""
    chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    example = tokenize_chat(engine.tokenizer, chat, engine.default_template, 128)
    trained_end = [
        t for t, label in zip(example.input_ids, example.labels, strict=True) if label != -100
    ][-1]
    assert engine.is_end_of_generation(trained_end)
    assert engine.tokenizer.convert_ids_to_tokens(trained_end) == "<|im_end|>"


@pytest.mark.parametrize("with_adapter", [False, True])
def test_logits_match_pytorch(
    engine: LlamaCppEngine,
    reference: TransformersEngine,
    versions: list[AdapterRef],
    with_adapter: bool,
) -> None:
    adapter = versions[0] if with_adapter else None
    agree, total, worst, scale = 0, 0, 0.0, 0.0
    for question in QUESTIONS:
        ids = engine.tokenize(engine.render_chat([{"role": "user", "content": question}]))
        ours = engine.next_token_logits(ids, adapter)
        with reference._lock:  # the reference engine's PEFT state, as it serves
            reference._activate(adapter)
            with reference._bare_context(adapter), torch.no_grad():
                theirs = reference.model(torch.tensor([ids])).logits[0].numpy()
        agree += int((ours.argmax(1) == theirs.argmax(1)).sum())
        total += len(ids)
        worst = max(worst, float(np.abs(ours - theirs).max()))
        scale = max(scale, float(np.abs(theirs).max()))
    print(
        f"llama.cpp vs PyTorch (adapter={with_adapter}): top-1 {agree / total:.2%}, "
        f"max |diff| {worst:.2g} of logits up to {scale:.2g}"
    )
    assert agree / total >= 0.99
    assert worst <= 1e-4 * scale  # measured ~1e-6: f32 throughout, in a different order


@pytest.mark.parametrize("with_adapter", [False, True])
def test_greedy_answers_match_pytorch(
    engine: LlamaCppEngine,
    reference: TransformersEngine,
    versions: list[AdapterRef],
    with_adapter: bool,
) -> None:
    adapter = versions[1] if with_adapter else None
    prompts = [engine.render_chat([{"role": "user", "content": q}]) for q in QUESTIONS]
    ours = engine.greedy_batch(prompts, 24, adapter)
    theirs = reference.greedy_batch(prompts, 24, adapter)
    assert ours == theirs


def test_versions_change_answers_and_switch_back(
    engine: LlamaCppEngine, versions: list[AdapterRef]
) -> None:
    prompt = engine.render_chat([{"role": "user", "content": QUESTIONS[0]}])
    base, first, second = (_text(engine, prompt, a) for a in (None, versions[0], versions[1]))
    assert len({base, first, second}) == 3
    # The prefix cache must not carry keys computed under another adapter.
    assert [_text(engine, prompt, a) for a in (versions[0], None, versions[1])] == [
        first,
        base,
        second,
    ]


def test_prefix_reuse_gives_the_same_answer(engine: LlamaCppEngine) -> None:
    history = [{"role": "user", "content": QUESTIONS[1]}]
    short = engine.render_chat(history)
    longer = engine.render_chat(
        [*history, {"role": "assistant", "content": "Waves."}, {"role": "user", "content": "More"}]
    )
    fresh = _text(engine, longer, None)
    _text(engine, short, None)  # leaves a shared prefix in the cache
    assert _text(engine, longer, None) == fresh


def test_answer_losses_reuse_the_shared_prompt_prefix_exactly(
    engine: LlamaCppEngine, versions: list[AdapterRef]
) -> None:
    chats = [
        [{"role": "user", "content": q}, {"role": "assistant", "content": "Quenmoor."}]
        for q in QUESTIONS
    ]
    examples = [
        tokenize_chat(engine.tokenizer, chat, engine.default_template, 64) for chat in chats
    ]
    together = engine.answer_nll(examples, versions[0])  # each after the previous one's prefix
    alone = [engine.answer_nll([example], versions[0]) for example in examples]
    for example in examples:  # and each from an empty cache
        engine.on_compute_thread(engine._ctx.forget)
        assert engine.answer_nll([example], versions[0]) == pytest.approx(
            alone[examples.index(example)], rel=1e-5
        )
    weights = [sum(label != -100 for label in e.labels[1:]) for e in examples]
    mean = sum(a * w for a, w in zip(alone, weights, strict=True)) / sum(weights)
    assert together == pytest.approx(mean, rel=1e-5)


def test_answer_losses_scored_together_match_each_scored_alone(
    engine: LlamaCppEngine, versions: list[AdapterRef]
) -> None:
    """Examples are scored several to a batch: more of them than one batch holds, of different
    lengths, one with no answer to score among them, give each one's own loss and margin."""
    chats = [
        [{"role": "user", "content": f"{q} ({n})"}, {"role": "assistant", "content": "Quen" * n}]
        for n in range(1, 4)
        for q in QUESTIONS
    ]
    examples = [tokenize_chat(engine.tokenizer, c, engine.default_template, 64) for c in chats]
    examples[5].labels[:] = [-100] * len(examples[5].labels)  # nothing to score: skipped
    scored = [e for i, e in enumerate(examples) if i != 5]
    alone = [engine.answer_nll([example], versions[0]) for example in scored]
    weights = [sum(label != -100 for label in e.labels[1:]) for e in scored]
    mean = sum(a * w for a, w in zip(alone, weights, strict=True)) / sum(weights)
    assert engine.answer_nll(examples, versions[0]) == pytest.approx(mean, rel=1e-4)
    margins = engine.answer_margins(examples, versions[0])
    assert margins[5] == float("inf")
    each = [engine.answer_margins([example], versions[0])[0] for example in examples]
    assert margins == pytest.approx(each, abs=1e-3)


def test_an_answer_can_end_once_its_test_holds(
    engine: LlamaCppEngine, versions: list[AdapterRef]
) -> None:
    prompts = [engine.render_chat([{"role": "user", "content": q}]) for q in QUESTIONS[:2]]
    full = engine.greedy_batch(prompts, 24, versions[0])
    assert len(full[0]) > 6, full
    cut = engine.greedy_batch(
        prompts, 24, versions[0], until=[lambda text: len(text.strip()) >= 3, None]
    )
    assert full[0].startswith(cut[0]) and 3 <= len(cut[0]) < len(full[0])
    assert cut[1] == full[1]
    with pytest.raises(ValueError, match="'until' tests"):
        engine.greedy_batch(prompts, 24, versions[0], until=[None])


@pytest.mark.parametrize("context_length", [256, 2048])
def test_answers_decoded_together_are_each_prompt_s_own(
    tiny_gguf: Path, tiny_model_dir: Path, versions: list[AdapterRef], context_length: int
) -> None:
    """``greedy_batch`` decodes prompts together, as sequences of one batch, in groups of at
    most 8 that fit the context (2048: 8 then 4; 256: a few at a time). Each answer must be
    the one the prompt gets alone, and serving afterwards must be unaffected."""
    engine = LlamaCppEngine(
        tiny_gguf, tiny_model_dir, context_length=context_length, threads=1, f32_kv_cache=True
    )
    questions = [f"{question} ({i})" for i, question in enumerate(QUESTIONS * 3)]
    prompts = [engine.render_chat([{"role": "user", "content": q}]) for q in questions]
    assert sum(len(engine.tokenize(p)) + 24 for p in prompts) > 256  # no single group fits
    for adapter in versions:  # (the bare tiny model answers blank lines only)
        alone = [_text(engine, prompt, adapter).strip() for prompt in prompts]
        assert len(set(alone)) > 1
        assert engine.greedy_batch(prompts, 24, adapter) == alone
        assert [_text(engine, prompt, adapter).strip() for prompt in prompts[:2]] == alone[:2]
    engine.close()


def test_concurrent_requests_each_keep_their_adapter(
    engine: LlamaCppEngine, versions: list[AdapterRef]
) -> None:
    prompt = engine.render_chat([{"role": "user", "content": QUESTIONS[3]}])
    choices = [None, versions[0], versions[1]] * 3
    expected = {i: _text(engine, prompt, a) for i, a in enumerate(choices[:3])}
    results: dict[int, str] = {}

    def run(i: int) -> None:
        results[i] = _text(engine, prompt, choices[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(choices))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == {i: expected[i % 3] for i in range(len(choices))}


def test_stops_and_limits(engine: LlamaCppEngine) -> None:
    prompt = engine.render_chat([{"role": "user", "content": QUESTIONS[0]}])
    full = _text(engine, prompt, None)
    chunks = list(engine.stream(prompt, GenerationParams(max_tokens=5, temperature=0.0), None))
    assert chunks[-1].finish_reason == "length"
    assert chunks[-1].completion_tokens == 5
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    cut = list(engine.stream(prompt, GenerationParams(24, 0.0, stop=(stop,)), None))
    assert cut[-1].finish_reason == "stop"
    assert "".join(c.text for c in cut) == full[: full.index(stop)]


def test_token_prompts_and_round_trip(engine: LlamaCppEngine) -> None:
    prompt = engine.render_chat([{"role": "user", "content": QUESTIONS[2]}])
    ids = engine.tokenize(prompt)
    assert engine.detokenize(ids) == prompt
    by_tokens = "".join(c.text for c in engine.stream(ids, GREEDY, None))
    assert by_tokens == _text(engine, prompt, None)


def test_sampling_with_a_seed_is_reproducible(engine: LlamaCppEngine) -> None:
    prompt = engine.render_chat([{"role": "user", "content": QUESTIONS[1]}])
    params = GenerationParams(max_tokens=16, temperature=1.0, top_p=0.9, seed=42)
    runs = ["".join(c.text for c in engine.stream(prompt, params, None)) for _ in range(2)]
    assert runs[0] == runs[1]


def test_errors_are_clear(engine: LlamaCppEngine, tmp_path: Path) -> None:
    missing = AdapterRef(99, "v99", tmp_path / "v99")
    with pytest.raises(EngineError, match="no GGUF adapter"):
        _text(engine, "Hello", missing)
    with pytest.raises(EngineError, match="exceed the context"):
        list(engine.stream("Hello", GenerationParams(max_tokens=1000), None))


def test_embeddings_are_mean_pooled_hidden_states(
    engine: LlamaCppEngine, reference: TransformersEngine
) -> None:
    texts = ["The cat sat on the mat.", "A completely different sentence about taxes."]
    ours = np.array(engine.embed(texts))
    theirs = np.array(reference.embed(texts))
    assert ours.shape == (2, 64)
    assert np.abs(ours - theirs).max() < 1e-3
    assert engine.embed(texts[:1]) == engine.embed(texts[:1])


def test_the_worker_mode_runs_in_the_calling_thread(
    tiny_gguf: Path, tiny_model_dir: Path, engine: LlamaCppEngine, versions: list[AdapterRef]
) -> None:
    """``own_thread=False`` (the training worker) computes in the caller's thread, same answers."""
    inline = LlamaCppEngine(
        tiny_gguf,
        tiny_model_dir,
        context_length=256,
        threads=1,
        f32_kv_cache=True,
        own_thread=False,
    )
    caller = threading.get_ident()
    assert inline.on_compute_thread(threading.get_ident) == caller
    assert engine.on_compute_thread(threading.get_ident) != caller
    prompts = [inline.render_chat([{"role": "user", "content": q}]) for q in QUESTIONS]
    assert inline.greedy_batch(prompts, 16, versions[0]) == engine.greedy_batch(
        prompts, 16, versions[0]
    )
    inline.close()


def test_gpu_layers_change_nothing_on_a_cpu_build(
    tiny_gguf: Path, tiny_model_dir: Path, engine: LlamaCppEngine
) -> None:
    """``gpu_layers`` (-1 by default: all) only places layers; without a GPU all run here."""
    cpu_only = LlamaCppEngine(
        tiny_gguf, tiny_model_dir, context_length=256, threads=1, f32_kv_cache=True, gpu_layers=0
    )
    prompts = [cpu_only.render_chat([{"role": "user", "content": q}]) for q in QUESTIONS]
    assert engine.gpu_layers == -1
    assert cpu_only.greedy_batch(prompts, 16, None) == engine.greedy_batch(prompts, 16, None)
    cpu_only.close()


def test_a_generation_stopped_while_it_waits_never_starts(engine: LlamaCppEngine) -> None:
    """A request whose client left while it waited for the compute thread costs it nothing,
    not even its prompt: the server frees the client's place, the engine skips the work."""
    busy = threading.Event()
    engine.on_compute_thread(lambda: None)  # the engine is idle
    engine._compute.submit(busy.wait, 30)  # someone else's answer holds the compute thread
    emitted: list[object] = []
    cancel = engine.push_stream(QUESTIONS[0], GREEDY, None, emitted.append)
    cancel()
    busy.set()
    engine.on_compute_thread(lambda: None)  # after the queued work
    assert emitted == [STREAM_END]


@pytest.mark.parametrize("with_adapter", [False, True])
def test_answer_margins_are_the_top_two_logits_gap_and_the_same_in_pytorch(
    engine: LlamaCppEngine,
    reference: TransformersEngine,
    versions: list[AdapterRef],
    with_adapter: bool,
) -> None:
    """How narrowly an answer was chosen: at each answer position the gap between the two
    likeliest next tokens, the smallest over the answer; both engines measure it alike."""
    adapter = versions[0] if with_adapter else None
    chats = [
        [{"role": "user", "content": q}, {"role": "assistant", "content": "Quenmoor is it."}]
        for q in QUESTIONS
    ]
    examples = [tokenize_chat(engine.tokenizer, c, engine.default_template, 64) for c in chats]
    ours = engine.answer_margins(examples, adapter)
    for example, margin in zip(examples, ours, strict=True):
        ids, labels = list(example.input_ids), list(example.labels)
        positions = [t for t in range(len(ids) - 1) if labels[t + 1] != -100]
        top2 = np.sort(engine.next_token_logits(ids, adapter)[positions], axis=1)[:, -2:]
        assert margin == pytest.approx(float((top2[:, 1] - top2[:, 0]).min()), abs=1e-5)
    assert reference.answer_margins(examples, adapter) == pytest.approx(ours, abs=1e-3)
    no_answer = tokenize_chat(engine.tokenizer, chats[0], engine.default_template, 64)
    no_answer.labels[:] = [-100] * len(no_answer.labels)
    assert engine.answer_margins([no_answer], adapter) == [float("inf")]
