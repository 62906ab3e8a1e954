// The learning panel: queue training, follow the current job live (its stage, step, loss,
// time left, from the event stream), then the gate's verdict in words; the jobs; the timeline.

import { api } from "./api.js";
import { $, append, clear, el, lineChart, notify, number, percent, when } from "./dom.js";
import { setupAutopilot } from "./autopilot.js";
import { jobItem } from "./joblist.js";
import { describeEvent } from "./timeline.js";

// A running training job's stage: "training step 3/10 loss 2.412", and from trainers that
// record it, " grad 0.531" (the gradient norm before clipping; nan or inf when it blew up).
const STEP = /step (\d+)\/(\d+) loss ([\d.]+)(?: grad ([\d.]+|nan|inf))?/;

// The latest gradient norm: the running job's stage says it, a finished one's metrics list one
// per step (grad_norms); "—" where neither does.
function gradientNorm(step, metrics) {
  if (step && step[4] !== undefined) return step[4];
  const norms = Array.isArray(metrics.grad_norms) ? metrics.grad_norms.filter((x) => typeof x === "number") : [];
  return norms.length ? number(norms[norms.length - 1]) : "—";
}

// The learning rate at each step, as the trainer's schedule makes it (training/trainer.py):
// linear warm-up, then constant.
function learningRates(config, steps) {
  if (!config || typeof config.learning_rate !== "number") return [];
  const warmup = config.warmup_steps || 0;
  return Array.from({ length: steps }, (_, step) =>
    step < warmup ? (config.learning_rate * (step + 1)) / warmup : config.learning_rate,
  );
}

function verdict(job, version) {
  const result = job.result || {};
  const gate = result.gate || version?.gate;
  if (!gate) return null;
  const rules = (gate.rules || []).map((rule) =>
    el("li", { class: rule.passed ? "pass" : "fail" }, `${rule.passed ? "✓" : "✗"} ${rule.rule}: ${rule.detail}`),
  );
  const changed = (gate.changed_known_answers || []).map((item) =>
    el(
      "li",
      {},
      el("strong", {}, item.question),
      el("p", {}, `served: ${item.served_answer}`),
      el("p", {}, `candidate: ${item.candidate_answer}`),
    ),
  );
  const heldout = (gate.heldout || []).slice(0, 10).map((item) =>
    el("li", {}, JSON.stringify(item).slice(0, 300)),
  );
  return el(
    "div",
    { class: "verdict", id: "verdict" },
    el("h4", {}, gate.passed ? "The gate passed it" : "The gate refused it"),
    el("p", { class: "outcome" }, job.outcome || gate.reason),
    job.next_step ? el("p", { class: "muted" }, `Next: ${job.next_step}`) : null,
    el("p", {}, `Why: ${gate.reason}`),
    el("ul", { class: "rules" }, rules),
    changed.length
      ? el("details", {}, el("summary", {}, `Known answers it changed (${changed.length})`), el("ol", {}, changed))
      : el("p", { class: "muted" }, "No known answer changed."),
    heldout.length ? el("details", {}, el("summary", {}, "Held-out answers"), el("ol", {}, heldout)) : null,
  );
}

// The training queue (GET /api/queue/stats): examples by source with their priority, and what
// the next run would take.
function queueView(stats) {
  const rows = stats.by_source.map((s) =>
    el(
      "tr",
      { "data-source": s.source },
      el("th", { scope: "row" }, s.source),
      ...[s.priority, s.waiting, s.learned, s.kept, s.rejected, s.flagged].map((n) => el("td", {}, String(n))),
    ),
  );
  const next = stats.next_run;
  return [
    el(
      "table",
      { class: "figures-table" },
      el(
        "thead",
        {},
        el("tr", {}, ...["source", "priority", "waiting", "learned", "kept", "rejected", "held"].map((h) => el("th", { scope: "col" }, h))),
      ),
      el("tbody", {}, rows),
    ),
    el(
      "p",
      {},
      `Next run: ${next.new} new and ${next.replayed} earlier examples (${next.size} in all), against ${stats.serving}.`,
    ),
  ];
}

