// The quarantine, in the import panel, for admin keys only: the examples curation held for an
// admin (GET /api/examples?state=flagged, paged by ?after=), each released for training
// (POST /api/examples/{id}/release) or deleted after a confirmation (DELETE /api/examples/{id}).

import { api } from "./api.js";
import { $, clear, confirmAction, el, notify, when } from "./dom.js";

const PAGE = 50;

function conversation(messages) {
  return (messages || []).map((m) =>
    el("p", { class: "passage" }, el("strong", {}, `${m.role || "?"}: `), String(m.content ?? "")),
  );
}

export function setupQuarantine(context) {
  const list = $("#quarantine-list");
  const more = $("#quarantine-more");
  const empty = $("#quarantine-empty");
  let after = 0;

  function settle() {
    empty.hidden = list.children.length > 0 || !more.hidden;
  }

  async function act(item, method, path, done) {
    try {
      await api(method, path);
      item.remove();
      settle();
      notify(done, "ok");
    } catch (error) {
      notify(error.message);
    }
  }

  function item(example) {
    const node = el(
      "li",
      { class: "held card", "data-example": example.id },
      el("strong", {}, `#${example.id}`),
      ` ${example.source} from ${example.user}`,
      el("span", { class: "badge" }, example.reason || "held"),
      example.detail ? el("p", { class: "muted" }, example.detail) : null,
      ...conversation(example.messages),
      el("p", { class: "muted" }, when(example.created_at)),
    );
    node.append(
      el(
        "div",
        { class: "row" },
        el(
          "button",
          {
            type: "button",
            "aria-label": `Release example ${example.id}`,
            onclick: () =>
              act(node, "POST", `/api/examples/${example.id}/release`, `Example ${example.id} released: training may use it.`),
          },
          "Release",
        ),
        el(
          "button",
          {
            type: "button",
            class: "danger",
            "aria-label": `Delete example ${example.id}`,
            onclick: async () => {
              if (!(await confirmAction(`Delete example ${example.id} for good?`, "Delete"))) return;
              await act(node, "DELETE", `/api/examples/${example.id}`, `Example ${example.id} deleted.`);
            },
          },
          "Delete…",
        ),
      ),
    );
    return node;
  }

  async function load(older = false) {
    const query = new URLSearchParams({ state: "flagged", limit: String(PAGE), after: String(older ? after : 0) });
    const page = await api("GET", `/api/examples?${query}`);
    if (!older) clear(list);
    list.append(...page.data.map(item));
    if (page.last_id !== null) after = page.last_id;
    more.hidden = !page.has_more;
    settle();
  }

  if (!context.me.admin) return { load: async () => {} };
  more.addEventListener("click", () => load(true).catch((e) => notify(e.message)));
  load().catch((e) => notify(e.message));
  return { load };
}
