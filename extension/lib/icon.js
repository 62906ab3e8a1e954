// The toolbar icon's state: off (grey), listening (green), recording (red). Drawn, not loaded.

export const STATES = {
  off: { color: [128, 128, 128], badge: "", title: "handsfree: off" },
  listening: { color: [30, 160, 70], badge: "ON", title: "handsfree: listening" },
  recording: { color: [210, 40, 40], badge: "REC", title: "handsfree: recording" },
};

/** An ImageData-like ``{width, height, data}`` of a filled circle in the state's colour. */
export function iconPixels(state, size) {
  const [r, g, b] = STATES[state].color;
  const data = new Uint8ClampedArray(size * size * 4);
  const c = (size - 1) / 2;
  for (let y = 0; y < size; y++) {
    for (let x = 0; x < size; x++) {
      const inside = (x - c) ** 2 + (y - c) ** 2 <= (size / 2 - 0.5) ** 2;
      data.set(inside ? [r, g, b, 255] : [0, 0, 0, 0], (y * size + x) * 4);
    }
  }
  return { width: size, height: size, data };
}
