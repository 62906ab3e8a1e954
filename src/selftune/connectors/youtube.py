"""The YouTube comment responder: answers new comments on a channel's recent videos.

Each run (a timestep job, ``selftune.connectors.schedule``):

1. posts the replies a person approved since the last run (``comments.insert``);
2. lists the channel's uploads (``channels.list`` for the uploads playlist, then
   ``playlistItems.list``, newest first) published in the last ``youtube.window_days``;
3. for each of those videos reads its comment threads, newest first, up to
   ``youtube.max_comment_pages`` pages; a thread is new when its last comment is not the
   channel's own and has not been answered before (``connector_replies.item_id``);
4. answers the latest ``youtube.replies_per_video`` new ones with the served model, from its own
   prompt (``youtube.instructions``, the video's title, the thread oldest first), with links to
   domains outside ``youtube.allowed_link_domains`` removed;
5. records each as an interaction of kind ``youtube`` by the commenter (user
   ``youtube:<their channel id>``) and as a connector reply, queued for approval or, with
   ``youtube.post``, posted at once.

A video that falls out of the window is marked done (event ``youtube_video_done``) and not read
again. A spent quota (403 ``quotaExceeded``) or refused credentials (401) end the run with a
message; the schedule tries again later, backing off.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import random
import re
import time
import uuid
from typing import Any

from sqlalchemy import func, select

from selftune.config import Settings
from selftune.connectors import ConnectorRun, ConnectorUnavailable
from selftune.engines.base import AdapterRef
from selftune.registry.versions import serving_target
from selftune.store import connector_replies
from selftune.store.db import Database
from selftune.store.schema import ConnectorReply, Conversation, Event, Interaction, utcnow
from selftune.store.users import ensure_user

__all__ = ["YouTubeResponder", "adjust_links"]

log = logging.getLogger(__name__)

NAME = "youtube"
_SCOPES = ["https://www.googleapis.com/auth/youtube.force-ssl"]
_QUOTA = {"quotaExceeded", "dailyLimitExceeded", "rateLimitExceeded", "userRateLimitExceeded"}
# A link, without the punctuation that ends the sentence around it.
_URL = re.compile(r"(?:https?://|www\.)[^\s<>()\"']*[^\s<>()\"'.,;:!?]", re.IGNORECASE)


def adjust_links(text: str, allowed: list[str]) -> str:
    """``text`` without links to hosts outside ``allowed`` (a domain allows its subdomains)."""

    def keep(match: re.Match[str]) -> str:
        url = match[0]
        host = re.sub(r"^(?:https?://)?", "", url, flags=re.IGNORECASE).split("/")[0]
        host = host.split(":")[0].lower()
        ok = any(host == d.lower() or host.endswith("." + d.lower()) for d in allowed)
        return url if ok else ""

    return re.sub(r"[ \t]{2,}", " ", _URL.sub(keep, text)).strip()


def _reasons(exc: Any) -> set[str]:
    try:
        body = json.loads(exc.content)
        return {str(e.get("reason")) for e in body.get("error", {}).get("errors", [])}
    except (ValueError, AttributeError, TypeError):
        return set()


class _Api:
    """The few YouTube Data API v3 calls the responder makes, with its errors explained."""

    def __init__(self, settings: Settings) -> None:
        from googleapiclient.discovery import build

        yt = settings.youtube
        options = {"api_endpoint": yt.api_endpoint}
        if yt.credentials_file:
            from google.oauth2.credentials import Credentials

            credentials = Credentials.from_authorized_user_file(yt.credentials_file, _SCOPES)
            self.service = build(
                "youtube",
                "v3",
                credentials=credentials,
                static_discovery=True,
                client_options=options,
                cache_discovery=False,
            )
        else:
            self.service = build(
                "youtube",
                "v3",
                developerKey=yt.api_key,
                static_discovery=True,
                client_options=options,
                cache_discovery=False,
            )

    def call(self, request: Any, *, video: str | None = None) -> dict[str, Any]:
        from google.auth.exceptions import RefreshError
        from googleapiclient.errors import HttpError

        try:
            result: dict[str, Any] = request.execute()
            return result
        except RefreshError as exc:
            raise ConnectorUnavailable(
                f"the OAuth credentials in youtube.credentials_file expired or were revoked "
                f"({exc}); authorize again and replace the file"
            ) from exc
        except HttpError as exc:
            status, reasons = exc.resp.status, _reasons(exc)
            if status == 403 and reasons & _QUOTA:
                raise ConnectorUnavailable(
                    f"the YouTube API quota is spent (403 {', '.join(sorted(reasons))}); it "
                    "resets daily at midnight Pacific time. The run is tried again later, or "
                    "ask Google for more quota"
                ) from exc
            if status == 401:
                raise ConnectorUnavailable(
                    "YouTube refused the credentials (401): the API key (youtube.api_key) or "
                    "the OAuth token (youtube.credentials_file) expired or was revoked; renew it"
                ) from exc
            if video is not None and status in (403, 404):
                raise _VideoClosed(f"video {video}: {status} {sorted(reasons)}") from exc
            raise ConnectorUnavailable(
                f"the YouTube API answered {status} ({', '.join(sorted(reasons)) or exc}); "
                "check youtube.channel_id and the credentials"
            ) from exc


class _VideoClosed(Exception):
    """One video's comments cannot be read (disabled, private): it is skipped."""


