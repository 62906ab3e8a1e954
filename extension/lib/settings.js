// The panel's settings, kept in chrome.storage.sync (so they follow the user's profile).

export const DEFAULT_SETTINGS = Object.freeze({
  server: "http://127.0.0.1:8080", // selftune's address, without /v1
  apiKey: "", // sent as "Authorization: Bearer <key>" when set
  userId: "handsfree", // the "user" of every chat, recorded by selftune
  recognitionLang: "en-US", // the speech-recognition language
  voice: "", // the speech-synthesis voice's name; empty: the browser's default
  midiInput: "", // the MIDI input's id; empty: every input
  useMemory: false, // chats ask selftune to add passages from its memory ("memory": true)
});

/** The settings in ``storage`` (chrome.storage.sync), defaults for what is missing. */
export async function loadSettings(storage) {
  const stored = await storage.get("settings");
  return { ...DEFAULT_SETTINGS, ...(stored.settings ?? {}) };
}

/** Checks ``settings`` and saves them; throws with what to fix. */
export async function saveSettings(storage, settings) {
  const clean = { ...DEFAULT_SETTINGS };
  for (const [key, value] of Object.entries(DEFAULT_SETTINGS)) {
    if (!(key in settings)) continue;
    // A checkbox: a form sends "on" when ticked and nothing when not.
    if (typeof value === "boolean") clean[key] = settings[key] === true || settings[key] === "on" || settings[key] === "true";
    else clean[key] = String(settings[key] ?? "").trim();
  }
  try {
    const url = new URL(clean.server);
    if (url.protocol !== "http:" && url.protocol !== "https:") throw new Error();
  } catch {
    throw new Error(`the server address ${JSON.stringify(clean.server)} is not an http(s) URL; write it like http://127.0.0.1:8080`);
  }
  clean.server = clean.server.replace(/\/+$/, "").replace(/\/v1$/, "");
  if (!clean.userId) throw new Error("the user id is empty; selftune records every chat under it");
  await storage.set({ settings: clean });
  return clean;
}
