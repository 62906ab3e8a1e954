"""llama.cpp's bindings, loaded in one place: the module, a GGUF's weight facts, its quantizer.

Everything in selftune that calls llama.cpp (the serving engine, the f16 serving copy, GGUF
exports) goes through :func:`llama_cpp_module`, so the shared library is loaded and its logging
set up once. llama.cpp reports through a log callback, not by writing to file descriptor 2
itself, so :func:`llama_quantize` collects the quantizer's messages by swapping that callback
for the call: no process-wide redirect of stderr, which would swallow the host's own log lines.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from selftune.engines.base import EngineError

__all__ = ["GgufWeights", "gguf_weights", "llama_cpp_module", "llama_quantize"]

# llama_ftype values whose weight matrices are not quantized: ALL_F32, MOSTLY_F16, MOSTLY_BF16.
_UNQUANTIZED_FILE_TYPES = {0, 1, 32}
_log_lock = threading.Lock()  # one collector of llama.cpp's messages at a time


def llama_cpp_module() -> Any:
    """The bindings module, imported on first use: importing it loads the shared library."""
    import llama_cpp

    # llama.cpp logs every tensor at load time; keep warnings and errors only.
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
    return llama_cpp


@dataclasses.dataclass(frozen=True)
class GgufWeights:
    quantized: bool  # any weight matrix below 16 bits
    n_params: int


def gguf_weights(path: Path) -> GgufWeights:
    """What a GGUF's weights are, from its metadata: a vocabulary-only load, ~0.1 s."""
    lib = llama_cpp_module()
    params = lib.llama_model_default_params()
    params.vocab_only = True
    model = lib.llama_model_load_from_file(str(path).encode(), params)
    if not model:
        raise EngineError(f"llama.cpp could not read {path}; is it a valid GGUF model?")
    try:
        buffer = ctypes.create_string_buffer(32)
        found = lib.llama_model_meta_val_str(model, b"general.file_type", buffer, 32)
        file_type = int(buffer.value or b"-1") if found >= 0 else -1
        return GgufWeights(
            quantized=file_type not in _UNQUANTIZED_FILE_TYPES,
            n_params=int(lib.llama_model_n_params(model)),
        )
    finally:
        lib.llama_model_free(model)


def llama_quantize(
    source: Path, target: Path, ftype: str, *, threads: int = 0, allow_requantize: bool = False
) -> list[str]:
    """Write ``source`` as ``target`` in llama.cpp's file type ``LLAMA_FTYPE_<ftype>`` with
    llama.cpp's own quantizer (it chooses the mix per tensor, as llama-quantize does), and return
    the lines it logged. ``allow_requantize`` lets it start from quantized weights. Raises
    :class:`EngineError` with the quantizer's last lines when it fails."""
    lib = llama_cpp_module()
    params = lib.llama_model_quantize_default_params()
    params.ftype = getattr(lib, f"LLAMA_FTYPE_{ftype}")
    params.nthread = threads
    params.allow_requantize = allow_requantize
    with _collected_log(lib) as messages:
        code = lib.llama_model_quantize(
            os.fsencode(source), os.fsencode(target), ctypes.byref(params)
        )
    if code != 0:
        tail = "\n".join(messages[-5:])
        raise EngineError(f"llama.cpp could not write {source.name} as {ftype}:\n{tail}")
    return messages


@contextlib.contextmanager
def _collected_log(lib: Any) -> Iterator[list[str]]:
    """Meanwhile, llama.cpp's log lines go to a list instead of llama-cpp-python's handler,
    which is restored afterwards. The caller decides what of them is worth logging."""
    pieces: list[str] = []

    @lib.llama_log_callback
    def collect(_level: int, text: bytes, _user_data: ctypes.c_void_p) -> None:
        pieces.append(text.decode(errors="replace"))

    from llama_cpp import _logger  # llama-cpp-python's own handler, put back afterwards

    lines: list[str] = []
    with _log_lock:
        lib.llama_log_set(collect, ctypes.c_void_p(0))
        try:
            yield lines
        finally:
            lib.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))
            lines.extend("".join(pieces).splitlines())
