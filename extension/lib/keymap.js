// Key bindings: which action each MIDI note runs. The default is a 25-key keyboard from C3
// (48) to C5 (72). Middle C (60) is push-to-talk and cannot be rebound; every other note can.

export const LOWEST_NOTE = 48;
export const KEY_COUNT = 25;
export const PUSH_TO_TALK = 60;

/** Actions a key can run: name → [short label, description]. */
export const ACTIONS = {
  chord: ["chord", "start a chord (with 2+ more keys within 2 s) naming or switching tabs"],
  "scroll-up": ["scroll ↑", "scroll up a screen"],
  "scroll-down": ["scroll ↓", "scroll down a screen"],
  "scroll-top": ["top", "scroll to the top"],
  "scroll-bottom": ["bottom", "scroll to the bottom"],
  "move-previous": ["◀ link", "focus the previous link"],
  "move-next": ["link ▶", "focus the next link"],
  open: ["open", "follow the focused link"],
  back: ["back", "go back in the tab's history"],
  forward: ["fwd", "go forward in the tab's history"],
  "previous-tab": ["◀ tab", "switch to the previous tab"],
  "next-tab": ["tab ▶", "switch to the next tab"],
  talk: ["talk", "push-to-talk: say one command"],
  listen: ["media", "list the media on the page"],
  mute: ["mute", "mute or unmute what plays"],
  "find-again": ["find", "find the last words again"],
  "find-together": ["find all", "find every word in the find history"],
  "feedback-on": ["fb on", "start layout feedback"],
  "feedback-off": ["fb off", "stop layout feedback"],
  layout: ["layout", "hear the visible page once"],
  record: ["rec", "start or pause recording"],
  "play-back": ["play", "play the recorded session back"],
  ask: ["ask", "say a question for selftune"],
  repeat: ["repeat", "say the last answer again"],
  stop: ["stop", "stop talking"],
  none: ["", "nothing"],
};

export const DEFAULT_BINDINGS = Object.freeze({
  48: "chord", 49: "scroll-up", 50: "scroll-down", 51: "scroll-top", 52: "scroll-bottom",
  53: "move-previous", 54: "move-next", 55: "open", 56: "back", 57: "forward",
  58: "previous-tab", 59: "next-tab", 60: "talk", 61: "listen", 62: "mute",
  63: "find-again", 64: "find-together", 65: "feedback-on", 66: "feedback-off", 67: "layout",
  68: "record", 69: "play-back", 70: "ask", 71: "repeat", 72: "stop",
});

const NAMES = ["C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B"];

/** "C3" for 48, "C4" (middle C) for 60. */
export function noteName(note) {
  return `${NAMES[note % 12]}${Math.floor(note / 12) - 1}`;
}

export function isBlackKey(note) {
  return NAMES[note % 12].includes("#");
}

/** The bindings with ``note`` bound to ``action``; throws when that is not allowed. */
export function bind(bindings, note, action) {
  if (!Number.isInteger(note) || note < 0 || note > 127) {
    throw new Error(`MIDI notes are 0 to 127, not ${note}`);
  }
  if (note === PUSH_TO_TALK) {
    throw new Error("middle C (60) is push-to-talk and cannot be rebound; pick another key");
  }
  if (!(action in ACTIONS) || action === "talk") {
    throw new Error(`unknown action ${JSON.stringify(action)}; choose one of the help's list`);
  }
  return { ...bindings, [note]: action };
}

/** The action for ``note``: middle C is always push-to-talk. */
export function actionFor(bindings, note) {
  if (note === PUSH_TO_TALK) return "talk";
  return bindings[note] ?? "none";
}
