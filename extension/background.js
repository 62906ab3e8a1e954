// The service worker: the toolbar icon's state, the side panel, and the named tabs' lifecycle
// (a closed tab is detached from its name; a reopened one is attached again).

import { STATES, iconPixels } from "./lib/icon.js";
import { forgetTab, loadNames, reattach, saveNames } from "./lib/tabnames.js";

self.handsfree = { iconState: "off" };

async function setIconState(state) {
  const known = state in STATES ? state : "off";
  self.handsfree.iconState = known;
  const imageData = {};
  for (const size of [16, 32]) {
    const p = iconPixels(known, size);
    imageData[size] = new ImageData(p.data, size, size);
  }
  await chrome.action.setIcon({ imageData });
  await chrome.action.setBadgeText({ text: STATES[known].badge });
  await chrome.action.setTitle({ title: STATES[known].title });
}

chrome.runtime.onInstalled.addListener(() => {
  chrome.sidePanel.setPanelBehavior({ openPanelOnActionClick: true }).catch(() => {});
  setIconState("off");
});
chrome.runtime.onStartup.addListener(() => setIconState("off"));

chrome.runtime.onMessage.addListener((message, _sender, sendResponse) => {
  if (message?.type !== "icon") return false;
  setIconState(message.state).then(() => sendResponse({ state: self.handsfree.iconState }));
  return true;
});

// The panel holds a port open while it lives: when it closes, the icon goes back to off.
chrome.runtime.onConnect.addListener((port) => {
  if (port.name !== "panel") return;
  port.onDisconnect.addListener(() => setIconState("off"));
});

// One change to the named tabs at a time: the events of one tab come in quick succession.
let queue = Promise.resolve();
function update(change) {
  queue = queue.then(async () => {
    const names = await loadNames(chrome.storage.local);
    const next = await change(names);
    if (next !== names) await saveNames(chrome.storage.local, next);
  }).catch((error) => console.warn("handsfree: named tabs", error));
  return queue;
}

chrome.tabs.onRemoved.addListener((tabId) => {
  update((names) => (names.some((e) => e.tabId === tabId) ? forgetTab(names, tabId) : names));
});

chrome.tabs.onUpdated.addListener((tabId, info, tab) => {
  if (info.status !== "complete" || !tab.url) return;
  update(async (names) => {
    if (!names.some((e) => e.tabId == null && e.url === tab.url)) return names;
    // Reopened: the URL is in the history, so this is the page that had the name.
    const visits = await chrome.history.getVisits({ url: tab.url });
    return visits.length ? reattach(names, tabId, tab.url) : names;
  });
});
