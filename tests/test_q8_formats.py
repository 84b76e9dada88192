"""int8 weights on disk and at load: GGUF Q8_0 bit for bit, edgerope's own format (fp16
scales stored as F16, memory-mapped), older format versions, scales beyond fp16."""
import json
import os

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

import edgerope  # noqa: E402
from edgerope.io import registry  # noqa: E402
from edgerope.io.native import VERSION, save_native  # noqa: E402
from edgerope.io.safetensors import Checkpoint  # noqa: E402

H, FF, NH, NKV, HD = 64, 96, 4, 2, 16
TOKENS = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)] + [
    f"\u2581t{i}" for i in range(13)]
V = len(TOKENS)
IDS = [1, 5, 7, 100, 260, 271, 3, 9]


def q8_0_blocks(r, rows, cols):
    """Random Q8_0 rows (fp16 d then 32 int8, 34 bytes a block); the d include negative,
    zero, subnormal and the largest finite fp16 values."""
    nb = cols // 32
    d = (r.standard_normal((rows, nb)) * 0.01).astype(np.float16)
    d[:6, 0] = [0.0, -0.0, 65504.0, -6e-8, 2.0 ** -20, -(2.0 ** -15)]  # 6e-8: 2^-24
    out = np.empty((rows, nb, 34), np.uint8)
    out[:, :, :2] = d.view(np.uint8).reshape(rows, nb, 2)
    out[:, :, 2:] = r.integers(-128, 128, (rows, nb, 32), dtype=np.int8).view(np.uint8)
    return out


def write_gguf(path, mats, f32=None, edit=None, arch="llama"):
    """A one-layer llama GGUF: Q8_0 / Q4_0 / Q5_0 / Q4_1 matrices `mats` {name: (rows, nb,
    34, 18, 22 or 20) blocks}, F32 ones `f32` {name: array} (any matrix missing from both is made up).
    `edit(writer)` runs last, before writing (to change metadata in `writer.kv_data[0]` or
    add tensors)."""
    w = gguf.GGUFWriter(path, arch)
    w.add_context_length(128)
    w.add_embedding_length(H)
    w.add_block_count(1)
    w.add_feed_forward_length(FF)
    w.add_head_count(NH)
    w.add_head_count_kv(NKV)
    w.add_rope_dimension_count(HD)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("llama")
    w.add_token_list(TOKENS)
    w.add_token_scores([0.0] * 259 + [-float(i) for i in range(V - 259)])
    w.add_token_types([2, 3, 3] + [6] * 256 + [1] * (V - 259))
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    for name, data in mats.items():
        flat = data.reshape(data.shape[0], -1)
        qt = {34: gguf.GGMLQuantizationType.Q8_0, 18: gguf.GGMLQuantizationType.Q4_0,
              22: gguf.GGMLQuantizationType.Q5_0, 20: gguf.GGMLQuantizationType.Q4_1}
        w.add_tensor(name, flat, raw_shape=flat.shape, raw_dtype=qt[data.shape[-1]])
    for name, a in (f32 or {}).items():
        w.add_tensor(name, a)
    for name in ("output_norm.weight", "blk.0.attn_norm.weight", "blk.0.ffn_norm.weight"):
        w.add_tensor(name, np.ones(H, np.float32))
    if edit is not None:
        edit(w)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


SHAPES = {"token_embd.weight": (V, H), "output.weight": (V, H),
          "blk.0.attn_q.weight": (NH * HD, H), "blk.0.attn_k.weight": (NKV * HD, H),
          "blk.0.attn_v.weight": (NKV * HD, H), "blk.0.attn_output.weight": (H, NH * HD),
          "blk.0.ffn_gate.weight": (FF, H), "blk.0.ffn_up.weight": (FF, H),
          "blk.0.ffn_down.weight": (H, FF)}


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    r = np.random.default_rng(0)
    mats = {name: q8_0_blocks(r, *shape) for name, shape in SHAPES.items()}
    return write_gguf(str(tmp_path_factory.mktemp("gguf") / "tiny.gguf"), mats), mats


