"""Causal attention of a chunk of many queries (prefill) as float tiles: the same arguments and
result as attend.attention, organised like flash attention so that the arithmetic runs on
register tiles (simd.tile_fma*: TILE_ROWS query rows x 16-32 columns, every loaded element
feeding a row of FMAs) instead of one query's dot products at a time.

The query rows of a kv head are its (position, head) pairs, t-major: row i = t * group + g
reads q[t, kvh * group + g] and writes out[t, kvh * group + g] (in place: out holds the
unnormalised sum until the end). Rows go in tiles of TILE_ROWS (the last one repeats its last
row), tiles are dealt round-robin to work units (causal rows later in the chunk see more keys:
dealing evens the work). A unit walks the key blocks of the cache, then of the chunk, of
_BLOCK keys: it stages the block once as float32 (keys transposed and pre-scaled by their
int8 block scales, values as rows; empty slots as zeros, so no garbage is ever multiplied),
then for each of its tiles that can see the block: scores S = Q K^T (tile_fma over the
channels), mask / scale / softcap and the online softmax per row, out += P V (tile_fma over
the block's keys). A row's numbers depend only on the row and the blocks (fixed by position in
the source), never on its tile mates, the unit or the thread count.

Scratch (nothing is allocated): stage float32 (U, >= layout.att_stage_len(D, Dv)), a row per
work unit; rows float32 (2, >= T * Hq), the rows' running maxima and sums; offs int64
(U, 3, >= TILE_ROWS), a tile's row offsets.
"""
import numpy as np

from edgerope.kernels import simd
from edgerope.kernels.attend import _fresh, _logit, _visible
from edgerope.kernels.expf import exp32
from edgerope.kernels.jit import kernel, prange
from edgerope.kernels.kvstore import kv_load, kv_scale
from edgerope.kernels.layout import ATT_BLOCK as _BLOCK
from edgerope.kernels.layout import ATT_MAX_ROWS, KV_BLOCK

MR = simd.TILE_ROWS
NR = simd.TILE_COLS
assert MR <= ATT_MAX_ROWS
MIN_ROWS = 4 * MR  # below this many query rows the per-query kernel is as fast


