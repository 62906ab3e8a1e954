// The side panel: settings, chat, session, help. The work is in controller.js and lib/.

import { Controller } from "./controller.js";
import { COMMANDS } from "./lib/commands.js";
import { keyboardSvg } from "./lib/keyboard_svg.js";
import { ACTIONS, DEFAULT_BINDINGS, KEY_COUNT, LOWEST_NOTE, PUSH_TO_TALK, bind, noteName } from "./lib/keymap.js";
import { connectMidi } from "./lib/midi_input.js";
import { Session } from "./lib/recorder.js";
import { DEFAULT_SETTINGS, loadSettings, saveSettings } from "./lib/settings.js";
import { Voice } from "./lib/speech.js";
import { loadNames } from "./lib/tabnames.js";

const $ = (selector) => document.querySelector(selector);

function element(tag, props = {}, ...children) {
  const e = Object.assign(document.createElement(tag), props);
  e.append(...children);
  return e;
}

async function loadBindings() {
  const { bindings } = await chrome.storage.sync.get("bindings");
  return { ...DEFAULT_BINDINGS, ...(bindings ?? {}) };
}

function renderState(controller) {
  $("#state").textContent = controller.iconState;
  $("#listen").setAttribute("aria-pressed", String(controller.voice.listening));
  $("#record").setAttribute("aria-pressed", String(controller.session.recording));
  $("#record").textContent = controller.session.recording ? "Pause" : "Record";
}

function renderSession(session) {
  const n = session.tracks.size;
  $("#session-summary").textContent = `${n} ${n === 1 ? "track" : "tracks"}, ${session.eventCount} events${session.recording ? ", recording" : ""}`;
  $("#session-tracks").replaceChildren(
    ...[...session.tracks.values()].map((t) => element("li", { textContent: `${t.name}: ${t.events.length} events` })),
  );
}

async function renderNames() {
  const names = await loadNames(chrome.storage.local);
  $("#names").replaceChildren(
    ...names.map((e) => element("li", { textContent: `${e.name} — ${e.chord ? e.chord.map(noteName).join("+") : "no chord"}${e.tabId == null ? " (closed)" : ""}` })),
  );
}

function renderChat(controller, { question, answer, interactionId, memory, refusal }) {
  if (refusal) {
    $("#chat").append(element("li", { className: "refused" },
      element("div", { className: "question", textContent: question }),
      element("div", { className: "refusal", role: "alert", textContent: refusal })));
    return;
  }
  const correction = element("textarea", { className: "correction", rows: 2, placeholder: "the answer you wanted" });
  const status = element("span", { className: "feedback-status" });
  const send = async (rating, text) => {
    try {
      await controller.rate(interactionId, rating, text);
      status.textContent = text ? "correction sent" : rating > 0 ? "thanks 👍 sent" : "👎 sent";
    } catch (error) {
      status.textContent = error.message;
    }
  };
  const form = element("div", { className: "correction-form" }, correction,
    element("button", { type: "button", className: "send-correction", textContent: "Send correction", onclick: () => send(-1, correction.value.trim()) }));
  const item = element("li", {},
    element("div", { className: "question", textContent: question }),
    element("div", { className: "answer", textContent: answer }),
    ...(memory?.length ? [element("ul", { className: "sources", title: "from selftune's memory" },
      ...memory.map((p) => element("li", { textContent: p.title ? `${p.title}: ${p.text}` : p.text })))] : []),
    element("button", { type: "button", className: "thumb-up", title: "good answer", textContent: "👍", onclick: () => send(1) }),
    element("button", { type: "button", className: "thumb-down", title: "bad answer: correct it", textContent: "👎", onclick: () => form.classList.add("open") }),
    status, form);
  item.dataset.interactionId = interactionId;
  $("#chat").append(item);
}

function renderHelp(controller) {
  $("#commands tbody").replaceChildren(...COMMANDS.map(([say, does]) => element("tr", {}, element("td", { textContent: say }), element("td", { textContent: does }))));
  $("#keyboard").innerHTML = keyboardSvg(controller.bindings); // built from our own strings, escaped
  const rows = [];
  for (let note = LOWEST_NOTE; note < LOWEST_NOTE + KEY_COUNT; note++) {
    const select = element("select", { name: `note-${note}`, disabled: note === PUSH_TO_TALK },
      ...Object.entries(ACTIONS).map(([action, [, description]]) => element("option", { value: action, textContent: description, selected: (note === PUSH_TO_TALK ? "talk" : controller.bindings[note] ?? "none") === action })));
    select.addEventListener("change", async () => {
      controller.bindings = bind(controller.bindings, note, select.value);
      await chrome.storage.sync.set({ bindings: controller.bindings });
      $("#keyboard").innerHTML = keyboardSvg(controller.bindings);
    });
    rows.push(element("tr", {}, element("td", { textContent: `${noteName(note)} (${note})` }), element("td", {}, select)));
  }
  $("#bindings tbody").replaceChildren(...rows);
}

