import assert from "node:assert/strict";
import { test } from "node:test";

import { ChordDetector, chordKey } from "../../../extension/lib/chords.js";

test("three keys held together with C3 make a chord when released", () => {
  const d = new ChordDetector();
  assert.deepEqual(d.noteOn(48, 0), { consumed: true, chord: null });
  assert.deepEqual(d.noteOn(55, 30), { consumed: true, chord: null });
  assert.deepEqual(d.noteOn(52, 60), { consumed: true, chord: null });
  assert.equal(d.noteOff(48, 400), null);
  assert.equal(d.noteOff(52, 410), null);
  assert.deepEqual(d.noteOff(55, 420), [48, 52, 55]);
  assert.equal(d.pending, false);
  // afterwards keys fire their bindings again
  assert.deepEqual(d.noteOn(52, 500), { consumed: false, chord: null });
});

test("tapped one after another within 2 s", () => {
  const d = new ChordDetector();
  d.noteOn(48, 0);
  assert.equal(d.noteOff(48, 100), null); // one note: not yet
  d.noteOn(50, 700);
  assert.equal(d.noteOff(50, 800), null); // two notes: not yet
  d.noteOn(53, 1500);
  assert.deepEqual(d.noteOff(53, 1600), [48, 50, 53]);
});

test("a chord needs C3 and three keys within the window", () => {
  const d = new ChordDetector();
  d.noteOn(50, 0); d.noteOn(52, 10); d.noteOn(55, 20); // no C3: plain keys
  assert.equal(d.noteOff(50, 100), null);
  assert.equal(d.pending, false);

  const late = new ChordDetector();
  late.noteOn(48, 0);
  late.noteOn(52, 100);
  late.noteOff(48, 200);
  late.noteOff(52, 210);
  assert.equal(late.expire(1999), null);
  assert.equal(late.pending, true);
  assert.equal(late.expire(2000), null); // window over with two notes: no chord
  assert.equal(late.pending, false);
  assert.deepEqual(late.noteOn(55, 2100), { consumed: false, chord: null });
});

test("a held chord completes when its window ends", () => {
  const d = new ChordDetector();
  d.noteOn(48, 0); d.noteOn(52, 10); d.noteOn(55, 20); d.noteOn(59, 30);
  assert.deepEqual(d.expire(2000), [48, 52, 55, 59]);
  // a key after the window starts fresh, and returns nothing stale
  assert.deepEqual(d.noteOn(60, 2500), { consumed: false, chord: null });
});

test("chord keys are order-free", () => {
  assert.equal(chordKey([55, 48, 52]), "48-52-55");
});
