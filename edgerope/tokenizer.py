"""Text <-> token ids: the `Tokenizer` interface, its SentencePiece implementation, incremental
(streaming) detokenization, and `load_tokenizer` for Hugging Face-style model directories.

Owns: which token ids begin (`bos_id`) and end (`eos_ids`) a sequence, which ids are "special"
(never produced by `encode` of plain text, silently dropped by `decode` and by streams), and the
guarantee that streamed text is final (never half a UTF-8 character, never a wrong leading space).

Does not own: chat templates, or deciding when to stop generating (callers check `eos_ids`).
"""
from __future__ import annotations

import json
import os
from typing import Iterable

import sentencepiece as spm

__all__ = ["Tokenizer", "SentencePieceTokenizer", "StreamDecoder", "load_tokenizer"]

_FROM_MODEL = object()  # sentinel: "take this id from the tokenizer model itself"


class Tokenizer:
    """Interface every tokenizer implements (SentencePiece now; GGUF vocab, tokenizer.json later).

    Subclasses set `vocab_size`, `bos_id`, `eos_ids`, `special_ids`, `add_bos_default` and
    implement `encode`, `decode`; `stream` works for any subclass whose `decode` is
    prefix-stable (decoding more tokens only appends text once the tail is complete).
    """

    vocab_size: int
    bos_id: int | None
    eos_ids: frozenset[int]
    special_ids: frozenset[int]  # dropped by decode/stream (bos, eos, pad, control tokens)
    add_bos_default: bool = True

    def encode(self, text: str, add_bos: bool | None = None) -> list[int]:
        raise NotImplementedError

    def decode(self, ids: Iterable[int]) -> str:
        raise NotImplementedError

    def stream(self, prefix: Iterable[int] = ()) -> "StreamDecoder":
        """Incremental decoder. `prefix` = ids already shown (e.g. the prompt): context only, so
        that a generated "▁Paris" streams as " Paris" rather than as the start of a text."""
        return StreamDecoder(self, prefix)

    def is_incomplete(self, ids: list[int]) -> bool:
        """True if decoding `ids` may still change once more ids are appended (an unfinished
        multi-byte character at the end). Subclasses with exact byte knowledge override this."""
        return self.decode(ids).endswith("\ufffd")


class SentencePieceTokenizer(Tokenizer):
    """A `tokenizer.model` (SentencePiece protobuf) loaded with the sentencepiece library.

    `encode(text)` is exactly `sp.encode(text)` (plus `bos_id` in front when asked); `decode`
    is `sp.decode` after dropping special ids.
    """

    def __init__(self, path, eos_ids=None, add_bos_default: bool = True, bos_id=_FROM_MODEL):
        path = os.fspath(path)
        self.path = path
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.Load(path)
        except (OSError, RuntimeError) as e:  # sentencepiece reports I/O and parse errors alike
            raise ValueError(f"cannot load SentencePiece model {path}: {e}") from None
        sp = self.sp
        self.vocab_size = sp.get_piece_size()
        self.add_bos_default = bool(add_bos_default)
        self._control = frozenset(i for i in range(self.vocab_size) if sp.IsControl(i))
        # byte-fallback pieces "<0xNN>" -> NN, for exact incomplete-UTF-8 detection in streams
        self._byte_of: dict[int, int] = {}
        for b in range(256):
            i = sp.piece_to_id(f"<0x{b:02X}>")
            if sp.IsByte(i):
                self._byte_of[i] = b
        self._set_special(bos_id, eos_ids)

    def _set_special(self, bos_id=_FROM_MODEL, eos_ids=None):
        sp = self.sp
        if bos_id is _FROM_MODEL:
            bos_id = sp.bos_id() if sp.bos_id() >= 0 else None
        self.bos_id = None if bos_id is None else int(bos_id)
        if eos_ids is None:
            eos_ids = [sp.eos_id()] if sp.eos_id() >= 0 else []
        elif isinstance(eos_ids, int):
            eos_ids = [eos_ids]
        self.eos_ids = frozenset(int(i) for i in eos_ids)
        special = set(self._control) | self.eos_ids
        if self.bos_id is not None:
            special.add(self.bos_id)
        self.special_ids = frozenset(special)

    def __repr__(self):
        return (f"SentencePieceTokenizer({self.path!r}, vocab_size={self.vocab_size}, "
                f"bos_id={self.bos_id}, eos_ids={sorted(self.eos_ids)})")

    def encode(self, text: str, add_bos: bool | None = None) -> list[int]:
        ids = self.sp.encode(text)
        if add_bos is None:
            add_bos = self.add_bos_default
        if add_bos and self.bos_id is not None:
            ids.insert(0, self.bos_id)
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        special = self.special_ids
        # Ids at or beyond the SentencePiece vocabulary (a model's padded embedding rows) have no
        # text; dropping them keeps a stray sample from crashing a stream.
        n = self.vocab_size
        keep = [i for i in map(int, ids) if 0 <= i < n and i not in special]
        return self.sp.decode(keep)

    def is_incomplete(self, ids: list[int]) -> bool:
        # Look at the trailing run of byte pieces only: a normal piece always ends a complete
        # character, and sentencepiece's decoder restarts its UTF-8 parse at every lead byte.
        byte_of = self._byte_of
        tail: list[int] = []
        for i in reversed(ids):
            b = byte_of.get(i)
            if b is None or len(tail) == 3:
                break
            tail.append(b)
        tail.reverse()
        for k, b in enumerate(tail):
            if b >= 0xC0:
                need = 2 if b < 0xE0 else 3 if b < 0xF0 else 4
                rest = tail[k + 1:]
                if len(rest) + 1 < need and all(0x80 <= c < 0xC0 for c in rest):
                    return True
        return False


