// The versions panel: the versions, newest first, a page at a time (GET /api/versions?limit=),
// each with its lineage, its figures against what was served when
// it was judged (its gate's), promote and roll back (admin keys, after a confirmation), and
// downloads (fetched with the key, saved from a blob; the checksum is shown).

import { api, download } from "./api.js";
import { $, clear, confirmAction, el, notify, number, when } from "./dom.js";

const FIGURES = [
  ["new_recall", "recall of the new material", "new_recall_current", "new_recall_candidate"],
  ["new_loss", "loss on the new material", "new_loss_current", "new_loss_candidate"],
  ["regression_loss", "loss on what it knew", "regression_loss_current", "regression_loss_candidate"],
];

function figuresTable(version) {
  const figures = version.gate?.figures;
  if (!figures) return el("p", { class: "muted" }, "No gate figures.");
  const rows = FIGURES.map(([key, label, before, after]) =>
    el("tr", { "data-figure": key }, el("th", { scope: "row" }, label), el("td", {}, number(figures[before])), el("td", {}, number(figures[after]))),
  );
  rows.push(
    el("tr", {}, el("th", { scope: "row" }, "known answers kept"), el("td", {}, "—"), el("td", {}, number(figures.retention_candidate, 2))),
  );
  return el(
    "table",
    { class: "figures-table" },
    el("thead", {}, el("tr", {}, el("th", {}, ""), el("th", { scope: "col" }, "served then"), el("th", { scope: "col" }, version.name))),
    el("tbody", {}, rows),
  );
}

const PAGE = 20;

export function setupVersions(context) {
  const list = $("#version-list");
  const more = $("#versions-more");
  let next = null;

  async function act(path, body, question, yes) {
    if (!(await confirmAction(question, yes))) return;
    try {
      const serving = await api("POST", path, body);
      notify(`Now serving ${serving.serving}.`, "ok");
      await load();
    } catch (error) {
      notify(error.message);
    }
  }

  function downloads(version) {
    const status = el("span", { class: "muted", role: "status" });
    const get = (format, name) => async () => {
      status.textContent = "Downloading…";
      try {
        const got = await download(`/api/versions/${encodeURIComponent(version.name)}/download?format=${format}`, name);
        status.textContent = `Saved ${got.bytes} bytes${got.sha256 ? `, sha256 ${got.sha256}` : ""}`;
      } catch (error) {
        status.textContent = error.message;
      }
    };
    const exportFormat = el(
      "select",
      { "aria-label": `Export format for ${version.name}` },
      ["f16", "q8_0", "q4_k_m", "f32"].map((f) => el("option", { value: f }, f)),
    );
    const exportIt = async () => {
      try {
        const answer = await api("POST", `/api/versions/${encodeURIComponent(version.name)}/export`, { format: exportFormat.value });
        status.textContent = answer.job_id
          ? `Export queued as job ${answer.job_id}: follow it under Learning, then download it here.`
          : `Exported and checked: ${answer.check?.kept === false ? "check failed" : "ready"}.`;
      } catch (error) {
        status.textContent = error.message;
      }
    };
    return el(
      "div",
      { class: "downloads row" },
      el("button", { type: "button", onclick: get("peft", `${version.name}-peft.tar`) }, "PEFT adapter"),
      el("button", { type: "button", onclick: get("gguf", `${version.name}.gguf`) }, "GGUF adapter"),
      exportFormat,
      el("button", { type: "button", onclick: exportIt }, "Export merged GGUF"),
      el("button", { type: "button", onclick: () => get(`merged-${exportFormat.value}`, `${version.name}.gguf`)() }, "Merged GGUF"),
      el("button", { type: "button", onclick: () => get(`modelfile-${exportFormat.value}`, "Modelfile")() }, "Modelfile"),
      status,
    );
  }

  function item(version) {
    const passed = version.gate?.passed;
    return el(
      "li",
      { class: `version card${version.serving ? " serving" : ""}`, "data-version": version.name },
      el(
        "h3",
        {},
        version.name,
        version.serving ? el("span", { class: "badge" }, "serving") : null,
        el("span", { class: `badge ${passed ? "pass" : "fail"}` }, passed ? "passed its gate" : "refused by its gate"),
      ),
      el(
        "p",
        { class: "muted" },
        `from ${version.parent} · ${when(version.created_at)} · trained on ${version.trained_on.length} examples, ${version.held_out.length} held out${version.job_id ? ` · job ${version.job_id}` : ""}`,
      ),
      version.gate?.reason ? el("p", {}, version.gate.reason) : null,
      figuresTable(version),
      context.me.admin && passed && !version.serving
        ? el(
            "button",
            {
              type: "button",
              class: "promote",
              onclick: () =>
                act(
                  `/api/versions/${encodeURIComponent(version.name)}/promote`,
                  { reason: "promoted from the dashboard" },
                  `Serve ${version.name} to every user from now on?`,
                  `Promote ${version.name}`,
                ),
            },
            `Promote ${version.name}…`,
          )
        : null,
      downloads(version),
    );
  }

  // The first page anew (older: false), or the page after the last one shown.
  async function load(older = false) {
    const query = new URLSearchParams({ limit: String(PAGE) });
    if (older && next) query.set("before", String(next));
    const versions = await api("GET", `/api/versions?${query}`);
    $("#serving-line").textContent = `Serving: ${versions.serving}. ${versions.total} versions.`;
    if (!older) clear(list);
    list.append(...versions.data.map(item));
    next = versions.next;
    more.hidden = !next;
  }

  more.addEventListener("click", () => load(true).catch((e) => notify(e.message)));
  $("#rollback").addEventListener("click", () =>
    act("/api/rollback", { reason: "rolled back from the dashboard" }, "Serve what was served before this?", "Roll back"),
  );
  context.onStore((event) => {
    if (["promote", "rollback", "job_succeeded"].includes(event.kind)) load().catch(() => {});
  });
  load().catch((e) => notify(e.message));
  return { shown: () => load().catch((e) => notify(e.message)) };
}
