"""Hostile files: small valid GGUF files and edgerope directories, mutated (flipped bits,
random 8-byte overwrites, truncations), must load cleanly or fail with an EdgeropeError --
never another exception. Bounded for CI (a few hundred cases); a longer run:

    EDGEROPE_FUZZ_EXAMPLES=5000 python -m pytest -q tests/test_fuzz.py
"""
import os
import shutil

import pytest

hypothesis = pytest.importorskip("hypothesis")
pytest.importorskip("gguf")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import edgerope  # noqa: E402
from edgerope.errors import EdgeropeError  # noqa: E402
from edgerope.native import save_native  # noqa: E402

EXAMPLES = int(os.environ.get("EDGEROPE_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])

# a mutation: ("flip", offset, bit) | ("word", offset, 8 bytes) | ("cut", length); offsets
# are fractions of the region most likely to matter (headers and metadata: the first 32 KiB)
MUTATION = st.one_of(
    st.tuples(st.just("flip"), st.floats(0, 1), st.integers(0, 7)),
    st.tuples(st.just("word"), st.floats(0, 1), st.binary(min_size=8, max_size=8)),
    st.tuples(st.just("cut"), st.floats(0, 1)),
)


def mutate(data: bytes, muts) -> bytes:
    b = bytearray(data)
    for m in muts:
        if m[0] == "cut":
            b = b[:int(m[1] * len(b))]
            continue
        region = min(len(b), 32768)
        if region < 8:
            continue
        o = min(int(m[1] * region), region - 8)
        if m[0] == "flip":
            b[o] ^= 1 << m[2]
        else:
            b[o:o + 8] = m[2]
    return bytes(b)


def load_or_clean_error(path):
    """Load and run a tiny forward pass; EdgeropeError is the only acceptable failure."""
    try:
        m = edgerope.load(path, dtype="int8")
        m.logits([1, 5, 7])
    except EdgeropeError:
        pass


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    import numpy as np

    from test_q8_formats import SHAPES, q8_0_blocks, write_gguf
    d = tmp_path_factory.mktemp("fuzz")
    r = np.random.default_rng(0)
    gguf_path = write_gguf(str(d / "base.gguf"),
                           {n: q8_0_blocks(r, *s) for n, s in SHAPES.items()})
    native = str(d / "native")
    save_native(edgerope.load(gguf_path), native)
    return d, gguf_path, native


@FUZZ
@given(muts=st.lists(MUTATION, min_size=1, max_size=4))
def test_mutated_gguf(files, muts):
    d, src, _ = files
    path = str(d / "m.gguf")
    with open(src, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(mutate(data, muts))
    load_or_clean_error(path)


@FUZZ
@given(which=st.sampled_from(["model.safetensors", "model.safetensors", "config.json",
                              "tokenizer.model"]),
       muts=st.lists(MUTATION, min_size=1, max_size=4))
def test_mutated_native_directory(files, which, muts):
    d, _, src = files
    dst = str(d / "m-native")
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)
    path = os.path.join(dst, which)
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(mutate(data, muts))
    load_or_clean_error(dst)
