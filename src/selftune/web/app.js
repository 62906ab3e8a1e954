// The dashboard's entry: who is calling (GET /api/me, asking for a key where one is needed),
// the tabs, and the live events each panel listens to.

import { api, ApiError, LiveEvents, saveKey, savedKey, whenUnauthorized } from "./api.js";
import { $ } from "./dom.js";
import { setupChat } from "./chat.js";
import { setupLearning } from "./learning.js";
import { setupVersions } from "./versions.js";
import { setupImport } from "./imports.js";
import { setupMemory } from "./memory.js";
import { setupSettings } from "./settings.js";

// What the panels share: the caller, and listeners for the live stream.
const context = {
  me: null,
  storeListeners: [],
  jobListeners: [],
  openListeners: [],
  onStore(listener) {
    this.storeListeners.push(listener);
  },
  onJob(listener) {
    this.jobListeners.push(listener);
  },
  // Each time the stream (re)connects: what changed while it was not connected is not sent
  // again, so a panel reads its state anew.
  onOpen(listener) {
    this.openListeners.push(listener);
  },
};

const live = new LiveEvents({
  store: (event) => context.storeListeners.forEach((listen) => listen(event)),
  job: (job) => context.jobListeners.forEach((listen) => listen(job)),
  state: (connected) => {
    document.body.classList.toggle("offline", !connected);
    if (connected) context.openListeners.forEach((listen) => listen());
  },
});

function showPanel(name) {
  for (const tab of document.querySelectorAll("[role=tab]")) {
    const selected = tab.dataset.panel === name;
    tab.setAttribute("aria-selected", String(selected));
    $(`#panel-${tab.dataset.panel}`).hidden = !selected;
  }
  history.replaceState(null, "", `#${name}`);
  context.panels?.[name]?.shown?.();
}

function askForKey(message = "") {
  const dialog = $("#key-dialog");
  $("#key-error").textContent = message;
  if (!dialog.open) dialog.showModal();
  $("#key-input").focus();
}

function describe(me) {
  const who = me.user ? `${me.user}${me.admin ? " (admin)" : ""}` : "local (no key)";
  $("#who").textContent = who;
  $("#sign-out").hidden = !savedKey();
  $("#status").textContent = `Serving ${me.serving}`;
  document.body.classList.toggle("is-admin", me.admin);
  for (const node of document.querySelectorAll(".admin-only")) node.hidden = !me.admin;
}

async function signIn() {
  try {
    context.me = await api("GET", "/api/me");
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) {
      askForKey(savedKey() ? error.message : "");
      return false;
    }
    $("#status").textContent = `The server did not answer: ${error.message}`;
    return false;
  }
  describe(context.me);
  return true;
}

async function start() {
  if (!(await signIn())) return;
  context.panels = {
    chat: setupChat(context),
    learning: setupLearning(context),
    versions: setupVersions(context),
    import: setupImport(context),
    memory: setupMemory(context),
  };
  if (context.me.admin) context.panels.settings = setupSettings(context);
  context.onStore((event) => {
    if (event.kind === "promote" || event.kind === "rollback") {
      api("GET", "/api/me").then((me) => {
        context.me = me;
        describe(me);
      });
    }
  });
  live.lastId = context.me.last_event; // events from the state the panels read on
  live.start();
  const asked = location.hash.slice(1);
  showPanel(context.panels[asked] ? asked : "chat");
}

function wire() {
  for (const tab of document.querySelectorAll("[role=tab]")) {
    tab.addEventListener("click", () => showPanel(tab.dataset.panel));
  }
  $("#key-form").addEventListener("submit", () => {
    saveKey($("#key-input").value.trim());
    $("#key-input").value = "";
    location.reload(); // every panel starts again with the key's rights
  });
  $("#sign-out").addEventListener("click", () => {
    saveKey("");
    live.stop();
    location.reload();
  });
  whenUnauthorized((error) => askForKey(error.message));
  window.addEventListener("hashchange", () => {
    const asked = location.hash.slice(1);
    if (context.panels?.[asked]) showPanel(asked);
  });
}

// The vendored classic scripts are deferred; modules run after them, so both are defined.
wire();
start();
