"""edgerope.archs.rope against transformers' own rotary modules and apply functions.

Each case is a config.json-style dict read twice: by transformers (`XConfig.from_dict`, then the
model's RotaryEmbedding) and by `rope_specs_from_config`. Checked:
- inv_freq equals transformers' float32 buffer to two ulps, and bit for bit once rope.py's single
  pow is swapped for torch's (fixture `ulps`): every other float32 op is reproduced exactly;
- cos/sin tables agree within 1e-6 plus transformers' own float32 angle rounding
  (position * inv_freq rounded to float32 is off by up to angle * 2^-24; we compute it in float64);
- q/k rotated with our tables and a naive numpy twin of the kernel equal transformers'
  `apply_rotary_pos_emb`, with pass-through channels bit-identical;
- config parsing (legacy vs current forms, nesting, errors) and the shift identity.
"""
import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from transformers import (  # noqa: E402
    Gemma3Config, Gemma3TextConfig, Gemma4TextConfig, GlmConfig, GPTJConfig, GPTNeoXConfig,
    LlamaConfig, MistralConfig, PersimmonConfig, PhiConfig, Qwen2Config, Qwen3Config,
    StableLmConfig,
)
from transformers.models.gemma3 import modeling_gemma3  # noqa: E402
from transformers.models.gemma4 import modeling_gemma4  # noqa: E402
from transformers.models.glm import modeling_glm  # noqa: E402
from transformers.models.gpt_neox import modeling_gpt_neox  # noqa: E402
from transformers.models.gptj import modeling_gptj  # noqa: E402
from transformers.models.llama import modeling_llama  # noqa: E402
from transformers.models.mistral import modeling_mistral  # noqa: E402
from transformers.models.persimmon import modeling_persimmon  # noqa: E402
from transformers.models.phi import modeling_phi  # noqa: E402
from transformers.models.qwen2 import modeling_qwen2  # noqa: E402
from transformers.models.qwen3 import modeling_qwen3  # noqa: E402
from transformers.models.stablelm import modeling_stablelm  # noqa: E402

from edgerope.archs import rope  # noqa: E402
from edgerope.archs.rope import RopeSpec, rope_specs_from_config  # noqa: E402

# model_type -> (config class, rotary module class, forward takes a layer_type)
HF = {
    "llama": (LlamaConfig, modeling_llama.LlamaRotaryEmbedding, False),
    "mistral": (MistralConfig, modeling_mistral.MistralRotaryEmbedding, False),
    "qwen2": (Qwen2Config, modeling_qwen2.Qwen2RotaryEmbedding, False),
    "qwen3": (Qwen3Config, modeling_qwen3.Qwen3RotaryEmbedding, False),
    "gemma3_text": (Gemma3TextConfig, modeling_gemma3.Gemma3RotaryEmbedding, True),
    "gemma4_text": (Gemma4TextConfig, modeling_gemma4.Gemma4TextRotaryEmbedding, True),
    "gpt_neox": (GPTNeoXConfig, modeling_gpt_neox.GPTNeoXRotaryEmbedding, False),
    "phi": (PhiConfig, modeling_phi.PhiRotaryEmbedding, False),
    "stablelm": (StableLmConfig, modeling_stablelm.StableLmRotaryEmbedding, False),
    "persimmon": (PersimmonConfig, modeling_persimmon.PersimmonRotaryEmbedding, False),
    "glm": (GlmConfig, modeling_glm.GlmRotaryEmbedding, False),
}
FULL, SLIDING = "full_attention", "sliding_attention"
MPE, OMPE = 256, 64  # max_position_embeddings and the "original" (pretraining) length
SHORT = np.arange(48)  # max position + 1 = 48: below OMPE and MPE
LONG = np.concatenate([np.arange(16), np.arange(384, 400)])  # max + 1 = 400: above both


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------

def _torch_pow(base, exps):
    """torch's float32 `base ** exps` with the operand kinds transformers uses: a Python float or
    a 0-dim float32 tensor as base, a float32 tensor or a Python float as exponent."""
    b = torch.tensor(base, dtype=torch.float32) if isinstance(base, np.floating) else float(base)
    e = (torch.from_numpy(np.ascontiguousarray(exps, dtype=np.float32))
         if isinstance(exps, np.ndarray) else float(exps))
    return np.asarray(torch.as_tensor(b ** e).numpy(), dtype=np.float32)


@pytest.fixture(params=["numpy_pow", "torch_pow"])
def ulps(request, monkeypatch):
    """How many ulps inv_freq may differ from transformers' buffer.
    numpy_pow: rope.py as shipped. torch's vectorised float32 pow is not correctly rounded (its
    result depends on SIMD width and the element's place in the vector): 1 ulp there, which the
    float32 ops after it (longrope's multiply and reciprocal) can turn into 2.
    torch_pow: rope.py's one pow replaced by torch's, isolating every other op: bit-identical."""
    if request.param == "torch_pow":
        monkeypatch.setattr(rope, "_pow", _torch_pow)
        return 0
    return 2


def hf_rotary(model_type, cfg):
    config_cls, rotary_cls, layered = HF[model_type]
    config = config_cls.from_dict(copy.deepcopy(cfg))
    return config, rotary_cls(config), layered


