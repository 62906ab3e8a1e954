// Talking to selftune: chats through its OpenAI-compatible API (the response's "id" is the
// interaction id), thumbs and corrections through /api/feedback.

/** A failed call. ``serverMessage`` (and ``code``) are set when selftune refused with its
 * OpenAI-style error body, ``{"error": {"message", "code", ...}}``. */
export class SelftuneError extends Error {
  constructor(message, { status = null, serverMessage = null, code = null } = {}) {
    super(message);
    Object.assign(this, { status, serverMessage, code });
  }
}

export class SelftuneClient {
  constructor({ server, apiKey, userId, useMemory = false }, fetchImpl = globalThis.fetch.bind(globalThis)) {
    this.server = server.replace(/\/+$/, "");
    this.apiKey = apiKey;
    this.userId = userId;
    this.useMemory = useMemory;
    this.fetch = fetchImpl;
  }

  async #post(path, body) {
    const headers = { "Content-Type": "application/json" };
    if (this.apiKey) headers.Authorization = `Bearer ${this.apiKey}`;
    let response;
    try {
      response = await this.fetch(this.server + path, { method: "POST", headers, body: JSON.stringify(body) });
    } catch (error) {
      throw new SelftuneError(`selftune at ${this.server} cannot be reached (${error.message}); check the server address in the settings and that selftune serve runs`);
    }
    const data = await response.json().catch(() => ({}));
    if (!response.ok) {
      const serverMessage = typeof data?.error?.message === "string" ? data.error.message : null;
      const detail = typeof data?.detail === "string" ? data.detail : data?.detail ? JSON.stringify(data.detail) : null;
      const why = serverMessage ?? detail ?? response.statusText;
      const hint = response.status === 401 ? "; check the API key in the settings" : "";
      throw new SelftuneError(`selftune answered ${response.status} to ${path}: ${why}${hint}`, {
        status: response.status, serverMessage, code: data?.error?.code ?? null,
      });
    }
    return data;
  }

  /** Sends the conversation, with ``"memory": true`` when the settings ask for selftune's
   * memory (left out otherwise); returns ``{interactionId, text, memory}``, ``memory`` the
   * passages selftune added to the prompt (null when it added none). */
  async chat(messages) {
    const body = { messages, user: this.userId };
    if (this.useMemory) body.memory = true;
    const data = await this.#post("/v1/chat/completions", body);
    const memory = Array.isArray(data.memory) ? data.memory : null;
    return { interactionId: data.id, text: data.choices?.[0]?.message?.content ?? "", memory };
  }

  /** Sends a text (a transcript) to selftune's imports, owned by the user id where no API
   * key says who asks; returns ``{import_id, job_id}``. */
  async importText(text, title, tags = ["handsfree"]) {
    return this.#post(`/api/import?user=${encodeURIComponent(this.userId)}`, { text, title, tags });
  }

  /** Rates an answer (1 or -1), optionally with the answer the user wanted. */
  async feedback(interactionId, rating, correction) {
    const body = { interaction_id: interactionId, rating };
    if (correction) body.correction = correction;
    return this.#post("/api/feedback", body);
  }
}
