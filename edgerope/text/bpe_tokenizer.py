"""`BPETokenizer`: byte-level BPE (GPT-2 style: SmolLM, Llama 3, Qwen 2) run by the Hugging Face
`tokenizers` library, from a tokenizer.json or built from a GGUF `gpt2` vocabulary; and
`Gemma4Tokenizer`, llama.cpp's `gemma4` vocabulary (BPE over raw UTF-8).

Owns: the special-token partition for added tokens (special added tokens are control tokens,
the others user-defined), byte-exact decoding and streaming through GPT-2's byte alphabet.
Does not own: building the `tokenizers` model from GGUF metadata (edgerope.text.gguf_vocab),
reading tokenizer_config.json (edgerope.text.tokenizer).
"""
from __future__ import annotations

import os
import re
from typing import Iterable

from edgerope.errors import TokenizerError
from edgerope.text.tokenizer_base import (Tokenizer, first_line, sorted_specials, split_special,
                                          write_json)

__all__ = ["BPETokenizer", "Gemma4Tokenizer"]


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
        # Special-token text is split out by split_special; the library must not do it again
        # when special=False.
        hf.encode_special_tokens = True
        self.vocab_size = hf.get_vocab_size(with_added_tokens=True)
        added = hf.get_added_tokens_decoder()
        self._control = frozenset(int(i) for i, t in added.items() if t.special)
        self._user_sorted = sorted_specials((t.content, i) for i, t in added.items()
                                            if not t.special)
        self._all_sorted = sorted_specials((t.content, i) for i, t in added.items())
        self.add_bos_default = bool(add_bos_default)
        self.chat_template = chat_template
        self._set_ids(bos_id, eos_ids, self._control)
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
            raise TokenizerError(f"{path}: {first_line(e)}") from None
        return cls(hf, path=path, **kwargs)

    def __repr__(self):
        return (f"BPETokenizer({self.path!r}, vocab_size={self.vocab_size}, "
                f"bos_id={self.bos_id}, eos_ids={sorted(self.eos_ids)})")

    def encode(self, text: str, add_bos: bool | None = None, special: bool = False) -> list[int]:
        specials = self._all_sorted if special else self._user_sorted
        ids: list[int] = []
        for frag in split_special(text, specials):
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

    def token_id(self, text: str) -> int | None:
        return self.hf.token_to_id(text)

    def _token_bytes(self) -> list[bytes]:
        if self._bytes is None:
            return super()._token_bytes()
        return [b"\xff" + b if i in self.special_ids else b for i, b in enumerate(self._bytes)]

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
        write_json(os.path.join(directory, "tokenizer_config.json"), self._config())


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
