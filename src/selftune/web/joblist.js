// The jobs list of the learning panel: each job with its state, and what may be done about it.
// GET /api/jobs lists the jobs the key may act on (a user's key its own, an admin's every
// user's), so each gets its actions: Cancel while queued or running (POST /api/jobs/{id}/cancel;
// a running job stops at its next step), Retry once failed or cancelled (.../retry).

import { api } from "./api.js";
import { el, notify, when } from "./dom.js";

const ACTIONS = {
  cancel: { label: "Cancel", when: (job) => (job.status === "queued" || job.status === "running") && !job.cancel_requested },
  retry: { label: "Retry", when: (job) => job.status === "failed" || job.status === "cancelled" },
};

// One job as a list item. ``open(job)`` shows it in the job box; ``changed(job)`` gets the
// job as an action left it.
export function jobItem(job, { open, changed, showUser }) {
  const buttons = Object.entries(ACTIONS)
    .filter(([, action]) => action.when(job))
    .map(([name, action]) =>
      el(
        "button",
        {
          type: "button",
          class: `job-action ${name}`,
          "aria-label": `${action.label} job ${job.job_id}`,
          onclick: async (event) => {
            const button = event.currentTarget;
            button.disabled = true;
            try {
              changed(await api("POST", `/api/jobs/${job.job_id}/${name}`));
            } catch (error) {
              notify(error.message);
              button.disabled = false;
            }
          },
        },
        action.label,
      ),
    );
  const stopping = job.status === "running" && job.cancel_requested ? " (stopping)" : "";
  return el(
    "li",
    { class: "job-item", "data-job": job.job_id, "data-status": job.status },
    el(
      "button",
      { type: "button", class: "link", onclick: () => open(job) },
      `#${job.job_id} ${job.kind}: ${job.status}${stopping}${job.outcome ? ` (${job.outcome})` : ""}`,
    ),
    el("span", { class: "muted" }, `${showUser && job.user ? ` ${job.user} ·` : ""} ${when(job.created_at)} `),
    ...buttons,
  );
}
