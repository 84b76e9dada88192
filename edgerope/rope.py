"""Rotary position embeddings: which channels rotate, how they pair, and at what frequencies.

Owns
- `RopeSpec`: a frozen, hashable description of one layer type's RoPE -- the rotating channel
  pairs (`pairs()`), the scaled frequency table (`inv_freq()`), `attention_factor`, and the
  float32 cos/sin tables the kernels consume (`cos_sin`, `table`, `shift`).
- `rope_specs_from_config`: a raw config.json dict -> {layer type name: RopeSpec}, accepting the
  current `rope_parameters` (flat or nested per layer type) and the legacy keys, with the
  defaults and standardisation of transformers 5.x config classes (mirrored, not imported).

Numerics. transformers computes `inv_freq` in float32, rounding after every torch op. The
`_inv_*` functions repeat those ops in the same order in float32 (torch's `number / tensor` is
`reciprocal(tensor) * number`; `base ** t` rounds `base` to float32 first), so `inv_freq()`
returns transformers' buffer values as float64 -- bit for bit, except where torch's vectorised
float32 pow (not correctly rounded) is off by an ulp, which later ops can make two. Angles
`position * inv_freq` and cos/sin are then evaluated in float64 and cast once; transformers
rounds the angle to float32, an error of ~position * 2^-24 rad that we do not reproduce.

Deliberately ignores: applying the rotation (the kernels own that), multimodal RoPE (mrope,
axial), transformers' statefulness (its dynamic module keeps the largest frequencies seen so far;
callers pass the sequence length they want instead).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np

ROPE_TYPES = ("default", "linear", "dynamic", "yarn", "llama3", "longrope", "proportional")
PAIRINGS = ("half", "interleaved")

_F32 = np.float32


# ---------------------------------------------------------------------------------------------
# float32 arithmetic as torch does it
# ---------------------------------------------------------------------------------------------

def _exponents(n_freq: int, dim: int) -> np.ndarray:
    """torch.arange(0, 2 * n_freq, 2).float() / dim: the exponents 2i/dim in float32."""
    return np.arange(0, 2 * n_freq, 2, dtype=_F32) / _F32(dim)


def _pow(base, exps: np.ndarray) -> np.ndarray:
    """`base ** exps` in float32. torch rounds a Python `base` to float32 but keeps a Python
    exponent in double; evaluating in float64 and rounding once agrees with torch to within one
    ulp (numpy's float32 power differs more often)."""
    return np.power(np.float64(_F32(base)), np.asarray(exps, np.float64)).astype(_F32)


def _rdiv(num, x: np.ndarray) -> np.ndarray:
    """torch's `python_number / tensor`, which is reciprocal(tensor) * number (two roundings)."""
    return (_F32(1.0) / x) * _F32(num)


def _base_inv_freq(theta, n_freq: int, dim: int) -> np.ndarray:
    """1 / theta^(2i/dim), i < n_freq, float32."""
    return _rdiv(1.0, _pow(theta, _exponents(n_freq, dim)))


# ---------------------------------------------------------------------------------------------
# one function per variant (transformers' `_compute_*_parameters`); all return float32
# ---------------------------------------------------------------------------------------------

def _inv_default(s: "RopeSpec", seq_len):
    return _base_inv_freq(s.theta, s.rotary_dim // 2, s.rotary_dim)


def _inv_linear(s: "RopeSpec", seq_len):
    return _inv_default(s, None) / _F32(s.factor)


def _inv_dynamic(s: "RopeSpec", seq_len):
    """NTK: theta' = theta * (factor*L/mpe - (factor-1))^(R/(R-2)) once L > mpe.
    transformers evaluates this from the position tensor, i.e. in float32."""
    if seq_len is None or seq_len <= s.max_position_embeddings:
        return _inv_default(s, None)
    r = s.rotary_dim
    x = _F32(s.factor) * _F32(seq_len)
    x = x / _F32(s.max_position_embeddings)
    x = x - _F32(s.factor - 1)
    x = _pow(x, r / (r - 2))  # torch keeps a Python exponent in double precision
    theta = _F32(s.theta) * x
    return _base_inv_freq(theta, r // 2, r)


def _yarn_correction_range(s: "RopeSpec"):
    """Channel range [low, high] over which YaRN blends interpolation into extrapolation."""
    def corr_dim(n_rot):
        return (s.rotary_dim * math.log(s.original_max_position_embeddings / (n_rot * 2 * math.pi))
                / (2 * math.log(s.theta)))
    low, high = corr_dim(s.beta_fast), corr_dim(s.beta_slow)
    if s.truncate:
        low, high = math.floor(low), math.ceil(high)
    return max(low, 0), min(high, s.rotary_dim - 1)


def _inv_yarn(s: "RopeSpec", seq_len):
    r = s.rotary_dim
    pos_freqs = _pow(s.theta, _exponents(r // 2, r))
    inv_extrapolation = _rdiv(1.0, pos_freqs)
    inv_interpolation = _rdiv(1.0, _F32(s.factor) * pos_freqs)
    low, high = _yarn_correction_range(s)
    if low == high:
        high += 0.001  # as transformers: avoid a zero-width ramp
    ramp = (np.arange(r // 2, dtype=_F32) - _F32(low)) / _F32(high - low)
    ramp = np.clip(ramp, _F32(0), _F32(1))
    extrapolation_factor = _F32(1) - ramp
    return (inv_interpolation * (_F32(1) - extrapolation_factor)
            + inv_extrapolation * extrapolation_factor)


def _inv_llama3(s: "RopeSpec", seq_len):
    inv = _inv_default(s, None)
    ompe = s.original_max_position_embeddings
    low_freq_wavelen = _F32(ompe / s.low_freq_factor)
    high_freq_wavelen = _F32(ompe / s.high_freq_factor)
    wavelen = _rdiv(2 * math.pi, inv)
    inv_llama = np.where(wavelen > low_freq_wavelen, inv / _F32(s.factor), inv)
    smooth = ((_rdiv(ompe, wavelen) - _F32(s.low_freq_factor))
              / _F32(s.high_freq_factor - s.low_freq_factor))
    smoothed = (_F32(1) - smooth) * inv_llama / _F32(s.factor) + smooth * inv_llama
    is_medium = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
    return np.where(is_medium, smoothed, inv_llama).astype(_F32)


def _inv_longrope(s: "RopeSpec", seq_len):
    """Per-frequency divisors: long_factor once the sequence outgrows the pretraining length."""
    long = seq_len is not None and seq_len > s.original_max_position_embeddings
    ext = np.asarray(s.long_factor if long else s.short_factor, dtype=_F32)
    r = s.rotary_dim
    return _rdiv(1.0, ext * _pow(s.theta, _exponents(r // 2, r)))


def _inv_proportional(s: "RopeSpec", seq_len):
    """Gemma 4: the first A frequencies of a D-dim table (exponent over D); the other D/2 - A
    are exactly 0 in transformers and are left out of the pairs."""
    return _base_inv_freq(s.theta, s.npairs, s.head_dim) / _F32(s.factor)


_INV_FREQ = {
    "default": _inv_default, "linear": _inv_linear, "dynamic": _inv_dynamic, "yarn": _inv_yarn,
    "llama3": _inv_llama3, "longrope": _inv_longrope, "proportional": _inv_proportional,
}

_REQUIRED = {  # fields each variant cannot do without (after defaults are resolved)
    "linear": ("factor",),
    "dynamic": ("factor", "max_position_embeddings"),
    "yarn": ("factor", "original_max_position_embeddings"),
    "llama3": ("factor", "original_max_position_embeddings", "low_freq_factor", "high_freq_factor"),
    "longrope": ("factor", "original_max_position_embeddings", "short_factor", "long_factor"),
}


def _yarn_mscale(scale, mscale=1):
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


# ---------------------------------------------------------------------------------------------
# RopeSpec
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RopeSpec:
    """RoPE of one layer type. Construction resolves defaults (yarn/longrope `factor` from
    max/original positions, yarn betas, `attention_factor`), so equal maths gives equal specs.

    head_dim: D. rotary_dim: R, channels of the rotated prefix (D for proportional).
    pairing: "half" (rotate_half: i <-> i + R/2) or "interleaved" (GPT-J: 2i <-> 2i + 1).
    attention_factor: after construction, the float multiplying cos and sin (1.0 except
    yarn/longrope); pass None to let the variant choose as transformers does.
    partial_rotary_factor: proportional only (A = int(partial_rotary_factor * D // 2)).
    """
    head_dim: int
    rotary_dim: int
    theta: float
    pairing: str
    rope_type: str = "default"
    factor: float | None = None
    original_max_position_embeddings: int | None = None
    max_position_embeddings: int | None = None
    attention_factor: float | None = None
    beta_fast: float | None = None
    beta_slow: float | None = None
    mscale: float | None = None
    mscale_all_dim: float | None = None
    truncate: bool = True
    short_factor: tuple[float, ...] | None = None
    long_factor: tuple[float, ...] | None = None
    low_freq_factor: float | None = None
    high_freq_factor: float | None = None
    partial_rotary_factor: float = 1.0

    def __post_init__(self):
        def put(name, value):
            object.__setattr__(self, name, value)

        if self.rope_type not in ROPE_TYPES:
            raise ValueError(f"unsupported RoPE type {self.rope_type!r} (supported: {', '.join(ROPE_TYPES)})")
        if self.pairing not in PAIRINGS:
            raise ValueError(f"unsupported RoPE pairing {self.pairing!r} (supported: {', '.join(PAIRINGS)})")
        d, r = int(self.head_dim), int(self.rotary_dim)
        if d <= 0 or r <= 0 or r > d or r % 2:
            raise ValueError(f"invalid rotary_dim {r} for head_dim {d}: need an even count in [2, head_dim]")
        put("head_dim", d)
        put("rotary_dim", r)
        put("theta", float(self.theta))
        put("truncate", bool(self.truncate))
        for name in ("short_factor", "long_factor"):
            if getattr(self, name) is not None:
                put(name, tuple(float(v) for v in getattr(self, name)))

        kind = self.rope_type
        if kind in ("yarn", "longrope") and self.factor is None:
            if self.max_position_embeddings and self.original_max_position_embeddings:
                put("factor", self.max_position_embeddings / self.original_max_position_embeddings)
        if kind == "proportional" and self.factor is None:
            put("factor", 1.0)
        if kind == "yarn":
            put("beta_fast", self.beta_fast or 32)
            put("beta_slow", self.beta_slow or 1)
        for name in _REQUIRED.get(kind, ()):
            if getattr(self, name) is None:
                raise ValueError(f"RoPE type {kind!r} needs {name!r}")
        if kind == "dynamic" and r <= 2:
            raise ValueError(f"RoPE type 'dynamic' needs rotary_dim > 2, got {r}")
        if kind == "longrope":
            for name in ("short_factor", "long_factor"):
                if len(getattr(self, name)) != r // 2:
                    raise ValueError(f"longrope {name} has {len(getattr(self, name))} entries, "
                                     f"expected rotary_dim/2 = {r // 2}")
        if kind == "proportional":
            if self.pairing != "half" or r != d or d % 2:
                raise ValueError("proportional RoPE rotates halves of the whole head: needs pairing 'half', "
                                 f"even head_dim, rotary_dim == head_dim (got {self.pairing!r}, {d}, {r})")
            n = int(self.partial_rotary_factor * d // 2)
            if not 0 <= n <= d // 2:
                raise ValueError(f"invalid partial_rotary_factor {self.partial_rotary_factor} "
                                 f"for proportional RoPE with head_dim {d}")
        put("attention_factor", float(self._resolve_attention_factor()))

    def _resolve_attention_factor(self):
        af, f = self.attention_factor, self.factor
        if self.rope_type == "yarn":
            if af is not None:
                return af
            if self.mscale and self.mscale_all_dim:
                return _yarn_mscale(f, self.mscale) / _yarn_mscale(f, self.mscale_all_dim)
            return _yarn_mscale(f)
        if self.rope_type == "longrope":
            if af is not None:
                return af
            if f <= 1.0:
                return 1.0
            return math.sqrt(1 + math.log(f) / math.log(self.original_max_position_embeddings))
        return 1.0  # the other variants ignore a configured attention_factor, as transformers does

    @property
    def npairs(self) -> int:
        if self.rope_type == "proportional":
            return int(self.partial_rotary_factor * self.head_dim // 2)
        return self.rotary_dim // 2

    def pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """(ia, ib) int64 channel indices of the rotating pairs; pair j uses inv_freq()[j].
        Channels in neither array pass through untouched."""
        n = self.npairs
        if self.rope_type == "proportional":
            ia = np.arange(n, dtype=np.int64)
            return ia, ia + self.head_dim // 2
        if self.pairing == "half":
            ia = np.arange(n, dtype=np.int64)
            return ia, ia + self.rotary_dim // 2
        ia = np.arange(0, 2 * n, 2, dtype=np.int64)
        return ia, ia + 1

    def inv_freq(self, seq_len: int | None = None) -> np.ndarray:
        """float64 (npairs,) scaled frequencies. `seq_len` matters for dynamic and longrope only:
        pass max position + 1 of the forward pass (transformers' rule); None means no growth
        (dynamic: original frequencies; longrope: short_factor)."""
        return _INV_FREQ[self.rope_type](self, seq_len).astype(np.float64)

    def cos_sin(self, positions, seq_len: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """float32 (len(positions), npairs) cos and sin, both times attention_factor."""
        pos = np.asarray(positions, dtype=np.float64).reshape(-1)
        angles = pos[:, None] * self.inv_freq(seq_len)[None, :]
        af = self.attention_factor
        return (np.cos(angles) * af).astype(np.float32), (np.sin(angles) * af).astype(np.float32)

    def table(self, n_pos: int, seq_len: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """cos_sin for positions 0 .. n_pos-1."""
        return self.cos_sin(np.arange(n_pos), seq_len)

    def shift(self, delta, seq_len: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """float32 (npairs,) cos/sin of a pure rotation by `delta` positions (re-rotating cached
        keys: R(p) R(delta) = R(p + delta)); no attention_factor, which the keys already carry."""
        angles = float(delta) * self.inv_freq(seq_len)
        return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# config.json -> specs
# ---------------------------------------------------------------------------------------------

_MAX_POSITIONS = {  # config-class default of max_position_embeddings (n_positions for gptj)
    "llama": 2048, "mistral": 131072, "qwen2": 32768, "qwen3": 32768, "gemma3_text": 131072,
    "gemma4_text": 131072, "gpt_neox": 2048, "phi": 2048, "stablelm": 4096, "persimmon": 16384,
    "gptj": 2048, "glm": 131072,
}
# Models whose rotary module rotates a prefix of int(D * partial_rotary_factor) channels, with
# the config class's default factor. The others rotate the whole head under "default" RoPE.
_PARTIAL_DEFAULT = {"gpt_neox": 0.25, "phi": 0.5, "stablelm": 0.25, "persimmon": 0.5, "glm": 0.5}
_INTERLEAVED = {"gptj", "glm"}
_TEXT_OF = {"gemma3": "gemma3_text", "gemma4": "gemma4_text"}
MODEL_TYPES = tuple(sorted(set(_MAX_POSITIONS) | set(_TEXT_OF)))
_OMPE = "original_max_position_embeddings"


def rope_specs_from_config(cfg: dict, model_type: str, head_dim: int,
                           layer_types: list[str] | None = None,
                           head_dims: dict[str, int] | None = None) -> dict[str, RopeSpec]:
    """One RopeSpec per layer type present, e.g. {"full_attention": spec} for uniform models or
    {"sliding_attention": ..., "full_attention": ...} for Gemma. `cfg` is the config.json dict
    (for gemma3/gemma4 the outer dict or its text_config); `head_dim` is the attention head
    size; `head_dims` overrides it per layer type (Gemma 4 full layers default to the config's
    global_head_dim). `layer_types` defaults to cfg["layer_types"] or the model's default
    pattern. Layer types whose rope parameters are null (NoPE) are left out."""
    if model_type in _TEXT_OF:
        cfg = cfg.get("text_config") or cfg
        model_type = _TEXT_OF[model_type]
    if model_type not in _MAX_POSITIONS:
        raise ValueError(f"unsupported model_type {model_type!r} for RoPE "
                         f"(supported: {', '.join(MODEL_TYPES)})")
    mpe = (cfg.get("max_position_embeddings") or (model_type == "gptj" and cfg.get("n_positions"))
           or _MAX_POSITIONS[model_type])
    per_layer = _layer_types(cfg, model_type, layer_types)
    names = list(dict.fromkeys(per_layer))
    params, nested = _rope_parameters(cfg, model_type, names, mpe)

    specs = {}
    for name in names:
        p = params.get(name) if nested else params
        if nested and name not in params:
            raise ValueError(f"rope_parameters has no entry for layer type {name!r}")
        if p is None:
            continue
        d = (head_dims or {}).get(name) or _layer_head_dim(cfg, model_type, name, per_layer, head_dim)
        specs[name] = _spec(p, cfg, model_type, d, mpe, nested)
    return specs


def _layer_types(cfg, model_type, layer_types):
    """Per-layer type names, with the defaults the config classes build when none are given."""
    types = list(layer_types) if layer_types is not None else cfg.get("layer_types")
    if types is None:
        if model_type in ("gemma3_text", "gemma4_text"):
            n = cfg.get("num_hidden_layers", 26 if model_type == "gemma3_text" else 30)
            every = (cfg.get("sliding_window_pattern") or 6) if model_type == "gemma3_text" else 6
            types = ["sliding_attention" if (i + 1) % every else "full_attention" for i in range(n)]
        elif model_type in ("qwen2", "qwen3") and cfg.get("use_sliding_window"):
            window, first = cfg.get("sliding_window", 4096), cfg.get("max_window_layers", 28)
            types = ["sliding_attention" if window is not None and i >= first else "full_attention"
                     for i in range(cfg.get("num_hidden_layers", 0))]
        else:
            types = []
    types = list(types) or ["full_attention"]
    if model_type == "gemma4_text" and types[-1] != "full_attention":
        types[-1] = "full_attention"  # Gemma4TextConfig forces the last layer to full attention
    return types


def _layer_head_dim(cfg, model_type, name, per_layer, head_dim):
    """Gemma 4 full-attention layers use `global_head_dim` (default 512), or the head_dim of their
    entry in a saved `per_layer_config` (keyed by layer index), which replaces it."""
    if model_type != "gemma4_text" or name != "full_attention":
        return head_dim
    if "per_layer_config" in cfg:
        overrides = cfg["per_layer_config"] or {}
        i = per_layer.index("full_attention")
        entry = overrides.get(str(i), overrides.get(i)) or {}
        return entry.get("head_dim") or head_dim
    return cfg.get("global_head_dim", 512) or head_dim


def _rope_parameters(cfg, model_type, names, mpe):
    """Standardised rope parameters: (flat dict, False) or ({layer type: dict | None}, True).
    Mirrors each config class's `convert_rope_params_to_dict` and `standardize_rope_params`."""
    if model_type == "gptj":  # GPT-J has no rope config: theta 10000, plain RoPE, always
        return {"rope_type": "default", "rope_theta": 10000.0}, False

    if model_type == "gemma4_text":  # no legacy form; these are Gemma4TextConfig's defaults
        params = copy.deepcopy(cfg.get("rope_parameters")) or {
            "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
            "full_attention": {"rope_type": "proportional", "partial_rotary_factor": 0.25,
                               "rope_theta": 1_000_000.0}}
        for p in params.values():
            if p is not None and "rope_theta" not in p:
                raise ValueError("gemma4_text rope_parameters entries need 'rope_theta'")
        theta, partial = None, None
    elif model_type == "gemma3_text":
        params = copy.deepcopy(cfg.get("rope_parameters")) or {
            "sliding_attention": {"rope_type": "default"}, "full_attention": {"rope_type": "default"}}
        if params.get("full_attention") is None:
            params["full_attention"] = {"rope_type": "default"}
        if cfg.get("rope_scaling") is not None:  # legacy scaling applies to global layers only
            params["full_attention"].update(cfg["rope_scaling"])
        params["full_attention"].setdefault("rope_theta", cfg.get("rope_theta", 1_000_000.0))
        if params.get("sliding_attention") is None:
            params["sliding_attention"] = {"rope_type": "default"}
        params["sliding_attention"].setdefault("rope_theta", cfg.get("rope_local_base_freq", 10_000.0))
        theta, partial = None, cfg.get("partial_rotary_factor")
    else:
        params = copy.deepcopy(cfg.get("rope_scaling") or cfg.get("rope_parameters")) or {}
        if model_type == "gpt_neox":  # GPTNeoXConfig reads only its own legacy names
            theta = cfg.get("rotary_emb_base", 10_000.0)
            partial = cfg.get("rotary_pct", 0.25)
        else:
            theta = cfg.get("rope_theta", 10_000.0)
            partial = cfg.get("partial_rotary_factor", _PARTIAL_DEFAULT.get(model_type))

    nested_keys = [k for k, v in params.items() if isinstance(v, dict) or (v is None and k in names)]
    for p in ([params[k] for k in nested_keys] if nested_keys else [params]):
        if p is None:
            continue
        if theta is not None:
            p.setdefault("rope_theta", theta)
        if partial is not None:
            p.setdefault("partial_rotary_factor", partial)
        p.setdefault("rope_type", p.get("type", "default"))
        if p["rope_type"] in ("llama3", "yarn", "longrope"):
            if not nested_keys and cfg.get(_OMPE) is not None:
                # transformers re-standardises at model init, when a top-level
                # original_max_position_embeddings (Phi-3 style) overrides the one in rope params
                p[_OMPE] = cfg[_OMPE]
            else:
                p.setdefault(_OMPE, mpe)
    return params, bool(nested_keys)


def _spec(p, cfg, model_type, d, mpe, nested) -> RopeSpec:
    kind = p["rope_type"]
    if kind not in ROPE_TYPES:
        raise ValueError(f"unsupported RoPE type {kind!r} (supported: {', '.join(ROPE_TYPES)})")
    partial = p.get("partial_rotary_factor")
    partial = 1.0 if partial is None else partial
    if model_type == "gptj":
        rotary_dim = cfg.get("rotary_dim", 64)  # GPTJConfig's default; null = the whole head
        r, source = (d if rotary_dim is None else int(rotary_dim)), f"rotary_dim={rotary_dim}"
    else:
        source = f"partial_rotary_factor={partial}"
        # proportional spans the whole head; the llama family's default RoPE ignores the factor
        full = kind == "proportional" or (kind == "default" and model_type not in _PARTIAL_DEFAULT)
        r = d if full else int(d * partial)
    if r <= 0 or r > d or r % 2:
        raise ValueError(f"{source} gives {r} rotary channels for head_dim {d}; "
                         "need an even count in [2, head_dim]")
    if r != d and model_type not in _PARTIAL_DEFAULT and model_type != "gptj":
        raise ValueError(f"{model_type} rotates whole heads, but {source} with RoPE type {kind!r} "
                         f"gives {r} of {d} channels (transformers fails on this config too)")
    return RopeSpec(
        head_dim=d, rotary_dim=r, theta=p["rope_theta"],
        pairing="interleaved" if model_type in _INTERLEAVED else "half",
        rope_type=kind,
        factor=p.get("factor"),
        original_max_position_embeddings=p.get(_OMPE),
        max_position_embeddings=mpe,
        attention_factor=p.get("attention_factor"),
        beta_fast=p.get("beta_fast"), beta_slow=p.get("beta_slow"),
        mscale=p.get("mscale"), mscale_all_dim=p.get("mscale_all_dim"),
        # transformers reads `truncate` from the top-level rope_parameters, so nested configs
        # always truncate
        truncate=True if nested else p.get("truncate", True),
        short_factor=p.get("short_factor"), long_factor=p.get("long_factor"),
        low_freq_factor=p.get("low_freq_factor"), high_freq_factor=p.get("high_freq_factor"),
        partial_rotary_factor=partial if kind == "proportional" else 1.0,
    )