def tiles_usable(T, Hq, Hkv, Dv, q, out):
    """Whether `attention_tiles` takes a call: enough query rows, Dv a whole number of
    16-wide column tiles, contiguous q and out."""
    return (T * (Hq // Hkv) >= MIN_ROWS and Dv % 16 == 0 and q.flags.c_contiguous
            and out.flags.c_contiguous)


@kernel
def _cols(c, coff, a, aoff, b, boff, ldb, kdim, acc, ncols):
    """ncols (a multiple of 16) columns of C (+)= A B in NR- then 16-wide tiles."""
    j = 0
    if NR == 32:
        while j + 32 <= ncols:
            simd.tile_fma32(c, coff + j, a, aoff, b, boff + j, ldb, kdim, acc)
            j += 32
    while j < ncols:
        simd.tile_fma16(c, coff + j, a, aoff, b, boff + j, ldb, kdim, acc)
        j += 16


@kernel
def _stage(buf, src, kvh, b0, n, D, Dv):
    """Keys b0..b0+n-1 of src (kv head kvh) into buf: K^T at [0, D * _BLOCK) (column j =
    key b0 + j, times its block scale), V at [D * _BLOCK, + _BLOCK * Dv) (row j, scaled);
    columns / rows of empty slots (position < 0) and past n are zeros."""
    kk, vv, ks, vs, kpos = src
    vbase = D * _BLOCK
    for j in range(_BLOCK):
        s = b0 + j
        if j < n and kpos[s] >= 0:
            for d in range(Dv):
                buf[vbase + j * Dv + d] = kv_load(vv, s, kvh, d) * kv_scale(
                    vv, vs, s, kvh, d // KV_BLOCK)
        else:
            for d in range(Dv):
                buf[vbase + j * Dv + d] = 0.0
    for d0 in range(0, D, 16):  # K^T in 16-channel strips: the strip's lines stay in L1
        d1 = min(D, d0 + 16)
        for j in range(_BLOCK):
            s = b0 + j
            if j < n and kpos[s] >= 0:
                for d in range(d0, d1):
                    buf[d * _BLOCK + j] = kv_load(kk, s, kvh, d) * kv_scale(
                        kk, ks, s, kvh, d // KV_BLOCK)
            else:
                for d in range(d0, d1):
                    buf[d * _BLOCK + j] = 0.0


@kernel
def _row(i, kvh, group, Hq):
    """(t, row of q / out flattened to (T * Hq, .)) of query row i of kv head kvh."""
    t = i // group
    return t, t * Hq + kvh * group + i - t * group


@kernel
def _tile_rows(offs, tile, kvh, nrows, group, Hq, D, Dv):
    """offs[0] / offs[1]: q / out element offsets of the tile's rows (the last row repeated
    past nrows), offs[2]: their rows in the score tile (repeats share one); returns the
    number of real rows."""
    n = min(MR, nrows - tile * MR)
    for r in range(MR):
        row = _row(tile * MR + min(r, n - 1), kvh, group, Hq)[1]
        offs[0, r] = row * D
        offs[1, r] = row * Dv
        offs[2, r] = min(r, n - 1) * _BLOCK
    return n


@kernel
def _block(out, q, kpos, b0, n, buf, offs, rows, at, params, D, Dv):
    """One tile (rows in offs, at = (tile, real rows, kv head, group, q_pos, the tile's latest
    position qhi)) against the staged block of keys b0..b0+n-1 (positions kpos[b0:]):
    scores, mask, online softmax, PV."""
    tile, nreal, kvh, group, q_pos, qhi = at
    scale, window, softcap = params
    Hq = q.shape[1]
    neg = np.float32(-np.inf)
    sc = buf[D * _BLOCK + _BLOCK * Dv:]
    o = out.reshape(-1)
    # keys past the last one at or before the tile's latest position are masked for every row
    # (on the causal diagonal, about half the block): neither scored nor summed
    live = 0
    for j in range(n):
        if kpos[b0 + j] >= 0 and kpos[b0 + j] <= qhi:
            live = j + 1
    ncols = min(_BLOCK, (live + 15) // 16 * 16)
    _cols(sc, offs[2], q.reshape(-1), offs[0], buf, 0, _BLOCK, D, False, ncols)  # Q K^T
    for r in range(nreal):
        t, row = _row(tile * MR + r, kvh, group, Hq)
        qp = q_pos[t]
        so = r * _BLOCK
        mb = neg
        for j in range(live):
            a = _logit(sc[so + j], scale, softcap)
            a = a if _visible(kpos[b0 + j], qp, window) else neg
            sc[so + j] = a
            mb = max(mb, a)
        m = rows[0, row]
        if mb > m:
            if m != neg:
                f = exp32(m - mb)
                rows[1, row] *= f
                for d in range(Dv):
                    o[row * Dv + d] *= f
            m = mb
            rows[0, row] = m
        tot = np.float32(0.0)
        if m == neg:  # nothing visible yet
            for j in range(_BLOCK):
                sc[so + j] = 0.0
        else:
            for j in range(live, _BLOCK):
                sc[so + j] = neg
            for j in range(_BLOCK):  # exp(-inf - m) = 0
                p = exp32(sc[so + j] - m)
                sc[so + j] = p
                tot += p
        rows[1, row] += tot
    _cols(o, offs[1], sc, offs[2], buf, D * _BLOCK, Dv, live, True, Dv)  # out += P V


@kernel
def _walk(out, q, src, buf, offs, rows, u, U, kvh, q_pos, params, qmax):
    """Unit u's tiles of kv head kvh against every block of key source src."""
    T, Hq, D = q.shape
    Dv = out.shape[2]
    group = Hq // src[0].shape[0]
    nrows = T * group
    ntiles = (nrows + MR - 1) // MR
    window = params[1]
    kpos = src[4]
    for b0 in range(0, kpos.shape[0], _BLOCK):
        n = min(_BLOCK, kpos.shape[0] - b0)
        kmin = np.int64(1) << 62  # the block's filled positions (kmin > kmax: none)
        kmax = np.int64(-1)
        for j in range(b0, b0 + n):
            if kpos[j] >= 0:
                kmin = min(kmin, kpos[j])
                kmax = max(kmax, kpos[j])
        if kmin > qmax:  # no key of the block visible to any query of the chunk
            continue
        _stage(buf, src, kvh, b0, n, D, Dv)
        for tile in range(u, ntiles, U):
            nreal = _tile_rows(offs, tile, kvh, nrows, group, Hq, D, Dv)
            t0 = (tile * MR) // group
            t1 = (tile * MR + nreal - 1) // group
            qlo, qhi = q_pos[t0], q_pos[t0]
            for t in range(t0 + 1, t1 + 1):
                qlo = min(qlo, q_pos[t])
                qhi = max(qhi, q_pos[t])
            if kmin > qhi or (window > 0 and qlo - kmax >= window):
                continue
            _block(out, q, kpos, b0, n, buf, offs, rows,
                   (tile, nreal, kvh, group, q_pos, qhi), params, D, Dv)


@kernel(parallel=True)
def attention_tiles(out, q, cache, new, params, stage, rows, offs):
    """attend.attention (same out, q, cache, new, params) in float tiles, for chunks of many
    queries (`tiles_usable`); stage, rows, offs: the scratch of the module doc (U = stage.shape[0]
    work units)."""
    k_new, v_new, q_pos = new
    fresh = _fresh(new, cache)
    T, Hq, _ = q.shape
    Hkv = k_new.shape[1]
    Dv = out.shape[2]
    group = Hq // Hkv
    nrows = T * group
    ntiles = (nrows + MR - 1) // MR
    D = q.shape[2]
    if (Dv % 16 or stage.shape[1] < D * _BLOCK + _BLOCK * Dv + MR * _BLOCK
            or offs.shape[0] < stage.shape[0] or offs.shape[1] < 3 or offs.shape[2] < MR
            or rows.shape[0] < 2 or rows.shape[1] < T * Hq or q.strides[2] != 4
            or q.strides[1] != 4 * D or q.strides[0] != 4 * Hq * D or out.strides[2] != 4
            or out.strides[1] != 4 * Dv or out.strides[0] != 4 * Hq * Dv):
        raise ValueError("attention_tiles: scratch too small, Dv not a multiple of 16, or "
                         "q / out not contiguous")
    U = min(stage.shape[0], ntiles)
    scale, window, softcap = params
    prm = (np.float32(scale), window, np.float32(softcap))
    qmax = q_pos[0]
    for t in range(T):
        qmax = max(qmax, q_pos[t])
    neg = np.float32(-np.inf)
    o = out.reshape(-1)
    for u in prange(U):
        buf = stage[u]
        of = offs[u]
        for kvh in range(Hkv):
            for i in range(u * MR, nrows, U * MR):  # the unit's rows: tiles u, u + U, ...
                for r in range(i, min(nrows, i + MR)):
                    row = _row(r, kvh, group, Hq)[1]
                    rows[0, row] = neg
                    rows[1, row] = 0.0
                    for d in range(Dv):
                        o[row * Dv + d] = 0.0
            _walk(out, q, cache, buf, of, rows, u, U, kvh, q_pos, prm, qmax)
            _walk(out, q, fresh, buf, of, rows, u, U, kvh, q_pos, prm, qmax)
            for i in range(u * MR, nrows, U * MR):
                for r in range(i, min(nrows, i + MR)):
                    row = _row(r, kvh, group, Hq)[1]
                    inv = np.float32(1.0) / rows[1, row] if rows[1, row] > 0 else np.float32(0)
                    for d in range(Dv):
                        o[row * Dv + d] *= inv
