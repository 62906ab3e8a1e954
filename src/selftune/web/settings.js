// The settings panel, for admin keys only: what the server runs with (GET /api/settings), read
// only, grouped by section, with a filter; the server hides secrets before they leave it.

import { api } from "./api.js";
import { $, append, clear, el, notify } from "./dom.js";

function shown(value) {
  if (value === null || value === undefined) return "(none)";
  if (typeof value === "string") return value === "" ? '""' : value;
  return JSON.stringify(value);
}

function table(settings) {
  const rows = settings.map((s) =>
    el(
      "tr",
      { "data-setting": s.name },
      el("th", { scope: "row" }, el("code", {}, s.name)),
      el("td", { class: s.redacted ? "redacted" : null }, shown(s.value)),
      el("td", { class: "muted" }, s.description),
    ),
  );
  return el(
    "table",
    { class: "figures-table settings-table" },
    el("thead", {}, el("tr", {}, ...["setting", "value", "what it does"].map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, rows),
  );
}

export function setupSettings(context) {
  const box = $("#settings-table");
  const filter = $("#settings-filter");
  let settings = null;

  function render() {
    const wanted = filter.value.trim().toLowerCase();
    const picked = settings.filter((s) => !wanted || s.name.toLowerCase().includes(wanted));
    append(clear(box), picked.length ? table(picked) : el("p", { class: "muted" }, "No setting matches."));
  }

  async function load() {
    settings = (await api("GET", "/api/settings")).data;
    render();
  }

  if (!context.me.admin) return {};
  filter.addEventListener("input", () => settings && render());
  return { shown: () => load().catch((e) => notify(e.message)) };
}
