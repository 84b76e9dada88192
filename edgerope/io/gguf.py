"""GGUF models: llama.cpp metadata -> ModelConfig, GGUF tensors -> edgerope weights.

The metadata is translated into a Hugging Face-style config dict, so one parser
(edgerope.archs.config) and one forward pass serve both formats. The keys every architecture shares
are read here; each architecture's own (and what llama.cpp hard-codes rather than stores, e.g.
Gemma 3's local RoPE base) come from its `GGUFArch` in edgerope.archs, with its tensor names.

Tensors: with dtype "auto" (the default, as llama.cpp) every matrix keeps the file's own
type where edgerope has kernels for it -- Q8_0 (int8), Q4_0 (int4), Q4_1, Q5_0, Q5_1, Q4_K,
Q5_K, Q6_K, bit for bit (edgerope.formats.ggml_blocks) -- and other types become int8. With
"int8" / "int4" a Q8_0 / Q4_0 tensor maps bit for bit and every other type `gguf.quants` can
read is dequantized and requantized to the dtype asked for (or kept float32).
llama-architecture Q/K rows, permuted by llama.cpp's converter into the interleaved RoPE
layout, are permuted back so every model uses one (Hugging Face) layout.
"""
from __future__ import annotations

import numpy as np

from edgerope import archs
from edgerope.io.checkpoint import HeaderSource, load_weights
from edgerope.archs.config import parse_config
from edgerope.errors import ConfigError, WeightsError
from edgerope.io.gguf_file import GGUFFile
from edgerope.formats.ggml_blocks import GGML_TYPES
from edgerope.formats.linear import Linear

_Q8_0, _Q4_0, _F32, _F16, _BF16 = 8, 2, 0, 1, 30
_KEPT = {_Q8_0: "int8", _Q4_0: "int4", **{v: k for k, v in GGML_TYPES.items()}}


def _kind(v) -> str:
    """How a metadata value reads in a message: its GGUF kind and the value."""
    if isinstance(v, (list, np.ndarray)):
        return f"an array of {len(v)} value{'s' if len(v) != 1 else ''}"
    name = {bool: "a bool", str: "a string", float: "a float", int: "an integer"}.get(
        type(v), type(v).__name__)
    return f"{name} ({v!r})"


_MISSING = object()


def _number(g: GGUFFile, key: str, kind=int, default=_MISSING, positive: bool = True):
    """Metadata `key` as one int (kind=int) or float, checked: present unless a default is
    given, a single number (not a string, bool or per-layer array), > 0 when `positive`."""
    v = g.get(key)
    if v is None:
        if default is _MISSING:
            raise ConfigError(f"{g.path}: metadata key '{key}' is missing")
        return default
    want = "an integer" if kind is int else "a number"
    if isinstance(v, (list, np.ndarray)):
        raise ConfigError(f"{g.path}: metadata key '{key}' should be {want}, found "
                          f"{_kind(v)} (per-layer values are not supported)")
    ok = isinstance(v, (int, float)) and not isinstance(v, bool)
    if ok and kind is int and isinstance(v, float):
        ok = v.is_integer()
    if not ok:
        raise ConfigError(f"{g.path}: metadata key '{key}' should be {want}, found {_kind(v)}")
    if positive and not v > 0:
        raise ConfigError(f"{g.path}: metadata key '{key}' must be positive, found {v}")
    return kind(v)


