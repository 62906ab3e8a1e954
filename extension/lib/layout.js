// What is visible on the page, by kind and position: the input of the sonification. Runs in
// the page (content script). The viewport is cut into a 5×5 grid; each cell counts the links,
// images and characters of text whose centre lies in it.

export const GRID = 5;

function visible(rect, view) {
  return rect.width > 0 && rect.height > 0 && rect.bottom > 0 && rect.right > 0 &&
    rect.top < view.height && rect.left < view.width;
}

function cellOf(rect, view) {
  const x = Math.min(Math.max(rect.left + rect.width / 2, 0), view.width - 1);
  const y = Math.min(Math.max(rect.top + rect.height / 2, 0), view.height - 1);
  return Math.floor((y / view.height) * GRID) * GRID + Math.floor((x / view.width) * GRID);
}

function shown(element, win) {
  for (let e = element; e && e.nodeType === 1; e = e.parentElement) {
    const style = win.getComputedStyle(e);
    if (style.display === "none" || style.visibility === "hidden" || style.opacity === "0") return false;
  }
  return true;
}

/** The visible page of ``doc`` as ``{grid, cells: [{links, images, text}]}`` (25 cells in
 * reading order: left to right, top to bottom; ``text`` counts characters outside links). */
export function scanLayout(doc = document, win = window) {
  const view = { width: win.innerWidth, height: win.innerHeight };
  const cells = Array.from({ length: GRID * GRID }, () => ({ links: 0, images: 0, text: 0 }));
  for (const a of doc.querySelectorAll("a[href]")) {
    const rect = a.getBoundingClientRect();
    if (visible(rect, view) && shown(a, win)) cells[cellOf(rect, view)].links += 1;
  }
  for (const img of doc.querySelectorAll("img, picture, svg, canvas, [role=img]")) {
    if (img.closest("a[href]") || (img.tagName === "IMG" && img.closest("picture"))) continue;
    if (img.ownerSVGElement) continue; // an svg inside an svg
    const rect = img.getBoundingClientRect();
    if (visible(rect, view) && shown(img, win)) cells[cellOf(rect, view)].images += 1;
  }
  const walker = doc.createTreeWalker(doc.body ?? doc.documentElement, 4 /* text */);
  const range = doc.createRange();
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    const length = node.data.trim().length;
    const parent = node.parentElement;
    if (!length || !parent || parent.closest("a[href], script, style, noscript, svg")) continue;
    range.selectNodeContents(node);
    const rect = range.getBoundingClientRect();
    if (visible(rect, view) && shown(parent, win)) cells[cellOf(rect, view)].text += length;
  }
  return { grid: GRID, cells };
}
