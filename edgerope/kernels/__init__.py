"""Numba kernels of edgerope: pure functions over preallocated numpy arrays, output first.

Every kernel is compiled through `jit.kernel` (the one JIT policy); only this subpackage
imports numba. Thread count: `set_threads` / `get_threads` / `max_threads` /
`default_threads`.
"""
# jit first: it sets up Numba's import (jit._SkipNumbaProbes) before anything imports numba
from edgerope.kernels.jit import default_threads, get_threads, max_threads, set_threads
from edgerope.kernels.activations import (ACT_GELU, ACT_GELU_TANH, ACT_KINDS, ACT_RELU, ACT_RELU2, ACT_SILU,
                          act, act_mul, add, add_bias, scale_, softcap_, softmax_)
from edgerope.kernels.attention import DECODE_SPLIT, attention, attention_decode
from edgerope.kernels.matmul import (QK, dequantize_q8, f32_embed, f32_gemm, f32_gemv, q8_blocks, q8_embed,
                     q8_gemm, q8_gemv, quantize_q8)
from edgerope.kernels.norm import layer_norm, rms_norm
from edgerope.kernels.q4dot import BLOCK_BYTES as Q4_BLOCK_BYTES
from edgerope.kernels.q4dot import dequantize_q4, pack_q4, q4p_embed, q4p_gemm, q4p_gemv, quantize_q4, unpack_q4
from edgerope.kernels.q8dot import BLOCK_BYTES as Q8_BLOCK_BYTES
from edgerope.kernels.q8dot import (ScaleRangeError, act_buffers, pack_q8, packed_shape, q8p_embed, q8p_gemm,
                    q8p_gemm_portable, q8p_gemm_vnni, q8p_gemv, q8p_gemv_portable, q8p_gemv_vnni,
                    quantize_act, unpack_q8)
from edgerope.kernels.simd import MODE as SIMD_MODE
from edgerope.kernels.rope import rope_apply, rope_shift

__all__ = [
    "set_threads", "get_threads", "max_threads", "default_threads",
    "QK", "q8_blocks", "quantize_q8", "dequantize_q8", "q8_gemv", "q8_gemm", "f32_gemv",
    "f32_gemm", "q8_embed", "f32_embed",
    "SIMD_MODE", "ScaleRangeError", "pack_q8", "unpack_q8", "packed_shape", "quantize_act",
    "act_buffers",
    "q8p_gemv", "q8p_gemm", "q8p_embed", "q8p_gemv_vnni", "q8p_gemm_vnni", "q8p_gemv_portable",
    "q8p_gemm_portable",
    "Q8_BLOCK_BYTES", "Q4_BLOCK_BYTES", "quantize_q4", "dequantize_q4", "pack_q4", "unpack_q4",
    "q4p_gemv", "q4p_gemm", "q4p_embed",
    "rms_norm", "layer_norm",
    "rope_apply", "rope_shift",
    "attention", "attention_decode", "DECODE_SPLIT",
    "ACT_SILU", "ACT_GELU", "ACT_GELU_TANH", "ACT_RELU2", "ACT_RELU", "ACT_KINDS",
    "act_mul", "act", "add", "add_bias", "scale_", "softcap_", "softmax_",
]
