"""KV cache: one ring buffer per layer, allocated once, sized to what the layer can see, in
float32, fp16 or int8 (`KV_TYPES`; the element formats are in edgerope.kernels.kvstore).

Slots. The n-th token ever stored in a layer goes to slot n for n < sinks, and otherwise to
sinks + (n - sinks) % (S - sinks): the first `sinks` tokens (attention sinks, `--keep`) stay
put and the rest cycle through the remaining S - sinks slots. Visibility is decided from the
position stored beside each slot (`pos`, -1 = empty), never from slot order, so the attention
kernel needs no notion of rings. A global layer gets S = n_ctx slots. A sliding-window layer
with window W < n_ctx sees keys q - W < k <= q, so W slots after its sinks hold everything it
can see (lossless); its sinks only matter after a context shift renumbers positions.

Context shift (StreamingLLM, as llama.cpp's --context-shift). When a chunk does not fit,
`shift(keep, n)` drops the n oldest tokens after the first `keep` (pos = -1) and moves every
later token n positions down, so positions stay below n_ctx forever and the model never sees
a position it was not trained for. Keys are stored *rotated*, so moving them means rotating
their rotary channels by -n (R(p) R(-n) = R(p - n), edgerope.kernels.rope_shift); the
pass-through channels of partial RoPE are never touched (int8 keys: their scales are
rotation-safe, see kvstore, so those int8 values stay bit-identical too). The alternative,
unrotated keys rotated at attention time, costs a rotation of every visible key per query per
layer; a shift rotates each kept key once per shift, i.e. about once per n_ctx / 2 tokens
(llama.cpp's choice of n = half the non-sink tokens): per decoded token a shift costs a few
percent of what the alternative's rotations would (measured in bench/RESULTS.md, "context
shift").

Owns: the buffers, writing a chunk of new keys/values, shifting. Not: when to shift (Session).
"""
from __future__ import annotations

import warnings

import numpy as np

from edgerope import kernels as K
from edgerope.errors import ConfigError, ContextFullError, EdgeropeWarning, ParameterError
from edgerope.engine import DEFAULT_KV_TYPE, KV_TYPES  # noqa: F401 - defined without numba
from edgerope.kernels.layout import KV_DTYPES, scale_shape

assert set(KV_TYPES) == set(KV_DTYPES), "edgerope.engine.KV_TYPES and kvstore disagree"


class LayerCache:
    """Keys (Hkv, S, D), values (Hkv, S, D) (head-major, edgerope.kernels.kvstore), their
    scales (int8) and each slot's position."""

    __slots__ = ("k", "v", "ks", "vs", "pos", "capacity", "window", "sinks", "kv_type", "n",
                 "arrays")

    def __init__(self, capacity: int, n_kv: int, head_dim: int, window: int | None,
                 kv_type: str = "f32", sinks: int = 0, storage: dict | None = None):
        if kv_type not in KV_DTYPES:
            raise ConfigError(f"unknown KV cache type {kv_type!r} (supported: "
                              f"{', '.join(KV_TYPES)})")
        if not 0 <= sinks < capacity:
            raise ParameterError(f"sinks must be in [0, {capacity}), got {sinks}")
        self.capacity, self.window, self.sinks, self.kv_type = capacity, window, sinks, kv_type
        # storage: name -> array of the layout's shape and type (a view of a Batch's stacked
        # caches), else arrays of its own
        for name, (shape, dt) in self.layout(capacity, n_kv, head_dim, kv_type).items():
            setattr(self, name, np.zeros(shape, dt) if storage is None else storage[name])
        self.pos.fill(-1)
        self.arrays = (self.k, self.v, self.ks, self.vs, self.pos)  # as kernels.attention reads
        self.n = 0  # tokens stored so far (the ring cursor)

    @staticmethod
    def layout(capacity: int, n_kv: int, head_dim: int, kv_type: str) -> dict:
        """name -> (shape, dtype) of the arrays a layer cache holds; `nbytes_of` sums them."""
        dt = KV_DTYPES[kv_type]
        # int8 block scales; a float type keeps a placeholder the kernels never read
        scales = (scale_shape(kv_type, capacity, n_kv, head_dim), np.float32)
        return {"k": ((n_kv, capacity, head_dim), dt), "v": ((n_kv, capacity, head_dim), dt),
                "ks": scales, "vs": scales, "pos": ((capacity,), np.int64)}

    @staticmethod
    def layout_of(cfg, layer: int, n_ctx: int, kv_type: str, sinks: int = 0) -> dict:
        """`layout` of layer `layer`'s cache in a KVCache(cfg, n_ctx, kv_type, sinks)."""
        return LayerCache.layout(layer_capacity(cfg.window(layer), n_ctx, sinks),
                                 cfg.layer_kv_heads[layer], cfg.layer_head_dims[layer], kv_type)

    @staticmethod
    def nbytes_of(capacity: int, n_kv: int, head_dim: int, kv_type: str) -> int:
        """Bytes of such a layer cache, without allocating it."""
        return sum(int(np.prod(shape)) * np.dtype(dt).itemsize for shape, dt in
                   LayerCache.layout(capacity, n_kv, head_dim, kv_type).values())

    def store(self, k_new: np.ndarray, v_new: np.ndarray, pos: np.ndarray, partner) -> None:
        """Write T consecutive tokens (positions pos) at the cursor; partner: the keys' rotary
        pairing (kvstore.partners)."""
        # a chunk longer than the ring overwrites its own first tokens: the same result as
        # storing only its tail, and the cost is small next to the chunk's matmuls
        out = K.kv_store(self.k, self.v, self.ks, self.vs, self.pos, k_new, v_new, pos, self.n,
                         self.sinks, partner)
        self.n += k_new.shape[0]
        if out:
            _warn_saturated(self.kv_type)

    def shift(self, keep: int, n: int, cos, sin, ia, ib) -> None:
        """Forget positions [keep, keep + n); move later ones down by n (keys re-rotated by the
        angles cos / sin of -n on the rotary pairs ia / ib)."""
        p = self.pos
        p[(p >= keep) & (p < keep + n)] = -1
        slots = np.flatnonzero(p >= keep + n)
        p[slots] -= n
        if len(slots) and len(ia):
            x = np.empty((len(slots), self.k.shape[0], self.k.shape[2]), np.float32)
            K.kv_dequant(x, self.k, self.ks, slots)
            K.rope_shift(x, cos, sin, ia, ib)
            if K.kv_requant(self.k, self.ks, slots, x):
                _warn_saturated(self.kv_type)

    def clear(self) -> None:
        self.pos.fill(-1)
        self.n = 0

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes + self.ks.nbytes + self.vs.nbytes + self.pos.nbytes