def gguf_config_dict(g: GGUFFile) -> dict:
    """A Hugging Face-style config.json dict describing the GGUF model."""
    arch = g.get("general.architecture")
    if arch is None:
        raise ConfigError(f"{g.path}: metadata key 'general.architecture' is missing")
    spec = archs.by_gguf(arch) if isinstance(arch, str) else None
    if spec is None:
        raise ConfigError(f"{g.path}: unsupported GGUF architecture {arch!r} "
                          f"(supported: {', '.join(sorted(archs.gguf_archs()))})")

    def need(key, kind=int):
        return _number(g, f"{arch}.{key}", kind)

    def opt(key, default=None, kind=int, positive=True):
        return _number(g, f"{arch}.{key}", kind, default, positive)

    n_head = need("attention.head_count")
    hidden = need("embedding_length")
    head_dim = opt("attention.key_length") or hidden // n_head
    tokens = g.get("tokenizer.ggml.tokens")
    if tokens is not None and not (isinstance(tokens, list)
                                   and all(isinstance(t, str) for t in tokens[:1])):
        raise ConfigError(f"{g.path}: metadata key 'tokenizer.ggml.tokens' should be an array "
                          f"of strings, found {_kind(tokens)}")
    vocab = len(tokens) if tokens is not None else opt("vocab_size")
    if vocab is None and "token_embd.weight" in g.tensors:
        vocab = g.tensors["token_embd.weight"].shape[0]
    n_layers = need("block_count")
    arrays = {}  # per-layer values, for an architecture that reads them (Gemma 4)
    for key in ("attention.head_count_kv", "feed_forward_length"):
        v = g.get(f"{arch}.{key}")
        if spec.gguf.layer_arrays and isinstance(v, (list, np.ndarray)):
            if len(v) != n_layers or not all(isinstance(x, (int, np.integer)) and x > 0
                                             for x in v):
                raise ConfigError(f"{g.path}: metadata key '{arch}.{key}' should hold "
                                  f"{n_layers} positive integers, found {_kind(v)}")
            arrays[key] = [int(x) for x in v]
    raw = dict(
        vocab_size=vocab, hidden_size=hidden,
        intermediate_size=(arrays["feed_forward_length"][0] if "feed_forward_length" in arrays
                           else need("feed_forward_length")),
        num_hidden_layers=n_layers, num_attention_heads=n_head,
        num_key_value_heads=(arrays["attention.head_count_kv"][0]
                             if "attention.head_count_kv" in arrays
                             else opt("attention.head_count_kv", n_head)),
        head_dim=head_dim, max_position_embeddings=need("context_length"),
        tie_word_embeddings="output.weight" not in g.tensors,
        bos_token_id=_number(g, "tokenizer.ggml.bos_token_id", int, None, positive=False),
        eos_token_id=_number(g, "tokenizer.ggml.eos_token_id", int, None, positive=False),
    )
    rms_eps = opt("attention.layer_norm_rms_epsilon", kind=float)
    ln_eps = opt("attention.layer_norm_epsilon", kind=float)
    if rms_eps is None and ln_eps is None:
        need("attention.layer_norm_rms_epsilon", float)  # the usual key, named as missing
    raw.update({k: v for k, v in (("rms_norm_eps", rms_eps), ("layer_norm_eps", ln_eps))
                if v is not None})
    theta = opt("rope.freq_base", 10000.0, float)
    rope = {"rope_type": "default", "rope_theta": theta}
    scaling = g.get(f"{arch}.rope.scaling.type")
    if scaling not in (None, "none"):
        if scaling not in ("linear", "yarn"):
            raise ConfigError(f"{g.path}: unsupported GGUF RoPE scaling {scaling!r}")
        rope.update(rope_type=scaling, factor=opt("rope.scaling.factor", 1.0, float))
        ompe = opt("rope.scaling.original_context_length", positive=False)
        if ompe:
            rope["original_max_position_embeddings"] = int(ompe)
    if "rope_freqs.weight" in g.tensors and not spec.gguf.rope_freqs:
        raise ConfigError(f"{g.path}: per-frequency RoPE factors (rope_freqs) are not supported")
    rot = opt("rope.dimension_count") or head_dim
    if rot > head_dim or rot % 2:
        raise ConfigError(f"{g.path}: metadata key '{arch}.rope.dimension_count' must be an "
                          f"even number up to the head size {head_dim}, found {rot}")
    try:
        spec.gguf.config(_Meta(g, arch, need, opt, rope, rot, head_dim, arrays), raw)
    except ValueError as e:
        raise ConfigError(f"{g.path}: {e}") from None
    return raw


class _Meta:
    """What an architecture's GGUF hook reads: metadata keys without the `<arch>.` prefix
    (`need`, `opt`: checked as `_number` does; `flag`: a bool), the file's RoPE parameters
    (`rope`), rotary channels (`rot`, of `head_dim`), which tensors it holds (`has`), small
    tensors (`tensor`) and per-layer arrays of head_count_kv / feed_forward_length
    (`arrays`, for architectures with `layer_arrays`)."""

    def __init__(self, g, arch, need, opt, rope, rot, head_dim, arrays=None):
        self.g, self.arch, self.need, self.opt = g, arch, need, opt
        self.rope, self.rot, self.head_dim = rope, rot, head_dim
        self.arrays = arrays or {}  # per-layer arrays the architecture accepts

    def tensor(self, name: str) -> np.ndarray:
        """A small tensor's float32 values (rope_freqs)."""
        t = self.g.tensors[name]
        if t.ggml_type != _F32:
            raise ValueError(f"tensor '{name}' should be F32")
        return np.array(t.raw(), dtype=np.float32).reshape(-1)

    def has(self, name: str) -> bool:
        return name in self.g.tensors

    def flag(self, key: str, default: bool) -> bool:
        v = self.g.get(f"{self.arch}.{key}")
        if v is None:
            return default
        if not isinstance(v, (bool, np.bool_)):
            raise ValueError(f"metadata key '{self.arch}.{key}' should be a bool, found "
                             f"{_kind(v)}")
        return bool(v)

    def layer_types(self, n_pattern: int) -> list[str]:
        """llama.cpp's sliding-window layers: `attention.sliding_window_pattern` as a per-layer
        array (true = sliding) or a period (every n-th layer global), else `n_pattern`."""
        n = self.need("block_count")
        v = self.g.get(f"{self.arch}.attention.sliding_window_pattern")
        if isinstance(v, (list, np.ndarray)):
            if len(v) != n:
                raise ValueError(f"metadata key '{self.arch}.attention.sliding_window_pattern' "
                                 f"has {len(v)} values for {n} layers")
            return ["sliding_attention" if bool(x) else "full_attention" for x in v]
        if v is not None:
            n_pattern = self.opt("attention.sliding_window_pattern")
        return ["sliding_attention" if n_pattern and (i + 1) % n_pattern else "full_attention"
                for i in range(n)]

    def partial_rope(self) -> dict:
        """The file's RoPE parameters with the rotary share of each head."""
        return dict(self.rope, partial_rotary_factor=self.rot / self.head_dim)