def hf_tables(rotary, layered, layer_type, positions):
    """transformers' (cos, sin) (T, width), inv_freq buffer and attention scaling, read after
    the forward (dynamic and longrope update their buffers inside it)."""
    x = torch.zeros(1, dtype=torch.float32)
    pid = torch.as_tensor(np.asarray(positions), dtype=torch.int64)[None]
    with torch.no_grad():
        cos, sin = rotary(x, pid, layer_type) if layered else rotary(x, pid)
    prefix = f"{layer_type}_" if layered else ""
    inv = getattr(rotary, f"{prefix}inv_freq").numpy().copy()
    scaling = getattr(rotary, f"{prefix}attention_scaling")
    return cos[0].numpy(), sin[0].numpy(), inv, float(scaling)


def assert_same_float32(ours64, theirs32, what, ulps=2):
    ours32 = ours64.astype(np.float32)
    assert np.array_equal(ours32.astype(np.float64), ours64), f"{what}: inv_freq not float32 values"
    assert ours32.shape == theirs32.shape, f"{what}: {ours32.shape} vs {theirs32.shape}"
    off = np.abs(ours32.view(np.int32).astype(np.int64) - theirs32.view(np.int32)).max()
    assert off <= ulps, f"{what}: inv_freq off by {off} ulp ({ours32} vs {theirs32})"


def assert_within(ours, theirs, tol, what):
    err = np.abs(ours.astype(np.float64) - theirs.astype(np.float64))
    bad = err > tol
    assert not bad.any(), (f"{what}: max |diff| {err.max():.3g}, {bad.sum()} entries over tolerance, "
                           f"first at {tuple(np.argwhere(bad)[0])}")


def check_spec_against_hf(spec, hf, positions, seq_len, what, ulps=2):
    """Our inv_freq / attention_factor / cos / sin vs transformers' (half-split layout
    `cat(f, f)`; proportional: zero frequencies must be exact identities)."""
    hf_cos, hf_sin, hf_inv, hf_scaling = hf
    n = spec.npairs
    half = hf_cos.shape[1] // 2
    assert np.array_equal(hf_cos[:, half:], hf_cos[:, :half])  # the layout we rely on
    if spec.rope_type == "proportional":
        assert half == spec.head_dim // 2 and np.all(hf_inv[n:] == 0)
        assert np.all(hf_cos[:, n:half] == 1) and np.all(hf_sin[:, n:half] == 0)
        hf_inv = hf_inv[:n]
    else:
        assert half == n, f"{what}: transformers rotates {2 * half} channels, we {2 * n}"
    assert_same_float32(spec.inv_freq(seq_len), hf_inv, what, ulps)
    assert spec.attention_factor == pytest.approx(hf_scaling, rel=1e-12, abs=0), what
    cos, sin = spec.cos_sin(positions, seq_len)
    assert cos.dtype == np.float32 and cos.shape == (len(positions), n)
    angle = np.abs(np.asarray(positions, np.float64)[:, None] * spec.inv_freq(seq_len))
    tol = 1e-6 + 2.0 ** -22 * angle * spec.attention_factor
    assert_within(cos, hf_cos[:, :n], tol, f"{what} cos")
    assert_within(sin, hf_sin[:, :n], tol, f"{what} sin")


def np_rotate(x, cos, sin, ia, ib):
    """Naive twin of the rotation kernel: x (T, H, D); pair j = channels (ia[j], ib[j])."""
    out = x.copy()
    a, b = x[..., ia], x[..., ib]
    c, s = cos[:, None, :], sin[:, None, :]
    out[..., ia] = a * c - b * s
    out[..., ib] = b * c + a * s
    return out


def passthrough(spec):
    ia, ib = spec.pairs()
    keep = np.ones(spec.head_dim, bool)
    keep[ia] = keep[ib] = False
    return keep


# ---------------------------------------------------------------------------------------------
# 1. tables: scaling variants on a full-rotary (llama) and a partial (phi) model
# ---------------------------------------------------------------------------------------------

def _factors(n, seed):
    return [float(v) for v in np.random.default_rng(seed).uniform(1.0, 6.0, n).round(4)]


VARIANTS = {
    "default": None,
    "linear": {"type": "linear", "factor": 3.7},
    "dynamic": {"type": "dynamic", "factor": 2.5},
    "yarn": {"rope_type": "yarn", "factor": 3.7, "original_max_position_embeddings": OMPE},
    "yarn_no_truncate": {"rope_type": "yarn", "factor": 3.7, "truncate": False,
                         "original_max_position_embeddings": OMPE},
    "yarn_mscale": {"rope_type": "yarn", "factor": 6.0, "mscale": 0.8, "mscale_all_dim": 0.5,
                    "original_max_position_embeddings": OMPE},
    "yarn_betas_af": {"rope_type": "yarn", "factor": 4.0, "beta_fast": 8, "beta_slow": 2,
                      "attention_factor": 1.25, "original_max_position_embeddings": OMPE},
    "yarn_factor_from_lengths": {"rope_type": "yarn", "factor": None,
                                 "original_max_position_embeddings": OMPE},
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": OMPE},
    "llama3_wide_blend": {"rope_type": "llama3", "factor": 12.0, "low_freq_factor": 0.25,
                          "high_freq_factor": 64.0, "original_max_position_embeddings": OMPE},
    # factor omitted: transformers derives it as MPE / OMPE for the attention factor
    "longrope": {"rope_type": "longrope", "short_factor": _factors(16, 1),
                 "long_factor": _factors(16, 2), "original_max_position_embeddings": OMPE},
    "longrope_explicit": {"rope_type": "longrope", "short_factor": _factors(16, 3),
                          "long_factor": _factors(16, 4), "factor": 8.0, "attention_factor": 1.1,
                          "original_max_position_embeddings": OMPE},
}
FAMILIES = {  # D = 32 rotated fully; phi-2's shape: D = 80, partial 0.4 -> R = 32
    "llama": ({"hidden_size": 128, "num_attention_heads": 4, "head_dim": 32}, 32),
    "phi": ({"hidden_size": 160, "num_attention_heads": 2, "partial_rotary_factor": 0.4}, 80),
}


