"""A test per bad-file failure mode: one line naming the file and the tensor or key, exit 1,
no traceback (issue 6). Safetensors checkpoints, GGUF files (bad tensor types, bad metadata),
and tensors a model does not use (a warning, not an error)."""
import json
import os
import shutil
import struct

import numpy as np
import pytest
from click.testing import CliRunner

from edgerope.cli import main
from test_generate import tiny_dir  # noqa: F401 - a tiny model with a tokenizer
from tiny_models import build


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    pytest.importorskip("torch")
    d = str(tmp_path_factory.mktemp("hostile-base"))
    build("llama", d)
    with open(os.path.join(d, "model.safetensors"), "rb") as f:
        raw = f.read()
    n = struct.unpack("<Q", raw[:8])[0]
    return d, raw, n, json.loads(raw[8:8 + n])


W = "model.layers.0.self_attn.q_proj.weight"


def variant(base, tmp_path, data=None, header=None, cfg=None):
    src, raw, n, _ = base
    d = str(tmp_path / "m")
    shutil.copytree(src, d)
    if header is not None:
        h = json.dumps(header).encode()
        data = struct.pack("<Q", len(h)) + h + raw[8 + n:]
    if data is not None:
        with open(os.path.join(d, "model.safetensors"), "wb") as f:
            f.write(data)
    if cfg is not None:
        path = os.path.join(d, "config.json")
        with open(path) as f:
            c = json.load(f)
        c.update(cfg)
        with open(path, "w") as f:
            json.dump(c, f)
    return d


def edited(base, fn):
    h = json.loads(json.dumps(base[3]))
    fn(h)
    return h


def nan_data(base):
    _, raw, n, hdr = base
    a = np.frombuffer(raw, np.uint8).copy()
    b0 = 8 + n + hdr[W]["data_offsets"][0] + 4 * 37
    a[b0:b0 + 4] = np.frombuffer(np.float32(np.inf).tobytes(), np.uint8)
    return a.tobytes()


def overlap(h):  # two same-size tensors on the same bytes
    h["model.layers.1.self_attn.q_proj.weight"]["data_offsets"] = h[W]["data_offsets"]


CASES = {
    "truncated": (lambda b: dict(data=b[1][:len(b[1]) - 1000]), ["do not fit", "data section"]),
    "outside": (lambda b: dict(header=edited(b, lambda h: h[W]["data_offsets"].__setitem__(
        1, 10 ** 9))), [W, "do not fit"]),
    "overlap": (lambda b: dict(header=edited(b, overlap)), ["overlap"]),
    "dtype": (lambda b: dict(header=edited(b, lambda h: h[W].__setitem__("dtype", "I64"))),
              [W, "I64"]),
    "missing": (lambda b: dict(header=edited(b, lambda h: h.pop(W))), [W, "missing"]),
    "shape": (lambda b: dict(cfg={"intermediate_size": 100}), ["shape", "expected"]),
    "heads": (lambda b: dict(cfg={"num_attention_heads": 0}), ["num_attention_heads", "0"]),
    "head_dim": (lambda b: dict(cfg={"num_attention_heads": 3}), ["num_attention_heads"]),
    "vocab": (lambda b: dict(cfg={"vocab_size": 7}), ["embed_tokens", "expected [7"]),
    "arch": (lambda b: dict(cfg={"model_type": "mamba"}), ["model_type", "mamba"]),
    "rope": (lambda b: dict(cfg={"rope_scaling": {"rope_type": "weird", "factor": 2.0}}),
             ["RoPE", "weird"]),
    "inf": (lambda b: dict(data=nan_data(b)), [W, "NaN or infinite"]),
}


# bad values, not a bad header: `info` reads headers only, so loading (here `convert`) finds them
_VALUE_CASES = {"inf"}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_file_gives_one_clear_line(base, tmp_path, case):
    make, needles = CASES[case]
    d = variant(base, tmp_path, **make(base))
    args = ["convert", d, str(tmp_path / "out")] if case in _VALUE_CASES else ["info", d]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 1, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in r.stderr
    for s in needles + [os.path.basename(d)]:
        assert s in lines[0], (s, lines[0])


def test_debug_shows_the_traceback(base, tmp_path):
    d = variant(base, tmp_path, cfg={"model_type": "mamba"})
    r = CliRunner().invoke(main, ["info", d, "--debug"])
    assert r.exit_code != 0 and r.exception is not None  # raised, not reduced to a line


# -- GGUF files ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gguf_mats():
    pytest.importorskip("gguf")
    from test_q8_formats import SHAPES, q8_0_blocks
    r = np.random.default_rng(0)
    return {n: q8_0_blocks(r, *s) for n, s in SHAPES.items()}


