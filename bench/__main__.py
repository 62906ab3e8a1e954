"""``make bench``: every benchmark, one after the other."""

from __future__ import annotations

import sys

from bench import learning_latency

sys.exit(learning_latency.main())
