"""SentencePiece `ModelProto` bytes, written and read by hand (the protobuf runtime is not a
dependency): `spm_proto_from_vocab` turns a GGUF `llama` vocabulary (tokens, scores, token
types) into a model the sentencepiece library loads; `proto_piece_types` reads back which pieces
are not NORMAL (sentencepiece's Python API cannot tell user-defined pieces apart).

Owns: the token-type numbers (GGUF's llama_token_type and SentencePiece's are the same) and the
proto layout. Does not own: running the model (edgerope.text.spm_tokenizer), reading GGUF
metadata (edgerope.text.gguf_vocab).

Field numbers from sentencepiece_model.proto: ModelProto{pieces=1, trainer_spec=2,
normalizer_spec=3}; SentencePiece{piece=1, score=2, type=3}; TrainerSpec{model_type=3,
vocab_size=4, byte_fallback=35, unk_id=40, bos_id=41, eos_id=42, pad_id=43, unk_piece=45,
bos_piece=46, eos_piece=47, pad_piece=48}; NormalizerSpec{name=1, add_dummy_prefix=3,
remove_extra_whitespaces=4, escape_whitespaces=5}.
"""
from __future__ import annotations

import numpy as np

from edgerope.errors import TokenizerError

__all__ = ["NORMAL", "UNKNOWN", "CONTROL", "USER_DEFINED", "UNUSED", "BYTE",
           "spm_proto_from_vocab", "vocab_piece_types", "proto_piece_types"]

# GGUF token types (llama.cpp's llama_token_type); SentencePiece uses the same numbers.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


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


def vocab_piece_types(types, unk_id) -> dict[int, int]:
    """{id: type} of the pieces `spm_proto_from_vocab` writes with a type other than NORMAL."""
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


def proto_piece_types(blob: bytes) -> dict[int, int]:
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
