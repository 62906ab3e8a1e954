// The visible page as sound ("layout"). A sweep over the 5×5 grid in reading order, one slot
// per cell, each cell on its own key of 25 (C3..C5, higher towards the top of the page):
// links play a string trill (violin at the top, viola in the middle, cello at the bottom),
// images a French horn, text a piano. Each kind's density in the cell sets its volume and how
// often its note repeats in the slot. Everything is synthesized with Web Audio oscillators.

export const SLOT_SECONDS = 0.12;
export const LOWEST_NOTE = 48;
const TRILL_RATE = 16; // note changes per second
const TAIL_SECONDS = 0.3;

/** Each voice: how far it is transposed (semitones) and its loudest gain. */
export const VOICES = {
  violin: { transpose: 24, gain: 0.16 },
  viola: { transpose: 12, gain: 0.18 },
  cello: { transpose: 0, gain: 0.2 },
  horn: { transpose: -12, gain: 0.35 },
  piano: { transpose: 0, gain: 0.22 },
};

/** How dense each kind is in one cell, 0..1. */
export function density(cell) {
  return {
    links: Math.min(1, cell.links / 4),
    images: Math.min(1, cell.images / 2),
    text: Math.min(1, cell.text / 300),
  };
}

function stringVoice(row, grid) {
  if (row < grid * 0.4) return "violin";
  if (row < grid * 0.6) return "viola";
  return "cello";
}

export function midiToHz(note) {
  return 440 * 2 ** ((note - 69) / 12);
}

/** The notes to play for a layout (see layout.js): one per cell and kind present,
 * ``[{time, duration, voice, note, gain, repeats}]``; the note sounds ``repeats`` times. */
export function planLayout(layout) {
  const { grid, cells } = layout;
  const notes = [];
  cells.forEach((cell, index) => {
    const row = Math.floor(index / grid);
    const col = index % grid;
    const key = LOWEST_NOTE + (grid - 1 - row) * grid + col; // top of the page sounds higher
    const d = density(cell);
    const kinds = [
      ["links", stringVoice(row, grid)],
      ["images", "horn"],
      ["text", "piano"],
    ];
    for (const [kind, voice] of kinds) {
      if (d[kind] <= 0) continue;
      notes.push({
        time: index * SLOT_SECONDS,
        duration: SLOT_SECONDS,
        voice,
        note: key + VOICES[voice].transpose,
        gain: VOICES[voice].gain * (0.3 + 0.7 * d[kind]),
        repeats: 1 + Math.round(d[kind] * 2), // 1..3 strokes in the slot
      });
    }
  });
  return notes;
}

/** The seconds a layout's sound lasts. */
export function planSeconds(layout) {
  return layout.cells.length * SLOT_SECONDS + TAIL_SECONDS;
}

/** A gain node that sounds ``n.repeats`` strokes over the note's duration: each rises in
 * ``attack`` seconds, holds, and falls to silence before the next. One oscillator plays
 * through it, so the strokes of one note never cancel each other. */
function strokes(ctx, n, at, attack, decay = false) {
  const g = ctx.createGain();
  const stroke = n.duration / (n.repeats ?? 1);
  g.gain.setValueAtTime(0, at);
  for (let r = 0; r < (n.repeats ?? 1); r++) {
    const s = at + r * stroke;
    const a = Math.min(attack, stroke / 4);
    g.gain.setValueAtTime(0, s);
    g.gain.linearRampToValueAtTime(n.gain, s + a);
    if (decay) g.gain.exponentialRampToValueAtTime(n.gain * 0.2, s + stroke * 0.85);
    else g.gain.setValueAtTime(n.gain, s + stroke * 0.8);
    g.gain.linearRampToValueAtTime(0, s + stroke * 0.95);
  }
  return g;
}

function playString(ctx, out, n, at) {
  const osc = ctx.createOscillator();
  osc.type = "sawtooth";
  const low = midiToHz(n.note);
  const high = midiToHz(n.note + 2); // a whole-tone trill
  const steps = Math.max(2, Math.round(n.duration * TRILL_RATE));
  for (let i = 0; i < steps; i++) {
    osc.frequency.setValueAtTime(i % 2 ? high : low, at + (i * n.duration) / steps);
  }
  const tone = ctx.createBiquadFilter();
  tone.type = "lowpass";
  tone.frequency.value = Math.min(8000, low * 6);
  osc.connect(tone).connect(strokes(ctx, n, at, 0.01)).connect(out);
  osc.start(at);
  osc.stop(at + n.duration);
}

function playHorn(ctx, out, n, at) {
  const f = midiToHz(n.note);
  const osc = ctx.createOscillator();
  osc.type = "sawtooth";
  osc.frequency.value = f;
  const mellow = ctx.createBiquadFilter(); // a horn's dark, round tone: few overtones
  mellow.type = "lowpass";
  mellow.frequency.value = f * 1.5;
  mellow.Q.value = 0.5;
  osc.connect(mellow).connect(strokes(ctx, n, at, 0.03)).connect(out);
  osc.start(at);
  osc.stop(at + n.duration);
}

function playPiano(ctx, out, n, at) {
  const f = midiToHz(n.note);
  const g = strokes(ctx, n, at, 0.005, true);
  for (const [multiple, level] of [[1, 1], [2, 0.4], [3, 0.15]]) {
    const osc = ctx.createOscillator();
    osc.type = "sine";
    osc.frequency.value = f * multiple;
    const partial = ctx.createGain();
    partial.gain.value = level;
    osc.connect(partial).connect(g);
    osc.start(at);
    osc.stop(at + n.duration);
  }
  g.connect(out);
}

const PLAYERS = { violin: playString, viola: playString, cello: playString, horn: playHorn, piano: playPiano };

/** Schedules ``plan`` on ``ctx`` (an AudioContext or OfflineAudioContext) from ``start``. */
export function schedule(ctx, plan, destination = ctx.destination, start = ctx.currentTime) {
  for (const n of plan) PLAYERS[n.voice](ctx, destination, n, start + n.time);
}

/** Renders a layout offline: the mono samples (Float32Array) at ``sampleRate``. */
export async function renderLayout(layout, sampleRate = 22050, Offline = globalThis.OfflineAudioContext) {
  const length = Math.ceil(planSeconds(layout) * sampleRate);
  const ctx = new Offline(1, length, sampleRate);
  schedule(ctx, planLayout(layout), ctx.destination, 0);
  const buffer = await ctx.startRendering();
  return buffer.getChannelData(0);
}
