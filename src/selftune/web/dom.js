// Building the page safely. Text always goes in as text (textContent); the one place markup is
// made from data, a chat answer's Markdown, escapes any HTML the answer holds and then passes
// through DOMPurify. Nothing here uses innerHTML with data.

// el("p", {class: "muted"}, "text", child, ...): attributes, then text or nodes as children.
// "on*" attributes take functions (listeners); others are set as attributes.
export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      node.addEventListener(name.slice(2), value);
    } else {
      node.setAttribute(name, value === true ? "" : String(value));
    }
  }
  append(node, ...children);
  return node;
}

export function append(node, ...children) {
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function clear(node) {
  node.replaceChildren();
  return node;
}

export function $(selector) {
  return document.querySelector(selector);
}

function escapeHtml(text) {
  return text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

let configured = false;

// A Markdown answer as a sanitized fragment. Raw HTML in the answer is shown as text:
// marked's html renderer is replaced by one that escapes it, and DOMPurify removes anything
// that still is not plain formatting (scripts, handlers, javascript: links).
export function markdown(text) {
  const { marked, DOMPurify } = window;
  if (!marked || !DOMPurify) return document.createTextNode(text);
  if (!configured) {
    marked.use({
      gfm: true,
      breaks: true,
      renderer: {
        html(token) {
          return escapeHtml(token.text ?? token.raw ?? "");
        },
      },
    });
    configured = true;
  }
  const html = marked.parse(text, { async: false });
  return DOMPurify.sanitize(html, {
    RETURN_DOM_FRAGMENT: true,
    FORBID_TAGS: ["style", "form", "input", "button", "textarea", "select", "img"],
    FORBID_ATTR: ["style"],
  });
}

export function when(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? iso : date.toLocaleString();
}

export function percent(x) {
  return `${Math.round((x || 0) * 100)}%`;
}

export function number(x, digits = 3) {
  return typeof x === "number" ? x.toFixed(digits) : "—";
}

// A line chart of ``values`` as an SVG element (no library: a polyline in a viewBox).
export function lineChart(values, label) {
  const ns = "http://www.w3.org/2000/svg";
  const width = 320;
  const height = 120;
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("class", "chart");
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", label);
  const title = document.createElementNS(ns, "title");
  title.textContent = label;
  svg.append(title);
  if (values.length < 2) return svg;
  const low = Math.min(...values);
  const high = Math.max(...values);
  const span = high - low || 1;
  const points = values
    .map((v, i) => {
      const x = 8 + (i * (width - 16)) / (values.length - 1);
      const y = 8 + ((high - v) * (height - 24)) / span;
      return `${x.toFixed(1)},${y.toFixed(1)}`;
    })
    .join(" ");
  const line = document.createElementNS(ns, "polyline");
  line.setAttribute("points", points);
  line.setAttribute("class", "chart-line");
  svg.append(line);
  for (const [y, text] of [[14, high], [height - 4, low]]) {
    const tick = document.createElementNS(ns, "text");
    tick.setAttribute("x", "10");
    tick.setAttribute("y", String(y));
    tick.setAttribute("class", "chart-label");
    tick.textContent = text.toFixed(3);
    svg.append(tick);
  }
  return svg;
}

// Ask before something that changes what everyone is served; resolves true on "Yes".
export function confirmAction(text, yes = "Yes") {
  const dialog = $("#confirm-dialog");
  $("#confirm-text").textContent = text;
  $("#confirm-ok").textContent = yes;
  dialog.returnValue = "";
  dialog.showModal();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
  });
}

// Show an error (or any message) at the top of the page, for a moment.
let noticeTimer = null;
export function notify(message, kind = "error") {
  const notice = $("#notice");
  notice.textContent = message;
  notice.className = `notice ${kind}`;
  notice.hidden = false;
  clearTimeout(noticeTimer);
  noticeTimer = setTimeout(() => {
    notice.hidden = true;
  }, 8000);
}
