"""`BPETokenizer` (byte-level BPE via the `tokenizers` library) and the tokenizers built from a
GGUF file's vocabulary (`tokenizer.ggml.*` keys), matching llama.cpp. Import these names from
edgerope.text.tokenizer; this module holds the GGUF/BPE builders so that one stays readable.

`tokenizer_from_gguf(reader)` accepts a `gguf.GGUFReader` or edgerope's own `GGUFFile` (anything
with `fields[key].contents()`):

* `tokenizer.ggml.model == "llama"` (SentencePiece vocabularies: Llama 2, Mistral, Gemma): the
  tokens, scores and token types become a SentencePiece `ModelProto` (BPE model, identity
  normalizer, whitespace escaped, byte fallback), serialized here by hand (the protobuf runtime is
  not a dependency) and loaded by the sentencepiece library. sentencepiece's BPE encoder is the
  same algorithm as llama.cpp's SPM tokenizer: merge the adjacent pair whose concatenation is the
  highest-scoring piece, leftmost first, and emit byte pieces for characters not in the vocabulary.
* `tokenizer.ggml.model == "gpt2"` (byte-level BPE: SmolLM, Llama 3, Qwen 2, ...): vocabulary and
  merges become a `tokenizers` BPE model; `tokenizer.ggml.pre` picks the pre-tokenizer regexes
  from the table below, copied from llama.cpp's `llm_tokenizer_bpe` (src/llama-vocab.cpp). Each
  regex splits every piece left by the previous one, keeping matches and the text between them.

Special-token text (control, unknown and user-defined tokens) is split out by
`edgerope.text.tokenizer._split_special`, which reproduces llama.cpp's `tokenizer_st_partition`.
"""
from __future__ import annotations

import os
import re
from typing import Iterable

import numpy as np

from edgerope.errors import EdgeropeWarning, TokenizerError
from edgerope.text.tokenizer import (_BYTE_PIECE, EOG_TEXTS, SentencePieceTokenizer, Tokenizer,
                        _eog_ids_by_text, _first_line, _sorted_specials, _split_special,
                        _write_json)

__all__ = ["BPETokenizer", "tokenizer_from_gguf", "spm_proto_from_vocab", "PRE_TOKENIZER_REGEXES"]


# --- byte-level BPE tokenizer (tokenizer.json or GGUF gpt2 vocabulary) -------------------------

def _utf8_incomplete(tail: bytes) -> bool:
    """True if `tail` ends inside a multi-byte UTF-8 sequence that more bytes could complete."""
    n = len(tail)
    for k in range(1, min(4, n) + 1):
        b = tail[n - k]
        if b < 0x80:
            return False
        if b >= 0xC0:
            need = 2 if b < 0xE0 else 3 if b < 0xF0 else 4
            return k < need
    return False


