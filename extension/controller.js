// The panel's brain: runs voice commands and MIDI keys against the browser (tabs, history,
// the page through the content script), records the session, plays the layout, and talks to
// selftune. The words and the keys are read by lib/commands.js and lib/chords.js.

import { CHORD_WINDOW_MS, ChordDetector } from "./lib/chords.js";
import { parseCommand } from "./lib/commands.js";
import { FindHistory } from "./lib/findhistory.js";
import { DEFAULT_BINDINGS, actionFor } from "./lib/keymap.js";
import { Session } from "./lib/recorder.js";
import { SelftuneClient, SelftuneError } from "./lib/selftune.js";
import { planLayout, schedule } from "./lib/sonify.js";
import { findByChord, findByName, loadNames, nameTab, saveNames } from "./lib/tabnames.js";

// What a key's action runs, as a command (see lib/keymap.js ACTIONS).
const KEY_COMMANDS = {
  "scroll-up": { name: "scroll", direction: "up", amount: null },
  "scroll-down": { name: "scroll", direction: "down", amount: null },
  "scroll-top": { name: "scroll", to: "top" },
  "scroll-bottom": { name: "scroll", to: "bottom" },
  "move-previous": { name: "move", steps: -1 },
  "move-next": { name: "move", steps: 1 },
  open: { name: "open" }, back: { name: "back" }, forward: { name: "forward" },
  "previous-tab": { name: "previous-tab" }, "next-tab": { name: "next-tab" },
  listen: { name: "listen" }, "find-again": { name: "find-again" },
  "find-together": { name: "find-together" }, "feedback-on": { name: "feedback-on" },
  "feedback-off": { name: "feedback-off" }, layout: { name: "layout" },
  "play-back": { name: "play-back" }, repeat: { name: "repeat" }, stop: { name: "stop" },
};

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

export class Controller {
  constructor({ win, voice, settings, bindings = DEFAULT_BINDINGS, findHistory = [], ui = {} }) {
    this.win = win;
    this.voice = voice;
    this.settings = settings;
    this.bindings = bindings;
    this.ui = ui;
    this.chords = new ChordDetector();
    this.chordTimer = 0;
    this.session = new Session();
    this.finds = new FindHistory(findHistory);
    this.conversation = [];
    this.media = [];
    this.feedback = false;
    this.muted = false;
    this.playing = false;
    this.tab = null; // the page commands act on (not the panel)
    this.pageState = { pending: false, command: "" };
    this.commandMoved = -Infinity; // when a command last moved the page
    this.layoutOut = null;
    voice.onPhrase = (text) => this.handlePhrase(text);
    voice.onListeningChange = () => this.updateIcon();
  }

  // --- the tab commands act on ---------------------------------------------------------

  /** The page the user is on: the focused window's active tab, or (when that is this panel
   * opened as a tab) the most recently used other tab. */
  async targetTab() {
    const own = chrome.runtime.getURL("");
    const ours = (t) => !t.url || t.url.startsWith(own) || t.url.startsWith("devtools:");
    const [active] = await chrome.tabs.query({ active: true, lastFocusedWindow: true });
    if (active && !ours(active)) return active;
    const tabs = (await chrome.tabs.query({})).filter((t) => !ours(t));
    tabs.sort((a, b) => (b.lastAccessed ?? 0) - (a.lastAccessed ?? 0));
    return tabs[0] ?? null;
  }

  async refreshTab() {
    this.tab = await this.targetTab();
    return this.tab;
  }

  async page(message, tab = null) {
    const target = tab ?? (await this.refreshTab());
    if (!target) throw new Error("there is no page to act on; open one");
    const reply = await chrome.tabs.sendMessage(target.id, { ...message, target: "page" }).catch(() => undefined);
    if (reply === undefined) throw new Error("the page does not answer; reload it so that handsfree can reach it");
    if (reply.error) throw new Error(reply.error);
    return reply;
  }

  // --- speech, log, state --------------------------------------------------------------

  async say(text) {
    this.ui.onSpoken?.(text);
    await this.voice.speak(text);
  }

  async log(kind, text) {
    const entry = { time: new Date().toISOString(), kind, text };
    if (kind === "not understood") console.warn("handsfree: not understood:", text);
    const { commandLog = [] } = await chrome.storage.local.get("commandLog");
    await chrome.storage.local.set({ commandLog: [...commandLog, entry].slice(-100) });
    this.ui.onLog?.(entry);
  }

  get iconState() {
    if (this.session.recording) return "recording";
    return this.voice.listening ? "listening" : "off";
  }