def _set(key, value, vtype):
    """A write_gguf edit: metadata `key` = value of GGUF type `vtype` (a name), or removed."""
    def edit(w):
        import gguf
        if value is None:
            del w.kv_data[0][key]
        else:
            w.kv_data[0][key] = gguf.gguf_writer.GGUFValue(
                value=value, type=getattr(gguf.GGUFValueType, vtype))
    return edit


def _retype(name, ggml_type):
    """Patch the GGML type of tensor `name` in a written file's tensor directory."""
    def patch(path):
        with open(path, "rb") as f:
            b = bytearray(f.read())
        key = struct.pack("<Q", len(name)) + name.encode()
        at = b.index(key) + len(key)
        n_dims = struct.unpack_from("<I", b, at)[0]
        struct.pack_into("<I", b, at + 4 + 8 * n_dims, ggml_type)
        with open(path, "wb") as f:
            f.write(bytes(b))
    return patch


Q = "blk.0.attn_q.weight"
GGUF_CASES = {  # name: (write_gguf kwargs, patch of the written file, words of the error line)
    "type-unknown": ({}, _retype(Q, 99), [Q, "unknown GGML type 99"]),
    "type-unsupported": ({}, _retype(Q, 24), [Q, "I8", "cannot be read"]),  # known, no reader
    "block_count-string": (dict(edit=_set("llama.block_count", "two", "STRING")), None,
                           ["'llama.block_count'", "should be an integer", "a string ('two')"]),
    "block_count-array": (dict(edit=_set("llama.block_count", [1, 1], "ARRAY")), None,
                          ["'llama.block_count'", "array of 2 values", "per-layer"]),
    "embedding_length-missing": (dict(edit=_set("llama.embedding_length", None, "")), None,
                                 ["'llama.embedding_length'", "is missing"]),
    "head_count-negative": (dict(edit=_set("llama.attention.head_count", -4, "INT32")), None,
                            ["'llama.attention.head_count'", "must be positive", "-4"]),
    "head_count-zero": (dict(edit=_set("llama.attention.head_count", 0, "UINT32")), None,
                        ["'llama.attention.head_count'", "must be positive", "0"]),
    "head_count_kv-zero": (dict(edit=_set("llama.attention.head_count_kv", 0, "UINT32")), None,
                           ["'llama.attention.head_count_kv'", "must be positive"]),
    "eps-bool": (dict(edit=_set("llama.attention.layer_norm_rms_epsilon", True, "BOOL")), None,
                 ["'llama.attention.layer_norm_rms_epsilon'", "should be a number", "bool"]),
    "bos-string": (dict(edit=_set("tokenizer.ggml.bos_token_id", "x", "STRING")), None,
                   ["'tokenizer.ggml.bos_token_id'", "should be an integer"]),
    "architecture-unknown": (dict(arch="mamba"), None,
                             ["unsupported GGUF architecture 'mamba'",
                              "chatglm, falcon, gemma2, gemma3, gemma4, glm4, gptneox, granite, "
                              "llama, olmo2, phi2, phi3, qwen2, qwen3, smollm3, stablelm"]),
    "architecture-missing": (dict(edit=_set("general.architecture", None, "")), None,
                             ["'general.architecture'", "is missing"]),
    "tokenizer-model": (dict(edit=_set("tokenizer.ggml.model", 3, "UINT32")), None,
                        ["tokenizer.ggml.model: expected a string, found an integer"]),
}


@pytest.mark.parametrize("case", list(GGUF_CASES))
def test_bad_gguf_gives_one_clear_line(gguf_mats, tmp_path, case):
    from test_q8_formats import write_gguf
    kwargs, patch, needles = GGUF_CASES[case]
    path = write_gguf(str(tmp_path / f"{case}.gguf"), gguf_mats, **kwargs)
    if patch is not None:
        patch(path)
    r = CliRunner().invoke(main, ["generate", "-m", path, "-p", "hi", "-n", "2"])
    assert r.exit_code == 1, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in r.stderr
    for w in needles + [path]:
        assert w in lines[0], (w, lines[0])


def test_non_finite_scale_of_a_kept_block_type_is_one_line(gguf_mats, tmp_path):
    """A Q5_0 tensor (kept as it is, not converted) with an infinite block scale."""
    from test_ggml_blocks import random_blocks
    from test_q8_formats import write_gguf
    rows, nb, _ = gguf_mats[Q].shape
    bad = random_blocks("q5_0", rows, 32 * nb)
    bad[3, 0, :2] = np.array([np.inf], np.float16).view(np.uint8)
    path = write_gguf(str(tmp_path / "inf.gguf"), {**gguf_mats, Q: bad})
    r = CliRunner().invoke(main, ["generate", "-m", path, "-p", "hi", "-n", "2"])
    assert r.exit_code == 1, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for w in (path, Q, "NaN or infinite"):
        assert w in lines[0], (w, lines[0])


