import assert from "node:assert/strict";
import { test } from "node:test";

import { FindHistory } from "../../../extension/lib/findhistory.js";
import { iconPixels } from "../../../extension/lib/icon.js";
import { SelftuneClient } from "../../../extension/lib/selftune.js";
import { DEFAULT_SETTINGS, loadSettings, saveSettings } from "../../../extension/lib/settings.js";
import { VOICES, planLayout } from "../../../extension/lib/sonify.js";
import { findByChord, findByName, forgetTab, nameTab, reattach } from "../../../extension/lib/tabnames.js";

test("find history: newest last, repeats moved, bounded", () => {
  const h = new FindHistory([], 3);
  for (const w of ["apples", "Pears", "kiwis", "apples", "plums"]) h.add(w);
  assert.deepEqual(h.together(), ["kiwis", "apples", "plums"]);
  assert.equal(h.last(), "plums");
});

test("named tabs: by name, by chord, detached on close, attached on reopen", () => {
  let names = nameTab([], { name: "Shopping", chord: [55, 48, 52], tabId: 4, url: "http://a/", title: "A" });
  names = nameTab(names, { name: "news", chord: [48, 50, 53], tabId: 5, url: "http://b/", title: "B" });
  assert.equal(findByName(names, "shopping!").tabId, 4);
  assert.equal(findByName(names, "the news").tabId, 5);
  assert.equal(findByChord(names, [48, 52, 55]).name, "Shopping");
  names = forgetTab(names, 4);
  assert.equal(findByName(names, "shopping").tabId, null);
  names = reattach(names, 9, "http://a/");
  assert.equal(findByName(names, "shopping").tabId, 9);
  names = nameTab(names, { name: "mail", chord: [48, 52, 55], tabId: 9, url: "http://a/", title: "A" });
  assert.deepEqual(names.map((e) => e.name), ["news", "mail"]); // same chord and tab: replaced
});

test("settings: defaults, cleaned, refused with what to fix", async () => {
  const store = {};
  const storage = { get: async (k) => ({ [k]: store[k] }), set: async (v) => Object.assign(store, v) };
  assert.deepEqual(await loadSettings(storage), DEFAULT_SETTINGS);
  const saved = await saveSettings(storage, { server: " http://h:1/v1/ ", userId: "ada" });
  assert.equal(saved.server, "http://h:1");
  assert.equal((await loadSettings(storage)).userId, "ada");
  assert.equal(saved.useMemory, false); // a form leaves an unticked checkbox out
  assert.equal((await saveSettings(storage, { server: "http://h", userId: "ada", useMemory: "on" })).useMemory, true);
  assert.equal((await loadSettings(storage)).useMemory, true);
  await assert.rejects(saveSettings(storage, { server: "h:1", userId: "x" }), /not an http\(s\) URL/);
  await assert.rejects(saveSettings(storage, { server: "http://h", userId: "" }), /user id is empty/);
});

test("the selftune client sends the key, the user, and feedback", async () => {
  const sent = [];
  const fetch = async (url, init) => {
    sent.push([url, init.headers, JSON.parse(init.body)]);
    if (url.endsWith("/api/feedback")) return new Response(JSON.stringify({ feedback_id: 1 }), { status: 200 });
    return new Response(JSON.stringify({ id: "i-1", choices: [{ message: { content: "Hi" } }] }), { status: 200 });
  };
  const client = new SelftuneClient({ server: "http://h/", apiKey: "sk", userId: "ada" }, fetch);
  assert.deepEqual(await client.chat([{ role: "user", content: "hey" }]), { interactionId: "i-1", text: "Hi", memory: null });
  await client.feedback("i-1", -1, "Hello!");
  assert.deepEqual(sent, [
    ["http://h/v1/chat/completions", { "Content-Type": "application/json", Authorization: "Bearer sk" }, { messages: [{ role: "user", content: "hey" }], user: "ada" }],
    ["http://h/api/feedback", { "Content-Type": "application/json", Authorization: "Bearer sk" }, { interaction_id: "i-1", rating: -1, correction: "Hello!" }],
  ]);
  const refusing = new SelftuneClient({ server: "http://h", apiKey: "", userId: "ada" }, async () => new Response(JSON.stringify({ error: { message: "bad key" } }), { status: 401 }));
  await assert.rejects(refusing.chat([]), /selftune answered 401 to \/v1\/chat\/completions: bad key; check the API key/);
});

