"""Tokenizers built from a GGUF file's vocabulary (`tokenizer.ggml.*` keys), matching llama.cpp:
`tokenizer_from_gguf(reader)`.

`reader` is a `gguf.GGUFReader`, edgerope's own `GGUFFile` (anything with
`fields[key].contents()`), a plain {key: value} dict, or a path (then read with
`gguf.GGUFReader`; edgerope.io.loading passes its own, faster, reader):

* `tokenizer.ggml.model == "llama"` (SentencePiece vocabularies: Llama 2, Mistral, Gemma): the
  tokens, scores and token types become a SentencePiece `ModelProto` (BPE model, identity
  normalizer, whitespace escaped, byte fallback; edgerope.text.spm_proto) loaded by the
  sentencepiece library. sentencepiece's BPE encoder is the same algorithm as llama.cpp's SPM
  tokenizer: merge the adjacent pair whose concatenation is the highest-scoring piece, leftmost
  first, and emit byte pieces for characters not in the vocabulary.
* `tokenizer.ggml.model == "gpt2"` (byte-level BPE: SmolLM, Llama 3, Qwen 2, ...): vocabulary and
  merges become a `tokenizers` BPE model; `tokenizer.ggml.pre` picks the pre-tokenizer regexes
  from the table below, copied from llama.cpp's `llm_tokenizer_bpe` (src/llama-vocab.cpp). Each
  regex splits every piece left by the previous one, keeping matches and the text between them.
* `tokenizer.ggml.model == "gemma4"`: BPE over raw UTF-8 (`Gemma4Tokenizer`).

Owns: reading and checking the `tokenizer.*` metadata (see `_Vocab`), the end-of-generation set,
the pre-tokenizer table. Does not own: opening files for edgerope.load (edgerope.io.loading),
running the tokenizers (edgerope.text.spm_tokenizer, edgerope.text.bpe_tokenizer); special-token
text is split out by `edgerope.text.tokenizer_base.split_special`, which reproduces llama.cpp's
`tokenizer_st_partition`.
"""
from __future__ import annotations

import os

import numpy as np

from edgerope.errors import EdgeropeWarning, TokenizerError
from edgerope.text.bpe_tokenizer import BPETokenizer, Gemma4Tokenizer
from edgerope.text.spm_proto import (BYTE, CONTROL, NORMAL, UNKNOWN, USER_DEFINED,
                                     spm_proto_from_vocab, vocab_piece_types)
from edgerope.text.spm_tokenizer import SentencePieceTokenizer
from edgerope.text.tokenizer_base import (BYTE_PIECE, EOG_TEXTS, Tokenizer, eog_ids_by_text,
                                          first_line)

__all__ = ["tokenizer_from_gguf", "PRE_TOKENIZER_REGEXES"]

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

    def __init__(self, reader, where: str | None):
        self.reader = reader
        self.where = where  # the file, for messages

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


def tokenizer_from_gguf(reader) -> Tokenizer:
    """SentencePieceTokenizer (`llama` vocab), BPETokenizer (`gpt2`) or Gemma4Tokenizer
    (`gemma4`) for a GGUF file's vocabulary; `reader` as in the module docstring.

    `eos_ids` is llama.cpp's end-of-generation set: the eos/eot/eom ids plus every token whose
    text is in EOG_TEXTS. (llama.cpp also counts the FIM pad/repo/sep tokens, e.g. SmolLM2's
    "<reponame>", and "</s>" for paddleocr, which would end Gemma 3 at an HTML "</s>"; we don't.)
    Bad metadata raises one TokenizerError "<file>: <key>: <what is wrong>" (see `_Vocab`).
    """
    if isinstance(reader, (str, os.PathLike)):
        import gguf
        path = os.fspath(reader)
        meta = _Vocab(gguf.GGUFReader(path), path)
    else:
        path = getattr(reader, "path", None)  # GGUFFile has one, gguf.GGUFReader not
        meta = _Vocab(reader, path if isinstance(path, str) else None)
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
    eog_by_text = eog_ids_by_text({t: index[t] for t in EOG_TEXTS if t in index})
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
            if not BYTE_PIECE.fullmatch(tokens[i]):
                raise TokenizerError(f"tokenizer.ggml.tokens[{i}]: {tokens[i]!r} has the byte "
                                     "token type but is not of the form <0xXX>")
        add_space_prefix = meta.flag("tokenizer.ggml.add_space_prefix", True)
        unk = ids["unknown"] if ids["unknown"] is not None else 0
        proto = spm_proto_from_vocab(tokens, scores, types, unk_id=unk, bos_id=ids["bos"],
                                     eos_id=ids["eos"], pad_id=ids["padding"],
                                     add_dummy_prefix=add_space_prefix)
        piece_types = vocab_piece_types(types, unk)
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
            hf = gemma4_hf_tokenizer(tokens, index, pairs, types)
        except Exception as e:  # noqa: BLE001 - the tokenizers library raises a bare Exception
            raise TokenizerError(f"tokenizer.ggml.merges: {first_line(e)}") from None
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
        raise TokenizerError(f"tokenizer.ggml.merges: {first_line(e)}") from None
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


def gemma4_hf_tokenizer(tokens, vocab, pairs, types):
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
