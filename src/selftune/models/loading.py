"""One model load at a time in a process.

transformers imports its model and tokenizer classes lazily, on first use, and that first use is
not safe from two threads at once: while the serving engine loads in one thread and the memory's
embedding model in another, one of them can fail with ``ImportError: cannot import name
'AutoTokenizer' from 'transformers'``. Everything that loads a model in a thread of a process
that may load another holds :data:`MODEL_LOADING` while it does.
"""

from __future__ import annotations

import threading

__all__ = ["MODEL_LOADING"]

MODEL_LOADING = threading.RLock()
