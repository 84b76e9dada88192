"""edgerope.text.tokenizer against raw sentencepiece, on a tiny model trained by tests/spm_fixture.py."""
import json
import os
import random
import sys

import numpy as np
import pytest
import sentencepiece as spm

sys.path.insert(0, os.path.dirname(__file__))
from spm_fixture import MIN_VOCAB_SIZE, train_tiny_spm  # noqa: E402

from edgerope.text.tokenizer import SentencePieceTokenizer, StreamDecoder, Tokenizer, load_tokenizer  # noqa: E402

TEXTS = [
    "",
    "Hello world",
    "The lighthouse keeper counted 112 steps.",
    "  two leading spaces, trailing two  ",
    " ",
    "tabs\tand\t\tnewlines\n\n\nand   runs    of     spaces",
    "\n",
    "日本語のテキストと中文",
    "emoji 🙂👍🏽 family 👨‍👩‍👧 flag 🇫🇷",
    "combining: e\u0301 a\u0308 n\u0303 and precomposed é ä ñ",
    "\u0301 starts with a combining mark",
    "mixed: café 咖啡 ☕ 3.14159 — “quotes” ‘single’ …",
    "<s> and </s> and <unk> written as plain text",
    "Ελληνικά, русский, עברית, العربية, हिन्दी",
    "\x00control\x07chars\x1f",
]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return train_tiny_spm(tmp_path_factory.mktemp("spm"))


@pytest.fixture(scope="module")
def tok(model_path):
    return SentencePieceTokenizer(model_path)


@pytest.fixture(scope="module")
def sp(model_path):
    return spm.SentencePieceProcessor(model_file=model_path)


def _stream_all(tok, ids, prefix=()):
    st = tok.stream(prefix)
    pieces = [st.push(i) for i in ids]
    tail = st.flush()
    return pieces, tail


# --- fixture -----------------------------------------------------------------------------------

def test_fixture_is_deterministic(tmp_path):
    import spm_fixture
    a = open(train_tiny_spm(tmp_path / "a"), "rb").read()
    spm_fixture._cache.clear()  # force a real second training run
    b = open(train_tiny_spm(tmp_path / "b"), "rb").read()
    assert a == b
    assert os.path.basename(train_tiny_spm(tmp_path / "c")) == "tokenizer.model"


def test_fixture_vocab_size_and_ids(tmp_path):
    sp = spm.SentencePieceProcessor(model_file=train_tiny_spm(tmp_path, vocab_size=MIN_VOCAB_SIZE + 10))
    assert sp.get_piece_size() == MIN_VOCAB_SIZE + 10
    assert (sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.pad_id()) == (0, 1, 2, -1)
    with pytest.raises(ValueError, match="vocab_size must be >="):
        train_tiny_spm(tmp_path, vocab_size=MIN_VOCAB_SIZE - 1)


# --- encode / decode ---------------------------------------------------------------------------

def test_basic_attributes(tok, sp):
    assert isinstance(tok, Tokenizer)
    assert tok.vocab_size == sp.get_piece_size()
    assert tok.bos_id == 1
    assert tok.eos_ids == frozenset({2})
    assert {1, 2} <= tok.special_ids


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip_and_equals_sentencepiece(tok, sp, text):
    ids = tok.encode(text, add_bos=False)
    assert ids == sp.encode(text)
    assert tok.encode(text) == [tok.bos_id] + ids
    assert tok.decode(ids) == text
    assert tok.decode([tok.bos_id] + ids + [2]) == text
    assert not (set(ids) & tok.special_ids)


def test_byte_fallback_is_used_for_unseen_characters(tok, sp):
    ids = tok.encode("🙂", add_bos=False)
    assert [sp.id_to_piece(i) for i in ids if sp.is_byte(i)] == ["<0xF0>", "<0x9F>", "<0x99>", "<0x82>"]


def test_special_text_is_not_special_tokens(tok):
    ids = tok.encode("<s></s><unk>", add_bos=False)
    assert not (set(ids) & tok.special_ids) and 0 not in ids


def test_add_bos_default(model_path):
    t = SentencePieceTokenizer(model_path, add_bos_default=False)
    assert t.encode("hi") == t.encode("hi", add_bos=False)
    assert t.encode("hi", add_bos=True)[0] == t.bos_id
    t2 = SentencePieceTokenizer(model_path, bos_id=None)
    assert t2.bos_id is None and t2.encode("hi", add_bos=True) == t2.encode("hi", add_bos=False)


def test_decode_accepts_numpy_and_drops_out_of_range(tok):
    ids = tok.encode("Hello world", add_bos=False)
    assert tok.decode(np.array(ids, dtype=np.int32)) == "Hello world"
    assert tok.decode(ids + [tok.vocab_size + 5]) == "Hello world"


def test_custom_eos_ids_are_skipped(model_path):
    t = SentencePieceTokenizer(model_path, eos_ids=[2, 7])
    assert t.eos_ids == frozenset({2, 7})
    ids = t.encode("Hello world", add_bos=False)
    assert t.decode(ids + [7]) == "Hello world"
    assert "".join(_stream_all(t, ids + [7])[0]) == "Hello world"


def test_bad_model_file(tmp_path):
    bad = tmp_path / "tokenizer.model"
    bad.write_bytes(b"not a protobuf")
    with pytest.raises(ValueError, match="cannot load SentencePiece model"):
        SentencePieceTokenizer(bad)


# --- streaming ---------------------------------------------------------------------------------

