// What commands do inside the page (content script): find, scroll, move the focus through the
// links, follow a link, and the page's media. Each function returns what to say about it.

const HIGHLIGHT = "handsfree-find";

function textNodes(doc) {
  const walker = doc.createTreeWalker(doc.body ?? doc.documentElement, 4 /* text */);
  const nodes = [];
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    if (!n.parentElement?.closest("script, style, noscript")) nodes.push(n);
  }
  return nodes;
}

function ensureHighlightStyle(doc) {
  if (doc.getElementById(HIGHLIGHT)) return;
  const style = doc.createElement("style");
  style.id = HIGHLIGHT;
  style.textContent = `::highlight(${HIGHLIGHT}) { background: #ffd54a; color: #000; }`;
  (doc.head ?? doc.documentElement).append(style);
}

/** Finds each phrase (case-insensitive), highlights every match and scrolls to the first.
 * Returns ``{counts: {phrase: n}, total}``. */
export function find(doc, win, phrases) {
  const ranges = [];
  const counts = {};
  const nodes = textNodes(doc);
  for (const phrase of phrases) {
    const needle = phrase.toLowerCase();
    counts[phrase] = 0;
    if (!needle) continue;
    for (const node of nodes) {
      const hay = node.data.toLowerCase();
      for (let i = hay.indexOf(needle); i >= 0; i = hay.indexOf(needle, i + needle.length)) {
        const range = doc.createRange();
        range.setStart(node, i);
        range.setEnd(node, i + needle.length);
        ranges.push(range);
        counts[phrase] += 1;
      }
    }
  }
  if (win.CSS?.highlights && win.Highlight) {
    ensureHighlightStyle(doc);
    win.CSS.highlights.set(HIGHLIGHT, new win.Highlight(...ranges));
  }
  if (ranges.length) {
    ranges.sort((a, b) => a.compareBoundaryPoints(0 /* START_TO_START */, b));
    ranges[0].startContainer.parentElement.scrollIntoView({ block: "center" });
  }
  return { counts, total: ranges.length };
}

const LINE = 40;

/** Scrolls: ``to`` "top"/"bottom", or ``direction`` by ``amount`` lines (null: 80% of a
 * screen; negative: the other way). Returns ``{x, y}`` after scrolling. */
export function scroll(win, { direction, amount, to }) {
  const doc = win.document.scrollingElement ?? win.document.documentElement;
  if (to === "top") win.scrollTo(win.scrollX, 0);
  else if (to === "bottom") win.scrollTo(win.scrollX, doc.scrollHeight);
  else {
    const vertical = direction === "up" || direction === "down";
    const page = (vertical ? win.innerHeight : win.innerWidth) * 0.8;
    let delta = amount == null ? page : amount * LINE;
    if (direction === "up" || direction === "left") delta = -delta;
    win.scrollBy(vertical ? 0 : delta, vertical ? delta : 0);
  }
  return { x: Math.round(win.scrollX), y: Math.round(win.scrollY) };
}

function links(doc) {
  return [...doc.querySelectorAll("a[href]")].filter((a) => a.getClientRects().length > 0);
}

function label(element) {
  return (element.getAttribute("aria-label") || element.textContent || element.title || element.getAttribute("href") || "").trim().replace(/\s+/g, " ");
}

/** Moves the focus ``steps`` links on (negative: back) or ``to`` the n-th link (from 1).
 * Returns ``{index, count, text}`` of the focused link, or ``{count: 0}``. */
export function move(doc, { steps, to }) {
  const all = links(doc);
  if (!all.length) return { count: 0 };
  const current = all.indexOf(doc.activeElement);
  let index = to != null ? to - 1 : current < 0 ? (steps > 0 ? steps - 1 : all.length + steps) : current + steps;
  index = Math.max(0, Math.min(all.length - 1, index));
  all[index].focus();
  all[index].scrollIntoView({ block: "nearest" });
  return { index: index + 1, count: all.length, text: label(all[index]) };
}

/** Follows the focused link; returns its text, or null when no link has the focus. */
export function openFocused(doc) {
  const a = doc.activeElement?.closest?.("a[href]");
  if (!a) return null;
  a.click();
  return label(a);
}

function media(doc) {
  return [...doc.querySelectorAll("audio, video")];
}

/** The page's audio and video: ``[{index, kind, label, playing}]`` (index from 1). */
export function listMedia(doc) {
  return media(doc).map((m, i) => ({
    index: i + 1,
    kind: m.tagName.toLowerCase(),
    label: label(m) || decodeURIComponent((m.currentSrc || m.src || "").split("/").pop() || "untitled"),
    playing: !m.paused,
  }));
}

const PLAY_WAIT_MS = 3000;

/** Plays the ``index``-th medium (from 1); returns its label, or throws if there is none or
 * it cannot play. A medium still loading after 3 s is left to start by itself. */
export async function playMedia(doc, index) {
  const m = media(doc)[index - 1];
  if (!m) throw new Error(`there is no medium ${index}; say listen to hear the list`);
  const { kind, label } = listMedia(doc)[index - 1];
  // Without a source, play() would wait forever for one (and the command with it).
  if (!m.getAttribute("src") && !m.querySelector("source[src]") && !m.srcObject) {
    throw new Error(`the ${kind} ${label} has no source to play`);
  }
  let timer = 0;
  const loading = new Promise((resolve) => { timer = setTimeout(resolve, PLAY_WAIT_MS); });
  try {
    await Promise.race([m.play(), loading]);
  } catch (error) {
    throw new Error(`the ${kind} ${label} cannot play: ${error.message}`);
  } finally {
    clearTimeout(timer);
  }
  return label;
}
