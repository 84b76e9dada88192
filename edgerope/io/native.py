"""edgerope's own on-disk format: a directory that loads with no conversion work.

    config.json             Hugging Face-style config (what edgerope.archs.config parses)
    model.safetensors       tensors by internal name; metadata["edgerope"] = JSON below
    tokenizer.model | tokenizer.json, tokenizer_config.json (chat template, bos/eos)

Matmul weights are stored exactly as they are held in memory: int8 in the packed Q8 layout
(`<name>.wp` uint8 (G, nb, 512) and `<name>.wsp` F16 (G, nb, 16), the fp16 block scales,
held in memory as their uint16 bit patterns; 8.5 bits a weight, see edgerope.formats.q8;
logical shapes in the metadata), int4 in the packed Q4_0 layout (`<name>.wp` (G, nb, 256),
two codes a byte, same `.wsp`; 4.5 bits a weight, edgerope.formats.q4) or float32
`<name>.w`, so loading is a memory map: no
dequantization, no requantization, no repacking, resident memory only for the pages touched.
Norms keep their kind (Gemma GGUF norms are stored as 1 + w), biases and norm weights are
float32.

Format versions: 3 = fp16 scales; 2 (float32 scales, 9 bits a weight) is refused with a
message to convert again (the registry's conversion cache does that by itself).

Writing is atomic: everything goes to a temporary sibling directory that is renamed into
place at the end, so an interrupted conversion never leaves a directory that loads. The
temporary directory's name carries the writer's pid (`.tmp-<name>-pid<pid>-<random>`); the
next conversion into the same parent removes those whose writer is gone (killed), and nothing
else (`remove_stale_tmp`).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time

import numpy as np

from edgerope.io.checkpoint import (LayerWeights, ModelWeights, MoEWeights, Norm, PLEWeights,
                         warn_unused)
from edgerope.errors import WeightsError
from edgerope.formats.q4 import BLOCK_BYTES as Q4_BLOCK_BYTES
from edgerope.formats.q8 import BLOCK_BYTES as Q8_BLOCK_BYTES
from edgerope.formats import Stack
from edgerope.formats.pages import in_weight_memory
from edgerope.formats.q8 import ScaleRangeError, aligned_copy
from edgerope.formats.linear import Linear
from edgerope.kernels.layout import GEOMETRY, packed_shape
from edgerope.io.safetensors import Checkpoint, write_aligned

FORMAT = "edgerope"
VERSION = 3
# packed bytes per block a model of each dtype may hold (int4 models keep int8 embeddings)
_BLOCK_BYTES = {"int8": (Q8_BLOCK_BYTES,), "int4": (Q4_BLOCK_BYTES, Q8_BLOCK_BYTES),
                "auto": (Q4_BLOCK_BYTES, Q8_BLOCK_BYTES)}  # auto: others name their format
_LAYER_LINEARS = ("wqkv", "wo", "w_in", "w_down")
_LAYER_NORMS = ("attn_norm", "ffn_norm", "q_norm", "k_norm", "post_attn_norm", "post_ffn_norm",
                "ple_post_norm")
_MOE_NORMS = ("post_norm_1", "pre_norm_2", "post_norm_2")


def is_native(path: str) -> bool:
    st = os.path.join(path, "model.safetensors")
    if not os.path.isfile(st):
        return False
    try:
        return FORMAT in Checkpoint(path).metadata
    except WeightsError:
        return False


def _put_linear(out: dict, shapes: dict, name: str, lin: Linear) -> None:
    if isinstance(lin, Stack):  # parts of different formats: name.0, name.1, ...
        shapes[name] = {"parts": len(lin.parts)}
        for i, part in enumerate(lin.parts):
            _put_linear(out, shapes, f"{name}.{i}", part)
        return
    shapes[name] = [lin.out_features, lin.in_features]
    if lin.fmt not in (None, "q8", "q4"):  # ggml's other layouts, by name
        shapes[name].append(lin.fmt)
    if lin.w is not None:
        out[name + ".w"] = np.ascontiguousarray(lin.w)
    else:
        out[name + ".wp"] = np.ascontiguousarray(lin.wp)
        out[name + ".wsp"] = np.ascontiguousarray(lin.wsp).view(np.float16)  # F16, bit for bit
    if lin.bias is not None:
        out[name + ".bias"] = lin.bias


def _put_norm(out: dict, kinds: dict, name: str, n: Norm | None) -> None:
    if n is None:
        return
    out[name + ".weight"] = np.ascontiguousarray(n.weight, dtype=np.float32)
    out[name + ".bias"] = np.ascontiguousarray(n.bias, dtype=np.float32)
    kinds[name] = [n.kind, n.eps]


def native_tensors(W: ModelWeights) -> tuple[dict, dict, dict]:
    """(tensors by stored name, norm kinds, logical matrix shapes) of weights as this format
    stores them (a tied head is stored once, as the embedding)."""
    tensors, kinds, shapes = {}, {}, {}
    _put_linear(tensors, shapes, "embed", W.embed)
    if W.lm_head is not W.embed:
        _put_linear(tensors, shapes, "lm_head", W.lm_head)
    _put_norm(tensors, kinds, "out_norm", W.out_norm)
    if W.ple is not None:
        _put_linear(tensors, shapes, "ple.embed", W.ple.embed)
        _put_linear(tensors, shapes, "ple.proj", W.ple.proj)
        _put_norm(tensors, kinds, "ple.norm", W.ple.norm)
    for i, lw in enumerate(W.layers):
        p = f"layers.{i}."
        for key in _LAYER_LINEARS + ("ple_gate", "ple_out"):
            if getattr(lw, key, None) is not None:
                _put_linear(tensors, shapes, p + key, getattr(lw, key))
        for key in _LAYER_NORMS:
            _put_norm(tensors, kinds, p + key, getattr(lw, key))
        if lw.layer_scalar != 1.0:
            tensors[p + "layer_scalar"] = np.array([lw.layer_scalar], np.float32)
        m = lw.moe
        if m is not None:
            _put_linear(tensors, shapes, p + "moe.router", m.router)
            tensors[p + "moe.router_scale"] = np.ascontiguousarray(m.router_scale, np.float32)
            tensors[p + "moe.expert_scale"] = np.ascontiguousarray(m.expert_scale, np.float32)
            for e, (a, b) in enumerate(zip(m.w_in, m.w_down)):
                _put_linear(tensors, shapes, f"{p}moe.w_in.{e}", a)
                _put_linear(tensors, shapes, f"{p}moe.w_down.{e}", b)
            for key in _MOE_NORMS:
                _put_norm(tensors, kinds, f"{p}moe.{key}", getattr(m, key))
    return tensors, kinds, shapes


def save_native(model, dst: str, overwrite: bool = False) -> str:
    """Write `model` (any loaded Model) as an edgerope directory at `dst`, atomically."""
    dst = os.path.abspath(dst)
    if os.path.exists(dst) and not overwrite:
        raise WeightsError(f"{dst}: already exists (use --overwrite to replace it)")
    parent = os.path.dirname(dst)
    os.makedirs(parent, exist_ok=True)
    W: ModelWeights = model.weights
    tensors, kinds, shapes = native_tensors(W)
    tied = W.lm_head is W.embed
    meta = {FORMAT: json.dumps({"version": VERSION, "dtype": model.dtype, "tied": tied,
                                "norms": kinds, "shapes": shapes})}
    remove_stale_tmp(parent, os.path.basename(dst))
    tmp = tempfile.mkdtemp(prefix=f".tmp-{os.path.basename(dst)}-pid{os.getpid()}-", dir=parent)
    try:
        write_aligned(os.path.join(tmp, "model.safetensors"), tensors, meta)
        with open(os.path.join(tmp, "config.json"), "w", encoding="utf-8") as f:
            json.dump(model.config_dict, f, indent=2)
        if model.tokenizer is not None:
            model.tokenizer.save(tmp)
        if os.path.exists(dst):
            shutil.rmtree(dst)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's 0700 would hide the model from other users
        os.replace(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dst


_TMP_PID = re.compile(r"\.tmp-.+-pid(\d+)-[a-z0-9_]{8}")  # tempfile.mkdtemp's 8 random chars
_LEGACY_AGE = 3600.0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # exists (another user's), or not a pid we can judge: keep
    return True


def _last_write(path: str) -> float:
    times = [os.path.getmtime(path)]
    for d, _, files in os.walk(path):
        times += [os.path.getmtime(os.path.join(d, f)) for f in files]
    return max(times)


def remove_stale_tmp(parent: str, name: str | None = None) -> list[str]:
    """Remove the temporary directories killed conversions left in `parent`: every
    `.tmp-<any>-pid<pid>-xxxxxxxx` directory whose pid no longer exists, and (older edgerope
    versions, no pid in the name) `.tmp-<name>-xxxxxxxx` ones nothing wrote to for an hour.
    Returns the paths removed; anything else is never touched."""
    removed = []
    legacy = re.compile(re.escape(f".tmp-{name}-") + r"[a-z0-9_]{8}") if name else None
    try:
        entries = os.listdir(parent)
    except OSError:
        return removed
    for entry in entries:
        path = os.path.join(parent, entry)
        if not entry.startswith(".tmp-") or os.path.islink(path) or not os.path.isdir(path):
            continue
        try:
            m = _TMP_PID.fullmatch(entry)
            if m:
                stale = not _pid_alive(int(m.group(1)))
            elif legacy is not None and legacy.fullmatch(entry):
                stale = time.time() - _last_write(path) > _LEGACY_AGE
            else:
                continue
            if stale:
                shutil.rmtree(path)
                removed.append(path)
        except OSError:
            continue  # vanished meanwhile, or not ours to remove: leave it
    return removed


def load_native(ck: Checkpoint, cfg, dtype: str, mapped: bool = True) -> ModelWeights:
    """Weights of an edgerope directory, memory-mapped (zero-copy; `mapped` False: copied
    into weight memory, edgerope.formats.pages, so nothing refers to the file). float32
    weights can be quantized to int8 at load; int8 weights cannot become float32. `ck` is the
    directory's already-opened Checkpoint (its metadata says it is ours)."""
    path = ck.dir
    try:
        meta = json.loads(ck.metadata[FORMAT])
        version = meta.get("version")
        kinds, shapes = meta["norms"], meta["shapes"]
    except (KeyError, ValueError, TypeError, AttributeError):
        raise WeightsError(f"{path}: malformed edgerope metadata") from None
    if version != VERSION:
        age = "an older" if isinstance(version, int) and version < VERSION else "another"
        raise WeightsError(f"{path}: written by {age} edgerope (format version {version}, this "
                           f"one reads {VERSION}); convert the original model again (edgerope convert)")
    stored = meta.get("dtype")
    if stored != "float32" and dtype != stored and dtype != "auto":
        raise WeightsError(f"{path}: holds {stored} weights, not {dtype} "
                           f"(convert the original model again with --dtype {dtype})")

    used = set()  # tensors read; the rest are reported as unused

    def raw(name):
        used.add(name)
        return ck.raw(name)

    def own(a):  # what the weights keep of a tensor: the file's bytes, or a copy
        return a if mapped or a is None else in_weight_memory(np.ascontiguousarray(a))

    def lin(name, keep_float: bool = False) -> Linear:
        if isinstance(shapes.get(name), dict):
            n = shapes[name].get("parts")
            if not isinstance(n, int) or n < 1:
                raise WeightsError(f"{path}: malformed stack record for tensor '{name}'")
            return Stack([lin(f"{name}.{i}", keep_float) for i in range(n)])
        bias = own(raw(name + ".bias")) if name + ".bias" in ck else None
        if name + ".wp" in ck:
            if name not in shapes:
                raise WeightsError(f"{path}: no shape recorded for tensor '{name}'")
            shape = shapes[name]
            fmt = shape[2] if len(shape) == 3 else None
            if fmt is not None and (fmt not in GEOMETRY or stored not in ("auto", "float32")):
                raise WeightsError(f"{path}: tensor '{name}' has unknown format {fmt!r}")
            if (ck.dtype(name + ".wp") != "U8" or name + ".wsp" not in ck
                    or ck.dtype(name + ".wsp") != "F16"):
                raise WeightsError(f"{path}: tensors '{name}.wp', '{name}.wsp' must be U8 "
                                   f"and F16")
            wp, wsp = raw(name + ".wp"), raw(name + ".wsp").view(np.uint16)
            if ((wsp & 0x7C00) == 0x7C00).any():  # fp16 exponent all ones: inf or NaN
                raise WeightsError(f"{path}: tensor '{name}.wsp' holds NaN or infinite scales")
            want = packed_shape(*shape[:2], fmt or "q8")
            geo = GEOMETRY[fmt or "q8"]
            blocks = (geo.block_bytes,) if fmt else _BLOCK_BYTES.get(stored, ())
            if (wp.ndim != 3 or wp.shape[:2] != want or wp.shape[2] not in blocks
                    or wsp.shape != (*want, geo.wsp_rows)):
                raise WeightsError(f"{path}: tensor '{name}.wp' has shape {list(wp.shape)} "
                                   f"('{name}.wsp' {list(wsp.shape)}), expected "
                                   f"[{want[0]}, {want[1]}, {' or '.join(map(str, blocks))}] "
                                   f"for {stored} weights of shape {shapes[name]}")
            if wp.ctypes.data % 64:  # written by another tool: 64-byte loads need alignment
                wp = aligned_copy(wp)
            wp, wsp = own(wp), own(wsp)
            return Linear(wp=wp, wsp=wsp, shape=tuple(shape[:2]), fmt=fmt, bias=bias)
        if name + ".w" in ck:
            if dtype != "float32" and not keep_float:
                try:
                    return Linear.from_float(raw(name + ".w"), dtype, bias)
                except ScaleRangeError as e:
                    raise WeightsError(f"{path}: tensor '{name}.w': {e}") from None
            return Linear(w=own(raw(name + ".w")), bias=bias)
        raise WeightsError(f"{path}: tensor '{name}' is missing")

    def norm(name) -> Norm | None:
        if name not in kinds:
            return None
        kind, eps = kinds[name]
        w, b = own(raw(name + ".weight")), own(raw(name + ".bias"))
        for t, a in ((".weight", w), (".bias", b)):
            if not np.isfinite(a).all():
                raise WeightsError(f"{path}: tensor '{name}{t}' holds NaN or infinite values")
        return Norm(kind, w, b, float(eps))

    def vector(name, n) -> np.ndarray:
        if name not in ck:
            raise WeightsError(f"{path}: tensor '{name}' is missing")
        a = raw(name)
        if a.shape != (n,) or not np.isfinite(a).all():
            raise WeightsError(f"{path}: tensor '{name}' must be {n} finite values")
        return own(a)

    embed = lin("embed")
    layers = []
    for i in range(cfg.num_hidden_layers):
        p = f"layers.{i}."
        lw = LayerWeights(
            attn_norm=norm(p + "attn_norm"), **{k: lin(p + k) for k in _LAYER_LINEARS},
            **{k: norm(p + k) for k in _LAYER_NORMS if k != "attn_norm"})
        if cfg.layer_scalar and p + "layer_scalar" in ck:
            lw.layer_scalar = float(vector(p + "layer_scalar", 1)[0])
        if cfg.ple_dim:
            lw.ple_gate, lw.ple_out = lin(p + "ple_gate"), lin(p + "ple_out")
        if cfg.moe is not None:
            E = cfg.moe.num_experts
            lw.moe = MoEWeights(
                router=lin(p + "moe.router", keep_float=True),  # float32, as at load
                router_scale=vector(p + "moe.router_scale", cfg.hidden_size),
                expert_scale=vector(p + "moe.expert_scale", E),
                w_in=[lin(f"{p}moe.w_in.{e}") for e in range(E)],
                w_down=[lin(f"{p}moe.w_down.{e}") for e in range(E)],
                **{k: norm(f"{p}moe.{k}") for k in _MOE_NORMS})
        layers.append(lw)
    ple = None
    if cfg.ple_dim:
        ple = PLEWeights(embed=lin("ple.embed"), proj=lin("ple.proj"), norm=norm("ple.norm"))
    W = ModelWeights(embed=embed, layers=layers, out_norm=norm("out_norm"),
                     lm_head=embed if meta.get("tied") else lin("lm_head"), ple=ple)
    _check_norms(W, cfg, path)
    _check_shapes(W, cfg, path)
    warn_unused(ck.files[0].path, set(ck.names()) - used, cfg.model_type)
    return W


