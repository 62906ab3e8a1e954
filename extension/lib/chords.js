// Chord detection for MIDI hotkeys. A chord starts with the anchor key (note 48): every note
// pressed within ``windowMs`` of it joins the chord instead of firing its own binding. The
// chord is complete when all its keys are up and it has at least ``minNotes`` notes, or when
// the window ends. Times are passed in (milliseconds), so the logic needs no timers.

export const CHORD_ANCHOR = 48;
export const CHORD_WINDOW_MS = 2000;
export const CHORD_MIN_NOTES = 3;

export class ChordDetector {
  constructor({ anchor = CHORD_ANCHOR, windowMs = CHORD_WINDOW_MS, minNotes = CHORD_MIN_NOTES } = {}) {
    this.anchor = anchor;
    this.windowMs = windowMs;
    this.minNotes = minNotes;
    this.held = new Set();
    this.group = null; // notes of the chord being played
    this.started = 0;
  }

  /** A key went down at ``time``. Returns ``{consumed, chord}``: ``consumed`` when the note
   * belongs to a chord (its own binding must not fire); ``chord`` when an earlier chord's
   * window ran out just before this note and it was complete. */
  noteOn(note, time) {
    const expired = this.expire(time);
    this.held.add(note);
    if (this.group) {
      this.group.add(note);
      return { consumed: true, chord: expired };
    }
    if (note === this.anchor) {
      this.group = new Set([note]);
      this.started = time;
      return { consumed: true, chord: expired };
    }
    return { consumed: false, chord: expired };
  }

  /** A key went up. Returns the chord (sorted notes) once it is complete, else null. */
  noteOff(note, time) {
    this.held.delete(note);
    const expired = this.expire(time);
    if (expired) return expired;
    if (this.group && this.held.size === 0 && this.group.size >= this.minNotes) {
      return this.#finish();
    }
    return null;
  }

  /** Ends a chord whose window has passed at ``time``: its notes if complete, else null. */
  expire(time) {
    if (!this.group || time - this.started < this.windowMs) return null;
    const notes = this.#finish();
    return notes.length >= this.minNotes ? notes : null;
  }

  /** Whether a chord is being played (the caller may want to call expire() later). */
  get pending() {
    return this.group !== null;
  }

  #finish() {
    const notes = [...this.group].sort((a, b) => a - b);
    this.group = null;
    return notes;
  }
}

/** A chord's stable key for storage and comparison: "48-52-55". */
export function chordKey(notes) {
  return [...notes].sort((a, b) => a - b).join("-");
}
