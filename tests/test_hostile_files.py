"""A test per bad-file failure mode: one line naming the file and the tensor or key, exit 1,
no traceback (issue 6)."""
import json
import os
import shutil
import struct

import numpy as np
import pytest

pytest.importorskip("torch")

from click.testing import CliRunner  # noqa: E402

from edgerope.cli import main  # noqa: E402
from tiny_models import build  # noqa: E402


@pytest.fixture(scope="module")
def base(tmp_path_factory):
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


@pytest.mark.parametrize("case", list(CASES))
def test_bad_file_gives_one_clear_line(base, tmp_path, case):
    make, needles = CASES[case]
    d = variant(base, tmp_path, **make(base))
    r = CliRunner().invoke(main, ["info", d])
    assert r.exit_code == 1, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in r.stderr
    for s in needles + [os.path.basename(d)]:
        assert s in lines[0], (s, lines[0])


def test_debug_shows_the_traceback(base, tmp_path):
    d = variant(base, tmp_path, cfg={"model_type": "mamba"})
    r = CliRunner().invoke(main, ["info", d, "--debug"])
    assert r.exit_code != 0 and r.exception is not None  # raised, not reduced to a line
