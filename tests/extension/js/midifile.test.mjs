import assert from "node:assert/strict";
import { test } from "node:test";

import { readMidi, writeMidi } from "../../../extension/lib/midifile.js";

test("the bytes of a small file, by the standard", () => {
  const bytes = writeMidi({ ppq: 96, tracks: [{ name: "", events: [
    { tick: 0, type: "note_on", channel: 0, note: 60, velocity: 100 },
    { tick: 200, type: "note_off", channel: 0, note: 60, velocity: 0 },
  ] }] });
  assert.deepEqual([...bytes], [
    0x4d, 0x54, 0x68, 0x64, 0, 0, 0, 6, 0, 1, 0, 1, 0, 96, // MThd: format 1, one track, 96 ppq
    0x4d, 0x54, 0x72, 0x6b, 0, 0, 0, 13, // MTrk, 13 bytes
    0x00, 0x90, 60, 100, // delta 0, note on
    0x81, 0x48, 0x80, 60, 0, // delta 200 as a variable-length quantity, note off
    0x00, 0xff, 0x2f, 0x00, // end of track
  ]);
});

test("write then read gives the same song", () => {
  const song = { ppq: 500, tracks: [
    { name: "tempo", events: [{ tick: 0, type: "set_tempo", tempo: 500000 }] },
    { name: "Café ♪", events: [
      { tick: 5, type: "note_on", channel: 2, note: 48, velocity: 90 },
      { tick: 5, type: "text", text: "command: find apples" },
      { tick: 20000, type: "control_change", channel: 2, control: 64, value: 127 },
      { tick: 2 ** 21, type: "note_off", channel: 2, note: 48, velocity: 0 },
    ] },
  ] };
  assert.deepEqual(readMidi(writeMidi(song)), song);
});

test("running status and note-on with velocity 0 are read", () => {
  const bytes = new Uint8Array([
    0x4d, 0x54, 0x68, 0x64, 0, 0, 0, 6, 0, 0, 0, 1, 0, 120,
    0x4d, 0x54, 0x72, 0x6b, 0, 0, 0, 11,
    0x00, 0x90, 64, 80, 0x10, 64, 0, // running status: a note on with velocity 0
    0x00, 0xff, 0x2f, 0x00,
  ]);
  assert.deepEqual(readMidi(bytes).tracks[0].events, [
    { tick: 0, type: "note_on", channel: 0, note: 64, velocity: 80 },
    { tick: 16, type: "note_off", channel: 0, note: 64, velocity: 0 },
  ]);
});

test("what is not a MIDI file says so", () => {
  assert.throws(() => readMidi(new TextEncoder().encode("RIFF....")), /not a standard MIDI file/);
  assert.throws(() => writeMidi({ ppq: 96, tracks: [{ events: [{ tick: -1, type: "note_on", note: 1, velocity: 1 }] }] }), /ticks must be whole/);
});
