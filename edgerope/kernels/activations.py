"""Elementwise kernels: MLP activations (gated and plain), residual adds, biases, scaling,
soft-capping and row softmax.

Activation kinds are small ints so one compiled kernel serves every model; `ACT_KINDS` maps
Hugging Face `hidden_act` names to them (the gelu_new / gelu_fast / gelu_pytorch_tanh /
gelu_python_tanh / gelu_accurate variants are all the tanh approximation).
Elementwise kernels take arrays of any shape (C-contiguous) and visit them flat.
"""
import math

import numpy as np

from edgerope.kernels.expf import exp32
from edgerope.kernels.jit import kernel, prange

ACT_SILU = 0
ACT_GELU = 1
ACT_GELU_TANH = 2
ACT_RELU2 = 3
ACT_RELU = 4

ACT_KINDS = {
    "silu": ACT_SILU,
    "swish": ACT_SILU,
    "gelu": ACT_GELU,
    "gelu_python": ACT_GELU,
    "gelu_new": ACT_GELU_TANH,
    "gelu_fast": ACT_GELU_TANH,
    "gelu_pytorch_tanh": ACT_GELU_TANH,
    "gelu_python_tanh": ACT_GELU_TANH,
    "gelu_accurate": ACT_GELU_TANH,
    "relu2": ACT_RELU2,
    "relu": ACT_RELU,
}


@kernel
def _act1(x, kind):
    """One activation value in float32 (PyTorch's float32 values within ~4e-7 relative).

    SiLU = x sigmoid(x); the tanh GELU as x sigmoid(2u), since (1 + tanh u) / 2 = sigmoid(2u):
    both through expf.exp32, which vectorizes (np.exp / np.tanh are a libm call a value)."""
    if kind == 0:
        return x / (np.float32(1.0) + exp32(-x))
    if kind == 1:
        e = math.erf(x * np.float32(0.70710678118654752))
        return np.float32(0.5) * x * (np.float32(1.0) + np.float32(e))
    if kind == 2:
        u = np.float32(0.79788456080286536) * (x + np.float32(0.044715) * x * x * x)
        return x / (np.float32(1.0) + exp32(np.float32(-2.0) * u))
    r = max(x, np.float32(0.0))
    if kind == 3:
        return r * r
    return r


_ACT_CHUNK = 512  # elements per parallel work unit: decode rows (T = 1) still use all threads


@kernel
def _act_mul_span(out, gate, up, kind):
    """out = act(gate) * up over three 1-D spans. One branch per span, not per element, so
    each loop body is a single activation; 1-D slices let LLVM vectorize it (indexed as
    (t, i) of the 2-D arrays it did not: 2.2x slower, bench in the commit)."""
    if kind == 0:
        for i in range(out.shape[0]):
            out[i] = _act1(gate[i], 0) * up[i]
    elif kind == 2:
        for i in range(out.shape[0]):
            out[i] = _act1(gate[i], 2) * up[i]
    else:
        for i in range(out.shape[0]):
            out[i] = _act1(gate[i], kind) * up[i]


@kernel(parallel=True)
def act_mul(out, gu, kind):
    """out (T, n) = act(gate) * up where gu (T, 2n) = [gate | up]."""
    T, n = out.shape
    per_row = (n + _ACT_CHUNK - 1) // _ACT_CHUNK
    for j in prange(T * per_row):
        t = j // per_row
        i0 = (j % per_row) * _ACT_CHUNK
        i1 = min(n, i0 + _ACT_CHUNK)
        _act_mul_span(out[t, i0:i1], gu[t, i0:i1], gu[t, n + i0:n + i1], kind)


@kernel(parallel=True)
def act(out, x, kind):
    """out = act(x) elementwise; out may alias x."""
    xf = x.reshape(x.size)
    of = out.reshape(out.size)
    for i in prange(xf.shape[0]):
        of[i] = _act1(xf[i], kind)


@kernel
def _add_span(out, a, b):
    """out = a + b; out is a (the residual's x += o) through a loop over a alone (see
    norm._rms_rows: the overlap check fails on exact aliasing, leaving scalar code)."""
    if out.ctypes.data == a.ctypes.data:
        for i in range(out.shape[0]):
            a[i] += b[i]
    else:
        for i in range(out.shape[0]):
            out[i] = a[i] + b[i]


_ADD_PARALLEL_MIN = 1 << 16  # elements: below, a parallel region costs more than it saves
_ADD_CHUNK = 1 << 13


@kernel(parallel=True)
def add(out, a, b):
    """out = a + b elementwise; out may alias a (or b). Prefill-sized arrays in chunks over
    the threads (decode rows: one thread, no parallel region)."""
    af = a.reshape(a.size)
    bf = b.reshape(b.size)
    of = out.reshape(out.size)
    n = af.shape[0]
    if n < _ADD_PARALLEL_MIN:
        _add_span(of, af, bf)
        return
    for c in prange((n + _ADD_CHUNK - 1) // _ADD_CHUNK):
        i0 = c * _ADD_CHUNK
        i1 = min(n, i0 + _ADD_CHUNK)
        _add_span(of[i0:i1], af[i0:i1], bf[i0:i1])


@kernel
def add_bias(x, b):
    """x (T, n) += b (n,) in place, row by row."""
    T, n = x.shape
    for t in range(T):
        for i in range(n):
            x[t, i] += b[i]


@kernel
def scale_(x, s):
    """x *= s in place."""
    xf = x.reshape(x.size)
    sc = np.float32(s)
    for i in range(xf.shape[0]):
        xf[i] *= sc


@kernel
def softcap_(x, cap):
    """x = cap * tanh(x / cap) in place."""
    xf = x.reshape(x.size)
    c = np.float32(cap)
    for i in range(xf.shape[0]):
        xf[i] = c * np.tanh(xf[i] / c)


@kernel
def softmax_(x):
    """Softmax over the last axis of x (M, n), in place, max-subtracted.

    Rows whose entries are all -inf (fully masked) become zeros rather than NaN.
    """
    M, n = x.shape
    for r in range(M):
        m = np.float32(-np.inf)
        for i in range(n):
            m = max(m, x[r, i])
        if m == -np.inf:
            for i in range(n):
                x[r, i] = 0.0
            continue
        tot = 0.0
        for i in range(n):
            e = np.exp(x[r, i] - m)
            x[r, i] = e
            tot += e
        inv = np.float32(1.0 / tot)
        for i in range(n):
            x[r, i] *= inv


@kernel
def mask_bits(out, x, bits, n):
    """out = x where bit i of the packed mask `bits` (int32 words, bit i % 32 of word i // 32)
    is set and i < n, else -inf: a grammar's allowed tokens (edgerope.engine.constrain)."""
    neg = np.float32(-np.inf)
    for i in range(out.shape[0]):
        if i < n and (bits[i >> 5] >> (i & 31)) & 1:
            out[i] = x[i]
        else:
            out[i] = neg
