"""Several sequences evaluated in one forward pass: the weights are read once for all of them.

Decoding is bound by reading the weights, once per step; a step that carries the next token of
4 sequences reads them once for 4 tokens (a 4-row GEMM instead of 4 GEMVs). A `Batch` owns
`n_seq` sessions (each its own KV cache, position and token history) and one set of buffers
sized for `n_batch` tokens in all. `eval` takes a list of (session index, ids) parts --
decode steps of some sequences, prompt chunks of others -- and runs them as one chunk: every
matmul, norm and activation on all rows at once, attention and the KV writes per sequence
against its own cache (edgerope.engine.model.run_layers). It returns the logits of each
part's last token.

A part alone in a batch is exactly Session.eval of the same chunk (same kernels on the same
rows). With other rows beside it, the int8 GEMM sums in another order than the GEMV of a lone
decode step, so its logits may differ in the last bits (as llama.cpp's batched server).

Owns: the shared buffers, packing parts into rows, the per-sequence logits. Not: which parts
to run (edgerope.server.scheduler), sampling.
"""
from __future__ import annotations

import numpy as np

from edgerope import kernels as K
from edgerope import runtime
from edgerope.engine.cache import DEFAULT_KV_TYPE, LayerCache
from edgerope.engine.model import (Model, Session, _Buffers, apply_norm, finish_logits,
                                   run_layers)
from edgerope.engine.profile import direct
from edgerope.errors import ParameterError

__all__ = ["Batch"]


class Batch:
    """`n_seq` sessions of `n_ctx` tokens each, evaluated together, at most `n_batch` tokens a
    step. `sessions[i]` is sequence i (reset it to reuse the slot; its `tokens` are what its
    cache holds)."""

    def __init__(self, model: Model, n_seq: int, n_ctx: int | None = None, n_batch: int = 512,
                 *, kv_type: str = DEFAULT_KV_TYPE):
        if n_seq < 1:
            raise ParameterError(f"a batch needs at least one sequence, got {n_seq}")
        n_ctx = n_ctx or model.default_ctx()
        cfg = model.config
        self.model, self.n_seq = model, n_seq
        # every layer's caches of all sequences in one array each (a leading sequence axis),
        # so that a decode step attends for all rows in one kernel call (attention_rows)
        stacked = {}
        for li in range(cfg.num_hidden_layers):
            if cfg.kv_source[li] == li:
                stacked[li] = {name: np.zeros((n_seq,) + shape, dt) for name, (shape, dt)
                               in LayerCache.layout_of(cfg, li, n_ctx, kv_type).items()}
        self.sessions = [Session(model, n_ctx, n_batch, kv_type=kv_type,
                                 kv_storage={li: {n: a[i] for n, a in d.items()}
                                             for li, d in stacked.items()})
                         for i in range(n_seq)]
        self._stacked = [None] * cfg.num_hidden_layers
        for li, d in stacked.items():
            self._stacked[li] = (d["k"], d["v"], d["ks"], d["vs"], d["pos"])
        first = self.sessions[0]
        self.n_ctx, self.n_batch = n_ctx, first.n_batch
        self.buf = _Buffers(cfg, self.n_batch, first._att_len(), n_logits=n_seq)
        self._last = np.zeros(n_seq, np.int64)  # the row of each part's last token
        self._seq = np.zeros(self.n_batch, np.int64)  # decode steps: each row's sequence
        self._seg = np.zeros((self.n_batch, 2), np.int64)  # ... and its rows
        self.logits = self.buf.logits.view()
        self.logits.flags.writeable = False

    def eval(self, parts) -> np.ndarray:
        """Evaluate [(i, ids), ...] (each i at most once, ids non-empty, at most n_batch
        tokens in all) as one forward; returns the logits (len(parts), vocab) of each part's
        last token: a read-only view valid until the next eval."""
        cfg = self.model.config
        if not parts or len(parts) > self.n_seq:
            raise ParameterError(f"a batch step takes 1 to {self.n_seq} parts, got {len(parts)}")
        chunks = []
        T = 0
        seen = set()
        for i, ids in parts:
            if not 0 <= i < self.n_seq or i in seen:
                raise ParameterError(f"sequence index {i} out of range or repeated")
            seen.add(i)
            ids = np.asarray(ids, dtype=np.int64).reshape(-1)
            if len(ids) == 0 or ids.min() < 0 or ids.max() >= cfg.vocab_size:
                raise ParameterError(f"part {i}: needs token ids in [0, {cfg.vocab_size})")
            self.sessions[i].cache.check_room(self.sessions[i].pos + len(ids))
            chunks.append((i, ids, T))
            T += len(ids)
        if T > self.n_batch:
            raise ParameterError(f"a batch step holds at most {self.n_batch} tokens, got {T}")
        caller, n = K.get_threads(), runtime.threads()
        if n != caller:
            K.set_threads(n)
        try:
            return self._forward(chunks, T)
        finally:
            if n != caller:
                K.set_threads(caller)

    def _forward(self, chunks, T: int) -> np.ndarray:
        model, cfg, b, op = self.model, self.model.config, self.buf, direct
        W = model.weights
        segs, ropes = [], []
        for j, (i, ids, s) in enumerate(chunks):
            sess = self.sessions[i]
            e = s + len(ids)
            b.ids[s:e] = ids
            np.add(b.iota[:e - s], sess.pos, out=b.pos[s:e])
            segs.append((sess.cache, s, e))
            ropes.append(sess.rope_rows(b.pos[s:e], b.iota))
            self._last[j] = e - 1
            self._seq[s:e] = i
            self._seg[s:e] = (s, e)
        rope = ropes[0] if len(ropes) == 1 else _join_rope(ropes, b.pos[:T], b.iota[:T])
        # several sequences each decoding one token: one attention call for all rows
        together = (self._stacked, self._seq, self._seg) if 1 < len(chunks) == T else None
        run_layers(model, b, T, segs, rope, op, together)
        for i, ids, _ in chunks:
            self.sessions[i].tokens.extend(ids.tolist())
        n = len(chunks)
        rows, h, logits = b.o[:n], b.h[:n], b.logits[:n]
        np.take(b.x[:T], self._last[:n], axis=0, out=rows)
        op("norm", apply_norm, W.out_norm, h, rows)
        op("matmul.lm_head", W.lm_head, logits, h, b.acts)
        finish_logits(op, cfg, logits)
        return self.logits[:n]


def _join_rope(ropes: list, pos: np.ndarray, iota: np.ndarray) -> dict:
    """Session.rope_rows of several sequences as one: fixed-frequency tables (shared by
    sessions of one context size) are indexed by `pos`, every row's position; per-sequence
    tables (dynamic, longrope) are stacked and indexed by row."""
    out = {}
    for t, first in ropes[0].items():
        cos, sin, ia, ib, _ = first
        if all(r[t][0] is cos for r in ropes):
            out[t] = (cos, sin, ia, ib, pos)
        else:
            out[t] = (np.concatenate([r[t][0][r[t][4]] for r in ropes]),
                      np.concatenate([r[t][1][r[t][4]] for r in ropes]), ia, ib, iota)
    return out
