"""Recording: MIDI keys and voice commands saved per tab with their timing, exported as a
standard MIDI file that mido reads back with the same notes and timings, imported again, and
played back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mido

from tests.extension.conftest import Browser, eventually, midi, run_command, spoken, wait_spoken


def _export(panel: Any, path: Path) -> bytes:
    with panel.expect_download() as download:
        panel.click("#export")
    download.value.save_as(path)
    return path.read_bytes()


def _read(path: Path) -> dict[str, list[tuple[float, str, Any]]]:
    """Each track's events: (seconds from the file's start, type, note or text)."""
    song = mido.MidiFile(path)
    assert (song.type, song.ticks_per_beat) == (1, 500)
    tempo = next(m.tempo for m in song.tracks[0] if m.type == "set_tempo")
    tracks = {}
    for track in song.tracks[1:]:
        ticks = 0
        events: list[tuple[float, str, Any]] = []
        for message in track:
            ticks += message.time
            at = mido.tick2second(ticks, song.ticks_per_beat, tempo)
            if message.type in ("note_on", "note_off"):
                events.append((at, message.type, (message.note, message.velocity)))
            elif message.type == "text":
                events.append((at, "text", message.text))
        tracks[track.name] = events
    return tracks


def test_a_session_exports_as_midi_and_imports_again(
    browser: Browser, site: str, tmp_path: Path
) -> None:
    shop = browser.open(f"{site}/shop")
    browser.open(f"{site}/news")
    panel = browser.panel()
    panel.click("#listen")
    shop.bring_to_front()
    clicked = panel.evaluate("performance.now()")
    panel.click("#record")
    started = panel.evaluate("performance.now()")  # recording started between the two
    eventually(panel, lambda: browser.icon() == ("recording", "REC"), "the recording icon")

    def key(note: int, velocity: int, hold_ms: int) -> None:
        midi(panel, [0x90, note, velocity])
        panel.wait_for_timeout(hold_ms)
        midi(panel, [0x80, note, 0])
        panel.wait_for_timeout(60)

    key(49, 90, 150)  # scroll up, on the shop's tab
    key(50, 70, 110)  # scroll down
    before = len(spoken(panel))
    midi(panel, [0x90, 59, 100])  # next tab: the news
    wait_spoken(panel, lambda s: s == "News", before)
    midi(panel, [0x80, 59, 0])  # released on the news' tab
    panel.wait_for_timeout(80)
    run_command(panel, "scroll down")
    panel.wait_for_timeout(40)
    before = len(spoken(panel))
    key(53, 100, 90)  # move to the previous link: there is none
    wait_spoken(panel, lambda s: s == "No links here", before)
    panel.click("#record")  # pause
    eventually(panel, lambda: browser.icon() == ("listening", "ON"), "the listening icon")
    summary = panel.text_content("#session-summary")
    assert summary == "2 tracks, 9 events"
    key(49, 90, 20)  # paused: interaction goes on, nothing is recorded
    assert panel.text_content("#session-summary") == summary

    exported = _export(panel, tmp_path / "session.mid")
    tracks = _read(tmp_path / "session.mid")
    assert list(tracks) == ["Shop", "News"]

    def notes(name: str) -> list[tuple[str, Any]]:
        return [(kind, value) for _, kind, value in tracks[name]]

    assert notes("Shop") == [
        ("note_on", (49, 90)),
        ("note_off", (49, 0)),
        ("note_on", (50, 70)),
        ("note_off", (50, 0)),
        ("note_on", (59, 100)),
    ]
    assert notes("News") == [
        ("note_off", (59, 0)),
        ("text", "command: scroll down"),
        ("note_on", (53, 100)),
        ("note_off", (53, 0)),
    ]

    # Timings: every note where it was played, to the millisecond the file can hold.
    played = panel.evaluate("window.__fake.midiLog")[:-2]  # the last key was while paused
    file_times = sorted(
        at for events in tracks.values() for at, kind, _ in events if kind != "text"
    )
    assert len(played) == len(file_times) == 8
    first = played[0]["timeStamp"]
    for event, at in zip(played, file_times, strict=True):
        assert abs((event["timeStamp"] - first) / 1000 - (at - file_times[0])) <= 0.001
    [(command_at, _, _)] = [e for e in tracks["News"] if e[1] == "text"]
    assert file_times[5] < command_at < file_times[6]
    # The session's clock starts when recording starts.
    assert (first - started) / 1000 - 0.001 <= file_times[0] <= (first - clicked) / 1000 + 0.001

    # Import: a fresh panel gets the same session, which exports to the same bytes.
    panel.close()
    panel = browser.panel()
    assert panel.text_content("#session-summary") == "0 tracks, 0 events"
    panel.set_input_files("#import", str(tmp_path / "session.mid"))
    panel.wait_for_selector(f"#session-summary:text('{summary}')")
    assert panel.locator("#session-tracks li").all_text_contents() == [
        "Shop: 5 events",
        "News: 4 events",
    ]
    assert _export(panel, tmp_path / "again.mid") == exported

    # Playback, from the tab where the recording started: the keys act again (the next-tab
    # key switches to the news) and the command runs again.
    panel.click("#listen")
    shop.bring_to_front()
    before = len(spoken(panel))
    panel.click("#play-back")
    wait_spoken(panel, lambda s: s == "No links here", before)
    assert spoken(panel)[before:] == ["News", "No links here"]
