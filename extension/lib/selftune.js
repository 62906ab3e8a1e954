// Talking to selftune: chats through its OpenAI-compatible API (the response's "id" is the
// interaction id), thumbs and corrections through /api/feedback.

export class SelftuneError extends Error {}

export class SelftuneClient {
  constructor({ server, apiKey, userId }, fetchImpl = globalThis.fetch.bind(globalThis)) {
    this.server = server.replace(/\/+$/, "");
    this.apiKey = apiKey;
    this.userId = userId;
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
      const why = data?.error?.message ?? data?.detail ?? response.statusText;
      const hint = response.status === 401 ? "; check the API key in the settings" : "";
      throw new SelftuneError(`selftune answered ${response.status} to ${path}: ${why}${hint}`);
    }
    return data;
  }

  /** Sends the conversation; returns ``{interactionId, text}``. */
  async chat(messages) {
    const data = await this.#post("/v1/chat/completions", { messages, user: this.userId });
    return { interactionId: data.id, text: data.choices?.[0]?.message?.content ?? "" };
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
