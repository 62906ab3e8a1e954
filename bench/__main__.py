"""``make bench``: every benchmark, one after the other, each in its own process.

Separate processes keep one benchmark's threads (PyTorch's and llama.cpp's OpenMP teams, the
server's) from idling or spinning through the next one's measurements.
"""

from __future__ import annotations

import subprocess
import sys

BENCHMARKS = (
    "bench.learning_latency",
    "bench.knowledge_editing",
    "bench.training_throughput",
    "bench.serving",
    "bench.serving_under_training",
    "bench.proxy_latency",
    "bench.fuzz",
    "bench.curation",
    "bench.import_throughput",
    "bench.memory_retrieval",
    "bench.memory_chat",
    "bench.memory_index_faiss",
)

status = 0
for index, module in enumerate(BENCHMARKS):
    if index:
        print(flush=True)
    status = subprocess.run([sys.executable, "-m", module], check=False).returncode or status
sys.exit(status)
