"""The forward pass: one function for every architecture, steered by `ModelConfig` data.

A `Model` holds the read-only parts (config, weights, tokenizer, RoPE tables); a `Session` holds
one conversation's mutable state (KV cache, position, preallocated buffers), so several sessions
can share a model, even from different threads. Prompts are evaluated in batches of up to
`n_batch` tokens (GEMM); decoding is the same code with T = 1 (GEMV) and allocates nothing:
every buffer is created once per session.

Layer shape (all variants):  h = norm(x); q,k,v = h·Wqkv; q/k norms; RoPE; attention over
cache + chunk; o = attn·Wo (+ Gemma's post-norm); then either sequential
(x += o; x += mlp(norm(x))) or parallel (x += o + mlp(h or norm2(x))) residuals.
"""
from __future__ import annotations

import threading

import numpy as np

from edgerope import kernels as K
from edgerope import runtime
from edgerope.engine.cache import DEFAULT_KV_TYPE, KVCache, layer_capacity
from edgerope.engine.weights import ModelWeights, Norm
from edgerope.archs.config import ModelConfig
from edgerope.errors import ConfigError, ParameterError
from edgerope.formats.linear import Activations
from edgerope.kernels.layout import GEOMETRY
from edgerope.engine.profile import direct

_ATT_CHUNKS = 16  # parallel work units of the attention kernel (each owns a scratch row)


def default_ctx(cfg: ModelConfig) -> int:
    """The default context of a model: its trained length, at most 4096."""
    return min(cfg.max_position_embeddings, 4096)


def session_bytes(cfg: ModelConfig, n_ctx: int, n_batch: int = 512, n_keep: int = 4,
                  context_shift: bool = False, dtype: str = "int8") -> int:
    """Bytes a Session(n_ctx, n_batch, ...) holds besides its KV cache (kv_bytes): its
    buffers once every matmul ran (_Buffers.nbytes) and the RoPE tables of its context --
    computed from the config, nothing allocated."""
    B = min(n_batch, n_ctx)
    sinks = n_keep if context_shift else 0
    capacity = max(layer_capacity(cfg.window(i), n_ctx, sinks)
                   for i in range(cfg.num_hidden_layers) if cfg.kv_source[i] == i)
    rope = sum(2 * 4 * n_ctx * len(cfg.rope[t].pairs()[0]) for t in set(cfg.layer_types))
    return _Buffers.nbytes_of(cfg, B, capacity + B + cfg.q_dim, dtype) + rope


def apply_norm(n: Norm, out: np.ndarray, x: np.ndarray) -> None:
    """out = norm(x) over the last axis of 2-D x."""
    if n.kind == "layer":
        K.layer_norm(out, x, n.weight, n.bias, n.eps)
    else:
        K.rms_norm(out, x, n.weight, n.eps, n.kind == "rms1p")