@pytest.mark.parametrize("text", TEXTS)
def test_stream_matches_decode(tok, text):
    ids = tok.encode(text)
    pieces, tail = _stream_all(tok, ids)
    assert "".join(pieces) + tail == tok.decode(ids) == text
    assert tail == ""  # valid text never needs flush
    for p in pieces:
        p.encode("utf-8")  # no lone surrogates
        assert "\ufffd" not in p


def test_stream_holds_partial_characters(tok, sp):
    ids = tok.encode("a🙂", add_bos=False)
    st = tok.stream()
    out = [st.push(i) for i in ids]
    assert out[-4:-1] == ["", "", ""] and out[-1] == "🙂"


def test_stream_with_prefix_keeps_leading_space(tok):
    prompt = tok.encode("The keeper said")
    gen = tok.encode(" hello 🙂 there", add_bos=False)[1:]  # drop the dummy-prefix "▁" piece
    pieces, tail = _stream_all(tok, gen, prefix=prompt)
    assert tok.decode(prompt) + "".join(pieces) + tail == tok.decode(prompt + gen)
    assert "".join(pieces).startswith(" ")


def test_stream_random_ids_including_invalid_bytes(tok):
    rng = random.Random(1234)
    ordinary = [i for i in range(tok.vocab_size) if i not in tok.special_ids]
    for _ in range(300):
        ids = [rng.choice(ordinary) for _ in range(rng.randint(1, 40))]
        pieces, tail = _stream_all(tok, ids)
        assert "".join(pieces) + tail == tok.decode(ids)


def test_stream_invalid_bytes_flush_to_replacement(tok, sp):
    e2, x82 = sp.piece_to_id("<0xE2>"), sp.piece_to_id("<0x82>")
    ids = tok.encode("ok", add_bos=False) + [e2, x82]
    st = tok.stream()
    assert "".join(st.push(i) for i in ids) == "ok"
    assert st.flush() == tok.decode(ids)[2:] == "\ufffd\ufffd"
    with pytest.raises(RuntimeError, match="after flush"):
        st.push(e2)


def test_stream_window_stays_small(tok):
    ids = tok.encode("The quick lighthouse keeper 🙂 counted steps. " * 200)
    st = tok.stream()
    longest = 0
    for i in ids:
        st.push(i)
        longest = max(longest, len(st._ids))
    assert longest <= 10


def test_stream_decoder_generic_fallback():
    """A Tokenizer without byte knowledge still streams correctly via the U+FFFD heuristic."""
    class Bytes(Tokenizer):
        vocab_size, bos_id, eos_ids, special_ids = 256, None, frozenset(), frozenset()

        def encode(self, text, add_bos=None):
            return list(text.encode())

        def decode(self, ids):
            return bytes(ids).decode("utf-8", errors="replace")

    t = Bytes()
    ids = t.encode("añ🙂b")
    st = t.stream()
    assert isinstance(st, StreamDecoder)
    pieces = [st.push(i) for i in ids]
    assert "".join(pieces) + st.flush() == "añ🙂b"
    assert all("\ufffd" not in p for p in pieces)


# --- load_tokenizer ----------------------------------------------------------------------------

def _model_dir(tmp_path, model_path, **json_files):
    d = tmp_path / "model"
    d.mkdir()
    (d / "tokenizer.model").write_bytes(open(model_path, "rb").read())
    for name, data in json_files.items():
        (d / f"{name}.json").write_text(json.dumps(data))
    return d


def test_load_tokenizer_defaults_from_model(tmp_path, model_path):
    t = load_tokenizer(_model_dir(tmp_path, model_path))
    assert isinstance(t, SentencePieceTokenizer)
    assert t.bos_id == 1 and t.eos_ids == frozenset({2}) and t.add_bos_default


def test_load_tokenizer_eos_list_from_config(tmp_path, model_path):
    d = _model_dir(tmp_path, model_path, config={"bos_token_id": 1, "eos_token_id": [2, 5]})
    t = load_tokenizer(d)
    assert t.eos_ids == frozenset({2, 5}) and t.bos_id == 1
    ids = t.encode("Hello", add_bos=False)
    assert t.decode(ids + [5]) == "Hello"


def test_load_tokenizer_merges_generation_config(tmp_path, model_path):
    d = _model_dir(tmp_path, model_path,
                   config={"text_config": {"eos_token_id": 2}},
                   generation_config={"bos_token_id": 1, "eos_token_id": [7, 9]},
                   tokenizer_config={"add_bos_token": False})
    t = load_tokenizer(d)
    assert t.eos_ids == frozenset({2, 7, 9})
    assert not t.add_bos_default and t.encode("hi")[0] != t.bos_id


def test_load_tokenizer_token_strings_from_tokenizer_config(tmp_path, model_path):
    d = _model_dir(tmp_path, model_path,
                   tokenizer_config={"bos_token": {"content": "<s>"}, "eos_token": "</s>"})
    t = load_tokenizer(d)
    assert t.bos_id == 1 and t.eos_ids == frozenset({2})


def test_load_tokenizer_missing(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError) as e:
        load_tokenizer(tmp_path)
    assert str(e.value) == f"no tokenizer found in {tmp_path} (expected tokenizer.model)"


def test_unigram_model_round_trip(tmp_path):
    t = SentencePieceTokenizer(train_tiny_spm(tmp_path, model_type="unigram"))
    for text in TEXTS:
        ids = t.encode(text)
        assert t.decode(ids) == text
        pieces, tail = _stream_all(t, ids)
        assert "".join(pieces) + tail == text
