// The help's picture: the 25 keys of the default layout, each labelled with its action.

import { ACTIONS, KEY_COUNT, LOWEST_NOTE, actionFor, isBlackKey, noteName } from "./keymap.js";

const WHITE_W = 44;
const WHITE_H = 170;
const BLACK_W = 28;
const BLACK_H = 104;

function escape(text) {
  return String(text).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]);
}

/** An inline SVG (a string) of the keys from ``lowest``, with ``bindings``' labels. */
export function keyboardSvg(bindings, lowest = LOWEST_NOTE, count = KEY_COUNT) {
  const whites = [];
  const blacks = [];
  let x = 0;
  for (let note = lowest; note < lowest + count; note++) {
    const action = actionFor(bindings, note);
    const label = escape(ACTIONS[action]?.[0] ?? action);
    const title = `<title>${noteName(note)} (${note}): ${escape(ACTIONS[action]?.[1] ?? action)}</title>`;
    if (isBlackKey(note)) {
      const bx = x - BLACK_W / 2;
      blacks.push(
        `<g data-note="${note}">${title}<rect x="${bx}" y="0" width="${BLACK_W}" height="${BLACK_H}" fill="#222" stroke="#000"/>` +
          `<text x="${bx + BLACK_W / 2}" y="${BLACK_H / 2}" fill="#fff" font-size="11" text-anchor="middle" dominant-baseline="middle" transform="rotate(-90 ${bx + BLACK_W / 2} ${BLACK_H / 2})">${label}</text></g>`,
      );
    } else {
      const fill = note === 60 ? "#ffe9a8" : "#fff";
      whites.push(
        `<g data-note="${note}">${title}<rect x="${x}" y="0" width="${WHITE_W}" height="${WHITE_H}" fill="${fill}" stroke="#333"/>` +
          `<text x="${x + WHITE_W / 2}" y="${WHITE_H - 24}" font-size="12" text-anchor="middle">${label}</text>` +
          `<text x="${x + WHITE_W / 2}" y="${WHITE_H - 8}" font-size="11" fill="#666" text-anchor="middle">${noteName(note)}</text></g>`,
      );
      x += WHITE_W;
    }
  }
  return (
    `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 ${x} ${WHITE_H}" role="img" ` +
    `aria-label="The ${count} keys from ${noteName(lowest)} and what each does">` +
    whites.join("") + blacks.join("") + "</svg>"
  );
}