class Model:
    """A loaded model: config, weights (int8 blocks or float32), tokenizer."""

    def __init__(self, config: ModelConfig, weights: ModelWeights, tokenizer=None,
                 dtype: str = "int8", path: str | None = None, config_dict: dict | None = None):
        self.config, self.weights, self.tokenizer = config, weights, tokenizer
        self.dtype, self.path = dtype, path
        self.config_dict = config_dict or {}  # the config.json form, written by convert
        self._act = K.ACT_KINDS.get(config.hidden_act)
        if self._act is None:
            raise ConfigError(f"unsupported hidden_act {config.hidden_act!r} "
                              f"(supported: {', '.join(sorted(K.ACT_KINDS))})")
        self._tables: dict = {}
        self._partners: dict = {}
        self._units: dict = {}
        self._lock = threading.Lock()

    def unit_norm(self, n: int) -> Norm:
        """A scale-less RMSNorm over n channels (Gemma 4's v_norm and router norm)."""
        u = self._units.get(n)
        if u is None:
            w = np.ones((1, n), np.float32)
            u = self._units[n] = Norm("rms", w, np.zeros_like(w), self.config.norm_eps)
        return u

    # -- RoPE tables, shared by sessions ---------------------------------------------------
    def rope_table(self, layer_type: str, n_pos: int):
        """(cos, sin, ia, ib) for positions [0, n_pos) of one layer type (float64-computed)."""
        key = (layer_type, n_pos)
        with self._lock:
            if key not in self._tables:
                spec = self.config.rope[layer_type]
                cos, sin = spec.table(n_pos)
                ia, ib = spec.pairs()
                self._tables[key] = (cos, sin, ia.astype(np.int64), ib.astype(np.int64))
            return self._tables[key]

    def partner(self, layer_type: str) -> np.ndarray:
        """The rotary pairing of a layer type's keys, as the KV store takes it (kvstore)."""
        with self._lock:
            if layer_type not in self._partners:
                spec = self.config.rope[layer_type]
                ia, ib = spec.pairs()
                self._partners[layer_type] = K.partners(spec.head_dim, ia.astype(np.int64),
                                                        ib.astype(np.int64))
            return self._partners[layer_type]

    def default_ctx(self) -> int:
        """The default context: the model's trained length, at most 4096."""
        return default_ctx(self.config)

    def new_session(self, n_ctx: int | None = None, n_batch: int = 512, *,
                    kv_type: str = DEFAULT_KV_TYPE, n_keep: int = 4,
                    context_shift: bool = False) -> "Session":
        """A fresh sequence; see `Session` for the options."""
        return Session(self, n_ctx or self.default_ctx(), n_batch,
                       kv_type=kv_type, n_keep=n_keep, context_shift=context_shift)

    def logits(self, ids) -> np.ndarray:
        """Logits (len(ids), vocab) of a fresh causal forward at positions 0..n-1."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        n = max(len(ids), 1)
        return self.new_session(n_ctx=n, n_batch=n).eval(ids, all_logits=True)

    def generate(self, prompt, **kwargs):
        """Stream generated text pieces; see `edgerope.engine.generate.generate`."""
        from edgerope.engine.generate import generate
        return generate(self, prompt, **kwargs)


class _Buffers:
    """Every activation buffer of a session, for up to `B` tokens at once. Buffers whose width
    differs between layers (Gemma 4: head sizes, KV heads, MLP widths) are flat, sized for the
    widest layer; a layer takes a contiguous prefix view of its own shape (`view`)."""

    def __init__(self, cfg: ModelConfig, B: int, att_len: int, n_logits: int = 1):
        for name, (shape, dtype) in self.layout(cfg, B, att_len, n_logits).items():
            setattr(self, name, np.zeros(shape, dtype))
        self.shared = {p: (np.zeros(shape, np.float32), np.zeros(shape, np.float32))
                       for p, shape in self.shared_layout(cfg, B).items()}
        self.logits_view = self.logits[0].view()
        self.logits_view.flags.writeable = False
        self.iota[:] = np.arange(B)
        self.acts = Activations(B)  # int8-quantized matmul inputs, one set per input width
        self._views: dict = {}

    @staticmethod
    def layout(cfg: ModelConfig, B: int, att_len: int, n_logits: int = 1) -> dict:
        """name -> (shape, dtype) of the buffers (`nbytes_of` sums them)."""
        H, f, i8 = cfg.hidden_size, np.float32, np.int64
        hd = max(cfg.layer_head_dims)
        gate = 2 if cfg.mlp == "gated" else 1
        out = {"x": ((B, H), f), "h": ((B, H), f), "o": ((B, H), f), "m": ((B, H), f),
               "qkv": ((B * (cfg.q_dim + 2 * cfg.kv_dim),), f), "q": ((B * cfg.q_dim,), f),
               "k": ((B * cfg.kv_dim,), f), "v": ((B * cfg.kv_dim,), f),
               "att": ((B * cfg.q_dim,), f), "inner": ((B * gate * cfg.max_ffn,), f),
               "act": ((B * cfg.max_ffn,), f), "logits": ((n_logits, cfg.vocab_size), f),
               "ids": ((B,), i8), "iota": ((B,), i8), "pos": ((B,), i8),
               "scratch": ((_ATT_CHUNKS, att_len), f),
               "stage": ((_ATT_CHUNKS, K.att_stage_len(hd, hd)), f),
               "rowstate": ((2, B * cfg.num_attention_heads), f),
               "offs": ((_ATT_CHUNKS, 3, K.ATT_MAX_ROWS), i8)}
        if cfg.ple_dim:
            LP = cfg.num_hidden_layers * cfg.ple_dim
            out.update(ple=((B, LP), f), ple_proj=((B, LP), f), ple_gate=((B, cfg.ple_dim), f))
        if cfg.moe is not None:
            E, I = cfg.moe.num_experts, cfg.moe.intermediate_size
            out.update(router_in=((B, H), f), router=((B, E), f), expert_x=((B, H), f),
                       expert_y=((B, H), f), expert_in=((B, 2 * I), f),
                       expert_act=((B, I), f), moe_out=((B, H), f))
        return out

    @staticmethod
    def shared_layout(cfg: ModelConfig, B: int) -> dict:
        """KV sharing: a producer's chunk keys / values (each of this shape), kept for the
        layers that read its cache (its own store waits until they ran, Session._forward)."""
        return {p: (B, cfg.layer_kv_heads[p], cfg.layer_head_dims[p])
                for p in sorted(set(cfg.kv_source)) if cfg.kv_source.count(p) > 1}

    @staticmethod
    def act_widths(cfg: ModelConfig) -> set:
        """Input widths of the int8 matmuls (each gets its activation buffers)."""
        n = cfg.num_hidden_layers
        widths = {cfg.hidden_size} | {cfg.q_dim_of(i) for i in range(n)} | set(cfg.layer_ffn)
        if cfg.ple_dim:
            widths.add(cfg.ple_dim)
        if cfg.moe is not None:
            widths.add(cfg.moe.intermediate_size)
        return widths

    @classmethod
    def nbytes_of(cls, cfg: ModelConfig, B: int, att_len: int, dtype: str = "int8") -> int:
        """Bytes of the buffers of a session (once every matmul ran), without allocating."""
        size = lambda shape, dt: int(np.prod(shape)) * np.dtype(dt).itemsize  # noqa: E731
        total = sum(size(*v) for v in cls.layout(cfg, B, att_len).values())
        total += sum(2 * size(shape, np.float32) for shape in cls.shared_layout(cfg, B).values())
        if dtype != "float32":  # a GGUF file's own types (auto) may take Q8_K activations too
            auto = dtype == "auto"  # (and any packed format: an upper bound)
            total += Activations.nbytes_of(
                B, cls.act_widths(cfg), ("q8_0", "q8_k") if auto else ("q8_0",),
                tuple(GEOMETRY) if auto else ("q8" if dtype == "int8" else "q4",))
        return total

    @property
    def nbytes(self) -> int:
        arrays = [a for a in vars(self).values() if isinstance(a, np.ndarray)]
        arrays += [a for pair in self.shared.values() for a in pair]
        return sum(a.nbytes for a in arrays if a.base is None) + self.acts.nbytes

    def view(self, name: str, *shape) -> np.ndarray:
        """The contiguous prefix of flat buffer `name`, shaped (made once per shape: decoding
        creates no array objects for it)."""
        key = (name, shape)
        v = self._views.get(key)
        if v is None:
            n = 1
            for d in shape:
                n *= d
            v = self._views[key] = getattr(self, name)[:n].reshape(shape)
        return v


class Session:
    """One sequence being evaluated: KV cache, next position, token history, buffers.

    `kv_type`: "f32", "f16" or "int8" KV cache elements (edgerope.engine.cache). `context_shift`:
    when a chunk does not fit in `n_ctx`, drop the oldest tokens after the first `n_keep`
    (attention sinks) and renumber the rest (StreamingLLM; edgerope.engine.cache explains how), so
    evaluation never runs out of room; without it eval() raises ContextFullError. `tokens`
    is what the cache holds, in position order (after a shift: the sinks, then the recent
    tokens), so `pos == len(tokens)` always; `n_shifted` counts the tokens dropped."""

    def __init__(self, model: Model, n_ctx: int, n_batch: int = 512, *,
                 kv_type: str = DEFAULT_KV_TYPE, n_keep: int = 4, context_shift: bool = False,
                 kv_storage: dict | None = None):
        if n_ctx <= 0 or n_batch <= 0:
            raise ParameterError("n_ctx and n_batch must be positive")
        if n_keep < 0 or (context_shift and n_keep >= n_ctx):
            raise ParameterError(f"n_keep must be in [0, {n_ctx}) for a context of {n_ctx}, "
                             f"got {n_keep}")
        self.model, self.n_ctx, self.n_batch = model, n_ctx, min(n_batch, n_ctx)
        self.n_keep, self.context_shift, self.n_shifted = n_keep, context_shift, 0
        cfg = model.config
        # sinks keep their slots only when a shift can happen (no shift: a plain ring)
        self.cache = KVCache(cfg, n_ctx, kv_type, sinks=n_keep if context_shift else 0,
                             storage=kv_storage)  # kv_storage: a Batch's (engine.batch)
        # with context shift a chunk must fit beside the sinks
        self._step = max(1, min(self.n_batch, n_ctx - n_keep)) if context_shift else self.n_batch
        self._buf = None  # allocated at the first eval (a Batch's sessions use the batch's)
        self.tokens: list[int] = []
        self._rope = {t: model.rope_table(t, n_ctx) for t in set(cfg.layer_types)}
        self.profiler = None  # an edgerope.engine.profile.Profiler times every kernel call

    def _run(self):
        return self.profiler or direct

    @property
    def buf(self) -> "_Buffers":
        """The session's buffers (made at first use: a session evaluated only in a Batch
        never allocates its own)."""
        if self._buf is None:
            self._buf = _Buffers(self.model.config, self.n_batch, self._att_len())
        return self._buf

    @property
    def pos(self) -> int:
        return len(self.tokens)

    def reset(self) -> None:
        self.tokens.clear()
        self.cache.clear()
        self.n_shifted = 0

    def truncate(self, n: int) -> bool:
        """Forget every token after the first n, so that evaluation goes on from position n
        (a prompt cache reusing a shared prefix). Returns False, changing nothing, when the
        cache no longer holds what those n tokens leave behind: a ring that wrapped past them
        (a sliding-window layer that stored more than its slots), or a context shift."""
        if not 0 <= n <= self.pos:
            raise ParameterError(f"truncate: n must be in [0, {self.pos}], got {n}")
        if n == self.pos:
            return True
        if self.n_shifted or any(c.n > c.capacity for _, c in self.cache.owned()):
            return False
        for _, c in self.cache.owned():
            c.pos[c.pos >= n] = -1
            c.n = n
        del self.tokens[n:]
        return True

    def set_keep(self, n_keep: int) -> None:
        """Change the number of attention sinks of an empty session (re-allocates the cache
        when the sinks' slots change; generate() uses it for --keep -1 = the whole prompt)."""
        if self.pos:
            raise ParameterError("set_keep: the session already holds tokens")
        if n_keep < 0 or (self.context_shift and n_keep >= self.n_ctx):
            raise ParameterError(f"n_keep must be in [0, {self.n_ctx}), got {n_keep}")
        if n_keep != self.n_keep:
            self.n_keep = n_keep
            if self.context_shift:
                cache = self.cache
                self.cache = None  # drop the old buffers before allocating the new ones
                self.cache = KVCache(self.model.config, self.n_ctx, cache.kv_type, n_keep)
                self._step = max(1, min(self.n_batch, self.n_ctx - n_keep))
                if self._buf is not None and self.cache.max_capacity > cache.max_capacity:
                    self._buf.scratch = np.zeros((_ATT_CHUNKS, self._att_len()), np.float32)

    def _att_len(self) -> int:
        """Length of an attention scratch row: the scores of every key a chunk sees, and room
        for one query's output over all heads (decoding splits a long cache into parts that
        each keep their own, kernels.attention). session_bytes counts the same."""
        return self.cache.max_capacity + self.n_batch + self.model.config.q_dim

    def _make_room(self, T: int) -> None:
        """Context shift before a chunk of T tokens that does not fit (see the class doc)."""
        if self.pos + T <= self.n_ctx:
            return
        if not self.context_shift:
            self.cache.check_room(self.pos + T)
        keep = self.n_keep
        n = min(max(self.pos + T - self.n_ctx, (self.pos - keep) // 2), self.pos - keep)
        cfg = self.model.config
        shifts = {}
        for t, (_, _, ia, ib) in self._rope.items():
            cos, sin = cfg.rope[t].shift(-n, seq_len=self.pos)
            shifts[t] = (cos, sin, ia, ib)
        no_pairs = np.zeros(0, np.int64)
        for li, c in self.cache.owned():
            cos, sin, ia, ib = shifts[cfg.layer_types[li]]
            if not cfg.rope_layers[li]:  # NoPE keys carry no rotation to undo
                ia = ib = no_pairs
            c.shift(keep, n, cos, sin, ia, ib)
        del self.tokens[keep:keep + n]
        self.n_shifted += n

    def eval(self, ids, all_logits: bool = False, logits_from: int | None = None) -> np.ndarray:
        """Feed tokens; return logits of the last one (vocab,), or of all (len(ids), vocab),
        or with `logits_from=k` of ids[k:] only ((len(ids) - k, vocab); the output head is
        then computed for those rows only).

        The last-token logits are a read-only view of the session's buffer, valid until the
        next eval() (as llama.cpp's llama_get_logits): decoding allocates nothing per token.
        Copy them to keep them."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if len(ids) == 0:
            raise ParameterError("eval() needs at least one token")
        vocab = self.model.config.vocab_size
        if ids.min() < 0 or ids.max() >= vocab:
            raise ParameterError(f"token id out of range [0, {vocab})")
        if not self.context_shift:
            self.cache.check_room(self.pos + len(ids))
        if all_logits:
            logits_from = 0
        # the session's thread count (edgerope.runtime) for this call; the caller's own
        # Numba setting is restored after
        caller, n = K.get_threads(), runtime.threads()
        if n == caller:
            return self._eval(ids, logits_from)
        K.set_threads(n)
        try:
            return self._eval(ids, logits_from)
        finally:
            K.set_threads(caller)

    def _eval(self, ids: np.ndarray, logits_from: int | None) -> np.ndarray:
        vocab = self.model.config.vocab_size
        step = self._step
        if logits_from is None:
            for s in range(0, len(ids), step):
                last = self._forward(ids[s:s + step], None, 0)
            return last
        if not 0 <= logits_from < len(ids):
            raise ParameterError(f"logits_from must be in [0, {len(ids)}), got {logits_from}")
        out = np.empty((len(ids) - logits_from, vocab), np.float32)
        for s in range(0, len(ids), step):
            chunk = ids[s:s + step]
            r0 = max(0, logits_from - s)  # first row of this chunk whose logits are wanted
            dst = out[s + r0 - logits_from:s + len(chunk) - logits_from]
            self._forward(chunk, dst if r0 < len(chunk) else None, r0)
        return out

    def _forward(self, ids: np.ndarray, logits_out: np.ndarray | None, r0: int):
        """Run one chunk. logits_out None: last-token logits into the session buffer (returned);
        otherwise logits of rows r0.. of the chunk into logits_out."""
        cfg, W, b = self.model.config, self.model.weights, self.buf
        T = len(ids)
        self._make_room(T)
        b.ids[:T] = ids
        np.add(b.iota[:T], self.pos, out=b.pos[:T])
        op = self._run()
        run_layers(self.model, b, T, ((self.cache, 0, T),), self.rope_rows(b.pos[:T], b.iota),
                   op)
        self.tokens.extend(ids.tolist())
        x, h = b.x[:T], b.h[:T]
        if logits_out is not None:
            op("norm", apply_norm, W.out_norm, h[r0:], x[r0:])
            op("matmul.lm_head", W.lm_head, logits_out, h[r0:], b.acts)
            last = logits_out[-1]
            finish_logits(op, cfg, logits_out)
        elif r0 == 0:
            op("norm", apply_norm, W.out_norm, h[:1], x[T - 1:T])
            op("matmul.lm_head", W.lm_head, b.logits[:1], h[:1], b.acts)
            finish_logits(op, cfg, b.logits[:1])
            last = b.logits_view
        else:
            last = None  # a chunk before the requested logits
        return last

    def rope_rows(self, pos: np.ndarray, iota: np.ndarray) -> dict:
        """Per layer type: (cos, sin, ia, ib, rows) where rows index the cos/sin tables, for
        tokens at positions `pos` of this session (`iota`: 0, 1, 2, ... at least len(pos)).

        Most RoPE types have fixed frequencies: one table for the whole context, indexed by
        position. `dynamic` and `longrope` frequencies depend on the sequence length seen so far
        (as in transformers, keys already cached keep the rotation they got)."""
        out = {}
        for t, (cos, sin, ia, ib) in self._rope.items():
            spec = self.model.config.rope[t]
            if spec.rope_type in ("dynamic", "longrope"):
                cos, sin = spec.cos_sin(pos, seq_len=int(pos[-1]) + 1)
                out[t] = (cos, sin, ia, ib, iota[:len(pos)])
            else:
                out[t] = (cos, sin, ia, ib, pos)
        return out


def finish_logits(op, cfg: ModelConfig, logits: np.ndarray) -> None:
    """The output head's last steps, in place: logit scale (Granite), final soft-cap (Gemma 2)."""
    if cfg.logit_scale != 1.0:
        op("scale", np.divide, logits, np.float32(cfg.logit_scale), logits)
    if cfg.final_softcap:
        op("softcap", K.softcap_, logits, cfg.final_softcap)


def run_layers(model: Model, b: _Buffers, T: int, segs, rope: dict, op,
               together=None) -> None:
    """Every layer over the T tokens of buffer b (ids in b.ids, positions in b.pos), leaving
    the last hidden states in b.x[:T]. `segs`: (KVCache, start, end) per sequence, the
    tokens start..end-1 being consecutive tokens of that sequence: everything but attention
    and the cache writes runs on all T rows at once (one read of the weights), attention and
    the stores per sequence. `rope`: Session.rope_rows of the T positions. `together` (a Batch's
    decode steps): (stacked, seq, seg) -- per layer the caches of all sequences stacked
    (kernels.attention_rows), each row's sequence and its rows -- to attend for every row
    in one call."""
    cfg, W = model.config, model.weights
    Hq = cfg.num_attention_heads
    pos = b.pos[:T]
    x, h, o, mo = b.x[:T], b.h[:T], b.o[:T], b.m[:T]
    op("embed", W.embed.embed, x, b.ids[:T], cfg.embed_scale)
    if W.ple is not None:
        _per_layer_inputs(model, b, op, W.ple, x, T)
    parallel = cfg.residual == "parallel"
    deferred = []  # KV-sharing producers store after the layers that read them
    for li, lw in enumerate(W.layers):
        D, Hkv, src = cfg.layer_head_dims[li], cfg.layer_kv_heads[li], cfg.kv_source[li]
        qd, kvd = Hq * D, Hkv * D
        q, att = b.view("q", T, Hq, D), b.view("att", T, Hq, D)
        cos, sin, ia, ib, rows = rope[cfg.layer_types[li]]
        if lw.attn_norm is not None:
            op("norm", apply_norm, lw.attn_norm, h, x)
        else:
            op("add", np.copyto, h, x)
        if src == li:
            if li in b.shared:
                k, v = b.shared[li][0][:T], b.shared[li][1][:T]
            else:
                k, v = b.view("k", T, Hkv, D), b.view("v", T, Hkv, D)
            kq_eq_v = cfg.k_eq_v[li]
            qkv = b.view("qkv", T, qd + (1 if kq_eq_v else 2) * kvd)
            op("matmul.qkv", lw.wqkv, qkv, h, b.acts)
            q.reshape(T, qd)[:] = qkv[:, :qd]
            k.reshape(T, kvd)[:] = qkv[:, qd:qd + kvd]
            v.reshape(T, kvd)[:] = qkv[:, qd + kvd:] if not kq_eq_v else qkv[:, qd:]
            if lw.q_norm is not None:  # per head, or over the whole projection
                full = cfg.qk_norm == "rms_full"
                qf = q.reshape(T, qd) if full else q.reshape(T * Hq, D)
                kf = k.reshape(T, kvd) if full else k.reshape(T * Hkv, D)
                op("norm", apply_norm, lw.q_norm, qf, qf)
                op("norm", apply_norm, lw.k_norm, kf, kf)
            if cfg.v_norm:
                vf = v.reshape(T * Hkv, D)
                op("norm", apply_norm, model.unit_norm(D), vf, vf)
            if cfg.rope_layers[li]:
                op("rope", K.rope_apply, k, rows, cos, sin, ia, ib)
        else:  # reads the cache (and this chunk's keys) of layer src
            op("matmul.qkv", lw.wqkv, q.reshape(T, qd), h, b.acts)
            if lw.q_norm is not None:
                qf = q.reshape(T * Hq, D)
                op("norm", apply_norm, lw.q_norm, qf, qf)
            k, v = b.shared[src][0][:T], b.shared[src][1][:T]
        if cfg.rope_layers[li]:
            op("rope", K.rope_apply, q, rows, cos, sin, ia, ib)
        params = (cfg.attn_scale, cfg.window(li) or 0, cfg.attn_softcap or 0.0)
        partner = model.partner(cfg.layer_types[li])
        if together is not None:
            stacked, seq, seg = together
            op("attention", K.attention_rows, att, q, stacked[src], (k, v, pos), params,
               b.scratch, seq[:T], seg[:T])
        for cache, s, e in segs:
            c = cache.layers[src]
            new = (k[s:e], v[s:e], pos[s:e])
            if together is None:
                _attend(op, b, att[s:e], q[s:e], c, new, params, Hq, Hkv, D)
            if src == li and li in b.shared:
                deferred.append((c, new, partner))
            elif src == li:
                op("kv store", c.store, *new, partner)
        op("matmul.o", lw.wo, o, att.reshape(T, qd), b.acts)
        if lw.post_attn_norm is not None:
            op("norm", apply_norm, lw.post_attn_norm, o, o)
        if cfg.residual_scale != 1.0:
            op("scale", np.multiply, o, np.float32(cfg.residual_scale), o)
        if parallel:
            if lw.ffn_norm is not None:
                op("norm", apply_norm, lw.ffn_norm, h, x)
            _mlp(model, b, op, lw, mo, h, T, cfg.layer_ffn[li])
            op("add", K.add, x, x, o)
        else:
            op("add", K.add, x, x, o)
            if lw.ffn_norm is not None:
                op("norm", apply_norm, lw.ffn_norm, h, x)
            else:
                op("add", np.copyto, h, x)
            _mlp(model, b, op, lw, mo, h, T, cfg.layer_ffn[li])
            if lw.moe is not None:
                _experts(model, b, op, lw.moe, mo, x, T)
            if lw.post_ffn_norm is not None:
                op("norm", apply_norm, lw.post_ffn_norm, mo, mo)
        if cfg.residual_scale != 1.0:
            op("scale", np.multiply, mo, np.float32(cfg.residual_scale), mo)
        op("add", K.add, x, x, mo)
        if lw.ple_gate is not None:
            _per_layer_branch(model, b, op, lw, li, x, T)
        if cfg.layer_scalar:
            op("scale", np.multiply, x, lw.layer_scalar, x)
    for c, new, partner in deferred:
        op("kv store", c.store, *new, partner)


def _attend(op, b, att, q, c, new, params, Hq, Hkv, D) -> None:
    """One sequence's queries against its cache and its own new keys: float register tiles
    for many queries, parts of a long cache in parallel for one, else row by row."""
    T = q.shape[0]
    if K.tiles_usable(T, Hq, Hkv, D, q, att):
        U = min(_ATT_CHUNKS, 2 * K.get_threads())
        op("attention", K.attention_tiles, att, q, c.arrays, new, params,
           b.stage[:U], b.rowstate, b.offs[:U])  # whole rows: one array type
    elif T == 1 and c.capacity > K.DECODE_SPLIT:
        op("attention", K.attention_decode, att, q, c.arrays, new, params, b.scratch,
           min(c.n, c.capacity))
    else:
        op("attention", K.attention, att, q, c.arrays, new, params, b.scratch)


def _per_layer_inputs(model, b, op, ple, x, T) -> None:
    """Gemma 4 PLE: (table[ids] sqrt(P) + norm(x W_proj H^-1/2)) / sqrt(2), for every
    layer at once (x: the scaled token embedding)."""
    cfg = model.config
    P, H = cfg.ple_dim, cfg.hidden_size
    pe, proj = b.ple[:T], b.ple_proj[:T]
    op("embed", ple.embed.embed, pe, b.ids[:T], float(P) ** 0.5)
    op("matmul.ple", ple.proj, proj, x, b.acts)
    op("scale", np.multiply, proj, np.float32(H ** -0.5), proj)
    flat = proj.reshape(T * cfg.num_hidden_layers, P)
    op("norm", apply_norm, ple.norm, flat, flat)
    op("add", K.add, pe, pe, proj)
    op("scale", np.multiply, pe, np.float32(2 ** -0.5), pe)


def _per_layer_branch(model, b, op, lw, li, x, T) -> None:
    """x += post_norm(W_out (gelu(W_gate x) * ple[layer]))."""
    P = model.config.ple_dim
    g, out = b.ple_gate[:T], b.o[:T]
    op("matmul.ple", lw.ple_gate, g, x, b.acts)
    op("activation", K.act, g, g, model._act)
    op("scale", np.multiply, g, b.ple[:T, li * P:(li + 1) * P], g)
    op("matmul.ple", lw.ple_out, out, g, b.acts)
    op("norm", apply_norm, lw.ple_post_norm, out, out)
    op("add", K.add, x, x, out)


def _experts(model, b, op, moe, mo, x, T) -> None:
    """Gemma 4 MoE beside the dense MLP: mo = post_norm_1(mo) + post_norm_2(experts).
    The router reads the post-attention stream x: softmax over all experts, top-k,
    renormalised, times the per-expert scales. Each chosen expert runs on the tokens that
    chose it only (its weights are read once per chunk, never for tokens not routed)."""
    cfg = model.config
    H, k = cfg.hidden_size, cfg.moe.top_k
    op("norm", apply_norm, moe.post_norm_1, mo, mo)
    r_in, logits = b.router_in[:T], b.router[:T]
    op("norm", apply_norm, model.unit_norm(H), r_in, x)
    op("scale", np.multiply, r_in, moe.router_in_scale, r_in)
    # row by row: a GEMM sums in another order than a GEMV, and with int8 activations
    # after it those last bits could grow, so decode and prefill route alike this way
    for t in range(T):
        op("matmul.router", moe.router, logits[t:t + 1], r_in[t:t + 1], b.acts)
    top = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    w = np.take_along_axis(probs, top, axis=1)
    w /= w.sum(axis=1, keepdims=True)
    w *= moe.expert_scale[top]
    h2, out = b.h[:T], b.moe_out[:T]
    op("norm", apply_norm, moe.pre_norm_2, h2, x)
    out[:] = 0.0
    for e in np.unique(top).tolist():
        rows, slot = np.nonzero(top == e)
        n = len(rows)
        xe, ye = b.expert_x[:n], b.expert_y[:n]
        gu, act = b.expert_in[:n], b.expert_act[:n]
        np.take(h2, rows, axis=0, out=xe)
        op("matmul.experts", moe.w_in[e], gu, xe, b.acts)
        op("activation", K.act_mul, act, gu, model._act)
        op("matmul.experts", moe.w_down[e], ye, act, b.acts)
        ye *= w[rows, slot][:, None]
        out[rows] += ye
    op("norm", apply_norm, moe.post_norm_2, out, out)
    op("add", K.add, mo, mo, out)


def _mlp(model, b, op, lw, out, h, T, width) -> None:
    gated = model.config.mlp == "gated"
    inner = b.view("inner", T, 2 * width if gated else width)
    act = b.view("act", T, width)
    op("matmul.ffn_in", lw.w_in, inner, h, b.acts)
    if gated:
        op("activation", K.act_mul, act, inner, model._act)
    else:
        op("activation", K.act, act, inner, model._act)
    op("matmul.ffn_down", lw.w_down, out, act, b.acts)
