// The chat panel: past chats (GET /api/interactions, paged), a conversation streamed through
// POST /v1/chat/completions, and feedback on each answer (POST /api/feedback): thumbs up or
// down, or a correction. Each answer names the version that answered it and the memory
// passages its prompt was given.

import { api, streamChat } from "./api.js";
import { $, append, clear, el, markdown, notify, when } from "./dom.js";

export function setupChat(context) {
  const list = $("#messages");
  const form = $("#chat-form");
  const input = $("#chat-input");
  const history = $("#history-list");
  const more = $("#history-more");
  let messages = []; // the conversation as the API takes it
  let nextPage = null;
  let busy = false;

  if (context.me.memory) $("#memory-option").hidden = false;

  function sources(memory) {
    if (!memory || !memory.length) return null;
    return el(
      "details",
      { class: "sources" },
      el("summary", {}, `Sources from memory (${memory.length})`),
      el(
        "ol",
        {},
        memory.map((passage) =>
          el(
            "li",
            {},
            el("strong", {}, passage.title || passage.source || passage.kind),
            " ",
            el("span", { class: "muted" }, `${passage.kind}${passage.source ? ` · ${passage.source}` : ""}`),
            el("p", { class: "passage" }, passage.text),
          ),
        ),
      ),
    );
  }

  function feedbackControls(interactionId, question, done) {
    const status = el("span", { class: "feedback-status", role: "status" });
    const send = async (rating, correction) => {
      try {
        const body = { interaction_id: interactionId, rating };
        if (correction) body.correction = correction;
        await api("POST", "/api/feedback", body);
        status.textContent = correction
          ? "Correction recorded: it is training material now."
          : rating > 0
            ? "Thanks: kept as a good answer."
            : "Recorded as a bad answer.";
        refreshHistory();
      } catch (error) {
        status.textContent = error.message;
      }
    };
    const correctionForm = el(
      "form",
      { class: "correction", hidden: true },
      el(
        "label",
        {},
        `The right answer to “${question.slice(0, 80)}”`,
        el("textarea", { rows: 3, required: true, name: "correction" }),
      ),
      el("button", { type: "submit" }, "Save correction"),
    );
    correctionForm.addEventListener("submit", (event) => {
      event.preventDefault();
      const text = correctionForm.elements.correction.value.trim();
      if (!text) return;
      correctionForm.hidden = true;
      send(-1, text);
    });
    const controls = el(
      "div",
      { class: "feedback" },
      el("button", { type: "button", onclick: () => send(1) }, "Good answer"),
      el("button", { type: "button", onclick: () => send(-1) }, "Bad answer"),
      el(
        "button",
        {
          type: "button",
          onclick: () => {
            correctionForm.hidden = !correctionForm.hidden;
            if (!correctionForm.hidden) correctionForm.elements.correction.focus();
          },
        },
        "Correct this answer",
      ),
      status,
    );
    if (done) status.textContent = done;
    return [controls, correctionForm];
  }

  function userBubble(text) {
    return el("li", { class: "message user" }, el("p", { class: "who" }, "You"), el("div", { class: "text" }, text));
  }

  function assistantBubble() {
    const body = el("div", { class: "text answer" });
    const meta = el("p", { class: "who" }, "Assistant");
    const item = el("li", { class: "message assistant" }, meta, body);
    return { item, body, meta };
  }

  function finishAnswer(bubble, { id, version, text, memory, question, done }) {
    clear(bubble.body).append(markdown(text));
    bubble.meta.textContent = `Assistant · answered by ${version}`;
    bubble.item.dataset.interaction = id;
    append(bubble.item, sources(memory), ...feedbackControls(id, question, done));
  }

  function show(conversation) {
    clear(list);
    for (const message of conversation) {
      if (message.role === "user") list.append(userBubble(message.content));
      else if (message.role === "assistant") {
        const bubble = assistantBubble();
        bubble.body.append(markdown(message.content || ""));
        list.append(bubble.item);
      }
    }
  }

  async function send(text) {
    busy = true;
    $("#chat-send").disabled = true;
    messages.push({ role: "user", content: text });
    list.append(userBubble(text));
    const bubble = assistantBubble();
    const streamed = document.createTextNode("");
    bubble.body.append(streamed);
    bubble.item.setAttribute("aria-busy", "true");
    list.append(bubble.item);
    const body = { messages };
    const template = $("#chat-template").value;
    if (template) body.chat_template = template;
    if (context.me.memory && $("#use-memory").checked) body.memory = true;
    let id = null;
    let version = "?";
    let memory = null;
    try {
      await streamChat(body, (chunk) => {
        id = chunk.id;
        version = chunk.system_fingerprint || version;
        if (chunk.memory) memory = chunk.memory;
        const delta = chunk.choices?.[0]?.delta?.content;
        if (delta) streamed.appendData(delta);
      });
      messages.push({ role: "assistant", content: streamed.data });
      finishAnswer(bubble, { id, version, text: streamed.data, memory, question: text });
      refreshHistory();
    } catch (error) {
      messages.pop();
      bubble.body.textContent = `No answer: ${error.message}`;
      bubble.item.classList.add("failed");
    } finally {
      bubble.item.removeAttribute("aria-busy");
      busy = false;
      $("#chat-send").disabled = false;
    }
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = input.value.trim();
    if (!text || busy) return;
    input.value = "";
    send(text);
  });
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
  $("#new-chat").addEventListener("click", () => {
    messages = [];
    clear(list);
    input.focus();
  });

  async function open(id) {
    try {
      const detail = await api("GET", `/api/interactions/${encodeURIComponent(id)}`);
      const asked = detail.messages.filter((m) => m && typeof m.content === "string");
      messages = asked.map((m) => ({ role: m.role, content: m.content }));
      show(messages);
      const bubble = assistantBubble();
      list.append(bubble.item);
      const question = [...messages].reverse().find((m) => m.role === "user")?.content || "";
      const last = detail.feedback[detail.feedback.length - 1];
      const done = last
        ? last.correction
          ? "Corrected."
          : last.rating > 0
            ? "Rated good."
            : "Rated bad."
        : "";
      finishAnswer(bubble, {
        id: detail.id,
        version: detail.version,
        text: detail.response,
        memory: detail.memory,
        question,
        done,
      });
      messages.push({ role: "assistant", content: detail.response });
      if (detail.chat_template && [...$("#chat-template").options].some((o) => o.value === detail.chat_template)) {
        $("#chat-template").value = detail.chat_template;
      }
      input.focus();
    } catch (error) {
      notify(error.message);
    }
  }

  function historyItem(item) {
    const mark = item.corrected ? "· corrected" : item.rating > 0 ? "· good" : item.rating < 0 ? "· bad" : "";
    return el(
      "li",
      {},
      el(
        "button",
        { type: "button", class: "history-item", onclick: () => open(item.id) },
        el("span", { class: "question" }, item.question || "(empty)"),
        el(
          "span",
          { class: "muted" },
          `${when(item.created_at)} · ${item.version}${context.me.admin && item.user ? ` · ${item.user}` : ""} ${mark}`,
        ),
      ),
    );
  }

  async function loadHistory(before) {
    const query = new URLSearchParams({ kind: "chat", limit: "30" });
    if (before) query.set("before", before);
    const page = await api("GET", `/api/interactions?${query}`);
    if (!before) clear(history);
    history.append(...page.data.map(historyItem));
    nextPage = page.next;
    more.hidden = !nextPage;
  }

  function refreshHistory() {
    loadHistory(null).catch((error) => notify(error.message));
  }

  more.addEventListener("click", () => loadHistory(nextPage).catch((error) => notify(error.message)));
  refreshHistory();
  return { shown: () => input.focus() };
}