def required_norms(cfg) -> tuple[str, ...]:
    """The per-layer norms the forward pass of this architecture reads."""
    need = ["attn_norm"] if cfg.pre_norm else []
    if cfg.pre_norm and not (cfg.residual == "parallel" and cfg.shared_norm):
        need.append("ffn_norm")
    if cfg.sandwich:
        need += ["post_attn_norm", "post_ffn_norm"]
    if cfg.qk_norm:
        need += ["q_norm", "k_norm"]
    if cfg.ple_dim:
        need.append("ple_post_norm")
    return tuple(need)


def _check_norms(W: ModelWeights, cfg, path: str) -> None:
    if W.out_norm is None:
        raise WeightsError(f"{path}: norm 'out_norm' is missing")
    for i, lw in enumerate(W.layers):
        for key in required_norms(cfg):
            if key == "k_norm" and not cfg.stores_kv(i):
                continue  # reads another layer's keys
            if getattr(lw, key) is None:
                raise WeightsError(f"{path}: norm 'layers.{i}.{key}' is missing")
        if lw.moe is not None and None in [getattr(lw.moe, k) for k in _MOE_NORMS]:
            raise WeightsError(f"{path}: a norm of 'layers.{i}.moe' is missing")
    if cfg.ple_dim and W.ple.norm is None:
        raise WeightsError(f"{path}: norm 'ple.norm' is missing")


