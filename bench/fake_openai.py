"""A fast fake OpenAI-compatible server, the upstream of the proxy's benchmark and tests.

It answers ``POST /v1/chat/completions`` and ``/v1/completions`` (JSON, or server-sent events
with ``"stream": true``) with a fixed function of the prompt, ``answer_for``, and keeps the
``Authorization`` headers it was sent in ``seen_authorizations``. A plain ASGI app: the least
work per request, so that timings through it measure the proxy.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.types import Receive, Scope, Send

__all__ = ["MODEL", "FakeOpenAI", "answer_for"]

MODEL = "fake-upstream-7b"


def answer_for(prompt: str) -> str:
    """The fake model's answer: what a tutor that knows one fact per word would say."""
    word = prompt.strip().split()[-1].strip("?.!").lower() if prompt.strip() else "nothing"
    return f"The word {word} has {len(word)} letters."


def _prompt_of(body: dict[str, Any]) -> str:
    if "messages" in body:
        content = body["messages"][-1].get("content", "")
        return content if isinstance(content, str) else ""
    prompt = body.get("prompt", "")
    return prompt if isinstance(prompt, str) else ""


class FakeOpenAI:
    """The ASGI app. ``fail_with`` (a status) makes every generation request fail with it."""

    def __init__(self) -> None:
        self.seen_authorizations: list[str | None] = []
        self.fail_with: int | None = None
        self.requests = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        raw = b""
        while True:
            message = await receive()
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        path = scope["path"]
        if scope["method"] == "GET":
            await _send(send, 200, b'{"status": "ok"}')
            return
        headers = dict(scope["headers"])
        auth = headers.get(b"authorization")
        self.seen_authorizations.append(auth.decode() if auth else None)
        self.requests += 1
        if self.fail_with is not None:
            await _send(send, self.fail_with, b'{"error": {"message": "failing on purpose"}}')
            return
        body = json.loads(raw)
        chat = path.endswith("/chat/completions")
        text = answer_for(_prompt_of(body))
        ident = f"{'chatcmpl' if chat else 'cmpl'}-fake{len(raw)}"  # the same for the same body
        usage = {"prompt_tokens": 7, "completion_tokens": 9, "total_tokens": 16}
        if not body.get("stream"):
            choice: dict[str, Any] = {"index": 0, "finish_reason": "stop"}
            if chat:
                choice["message"] = {"role": "assistant", "content": text}
            else:
                choice["text"] = text
            obj = "chat.completion" if chat else "text_completion"
            answer = {"id": ident, "object": obj, "created": 1, "model": MODEL,
                      "choices": [choice], "usage": usage}  # fmt: skip
            await _send(send, 200, json.dumps(answer).encode())
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        obj = "chat.completion.chunk" if chat else "text_completion"
        pieces = [word + " " for word in text.split(" ")[:-1]] + [text.split(" ")[-1]]
        for index, piece in enumerate([*pieces, ""]):
            finish = "stop" if index == len(pieces) else None
            if chat:
                choice = {"index": 0, "delta": {"content": piece}, "finish_reason": finish}
            else:
                choice = {"index": 0, "text": piece, "finish_reason": finish}
            event = {"id": ident, "object": obj, "created": 1, "model": MODEL, "choices": [choice]}
            data = f"data: {json.dumps(event)}\n\n".encode()
            await send({"type": "http.response.body", "body": data, "more_body": True})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})


async def _send(send: Send, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


app = FakeOpenAI()  # for ``uvicorn bench.fake_openai:app``