def _bytes_to_unicode() -> dict[str, int]:
    """GPT-2's byte-level alphabet, inverted: printable char -> byte."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


class BPETokenizer(Tokenizer):
    """Byte-level BPE (GPT-2 style: SmolLM, Llama 3, Qwen 2) run by the `tokenizers` library.

    `hf` is a `tokenizers.Tokenizer` (from a tokenizer.json, or built from a GGUF vocabulary by
    edgerope.text.gguf_vocab). Its special added tokens are control tokens, its other added tokens
    user-defined ones. With a ByteLevel decoder, every id maps to exact bytes, so decoding and
    streaming are byte-exact; other decoders go through `hf.decode`.
    """

    def __init__(self, hf, *, bos_id=None, eos_ids=(), add_bos_default: bool = False,
                 chat_template: str | None = None, chat_template_origin: str | None = None,
                 path=None):
        self.hf = hf
        self.chat_template_origin = chat_template_origin
        self.path = None if path is None else os.fspath(path)
        # Special-token text is split out by _split_special; the library must not do it again
        # when special=False.
        hf.encode_special_tokens = True
        self.vocab_size = hf.get_vocab_size(with_added_tokens=True)
        added = hf.get_added_tokens_decoder()
        self._control = frozenset(int(i) for i, t in added.items() if t.special)
        self._user_sorted = _sorted_specials((t.content, i) for i, t in added.items() if not t.special)
        self._all_sorted = _sorted_specials((t.content, i) for i, t in added.items())
        self.add_bos_default = bool(add_bos_default)
        self.chat_template = chat_template
        self.bos_id = None if bos_id is None else int(bos_id)
        eos = [int(i) for i in ([eos_ids] if isinstance(eos_ids, int) else eos_ids)]
        self._eos_primary = eos[0] if eos else None
        self.eos_ids = frozenset(eos)
        special = set(self._control) | self.eos_ids
        if self.bos_id is not None:
            special.add(self.bos_id)
        self.special_ids = frozenset(special)
        self._bytes: list[bytes] | None = None
        if type(hf.decoder).__name__ == "ByteLevel":
            table = [b""] * self.vocab_size
            inv = _bytes_to_unicode()
            for tok, i in hf.get_vocab(with_added_tokens=True).items():
                if i >= self.vocab_size:
                    continue
                if i in added:
                    table[i] = added[i].content.encode("utf-8")
                elif all(c in inv for c in tok):
                    table[i] = bytes(inv[c] for c in tok)
                else:
                    table[i] = tok.encode("utf-8")
            self._bytes = table

    @classmethod
    def from_file(cls, path, **kwargs) -> "BPETokenizer":
        from tokenizers import Tokenizer as HFTokenizer
        path = os.fspath(path)
        try:
            hf = HFTokenizer.from_file(path)
        except Exception as e:  # noqa: BLE001 - tokenizers raises a bare Exception
            raise TokenizerError(f"{path}: {_first_line(e)}") from None
        return cls(hf, path=path, **kwargs)

    def __repr__(self):
        return (f"BPETokenizer({self.path!r}, vocab_size={self.vocab_size}, "
                f"bos_id={self.bos_id}, eos_ids={sorted(self.eos_ids)})")

    def encode(self, text: str, add_bos: bool | None = None, special: bool = False) -> list[int]:
        specials = self._all_sorted if special else self._user_sorted
        ids: list[int] = []
        for frag in _split_special(text, specials):
            if isinstance(frag, int):
                ids.append(frag)
            else:
                ids += self._encode_text(frag)
        return self._add_bos(ids, add_bos)

    def _encode_text(self, text: str) -> list[int]:
        """Ids of text without special-token text in it."""
        return self.hf.encode(text, add_special_tokens=False).ids

    def _keep(self, ids):
        special, n = self.special_ids, self.vocab_size
        return [i for i in map(int, ids) if 0 <= i < n and i not in special]

    def decode(self, ids: Iterable[int]) -> str:
        keep = self._keep(ids)
        if self._bytes is not None:
            table = self._bytes
            return b"".join([table[i] for i in keep]).decode("utf-8", errors="replace")
        return self.hf.decode(keep, skip_special_tokens=False)

    def token_text(self, token_id: int) -> str:
        return self.hf.id_to_token(int(token_id))

    def is_incomplete(self, ids: list[int]) -> bool:
        if self._bytes is None:
            return super().is_incomplete(ids)
        table, n, tail = self._bytes, self.vocab_size, b""
        for i in reversed(ids):  # the last few bytes are enough: a UTF-8 char has at most 4
            if 0 <= i < n and i not in self.special_ids:
                tail = table[i] + tail
                if len(tail) >= 4:
                    break
        return _utf8_incomplete(tail)

    def save(self, directory) -> None:
        directory = os.fspath(directory)
        os.makedirs(directory, exist_ok=True)
        self.hf.save(os.path.join(directory, "tokenizer.json"))
        _write_json(os.path.join(directory, "tokenizer_config.json"), self._config())


class Gemma4Tokenizer(BPETokenizer):
    """llama.cpp's `gemma4` vocabulary: as BPETokenizer, except that a run of newlines that is
    a token of its own becomes that token, as llama.cpp does (its merges may not build it)."""

    def _encode_text(self, text: str) -> list[int]:
        ids: list[int] = []
        for part in _NEWLINE_RUNS.split(text):
            if not part:
                continue
            whole = self.hf.token_to_id(part) if part[0] == "\n" else None
            ids += [whole] if whole is not None else self.hf.encode(
                part, add_special_tokens=False).ids
        return ids


_NEWLINE_RUNS = re.compile(r"(\n+)")


# --- GGUF vocabularies -------------------------------------------------------------------------

# GGUF token types (llama.cpp's llama_token_type); SentencePiece uses the same numbers.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+"
           r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+"
          r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_DEFAULT = [r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"]

# tokenizer.ggml.pre -> (regexes applied in sequence, ignore_merges). Unknown values fall back to
# "default" like a GGUF without the key (llama.cpp refuses unknown values; we warn instead).
PRE_TOKENIZER_REGEXES: dict[str, tuple[list[str], bool]] = {
    "default": (_DEFAULT, False),
    **{k: ([_LLAMA3], True) for k in ("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1",
                                      "pixtral", "midm-2.0", "lfm2")},
    **{k: ([_LLAMA3], False) for k in ("dbrx", "smaug-bpe", "glm4", "chatglm-bpe")},
    **{k: ([r"\p{N}", _GPT2], False) for k in ("smollm", "starcoder", "refact", "command-r",
                                                "codeshell", "exaone", "minerva-7b")},
    **{k: ([_GPT2], False) for k in ("gpt2", "gpt-2", "phi-2", "jina-es", "jina-de", "gigachat",
                                     "jina-v2-es", "jina-v2-de", "mpt", "olmo", "jais",
                                     "trillion", "granite-docling", "exaone4", "mellum",
                                     "jina-v1-en", "jina-v2-code", "roberta-bpe", "a.x-4.0")},
    **{k: ([_QWEN2], False) for k in ("qwen2", "deepseek-r1-qwen", "stablelm2", "megrez",
                                      "hunyuan", "kormo")},
    "qwen35": ([r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?"
                r"[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"],
               False),
    "falcon": ([r"[\p{P}\$\+<=>\^~\|`]+", _GPT2, r"[0-9][0-9][0-9]"], False),
    # llama.cpp's regexes, character for character (escaped: the letter class is long)
    "deepseek-llm": (['[\r\n]',
                      '\\s?[A-Za-z\xb5\xc0-\xd6\xd8-\xf6\xf8-\u01ba\u01bc-\u01bf\u01c4-\u0293\u0295-\u02af\u0370-\u0373\u0376\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c\u038e-\u03a1\u03a3-\u03f5\u03f7-\u0481\u048a-\u052f\u0531-\u0556\u10a0-\u10c5\u13a0-\u13f5\u13f8-\u13fd\u1c90-\u1cba\u1cbd-\u1cbf\u1d00-\u1d2b\u1d6b-\u1d77\u1d79-\u1d9a\u1e00-\u1f15\u1f18-\u1f1d\u1f20-\u1f45\u1f48-\u1f4d\u1f50-\u1f57\u1f59\u1f5b\u1f5d\u1f5f-\u1f7d\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe\u1fc2-\u1fc4\u1fc6-\u1fcc\u1fd0-\u1fd3\u1fd6-\u1fdb\u1fe0-\u1fec\u1ff2-\u1ff4\u1ff6-\u1ffc\u2102\u2107\u210a-\u2113\u2115\u2119-\u211d\u2124\u2126\u2128\u212a-\u212d\u212f-\u2134\u2139\u213c-\u213f\u2145-\u2149\u214e\u2183\u2184\u2c00-\u2c7b\u2c7e-\u2ce4\u2ceb-\u2cee\u2cf2\u2cf3\ua640-\ua66d\ua680-\ua69b\ua722-\ua76f\ua771-\ua787\ua78b-\ua78e\uab70-\uabbf\ufb00-\ufb06\ufb13-\ufb17\uff21-\uff3a\uff41-\uff5a\U00010400-\U0001044f\U000104b0-\U000104d3\U000104d8-\U000104fb\U00010c80-\U00010cb2\U00010cc0-\U00010cf2\U000118a0-\U000118df\U0001e900-\U0001e943]+',
                      '\\s?[!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002]+',
                      '\\s+$',
                      '[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+',
                      '\\p{N}+'],
                     False),
    "deepseek-coder": ([r"[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", r"[一-龥ࠀ-一가-퟿]+", r"\p{N}"],
                       False),
}


def _field(reader, key, default=None):
    fields = getattr(reader, "fields", reader)
    f = fields.get(key) if hasattr(fields, "get") else None
    if f is None:
        return default
    if hasattr(f, "contents"):
        value = getattr(f, "value", None)  # edgerope.io.gguf_file keeps numeric arrays as ndarrays
        return value if isinstance(value, np.ndarray) else f.contents()
    return f


def _kind(v) -> str:
    """What a metadata value is, for messages: "a string", "an array of integers", ..."""
    names = {bool: "bool", int: "integer", float: "number", str: "string", list: "array"}
    if isinstance(v, np.ndarray):
        kind = {"b": "bool", "i": "integer", "u": "integer", "f": "number"}.get(v.dtype.kind,
                                                                              str(v.dtype))
        return f"an array of {kind}s"
    if isinstance(v, (list, tuple)):
        return f"an array of {names.get(type(v[0]), type(v[0]).__name__)}s" if v \
            else "an empty array"
    name = names.get(type(v), type(v).__name__)
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


class _Vocab:
    """The `tokenizer.*` metadata of a GGUF file, read key by key with llama.cpp's rules.

    What llama.cpp refuses is refused here with a TokenizerError naming the key (and the index
    in an array): a value of the wrong type, a missing token list, duplicate tokens (llama.cpp
    asserts), arrays whose length is not the token count, NaN scores, byte tokens that are not
    `<0xXX>`, merges naming text that is not a token (the `tokenizers` library cannot build
    them), an unknown `tokenizer.ggml.model`. What llama.cpp loads with a warning loads here
    with one EdgeropeWarning: a special token id outside the vocabulary (ignored), an unknown
    `tokenizer.ggml.pre` (llama.cpp refuses it; its 'default' regexes are used instead)."""

    def __init__(self, reader):
        self.reader = reader
        self.where = getattr(reader, "path", None)

    def warn(self, message: str) -> None:
        import warnings
        where = f"{self.where}: " if self.where else ""
        warnings.warn(where + message, EdgeropeWarning, stacklevel=4)

    def get(self, key, default=None):
        return _field(self.reader, key, default)

    def string(self, key, default=None):
        v = self.get(key)
        if v is None:
            return default
        if not isinstance(v, str):
            raise TokenizerError(f"{key}: expected a string, found {_kind(v)}")
        return v

    def flag(self, key, default=None):
        v = self.get(key)
        if v is None:
            return default
        if not isinstance(v, (bool, np.bool_)):
            raise TokenizerError(f"{key}: expected a bool, found {_kind(v)}")
        return bool(v)

    def strings(self, key, n=None):
        v = self.get(key)
        if v is None:
            return None
        if not isinstance(v, list) or not all(isinstance(t, str) for t in v):
            raise TokenizerError(f"{key}: expected an array of strings, found {_kind(v)}")
        if n is not None and len(v) != n:
            raise TokenizerError(f"{key}: {len(v)} values for {n} tokens")
        return v

    def numbers(self, key, n, dtype):
        v = self.get(key)
        if v is None:
            return None
        a = v if isinstance(v, np.ndarray) else None
        if a is None and isinstance(v, list) and all(
                isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
            a = np.asarray(v)
        if a is None or a.dtype.kind not in "iuf":
            raise TokenizerError(f"{key}: expected an array of numbers, found {_kind(v)}")
        if len(a) != n:
            raise TokenizerError(f"{key}: {len(a)} values for {n} tokens")
        if a.dtype.kind == "f" and np.isnan(a).any():
            raise TokenizerError(f"{key}[{int(np.flatnonzero(np.isnan(a))[0])}]: NaN")
        return a.astype(dtype)

    def token_id(self, key, n):
        v = self.get(key)
        if v is None:
            return None
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
            raise TokenizerError(f"{key}: expected a token id, found {_kind(v)}")
        if not 0 <= int(v) < n:
            self.warn(f"{key} = {int(v)} is outside the vocabulary of {n} tokens: ignored")
            return None
        return int(v)


def _unique(tokens, key="tokenizer.ggml.tokens"):
    """{text: id}; a text that appears twice is an error (llama.cpp asserts on it)."""
    index = {t: i for i, t in enumerate(tokens)}
    if len(index) != len(tokens):
        first: dict[str, int] = {}
        for i, t in enumerate(tokens):
            j = first.setdefault(t, i)
            if j != i:
                raise TokenizerError(f"{key}: {t!r} appears twice (ids {j} and {i})")
    return index


def tokenizer_from_gguf(reader):
    """SentencePieceTokenizer (`llama` vocab) or BPETokenizer (`gpt2` vocab) for a GGUF file.

    `eos_ids` is llama.cpp's end-of-generation set: the eos/eot/eom ids plus every token whose
    text is in EOG_TEXTS. (llama.cpp also counts the FIM pad/repo/sep tokens, e.g. SmolLM2's
    "<reponame>", and "</s>" for paddleocr, which would end Gemma 3 at an HTML "</s>"; we don't.)
    Bad metadata raises one TokenizerError "<file>: <key>: <what is wrong>" (see `_Vocab`).
    """
    meta = _Vocab(reader)
    try:
        return _build(meta)
    except TokenizerError as e:
        msg = str(e)
        if meta.where and not msg.startswith(meta.where):
            msg = f"{meta.where}: {msg}"
        raise TokenizerError(msg) from None


def _build(meta: _Vocab):
    model = meta.string("tokenizer.ggml.model")
    tokens = meta.strings("tokenizer.ggml.tokens")
    if model is None or tokens is None:
        raise TokenizerError("GGUF file has no tokenizer (tokenizer.ggml.model / tokens missing)")
    if model not in ("llama", "gpt2", "gemma4"):
        raise TokenizerError(f"tokenizer.ggml.model: unsupported tokenizer {model!r} "
                             "(supported: llama, gpt2, gemma4)")
    if not tokens:
        raise TokenizerError("tokenizer.ggml.tokens: empty vocabulary")
    tokens = [t if t else f"[EMPTY_{i}]" for i, t in enumerate(tokens)]  # as llama.cpp
    n = len(tokens)
    index = _unique(tokens)
    types = meta.numbers("tokenizer.ggml.token_type", n, np.int32)
    types = np.full(n, NORMAL, np.int32) if types is None else types
    ids = {k: meta.token_id(f"tokenizer.ggml.{k}_token_id", n)
           for k in ("bos", "eos", "unknown", "padding", "eot", "eom")}
    eog_by_text = _eog_ids_by_text({t: index[t] for t in EOG_TEXTS if t in index})
    # llama.cpp makes end-of-generation tokens control tokens whatever their stored type, so
    # that "<|im_end|>" in plain text stays text
    for i in [ids["eot"], ids["eom"]] + eog_by_text:
        if i is not None and types[i] != UNKNOWN:
            types[i] = CONTROL
    # end-of-generation set, eos first
    eos = list(dict.fromkeys(i for i in [ids["eos"], ids["eot"], ids["eom"]] + eog_by_text
                             if i is not None))
    chat_template = meta.string("tokenizer.chat_template")
    origin = None if chat_template is None else _origin(meta.where, "tokenizer.chat_template")
    add_bos = meta.flag("tokenizer.ggml.add_bos_token")

    if model == "llama":
        scores = meta.numbers("tokenizer.ggml.scores", n, np.float32)
        scores = np.zeros(n, np.float32) if scores is None else scores
        for i in np.flatnonzero(types == BYTE).tolist():
            if not _BYTE_PIECE.fullmatch(tokens[i]):
                raise TokenizerError(f"tokenizer.ggml.tokens[{i}]: {tokens[i]!r} has the byte "
                                     "token type but is not of the form <0xXX>")
        add_space_prefix = meta.flag("tokenizer.ggml.add_space_prefix", True)
        unk = ids["unknown"] if ids["unknown"] is not None else 0
        proto = spm_proto_from_vocab(tokens, scores, types, unk_id=unk, bos_id=ids["bos"],
                                     eos_id=ids["eos"], pad_id=ids["padding"],
                                     add_dummy_prefix=add_space_prefix)
        piece_types = _proto_types(types, unk)
        try:
            return SentencePieceTokenizer(
                model_proto=proto, eos_ids=eos, bos_id=ids["bos"], piece_types=piece_types,
                add_bos_default=True if add_bos is None else add_bos,
                chat_template=chat_template, chat_template_origin=origin)
        except TokenizerError as e:
            raise TokenizerError(f"tokenizer.ggml.tokens: {e}") from None
    merges = meta.strings("tokenizer.ggml.merges")
    if merges is None:
        raise TokenizerError(f"tokenizer.ggml.merges: missing (a {model} vocabulary needs "
                             "merges)")
    pairs = _merge_pairs(merges, index)
    if model == "gemma4":
        # llama.cpp adds BOS for Gemma 4 whatever the file says
        try:
            hf = _hf_gemma4(tokens, index, pairs, types)
        except Exception as e:  # noqa: BLE001 - the tokenizers library raises a bare Exception
            raise TokenizerError(f"tokenizer.ggml.merges: {_first_line(e)}") from None
        return Gemma4Tokenizer(hf, bos_id=ids["bos"], eos_ids=eos, add_bos_default=True,
                               chat_template=chat_template, chat_template_origin=origin)
    pre = meta.string("tokenizer.ggml.pre") or "default"
    regexes, ignore_merges = PRE_TOKENIZER_REGEXES.get(pre, PRE_TOKENIZER_REGEXES["default"])
    if pre not in PRE_TOKENIZER_REGEXES:
        meta.warn(f"unknown tokenizer.ggml.pre {pre!r}: using llama.cpp's 'default' "
                  "pre-tokenizer; tokenization may differ from the model's training")
    if add_bos is None:  # llama.cpp's per-pre default
        add_bos = pre in ("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1",
                          "pixtral", "midm-2.0", "lfm2", "tekken", "chameleon")
    try:
        hf = _hf_bpe(tokens, index, pairs, types, ignore_merges)
    except Exception as e:  # noqa: BLE001 - the tokenizers library raises a bare Exception
        raise TokenizerError(f"tokenizer.ggml.merges: {_first_line(e)}") from None
    hf.pre_tokenizer = _pre_tokenizer(regexes)
    return BPETokenizer(hf, bos_id=ids["bos"], eos_ids=eos, add_bos_default=add_bos,
                        chat_template=chat_template, chat_template_origin=origin)


def _origin(where, key) -> str:
    return f"{where}: {key}" if where else key


def _merge_pairs(merges, index):
    """(left, right) pairs of `tokenizer.ggml.merges`, each checked: both sides and their
    concatenation must be tokens."""
    pairs = []
    for k, m in enumerate(merges):
        s = m.find(" ", 1)  # llama.cpp splits at the first space after the first character
        if s <= 0:
            continue  # llama.cpp keeps it as a pair that never matches
        a, b = m[:s], m[s + 1:]
        for t in (a, b, a + b):
            if t not in index:
                raise TokenizerError(f"tokenizer.ggml.merges[{k}]: {m!r}: {t!r} is not a token")
        pairs.append((a, b))
    return pairs


# --- SentencePiece ModelProto, hand-serialized ------------------------------------------------
# Field numbers from sentencepiece_model.proto: ModelProto{pieces=1, trainer_spec=2,
# normalizer_spec=3}; SentencePiece{piece=1, score=2, type=3}; TrainerSpec{model_type=3,
# vocab_size=4, byte_fallback=35, unk_id=40, bos_id=41, eos_id=42, pad_id=43, unk_piece=45,
# bos_piece=46, eos_piece=47, pad_piece=48}; NormalizerSpec{name=1, add_dummy_prefix=3,
# remove_extra_whitespaces=4, escape_whitespaces=5}.

def _varint(n: int) -> bytes:
    if n < 0:
        n += 1 << 64  # int32 -1 is a 10-byte varint
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _ld(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def _vi(field: int, value: int) -> bytes:
    return _varint(field << 3) + _varint(int(value))


def _put_varints(out, pos, values, sizes):
    """Write each `values[k]` as a varint of `sizes[k]` bytes at `out[pos[k]:]` (vectorized)."""
    for k in range(int(sizes.max())):
        m = sizes > k
        b = (values[m] >> (7 * k)) & 0x7F
        out[pos[m] + k] = b | np.where(sizes[m] > k + 1, 0x80, 0)


def _varint_sizes(values):
    return 1 + (values >= 1 << 7) + (values >= 1 << 14) + (values >= 1 << 21) + (values >= 1 << 28)


def _spm_types(types, unk_id):
    """GGUF token types as written to the proto (see spm_proto_from_vocab)."""
    types = np.array(types, np.int64)
    types[(types < NORMAL) | (types > BYTE)] = NORMAL  # UNDEFINED (0) and unknown values
    types[types == UNKNOWN] = CONTROL
    if unk_id is None:
        raise TokenizerError("SentencePiece vocabulary without an unknown token")
    types[unk_id] = UNKNOWN
    return types


def _proto_types(types, unk_id) -> dict[int, int]:
    t = _spm_types(types, unk_id)
    nz = np.flatnonzero(t != NORMAL)
    return dict(zip(nz.tolist(), t[nz].tolist()))


def spm_proto_from_vocab(tokens, scores, types, *, unk_id, bos_id=None, eos_id=None, pad_id=None,
                         add_dummy_prefix=True) -> bytes:
    """Serialized SentencePiece ModelProto (BPE) for a GGUF `llama` vocabulary.

    sentencepiece insists on exactly one UNKNOWN piece, so the piece at `unk_id` gets that type.
    User-defined pieces keep their GGUF text (Gemma's whitespace runs are stored with real spaces
    there): sentencepiece never matches them itself because `encode` splits them out of the raw
    text first, exactly like llama.cpp does.

    The 262k pieces of Gemma are laid out with numpy: each is `0A len(inner)` then inner =
    `0A len(piece) piece 15 score(f32) 18 type`.
    """
    n = len(tokens)
    types = _spm_types(types, unk_id)
    byte_fallback = bool((types == BYTE).any())

    enc = [t.encode("utf-8") for t in tokens]
    text = np.frombuffer(b"".join(enc), np.uint8)
    lb = np.fromiter(map(len, enc), np.int64, n)
    s_lb = _varint_sizes(lb)
    inner = 1 + s_lb + lb + 5 + 2
    s_inner = _varint_sizes(inner)
    size = 1 + s_inner + inner
    start = np.zeros(n, np.int64)
    np.cumsum(size[:-1], out=start[1:])
    out = np.empty(int(size.sum()), np.uint8)
    out[start] = 0x0A
    _put_varints(out, start + 1, inner, s_inner)
    p = start + 1 + s_inner
    out[p] = 0x0A
    _put_varints(out, p + 1, lb, s_lb)
    p = p + 1 + s_lb  # piece text
    text_start = np.zeros(n, np.int64)
    np.cumsum(lb[:-1], out=text_start[1:])
    out[np.repeat(p - text_start, lb) + np.arange(len(text))] = text
    p = p + lb
    out[p] = 0x15
    out[p[:, None] + np.arange(1, 5)] = np.asarray(scores, "<f4").view(np.uint8).reshape(n, 4)
    out[p + 5] = 0x18
    out[p + 6] = types

    trainer = _vi(3, 2) + _vi(4, n) + _vi(35, byte_fallback) + _vi(40, unk_id)
    trainer += _vi(41, -1 if bos_id is None else bos_id) + _vi(42, -1 if eos_id is None else eos_id)
    trainer += _vi(43, -1 if pad_id is None else pad_id)
    for field, i in ((45, unk_id), (46, bos_id), (47, eos_id), (48, pad_id)):
        if i is not None:
            trainer += _ld(field, tokens[i].encode("utf-8"))
    normalizer = _ld(1, b"identity") + _vi(3, add_dummy_prefix) + _vi(4, False) + _vi(5, True)
    return out.tobytes() + _ld(2, trainer) + _ld(3, normalizer)


def _proto_piece_types(blob: bytes) -> dict[int, int]:
    """{id: type} for the pieces of a serialized SentencePiece ModelProto whose type is not
    NORMAL (sentencepiece's Python API cannot tell user-defined pieces apart)."""
    out: dict[int, int] = {}
    n, i, idx = len(blob), 0, 0

    def varint(j):
        r = s = 0
        while True:
            c = blob[j]
            j += 1
            r |= (c & 0x7F) << s
            s += 7
            if c < 0x80:
                return r, j

    while i < n:
        key = blob[i]
        if key == 0x0A:  # field 1: a SentencePiece message {piece=1, score=2, type=3}
            length, i = varint(i + 1)
            end = i + length
            # usual layout: 0A len piece 15 f32 18 type -> the type is the last byte
            if length >= 2 and blob[end - 2] == 0x18 and blob[i] == 0x0A:
                plen, j = varint(i + 1)
                if j + plen + 7 == end and blob[j + plen] == 0x15:
                    if blob[end - 1] != 1:
                        out[idx] = blob[end - 1]
                    idx += 1
                    i = end
                    continue
            j = i  # any other layout: walk the fields
            while j < end:
                k, j = varint(j)
                w = k & 7
                if w == 0:
                    v, j = varint(j)
                    if k >> 3 == 3 and v != 1:
                        out[idx] = v
                elif w == 1:
                    j += 8
                elif w == 2:
                    pl, j = varint(j)
                    j += pl
                elif w == 5:
                    j += 4
                else:
                    break
            idx += 1
            i = end
            continue
        key, i = varint(i)
        wire = key & 7
        if wire == 2:
            length, i = varint(i)
            i += length
        elif wire == 0:
            _, i = varint(i)
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        else:
            break
    return out


# --- byte-level BPE via the tokenizers library ------------------------------------------------

def _added_tokens(tok, tokens, types):
    from tokenizers import AddedToken
    types = np.asarray(types)
    special = [AddedToken(tokens[i], special=True, normalized=False)
               for i in np.flatnonzero((types == CONTROL) | (types == UNKNOWN)).tolist()]
    user = [AddedToken(tokens[i], special=False, normalized=False)
            for i in np.flatnonzero(types == USER_DEFINED).tolist()]
    if special:
        tok.add_special_tokens(special)
    if user:
        tok.add_tokens(user)


def _hf_gemma4(tokens, vocab, pairs, types):
    """llama.cpp's `gemma4` vocabulary: BPE over raw UTF-8 (no GPT-2 byte alphabet), spaces
    written as "▁", the text split only into lines and runs of newlines, bytes the vocabulary
    lacks as <0xXX> tokens."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    tok = Tokenizer(models.BPE(vocab=vocab, merges=pairs, byte_fallback=True))
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[^\n]+|[\n]+"), behavior="isolated")
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(),
                                     decoders.Fuse()])
    _added_tokens(tok, tokens, types)
    return tok


def _pre_tokenizer(regexes):
    """llama.cpp's regexes in sequence (each splits what the previous left, matches kept),
    then GPT-2's byte alphabet. The regexes are edgerope's own table: a failure is a bug."""
    from tokenizers import Regex, pre_tokenizers
    return pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in regexes]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])


def _hf_bpe(tokens, vocab, pairs, types, ignore_merges):
    from tokenizers import Tokenizer, decoders, models

    bpe = models.BPE(vocab=vocab, merges=pairs, ignore_merges=ignore_merges)
    tok = Tokenizer(bpe)
    tok.decoder = decoders.ByteLevel()
    _added_tokens(tok, tokens, types)
    return tok