def _check_shapes(W: ModelWeights, cfg, path: str) -> None:
    H, V, P = cfg.hidden_size, cfg.vocab_size, cfg.ple_dim
    gate = 2 if cfg.mlp == "gated" else 1
    want = {"embed": (W.embed, (V, H)), "lm_head": (W.lm_head, (V, H))}
    if P:
        LP = cfg.num_hidden_layers * P
        want["ple.embed"] = (W.ple.embed, (cfg.ple_vocab, LP))
        want["ple.proj"] = (W.ple.proj, (LP, H))
    for i, lw in enumerate(W.layers):
        q, I = cfg.q_dim_of(i), cfg.layer_ffn[i]
        kv = 0 if not cfg.stores_kv(i) else cfg.kv_dim_of(i) * (1 if cfg.k_eq_v[i] else 2)
        want[f"layers.{i}.wqkv"] = (lw.wqkv, (q + kv, H))
        want[f"layers.{i}.wo"] = (lw.wo, (H, q))
        want[f"layers.{i}.w_in"] = (lw.w_in, (gate * I, H))
        want[f"layers.{i}.w_down"] = (lw.w_down, (H, I))
        if P:
            want[f"layers.{i}.ple_gate"] = (lw.ple_gate, (P, H))
            want[f"layers.{i}.ple_out"] = (lw.ple_out, (H, P))
        if lw.moe is not None:
            E, Ie = cfg.moe.num_experts, cfg.moe.intermediate_size
            want[f"layers.{i}.moe.router"] = (lw.moe.router, (E, H))
            for e in range(E):
                want[f"layers.{i}.moe.w_in.{e}"] = (lw.moe.w_in[e], (2 * Ie, H))
                want[f"layers.{i}.moe.w_down.{e}"] = (lw.moe.w_down[e], (H, Ie))
    for name, (lin, shape) in want.items():
        got = (lin.out_features, lin.in_features)
        if got != shape:
            raise WeightsError(f"{path}: tensor '{name}' has shape {list(got)}, expected "
                               f"{list(shape)}")
