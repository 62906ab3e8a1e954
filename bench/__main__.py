"""``make bench``: every benchmark, one after the other."""

from __future__ import annotations

import sys

from bench import learning_latency, serving, training_throughput

status = learning_latency.main()
print()
status = training_throughput.main() or status
print()
status = serving.main() or status
sys.exit(status)
