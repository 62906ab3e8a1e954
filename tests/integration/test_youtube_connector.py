"""The YouTube comment responder against a fake of the YouTube Data API v3 on loopback (the
documented response shapes, through google-api-python-client), with the tiny model answering.
Nothing reaches the internet."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient
from sqlalchemy import select

from selftune.api.app import create_app
from selftune.config import Settings
from selftune.connectors.schedule import due, run_due
from selftune.connectors.youtube import adjust_links
from selftune.engines.transformers_engine import TransformersEngine
from selftune.store.db import Database
from selftune.store.interactions import record_interaction
from selftune.store.schema import ConnectorReply, Event, Interaction, Job
from tests.integration.conftest import serve_on_loopback, tiny_settings

pytest.importorskip("googleapiclient")

CHANNEL = "UCchannel"


def _ago(days: float) -> str:
    return (dt.datetime.now(dt.UTC) - dt.timedelta(days=days)).isoformat().replace("+00:00", "Z")


def _comment(comment_id: str, author: str, text: str, days: float) -> dict[str, Any]:
    return {
        "kind": "youtube#comment",
        "id": comment_id,
        "snippet": {
            "authorDisplayName": f"@{author}",
            "authorChannelId": {"value": author},
            "textOriginal": text,
            "textDisplay": text,
            "publishedAt": _ago(days),
        },
    }


def _thread(top: dict[str, Any], *replies: dict[str, Any]) -> dict[str, Any]:
    thread: dict[str, Any] = {
        "kind": "youtube#commentThread",
        "id": top["id"],
        "snippet": {"topLevelComment": top, "totalReplyCount": len(replies)},
    }
    if replies:
        thread["replies"] = {"comments": list(replies)}
    return thread


class FakeYouTube:
    """Channels, the uploads playlist (two pages), comment threads (paged) and replies."""

    def __init__(self) -> None:
        self.quota_spent = False
        self.inserted: list[dict[str, Any]] = []
        self.comment_requests: list[str] = []
        self.threads: dict[str, list[list[dict[str, Any]]]] = {
            "vid-new": [
                [
                    _thread(
                        _comment(
                            "c1", "UCalice", "How long did this take? https://spam.example/x", 0.5
                        )
                    ),
                    _thread(
                        _comment("c2", "UCbob", "Great video", 1),
                        _comment("c2r", CHANNEL, "Thanks!", 0.9),  # answered by the channel
                    ),
                ],
                [_thread(_comment("c3", "UCcarol", "What camera do you use?", 2))],
            ],
            "vid-old": [[_thread(_comment("c9", "UCdave", "Old comment", 40))]],
        }
        self.app = self._build()

    def _build(self) -> FastAPI:
        app = FastAPI()

        def quota() -> JSONResponse:
            error = {"code": 403, "message": "quota", "errors": [
                {"reason": "quotaExceeded", "domain": "youtube.quota", "message": "quota"}
            ]}  # fmt: skip
            return JSONResponse({"error": error}, status_code=403)

        @app.get("/health")
        def health() -> dict[str, str]:
            return {"status": "ok"}

        @app.get("/youtube/v3/channels")
        def channels(id: str) -> Any:
            if self.quota_spent:
                return quota()
            assert id == CHANNEL
            uploads = {"relatedPlaylists": {"uploads": "UUchannel"}}
            return {"items": [{"id": id, "contentDetails": uploads}]}

        @app.get("/youtube/v3/playlistItems")
        def playlist_items(playlistId: str, pageToken: str | None = None) -> Any:
            assert playlistId == "UUchannel"
            if pageToken is None:
                video = ("vid-new", "A new video", 3)
                return {"items": [self._upload(*video)], "nextPageToken": "page2"}
            return {"items": [self._upload("vid-old", "An old video", 30)]}

        @app.get("/youtube/v3/commentThreads")
        def comment_threads(videoId: str, pageToken: str | None = None) -> Any:
            self.comment_requests.append(videoId)
            pages = self.threads[videoId]
            index = int(pageToken or 0)
            page: dict[str, Any] = {"items": pages[index]}
            if index + 1 < len(pages):
                page["nextPageToken"] = str(index + 1)
            return page

        @app.post("/youtube/v3/comments")
        async def insert(request: Request) -> Any:
            if self.quota_spent:
                return quota()
            body = await request.json()
            self.inserted.append(body["snippet"])
            return {"id": f"posted-{len(self.inserted)}", "snippet": body["snippet"]}

        return app

    @staticmethod
    def _upload(video_id: str, title: str, days: float) -> dict[str, Any]:
        return {
            "snippet": {"title": title, "publishedAt": _ago(days)},
            "contentDetails": {"videoId": video_id, "videoPublishedAt": _ago(days)},
        }


@pytest.fixture
def fake() -> Iterator[tuple[FakeYouTube, str]]:
    youtube = FakeYouTube()
    with serve_on_loopback(youtube.app) as url:
        yield youtube, url


def _settings(tiny_model_dir: Path, url: str, **youtube: Any) -> Settings:
    values = {
        "enabled": True,
        "channel_id": CHANNEL,
        "api_key": "test-key",
        "api_endpoint": url,
        "replies_per_video": 5,
        "max_reply_tokens": 8,
        "allowed_link_domains": ["example.com"],
        **youtube,
    }
    return tiny_settings(tiny_model_dir, youtube=values)


class Talkative:
    """The tiny model, which (random weights) ends its greedy answers at once: the prompt is
    rendered and counted by it, and an empty answer is replaced by a reply with two links."""

    def __init__(self, engine: TransformersEngine) -> None:
        self.engine = engine
        self.prompts: list[str] = []

    def render_chat(self, messages: list[dict[str, str]], template: str | None = None) -> str:
        return self.engine.render_chat(messages, template)

    def count_tokens(self, text: str) -> int:
        return self.engine.count_tokens(text)

    def greedy_batch(self, prompts: list[str], max_tokens: int, adapter: Any) -> list[str]:
        self.prompts += prompts
        answers = self.engine.greedy_batch(prompts, max_tokens, adapter)
        reply = "Thanks! See https://spam.example/x and https://docs.example.com/faq."
        return [answer.strip() or reply for answer in answers]


def _run(
    settings: Settings, db: Database, engine: TransformersEngine, only: str | None = None
) -> Any:
    return run_due(settings, db, lambda: Talkative(engine), worker_id="test", only=only)


def test_links_outside_the_allowed_domains_are_removed() -> None:
    text = "See https://docs.example.com/a and http://spam.test/b or www.example.com."
    assert adjust_links(text, ["example.com"]) == (
        "See https://docs.example.com/a and or www.example.com."
    )
    assert adjust_links("go to https://x.test now", []) == "go to now"


def test_a_timestep_answers_new_comments_and_approved_replies_are_posted(
    settings_env: Path,
    tiny_model_dir: Path,
    tiny_engine: TransformersEngine,
    fake: tuple[FakeYouTube, str],
) -> None:
    youtube, url = fake
    settings = _settings(tiny_model_dir, url)
    db = Database(settings.resolved_database_url)
    db.migrate()
    assert due(settings, db) == ["youtube"]

    [outcome] = _run(settings, db, tiny_engine)
    result = outcome["result"]
    assert result["videos"] == 1 and youtube.comment_requests == ["vid-new", "vid-new"]
    with db.read() as session:
        replies = session.scalars(select(ConnectorReply).order_by(ConnectorReply.id)).all()
        job = session.get(Job, outcome["job_id"])
        assert job is not None and job.status == "succeeded" and job.kind == "timestep"
        assert {r.item_id for r in replies} == {"c1", "c3"}  # c2's last word is the channel's
        assert {r.status for r in replies} == {"pending"}
        assert all(r.video_id == "vid-new" for r in replies)
        for reply in replies:
            interaction = session.get(Interaction, reply.interaction_id)
            assert interaction is not None and interaction.kind == "youtube"
            assert interaction.user_id == reply.user_id
            assert "spam.example" not in interaction.response
            assert "https://docs.example.com/faq" in interaction.response
            assert "What camera" in str(interaction.messages) or "How long" in str(
                interaction.messages
            )
        assert {r.user_id for r in replies} == {"youtube:UCalice", "youtube:UCcarol"}
        assert session.scalar(select(Event.id).where(Event.kind == "connector_run"))
    assert youtube.inserted == []
    assert due(settings, db) == []  # ran just now

    # Forced again: everything is answered already.
    [again] = _run(settings, db, tiny_engine, only="youtube")
    assert again["result"]["answered"] == 0 and again["result"]["skipped_answered"] == 2

    # An admin approves one through the API; the next run posts it.
    app = create_app(settings, engine=tiny_engine)
    with TestClient(app) as client:
        pending = client.get("/api/connectors/replies").json()["data"]
        assert {p["item_id"] for p in pending} == {"c1", "c3"}
        c1 = next(p for p in pending if p["item_id"] == "c1")
        c3 = next(p for p in pending if p["item_id"] == "c3")
        assert client.post(f"/api/connectors/replies/{c1['id']}/approve").json()["status"] == (
            "approved"
        )
        assert client.post(f"/api/connectors/replies/{c3['id']}/reject").status_code == 200
        assert client.post(f"/api/connectors/replies/{c3['id']}/approve").status_code == 409
        assert client.post("/api/connectors/replies/999999/approve").status_code == 404
    [posting] = _run(settings, db, tiny_engine, only="youtube")
    assert posting["result"]["posted_approved"] == 1
    assert youtube.inserted == [{"parentId": "c1", "textOriginal": c1["reply"]}]
    with db.read() as session:
        posted = session.get(ConnectorReply, c1["id"])
        assert posted is not None and posted.status == "posted" and posted.posted_id == "posted-1"

    # With youtube.post, a new comment is answered and posted at once.
    youtube.threads["vid-new"][0].insert(0, _thread(_comment("c4", "UCerin", "Part two?", 0.1)))
    posting_settings = _settings(tiny_model_dir, url, post=True)
    [direct] = _run(posting_settings, db, tiny_engine, only="youtube")
    assert direct["result"]["answered"] == 1 and direct["result"]["posted"] == 1
    assert youtube.inserted[-1]["parentId"] == "c4"
    db.dispose()


def test_a_spent_quota_fails_the_run_and_it_is_tried_again_later(
    settings_env: Path,
    tiny_model_dir: Path,
    tiny_engine: TransformersEngine,
    fake: tuple[FakeYouTube, str],
) -> None:
    youtube, url = fake
    settings = _settings(tiny_model_dir, url, interval_minutes=60)
    db = Database(settings.resolved_database_url)
    db.migrate()
    youtube.quota_spent = True
    [outcome] = _run(settings, db, tiny_engine)
    assert "quota" in outcome["error"] and "tried again later" in outcome["error"]
    with db.read() as session:
        job = session.get(Job, outcome["job_id"])
        assert job is not None and job.status == "failed" and "quotaExceeded" in (job.error or "")
        failure = session.scalars(select(Event).where(Event.kind == "connector_failed")).one()
        assert failure.payload["connector"] == "youtube"
    now = dt.datetime.now(dt.UTC)
    assert due(settings, db) == []
    assert due(settings, db, now + dt.timedelta(minutes=90)) == []  # backed off: 2 x 60 min
    assert due(settings, db, now + dt.timedelta(minutes=121)) == ["youtube"]
    youtube.quota_spent = False
    [retried] = _run(settings, db, tiny_engine, only="youtube")
    assert retried["result"]["answered"] == 2
    db.dispose()


def test_a_sample_answers_as_many_as_the_storage_budget_allows(
    settings_env: Path,
    tiny_model_dir: Path,
    tiny_engine: TransformersEngine,
    fake: tuple[FakeYouTube, str],
) -> None:
    """Two comments wait; the store grew by 10 other interactions over the window, so a budget
    of 0.1 allows one reply, and a later run with no new growth allows none."""
    _, url = fake
    settings = _settings(tiny_model_dir, url, pick="sample", storage_budget=0.1)
    db = Database(settings.resolved_database_url)
    db.migrate()
    for i in range(10):
        record_interaction(
            db, id=f"chat-{i}", user_id="alice", kind="chat", model="m", version_id=None,
            messages=[{"role": "user", "content": "hi"}], response="hello", finish_reason="stop",
            prompt_tokens=1, completion_tokens=1, latency_ms=1.0, chat_template=None,
        )  # fmt: skip
    [first] = _run(settings, db, tiny_engine)
    assert first["result"]["answered"] == 1
    [second] = _run(settings, db, tiny_engine, only="youtube")
    assert second["result"]["answered"] == 0
    db.dispose()
