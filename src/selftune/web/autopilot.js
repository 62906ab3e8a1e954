// The learning panel's autopilot card: whether selftune trains by itself, what it is doing and
// why (GET /api/autopilot), and for an admin a switch (PATCH /api/settings/autopilot).

import { api } from "./api.js";
import { $, append, clear, el, notify, when } from "./dom.js";

function stateLine(state) {
  if (!state.enabled) return "Off: train with the button above, or switch it on.";
  if (state.running) return `Training job ${state.job_id} is running${state.paused ? ", paused for serving" : ""}.`;
  if (state.scheduled) return `Training job ${state.job_id} is queued.`;
  return `On. ${state.why}`;
}

export function setupAutopilot(context) {
  const card = $("#autopilot");

  async function load() {
    try {
      const { state } = await api("GET", "/api/autopilot");
      const on = Object.entries(state.triggers).filter(([, enabled]) => enabled).map(([name]) => name);
      const last = state.last_run;
      append(
        clear(card),
        el("p", { id: "autopilot-state" }, stateLine(state)),
        last
          ? el("p", { class: "muted" }, `Last run: ${when(last.at)}, job ${last.job_id}, ${last.trigger} trigger: ${last.reason}`)
          : el("p", { class: "muted" }, "It has not trained yet."),
        state.next_run ? el("p", { class: "muted" }, `Next run: ${when(state.next_run)}`) : null,
        el("p", { class: "muted" }, `Triggers on: ${on.join(", ") || "none"}`),
        context.me.admin ? toggle(state.enabled) : null,
      );
    } catch (error) {
      append(clear(card), el("p", { class: "muted" }, `The autopilot could not be read: ${error.message}`));
    }
  }

  function toggle(enabled) {
    const button = el("button", { type: "button", id: "autopilot-toggle" }, enabled ? "Switch off" : "Switch on");
    button.addEventListener("click", async () => {
      try {
        await api("PATCH", "/api/settings/autopilot", { enabled: !enabled });
        await load();
      } catch (error) {
        notify(error.message);
      }
    });
    return button;
  }

  context.onStore((event) => {
    if (event.kind.startsWith("autopilot_") || event.kind.startsWith("job_")) load();
  });
  load();
  return { shown: load };
}