@pytest.mark.parametrize("regime", ["short", "long"])
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("family", list(FAMILIES))
def test_scaling_variants_match_hf(family, variant, regime, ulps):
    base, head_dim = FAMILIES[family]
    cfg = dict(base, max_position_embeddings=MPE, rope_theta=10000.0)
    if VARIANTS[variant] is not None:
        cfg["rope_scaling"] = copy.deepcopy(VARIANTS[variant])
    positions = SHORT if regime == "short" else LONG
    seq_len = int(positions.max()) + 1
    spec = rope_specs_from_config(cfg, family, head_dim)[FULL]
    assert spec.rotary_dim == 32 and spec.pairing == "half"
    _, rotary, layered = hf_rotary(family, cfg)
    hf = hf_tables(rotary, layered, None, positions)
    check_spec_against_hf(spec, hf, positions, seq_len, f"{family}/{variant}/{regime}", ulps)


def test_seq_len_semantics():
    """dynamic grows only past max_position_embeddings, longrope switches past the original
    length; seq_len=None means neither."""
    cfg = dict(FAMILIES["llama"][0], max_position_embeddings=MPE, rope_scaling=VARIANTS["dynamic"])
    dyn = rope_specs_from_config(cfg, "llama", 32)[FULL]
    base = dyn.inv_freq()
    assert np.array_equal(dyn.inv_freq(MPE), base)
    assert np.all(dyn.inv_freq(MPE + 1)[1:] < base[1:])
    assert np.all(dyn.inv_freq(4 * MPE)[1:] < dyn.inv_freq(2 * MPE)[1:])
    cfg["rope_scaling"] = VARIANTS["longrope"]
    lr = rope_specs_from_config(cfg, "llama", 32)[FULL]
    short = 1 / (np.array(VARIANTS["longrope"]["short_factor"]) * 10000.0 ** (np.arange(16) / 16))
    assert np.allclose(lr.inv_freq(), short, rtol=1e-6)
    assert np.array_equal(lr.inv_freq(OMPE), lr.inv_freq())
    assert not np.array_equal(lr.inv_freq(OMPE + 1), lr.inv_freq())
    assert lr.attention_factor == pytest.approx(np.sqrt(1 + np.log(MPE / OMPE) / np.log(OMPE)))


# ---------------------------------------------------------------------------------------------
# 1b. tables: every model type with its defaults / legacy keys
# ---------------------------------------------------------------------------------------------