def _blocks(lin):
    """A Linear's int8 weights as Q8_0 blocks (fp16 d, 32 int8)."""
    wq, ws = lin.q8()
    n, k = wq.shape
    out = np.empty((n, k // 32, 34), np.uint8)
    out[:, :, :2] = ws.astype(np.float16).view(np.uint8).reshape(n, -1, 2)
    out[:, :, 2:] = wq.view(np.uint8).reshape(n, -1, 32)
    return out


def test_gguf_q8_0_loads_bit_for_bit(tiny_gguf):
    path, mats = tiny_gguf
    W = edgerope.load(path, tokenizer=False).weights
    lw = W.layers[0]
    assert lw.wqkv.wsp.dtype == np.uint16
    np.testing.assert_array_equal(_blocks(W.embed), mats["token_embd.weight"])
    np.testing.assert_array_equal(_blocks(W.lm_head), mats["output.weight"])
    np.testing.assert_array_equal(_blocks(lw.wo), mats["blk.0.attn_output.weight"])
    np.testing.assert_array_equal(_blocks(lw.w_down), mats["blk.0.ffn_down.weight"])
    np.testing.assert_array_equal(_blocks(lw.w_in), np.concatenate(
        [mats["blk.0.ffn_gate.weight"], mats["blk.0.ffn_up.weight"]]))
    # v rows are not permuted (q and k are, back to the Hugging Face layout)
    np.testing.assert_array_equal(_blocks(lw.wqkv)[-NKV * HD:], mats["blk.0.attn_v.weight"])


def test_native_stores_f16_scales_memory_mapped(tiny_gguf, tmp_path):
    m = edgerope.load(tiny_gguf[0], tokenizer=False)
    dst = save_native(m, str(tmp_path / "n"))
    ck = Checkpoint(dst)
    assert ck.dtype("embed.wsp") == "F16" and ck.dtype("embed.wp") == "U8"
    assert json.loads(ck.metadata["edgerope"])["version"] == VERSION == 3
    m2 = edgerope.load(dst, tokenizer=False)
    for a, b in zip(m.weights.linears(), m2.weights.linears()):
        assert b.wsp.dtype == np.uint16 and not b.wsp.flags.owndata  # a view of the map
        np.testing.assert_array_equal(b.wsp, a.wsp)
        np.testing.assert_array_equal(b.wp, a.wp)
    # 8.5 bits a weight: 512 + 32 bytes per 16 x 32 block (no padding at these shapes)
    lin = m2.weights.layers[0].w_down
    assert lin.nbytes * 8 == 8.5 * lin.out_features * lin.in_features
    np.testing.assert_array_equal(m2.logits(IDS), m.logits(IDS))


def _downgrade_to_v2(path):
    """Rewrite an edgerope directory as format version 2 wrote it (float32 scales)."""
    from safetensors.numpy import load_file, save_file
    st = os.path.join(path, "model.safetensors")
    meta = json.loads(Checkpoint(path).metadata["edgerope"])
    tensors = load_file(st)
    for name in [n for n in tensors if n.endswith(".wsp")]:
        tensors[name] = tensors[name].astype(np.float32)
    save_file(tensors, st, metadata={"edgerope": json.dumps({**meta, "version": 2})})


def test_older_format_is_refused_and_the_registry_converts_again(tiny_gguf, tmp_path,
                                                                    monkeypatch):
    path = tiny_gguf[0]
    monkeypatch.setenv("EDGEROPE_WEIGHTS", str(tmp_path))
    monkeypatch.setattr(registry, "locate", lambda name: path)
    cached = str(tmp_path / "tiny-auto")
    save_native(edgerope.load(path), cached)
    _downgrade_to_v2(cached)
    with pytest.raises(edgerope.WeightsError) as e:
        edgerope.load(cached)
    msg = str(e.value)
    assert "\n" not in msg and "older edgerope (format version 2" in msg
    assert "convert the original model again" in msg
    m = registry.load_named("tiny")  # converts again instead of failing
    assert json.loads(Checkpoint(cached).metadata["edgerope"])["version"] == VERSION
    np.testing.assert_array_equal(edgerope.load(cached).logits(IDS), m.logits(IDS))


def test_weight_beyond_fp16_scales_is_a_one_line_error(tmp_path):
    r = np.random.default_rng(1)
    mats = {name: q8_0_blocks(r, *shape) for name, shape in SHAPES.items()
            if name != "blk.0.ffn_down.weight"}
    down = r.standard_normal((H, FF)).astype(np.float32)
    down[3, 40] = 9e6  # its block scale 9e6 / 127 > 65504
    path = write_gguf(str(tmp_path / "big.gguf"), mats, {"blk.0.ffn_down.weight": down})
    assert edgerope.load(path, dtype="float32", tokenizer=False)  # float32 holds it
    with pytest.raises(edgerope.WeightsError) as e:
        edgerope.load(path, tokenizer=False)
    msg = str(e.value)
    assert "\n" not in msg and "'blk.0.ffn_down.weight'" in msg and "float16" in msg
    assert "row 3, block 1" in msg


def test_a_source_checkout_finds_its_registry_and_weights_dir(monkeypatch):
    """Run from a checkout (as the tests are), the registry is weights/registry.json beside
    the package and converted models go to weights/ there."""
    monkeypatch.delenv("EDGEROPE_WEIGHTS", raising=False)
    checkout = os.path.dirname(os.path.dirname(os.path.abspath(edgerope.__file__)))
    assert registry._registry_path() == os.path.join(checkout, "weights", "registry.json")
    assert registry.weights_dir() == os.path.join(checkout, "weights")
    assert registry.default_model() in registry.registry()["models"]