_saturated_warned = False


def _warn_saturated(kv_type: str) -> None:
    """Once a process: keys / values beyond an f16 cache's range were stored saturated."""
    global _saturated_warned
    if not _saturated_warned:
        _saturated_warned = True
        warnings.warn(f"KV cache {kv_type}: keys or values beyond fp16's range (|x| > 65504) "
                      f"were stored as +-65504, so attention is approximate for this model; "
                      f"--kv-type f32 keeps them exact", EdgeropeWarning, stacklevel=3)


def layer_capacity(window: int | None, n_ctx: int, sinks: int) -> int:
    """Slots of a layer: n_ctx, or sinks + window for a window shorter than the context."""
    return sinks + window if window and window + sinks < n_ctx else n_ctx


class KVCache:
    """The per-layer caches of one session; `n_ctx` bounds positions on global layers.

    `layers[i]` is the cache layer i attends to. With KV sharing (Gemma 4) a layer that
    reads another's cache has no cache of its own: `layers[i]` is its source's, and only the
    `owned()` caches hold memory, store keys and shift."""

    def __init__(self, cfg, n_ctx: int, kv_type: str = "f32", sinks: int = 0,
                 storage: dict | None = None):
        self.n_ctx, self.kv_type, self.sinks = n_ctx, kv_type, sinks
        self.layers: list[LayerCache] = []
        for i in range(cfg.num_hidden_layers):
            src = cfg.kv_source[i]
            if src != i:
                self.layers.append(self.layers[src])
                continue
            w = cfg.window(i)
            self.layers.append(LayerCache(layer_capacity(w, n_ctx, sinks),
                                          cfg.layer_kv_heads[i], cfg.layer_head_dims[i], w,
                                          kv_type, sinks,
                                          None if storage is None else storage[i]))
        self._owned = [(i, c) for i, c in enumerate(self.layers) if cfg.kv_source[i] == i]

    def owned(self) -> list[tuple[int, LayerCache]]:
        """(layer, cache) of the layers that store keys (every layer without KV sharing)."""
        return self._owned

    def check_room(self, p_end: int) -> None:
        if p_end > self.n_ctx:
            raise ContextFullError(f"context full: {p_end} tokens do not fit in a context of "
                                   f"{self.n_ctx} (raise --ctx-size, or allow --context-shift)")

    def clear(self) -> None:
        for _, c in self._owned:
            c.clear()

    @property
    def nbytes(self) -> int:
        return sum(c.nbytes for _, c in self._owned)

    @property
    def max_capacity(self) -> int:
        return max(c.capacity for _, c in self._owned)

    def describe(self) -> str:
        """One line: element type, slots per kind of layer, total memory."""
        kinds: dict = {}
        shared = len(self.layers) - len(self._owned)
        for _, c in self._owned:
            key = ("sliding", c.capacity) if c.window else ("global", c.capacity)
            kinds[key] = kinds.get(key, 0) + 1
        parts = [f"{n} {kind} x {cap} slots" for (kind, cap), n in sorted(kinds.items())]
        sinks = f", {self.sinks} sinks" if self.sinks else ""
        if shared:
            parts.append(f"{shared} layers sharing them")
        return (f"KV cache {self.kv_type}: {', '.join(parts)}{sinks}; "
                f"{self.nbytes / 2**20:.1f} MiB")


def kv_bytes(cfg, n_ctx: int, kv_type: str = "f32", sinks: int = 0) -> int:
    """Bytes of a session's KV cache (KVCache(cfg, ...).nbytes), without allocating it."""
    if kv_type not in KV_DTYPES:
        raise ConfigError(f"unknown KV cache type {kv_type!r} (supported: {', '.join(KV_TYPES)})")
    return sum(LayerCache.nbytes_of(layer_capacity(cfg.window(i), n_ctx, sinks),
                                    cfg.layer_kv_heads[i], cfg.layer_head_dims[i], kv_type)
               for i in range(cfg.num_hidden_layers) if cfg.kv_source[i] == i)
