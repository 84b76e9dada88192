"""The RAM a model needs at a context, and the check that refuses to start what cannot fit.

The figure is what a run takes from the machine: its anonymous (private) memory plus the
resident weights (edgerope.system.process_memory tells both). Library code and the mapped
weights are file-backed: the peak resident set also holds library pages (numba's LLVM the
most), which the kernel drops first under memory pressure and are not counted here.

    weights   resident weight bytes: exact for a loaded model (ModelWeights.nbytes), from the
              config and the in-memory dtype before loading (formats.matrix_nbytes)
    KV cache  edgerope.engine.cache.kv_bytes at that context, KV type and sinks
    buffers   a session's buffers and RoPE tables (engine.model.session_bytes)
    tokenizer its vocabulary as Python objects, `TOKEN_BYTES` a token + `TOKENIZER_BYTES`
    runtime   Python, numpy, numba and the loaded kernels' machine code, `RUNTIME_BYTES`

The two constants are fitted to measurements (bench/RESULTS.md, "memory as /proc tells
it"). A first run, which compiles the kernels, takes more for a while (LLVM's working
memory); later runs load them from the cache. Pages of the KV cache that no token has
reached yet are not resident, so a short run stays below the figure; it is what the whole
context takes.

`estimate(model_or_config, n_ctx, kv_type)` serves `edgerope info`, the CLI's check and
tests; `preflight(spec, ...)` runs that check from the model's config alone, before any
weight is read, so a model that cannot fit is refused rather than killed by the kernel's
out-of-memory killer.
"""
from __future__ import annotations

from dataclasses import dataclass

from edgerope.engine.cache import DEFAULT_KV_TYPE, kv_bytes
from edgerope.formats import DTYPES, matrix_nbytes

_MiB = 1 << 20
RUNTIME_BYTES = 64 * _MiB    # anonymous memory of the runtime once the kernels are loaded
TOKEN_BYTES = 160            # a vocabulary entry as Python objects
TOKENIZER_BYTES = 6 * _MiB   # a tokenizer besides its entries


@dataclass(frozen=True)
class MemoryEstimate:
    n_ctx: int
    kv_type: str
    weights: int
    kv_cache: int
    buffers: int
    tokenizer: int
    runtime: int = RUNTIME_BYTES

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.buffers + self.tokenizer + self.runtime

    def parts(self) -> str:
        """'weights 235, KV f16 20, buffers 41, tokenizer 46, runtime 64' (MiB)."""
        mib = lambda n: f"{n / _MiB:.0f}"  # noqa: E731
        return (f"weights {mib(self.weights)}, KV {self.kv_type} {mib(self.kv_cache)}, "
                f"buffers {mib(self.buffers)}, tokenizer {mib(self.tokenizer)}, "
                f"runtime {mib(self.runtime)}")

    def summary(self) -> str:
        """'~406 MiB (weights 235, KV f16 20, buffers 41, tokenizer 46, runtime 64)'."""
        return f"~{self.total / _MiB:.0f} MiB ({self.parts()})"

    def line(self) -> str:
        return f"RAM needed at context {self.n_ctx}: {self.summary()}"


def human(n: int) -> str:
    """1.1 GiB, 480 MiB."""
    return f"{n / (1 << 30):.1f} GiB" if n >= 1 << 30 else f"{n / _MiB:.0f} MiB"


def weight_bytes(cfg, dtype: str) -> int | None:
    """Bytes of the weight matrices and biases of a model of this config held as `dtype`
    (what ModelWeights.nbytes reports once loaded); None for an unknown dtype."""
    from edgerope.engine.weights import EMBED_DTYPE
    if dtype not in DTYPES:
        return None
    dtype = "int8" if dtype == "auto" else dtype  # from a config alone: as float weights load
    H, V = cfg.hidden_size, cfg.vocab_size
    gate = 2 if cfg.mlp == "gated" else 1
    edtype = EMBED_DTYPE.get(dtype, dtype)  # embedding and output matrices (int4: int8)
    sizes = [matrix_nbytes(edtype, V, H)] * (1 if cfg.tie_word_embeddings else 2)
    biases = V if cfg.lm_head_bias and not cfg.tie_word_embeddings else 0
    P = cfg.ple_dim
    if P:
        LP = cfg.num_hidden_layers * P
        sizes += [matrix_nbytes(edtype, cfg.ple_vocab, LP), matrix_nbytes(dtype, LP, H)]
    for i in range(cfg.num_hidden_layers):
        I, q = cfg.layer_ffn[i], cfg.q_dim_of(i)
        kv = 0 if not cfg.stores_kv(i) else cfg.kv_dim_of(i) * (1 if cfg.k_eq_v[i] else 2)
        sizes += [matrix_nbytes(dtype, n, k) for n, k in ((q + kv, H), (H, q), (gate * I, H),
                                                          (H, I))]
        if P:
            sizes += [matrix_nbytes(dtype, P, H), matrix_nbytes(dtype, H, P)]
        if cfg.moe is not None:
            E, Ie = cfg.moe.num_experts, cfg.moe.intermediate_size
            sizes += [4 * E * H] + [matrix_nbytes(dtype, 2 * Ie, H),
                                    matrix_nbytes(dtype, H, Ie)] * E
        biases += ((q + kv) if cfg.qkv_bias else 0) + (H if cfg.o_bias else 0) + (
            gate * I + H if cfg.mlp_bias else 0)
    return sum(sizes) + 4 * biases


def tokenizer_bytes(cfg) -> int:
    return TOKEN_BYTES * cfg.vocab_size + TOKENIZER_BYTES


def estimate(model_or_config, n_ctx: int | None = None, kv_type: str = DEFAULT_KV_TYPE,
             n_batch: int = 512, n_keep: int = 4, dtype: str = "int8") -> MemoryEstimate:
    """RAM to run a model at context `n_ctx` (default: the model's default context).
    `model_or_config`: a loaded Model (its weights are measured; `dtype` is ignored) or a
    ModelConfig (weights computed for `dtype`; ValueError for a dtype of unknown layout)."""
    from edgerope.engine.model import default_ctx, session_bytes
    if hasattr(model_or_config, "weights"):
        cfg, weights = model_or_config.config, model_or_config.weights.nbytes
        dtype = model_or_config.dtype
    else:
        cfg, weights = model_or_config, weight_bytes(model_or_config, dtype)
        if weights is None:
            raise ValueError(f"no weight layout known for dtype {dtype!r}")
    n_ctx = n_ctx or default_ctx(cfg)
    return MemoryEstimate(n_ctx=n_ctx, kv_type=kv_type, weights=weights,
                          kv_cache=kv_bytes(cfg, n_ctx, kv_type, max(n_keep, 0)),
                          buffers=session_bytes(cfg, n_ctx, n_batch, dtype=dtype),
                          tokenizer=tokenizer_bytes(cfg))