test("the memory option: \"memory\": true only when on; the passages and a refusal come back", async () => {
  const bodies = [];
  const answer = (body) => new Response(JSON.stringify(body), { status: 200 });
  const ok = async (_url, init) => {
    const body = JSON.parse(init.body);
    bodies.push(body);
    return answer({ id: "i-2", choices: [{ message: { content: "Yes" } }], ...(body.memory ? { memory: [{ id: 7, text: "a note" }] } : {}) });
  };
  const settings = { server: "http://h", apiKey: "", userId: "ada" };
  const off = await new SelftuneClient(settings, ok).chat([{ role: "user", content: "q" }]);
  const on = await new SelftuneClient({ ...settings, useMemory: true }, ok).chat([{ role: "user", content: "q" }]);
  assert.equal("memory" in bodies[0], false);
  assert.equal(bodies[1].memory, true);
  assert.equal(off.memory, null);
  assert.deepEqual(on.memory, [{ id: 7, text: "a note" }]);

  const error = { message: "this request asks for memory, which is off on this server", code: "memory_disabled", param: "memory" };
  const refusing = new SelftuneClient({ ...settings, useMemory: true }, async () => new Response(JSON.stringify({ error }), { status: 400 }));
  await assert.rejects(refusing.chat([{ role: "user", content: "q" }]), (e) => {
    assert.equal(e.serverMessage, error.message);
    assert.equal(e.code, "memory_disabled");
    assert.equal(e.status, 400);
    return true;
  });
  const unreadable = new SelftuneClient(settings, async () => new Response(JSON.stringify({ detail: [{ msg: "field required" }] }), { status: 422 }));
  await assert.rejects(unreadable.chat([]), (e) => e.serverMessage === null && /422 .*field required/.test(e.message));
});

test("sonification plan: voices by kind and position, density sets volume and repetition", () => {
  const cells = Array.from({ length: 25 }, () => ({ links: 0, images: 0, text: 0 }));
  cells[0] = { links: 4, images: 0, text: 0 }; // top left
  cells[12] = { links: 1, images: 2, text: 0 }; // middle
  cells[24] = { links: 0, images: 0, text: 600 }; // bottom right
  cells[20] = { links: 2, images: 0, text: 0 }; // bottom left
  const plan = planLayout({ grid: 5, cells });
  const at = (voice) => plan.filter((n) => n.voice === voice);
  assert.deepEqual(at("violin").map((n) => [n.note, n.repeats, n.time]), [[68 + 24, 3, 0]]);
  assert.deepEqual(at("viola").map((n) => [n.note, n.repeats]), [[60 + 12, 2]]);
  assert.deepEqual(at("cello").map((n) => [n.note, n.repeats]), [[48, 2]]);
  assert.deepEqual(at("horn").map((n) => [n.note, n.repeats]), [[60 - 12, 3]]);
  assert.deepEqual(at("piano").map((n) => [n.note, n.repeats]), [[52, 3]]);
  assert.equal(at("violin")[0].gain, VOICES.violin.gain); // full density: full volume
  assert.ok(at("viola")[0].gain < VOICES.viola.gain * 0.5);
});

test("icon pixels: a disc in the state's colour", () => {
  const p = iconPixels("recording", 16);
  assert.deepEqual([...p.data.slice((8 * 16 + 8) * 4, (8 * 16 + 8) * 4 + 4)], [210, 40, 40, 255]);
  assert.equal(p.data[3], 0); // the corner is transparent
});
