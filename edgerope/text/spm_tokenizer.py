"""`SentencePieceTokenizer`: a SentencePiece model (a Hugging Face `tokenizer.model`, or the
ModelProto edgerope.text.spm_proto builds from a GGUF `llama` vocabulary) run by the
sentencepiece library, behind the `Tokenizer` interface.

Owns: the special-token partition for SentencePiece pieces (control and unknown pieces are
parsed with `special=True`, user-defined ones always), byte-exact detection of an unfinished
UTF-8 character at the end of a stream, dropping ids beyond the model's vocabulary when decoding.
Does not own: which files hold the model or its bos/eos ids (edgerope.text.tokenizer,
edgerope.text.gguf_vocab).
"""
from __future__ import annotations

import os
from typing import Iterable

import sentencepiece as spm

from edgerope.errors import TokenizerError
from edgerope.text.spm_proto import BYTE, CONTROL, UNKNOWN, USER_DEFINED, proto_piece_types
from edgerope.text.tokenizer_base import (BYTE_PIECE, Tokenizer, first_line, sorted_specials,
                                          split_special, write_json)

__all__ = ["SentencePieceTokenizer"]

_FROM_MODEL = object()  # sentinel: "take this id from the tokenizer model itself"


class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece model (a `tokenizer.model` file, or serialized ModelProto bytes built from
    a GGUF vocabulary) run by the sentencepiece library.

    Raw text between special-token matches is exactly `sp.encode(piece)`, so plain text without
    special-token text encodes as `sp.encode(text)` (plus `bos_id` in front when asked); `decode`
    is `sp.decode` after dropping special ids.
    """

    def __init__(self, path=None, eos_ids=None, add_bos_default: bool = True, bos_id=_FROM_MODEL,
                 *, model_proto: bytes | None = None, chat_template: str | None = None,
                 chat_template_origin: str | None = None,
                 piece_types: dict[int, int] | None = None):
        self.sp = spm.SentencePieceProcessor()
        self.chat_template_origin = chat_template_origin
        if model_proto is not None:
            self.path = None
            try:
                self.sp.LoadFromSerializedProto(bytes(model_proto))
            except Exception as e:  # noqa: BLE001 - the library's message, whatever it raises
                raise TokenizerError(f"cannot load SentencePiece model: "
                                     f"{first_line(e)}") from None
        else:
            if path is None:
                raise TokenizerError("SentencePieceTokenizer needs a path or model_proto")
            path = os.fspath(path)
            self.path = path
            try:
                self.sp.Load(path)
            except Exception as e:  # noqa: BLE001 - I/O and parse errors alike
                raise TokenizerError(f"{path}: cannot load SentencePiece model: "
                                     f"{first_line(e)}") from None
        sp = self.sp
        self.vocab_size = sp.get_piece_size()
        self.add_bos_default = bool(add_bos_default)
        self.chat_template = chat_template
        # piece_types ({id: type} of the non-NORMAL pieces) spares parsing the proto again
        if piece_types is None:
            piece_types = proto_piece_types(sp.serialized_model_proto())
        types = piece_types
        self._control = frozenset(i for i, t in types.items() if t in (UNKNOWN, CONTROL))
        # User-defined pieces are matched in the raw text (a "▁" in them stands for a space:
        # Hugging Face files store Gemma's "▁▁", GGUF files "  ").
        self._user = [(sp.id_to_piece(i).replace("\u2581", " "), i)
                      for i, t in types.items() if t == USER_DEFINED]
        self._user_sorted = sorted_specials(self._user)
        self._extra_control: list[tuple[str, int]] = []
        self._all_sorted = self._sort_all()
        # byte-fallback pieces "<0xNN>" -> NN, for exact incomplete-UTF-8 detection in streams
        self._byte_of: dict[int, int] = {}
        for i, t in types.items():
            if t == BYTE:
                piece = sp.id_to_piece(i)
                if not BYTE_PIECE.fullmatch(piece):
                    where = f"{self.path}: " if self.path else ""
                    raise TokenizerError(f"{where}piece {i} {piece!r} has the byte type but is "
                                         "not of the form <0xXX>")
                self._byte_of[i] = int(piece[3:5], 16)
        self.set_special(bos_id, eos_ids)

    def _sort_all(self):
        control = [(self.sp.id_to_piece(i), i) for i in self._control]
        return sorted_specials(self._user + control + self._extra_control)

    def add_control(self, token_id: int) -> None:
        """Treat an existing piece as a control token (tokenizer_config.json "special": true)."""
        if token_id not in self._control:
            self._extra_control.append((self.sp.id_to_piece(token_id), int(token_id)))
            self._control = self._control | {int(token_id)}
            self._all_sorted = self._sort_all()
            self.special_ids = self.special_ids | {int(token_id)}

    def set_special(self, bos_id=_FROM_MODEL, eos_ids=None) -> None:
        """Set the bos id and the end-of-generation ids (primary first); by default the
        model's own (its TrainerSpec bos_id / eos_id)."""
        sp = self.sp
        if bos_id is _FROM_MODEL:
            bos_id = sp.bos_id() if sp.bos_id() >= 0 else None
        if eos_ids is None:
            eos_ids = [sp.eos_id()] if sp.eos_id() >= 0 else []
        self._set_ids(bos_id, eos_ids, self._control)

    def __repr__(self):
        src = self.path if self.path is not None else "<model_proto>"
        return (f"SentencePieceTokenizer({src!r}, vocab_size={self.vocab_size}, "
                f"bos_id={self.bos_id}, eos_ids={sorted(self.eos_ids)})")

    def encode(self, text: str, add_bos: bool | None = None, special: bool = False) -> list[int]:
        specials = self._all_sorted if special else self._user_sorted
        if not specials:
            return self._add_bos(self.sp.encode(text), add_bos)
        ids: list[int] = []
        for frag in split_special(text, specials):
            if isinstance(frag, int):
                ids.append(frag)
            else:  # every raw piece starts the text or follows a token: llama.cpp gives each
                ids += self.sp.encode(frag)  # its own space prefix, as sp's dummy prefix does
        return self._add_bos(ids, add_bos)

    def decode(self, ids: Iterable[int]) -> str:
        special = self.special_ids
        # Ids at or beyond the SentencePiece vocabulary (a model's padded embedding rows) have no
        # text; dropping them keeps a stray sample from crashing a stream.
        n = self.vocab_size
        keep = [i for i in map(int, ids) if 0 <= i < n and i not in special]
        return self.sp.decode(keep)

    def token_text(self, token_id: int) -> str:
        return self.sp.id_to_piece(int(token_id))

    def token_id(self, text: str) -> int | None:
        i = self.sp.piece_to_id(text)  # the unknown piece's id when `text` is not a piece
        return i if self.sp.id_to_piece(i) == text else None

    def save(self, directory) -> None:
        directory = os.fspath(directory)
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, "tokenizer.model"), "wb") as f:
            f.write(self.sp.serialized_model_proto())
        cfg = self._config()
        cfg["added_tokens_decoder"] = {str(i): {"content": t, "special": True}
                                       for t, i in self._extra_control}
        write_json(os.path.join(directory, "tokenizer_config.json"), cfg)

    def _token_bytes(self) -> list[bytes]:
        sp, out = self.sp, []
        for i in range(self.vocab_size):
            piece = sp.id_to_piece(i)
            if i in self._byte_of:
                out.append(bytes([self._byte_of[i]]))
            elif i in self.special_ids or i in self._control:
                out.append(b"\xff" + piece.encode("utf-8"))
            else:
                out.append(piece.replace("\u2581", " ").encode("utf-8"))
        return out

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