MODELS = {  # name: (model_type, config dict, head_dim for rope_specs_from_config)
    "llama": ("llama", {"hidden_size": 64, "num_attention_heads": 4, "rope_theta": 500000.0}, 16),
    # llama-family default RoPE ignores partial_rotary_factor and rotates the whole head
    "llama_partial_ignored": ("llama", {"hidden_size": 64, "num_attention_heads": 2,
                                        "partial_rotary_factor": 0.5}, 32),
    "mistral": ("mistral", {"hidden_size": 64, "num_attention_heads": 2, "rope_theta": 1e6}, 32),
    "qwen2_sliding": ("qwen2", {"hidden_size": 64, "num_attention_heads": 4, "rope_theta": 1e6,
                                "num_hidden_layers": 2, "use_sliding_window": True,
                                "sliding_window": 16, "max_window_layers": 1}, 16),
    "qwen3": ("qwen3", {"hidden_size": 64, "num_attention_heads": 4, "head_dim": 32,
                        "rope_theta": 1e6}, 32),
    "gemma3_legacy": ("gemma3_text", {"hidden_size": 64, "num_attention_heads": 4, "head_dim": 16,
                                      "num_hidden_layers": 6, "rope_theta": 1e6,
                                      "rope_local_base_freq": 1e4,
                                      "rope_scaling": {"rope_type": "linear", "factor": 8.0}}, 16),
    "gemma3_defaults": ("gemma3_text", {"hidden_size": 64, "num_attention_heads": 4, "head_dim": 32,
                                        "num_hidden_layers": 2,
                                        "layer_types": [SLIDING, FULL]}, 32),
    "gemma4": ("gemma4_text", {"hidden_size": 64, "num_attention_heads": 4, "head_dim": 16,
                               "global_head_dim": 32, "num_hidden_layers": 2,
                               "layer_types": [SLIDING, FULL]}, 16),
    "gpt_neox": ("gpt_neox", {"hidden_size": 64, "num_attention_heads": 2, "rotary_pct": 0.25,
                              "rotary_emb_base": 5000}, 32),
    "gpt_neox_defaults": ("gpt_neox", {"hidden_size": 128, "num_attention_heads": 2}, 64),
    "phi_defaults": ("phi", {"hidden_size": 80, "num_attention_heads": 2}, 40),
    "stablelm_defaults": ("stablelm", {"hidden_size": 128, "num_attention_heads": 4}, 32),
    "persimmon_defaults": ("persimmon", {"hidden_size": 64, "num_attention_heads": 2}, 32),
    "persimmon_theta": ("persimmon", {"hidden_size": 64, "num_attention_heads": 2,
                                      "rope_theta": 25000.0}, 32),
    "glm_defaults": ("glm", {"hidden_size": 64, "num_attention_heads": 2, "head_dim": 32}, 32),
    "glm_yarn": ("glm", {"hidden_size": 64, "num_attention_heads": 2, "head_dim": 32,
                         "max_position_embeddings": MPE,
                         "rope_scaling": {"rope_type": "yarn", "factor": 4.0,
                                          "original_max_position_embeddings": OMPE}}, 32),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_model_types_match_hf(name, ulps):
    model_type, cfg, head_dim = MODELS[name]
    specs = rope_specs_from_config(cfg, model_type, head_dim)
    config, rotary, layered = hf_rotary(model_type, cfg)
    hf_types = sorted(set(getattr(config, "layer_types", None) or [FULL]))
    assert sorted(specs) == hf_types
    for layer_type, spec in specs.items():
        assert spec.pairing == ("interleaved" if model_type == "glm" else "half")
        hf = hf_tables(rotary, layered, layer_type if layered else None, SHORT)
        check_spec_against_hf(spec, hf, SHORT, None, f"{name}/{layer_type}", ulps)


REAL = {  # rope sections of real checkpoints' config.json (sizes as published)
    "llama3.1-8b": ("llama", {"hidden_size": 4096, "num_attention_heads": 32,
                              "max_position_embeddings": 131072, "rope_theta": 500000.0,
                              "rope_scaling": {"rope_type": "llama3", "factor": 8.0,
                                               "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                               "original_max_position_embeddings": 8192}}, 128),
    "qwen2.5-7b-yarn": ("qwen2", {"hidden_size": 3584, "num_attention_heads": 28,
                                  "max_position_embeddings": 32768, "rope_theta": 1e6,
                                  "rope_scaling": {"type": "yarn", "factor": 4.0,
                                                   "original_max_position_embeddings": 32768}}, 128),
    "deepseek-yarn-mscale": ("llama", {"hidden_size": 2048, "num_attention_heads": 16,
                                       "head_dim": 64, "max_position_embeddings": 163840,
                                       "rope_scaling": {"type": "yarn", "factor": 40, "mscale": 1.0,
                                                        "mscale_all_dim": 0.707, "beta_fast": 32,
                                                        "beta_slow": 1,
                                                        "original_max_position_embeddings": 4096}}, 64),
    "phi3-longrope": ("phi", {"hidden_size": 3072, "num_attention_heads": 32,
                              "partial_rotary_factor": 1.0, "max_position_embeddings": 131072,
                              "original_max_position_embeddings": 4096,
                              "rope_scaling": {"type": "longrope", "short_factor": _factors(48, 7),
                                               "long_factor": _factors(48, 8)}}, 96),
    "phi-2": ("phi", {"hidden_size": 2560, "num_attention_heads": 32,
                      "partial_rotary_factor": 0.4}, 80),
    "gemma3-4b": ("gemma3_text", {"hidden_size": 2560, "num_attention_heads": 8, "head_dim": 256,
                                  "num_hidden_layers": 34, "rope_theta": 1e6,
                                  "rope_local_base_freq": 1e4,
                                  "rope_scaling": {"rope_type": "linear", "factor": 8.0}}, 256),
    "gemma4-e2b": ("gemma4_text", {"hidden_size": 1536, "num_attention_heads": 8, "head_dim": 256,
                                   "global_head_dim": 512, "num_hidden_layers": 6}, 256),
    "pythia-dynamic": ("gpt_neox", {"hidden_size": 2048, "num_attention_heads": 8,
                                    "max_position_embeddings": 2048,
                                    "rope_scaling": {"type": "dynamic", "factor": 2.0}}, 256),
}
FAR = np.array([0, 1, 4095, 4096, 9000, 40000, 130000])


@pytest.mark.parametrize("positions", [SHORT, FAR], ids=["near", "far"])
@pytest.mark.parametrize("name", list(REAL))
def test_real_checkpoint_shapes_match_hf(name, positions, ulps):
    model_type, cfg, head_dim = REAL[name]
    seq_len = int(positions.max()) + 1
    for layer_type, spec in rope_specs_from_config(cfg, model_type, head_dim).items():
        _, rotary, layered = hf_rotary(model_type, cfg)
        hf = hf_tables(rotary, layered, layer_type if layered else None, positions)
        check_spec_against_hf(spec, hf, positions, seq_len, f"{name}/{layer_type}", ulps)


def test_gptj_matches_create_sinusoidal_positions():
    cfg = {"n_embd": 64, "n_head": 4, "rotary_dim": 8, "n_positions": 128, "rope_theta": 5e5}
    spec = rope_specs_from_config(cfg, "gptj", 16)[FULL]
    assert (spec.rotary_dim, spec.pairing, spec.theta) == (8, "interleaved", 10000.0)  # theta fixed
    config = GPTJConfig.from_dict(copy.deepcopy(cfg))
    table = modeling_gptj.create_sinusoidal_positions(config.n_positions, config.rotary_dim).numpy()
    sin, cos = np.split(table, 2, axis=1)
    positions = np.arange(config.n_positions)
    inv = spec.inv_freq()
    ours_cos, ours_sin = spec.table(config.n_positions)
    tol = 1e-6 + 2.0 ** -22 * positions[:, None] * inv
    assert_within(ours_cos, cos, tol, "gptj cos")
    assert_within(ours_sin, sin, tol, "gptj sin")
    # missing rotary_dim -> GPTJConfig's default 64; null -> the whole head
    assert rope_specs_from_config({"n_embd": 256, "n_head": 2}, "gptj", 128)[FULL].rotary_dim == 64
    assert rope_specs_from_config({"rotary_dim": None}, "gptj", 16)[FULL].rotary_dim == 16


# ---------------------------------------------------------------------------------------------
# 2. rotated q/k: our tables + naive numpy rotation vs the models' apply_rotary_pos_emb
# ---------------------------------------------------------------------------------------------

T, H = 10, 3
POS = np.arange(T)


def _qk(head_dim, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((T, H, head_dim)) * 0.5).astype(np.float32) for _ in range(2)]


def _bhtd(x):  # (T, H, D) numpy -> (1, H, T, D) torch
    return torch.from_numpy(x).permute(1, 0, 2)[None]


def _thd(x):  # (1, H, T, D) torch -> (T, H, D) numpy
    return x[0].permute(1, 0, 2).numpy()


def _hf_half_split(module, spec, q, k, cfg, model_type, layer_type=None):
    _, rotary, layered = hf_rotary(model_type, cfg)
    cos, sin, _, _ = hf_tables(rotary, layered, layer_type, POS)
    cos, sin = torch.from_numpy(cos)[None], torch.from_numpy(sin)[None]
    if model_type == "phi":  # PhiAttention splits off the rotary prefix itself
        r = spec.rotary_dim
        qr, kr = module.apply_rotary_pos_emb(_bhtd(q)[..., :r], _bhtd(k)[..., :r], cos, sin)
        qe = torch.cat([qr, _bhtd(q)[..., r:]], dim=-1)
        ke = torch.cat([kr, _bhtd(k)[..., r:]], dim=-1)
        return _thd(qe), _thd(ke)
    if model_type == "gemma4_text":  # (B, T, H, D) and one tensor at a time
        qe = module.apply_rotary_pos_emb(torch.from_numpy(q)[None], cos, sin, unsqueeze_dim=2)
        ke = module.apply_rotary_pos_emb(torch.from_numpy(k)[None], cos, sin, unsqueeze_dim=2)
        return qe[0].numpy(), ke[0].numpy()
    qe, ke = module.apply_rotary_pos_emb(_bhtd(q), _bhtd(k), cos, sin)
    return _thd(qe), _thd(ke)


def _hf_gptj(spec, q, k, n_positions):
    """GPTJAttention.forward's rotary block, verbatim in shape handling."""
    table = modeling_gptj.create_sinusoidal_positions(n_positions, spec.rotary_dim)[None]
    pid = torch.as_tensor(POS)[None]
    sincos = torch.gather(table, 1, pid.unsqueeze(-1).repeat(1, 1, table.shape[-1]))
    sin, cos = torch.split(sincos, sincos.shape[-1] // 2, dim=-1)
    r, out = spec.rotary_dim, []
    for x in (q, k):
        xt = torch.from_numpy(x)[None]
        rot = modeling_gptj.apply_rotary_pos_emb(xt[..., :r], sin, cos)
        out.append(torch.cat([rot, xt[..., r:]], dim=-1)[0].numpy())
    return out


QK_CASES = {  # name: (model_type, cfg, head_dim, layer_type)
    "llama": ("llama", MODELS["llama"][1], 16, FULL),
    "llama_yarn": ("llama", dict(FAMILIES["llama"][0], max_position_embeddings=MPE,
                                 rope_scaling=VARIANTS["yarn_mscale"]), 32, FULL),
    "gpt_neox_partial": ("gpt_neox", MODELS["gpt_neox"][1], 32, FULL),
    "phi_partial": ("phi", dict(FAMILIES["phi"][0]), 80, FULL),
    "glm": ("glm", MODELS["glm_defaults"][1], 32, FULL),
    "gemma4_proportional": ("gemma4_text", MODELS["gemma4"][1], 16, FULL),
    "gemma4_sliding": ("gemma4_text", MODELS["gemma4"][1], 16, SLIDING),
    "gptj": ("gptj", {"n_embd": 64, "n_head": 4, "rotary_dim": 8, "n_positions": 32}, 16, FULL),
}
MODULES = {"llama": modeling_llama, "gpt_neox": modeling_gpt_neox, "phi": modeling_phi,
           "glm": modeling_glm, "gemma4_text": modeling_gemma4}


@pytest.mark.parametrize("name", list(QK_CASES))
def test_rotated_qk_match_hf(name):
    model_type, cfg, head_dim, layer_type = QK_CASES[name]
    spec = rope_specs_from_config(cfg, model_type, head_dim)[layer_type]
    q, k = _qk(spec.head_dim)
    if model_type == "gptj":
        hf_q, hf_k = _hf_gptj(spec, q, k, cfg["n_positions"])
    else:
        hf_q, hf_k = _hf_half_split(MODULES[model_type], spec, q, k, cfg, model_type, layer_type)
    cos, sin = spec.cos_sin(POS)
    ia, ib = spec.pairs()
    keep = passthrough(spec)
    for x, ours, theirs, what in ((q, np_rotate(q, cos, sin, ia, ib), hf_q, "q"),
                                  (k, np_rotate(k, cos, sin, ia, ib), hf_k, "k")):
        np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=0, err_msg=f"{name} {what}")
        assert np.array_equal(ours[..., keep], x[..., keep])  # untouched, bit for bit
        assert np.array_equal(theirs[..., keep], x[..., keep])
        assert not np.allclose(ours[1:, :, ~keep], x[1:, :, ~keep])


@pytest.mark.parametrize("model_type,cfg,head_dim,expect", [
    ("llama", {}, 8, ([0, 1, 2, 3], [4, 5, 6, 7])),
    ("phi", {"partial_rotary_factor": 0.5}, 8, ([0, 1], [2, 3])),
    ("glm", {}, 8, ([0, 2], [1, 3])),
    ("gptj", {"rotary_dim": 4}, 8, ([0, 2], [1, 3])),
    ("gemma4_text", {"layer_types": [FULL]}, 16, ([0, 1], [8, 9])),
])
def test_pairs_layout(model_type, cfg, head_dim, expect):
    spec = rope_specs_from_config(cfg, model_type, head_dim, head_dims={FULL: head_dim})[FULL]
    ia, ib = spec.pairs()
    assert ia.dtype == ib.dtype == np.int64
    assert (ia.tolist(), ib.tolist()) == (expect[0], expect[1])
    assert spec.npairs == len(ia) == len(spec.inv_freq())


# ---------------------------------------------------------------------------------------------
# 3. config parsing
# ---------------------------------------------------------------------------------------------

_LR = {"short_factor": _factors(16, 5), "long_factor": _factors(16, 6)}
FORMS = {  # name: (model_type, head_dim, legacy config, current config)
    "llama_default": ("llama", 32, {"rope_theta": 1e6},
                      {"rope_parameters": {"rope_type": "default", "rope_theta": 1e6}}),
    "llama_yarn": ("llama", 32,
                   {"rope_theta": 5e5, "max_position_embeddings": MPE,
                    "rope_scaling": {"type": "yarn", "factor": 4.0,
                                     "original_max_position_embeddings": OMPE}},
                   {"max_position_embeddings": MPE,
                    "rope_parameters": {"rope_type": "yarn", "rope_theta": 5e5, "factor": 4.0,
                                        "original_max_position_embeddings": OMPE}}),
    "llama_llama3": ("llama", 32,
                     {"rope_theta": 5e5, "max_position_embeddings": MPE,
                      "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                       "high_freq_factor": 4.0,
                                       "original_max_position_embeddings": OMPE}},
                     {"max_position_embeddings": MPE,
                      "rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0,
                                          "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                          "original_max_position_embeddings": OMPE}}),
    # Phi-3 style: a top-level original_max_position_embeddings wins over the one in the dict
    "llama_longrope_top_level_ompe": (
        "llama", 32,
        {"max_position_embeddings": MPE, "original_max_position_embeddings": OMPE,
         "rope_scaling": dict(_LR, type="longrope", original_max_position_embeddings=128)},
        {"max_position_embeddings": MPE,
         "rope_parameters": dict(_LR, rope_type="longrope", rope_theta=10000.0,
                                 original_max_position_embeddings=OMPE)}),
    "gpt_neox": ("gpt_neox", 32, {"rotary_pct": 0.5, "rotary_emb_base": 5000},
                 {"rope_parameters": {"rope_theta": 5000.0, "partial_rotary_factor": 0.5}}),
    "phi": ("phi", 80, {"partial_rotary_factor": 0.4, "rope_theta": 10000.0},
            {"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0,
                                 "partial_rotary_factor": 0.4}}),
    "stablelm": ("stablelm", 32, {"rope_theta": 10000, "partial_rotary_factor": 0.25},
                 {"rope_parameters": {"rope_theta": 10000.0, "partial_rotary_factor": 0.25}}),
    "gemma3": ("gemma3_text", 16,
               {"num_hidden_layers": 6, "rope_theta": 1e6, "rope_local_base_freq": 1e4,
                "rope_scaling": {"rope_type": "linear", "factor": 8.0}},
               {"num_hidden_layers": 6, "rope_parameters": {
                   FULL: {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
                   SLIDING: {"rope_type": "default", "rope_theta": 1e4}}}),
}


@pytest.mark.parametrize("name", list(FORMS))
def test_legacy_and_current_forms_agree(name, ulps):
    model_type, head_dim, legacy, current = FORMS[name]
    base = {"hidden_size": 4 * head_dim, "num_attention_heads": 4, "head_dim": head_dim}
    if model_type in ("phi", "gpt_neox", "stablelm"):
        base = {"hidden_size": 2 * head_dim, "num_attention_heads": 2}
    a = rope_specs_from_config({**base, **legacy}, model_type, head_dim)
    b = rope_specs_from_config({**base, **current}, model_type, head_dim)
    assert a == b
    config, rotary, layered = hf_rotary(model_type, {**base, **legacy})  # and transformers agrees
    for layer_type, spec in a.items():
        hf = hf_tables(rotary, layered, layer_type if layered else None, SHORT)
        check_spec_against_hf(spec, hf, SHORT, None, f"{name}/{layer_type}", ulps)


def test_parsing_does_not_mutate_config():
    cfg = {"rope_scaling": {"type": "yarn", "factor": 4.0}, "max_position_embeddings": MPE}
    before = copy.deepcopy(cfg)
    rope_specs_from_config(cfg, "llama", 32)
    assert cfg == before


def test_nested_per_layer_type_gemma3(ulps):
    """Per-layer-type scaling; transformers reads yarn's `truncate` from the top level of
    rope_parameters, so nested configs always truncate (the False below is ignored)."""
    cfg = {"hidden_size": 64, "num_attention_heads": 4, "head_dim": 32, "num_hidden_layers": 2,
           "layer_types": [SLIDING, FULL], "max_position_embeddings": MPE,
           "rope_parameters": {
               FULL: {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e6, "truncate": False,
                      "original_max_position_embeddings": OMPE},
               SLIDING: {"rope_type": "linear", "factor": 2.0, "rope_theta": 2e4}}}
    specs = rope_specs_from_config(cfg, "gemma3_text", 32)
    assert specs[FULL].rope_type == "yarn" and specs[FULL].truncate is True
    assert specs[SLIDING].rope_type == "linear" and specs[SLIDING].theta == 2e4
    _, rotary, _ = hf_rotary("gemma3_text", cfg)
    for layer_type, spec in specs.items():
        check_spec_against_hf(spec, hf_tables(rotary, True, layer_type, SHORT), SHORT, None,
                              layer_type, ulps)


def test_nested_per_layer_type_gemma4(ulps):
    cfg = {"hidden_size": 64, "num_attention_heads": 4, "head_dim": 16, "global_head_dim": 64,
           "num_hidden_layers": 3, "layer_types": [SLIDING, SLIDING, FULL],
           "rope_parameters": {
               SLIDING: {"rope_type": "default", "rope_theta": 5e4},
               FULL: {"rope_type": "proportional", "partial_rotary_factor": 0.5, "rope_theta": 2e6}}}
    specs = rope_specs_from_config(cfg, "gemma4_text", 16)
    full = specs[FULL]
    assert (full.head_dim, full.rotary_dim, full.npairs) == (64, 64, 16)
    assert specs[SLIDING].head_dim == 16
    _, rotary, _ = hf_rotary("gemma4_text", cfg)
    for layer_type, spec in specs.items():
        check_spec_against_hf(spec, hf_tables(rotary, True, layer_type, SHORT), SHORT, None,
                              layer_type, ulps)


def test_gemma4_head_dims():
    config = Gemma4TextConfig(hidden_size=64, num_attention_heads=4, head_dim=16, global_head_dim=48,
                              num_hidden_layers=2, layer_types=[SLIDING, FULL])
    saved = config.to_dict()  # stores per_layer_config {"1": {"head_dim": 48}}, no global_head_dim
    assert rope_specs_from_config(saved, "gemma4_text", 16)[FULL].head_dim == 48
    raw = {"layer_types": [SLIDING, FULL], "global_head_dim": 48}
    assert rope_specs_from_config(raw, "gemma4_text", 16)[FULL].head_dim == 48
    assert rope_specs_from_config({"layer_types": [SLIDING, FULL]}, "gemma4_text", 16)[FULL].head_dim == 512
    over = rope_specs_from_config(raw, "gemma4_text", 16, head_dims={FULL: 32})
    assert over[FULL].head_dim == 32 and over[SLIDING].head_dim == 16


def test_layer_type_names():
    assert list(rope_specs_from_config({}, "llama", 16)) == [FULL]
    specs = rope_specs_from_config({"num_hidden_layers": 26}, "gemma3_text", 16)
    assert set(specs) == {SLIDING, FULL}
    assert (specs[SLIDING].theta, specs[FULL].theta) == (1e4, 1e6)
    only_sliding = rope_specs_from_config({}, "gemma3_text", 16, layer_types=[SLIDING] * 3)
    assert list(only_sliding) == [SLIDING]
    qwen = {"use_sliding_window": True, "sliding_window": 8, "max_window_layers": 2,
            "num_hidden_layers": 4}
    specs = rope_specs_from_config(qwen, "qwen2", 16)
    assert set(specs) == {SLIDING, FULL} and specs[SLIDING] == specs[FULL]
    # Gemma 4 forces its last layer to full attention
    assert set(rope_specs_from_config({}, "gemma4_text", 16, layer_types=[SLIDING] * 2)) == {SLIDING, FULL}


def test_gemma3_outer_config():
    text = {"hidden_size": 64, "num_attention_heads": 4, "head_dim": 16, "num_hidden_layers": 6,
            "rope_scaling": {"rope_type": "linear", "factor": 8.0}}
    outer = {"model_type": "gemma3", "text_config": text}
    assert rope_specs_from_config(outer, "gemma3", 16) == rope_specs_from_config(text, "gemma3_text", 16)
    assert rope_specs_from_config(text, "gemma3", 16) == rope_specs_from_config(text, "gemma3_text", 16)
    hf = Gemma3Config(text_config=copy.deepcopy(text)).text_config.rope_parameters
    assert hf[FULL]["factor"] == rope_specs_from_config(outer, "gemma3", 16)[FULL].factor


@pytest.mark.parametrize("model_type,cfg,name", [
    ("llama", {"rope_parameters": {"rope_type": "xyz"}}, "xyz"),
    ("llama", {"rope_scaling": {"type": "su", "short_factor": [1.0], "long_factor": [1.0]}}, "su"),
    ("phi", {"rope_scaling": {"rope_type": "mrope"}}, "mrope"),
    ("gemma3_text", {"rope_parameters": {FULL: {"rope_type": "ntk_by_parts", "rope_theta": 1e6},
                                         SLIDING: {"rope_type": "default"}}}, "ntk_by_parts"),
])
def test_unknown_rope_type_raises(model_type, cfg, name):
    with pytest.raises(ValueError, match=f"unsupported RoPE type '{name}'"):
        rope_specs_from_config(cfg, model_type, 16)
    with pytest.raises(ValueError, match=f"'{name}'"):
        RopeSpec(16, 16, 1e4, "half", rope_type=name)


@pytest.mark.parametrize("model_type,cfg,head_dim,name", [
    ("phi", {"partial_rotary_factor": 0.3}, 10, "partial_rotary_factor"),  # R = 3, odd
    ("phi", {"partial_rotary_factor": 1.5}, 16, "partial_rotary_factor"),  # R > D
    ("stablelm", {"partial_rotary_factor": 0.0}, 16, "partial_rotary_factor"),  # R = 0
    ("gpt_neox", {"rotary_pct": 0.3}, 10, "partial_rotary_factor"),
    ("glm", {"rope_parameters": {"partial_rotary_factor": -0.5}}, 16, "partial_rotary_factor"),
    ("gptj", {"rotary_dim": 7}, 16, "rotary_dim"),
    ("gptj", {"rotary_dim": 64}, 16, "rotary_dim"),
    # the llama family rotates whole heads; a partial factor under a scaled type fails in
    # transformers too (cos is R wide, q is D wide)
    ("llama", {"partial_rotary_factor": 0.5, "rope_scaling": {"type": "linear", "factor": 2.0}},
     16, "partial_rotary_factor"),
])
def test_bad_rotary_size_raises(model_type, cfg, head_dim, name):
    with pytest.raises(ValueError, match=name):
        rope_specs_from_config(cfg, model_type, head_dim)


def test_spec_validation_and_hashing():
    with pytest.raises(ValueError, match="rotary_dim"):
        RopeSpec(16, 6 + 1, 1e4, "half")
    with pytest.raises(ValueError, match="pairing"):
        RopeSpec(16, 16, 1e4, "zigzag")
    with pytest.raises(ValueError, match="original_max_position_embeddings"):
        RopeSpec(16, 16, 1e4, "half", rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                 high_freq_factor=4.0)
    with pytest.raises(ValueError, match="short_factor"):
        RopeSpec(16, 16, 1e4, "half", rope_type="longrope", original_max_position_embeddings=8,
                 factor=2.0, short_factor=[1.0] * 3, long_factor=[1.0] * 8)
    with pytest.raises(ValueError, match="model_type"):
        rope_specs_from_config({}, "bert", 16)
    a = RopeSpec(16, 16, 1e4, "half", rope_type="longrope", original_max_position_embeddings=8,
                 max_position_embeddings=32, short_factor=[1.0] * 8, long_factor=[2.0] * 8)
    b = RopeSpec(16, 16, 1e4, "half", rope_type="longrope", original_max_position_embeddings=8,
                 max_position_embeddings=32, short_factor=(1,) * 8, long_factor=(2,) * 8,
                 factor=4.0, attention_factor=a.attention_factor)
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert isinstance(a.short_factor, tuple) and a.factor == 4.0
    with pytest.raises(AttributeError):
        a.theta = 1.0


# ---------------------------------------------------------------------------------------------
# 4. shifting stored keys: R(p) R(d) = R(p + d)
# ---------------------------------------------------------------------------------------------

SHIFT_SPECS = {
    "prefix_half": rope_specs_from_config({"partial_rotary_factor": 0.4}, "phi", 80)[FULL],
    "interleaved": rope_specs_from_config({}, "glm", 32)[FULL],
    "gptj": rope_specs_from_config({"rotary_dim": 8}, "gptj", 16)[FULL],
    "proportional": rope_specs_from_config({"layer_types": [FULL]}, "gemma4_text", 16,
                                           head_dims={FULL: 64})[FULL],
    "yarn": rope_specs_from_config({"max_position_embeddings": MPE,
                                    "rope_scaling": VARIANTS["yarn_mscale"]}, "llama", 32)[FULL],
}


@pytest.mark.parametrize("name", list(SHIFT_SPECS))
def test_shift_composes_with_table(name):
    spec = SHIFT_SPECS[name]
    p = np.array([0, 3, 100, 4000])
    for d in (1, 7, -3, 250):
        cp, sp = (v.astype(np.float64) for v in spec.cos_sin(p))
        cd, sd = (v.astype(np.float64) for v in spec.shift(d))
        assert cd.shape == (spec.npairs,)
        ct, st = spec.cos_sin(p + d)
        np.testing.assert_allclose(cp * cd - sp * sd, ct, atol=2e-6, rtol=0)
        np.testing.assert_allclose(sp * cd + cp * sd, st, atol=2e-6, rtol=0)
        # re-rotating a cached key touches only rotary channels
        key = _qk(spec.head_dim, seed=abs(d))[0][: len(p)]
        ia, ib = spec.pairs()
        stored = np_rotate(key, *spec.cos_sin(p), ia, ib)
        shifted = np_rotate(stored, cd[None].astype(np.float32).repeat(len(p), 0),
                            sd[None].astype(np.float32).repeat(len(p), 0), ia, ib)
        np.testing.assert_allclose(shifted, np_rotate(key, *spec.cos_sin(p + d), ia, ib),
                                   atol=1e-5, rtol=0)
        keep = passthrough(spec)
        assert np.array_equal(shifted[..., keep], key[..., keep])
    assert np.array_equal(spec.shift(0)[0], np.ones(spec.npairs, np.float32))
