// The memory panel: search (POST /api/memory/search) with tag filters, the tags with their
// counts (GET /api/memory/tags), a tag's summary (read, or queued for the worker to write),
// and deleting the caller's own memory (DELETE /api/memory) after a confirmation.

import { api } from "./api.js";
import { $, clear, confirmAction, el, notify, number } from "./dom.js";

function splitTags(text) {
  return text
    .split(",")
    .map((t) => t.trim())
    .filter(Boolean);
}

export function setupMemory(context) {
  const results = $("#memory-results");
  const tagList = $("#tag-list");
  const summary = $("#tag-summary");
  if (!context.me.memory) {
    $("#memory-off").hidden = false;
    $("#memory-form").querySelector("button").disabled = true;
    $("#forget").disabled = true;
    return { shown: () => {} };
  }

  function hit(record) {
    return el(
      "li",
      { class: "card hit" },
      el("strong", {}, record.title || record.source || record.kind),
      " ",
      el("span", { class: "muted" }, `${record.kind} · score ${number(record.score)}`),
      el("p", { class: "passage" }, record.text),
      record.tags?.length ? el("p", { class: "muted" }, `tags: ${record.tags.join(", ")}`) : null,
    );
  }

  async function search(event) {
    event?.preventDefault();
    const body = { query: $("#memory-query").value, k: 10 };
    const only = splitTags($("#memory-tags").value);
    if (only.length) body.tags = { all: only };
    try {
      const found = await api("POST", "/api/memory/search", body);
      clear(results).append(
        ...(found.data.length ? found.data.map(hit) : [el("li", { class: "muted" }, "Nothing found.")]),
      );
    } catch (error) {
      notify(error.message);
    }
  }

  async function showSummary(tag) {
    summary.hidden = false;
    clear(summary).append(el("h3", {}, `Summary of “${tag}”`));
    const path = `/api/memory/tags/${encodeURIComponent(tag)}/summary`;
    try {
      const view = await api("GET", path);
      summary.append(
        el("p", {}, view.text),
        el("p", { class: "muted" }, `${view.records} records, by ${view.model}${view.stale ? "; its records changed since" : ""}`),
      );
    } catch (error) {
      if (error.code !== "summary_not_found") {
        summary.append(el("p", { class: "error" }, error.message));
        return;
      }
      const status = el("p", { class: "muted", role: "status" }, "No summary yet.");
      summary.append(
        status,
        el(
          "button",
          {
            type: "button",
            onclick: async () => {
              try {
                const queued = await api("POST", path);
                status.textContent = `Queued as job ${queued.job_id}; it shows here when done.`;
              } catch (e) {
                status.textContent = e.message;
              }
            },
          },
          "Write one",
        ),
      );
    }
  }

  async function loadTags() {
    const page = await api("GET", "/api/memory/tags?limit=200");
    clear(tagList).append(
      ...page.data.map((t) =>
        el(
          "li",
          {},
          el("button", { type: "button", class: "tag", onclick: () => showSummary(t.tag) }, `${t.tag} (${t.count})`),
          el(
            "button",
            {
              type: "button",
              class: "link",
              "aria-label": `Search only ${t.tag}`,
              onclick: () => {
                $("#memory-tags").value = t.tag;
                if ($("#memory-query").value) search();
              },
            },
            "filter",
          ),
        ),
      ),
    );
  }

  $("#memory-form").addEventListener("submit", search);
  $("#forget").addEventListener("click", async () => {
    const who = context.me.user || "anonymous";
    if (!(await confirmAction(`Delete every memory record of ${who}? Chats stay recorded.`, "Delete"))) return;
    try {
      const done = await api("DELETE", "/api/memory");
      notify(`Deleted ${done.deleted} memory records of ${done.user}.`, "ok");
      clear(results);
      await loadTags();
    } catch (error) {
      notify(error.message);
    }
  });
  loadTags().catch((e) => notify(e.message));
  return { shown: () => loadTags().catch(() => {}) };
}