class StreamDecoder:
    """Turns token ids, pushed one at a time, into text that is final.

    Invariant: `"".join(pushes) + flush() == tokenizer.decode(all pushed ids)`; with a prefix,
    `decode(prefix) + that == decode(prefix + pushed)`. Every string `push` returns is whole
    characters: an unfinished multi-byte character is held back until its last byte arrives.
    `flush()` ends the stream (held bytes become U+FFFD); pushing after it raises RuntimeError.

    Each push decodes only a short window: the tokens that produced the previous chunk of text
    (so SentencePiece's "strip the leading space of the first piece" rule cancels out between
    the two decodes being compared) plus the tokens not emitted yet. The cost per push is
    O(window), independent of how long the stream already is.
    """

    def __init__(self, tokenizer: Tokenizer, prefix: Iterable[int] = ()):
        self.tok = tokenizer
        self._skip = tokenizer.special_ids
        self._ids: list[int] = []  # window: context tokens, then pending tokens
        self._start = 0            # _ids[:_start] = context (already emitted), rest pending
        self._ctx_text = ""        # decode(_ids[:_start])
        self._closed = False
        for i in prefix:
            self.push(i)

    def push(self, token_id) -> str:
        if self._closed:
            raise RuntimeError("push() after flush(): start a new stream, e.g. tokenizer.stream(prefix=ids)")
        token_id = int(token_id)
        if token_id in self._skip:
            return ""
        self._ids.append(token_id)
        if self.tok.is_incomplete(self._ids):
            return ""
        return self._emit()

    def flush(self) -> str:
        """Everything still held back; invalid or unfinished byte sequences render as U+FFFD."""
        if self._closed:
            return ""
        self._closed = True
        return self._emit() if self._start < len(self._ids) else ""

    def _emit(self) -> str:
        text = self.tok.decode(self._ids)
        ctx_text = self._ctx_text
        if not text.startswith(ctx_text):  # a decode that rewrites earlier text cannot stream
            raise RuntimeError(f"{type(self.tok).__name__}.decode is not prefix-stable")
        new = text[len(ctx_text):]
        if not new:
            # Nothing visible yet (a lone leading "▁" at the very start of a text): keep the
            # tokens pending so that the window still reproduces decode() from the beginning.
            return ""
        pending = self._ids[self._start:]
        self._ids = pending
        self._start = len(pending)
        self._ctx_text = self.tok.decode(pending)
        return new


def _read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read {path}: {e}") from None
    return data if isinstance(data, dict) else {}


def _ids_from(value) -> list[int]:
    if value is None:
        return []
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, (list, tuple)):
        return [int(v) for v in value if isinstance(v, int) and not isinstance(v, bool)]
    return []


def _token_text(value):
    """tokenizer_config.json writes special tokens as "str" or {"content": "str", ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def load_tokenizer(model_dir) -> Tokenizer:
    """Tokenizer for a Hugging Face-style model directory (or a path to a tokenizer.model).

    bos/eos come from generation_config.json, then config.json (also its "text_config"), then
    tokenizer_config.json ("bos_token"/"eos_token" strings), else from the tokenizer model.
    eos ids from generation_config.json and config.json are merged: generation stops on any.
    tokenizer_config.json's "add_bos_token" sets `add_bos_default`.
    """
    model_dir = os.fspath(model_dir)
    if os.path.isfile(model_dir) and model_dir.endswith(".model"):
        return SentencePieceTokenizer(model_dir)
    sp_path = os.path.join(model_dir, "tokenizer.model")
    if not os.path.isfile(sp_path):
        raise ValueError(f"no tokenizer found in {model_dir} (expected tokenizer.model)")

    gen = _read_json(os.path.join(model_dir, "generation_config.json"))
    cfg = _read_json(os.path.join(model_dir, "config.json"))
    text_cfg = cfg.get("text_config") if isinstance(cfg.get("text_config"), dict) else {}
    tcfg = _read_json(os.path.join(model_dir, "tokenizer_config.json"))

    eos: list[int] = []
    bos = None
    for src in (gen, cfg, text_cfg):
        eos += [i for i in _ids_from(src.get("eos_token_id")) if i not in eos]
        if bos is None and _ids_from(src.get("bos_token_id")):
            bos = _ids_from(src.get("bos_token_id"))[0]

    add_bos = tcfg.get("add_bos_token", True)
    tok = SentencePieceTokenizer(sp_path, add_bos_default=add_bos if isinstance(add_bos, bool) else True)
    sp = tok.sp
    if not eos:
        name = _token_text(tcfg.get("eos_token"))
        if name is not None and sp.piece_to_id(name) != sp.unk_id():
            eos = [sp.piece_to_id(name)]
    if bos is None:
        name = _token_text(tcfg.get("bos_token"))
        if name is not None and sp.piece_to_id(name) != sp.unk_id():
            bos = sp.piece_to_id(name)
    tok._set_special(bos_id=_FROM_MODEL if bos is None else bos, eos_ids=eos or None)
    return tok
