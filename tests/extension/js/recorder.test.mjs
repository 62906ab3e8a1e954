import assert from "node:assert/strict";
import { test } from "node:test";

import { readMidi } from "../../../extension/lib/midifile.js";
import { Session } from "../../../extension/lib/recorder.js";

function clock() {
  const c = { t: 1000 };
  return [c, () => c.t];
}

test("events per tab, timed from the start, pauses left out", () => {
  const [c, now] = clock();
  const s = new Session(now);
  assert.equal(s.midi(1, "A", [0x90, 60, 1], 1000), false); // not recording yet
  s.start();
  s.midi(1, "A", [0x90, 50, 100], 1010);
  s.command(2, "B", "find apples", 1100);
  c.t = 1200;
  s.pause();
  assert.equal(s.midi(1, "A", [0x80, 50, 0], 1300), false); // paused: not recorded
  c.t = 5000;
  s.start();
  s.midi(1, "A", [0x80, 50, 0], 5050);
  assert.deepEqual(s.timeline().map((e) => [e.tab, e.time, e.kind]), [
    [1, 10, "midi"], [2, 100, "command"], [1, 250, "midi"],
  ]);
  assert.equal(s.eventCount, 3);
});

test("a session as a MIDI file: a tempo track, then one per tab, one tick per ms", () => {
  const [, now] = clock();
  const s = new Session(now);
  s.start();
  s.midi(7, "Shop", [0x91, 50, 100], 1010.4);
  s.midi(7, "Shop", [0x81, 50, 0], 1250.6);
  s.command(8, "News", "scroll down", 1400);
  const song = readMidi(s.toMidi());
  assert.equal(song.ppq, 500);
  assert.deepEqual(song.tracks.map((t) => t.name), ["handsfree session", "Shop", "News"]);
  assert.deepEqual(song.tracks[0].events, [{ tick: 0, type: "set_tempo", tempo: 500000 }]);
  assert.deepEqual(song.tracks[1].events, [
    { tick: 10, type: "note_on", channel: 1, note: 50, velocity: 100 },
    { tick: 251, type: "note_off", channel: 1, note: 50, velocity: 0 },
  ]);
  assert.deepEqual(song.tracks[2].events, [{ tick: 400, type: "text", text: "command: scroll down" }]);

  const back = Session.fromMidi(s.toMidi());
  assert.deepEqual(back.timeline().map((e) => [e.name, e.time, e.kind, e.data ?? e.text]), [
    ["Shop", 10, "midi", [0x91, 50, 100]],
    ["Shop", 251, "midi", [0x81, 50, 0]],
    ["News", 400, "command", "scroll down"],
  ]);
  assert.deepEqual([...back.toMidi()], [...s.toMidi()]);
});

test("a transcript: one line an event, in time order, for selftune's imports", () => {
  const [, now] = clock();
  const s = new Session(now);
  s.start();
  s.midi(7, "Shop", [0x90, 48, 100], 1010);
  s.command(8, "News", "find apples", 62500);
  s.midi(7, "Shop", [0x80, 48, 0], 63000.5);
  assert.equal(s.transcript(), [
    "[00:00.010] Shop: pressed C3 (48) at velocity 100",
    "[01:01.500] News: said “find apples”",
    "[01:02.001] Shop: released C3 (48)",
  ].join("\n"));
});
