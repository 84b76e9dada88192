"""Hostile files: small valid GGUF files and edgerope directories, mutated (flipped bits,
random 8-byte overwrites, truncations), must load cleanly or fail with an EdgeropeError --
never another exception. The vocabulary and chat-template metadata of a SentencePiece-style and
a BPE GGUF, and Hugging Face tokenizer files, get mutations of their own (bytes inside those
keys only, and edits of their values), and a loaded model's tokenizer and template are used.
Bounded for CI (150 cases a test); a longer run:

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
from edgerope.io.native import save_native  # noqa: E402

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
    """Load, run a tiny forward pass, use the tokenizer and the chat template; EdgeropeError is
    the only acceptable failure."""
    try:
        m = edgerope.load(path, dtype="int8")
        m.logits([1, 5, 7])
        if m.tokenizer is not None:
            use_tokenizer(m)
    except EdgeropeError:
        pass


TEXT = "the cat sat <|im_start|>in there ▁ é 🙂\n\n  x"


def use_tokenizer(m):
    from edgerope.text.conversation import Chat
    tok = m.tokenizer
    for special in (False, True):
        ids = tok.encode(TEXT, special=special)
        assert all(0 <= i < tok.vocab_size for i in ids)
        text = tok.decode(ids)
        stream = tok.stream()
        assert "".join(stream.push(i) for i in ids) + stream.flush() == text
    chat = Chat(m, system="s", temperature=0, max_tokens=2)
    chat.render()


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
    load_or_clean_error(mutated_copy(src, str(d / "m-native"), which, muts))


def mutated_copy(src, dst, which, muts):
    """A fresh copy `dst` of directory `src` whose file `which` is mutated."""
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)
    path = os.path.join(dst, which)
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(mutate(data, muts))
    return dst


# -- vocabularies and templates ----------------------------------------------------------------

@pytest.fixture(scope="module")
def vocab_files(tmp_path_factory):
    """{kind: (GGUF bytes, [(start, end) of each tokenizer.* key/value in them])} and a BPE
    edgerope directory (tokenizer.json, tokenizer_config.json)."""
    import gguf

    from vocab_fixtures import write_vocab_gguf
    d = tmp_path_factory.mktemp("fuzz-vocab")
    out = {}
    for kind in ("spm", "bpe"):
        path = write_vocab_gguf(str(d / f"{kind}.gguf"), kind)
        fields = gguf.GGUFReader(path).fields
        spans = [(f.offset, f.offset + sum(p.nbytes for p in f.parts))
                 for k, f in fields.items() if k.startswith("tokenizer.")]
        out[kind] = (open(path, "rb").read(), spans)
    native = str(d / "bpe-native")
    save_native(edgerope.load(str(d / "bpe.gguf")), native)
    return d, out, native


# a mutation inside a key: ("flip", key index, offset, bit) | ("byte", key index, offset, value)
# | ("swap", key index, offset): offsets are fractions of that key's bytes
IN_KEY = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 99), st.floats(0, 1), st.integers(0, 7)),
    st.tuples(st.just("byte"), st.integers(0, 99), st.floats(0, 1), st.integers(0, 255)),
    st.tuples(st.just("swap"), st.integers(0, 99), st.floats(0, 1)),
)


def mutate_in(data: bytes, spans, muts) -> bytes:
    b = bytearray(data)
    for m in muts:
        start, end = spans[m[1] % len(spans)]
        o = min(start + int(m[2] * (end - start)), end - 2)
        if m[0] == "flip":
            b[o] ^= 1 << m[3]
        elif m[0] == "byte":
            b[o] = m[3]
        else:
            b[o], b[o + 1] = b[o + 1], b[o]
    return bytes(b)


@FUZZ
@given(kind=st.sampled_from(["spm", "bpe"]), muts=st.lists(IN_KEY, min_size=1, max_size=3))
def test_mutated_vocabulary_bytes(vocab_files, kind, muts):
    d, files, _ = vocab_files
    data, spans = files[kind]
    path = str(d / "m.gguf")
    with open(path, "wb") as f:
        f.write(mutate_in(data, spans, muts))
    load_or_clean_error(path)


TEMPLATE_PIECES = ["{{ messages }}", "{% for m in messages %}", "{% endfor %}", "{{ m.content }}",
                   "{% if add_generation_prompt %}", "{% endif %}", "{{ raise_exception('x') }}",
                   "{{ bos_token }}", "{{ messages[5] }}", "{{ m.__class__ }}", "{% set x = ",
                   "}}", "{{ 'a' * 9999999999 }}", "{{ range(10)|join(',') }}", "{%", "{{ 1/0 }}",
                   "{{ messages[0]['content']|trim }}", "<|im_start|>", "\x00", "{# c #}"]


def _edit_value(kind):
    """A hypothesis strategy for one edit of a vocabulary key's value, as a writer edit."""
    from vocab_fixtures import BPE_TOKENS, MERGES, set_key
    from test_q8_formats import TOKENS, V
    tokens = BPE_TOKENS if kind == "bpe" else TOKENS
    ids = st.integers(0, V - 1)
    text = st.text(max_size=6)

    def tokens_edit(i, t):
        return lambda w: set_key(w, "tokenizer.ggml.tokens",
                                 tokens[:i] + [t] + tokens[i + 1:], "ARRAY")

    def merges_edit(i, t):
        return lambda w: set_key(w, "tokenizer.ggml.merges",
                                 MERGES[:i] + [t] + MERGES[i + 1:], "ARRAY")

    def cut(key, n):
        def edit(w):
            v = w.kv_data[0].get(key)
            if v is not None:
                v.value = list(v.value)[:n]
        return edit

    def special(name, v):
        return lambda w: set_key(w, f"tokenizer.ggml.{name}_token_id", v, "INT32")

    def string(key, v):
        return lambda w: set_key(w, key, v, "STRING")

    def types(i, t):
        def edit(w):
            w.kv_data[0]["tokenizer.ggml.token_type"].value[i] = t
        return edit

    return st.one_of(
        st.builds(tokens_edit, ids, st.one_of(text, st.sampled_from(tokens))),
        st.builds(merges_edit, st.integers(0, len(MERGES) - 1),
                  st.one_of(text, st.sampled_from(tokens), st.sampled_from(MERGES))),
        st.builds(cut, st.sampled_from(["tokenizer.ggml.tokens", "tokenizer.ggml.scores",
                                        "tokenizer.ggml.token_type", "tokenizer.ggml.merges"]),
                  st.integers(0, V + 1)),
        st.builds(special, st.sampled_from(["bos", "eos", "unknown", "padding", "eot"]),
                  st.integers(-2, V + 2)),
        st.builds(types, ids, st.integers(-1, 8)),
        st.builds(string, st.sampled_from(["tokenizer.ggml.model", "tokenizer.ggml.pre"]),
                  st.one_of(text, st.sampled_from(["llama", "gpt2", "smollm", "llama3",
                                                   "qwen2", "bert", ""]))),
        st.builds(string, st.just("tokenizer.chat_template"),
                  st.lists(st.sampled_from(TEMPLATE_PIECES), max_size=6).map("".join)),
    )


@FUZZ
@given(data=st.data(), kind=st.sampled_from(["spm", "bpe"]))
def test_mutated_vocabulary_values(vocab_files, data, kind):
    from vocab_fixtures import write_vocab_gguf
    d, _, _ = vocab_files
    edits = data.draw(st.lists(_edit_value(kind), min_size=1, max_size=3))

    def edit(w):
        for e in edits:
            e(w)
    path = str(d / "v.gguf")
    try:
        write_vocab_gguf(path, kind, edit)
    except (ValueError, TypeError, OverflowError, KeyError):
        return  # gguf-py cannot write that value: not a file anyone can make this way
    load_or_clean_error(path)


@FUZZ
@given(which=st.sampled_from(["tokenizer.json", "tokenizer_config.json"]),
       muts=st.lists(MUTATION, min_size=1, max_size=3))
def test_mutated_hf_tokenizer_files(vocab_files, which, muts):
    d, _, src = vocab_files
    load_or_clean_error(mutated_copy(src, str(d / "m-bpe"), which, muts))
