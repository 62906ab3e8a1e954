"""Which GGUF file llama.cpp serves for a GGUF base model.

Training runs on the base's weights dequantized to float32. llama.cpp's quantized matrix
kernels also quantize the activations to 8 bits; on the default 135M model that moves logits by
0.37 on average (up to 2.5) and flips answers the float model gives ("the capital of France"),
so a version would be trained and gated on one model and served on another. An f16 copy made by
llama.cpp's own converter serves the trained weights (top-1 agreement with PyTorch 100%,
largest logit difference 0.07). It costs memory (270 MB instead of 92 MB for the default) and
decode speed (about 35% slower on a 2-core CPU), so large bases keep their file.
"""

from __future__ import annotations

import logging
from pathlib import Path

from selftune.atomic import atomic_file, build_once
from selftune.config import Settings
from selftune.engines.llamacpp_lib import gguf_weights, llama_quantize
from selftune.models.base import BaseModelSource

__all__ = ["serving_gguf"]

log = logging.getLogger(__name__)

_AUTO_LIMIT_BYTES = 2 << 30


def serving_gguf(settings: Settings, source: BaseModelSource) -> Path:
    """The file to serve: the base GGUF itself or its cached f16 copy (made here, once)."""
    path = Path(source.location)
    choice = settings.serve.gguf_serving
    if choice == "file":
        return path
    weights = gguf_weights(path)
    if not weights.quantized or (choice == "auto" and 2 * weights.n_params > _AUTO_LIMIT_BYTES):
        return path
    target = settings.cache_dir / "models" / f"{path.stem}-{source.fingerprint}.f16.gguf"

    def convert() -> None:
        log.info("converting %s to f16 for serving (once)", path.name)
        with atomic_file(target) as tmp:
            # allow_requantize: the source is quantized, and f16 dequantizes it.
            llama_quantize(path, tmp, "MOSTLY_F16", allow_requantize=True)

    build_once(target, convert)  # the server and its worker: one converts, the other waits
    return target
