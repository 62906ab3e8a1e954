// Voice commands: one recognized phrase in, one command object out. Executing it is
// controller.js's job; this module only reads words.

import { parseNumber, splitTrailingNumber } from "./numbers.js";

/** Every command, with the phrase that says it: shown in the panel's help. */
export const COMMANDS = [
  ["listen", "list the media on the page (then “play <number>”)"],
  ["play <number>", "play that medium from the last “listen”"],
  ["mute / unmute", "mute or unmute whatever plays"],
  ["start feedback / stop feedback", "hear the page's layout as you move and scroll"],
  ["layout", "hear the visible page once"],
  ["find <words>", "search the page; kept in the find history"],
  ["find again / find together / find history", "repeat the last, search all earlier words, read them"],
  ["scroll up|down|left|right [number]", "a screen, or that many lines (negative: the other way)"],
  ["scroll to top|bottom", "to either end of the page"],
  ["move next|previous [number]", "move the focus through the links; “move to <number>”"],
  ["open", "follow the focused link"],
  ["go back / go forward", "the tab's history"],
  ["switch to <name>", "the tab named by a chord (reopened from history if closed)"],
  ["next tab / previous tab", "the neighbouring tab"],
  ["ask <question>", "ask selftune; the answer is read aloud"],
  ["start recording / pause recording / play back", "the MIDI and command session"],
  ["send session", "send the recorded session's transcript to selftune as an import"],
  ["repeat / stop", "say the last answer again / stop talking"],
];

const DIRECTIONS = new Set(["up", "down", "left", "right"]);
const FORWARD = new Set(["next", "down", "forward", "on"]);
const BACKWARD = new Set(["previous", "back", "up", "backward"]);

function words(text) {
  return String(text).trim().toLowerCase().replace(/[.!?]+$/, "").split(/\s+/).filter(Boolean);
}

function scroll(rest) {
  if (rest[0] === "to" || rest[0] === "the") {
    const end = rest[rest.length - 1];
    if (end === "top" || end === "bottom") return { name: "scroll", to: end };
    return null;
  }
  if (!DIRECTIONS.has(rest[0])) return null;
  const amount = rest.length > 1 ? parseNumber(rest.slice(1).join(" ")) : null;
  if (rest.length > 1 && amount === null) return null;
  return { name: "scroll", direction: rest[0], amount };
}

function move(rest) {
  if (rest[0] === "to") {
    const index = parseNumber(rest.slice(1).join(" "));
    return index === null ? null : { name: "move", to: index };
  }
  const [head, count] = splitTrailingNumber(rest.join(" "));
  const direction = head.split(" ")[0] || "next";
  let steps = count ?? 1;
  if (BACKWARD.has(direction)) steps = -steps;
  else if (!FORWARD.has(direction)) return null;
  return { name: "move", steps };
}

function find(rest) {
  const text = rest.join(" ");
  if (text === "again") return { name: "find-again" };
  if (text === "together" || text === "all" || text === "everything") return { name: "find-together" };
  if (text === "history") return { name: "find-history" };
  if (text === "") return null;
  return { name: "find", words: text };
}

/** The command ``phrase`` says: ``{name, ...}``, or ``{name: "unknown", text}``. */
export function parseCommand(phrase) {
  const w = words(phrase);
  const text = w.join(" ");
  const rest = w.slice(1);
  const simple = {
    listen: "listen", mute: "mute", unmute: "unmute", layout: "layout", open: "open",
    "start feedback": "feedback-on", "stop feedback": "feedback-off",
    "go back": "back", "go forward": "forward", "next tab": "next-tab",
    "previous tab": "previous-tab", "start recording": "record", "pause recording": "pause",
    "stop recording": "pause", "play back": "play-back", playback: "play-back",
    repeat: "repeat", stop: "stop", "send session": "send-session", "clear find history": "find-clear",
  };
  if (text in simple) return { name: simple[text] };
  let result = null;
  switch (w[0]) {
    case "scroll":
      result = scroll(rest);
      break;
    case "move":
      result = move(rest);
      break;
    case "find":
    case "search":
      result = find(rest);
      break;
    case "play":
    case "listen": {
      const index = parseNumber(rest.join(" ").replace(/^(to |number )/, ""));
      result = index === null ? null : { name: "play", index };
      break;
    }
    case "ask":
      result = rest.length ? { name: "ask", question: phrase.trim().replace(/^ask\s+/i, "") } : null;
      break;
    case "switch": {
      const name = rest.join(" ").replace(/^(to\b\s*)?(the\b\s*)?(tab\b\s*)?/, "").replace(/\s+tab$/, "");
      result = name ? { name: "switch", tab: name } : null;
      break;
    }
  }
  return result ?? { name: "unknown", text: phrase };
}
