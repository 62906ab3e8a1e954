// Talking to selftune's API: the key (session storage, sent as a header, never in a URL),
// OpenAI-style error bodies turned into readable errors, chat streams read as they come, and
// the live event stream (server-sent events, authorized by a short-lived cookie).

const KEY = "selftune.key";

export class ApiError extends Error {
  constructor(status, body) {
    const error = (body && body.error) || {};
    super(error.message || `the server answered ${status}`);
    this.status = status;
    this.code = error.code || null;
  }
}

export function savedKey() {
  return sessionStorage.getItem(KEY) || "";
}

export function saveKey(key) {
  if (key) sessionStorage.setItem(KEY, key);
  else sessionStorage.removeItem(KEY);
}

// Called when a request is refused for want of a valid key (set by app.js: it asks for one).
let onUnauthorized = () => {};
export function whenUnauthorized(handler) {
  onUnauthorized = handler;
}

function headers(extra = {}) {
  const key = savedKey();
  return key ? { Authorization: `Bearer ${key}`, ...extra } : extra;
}

async function failure(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  const error = new ApiError(response.status, body);
  if (response.status === 401) onUnauthorized(error);
  return error;
}

// A JSON call: api("GET", "/api/versions"), api("POST", "/api/feedback", {...}).
export async function api(method, path, body) {
  const init = { method, headers: headers() };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (!response.ok) throw await failure(response);
  return response.status === 204 ? null : response.json();
}

// A file as the raw body (POST /api/import takes no multipart forms).
export async function upload(path, file) {
  const type = ["application/pdf", "text/html", "text/markdown"].includes(file.type)
    ? file.type
    : "application/octet-stream";
  const response = await fetch(path, {
    method: "POST",
    headers: headers({ "Content-Type": type }),
    body: file,
  });
  if (!response.ok) throw await failure(response);
  return response.json();
}

// A download needs the key too, so it is fetched, then saved from a blob's URL.
export async function download(path, fallbackName) {
  const response = await fetch(path, { headers: headers() });
  if (!response.ok) throw await failure(response);
  const disposition = response.headers.get("content-disposition") || "";
  const named = /filename="?([^";]+)"?/.exec(disposition);
  const blob = await response.blob();
  const url = URL.createObjectURL(blob);
  const link = document.createElement("a");
  link.href = url;
  link.download = named ? named[1] : fallbackName;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
  return { sha256: response.headers.get("x-checksum-sha256"), bytes: blob.size };
}

// POST a chat with "stream": true and call onChunk(chunk) for each server-sent chunk.
export async function streamChat(body, onChunk, signal) {
  const response = await fetch("/v1/chat/completions", {
    method: "POST",
    headers: headers({ "Content-Type": "application/json" }),
    body: JSON.stringify({ ...body, stream: true }),
    signal,
  });
  if (!response.ok) throw await failure(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new ApiError(500, chunk);
        onChunk(chunk);
      }
    }
  }
}

// The live stream: listeners.store(event) for each new timeline event, listeners.job(job)
// for each change of a watched job. The server ends each connection after a minute and the
// browser reconnects by itself, with the last event's id; the cookie that authorizes it is
// renewed before it expires.
export class LiveEvents {
  constructor(listeners) {
    this.listeners = listeners;
    this.source = null;
    this.timer = null;
    this.lastId = null;
  }

  async renewToken() {
    const token = await api("POST", "/api/events/token");
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.renewToken().catch(() => this.restartSoon()),
      Math.max(10, token.expires_in - 60) * 1000);
  }

  restartSoon() {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.start(), 3000);
  }

  async start() {
    this.stop();
    try {
      await this.renewToken();
    } catch {
      this.restartSoon();
      return;
    }
    const query = this.lastId !== null ? `?after=${encodeURIComponent(this.lastId)}` : "";
    const source = new EventSource(`/api/events/stream${query}`);
    source.addEventListener("store", (e) => {
      this.lastId = e.lastEventId || this.lastId;
      this.listeners.store(JSON.parse(e.data));
    });
    source.addEventListener("job", (e) => this.listeners.job(JSON.parse(e.data)));
    source.addEventListener("open", () => this.listeners.state?.(true));
    source.addEventListener("error", () => {
      this.listeners.state?.(false);
      // A refused reconnect (the cookie expired) closes the source: start again.
      if (source.readyState === EventSource.CLOSED) this.restartSoon();
    });
    this.source = source;
  }

  stop() {
    clearTimeout(this.timer);
    if (this.source) this.source.close();
    this.source = null;
  }
}
