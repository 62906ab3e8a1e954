import assert from "node:assert/strict";
import { test } from "node:test";

import { COMMANDS, parseCommand } from "../../../extension/lib/commands.js";

test("each command", () => {
  const cases = {
    listen: { name: "listen" },
    "Listen two": { name: "play", index: 2 },
    "play number 3": { name: "play", index: 3 },
    mute: { name: "mute" },
    "Unmute.": { name: "unmute" },
    "start feedback": { name: "feedback-on" },
    "stop feedback": { name: "feedback-off" },
    "find red apples": { name: "find", words: "red apples" },
    "find again": { name: "find-again" },
    "find together": { name: "find-together" },
    "find history": { name: "find-history" },
    "clear find history": { name: "find-clear" },
    "scroll down": { name: "scroll", direction: "down", amount: null },
    "scroll up two to the fourth": { name: "scroll", direction: "up", amount: 16 },
    "scroll left minus three": { name: "scroll", direction: "left", amount: -3 },
    "scroll to the bottom": { name: "scroll", to: "bottom" },
    "move next": { name: "move", steps: 1 },
    "move back three": { name: "move", steps: -3 },
    "move to twelve": { name: "move", to: 12 },
    open: { name: "open" },
    "go back": { name: "back" },
    "switch to shopping": { name: "switch", tab: "shopping" },
    "switch to the tab news": { name: "switch", tab: "news" },
    "next tab": { name: "next-tab" },
    "ask What is LoRA?": { name: "ask", question: "What is LoRA?" },
    "start recording": { name: "record" },
    "pause recording": { name: "pause" },
    "play back": { name: "play-back" },
    repeat: { name: "repeat" },
  };
  for (const [phrase, command] of Object.entries(cases)) assert.deepEqual(parseCommand(phrase), command, phrase);
});

test("unknown phrases and incomplete commands are not understood", () => {
  for (const phrase of ["fly me to the moon", "scroll sideways", "scroll down apples", "find", "ask", "switch to", "move sideways"]) {
    assert.deepEqual(parseCommand(phrase), { name: "unknown", text: phrase }, phrase);
  }
});

test("the help lists every command", () => {
  assert.ok(COMMANDS.length >= 15);
  for (const [say, does] of COMMANDS) assert.ok(say && does);
});