def _comment(resource: dict[str, Any]) -> dict[str, str]:
    snippet = resource.get("snippet", {})
    return {
        "id": resource.get("id", ""),
        "author": snippet.get("authorDisplayName", ""),
        "author_id": snippet.get("authorChannelId", {}).get("value", ""),
        "text": snippet.get("textOriginal") or snippet.get("textDisplay", ""),
        "published": snippet.get("publishedAt", ""),
    }


def _chain(thread: dict[str, Any]) -> list[dict[str, str]]:
    """The thread's comments, oldest first (the API sends only some of a thread's replies)."""
    top = _comment(thread["snippet"]["topLevelComment"])
    replies = [_comment(c) for c in thread.get("replies", {}).get("comments", [])]
    return [top, *sorted(replies, key=lambda c: c["published"])]


def _published(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


class YouTubeResponder:
    name = NAME
    _random = random.Random()  # which comments a sample answers

    def enabled(self, settings: Settings) -> bool:
        return settings.youtube.enabled

    def interval_seconds(self, settings: Settings) -> float:
        return settings.youtube.interval_minutes * 60

    def run(self, run: ConnectorRun) -> dict[str, Any]:
        settings, db = run.settings, run.db
        api = _Api(settings)
        posted = self._post_approved(api, db)
        run.report(0.05, "listing videos")
        videos, outside = self._videos(api, settings)
        done = self._mark_done(db, outside)
        summary: dict[str, Any] = {
            "videos": len(videos),
            "posted_approved": posted,
            "answered": 0,
            "queued": 0,
            "posted": 0,
            "skipped_answered": 0,
            "empty": 0,
            "videos_done": done,
        }
        budget = self._budget(settings, db) if settings.youtube.pick == "sample" else None
        for i, (video_id, title) in enumerate(videos):
            run.report(0.1 + 0.9 * i / max(1, len(videos)), f"video {video_id}")
            try:
                threads = self._new_threads(api, settings, db, video_id, summary)
            except _VideoClosed as exc:
                log.info("skipping %s", exc)
                continue
            if budget is not None:  # a random sample, as many as the budget has room for
                size = min(len(threads), settings.youtube.replies_per_video, budget)
                threads = self._random.sample(threads, size)
                budget -= size
            for thread in threads:
                reply_id, status = self._answer(run, video_id, title, thread)
                if reply_id is None:  # nothing usable: tried again at the next run
                    summary["empty"] += 1
                    continue
                summary["answered"] += 1
                if status == "approved":
                    self._post(api, db, reply_id)
                    summary["posted"] += 1
                else:
                    summary["queued"] += 1
        return summary

    # --- reading ------------------------------------------------------------------------------
    def _videos(self, api: _Api, settings: Settings) -> tuple[list[tuple[str, str]], list[str]]:
        """(video id, title) of the uploads inside the window, newest first; and the ids of
        those just outside it that the pages read showed."""
        yt = settings.youtube
        channels = api.call(api.service.channels().list(part="contentDetails", id=yt.channel_id))
        if not channels.get("items"):
            raise ConnectorUnavailable(f"no YouTube channel {yt.channel_id!r} (youtube.channel_id)")
        uploads = channels["items"][0]["contentDetails"]["relatedPlaylists"]["uploads"]
        cutoff = utcnow() - dt.timedelta(days=yt.window_days)
        inside: list[tuple[str, str]] = []
        outside: list[str] = []
        token: str | None = None
        while True:
            page = api.call(
                api.service.playlistItems().list(
                    part="snippet,contentDetails",
                    playlistId=uploads,
                    maxResults=50,
                    pageToken=token,
                )
            )
            for item in page.get("items", []):
                details = item.get("contentDetails", {})
                when = details.get("videoPublishedAt") or item["snippet"].get("publishedAt")
                pair = (details["videoId"], item.get("snippet", {}).get("title", ""))
                (inside.append(pair) if _published(when) >= cutoff else outside.append(pair[0]))
            token = page.get("nextPageToken")
            if outside or not token:  # uploads come newest first: the rest are older
                return inside, outside

    def _new_threads(
        self, api: _Api, settings: Settings, db: Database, video_id: str, summary: dict[str, Any]
    ) -> list[list[dict[str, str]]]:
        """The latest ``replies_per_video`` threads of a video awaiting an answer."""
        yt = settings.youtube
        found: list[list[dict[str, str]]] = []
        token: str | None = None
        for _ in range(yt.max_comment_pages):
            page = api.call(
                api.service.commentThreads().list(
                    part="snippet,replies",
                    videoId=video_id,
                    maxResults=100,
                    order="time",
                    textFormat="plainText",
                    pageToken=token,
                ),
                video=video_id,
            )
            chains = [_chain(t) for t in page.get("items", [])]
            waiting = [c for c in chains if c[-1]["author_id"] != yt.channel_id]
            seen = connector_replies.answered(db, NAME, (c[-1]["id"] for c in waiting))
            summary["skipped_answered"] += len(seen)
            found += [c for c in waiting if c[-1]["id"] not in seen]
            token = page.get("nextPageToken")
            if (yt.pick == "latest" and len(found) >= yt.replies_per_video) or not token:
                break
        found.sort(key=lambda c: c[-1]["published"], reverse=True)
        return found[: yt.replies_per_video] if yt.pick == "latest" else found

    def _budget(self, settings: Settings, db: Database) -> int:
        """Replies the storage budget still allows: a share of the interactions everything
        else recorded over the window, less the replies made over it already."""
        cutoff = utcnow() - dt.timedelta(days=settings.youtube.window_days)
        with db.read() as session:
            grown = session.scalar(
                select(func.count(Interaction.id)).where(
                    Interaction.created_at >= cutoff, Interaction.kind != NAME
                )
            )
            made = session.scalar(
                select(func.count(ConnectorReply.id)).where(
                    ConnectorReply.connector == NAME, ConnectorReply.created_at >= cutoff
                )
            )
        return max(0, math.floor(settings.youtube.storage_budget * (grown or 0)) - (made or 0))

    def _mark_done(self, db: Database, videos: list[str]) -> int:
        if not videos:
            return 0
        with db.write() as session:
            answered = set(
                session.scalars(
                    select(ConnectorReply.video_id).where(
                        ConnectorReply.connector == NAME, ConnectorReply.video_id.in_(videos)
                    )
                )
            )
            marked = {
                e.payload.get("video_id")
                for e in session.scalars(select(Event).where(Event.kind == "youtube_video_done"))
            }
            new = sorted(answered - marked)
            for video_id in new:
                session.add(Event(kind="youtube_video_done", payload={"video_id": video_id}))
            return len(new)

    # --- answering ----------------------------------------------------------------------------
    def _answer(
        self, run: ConnectorRun, video_id: str, title: str, chain: list[dict[str, str]]
    ) -> tuple[int | None, str]:
        """Generate and record the reply to the last comment of ``chain``; (reply id, status),
        or (None, "") when the model wrote nothing usable."""
        settings, db, engine = run.settings, run.db, run.engine
        yt = settings.youtube
        thread = "\n".join(f"{c['author']}: {c['text']}" for c in chain)
        messages = [
            {"role": "system", "content": yt.instructions},
            {
                "role": "user",
                "content": f'Comments on the video "{title}":\n\n{thread}\n\n'
                "Write the channel's reply to the last comment.",
            },
        ]
        with db.read() as session:
            target = serving_target(session)
        adapter = (
            AdapterRef(target.version_id, target.name, target.path)
            if target.version_id is not None and target.path is not None
            else None
        )
        started = time.perf_counter()
        prompt = engine.render_chat(messages, target.chat_template)
        raw = engine.greedy_batch([prompt], yt.max_reply_tokens, adapter)[0]
        reply = adjust_links(raw.strip(), yt.allowed_link_domains)
        if not reply:
            return None, ""
        completion_tokens = engine.count_tokens(raw)
        status = "approved" if yt.post else "pending"
        user_id = f"youtube:{chain[-1]['author_id'] or chain[-1]['author']}"
        with db.write() as session:  # the interaction and its reply, or neither
            ensure_user(session, user_id)
            conversation = Conversation(id=f"conv-{uuid.uuid4().hex}", user_id=user_id)
            session.add(conversation)
            interaction = Interaction(
                id=f"yt-{uuid.uuid4().hex}",
                user_id=user_id,
                conversation_id=conversation.id,
                kind=NAME,
                model=settings.serve.model_name,
                version_id=target.version_id,
                messages=messages,
                response=reply,
                finish_reason="length" if completion_tokens >= yt.max_reply_tokens else "stop",
                prompt_tokens=engine.count_tokens(prompt),
                completion_tokens=completion_tokens,
                latency_ms=round((time.perf_counter() - started) * 1000, 2),
                chat_template=None,
            )
            session.add(interaction)
            session.flush()
            item = ConnectorReply(
                connector=NAME,
                item_id=chain[-1]["id"],
                parent_id=chain[0]["id"],
                video_id=video_id,
                user_id=user_id,
                interaction_id=interaction.id,
                chain=[{"author": c["author"], "text": c["text"]} for c in chain],
                reply=reply,
                status=status,
            )
            session.add(item)
            session.flush()
            session.add(
                Event(
                    kind=f"connector_reply_{'written' if status == 'pending' else 'approved'}",
                    payload={"reply_id": item.id, "connector": NAME, "video_id": video_id},
                )
            )
            return item.id, status

    # --- posting ------------------------------------------------------------------------------
    def _post(self, api: _Api, db: Database, reply_id: int) -> None:
        """Post an approved reply; when the API refuses, it stays approved for a later run."""
        with db.read() as session:
            reply = session.get(ConnectorReply, reply_id)
            assert reply is not None
            body = {"snippet": {"parentId": reply.parent_id, "textOriginal": reply.reply}}
        posted = api.call(api.service.comments().insert(part="snippet", body=body))
        connector_replies.mark_posted(db, reply_id, str(posted.get("id", "")))

    def _post_approved(self, api: _Api, db: Database) -> int:
        replies = connector_replies.approved_replies(db, NAME)
        for reply in replies:
            self._post(api, db, reply.id)
        return len(replies)
