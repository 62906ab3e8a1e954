"""The official openai client against a real server: what people already run works unchanged.

The server (the ``openai_server`` fixture) serves the tiny model as a GGUF on the llama.cpp
engine, with no keys required, and the client is configured as llama.cpp's server documents
it: ``OpenAI(base_url=".../v1", api_key="sk-no-key-required")``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal, cast

import openai
import pytest
from openai import OpenAI
from openai.types.chat import ChatCompletion, ChatCompletionMessageParam

from selftune.store.schema import Interaction
from tests.integration.conftest import LiveServer

QUESTION: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Tell me about the sea."}]
# The tiny model's greedy answers are blank lines whatever it is asked; a seeded sample is as
# repeatable and tells prompts apart.
SAMPLED: dict[str, Any] = {"max_tokens": 8, "temperature": 1.0, "seed": 11}


@pytest.fixture(scope="module")
def client(openai_server: LiveServer) -> Iterator[OpenAI]:
    with OpenAI(
        base_url=f"{openai_server.url}/v1", api_key="sk-no-key-required", max_retries=0
    ) as sdk:
        yield sdk


def _recorded_user(server: LiveServer, interaction_id: str) -> str:
    with server.app.state.selftune.db.read() as session:
        row = session.get(Interaction, interaction_id)
    assert row is not None
    return row.user_id


def test_chat_answers_with_usage_and_is_recorded(client: OpenAI, openai_server: LiveServer) -> None:
    answer = client.chat.completions.create(
        model="selftune", messages=QUESTION, max_tokens=6, temperature=0, user="alice"
    )
    assert answer.object == "chat.completion"
    assert answer.model == "selftune"
    assert answer.system_fingerprint == "base"
    choice = answer.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert answer.usage is not None
    assert answer.usage.completion_tokens == 6 and choice.finish_reason == "length"
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + 6
    # A placeholder key is no key: the request's user field names the user.
    assert _recorded_user(openai_server, answer.id) == "alice"


def test_a_placeholder_key_without_a_user_is_anonymous(
    client: OpenAI, openai_server: LiveServer
) -> None:
    for key in ("sk-no-key-required", "x", "dummy"):
        answer = client.with_options(api_key=key).chat.completions.create(
            model="selftune", messages=QUESTION, max_tokens=2
        )
        assert _recorded_user(openai_server, answer.id) == "anonymous"


def test_streaming_gives_the_same_answer_and_usage_last(client: OpenAI) -> None:
    whole = client.chat.completions.create(model="selftune", messages=QUESTION, **SAMPLED)
    stream = client.chat.completions.create(
        model="selftune",
        messages=QUESTION,
        stream=True,
        stream_options={"include_usage": True},
        **SAMPLED,
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "length" and not any(finishes[:-1])
    assert {c.id for c in chunks} == {chunks[0].id}
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == [] and usage_chunk.usage is not None
    assert whole.usage is not None and usage_chunk.usage == whole.usage


def _middle_piece(text: str) -> str:
    """Three printable ASCII characters from inside ``text``: a stop sequence it contains."""
    for i in range(2, len(text) - 3):
        piece = text[i : i + 3]
        if piece.isascii() and piece.strip():
            return piece
    raise AssertionError(f"no stop sequence to cut {text!r} at")


def test_max_tokens_and_stop(client: OpenAI) -> None:
    # Seeded answers repeat, so the answer up to its first stop sequence is known.
    def ask(**extra: Any) -> ChatCompletion:
        return client.chat.completions.create(
            model="selftune", messages=QUESTION, max_tokens=12, temperature=1.0, seed=3, **extra
        )

    full = ask()
    text = full.choices[0].message.content or ""
    assert full.usage is not None and full.usage.completion_tokens == 12
    assert full.choices[0].finish_reason == "length"
    stop = _middle_piece(text)
    stopped = ask(stop=[stop])
    assert stopped.choices[0].message.content == text[: text.index(stop)]
    assert stopped.choices[0].finish_reason == "stop"


def test_the_same_seed_gives_the_same_sampled_answer(client: OpenAI) -> None:
    def sampled(seed: int) -> str:
        answer = client.chat.completions.create(
            model="selftune", messages=QUESTION, max_tokens=8, temperature=1.0, seed=seed
        )
        return answer.choices[0].message.content or ""

    first = sampled(7)
    assert sampled(7) == first
    # The tiny model's random weights spread its choices wide: other seeds answer otherwise.
    assert {sampled(seed) for seed in (8, 9, 10)} != {first}


def test_text_completions(client: OpenAI) -> None:
    answer = client.completions.create(model="selftune", prompt="Once upon a time", **SAMPLED)
    assert answer.object == "text_completion"
    assert answer.choices[0].text and answer.choices[0].finish_reason == "length"
    assert answer.usage is not None and answer.usage.completion_tokens == SAMPLED["max_tokens"]
    streamed = client.completions.create(
        model="selftune", prompt="Once upon a time", stream=True, **SAMPLED
    )
    assert "".join(c.choices[0].text for c in streamed if c.choices) == answer.choices[0].text


def test_models_are_listed_and_retrieved(client: OpenAI) -> None:
    names = [model.id for model in client.models.list()]
    assert names[:2] == ["selftune", "base"]
    served = client.models.retrieve("selftune")
    assert (served.id, served.object, served.owned_by) == ("selftune", "model", "selftune")
    with pytest.raises(openai.NotFoundError) as missing:
        client.models.retrieve("gpt-4o")
    assert "the model 'gpt-4o' does not exist" in missing.value.message
    assert missing.value.code == "model_not_found"


def test_embeddings_as_floats_and_as_base64(client: OpenAI) -> None:
    texts = ["The sea is wide.", "The sea is deep."]
    floats = client.embeddings.create(model="selftune", input=texts, encoding_format="float")
    # Left out, the SDK asks for base64 and decodes it itself.
    decoded = client.embeddings.create(model="selftune", input=texts)
    assert [e.index for e in floats.data] == [0, 1]
    for plain, packed in zip(floats.data, decoded.data, strict=True):
        assert len(plain.embedding) == len(packed.embedding) == 64
        assert plain.embedding == pytest.approx(packed.embedding, abs=1e-6)
        assert sum(x * x for x in plain.embedding) == pytest.approx(1.0, abs=1e-4)
    assert floats.usage.prompt_tokens == floats.usage.total_tokens > 0


def test_errors_are_the_sdks_exceptions_with_our_messages(client: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as unknown:
        client.chat.completions.create(model="gpt-4o", messages=QUESTION, max_tokens=2)
    assert "see GET /v1/models" in unknown.value.message
    with pytest.raises(openai.BadRequestError) as too_long:
        client.chat.completions.create(model="selftune", messages=QUESTION, max_tokens=100_000)
    assert too_long.value.code == "context_length_exceeded"
    assert "this model's context is 256 tokens" in too_long.value.message
    with pytest.raises(openai.BadRequestError) as empty:
        client.chat.completions.create(model="selftune", messages=[])
    assert empty.value.param == "messages"


def test_the_developer_role_is_a_system_message(client: OpenAI) -> None:
    def answer(role: Literal["developer", "system", "user"]) -> str:
        rules = cast(ChatCompletionMessageParam, {"role": role, "content": "Answer in one word."})
        reply = client.chat.completions.create(
            model="selftune", messages=[rules, *QUESTION], **SAMPLED
        )
        return reply.choices[0].message.content or ""

    assert answer("developer") == answer("system") != answer("user")
