// The import panel: drop or choose files, paste a text, or give a web page's address
// (POST /api/import); each import's progress follows its job on the live stream, and once it
// ends, what it made (GET /api/imports/{id}): documents, chunks, examples, duplicates, errors.

import { api, upload } from "./api.js";
import { $, clear, el, notify, percent, when } from "./dom.js";
import { setupQuarantine } from "./quarantine.js";

function tags() {
  return $("#import-tags")
    .value.split(",")
    .map((t) => t.trim())
    .filter(Boolean);
}

function importItem(view) {
  const made =
    view.state === "succeeded"
      ? `${view.documents_made} documents, ${view.chunks_made} chunks, ${view.examples_made} examples` +
        (view.duplicates_dropped ? `, duplicate of import ${view.duplicate_of ?? "?"}` : "")
      : view.state === "failed"
        ? `failed: ${view.error?.message || "no reason given"}`
        : `${view.stage || view.state} ${percent(view.progress)}`;
  const documents = (view.documents || []).map((d) =>
    el("li", {}, `${d.title} (${d.format}, ${d.characters} characters, ${d.chunks} chunks)`),
  );
  return el(
    "li",
    { class: `import card state-${view.state}`, "data-import": view.id },
    el("strong", {}, view.source),
    " ",
    el("span", { class: "badge" }, view.state),
    el("p", { class: "made" }, made),
    view.tags.length ? el("p", { class: "muted" }, `tags: ${view.tags.join(", ")}`) : null,
    documents.length ? el("ul", {}, documents) : null,
    view.examples_note ? el("p", { class: "muted" }, view.examples_note) : null,
    el("p", { class: "muted" }, when(view.created_at)),
  );
}

export function setupImport(context) {
  const list = $("#import-list");
  const byJob = new Map(); // job id -> import id, for the imports this page follows

  function show(view) {
    const old = list.querySelector(`[data-import="${view.id}"]`);
    const fresh = importItem(view);
    if (old) old.replaceWith(fresh);
    else list.prepend(fresh);
  }

  async function refresh(importId) {
    show(await api("GET", `/api/imports/${importId}`));
  }

  async function started(queued) {
    byJob.set(queued.job_id, queued.import_id);
    await refresh(queued.import_id);
  }

  async function sendFiles(files) {
    for (const file of files) {
      const query = new URLSearchParams({ filename: file.name });
      if (tags().length) query.set("tags", tags().join(","));
      try {
        await started(await upload(`/api/import?${query}`, file));
      } catch (error) {
        notify(`${file.name}: ${error.message}`);
      }
    }
  }

  const zone = $("#drop-zone");
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    sendFiles([...event.dataTransfer.files]);
  });
  $("#file-input").addEventListener("change", (event) => {
    sendFiles([...event.target.files]);
    event.target.value = "";
  });
  $("#text-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = { text: $("#text-body").value, tags: tags() };
    if ($("#text-title").value.trim()) body.title = $("#text-title").value.trim();
    try {
      await started(await api("POST", "/api/import", body));
      $("#text-body").value = "";
    } catch (error) {
      notify(error.message);
    }
  });
  $("#url-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      await started(await api("POST", "/api/import", { url: $("#url-input").value, tags: tags() }));
      $("#url-input").value = "";
    } catch (error) {
      notify(error.message);
    }
  });

  context.onJob((job) => {
    const importId = byJob.get(job.job_id);
    if (importId !== undefined) refresh(importId).catch(() => {});
  });

  async function load() {
    const page = await api("GET", "/api/imports?limit=100");
    clear(list);
    for (const view of page.data) {
      show(view);
      if (view.job_id && (view.state === "queued" || view.state === "running")) byJob.set(view.job_id, view.id);
    }
  }
  const quarantine = setupQuarantine(context);
  load().catch((e) => notify(e.message));
  context.onOpen(() => load().catch(() => {}));
  return {
    shown: () => {
      load().catch(() => {});
      quarantine.load().catch(() => {});
    },
  };
}
