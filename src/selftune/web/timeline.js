// Events of the store's timeline in words (the kinds are written by store/jobs.py,
// registry/versions.py, the connectors and the autopilot).

function version(id) {
  return id === null || id === undefined ? "the base model" : `version #${id}`;
}

export function describeEvent(event) {
  const p = event.payload || {};
  const job = p.job_id !== undefined ? `job ${p.job_id}` : "a job";
  switch (event.kind) {
    case "job_queued":
      return `${job} (${p.kind || "work"}) was queued`;
    case "job_started":
      return `${job} (${p.kind || "work"}) started`;
    case "job_succeeded":
      return `${job} finished`;
    case "job_failed":
      return `${job} failed: ${p.error || "no reason given"}`;
    case "job_cancelled":
      return `${job} was cancelled`;
    case "job_requeued":
      return `${job} went back to the queue: ${p.reason || ""}`;
    case "job_recovered":
      return `${job} was recovered after its worker went silent (now ${p.to})`;
    case "job_retried":
      return `${job} is tried again`;
    case "promote":
      return `${p.actor || "someone"} promoted ${version(p.version_id)} (was ${version(p.previous)})`;
    case "rollback":
      return `${p.actor || "someone"} rolled back to ${version(p.version_id)} (was ${version(p.previous)})`;
    case "connector_run":
      return `connector ${p.connector} ran`;
    case "connector_failed":
      return `connector ${p.connector} failed: ${p.error || ""}`;
    case "autopilot_triggered":
      return `the autopilot queued ${job}, ${p.trigger} trigger: ${p.reason}`;
    case "autopilot_diagnosis":
      return `the autopilot diagnosed ${p.job_id !== undefined ? job : "the served version"}: ${(p.diagnoses || []).map((d) => d.kind.replaceAll("_", " ")).join(", ")}`;
    case "autopilot_fix":
      return `the autopilot's fix${p.job_id !== undefined ? ` for ${job}` : ""}: ${p.fix}${p.retry_job_id ? ` (job ${p.retry_job_id})` : ""}`;
    case "autopilot_alert":
      return `autopilot alert: ${p.message}`;
    case "autopilot_settings_changed":
      return `${p.by || "someone"} changed the autopilot: ${Object.entries(p.changed || {}).map(([name, c]) => `${name} ${c.from} → ${c.to}`).join(", ")}`;
    default:
      return `${event.kind.replaceAll("_", " ")} ${JSON.stringify(p).slice(0, 160)}`;
  }
}
