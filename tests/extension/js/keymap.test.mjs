import assert from "node:assert/strict";
import { test } from "node:test";

import { keyboardSvg } from "../../../extension/lib/keyboard_svg.js";
import { ACTIONS, DEFAULT_BINDINGS, KEY_COUNT, LOWEST_NOTE, PUSH_TO_TALK, actionFor, bind, noteName } from "../../../extension/lib/keymap.js";

test("the default layout binds all 25 keys from C3 to C5", () => {
  const notes = Object.keys(DEFAULT_BINDINGS).map(Number);
  assert.equal(notes.length, KEY_COUNT);
  assert.equal(Math.min(...notes), LOWEST_NOTE);
  assert.equal(Math.max(...notes), 72);
  for (const action of Object.values(DEFAULT_BINDINGS)) assert.ok(action in ACTIONS, action);
  assert.equal(DEFAULT_BINDINGS[48], "chord");
  assert.equal(actionFor(DEFAULT_BINDINGS, 60), "talk");
  assert.equal(noteName(48), "C3");
  assert.equal(noteName(61), "C#4");
});

test("every note but middle C can be bound", () => {
  for (let note = 0; note < 128; note++) {
    if (note === PUSH_TO_TALK) {
      assert.throws(() => bind(DEFAULT_BINDINGS, note, "mute"), /middle C \(60\).*cannot be rebound/);
    } else {
      assert.equal(actionFor(bind(DEFAULT_BINDINGS, note, "mute"), note), "mute");
    }
  }
  assert.throws(() => bind(DEFAULT_BINDINGS, 50, "fly"), /unknown action "fly"/);
  assert.throws(() => bind(DEFAULT_BINDINGS, 128, "mute"), /MIDI notes are 0 to 127/);
  assert.equal(actionFor(DEFAULT_BINDINGS, 30), "none");
});

test("the help's picture has 15 white and 10 black keys, labelled", () => {
  const svg = keyboardSvg(bind(DEFAULT_BINDINGS, 72, "layout"));
  assert.equal((svg.match(/<g data-note=/g) ?? []).length, 25);
  assert.equal((svg.match(/fill="#222"/g) ?? []).length, 10);
  assert.equal((svg.match(/<rect [^>]*fill="#(fff|ffe9a8)"/g) ?? []).length, 15);
  assert.match(svg, /<title>C4 \(60\): push-to-talk: say one command<\/title>/);
  assert.match(svg, /<title>C5 \(72\): hear the visible page once<\/title>/);
  assert.ok(svg.startsWith("<svg ") && svg.endsWith("</svg>"));
});
