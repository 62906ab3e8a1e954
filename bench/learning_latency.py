"""Learning latency: from the training request to the first served answer with the new fact.

Run with ``make bench`` (or ``python -m bench.learning_latency``). It starts ``selftune serve``
with the default model in a fresh data folder, teaches the fact through three corrected chats,
and times ``POST /api/train`` until a paraphrased question is answered with the fact, broken down
into the job's stages.
"""

from __future__ import annotations

import datetime as dt
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench.cpu_share import CpuShare
from bench.scenario import FACT_WORD, PARAPHRASES, running_server
from bench.training_throughput import BATCH_SHAPE, matmul_peak


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="selftune-bench-") as tmp:
        started_server = time.monotonic()
        with running_server(Path(tmp) / "data") as server:
            ready = time.monotonic() - started_server
            print(
                f"server and worker ready in {ready:.1f}s (model load, base answers to probes, "
                "the compiled training step)"
            )
            server.teach()
            speed_before = _batch_matmul_gflops()
            cpu = CpuShare(sessions=[server.process.pid])  # the server and its worker are ours
            t0 = time.monotonic()
            job = server.client.post("/api/train", json={}).json()
            view = server.wait_job(job["job_id"], timeout=600)
            t_job = time.monotonic()
            if view["status"] != "succeeded" or not view["result"]["promoted"]:
                print(f"FAILED: job {view['status']}: {view['error'] or view['result']['gate']}")
                return 1
            answer, deadline = "", time.monotonic() + 60
            while FACT_WORD not in answer and time.monotonic() < deadline:
                answer = server.answer(PARAPHRASES[0])
            t_answer = time.monotonic()
            stages = view["result"]["seconds"]
            created = dt.datetime.fromisoformat(view["created_at"])
            began = dt.datetime.fromisoformat(view["started_at"])
            print("learning latency (default model, 3 corrected chats):")
            print(f"  queue wait          {(began - created).total_seconds():6.1f}s")
            for stage in ("dataset", "train", "save", "evaluate", "gate"):
                print(f"  {stage:<19} {stages[stage]:6.1f}s")
            print(f"  load into serving   {t_answer - t_job:6.1f}s (incl. one answer)")
            print(f"  total               {t_answer - t0:6.1f}s")
            gate = view["result"]["gate"]
            print(f"  gate: {gate['reason']}")
            versions = server.client.get("/api/versions").json()["data"]
            [trained] = [v for v in versions if v["name"] == view["result"]["version"]]
            figures = trained["train_metrics"]
            config = figures["config"]
            print(
                f"  training: {figures['steps']} steps"
                f"{' (stopped early)' if figures['stopped_early'] else ''}, "
                f"{figures['tokens']} example tokens at {figures['tokens_per_second']:.0f}/s, "
                f"{config['device']}, {'bf16 autocast' if config['bf16'] else 'float32'}"
                f"{', compiled' if config.get('compile') else ''}"
            )
            steps = figures["step_seconds"]
            print(
                f"  step seconds: first {steps[0]:.2f}, median {statistics.median(steps):.2f}, "
                f"range {min(steps):.2f}-{max(steps):.2f}"
            )
            _print_stopping(figures)
            print(f"  answer to {PARAPHRASES[0]!r}: {answer!r}")
            contention = cpu.summary("the training request")
            if contention:
                print(contention)
            print(
                f"this machine's float32 matmul at a training batch's shape: "
                f"{speed_before:.0f} GFLOP/s before, {_batch_matmul_gflops():.0f} after"
            )
            return 0 if FACT_WORD in answer else 1


def _print_stopping(figures: dict[str, Any]) -> None:
    """Each step's loss on the new material and replay KL, against the early-stopping rule's
    thresholds: what decided the run's length."""
    config = figures["config"]
    new = figures["new_material_losses"]
    weight = config["replay_weight"]
    kl = [(total - n) / weight for total, n in zip(figures["losses"], new, strict=True)]
    print(
        f"  stops early once, {config['stop_patience']} steps in a row, the new material's loss "
        f"< {config['stop_loss']} and the replay KL < {config['stop_replay_kl']}:"
    )
    print("    new loss   " + " ".join(f"{x:.3f}" for x in new))
    print("    replay KL  " + " ".join(f"{x:.3f}" for x in kl))


def _batch_matmul_gflops() -> float:
    """The machine's speed now. A shared machine's changes from hour to hour with no other
    process in sight (70 to 128 GFLOP/s in one day on a 2-core EPYC), and training time with it.
    """
    return matmul_peak(BATCH_SHAPE, torch.float32).gflops


if __name__ == "__main__":
    sys.exit(main())