class GGUFSource:
    """Tensors of a GGUF file with the interface edgerope.io.checkpoint reads from."""

    def __init__(self, g: GGUFFile, cfg):
        self.g, self.where, self.cfg = g, g.path, cfg
        spec = archs.by_gguf(g.get("general.architecture")).gguf
        self.unpermute_qk = spec.unpermute_qk
        self.config_tensors = set(spec.config_tensors) | (
            {"rope_freqs.weight"} if spec.rope_freqs else set())

    def __contains__(self, name):
        return name in self.g.tensors

    def names(self):
        return self.g.tensors.keys()

    def shape(self, name):
        return self.g.tensors[name].shape

    def float32(self, name) -> np.ndarray:
        t = self.g.tensors[name]
        return np.array(t.raw(), dtype=np.float32) if t.ggml_type == _F32 else self._dequantize(t)

    def _dequantize(self, t) -> np.ndarray:
        import gguf
        try:
            out = gguf.quants.dequantize(t.raw(), gguf.GGMLQuantizationType(t.ggml_type))
        except (NotImplementedError, ValueError, KeyError) as e:
            raise WeightsError(f"{self.where}: tensor '{t.name}' of type {t.type_name} cannot "
                               f"be read ({e})") from None
        return np.ascontiguousarray(out, dtype=np.float32).reshape(t.shape)

    def format_of(self, name, dtype) -> str:
        """The format `linear(name, dtype)` gives: with dtype "auto" the tensor's own type
        where edgerope multiplies it as it is (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K,
        Q6_K), else int8 (F16, BF16, F32 and the types it has no kernel for)."""
        if dtype != "auto":
            return dtype
        return _KEPT.get(self.g.tensors[name].ggml_type, "int8")

    def linear(self, name, dtype, bias, perm=None) -> Linear:
        t = self.g.tensors[name]
        dtype = self.format_of(name, dtype)
        if self.unpermute_qk and (name.endswith("attn_q.weight") or name.endswith("attn_k.weight")):
            perm = _unpermute_order(t.shape[0], self.cfg.head_dim)
        if perm is not None and bias is not None:
            bias = bias[perm]
        if t.ggml_type == _Q8_0 and dtype == "int8":
            blocks = t.raw().reshape(t.shape[0], -1, 34)
            if perm is not None:
                blocks = blocks[perm]
            ws = blocks[:, :, :2].copy().view(np.float16)[:, :, 0].astype(np.float32)
            wq = np.ascontiguousarray(blocks[:, :, 2:].view(np.int8)).reshape(t.shape)
            del blocks
            return Linear(wq=wq, ws=ws, bias=bias)
        if t.ggml_type == _Q4_0 and dtype == "int4":
            blocks = t.raw().reshape(t.shape[0], -1, 18)
            if perm is not None:
                blocks = blocks[perm]
            ws = blocks[:, :, :2].copy().view(np.float16)[:, :, 0].astype(np.float32)
            return Linear(qs=blocks[:, :, 2:], ws=ws, shape=t.shape, bias=bias)
        if dtype in GGML_TYPES and t.ggml_type == GGML_TYPES[dtype]:
            blocks = t.raw().reshape(t.shape[0], -1)
            return Linear.from_ggml(dtype, blocks if perm is None else blocks[perm], t.shape,
                                    bias)
        w = self.float32(name)
        return Linear.from_float(w if perm is None else w[perm], dtype, bias)


def _unpermute_order(n_rows: int, head_dim: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row permutation: per head, rows stored as (D/2, 2) -> (2, D/2)."""
    return np.arange(n_rows).reshape(-1, head_dim // 2, 2).swapaxes(1, 2).ravel()


def load_gguf(path: str, dtype: str = "auto", header_only: bool = False):
    """Returns (ModelConfig, ModelWeights, GGUFFile). `header_only`: weights planned from the
    header (MatrixSpec, checkpoint.HeaderSource), no tensor read."""
    g = GGUFFile(path)
    try:
        cfg = parse_config(gguf_config_dict(g))
    except ConfigError as e:
        msg = str(e)
        raise ConfigError(msg if msg.startswith(g.path) else f"{g.path}: {msg}") from None
    spec = archs.get(cfg.model_type).gguf
    src = GGUFSource(g, cfg)
    weights = load_weights(HeaderSource(src) if header_only else src, cfg, dtype,
                           names=spec.names, norm_plus_one_stored=spec.norm_plus_one_stored,
                           qkv_concat=True)  # llama.cpp stores a fused qkv as [q | k | v]
    return cfg, weights, g
