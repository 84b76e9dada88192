"""Numba kernels of edgerope: pure functions over preallocated numpy arrays, output first.

Every kernel is compiled through `jit.kernel` (the one JIT policy); only this subpackage
imports numba, and it imports nothing of edgerope outside itself but edgerope.errors
(weight layouts are in edgerope.formats, which calls these kernels). Importing it sets
nothing in the process and
loads nothing heavy: the names below come from their modules on first use (PEP 562), so
`from edgerope import kernels as K` costs nothing until a kernel is called, and the
numba-free `layout` serves size accounting. Threads of the calling Python thread:
`set_threads` / `get_threads` / `max_threads`.
"""
import importlib
import sys

_MODULES = {
    "jit": ("set_threads", "get_threads", "max_threads"),
    "layout": ("aligned_empty", "act_buffers", "act_nbytes", "att_stage_len", "ATT_MAX_ROWS",
               "gemm_scratch_len"),
    "activations": ("ACT_GELU", "ACT_GELU_TANH", "ACT_KINDS", "ACT_RELU", "ACT_RELU2",
                    "ACT_SILU", "act", "act_mul", "add", "add_bias", "mask_bits", "scale_",
                    "softcap_", "softmax_"),
    "attend": ("DECODE_SPLIT", "attention", "attention_decode", "attention_rows"),
    "attend_tiles": ("attention_tiles", "tiles_usable"),
    "matmul": ("QK", "dequantize_q8", "f32_embed", "f32_gemm", "f32_gemv", "q8_blocks",
               "quantize_q8"),
    "norm": ("layer_norm", "rms_norm"),
    "packed": ("EMBED", "KERNELS", "q4p_embed", "q4p_gemm", "q4p_gemv", "q8p_embed",
               "q8p_gemm", "q8p_gemv", "q8p_pack", "quantize_act", "quantize_act_k"),
    "kvstore": ("kv_dequant", "kv_requant", "kv_store", "partners"),
    "rope": ("rope_apply", "rope_shift"),
    "probe": ("stream_sum",),
}
# (no name here is also a module's name: importing that module would bind the name to it)
_WHERE = {name: module for module, names in _MODULES.items() for name in names}
_WHERE["SIMD_MODE"] = "simd"
__all__ = sorted(_WHERE)


_compile_callbacks: list = []


def on_compile(fn) -> None:
    """Call fn() whenever Numba starts compiling one of these kernels (a cache miss: the
    first run, a new CPU, edited kernel sources). Registering imports no numba: jit.py
    installs its listener when it loads (edgerope.runtime's "compiling kernels" line)."""
    _compile_callbacks.append(fn)
    if f"{__name__}.jit" in sys.modules:
        sys.modules[f"{__name__}.jit"].install_compile_listener()


def __getattr__(name):
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    mod = importlib.import_module(f"{__name__}.{module}")
    for other in _MODULES.get(module, ()):  # every name of that module, bound once
        globals()[other] = getattr(mod, other)
    if name == "SIMD_MODE":
        globals()[name] = mod.MODE
    return globals()[name]


def __dir__():
    return sorted(set(globals()) | set(_WHERE))
