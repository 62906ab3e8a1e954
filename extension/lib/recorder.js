// Recording: every MIDI message and recognized command, with its time, per tab. A session
// becomes a MIDI file with one track per tab (commands as text events) and back again.
// Time: 500 ticks per quarter note at 120 bpm (tempo 500000 µs), so one tick is one ms.

import { noteName } from "./keymap.js";
import { readMidi, writeMidi } from "./midifile.js";

export const PPQ = 500;
export const TEMPO = 500000;
const COMMAND_PREFIX = "command: ";

/** One recorded event: ``{time, kind: "midi", data: [status, d1, d2]}`` or
 * ``{time, kind: "command", text}``; ``time`` in ms from the start, pauses left out. */
export class Session {
  constructor(now = () => performance.now()) {
    this.now = now;
    this.tracks = new Map(); // tab key → {name, events}
    this.recording = false;
    this.offset = 0; // ms of session time before the current recording stretch
    this.resumedAt = 0;
  }

  start() {
    if (this.recording) return;
    this.resumedAt = this.now();
    this.recording = true;
  }

  /** Stops recording (not interaction); the time paused is left out of the session. */
  pause() {
    if (!this.recording) return;
    this.offset += this.now() - this.resumedAt;
    this.recording = false;
  }

  clear() {
    this.tracks.clear();
    this.offset = 0;
    this.resumedAt = this.now();
  }

  /** Session time (ms) of a moment ``at`` (performance.now()'s clock) while recording. */
  timeOf(at = this.now()) {
    return Math.max(0, this.offset + at - this.resumedAt);
  }

  #track(tab, name) {
    if (!this.tracks.has(tab)) this.tracks.set(tab, { name: name || `tab ${tab}`, events: [] });
    const track = this.tracks.get(tab);
    if (name) track.name = name;
    return track;
  }

  /** Records a MIDI message played on ``tab`` at ``at``; ignored while paused. */
  midi(tab, name, data, at) {
    if (!this.recording) return false;
    this.#track(tab, name).events.push({ time: this.timeOf(at), kind: "midi", data: [...data] });
    return true;
  }

  /** Records a recognized command's words on ``tab``; ignored while paused. */
  command(tab, name, text, at) {
    if (!this.recording) return false;
    this.#track(tab, name).events.push({ time: this.timeOf(at), kind: "command", text });
    return true;
  }

  get eventCount() {
    let n = 0;
    for (const t of this.tracks.values()) n += t.events.length;
    return n;
  }

  /** Every event of every track in time order, each with its ``tab``: for playback. */
  timeline() {
    const all = [];
    for (const [tab, track] of this.tracks) for (const e of track.events) all.push({ ...e, tab, name: track.name });
    return all.sort((a, b) => a.time - b.time);
  }

  /** The session as text, one event a line in time order: what selftune imports. */
  transcript() {
    const clock = (ms) => {
      const s = ms / 1000;
      return `${String(Math.floor(s / 60)).padStart(2, "0")}:${(s % 60).toFixed(3).padStart(6, "0")}`;
    };
    return this.timeline()
      .map((e) => {
        if (e.kind === "command") return `[${clock(e.time)}] ${e.name}: said “${e.text}”`;
        const [status, d1, d2 = 0] = e.data;
        const kind = status & 0xf0;
        const what = kind === 0x90 && d2 > 0 ? `pressed ${noteName(d1)} (${d1}) at velocity ${d2}` : kind === 0x80 || kind === 0x90 ? `released ${noteName(d1)} (${d1})` : `control ${d1} = ${d2}`;
        return `[${clock(e.time)}] ${e.name}: ${what}`;
      })
      .join("\n");
  }

  /** The session as a standard MIDI file (Uint8Array): a tempo track, then one per tab. */
  toMidi() {
    const tracks = [{ name: "handsfree session", events: [{ tick: 0, type: "set_tempo", tempo: TEMPO }] }];
    for (const track of this.tracks.values()) {
      const events = track.events.map((e) => {
        const tick = Math.round(e.time);
        if (e.kind === "command") return { tick, type: "text", text: COMMAND_PREFIX + e.text };
        const [status, d1, d2] = e.data;
        const kind = status & 0xf0;
        const channel = status & 0x0f;
        if (kind === 0x90 && d2 > 0) return { tick, type: "note_on", channel, note: d1, velocity: d2 };
        if (kind === 0x80 || kind === 0x90) return { tick, type: "note_off", channel, note: d1, velocity: d2 ?? 0 };
        return { tick, type: "control_change", channel, control: d1, value: d2 };
      });
      tracks.push({ name: track.name, events });
    }
    return writeMidi({ ppq: PPQ, tracks });
  }

  /** A session read from a MIDI file (any ppq; the tempo track's first tempo). */
  static fromMidi(bytes, now = () => performance.now()) {
    const song = readMidi(bytes);
    const session = new Session(now);
    let tempo = TEMPO;
    for (const t of song.tracks) for (const e of t.events) if (e.type === "set_tempo") tempo = e.tempo;
    const msPerTick = tempo / 1000 / song.ppq;
    song.tracks.forEach((track, i) => {
      const events = [];
      for (const e of track.events) {
        const time = e.tick * msPerTick;
        if (e.type === "text" && e.text.startsWith(COMMAND_PREFIX)) {
          events.push({ time, kind: "command", text: e.text.slice(COMMAND_PREFIX.length) });
        } else if (e.type === "note_on") {
          events.push({ time, kind: "midi", data: [0x90 | e.channel, e.note, e.velocity] });
        } else if (e.type === "note_off") {
          events.push({ time, kind: "midi", data: [0x80 | e.channel, e.note, e.velocity] });
        } else if (e.type === "control_change") {
          events.push({ time, kind: "midi", data: [0xb0 | e.channel, e.control, e.value] });
        }
      }
      if (events.length) session.tracks.set(`imported-${i}`, { name: track.name || `track ${i}`, events });
    });
    session.offset = Math.max(0, ...session.timeline().map((e) => e.time));
    return session;
  }
}