# -- tensors a model does not read: one warning, the same results --------------------------


def _cli_generate(path, *extra):
    return CliRunner().invoke(main, ["generate", "-m", path, "-p", "The lighthouse", "-n", "6",
                                     "--temp", "0", "-t", "1", *extra])


def _warnings(r):
    return [line for line in r.stderr.splitlines() if line.startswith("warning: ")]


def test_extra_safetensors_tensors_warn_and_change_nothing(tiny_dir, tmp_path):
    from safetensors.numpy import load_file, save_file

    from edgerope.io.safetensors import SafetensorsFile
    d = str(tmp_path / "extra")
    shutil.copytree(tiny_dir[0], d)
    st = os.path.join(d, "model.safetensors")
    meta = SafetensorsFile(st).metadata
    tensors = load_file(st)
    tensors["lm_head.bias"] = np.ones(384, np.float32)                # llama has no head bias
    tensors["model.vision_adapter.weight"] = np.ones((4, 4), np.float32)
    tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] = np.ones(8, np.float32)  # harmless
    tensors["model.layers.1.self_attn.rotary_emb.inv_freq"] = np.ones(8, np.float32)
    save_file(tensors, st, metadata=meta)
    ref, r = _cli_generate(tiny_dir[0]), _cli_generate(d)
    assert ref.exit_code == 0 and r.exit_code == 0, r.output
    assert r.stdout == ref.stdout and not _warnings(ref)
    assert _warnings(r) == [f"warning: {st}: 2 tensors not used by llama: lm_head.bias, "
                            f"model.vision_adapter.weight"]


def test_extra_gguf_and_native_tensors_warn(gguf_mats, tmp_path):
    from safetensors.numpy import load_file, save_file
    from test_q8_formats import write_gguf

    from edgerope.io.safetensors import SafetensorsFile
    extra = {f"blk.0.extra_{i}.weight": np.ones(64, np.float32) for i in range(5)}

    def add(w):
        for name, a in extra.items():
            w.add_tensor(name, a)
    path = write_gguf(str(tmp_path / "x.gguf"), gguf_mats, edit=add)
    r = CliRunner().invoke(main, ["info", path])
    assert r.exit_code == 0, r.output
    assert _warnings(r) == [f"warning: {path}: 5 tensors not used by llama: blk.0.extra_0.weight, "
                            f"blk.0.extra_1.weight, blk.0.extra_2.weight, ..."]
    clean = write_gguf(str(tmp_path / "clean.gguf"), gguf_mats)
    native = str(tmp_path / "native")
    r = CliRunner().invoke(main, ["convert", clean, native])
    assert r.exit_code == 0 and not _warnings(r), r.output
    st = os.path.join(native, "model.safetensors")
    meta = SafetensorsFile(st).metadata
    tensors = load_file(st)
    tensors["layers.0.unknown.weight"] = np.ones(8, np.float32)
    save_file(tensors, st, metadata=meta)
    r = CliRunner().invoke(main, ["info", native])
    assert r.exit_code == 0, r.output
    assert _warnings(r) == [f"warning: {st}: 1 tensor not used by llama: layers.0.unknown.weight"]


def test_known_harmless_buffers_are_not_reported():
    """Buffers transformers itself ignores on load (`_keys_to_ignore_on_load_unexpected`,
    rotary inv_freq, position_ids) are not counted; anything else is."""
    import warnings

    from edgerope.io.checkpoint import warn_unused
    harmless = ["model.layers.0.self_attn.rotary_emb.inv_freq", "transformer.h.0.attn.bias",
                "transformer.h.3.attn.masked_bias", "gpt_neox.layers.0.attention.bias",
                "gpt_neox.layers.0.attention.masked_bias", "model.embed_positions.position_ids"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_unused("f", harmless, "gptj")
    with pytest.warns(UserWarning, match=r"^f: 1 tensor not used by gptj: "
                                         r"transformer\.h\.0\.attn\.q_proj\.bias$"):
        warn_unused("f", harmless + ["transformer.h.0.attn.q_proj.bias"], "gptj")


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "qwen3", "gemma3", "gpt_neox",
                                  "phi", "stablelm", "persimmon", "gptj", "glm"])
def test_checkpoints_of_every_architecture_load_without_warnings(tmp_path, arch):
    pytest.importorskip("torch")
    import warnings

    import edgerope
    build(arch, str(tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        edgerope.load(str(tmp_path), tokenizer=False)
