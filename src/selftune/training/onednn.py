"""bf16 matrix products with float32 results on a CPU, through the system's oneDNN library.

Why: torch's CPU kernels multiply bf16 matrices by summing in float32 and then rounding each
result to bf16 (8 significant bits); no torch CPU operator returns the float32 sum (``mm``'s
``out_dtype`` is CUDA's only). That rounding of the LoRA layers' frozen products was all that
bf16 training still cost in eval loss against float32 (``bench.bf16_rounding``). oneDNN, which
torch calls for those products, has the kernel (bf16 inputs, float32 output, at bf16 speed), but
torch links its copy in statically and exports none of it. So this module calls the shared
oneDNN 2.x that Debian and Ubuntu package (``libdnnl2``) through ctypes.

It is an opt-in, ``train.onednn_products``: nothing imports this module unless that is set
(``training.device.use_onednn_products`` and ``training.lora_layer.set_onednn_products`` do,
for a bf16 run on a CPU). It is used only where it is what it claims to be: the library is
oneDNN 2.x built with OpenMP (whose ``libgomp.so.1`` is then the one torch already loaded, so
its threads are torch's), and the product it picks for this CPU is a native one (a reference
implementation would be far slower than torch's own kernels). Otherwise :func:`available` is
False, the log says why, and asking for it is an error that says what to do.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import functools
import logging
import threading
from collections import OrderedDict

import torch

__all__ = ["OneDnnError", "available", "bf16_linear_float32", "implementation"]

log = logging.getLogger(__name__)

_LIBRARY = "libdnnl.so.2"  # the C API below is oneDNN 2.x's; 3.x changed it
_CPU_ENGINE = 1  # dnnl_cpu
_STREAM_DEFAULT_FLAGS = 1  # dnnl_stream_default_flags
_RUNTIME_OPENMP = 2  # DNNL_RUNTIME_OMP
_QUERY_IMPL_INFO_STR = 8  # dnnl_query_impl_info_str
_BF16, _F32 = 2, 3  # dnnl_data_type_t
_ARG_SRC, _ARG_DST, _ARG_WEIGHTS = 1, 17, 33
# Opaque C structs filled in by the library: dnnl_memory_desc_t is 696 bytes and
# dnnl_matmul_desc_t 2800 in oneDNN 2.6; the buffers leave room for other 2.x releases.
_MEMORY_DESC_BYTES = 2048
_MATMUL_DESC_BYTES = 8192
_PRIMITIVES_KEPT = 64  # one a product shape; a run's batches have a handful of row counts

_Dims = ctypes.c_int64 * 12  # DNNL_MAX_NDIMS


class OneDnnError(RuntimeError):
    """A oneDNN call failed; the message names the call and its status."""


class _Version(ctypes.Structure):
    _fields_ = [
        ("major", ctypes.c_int),
        ("minor", ctypes.c_int),
        ("patch", ctypes.c_int),
        ("hash", ctypes.c_char_p),
        ("cpu_runtime", ctypes.c_uint),
        ("gpu_runtime", ctypes.c_uint),
    ]


class _ExecArg(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_int), ("memory", ctypes.c_void_p)]


_P, _Handle = ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p
_int = ctypes.c_int
# The C functions used, with their argument types, so that ctypes passes each at its C width.
_SIGNATURES: dict[str, tuple] = {
    "dnnl_engine_create": (_P, _int, ctypes.c_size_t),
    "dnnl_stream_create": (_P, _Handle, ctypes.c_uint),
    "dnnl_memory_desc_init_by_strides": (_Handle, _int, _Dims, _int, _Dims),
    "dnnl_matmul_desc_init": (_Handle, _Handle, _Handle, _Handle, _Handle),
    "dnnl_primitive_desc_create": (_P, _Handle, _Handle, _Handle, _Handle),
    "dnnl_primitive_desc_query": (_Handle, _int, _int, _Handle),
    "dnnl_primitive_desc_destroy": (_Handle,),
    "dnnl_primitive_create": (_P, _Handle),
    "dnnl_primitive_destroy": (_Handle,),
    "dnnl_memory_create": (_P, _Handle, _Handle, _Handle),
    "dnnl_memory_destroy": (_Handle,),
    "dnnl_primitive_execute": (_Handle, _Handle, _int, ctypes.POINTER(_ExecArg)),
    "dnnl_stream_wait": (_Handle,),
}


@dataclasses.dataclass(frozen=True)
class _Product:
    """A product shape's matmul primitive, its kernel's name and its memory descriptors."""

    primitive: ctypes.c_void_p
    kernel: str
    descs: tuple[ctypes.Array, ctypes.Array, ctypes.Array]  # x, W^T, y


class _OneDnn:
    """The loaded library, its CPU engine and stream, and a primitive per product shape."""

    def __init__(self, library: ctypes.CDLL) -> None:
        self.lib = library
        for name, arguments in _SIGNATURES.items():
            function = getattr(library, name)  # AttributeError: not this API
            function.argtypes, function.restype = arguments, ctypes.c_int
        library.dnnl_version.argtypes, library.dnnl_version.restype = (), ctypes.POINTER(_Version)
        self.engine = ctypes.c_void_p()
        self._check(
            library.dnnl_engine_create(ctypes.byref(self.engine), _CPU_ENGINE, 0),
            "dnnl_engine_create",
        )
        self.stream = ctypes.c_void_p()
        self._check(
            library.dnnl_stream_create(
                ctypes.byref(self.stream), self.engine, _STREAM_DEFAULT_FLAGS
            ),
            "dnnl_stream_create",
        )
        self.primitives: OrderedDict[tuple[int, int, int], _Product] = OrderedDict()
        self.lock = threading.Lock()  # one stream, and the cache, for all threads

    @staticmethod
    def _check(status: int, call: str) -> None:
        if status != 0:
            raise OneDnnError(f"oneDNN's {call} failed with status {status}")

    def version(self) -> _Version:
        return self.lib.dnnl_version().contents

    def _memory_desc(
        self, dims: tuple[int, int], strides: tuple[int, int], dtype: int
    ) -> ctypes.Array:
        desc = ctypes.create_string_buffer(_MEMORY_DESC_BYTES)
        self._check(
            self.lib.dnnl_memory_desc_init_by_strides(
                desc, 2, _Dims(*dims), dtype, _Dims(*strides)
            ),
            "dnnl_memory_desc_init_by_strides",
        )
        return desc

    def _descs(self, m: int, k: int, n: int) -> tuple[ctypes.Array, ctypes.Array, ctypes.Array]:
        """x (m, k) row-major, W^T (k, n) read from W (n, k) row-major, y (m, n) row-major."""
        return (
            self._memory_desc((m, k), (k, 1), _BF16),
            self._memory_desc((k, n), (1, k), _BF16),
            self._memory_desc((m, n), (n, 1), _F32),
        )

    def primitive(self, m: int, k: int, n: int) -> _Product:
        """The matmul primitive for (m, k) x (k, n), with what running it needs; kept."""
        key = (m, k, n)
        if key in self.primitives:
            self.primitives.move_to_end(key)
            return self.primitives[key]
        descs = src, weights, dst = self._descs(m, k, n)
        op = ctypes.create_string_buffer(_MATMUL_DESC_BYTES)
        self._check(self.lib.dnnl_matmul_desc_init(op, src, weights, None, dst), "matmul_desc")
        desc = ctypes.c_void_p()
        self._check(
            self.lib.dnnl_primitive_desc_create(ctypes.byref(desc), op, None, self.engine, None),
            "dnnl_primitive_desc_create",
        )
        try:
            name = ctypes.c_char_p()
            self._check(
                self.lib.dnnl_primitive_desc_query(
                    desc, _QUERY_IMPL_INFO_STR, 0, ctypes.byref(name)
                ),
                "dnnl_primitive_desc_query",
            )
            primitive = ctypes.c_void_p()
            self._check(
                self.lib.dnnl_primitive_create(ctypes.byref(primitive), desc),
                "dnnl_primitive_create",
            )
        finally:
            self.lib.dnnl_primitive_desc_destroy(desc)
        self.primitives[key] = _Product(primitive, (name.value or b"").decode(), descs)
        while len(self.primitives) > _PRIMITIVES_KEPT:
            _, oldest = self.primitives.popitem(last=False)
            self.lib.dnnl_primitive_destroy(oldest.primitive)
        return self.primitives[key]

    def _memory(self, desc: ctypes.Array, tensor: torch.Tensor) -> ctypes.c_void_p:
        """A oneDNN memory object over ``tensor``'s data (no copy); destroy it after use."""
        memory = ctypes.c_void_p()
        handle = ctypes.c_void_p(tensor.data_ptr())
        self._check(
            self.lib.dnnl_memory_create(ctypes.byref(memory), desc, self.engine, handle),
            "dnnl_memory_create",
        )
        return memory

    def run(self, x: torch.Tensor, weight: torch.Tensor, out: torch.Tensor) -> None:
        """out = x weight^T, all three contiguous on the CPU."""
        (m, k), n = x.shape, weight.shape[0]
        memories: list[ctypes.c_void_p] = []
        with self.lock:
            product = self.primitive(m, k, n)
            try:
                for desc, tensor in zip(product.descs, (x, weight, out), strict=True):
                    memories.append(self._memory(desc, tensor))
                roles = (_ARG_SRC, _ARG_WEIGHTS, _ARG_DST)
                args = (_ExecArg * 3)(*map(_ExecArg, roles, memories))
                self._check(
                    self.lib.dnnl_primitive_execute(product.primitive, self.stream, 3, args),
                    "dnnl_primitive_execute",
                )
                self._check(self.lib.dnnl_stream_wait(self.stream), "dnnl_stream_wait")
            finally:
                for memory in memories:
                    self.lib.dnnl_memory_destroy(memory)