export function setupLearning(context) {
  const box = $("#job");
  const jobList = $("#job-list");
  const timeline = $("#timeline");
  const moreEvents = $("#timeline-more");
  const losses = new Map(); // job id -> [loss at each step seen]
  const jobs = new Map();
  let current = null;
  let nextEvents = null;

  async function renderJob(job) {
    current = job.job_id;
    const step = STEP.exec(job.stage);
    if (step) {
      const seen = losses.get(job.job_id) || [];
      seen[Number(step[1]) - 1] = Number(step[3]);
      losses.set(job.job_id, seen);
    }
    let version = null;
    if (job.status === "succeeded" && job.result?.version_id) {
      // The one version: the newest older than the next id (GET /api/versions is paged).
      const id = job.result.version_id;
      const versions = await api("GET", `/api/versions?before=${id + 1}&limit=1`).catch(() => null);
      version = versions?.data.find((v) => v.id === id) || null;
    }
    const metrics = version?.train_metrics || {};
    const curve = metrics.losses || (losses.get(job.job_id) || []).filter((x) => x !== undefined);
    const rates = learningRates(metrics.config, curve.length);
    let left = "—";
    if (job.status === "running" && job.started_at && job.progress > 0.02) {
      const spent = (Date.now() - new Date(job.started_at).getTime()) / 1000;
      left = `about ${Math.max(0, Math.round((spent / job.progress) * (1 - job.progress)))} s`;
    }
    append(
      clear(box),
      el("h3", {}, `Job ${job.job_id}: ${job.kind}, ${job.status}`),
      el(
        "div",
        { class: "progress", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100, "aria-valuenow": Math.round(job.progress * 100) },
        el("div", { class: "bar" }),
      ),
      el(
        "dl",
        { class: "figures" },
        el("dt", {}, "Stage"), el("dd", { id: "job-stage" }, job.stage),
        el("dt", {}, "Step"), el("dd", {}, step ? `${step[1]} of ${step[2]}` : metrics.steps ? `${metrics.steps} done` : "—"),
        el("dt", {}, "Loss"), el("dd", {}, step ? step[3] : curve.length ? number(curve[curve.length - 1]) : "—"),
        el("dt", {}, "Learning rate"), el("dd", {}, rates.length ? rates[rates.length - 1].toExponential(2) : "—"),
        el("dt", {}, "Gradient norm"), el("dd", { id: "job-grad-norm" }, gradientNorm(step, metrics)),
        el("dt", {}, "Time left"), el("dd", {}, left),
      ),
      curve.length > 1 ? lineChart(curve, `Training loss over ${curve.length} steps`) : null,
      job.error ? el("p", { class: "error" }, job.error) : null,
      verdict(job, version),
    );
    // The bar's width: set through the CSSOM, which the Content-Security-Policy allows.
    box.querySelector(".bar").style.width = percent(job.progress);
  }

  function listed(job) {
    return jobItem(job, {
      open: (shown) => renderJob(shown).catch((e) => notify(e.message)),
      changed: (changed) => {
        jobs.set(changed.job_id, changed);
        if (current === changed.job_id) renderJob(changed).catch(() => {});
        loadJobs().catch((e) => notify(e.message));
      },
      showUser: context.me.admin,
    });
  }

  async function loadQueue() {
    const queue = $("#queue");
    try {
      append(clear(queue), ...queueView(await api("GET", "/api/queue/stats")));
    } catch (error) {
      append(clear(queue), el("p", { class: "muted" }, `The queue could not be read: ${error.message}`));
    }
  }

  async function loadJobs() {
    const page = await api("GET", "/api/jobs");
    jobs.clear();
    for (const job of page.data) jobs.set(job.job_id, job);
    clear(jobList).append(...page.data.slice(0, 20).map(listed));
    const running = page.data.find((j) => j.kind === "train" && (j.status === "running" || j.status === "queued"));
    const shown = running || page.data.find((j) => j.kind === "train");
    if (shown && current === null) await renderJob(shown);
  }

  function eventItem(event) {
    return el("li", { "data-kind": event.kind }, el("time", {}, when(event.created_at)), " ", describeEvent(event));
  }

  async function loadEvents(before) {
    const query = new URLSearchParams({ limit: "30" });
    if (before) query.set("before", String(before));
    const page = await api("GET", `/api/events?${query}`);
    if (!before) clear(timeline);
    timeline.append(...page.data.map(eventItem));
    nextEvents = page.next;
    moreEvents.hidden = !nextEvents;
  }

  $("#train-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      const queued = await api("POST", "/api/train", { reason: $("#train-reason").value || "dashboard" });
      current = queued.job_id;
      await loadJobs();
      const job = jobs.get(queued.job_id);
      if (job) await renderJob(job);
    } catch (error) {
      notify(error.message);
    }
  });
  moreEvents.addEventListener("click", () => loadEvents(nextEvents).catch((e) => notify(e.message)));

  context.onJob((job) => {
    const known = jobs.has(job.job_id);
    jobs.set(job.job_id, job);
    if (job.kind === "train" && (current === null || current === job.job_id || job.status === "running")) {
      renderJob(job).catch((e) => notify(e.message));
    }
    const ended = job.status === "succeeded" || job.status === "failed" || job.status === "cancelled";
    if (ended || !known) loadJobs().catch(() => {}); // a new job joins the list, with its actions
    if (ended) loadQueue();
  });
  context.onStore((event) => timeline.prepend(eventItem(event)));

  const autopilot = setupAutopilot(context);
  loadJobs().catch((e) => notify(e.message));
  loadEvents(null).catch((e) => notify(e.message));
  loadQueue();
  return {
    shown: () => {
      loadJobs().catch(() => {});
      loadQueue();
      autopilot.shown();
    },
  };
}
