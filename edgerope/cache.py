"""KV cache: one ring buffer per layer, allocated once, sized to what the layer can see.

Token at absolute position p lives in slot p % capacity. Keys are stored after RoPE at their
absolute position, so they never need re-rotation while every query is rotated at its own
absolute position; visibility is decided from the positions stored beside the slots (`pos`,
-1 = empty), never from slot order. A sliding-window layer with window W needs exactly W slots
(a query at q sees keys q-W < k <= q), so its ring is lossless; a global layer gets `n_ctx`.

Owns: the buffers and writing a chunk of new keys/values into them.
"""
from __future__ import annotations

import numpy as np

from .errors import ContextFullError


class LayerCache:
    """Keys (S, Hkv, D), values (S, Hkv, D) and the position held by each slot."""

    __slots__ = ("k", "v", "pos", "capacity", "window", "_iota")

    def __init__(self, capacity: int, n_kv: int, head_dim: int, window: int | None):
        self.capacity, self.window = capacity, window
        self.k = np.zeros((capacity, n_kv, head_dim), np.float32)
        self.v = np.zeros((capacity, n_kv, head_dim), np.float32)
        self.pos = np.full(capacity, -1, np.int64)
        self._iota = np.arange(capacity, dtype=np.int64)  # lets store() fill positions in place

    def store(self, k_new: np.ndarray, v_new: np.ndarray, p0: int) -> None:
        """Write T consecutive tokens at positions p0..p0+T-1 (at most two slice copies)."""
        T, S = k_new.shape[0], self.capacity
        if T > S:  # only the last S tokens survive in the ring anyway
            k_new, v_new, p0, T = k_new[T - S:], v_new[T - S:], p0 + T - S, S
        s0 = p0 % S
        n1 = min(T, S - s0)
        self.k[s0:s0 + n1] = k_new[:n1]
        self.v[s0:s0 + n1] = v_new[:n1]
        np.add(self._iota[:n1], p0, out=self.pos[s0:s0 + n1])
        if n1 < T:
            self.k[:T - n1] = k_new[n1:]
            self.v[:T - n1] = v_new[n1:]
            np.add(self._iota[:T - n1], p0 + n1, out=self.pos[:T - n1])

    def clear(self) -> None:
        self.pos.fill(-1)

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes + self.pos.nbytes


class KVCache:
    """The per-layer caches of one session; `n_ctx` bounds positions on global layers."""

    def __init__(self, cfg, n_ctx: int):
        self.n_ctx = n_ctx
        self.layers = []
        for i in range(cfg.num_hidden_layers):
            w = cfg.window(i)
            cap = min(w, n_ctx) if w else n_ctx
            self.layers.append(LayerCache(cap, cfg.num_key_value_heads, cfg.head_dim, w))

    def check_room(self, p_end: int) -> None:
        if p_end > self.n_ctx:
            raise ContextFullError(f"context full: {p_end} tokens do not fit in a context of "
                                   f"{self.n_ctx} (raise --ctx-size)")

    def clear(self) -> None:
        for c in self.layers:
            c.clear()

    @property
    def nbytes(self) -> int:
        return sum(c.nbytes for c in self.layers)

    @property
    def max_capacity(self) -> int:
        return max(c.capacity for c in self.layers)