@functools.cache
def _onednn() -> _OneDnn | None:
    """The system's oneDNN where it is usable here (see the module's docstring), else None."""
    try:
        library = ctypes.CDLL(_LIBRARY)
    except OSError:
        other = ctypes.util.find_library("dnnl")  # e.g. a 3.x, whose C API differs
        found = f" (only {other}, whose C API differs)" if other else ""
        log.warning("%s not found%s", _LIBRARY, found)
        return None
    try:
        onednn = _OneDnn(library)
    except (OneDnnError, AttributeError) as error:
        log.warning("oneDNN (%s) is not usable: %s", _LIBRARY, error)
        return None
    version = onednn.version()
    if version.cpu_runtime != _RUNTIME_OPENMP:
        log.warning(
            "oneDNN %d.%d uses CPU runtime %d, not OpenMP: its threads would compete with "
            "torch's, so it is not used",
            version.major,
            version.minor,
            version.cpu_runtime,
        )
        return None
    return onednn


def implementation() -> str | None:
    """The name of the kernel oneDNN picks for a training-sized bf16 product on this CPU, or
    None where it is not available. A native one is e.g. ``brg:avx512_core_bf16``."""
    onednn = _onednn()
    if onednn is None:
        return None
    with onednn.lock:
        return onednn.primitive(512, 576, 1536).kernel


