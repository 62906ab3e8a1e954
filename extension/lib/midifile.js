// Standard MIDI files (SMF, format 1): write and read. A song is
// ``{ppq, tracks: [{name, events: [{tick, type, ...}]}]}`` with absolute ticks; event types
// are "note_on", "note_off" and "control_change" (``channel``, ``note``/``control``,
// ``velocity``/``value``), "text" and "set_tempo" (``tempo``: microseconds per quarter).

function vlq(value) {
  const bytes = [value & 0x7f];
  for (let v = value >>> 7; v > 0; v >>>= 7) bytes.unshift((v & 0x7f) | 0x80);
  return bytes;
}

function utf8(text) {
  return [...new TextEncoder().encode(text)];
}

function eventBytes(event) {
  const channel = event.channel ?? 0;
  switch (event.type) {
    case "note_on":
      return [0x90 | channel, event.note, event.velocity];
    case "note_off":
      return [0x80 | channel, event.note, event.velocity ?? 0];
    case "control_change":
      return [0xb0 | channel, event.control, event.value];
    case "text":
    case "track_name": {
      const data = utf8(event.text);
      return [0xff, event.type === "text" ? 0x01 : 0x03, ...vlq(data.length), ...data];
    }
    case "set_tempo": {
      const t = event.tempo;
      return [0xff, 0x51, 0x03, (t >> 16) & 0xff, (t >> 8) & 0xff, t & 0xff];
    }
    default:
      throw new Error(`cannot write a MIDI event of type ${event.type}`);
  }
}

function chunk(type, body) {
  const n = body.length;
  return [...utf8(type), (n >>> 24) & 0xff, (n >>> 16) & 0xff, (n >>> 8) & 0xff, n & 0xff, ...body];
}

/** The bytes (Uint8Array) of ``song`` as a format 1 file. Events are sorted by tick, stably. */
export function writeMidi(song) {
  const tracks = song.tracks.map((track) => {
    const events = track.events
      .map((e, i) => [e, i])
      .sort((a, b) => a[0].tick - b[0].tick || a[1] - b[1])
      .map(([e]) => e);
    const body = [];
    if (track.name) body.push(0, ...eventBytes({ type: "track_name", text: track.name }));
    let last = 0;
    for (const event of events) {
      if (!Number.isInteger(event.tick) || event.tick < last) {
        throw new Error(`MIDI event ticks must be whole and not negative, got ${event.tick}`);
      }
      body.push(...vlq(event.tick - last), ...eventBytes(event));
      last = event.tick;
    }
    body.push(0, 0xff, 0x2f, 0x00); // end of track
    return chunk("MTrk", body);
  });
  const n = song.tracks.length;
  const header = chunk("MThd", [0, 1, (n >> 8) & 0xff, n & 0xff, (song.ppq >> 8) & 0xff, song.ppq & 0xff]);
  return new Uint8Array([...header, ...tracks.flat()]);
}

class Reader {
  constructor(bytes) {
    this.bytes = bytes;
    this.pos = 0;
  }
  byte() {
    if (this.pos >= this.bytes.length) throw new Error("the MIDI file ends early");
    return this.bytes[this.pos++];
  }
  u(n) {
    let v = 0;
    for (let i = 0; i < n; i++) v = v * 256 + this.byte();
    return v;
  }
  vlq() {
    let v = 0;
    for (;;) {
      const b = this.byte();
      v = v * 128 + (b & 0x7f);
      if (!(b & 0x80)) return v;
    }
  }
  text(n) {
    const s = new TextDecoder().decode(this.bytes.subarray(this.pos, this.pos + n));
    this.pos += n;
    return s;
  }
}

function readTrack(r, end) {
  const track = { name: "", events: [] };
  let tick = 0;
  let status = 0;
  while (r.pos < end) {
    tick += r.vlq();
    let b = r.byte();
    if (b === 0xff) {
      const type = r.byte();
      const length = r.vlq();
      if (type === 0x03) track.name = r.text(length);
      else if (type === 0x01) track.events.push({ tick, type: "text", text: r.text(length) });
      else if (type === 0x51) track.events.push({ tick, type: "set_tempo", tempo: r.u(3) });
      else r.pos += length;
      continue;
    }
    if (b === 0xf0 || b === 0xf7) {
      r.pos += r.vlq();
      continue;
    }
    if (b & 0x80) status = b;
    else r.pos--; // running status: b was the first data byte
    const kind = status & 0xf0;
    const channel = status & 0x0f;
    const data1 = r.byte();
    const data2 = kind === 0xc0 || kind === 0xd0 ? null : r.byte();
    if (kind === 0x90 && data2 > 0) {
      track.events.push({ tick, type: "note_on", channel, note: data1, velocity: data2 });
    } else if (kind === 0x80 || kind === 0x90) {
      track.events.push({ tick, type: "note_off", channel, note: data1, velocity: data2 });
    } else if (kind === 0xb0) {
      track.events.push({ tick, type: "control_change", channel, control: data1, value: data2 });
    }
  }
  return track;
}

/** The song in ``bytes`` (a Uint8Array or ArrayBuffer); throws with the reason if it is not a
 * standard MIDI file. */
export function readMidi(input) {
  const bytes = input instanceof Uint8Array ? input : new Uint8Array(input);
  const r = new Reader(bytes);
  if (r.text(4) !== "MThd") throw new Error("not a standard MIDI file (no MThd header)");
  const headerLength = r.u(4);
  const start = r.pos;
  r.u(2); // format
  const count = r.u(2);
  const ppq = r.u(2);
  if (ppq & 0x8000) throw new Error("SMPTE time division is not supported; use ticks per quarter");
  r.pos = start + headerLength;
  const tracks = [];
  for (let i = 0; i < count; i++) {
    if (r.text(4) !== "MTrk") throw new Error(`MIDI track ${i} has no MTrk header`);
    const length = r.u(4);
    tracks.push(readTrack(r, r.pos + length));
  }
  return { ppq, tracks };
}