function fillSettings(settings, voices, inputs) {
  const form = $("#settings");
  const voice = form.elements.voice;
  voice.replaceChildren(element("option", { value: "", textContent: "default" }), ...voices.map((v) => element("option", { value: v.name, textContent: `${v.name} (${v.lang})` })));
  const midi = form.elements.midiInput;
  midi.replaceChildren(element("option", { value: "", textContent: "all inputs" }), ...inputs.map((i) => element("option", { value: i.id, textContent: i.name })));
  for (const [key, value] of Object.entries(DEFAULT_SETTINGS)) {
    if (typeof value === "boolean") form.elements[key].checked = settings[key];
    else form.elements[key].value = settings[key];
  }
}

async function main() {
  const settings = await loadSettings(chrome.storage.sync);
  const { findHistory = [] } = await chrome.storage.local.get("findHistory");
  const voice = new Voice(window, { lang: settings.recognitionLang, voiceName: settings.voice });
  const controller = new Controller({
    win: window, voice, settings, bindings: await loadBindings(), findHistory,
    ui: {
      onSpoken: (text) => $("#spoken").append(element("li", { textContent: text })),
      onLog: (entry) => $("#log").append(element("li", { className: "log-entry", textContent: `${entry.kind}: ${entry.text}` })),
      onPageState: ({ pending, command }) => {
        $("#page-state").textContent = pending ? `page: updating for “${command}”…` : `page: shows the result of “${command}”`;
        $("#page-state").classList.toggle("pending", pending);
      },
      onSession: () => renderSession(controller.session),
      onState: () => { renderState(controller); renderSession(controller.session); },
      onChat: (entry) => renderChat(controller, entry),
      onNames: renderNames,
    },
  });
  window.handsfree = controller; // for the console
  chrome.runtime.connect({ name: "panel" }); // the icon goes back to off when the panel closes
  await controller.refreshTab();
  chrome.tabs.onActivated.addListener(() => controller.refreshTab());
  chrome.tabs.onUpdated.addListener(() => controller.refreshTab());
  chrome.storage.onChanged.addListener((changes, area) => { if (area === "local" && changes.namedTabs) renderNames(); });
  chrome.runtime.onMessage.addListener((message, sender) => {
    if (message?.type === "page-moved") controller.pageMoved(sender.tab?.id);
  });

  let midi = null;
  const connect = async () => {
    midi?.close();
    midi = await connectMidi(navigator, controller.settings.midiInput, (data, at) => controller.handleMidi(data, at))
      .catch((error) => { controller.log("error", `MIDI: ${error.message}`); return null; });
  };
  await connect();

  $("#listen").addEventListener("click", () => voice.setListening(!voice.listening));
  $("#record").addEventListener("click", () => controller.runAction("record"));
  $("#play-back").addEventListener("click", () => controller.run({ name: "play-back" }));
  $("#send-session").addEventListener("click", () => controller.run({ name: "send-session" }, "send session"));
  $("#export").addEventListener("click", () => {
    const blob = new Blob([controller.session.toMidi()], { type: "audio/midi" });
    const a = element("a", { href: URL.createObjectURL(blob), download: "handsfree-session.mid" });
    a.click();
    setTimeout(() => URL.revokeObjectURL(a.href), 10000);
  });
  $("#import").addEventListener("change", async (event) => {
    const [file] = event.target.files;
    if (!file) return;
    try {
      controller.session = Session.fromMidi(new Uint8Array(await file.arrayBuffer()));
      renderSession(controller.session);
    } catch (error) {
      $("#session-summary").textContent = `cannot import ${file.name}: ${error.message}`;
    }
  });
  $("#chat-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = $("#chat-input").value.trim();
    if (!text) return;
    $("#chat-input").value = "";
    await controller.run({ name: "ask", question: text }, `ask ${text}`);
  });
  $("#settings").addEventListener("submit", async (event) => {
    event.preventDefault();
    const values = Object.fromEntries(new FormData(event.target));
    try {
      controller.settings = await saveSettings(chrome.storage.sync, values);
      voice.lang = controller.settings.recognitionLang;
      voice.voiceName = controller.settings.voice;
      await connect();
      $("#settings-status").textContent = "saved";
    } catch (error) {
      $("#settings-status").textContent = error.message;
    }
  });
  $("#reset-bindings").addEventListener("click", async () => {
    controller.bindings = { ...DEFAULT_BINDINGS };
    await chrome.storage.sync.set({ bindings: controller.bindings });
    renderHelp(controller);
  });

  fillSettings(settings, speechSynthesis.getVoices(), midi?.inputs() ?? []);
  speechSynthesis.addEventListener?.("voiceschanged", () => fillSettings(controller.settings, speechSynthesis.getVoices(), midi?.inputs() ?? []));
  renderHelp(controller);
  renderState(controller);
  renderSession(controller.session);
  renderNames();
  document.body.dataset.ready = "true";
}

main();