_available: bool | None = None  # a plain global, not functools.cache: torch.compile reads it


def available() -> bool:
    """Whether :func:`bf16_linear_float32` runs here on a native bf16 kernel."""
    global _available
    if _available is None:
        kernel = implementation()
        native = kernel is not None and not kernel.startswith("ref")
        if kernel is not None and not native:
            log.warning(
                "oneDNN has only a reference bf16 product on this CPU (%s): not used", kernel
            )
        _available = native
    return _available


@torch.library.custom_op("selftune::bf16_linear_float32", mutates_args=())
def bf16_linear_float32(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x W^T for bf16 x (m, k) and W (n, k) on the CPU: summed in float32 and returned in
    float32, not rounded to bf16. Only where :func:`available`."""
    onednn = _onednn()
    if onednn is None:
        raise OneDnnError("oneDNN is not available: check selftune.training.onednn.available()")
    if x.dtype != torch.bfloat16 or weight.dtype != torch.bfloat16 or x.dim() != 2:
        raise ValueError("bf16_linear_float32 takes a 2-D bf16 x and a bf16 weight")
    out = x.new_empty((x.shape[0], weight.shape[0]), dtype=torch.float32)
    onednn.run(x.contiguous(), weight.contiguous(), out)
    return out


@bf16_linear_float32.register_fake
def _(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return x.new_empty((x.shape[0], weight.shape[0]), dtype=torch.float32)
