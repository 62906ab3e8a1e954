// Named tabs: a chord, a name and optionally a command, associated with a tab. Kept in
// chrome.storage.local as a list of ``{name, chord, command, tabId, url, title}``. A closed
// tab keeps its entry with ``tabId: null`` so that it can be found again (by its URL, through
// chrome.history) when it is reopened. Pure functions on the list, plus storage helpers.

import { chordKey } from "./chords.js";

const KEY = "namedTabs";

export async function loadNames(storage) {
  return (await storage.get(KEY))[KEY] ?? [];
}

export async function saveNames(storage, names) {
  await storage.set({ [KEY]: names });
}

function normal(name) {
  return String(name).toLowerCase().replace(/[^\p{L}\p{N} ]/gu, "").replace(/\s+/g, " ").trim();
}

/** The list with ``entry`` added; an entry with the same name, chord or tab is replaced. */
export function nameTab(names, entry) {
  const key = entry.chord ? chordKey(entry.chord) : null;
  const kept = names.filter(
    (e) => normal(e.name) !== normal(entry.name) && (!key || !e.chord || chordKey(e.chord) !== key) && (entry.tabId == null || e.tabId !== entry.tabId),
  );
  return [...kept, { command: null, chord: null, ...entry, name: entry.name.trim() }];
}

/** The entry whose name was said (exact, then as a prefix or part of the name). */
export function findByName(names, spoken) {
  const s = normal(spoken);
  return names.find((e) => normal(e.name) === s) ?? names.find((e) => normal(e.name).startsWith(s) || s.includes(normal(e.name))) ?? null;
}

export function findByChord(names, chord) {
  const key = chordKey(chord);
  return names.find((e) => e.chord && chordKey(e.chord) === key) ?? null;
}

/** The list after ``tabId`` closed: its entry stays, detached, to be found again. */
export function forgetTab(names, tabId) {
  return names.map((e) => (e.tabId === tabId ? { ...e, tabId: null } : e));
}

/** The list with a detached entry for ``url`` attached to ``tabId`` (a reopened tab). */
export function reattach(names, tabId, url) {
  return names.map((e) => (e.tabId == null && e.url === url ? { ...e, tabId } : e));
}