  updateIcon() {
    chrome.runtime.sendMessage({ type: "icon", state: this.iconState }).catch(() => {});
    this.ui.onState?.();
  }

  // --- voice ---------------------------------------------------------------------------

  /** A phrase heard while listening: recorded (on the current tab's track) and run. */
  async handlePhrase(text, { record = true } = {}) {
    if (record) this.session.command(this.tab?.id ?? "none", this.tab?.title, text, performance.now());
    this.ui.onSession?.();
    return this.run(parseCommand(text), text);
  }

  /** Runs ``command``; the panel shows whether the page reflects it yet. */
  async run(command, text = command.name) {
    this.pageState = { pending: true, command: text };
    this.ui.onPageState?.(this.pageState);
    try {
      await this.#execute(command);
    } catch (error) {
      await this.log("error", `${text}: ${error.message}`);
      await this.say(`Sorry, ${error.message}`);
    } finally {
      this.pageState = { pending: false, command: text };
      this.ui.onPageState?.(this.pageState);
    }
  }

  async #execute(c) {
    switch (c.name) {
      case "unknown":
        await this.log("not understood", c.text);
        return this.say("Not understood");
      case "listen":
        return this.listMedia();
      case "play": {
        const { label } = await this.page({ action: "play", index: c.index });
        return this.say(`Playing ${label}`);
      }
      case "mute":
      case "unmute":
        return this.mute(c.name === "mute");
      case "feedback-on":
      case "feedback-off":
        this.feedback = c.name === "feedback-on";
        await this.say(this.feedback ? "Feedback on" : "Feedback off");
        if (this.feedback) await this.playLayout();
        return undefined;
      case "layout":
        return this.playLayout();
      case "find":
        this.finds.add(c.words);
        return this.find([c.words]);
      case "find-again":
        return this.finds.last() ? this.find([this.finds.last()]) : this.say("Nothing was searched yet");
      case "find-together":
        return this.finds.last() ? this.find(this.finds.together()) : this.say("Nothing was searched yet");
      case "find-history":
        return this.say(this.finds.last() ? `You searched: ${this.finds.together().join(", ")}` : "Nothing was searched yet");
      case "find-clear":
        this.finds.clear();
        await chrome.storage.local.set({ findHistory: [] });
        return this.say("Find history cleared");
      case "scroll":
        await this.page({ action: "scroll", ...c });
        return this.#moved();
      case "move": {
        const r = await this.page({ action: "move", ...c });
        await this.say(r.count ? `Link ${r.index} of ${r.count}: ${r.text}` : "No links here");
        return this.#moved();
      }
      case "open": {
        const { text } = await this.page({ action: "open" });
        return this.say(text ? `Opening ${text}` : "No link has the focus; say move next");
      }
      case "back":
      case "forward":
        return this.page({ action: c.name });
      case "next-tab":
      case "previous-tab":
        return this.neighbourTab(c.name === "next-tab" ? 1 : -1);
      case "switch":
        return this.switchTo(c.tab);
      case "ask":
        return this.ask(c.question);
      case "record":
        this.session.start();
        this.updateIcon();
        return this.say("Recording");
      case "pause":
        this.session.pause();
        this.updateIcon();
        return this.say("Recording paused");
      case "play-back":
        return this.playBack();
      case "send-session":
        return this.sendSession();
      case "repeat":
        return this.say(this.voice.lastSpoken || "Nothing to repeat");
      case "stop":
        this.playing = false;
        return this.voice.stopSpeaking();
      default:
        throw new Error(`the command ${c.name} has no action`);
    }
  }

  async listMedia() {
    const { media } = await this.page({ action: "media" });
    this.media = media;
    if (!media.length) return this.say("No media on this page");
    const list = media.map((m) => `${m.index}, ${m.kind} ${m.label}`).join("; ");
    return this.say(`${media.length} media: ${list}. Say play and a number.`);
  }

  async mute(on) {
    const target = await this.refreshTab();
    const tabs = on ? await chrome.tabs.query({ audible: true }) : await chrome.tabs.query({ muted: true });
    const ids = new Set(tabs.map((t) => t.id));
    if (target) ids.add(target.id);
    await Promise.all([...ids].map((id) => chrome.tabs.update(id, { muted: on })));
    this.muted = on;
    return this.say(on ? "Muted" : "Unmuted");
  }

  async find(phrases) {
    await chrome.storage.local.set({ findHistory: this.finds.together() });
    const { counts, total } = await this.page({ action: "find", phrases });
    if (!total) return this.say(`No match for ${phrases.join(", ")}`);
    const parts = phrases.map((p) => `${counts[p]} for ${p}`);
    await this.say(`${total} ${total === 1 ? "match" : "matches"}: ${parts.join(", ")}`);
    return this.#moved();
  }

  /** A command moved the page: play its layout now (and not again for the scroll event the
   * page sends about the same move). */
  async #moved() {
    this.commandMoved = performance.now();
    if (this.feedback) await this.playLayout();
  }

  /** The page moved by itself (the user scrolled): replay the layout when feedback is on. */
  pageMoved(tabId) {
    if (this.feedback && tabId === this.tab?.id && performance.now() - this.commandMoved > 600) {
      this.playLayout().catch((error) => this.log("error", `layout: ${error.message}`));
    }
  }

  /** Plays the visible page as sound (see lib/sonify.js), replacing a layout still playing. */
  async playLayout() {
    const layout = await this.page({ action: "layout" });
    this.audio ??= new this.win.AudioContext();
    await this.audio.resume().catch(() => {});
    this.layoutOut?.disconnect();
    this.layoutOut = this.audio.createGain();
    this.layoutOut.connect(this.audio.destination);
    schedule(this.audio, planLayout(layout), this.layoutOut, this.audio.currentTime + 0.05);
  }

  // --- tabs ----------------------------------------------------------------------------

  async activate(tab) {
    await chrome.tabs.update(tab.id, { active: true });
    await chrome.windows.update(tab.windowId, { focused: true }).catch(() => {});
    this.tab = await chrome.tabs.get(tab.id);
  }

  async neighbourTab(step) {
    const current = await this.refreshTab();
    if (!current) return this.say("There is no tab");
    const own = chrome.runtime.getURL("");
    const tabs = (await chrome.tabs.query({ windowId: current.windowId })).filter((t) => !t.url?.startsWith(own));
    tabs.sort((a, b) => a.index - b.index);
    const next = tabs[(tabs.findIndex((t) => t.id === current.id) + step + tabs.length) % tabs.length];
    await this.activate(next);
    return this.say(next.title || "Tab");
  }

  /** Switches to the tab named ``spoken``, reopening it from the history when it was closed. */
  async switchTo(spoken, entry = null) {
    const names = await loadNames(chrome.storage.local);
    const named = entry ?? findByName(names, spoken);
    if (!named) return this.say(`No tab is named ${spoken}`);
    let tab = named.tabId != null ? await chrome.tabs.get(named.tabId).catch(() => null) : null;
    if (!tab) tab = await this.reopen(named);
    await this.activate(tab);
    await this.say(`Switched to ${named.name}`);
    if (named.command) await this.handlePhrase(named.command, { record: false });
    return undefined;
  }

  /** Opens a closed named tab again, found through chrome.history by its title or URL. */
  async reopen(entry) {
    const items = await chrome.history.search({ text: entry.title || entry.url, startTime: 0, maxResults: 50 });
    const hit = items.find((i) => i.url === entry.url) ?? items.find((i) => i.title === entry.title);
    if (!hit) throw new Error(`the tab ${entry.name} is closed and no longer in the history`);
    const tab = await chrome.tabs.create({ url: hit.url, active: true });
    const names = await loadNames(chrome.storage.local);
    await saveNames(chrome.storage.local, names.map((e) => (e.name === entry.name ? { ...e, tabId: tab.id, url: hit.url } : e)));
    return tab;
  }

  /** A chord was played: switch to its tab, or name the current tab by voice. */
  async onChord(chord) {
    const names = await loadNames(chrome.storage.local);
    const known = findByChord(names, chord);
    if (known) return this.switchTo(known.name, known);
    const tab = await this.refreshTab();
    if (!tab) return this.say("There is no tab to name");
    await this.say("Name this tab");
    const heard = await this.voice.nextPhrase();
    if (!heard) return this.say("No name heard; the chord is not saved");
    // "<name> then <command>": the command runs whenever the chord switches to this tab.
    const [name, command = null] = heard.split(/\s+then\s+/i, 2).map((s) => s.trim());
    const latest = await loadNames(chrome.storage.local);
    await saveNames(chrome.storage.local, nameTab(latest, { name, chord, command, tabId: tab.id, url: tab.url, title: tab.title }));
    this.ui.onNames?.();
    return this.say(`Tab named ${name}${command ? `, then ${command}` : ""}`);
  }

  // --- MIDI ----------------------------------------------------------------------------

  /** One MIDI message: recorded on the current tab's track, then a chord or a key's action. */
  handleMidi(data, timeStamp, { record = true } = {}) {
    if (record && this.session.midi(this.tab?.id ?? "none", this.tab?.title, data, timeStamp)) this.ui.onSession?.();
    const [status, note, velocity = 0] = data;
    const kind = status & 0xf0;
    if (kind === 0x90 && velocity > 0) {
      const { consumed, chord } = this.chords.noteOn(note, timeStamp);
      if (chord) this.#chord(chord);
      if (this.chords.pending) this.#armChordTimer();
      if (!consumed) this.runAction(actionFor(this.bindings, note));
    } else if (kind === 0x80 || kind === 0x90) {
      const chord = this.chords.noteOff(note, timeStamp);
      if (chord) this.#chord(chord);
    }
  }

  #chord(notes) {
    this.onChord(notes).catch(async (error) => {
      await this.log("error", `chord ${notes.join("+")}: ${error.message}`);
      await this.say(`Sorry, ${error.message}`);
    });
  }

  #armChordTimer() {
    clearTimeout(this.chordTimer);
    this.chordTimer = setTimeout(() => {
      const chord = this.chords.expire(performance.now());
      if (chord) this.#chord(chord);
    }, CHORD_WINDOW_MS + 20);
  }

  /** Runs a key's action (see lib/keymap.js). */
  async runAction(action) {
    if (action === "talk") {
      const text = await this.voice.nextPhrase();
      return text ? this.handlePhrase(text) : undefined;
    }
    if (action === "ask") {
      await this.say("Ask");
      const text = await this.voice.nextPhrase();
      return text ? this.run({ name: "ask", question: text }, `ask ${text}`) : undefined;
    }
    if (action === "mute") return this.run({ name: this.muted ? "unmute" : "mute" });
    if (action === "record") return this.run({ name: this.session.recording ? "pause" : "record" });
    const command = KEY_COMMANDS[action];
    return command ? this.run(command) : undefined;
  }

  // --- recording -----------------------------------------------------------------------

  /** Plays the recorded session back in time: notes sound and act again, commands run
   * again; nothing is recorded meanwhile. */
  async playBack() {
    const timeline = this.session.timeline();
    if (!timeline.length) return this.say("Nothing is recorded");
    this.session.pause();
    this.updateIcon();
    this.playing = true;
    const start = performance.now();
    for (const event of timeline) {
      const wait = event.time - (performance.now() - start);
      if (wait > 0) await sleep(wait);
      if (!this.playing) break;
      if (event.kind === "midi") {
        this.#sound(event.data);
        this.handleMidi(event.data, performance.now(), { record: false });
      } else {
        await this.handlePhrase(event.text, { record: false });
      }
    }
    this.playing = false;
    return undefined;
  }

  #sound([status, note, velocity = 0]) {
    if ((status & 0xf0) !== 0x90 || velocity === 0) return;
    this.audio ??= new this.win.AudioContext();
    schedule(this.audio, [{ time: 0, duration: 0.25, voice: "piano", note, gain: 0.2 * (velocity / 127), repeats: 1 }]);
  }

  // --- selftune ------------------------------------------------------------------------

  client() {
    return new SelftuneClient(this.settings);
  }

  /** Asks selftune (the conversation so far, the last 10 turns) and reads the answer. When
   * selftune refuses the question, its own message is shown in the chat and read. */
  async ask(question) {
    const messages = [...this.conversation.slice(-9), { role: "user", content: question }];
    let reply;
    try {
      reply = await this.client().chat(messages);
    } catch (error) {
      if (!(error instanceof SelftuneError) || !error.serverMessage) throw error;
      const hint = error.code === "memory_disabled" ? " Or turn off “use selftune's memory” in the settings." : "";
      const refusal = `selftune refused: ${error.serverMessage.replace(/[.\s]+$/, "")}.${hint}`;
      await this.log("error", `ask ${question}: ${error.message}`);
      this.ui.onChat?.({ question, refusal });
      await this.say(refusal);
      return null;
    }
    const { interactionId, text, memory } = reply;
    this.conversation = [...messages, { role: "assistant", content: text }];
    this.ui.onChat?.({ question, answer: text, interactionId, memory });
    await this.say(text || "selftune gave an empty answer");
    return { interactionId, text, memory };
  }

  /** Sends the session's transcript to selftune as an import (its memory and documents). */
  async sendSession() {
    if (!this.session.eventCount) return this.say("Nothing is recorded");
    const title = `handsfree session ${new Date().toISOString().slice(0, 16).replace("T", " ")}`;
    const { import_id: id } = await this.client().importText(this.session.transcript(), title);
    await this.say(`Session sent to selftune as import ${id}`);
    return id;
  }

  /** Thumbs (1 or -1) and an optional correction for one answer. */
  async rate(interactionId, rating, correction) {
    return this.client().feedback(interactionId, rating, correction);
  }
}
