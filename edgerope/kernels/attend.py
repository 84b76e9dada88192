"""Causal multi-head attention of a chunk of queries over a position-tagged KV cache plus the
chunk's own keys / values, with grouped-query heads, sliding windows and logit soft-capping.

Keys carry explicit positions (cache slot s holds position cache_pos[s], -1 = empty; new key j
holds q_pos[j]), so ring buffers, shifted caches and arbitrary chunk positions need no special
cases: a key at kp is visible to a query at qp iff 0 <= kp <= qp and
(window <= 0 or qp - kp < window).

Keys are consumed in blocks of _KEY_BLOCK with an online (rescaled) softmax, and the query
heads sharing a kv head (up to _RUN of them) walk the blocks together, so each K / V block is
read from memory once per run instead of once per head. Each head's arithmetic does not depend
on which heads share its run or chunk, hence results do not depend on the thread count.

Arguments travel in small tuples (Numba passes them by value; LLVM scalarizes them, nothing is
allocated): the public kernels take cache = (k_cache, v_cache, k_scale, v_scale, cache_pos),
new = (k_new, v_new, q_pos) and params = (scale, window, softcap); inside, a key source is
src = (kk, vv, ks, vs, kpos) (the cache, or the new chunk with the cache's scales, unread for
its float32 keys; keys and values head-major, [kv head, slot, channel], as the cache holds
them, the chunk's as transposed views: `_fresh`; its keys are slots 0..len(kpos)-1), the mask of one query is mask = (qp, scale, window, softcap), a query head
is at = (t, h, kvh) (query t, head h, the kv head it reads) and a run's scratch views are
work = (scores, maxima, sums).
"""
import numpy as np

from edgerope.kernels.expf import exp32
from edgerope.kernels.jit import kernel, prange
from edgerope.kernels.kvstore import (kv_ahead, kv_axpy, kv_axpy4, kv_axpy4x4, kv_dot, kv_dot4,
                                      kv_dot4x4, kv_prefetch, kv_pv4, kv_quad_plan)
from edgerope.kernels.simd import dot4x4, prefetch

_KEY_BLOCK = 128  # keys per block: K and V blocks (128 x D floats each) stay in L2
_RUN = 8          # max query heads walking the key blocks together
DECODE_SPLIT = 64  # decoding: cache slots a part, when one query's keys are split over units


@kernel
def _visible(kp, qp, window):
    return kp >= 0 and kp <= qp and (window <= 0 or qp - kp < window)


@kernel
def _visible4(kpos, j, qp, window):
    return (_visible(kpos[j], qp, window), _visible(kpos[j + 1], qp, window),
            _visible(kpos[j + 2], qp, window), _visible(kpos[j + 3], qp, window))


@kernel
def _logit(a, scale, softcap):
    a *= scale
    if softcap > 0:
        a = softcap * np.tanh(a / softcap)
    return a


@kernel
def _scores(sc, q, at, src, b0, b1, mask):
    """sc[j - b0] = logit of key j in [b0, b1) of src for query head at, -inf if not visible;
    returns the max. Four keys per pass share each q load. src's keys kk: any KV element type
    (kvstore), ks their int8 scales."""
    t, h, kvh = at
    kk, _, ks, _, kpos = src
    qp, scale, window, softcap = mask
    neg = np.float32(-np.inf)
    mb = neg
    ahead = kv_ahead(kk)
    j = b0
    while j < b1:
        if j + 4 <= b1:
            kv_prefetch(kk, j + ahead, kvh)
            v0, v1, v2, v3 = _visible4(kpos, j, qp, window)
            if v0 or v1 or v2 or v3:
                a0, a1, a2, a3 = kv_dot4(q, t, h, kk, ks, j, kvh)
                a0 = _logit(a0, scale, softcap) if v0 else neg
                a1 = _logit(a1, scale, softcap) if v1 else neg
                a2 = _logit(a2, scale, softcap) if v2 else neg
                a3 = _logit(a3, scale, softcap) if v3 else neg
                sc[j - b0] = a0
                sc[j - b0 + 1] = a1
                sc[j - b0 + 2] = a2
                sc[j - b0 + 3] = a3
                mb = max(mb, max(max(a0, a1), max(a2, a3)))
            else:
                for i in range(4):
                    sc[j - b0 + i] = neg
            j += 4
        else:
            if _visible(kpos[j], qp, window):
                a = _logit(kv_dot(q, t, h, kk, ks, j, kvh), scale, softcap)
                sc[j - b0] = a
                mb = max(mb, a)
            else:
                sc[j - b0] = neg
            j += 1
    return mb


@kernel
def _fold(out, at, src, sc, b0, b1, m):
    """out[t, h] += sum_j exp(sc[j - b0] - m) v[j] over visible keys j in [b0, b1) of src;
    returns the weight sum. Masked keys are skipped, never multiplied by 0: empty slots may
    hold garbage."""
    t, h, kvh = at
    _, vv, _, vs, _ = src
    neg = np.float32(-np.inf)
    tot = np.float32(0.0)
    ahead = kv_ahead(vv)
    j = b0
    while j < b1:
        i = j - b0
        kv_prefetch(vv, j + ahead, kvh)
        if j + 4 <= b1 and sc[i] != neg and sc[i + 1] != neg and sc[i + 2] != neg \
                and sc[i + 3] != neg:
            p0 = exp32(sc[i] - m)
            p1 = exp32(sc[i + 1] - m)
            p2 = exp32(sc[i + 2] - m)
            p3 = exp32(sc[i + 3] - m)
            tot += (p0 + p1) + (p2 + p3)
            kv_axpy4(out, t, h, p0, p1, p2, p3, vv, vs, j, kvh)
            j += 4
        else:
            if sc[i] != neg:
                p = exp32(sc[i] - m)
                tot += p
                kv_axpy(out, t, h, p, vv, vs, j, kvh)
            j += 1
    return tot


@kernel
def _head_block(out, q, at, src, b0, b1, mask, sc, m, l):
    """Fold keys [b0, b1) of src into head at's running max m and weight sum l."""
    t, h, _ = at
    mb = _scores(sc, q, at, src, b0, b1, mask)
    if mb == -np.inf:
        return m, l
    if mb > m:
        if m != -np.inf:
            f = exp32(m - mb)
            l *= f
            for d in range(out.shape[2]):
                out[t, h, d] *= f
        m = mb
    return m, l + _fold(out, at, src, sc, b0, b1, m)


@kernel
def _quad_scores(sc, q, at, src, b0, b1, mask):
    """Scores of heads h..h+3 (at = (t, h, kvh)) for keys [b0, b1) of src into rows r * bk
    (bk = len(sc) // 4), -inf where not visible (the same keys for the four heads: one query
    position). Float keys in rows of whole 16-channel vectors go to simd.dot4x4 with their
    offsets worked out once here (no call per four keys); others to kv_dot4x4."""
    t, h, kvh = at
    kk, _, ks, _, kpos = src
    qp, scale, window, softcap = mask
    bk = sc.shape[0] // 4
    D = q.shape[2]
    neg = np.float32(-np.inf)
    fast, qo, kbase, kstep = kv_quad_plan(q, t, h, kk, kvh)
    ahead = kv_ahead(kk)
    S = kk.shape[1]
    pstep, prow = kk.strides[1], D * kk.itemsize
    pbase = kvh * kk.strides[0]
    j = b0
    while j < b1:
        c = j - b0
        if j + 4 <= b1:
            if j + ahead + 4 <= S:  # read-ahead of the four rows `ahead` keys on
                pb = pbase + (j + ahead) * pstep
                for o in range(0, prow, 64):
                    prefetch(kk, pb + o)
                    prefetch(kk, pb + pstep + o)
                    prefetch(kk, pb + 2 * pstep + o)
                    prefetch(kk, pb + 3 * pstep + o)
            v0, v1, v2, v3 = _visible4(kpos, j, qp, window)
            if v0 or v1 or v2 or v3:
                if fast:
                    ko = kbase + j * kstep
                    a = dot4x4(q, qo, kk, (ko, ko + kstep, ko + 2 * kstep, ko + 3 * kstep), D)
                else:
                    a = kv_dot4x4(q, t, h, kk, ks, j, kvh)
                for r in range(4):
                    sc[r * bk + c] = _logit(a[4 * r], scale, softcap) if v0 else neg
                    sc[r * bk + c + 1] = _logit(a[4 * r + 1], scale, softcap) if v1 else neg
                    sc[r * bk + c + 2] = _logit(a[4 * r + 2], scale, softcap) if v2 else neg
                    sc[r * bk + c + 3] = _logit(a[4 * r + 3], scale, softcap) if v3 else neg
            else:
                for r in range(4):
                    for i in range(4):
                        sc[r * bk + c + i] = neg
            j += 4
        else:
            vis = _visible(kpos[j], qp, window)
            for r in range(4):
                sc[r * bk + c] = _logit(kv_dot(q, t, h + r, kk, ks, j, kvh), scale,
                                        softcap) if vis else neg
            j += 1


@kernel
def _quad_block(out, q, at, src, b0, b1, mask, work, i):
    """_head_block for heads h..h+3 at once (at = (t, h, kvh), GQA: one kv head), their
    running maxima and sums in mx[i:i + 4] / sm[i:i + 4] (work = (sc, mx, sm)): every K / V
    element loaded serves four heads. The block's weights are computed in one vectorized
    pass; a block whose keys are all visible adds its float values with simd.pv4 (the four
    heads' sums in registers), any other with the key-by-key loops (_quad_fold)."""
    t, h, kvh = at
    _, vv, _, _, kpos = src
    sc, mx, sm = work
    _quad_scores(sc, q, at, src, b0, b1, mask)
    bk = sc.shape[0] // 4
    n = b1 - b0
    neg = np.float32(-np.inf)
    for r in range(4):
        mb = _max_row(sc, r * bk, n)
        if mb == neg:
            if r == 0:
                return  # no key of the block visible (to any of the four: one query position)
            continue    # every logit -inf (overflow): nothing to fold into this head
        m = mx[i + r]
        if mb > m:
            if m != neg:
                f = exp32(m - mb)
                sm[i + r] *= f
                for d in range(out.shape[2]):
                    out[t, h + r, d] *= f
            mx[i + r] = mb
    m0, m1, m2, m3 = mx[i], mx[i + 1], mx[i + 2], mx[i + 3]
    if m0 == neg or m1 == neg or m2 == neg or m3 == neg:  # a head with only -inf logits
        for r in range(4):
            if mx[i + r] != neg:
                sm[i + r] += _fold(out, (t, h + r, kvh), src, sc[r * bk:(r + 1) * bk], b0, b1,
                                   mx[i + r])
        return
    # the block's weights p = e^(logit - m) of the four heads at once, in place of their
    # logits (a loop LLVM vectorizes; masked keys give 0 and are skipped below by position)
    r1, r2, r3 = bk, 2 * bk, 3 * bk
    l0 = _exp_rows(sc, 0, n, m0)
    l1 = _exp_rows(sc, r1, n, m1)
    l2 = _exp_rows(sc, r2, n, m2)
    l3 = _exp_rows(sc, r3, n, m3)
    qp, window = mask[0], mask[2]
    if not (_all_visible(kpos, b0, b1, qp, window)
            and kv_pv4(out, t, h, sc, bk, vv, b0, n, kvh)):
        _quad_fold(out, at, src, sc, b0, b1, mask)
    sm[i] += l0
    sm[i + 1] += l1
    sm[i + 2] += l2
    sm[i + 3] += l3


@kernel
def _all_visible(kpos, b0, b1, qp, window):
    """Whether every key b0..b1-1 is visible to a query at qp."""
    for j in range(b0, b1):
        if not _visible(kpos[j], qp, window):
            return False
    return True


@kernel
def _quad_fold(out, at, src, sc, b0, b1, mask):
    """out[t, h + r] += sum_j p[r bk + j - b0] v[j] over the visible keys j in [b0, b1) of
    src, p the weights in sc's rows (bk = len(sc) // 4); four keys at a time where all four
    are visible. Masked keys are skipped, never multiplied by 0: empty slots may hold
    garbage."""
    t, h, kvh = at
    _, vv, _, vs, kpos = src
    qp, window = mask[0], mask[2]
    bk = sc.shape[0] // 4
    r1, r2, r3 = bk, 2 * bk, 3 * bk
    ahead = kv_ahead(vv)
    j = b0
    while j < b1:
        c = j - b0
        kv_prefetch(vv, j + ahead, kvh)
        if j + 4 <= b1:
            v0, v1, v2, v3 = _visible4(kpos, j, qp, window)
            if v0 and v1 and v2 and v3:
                p = (sc[c], sc[c + 1], sc[c + 2], sc[c + 3],
                     sc[r1 + c], sc[r1 + c + 1], sc[r1 + c + 2], sc[r1 + c + 3],
                     sc[r2 + c], sc[r2 + c + 1], sc[r2 + c + 2], sc[r2 + c + 3],
                     sc[r3 + c], sc[r3 + c + 1], sc[r3 + c + 2], sc[r3 + c + 3])
                kv_axpy4x4(out, t, h, p, vv, vs, j, kvh)
                j += 4
                continue
        if _visible(kpos[j], qp, window):
            kv_axpy(out, t, h, sc[c], vv, vs, j, kvh)
            kv_axpy(out, t, h + 1, sc[r1 + c], vv, vs, j, kvh)
            kv_axpy(out, t, h + 2, sc[r2 + c], vv, vs, j, kvh)
            kv_axpy(out, t, h + 3, sc[r3 + c], vv, vs, j, kvh)
        j += 1


@kernel
def _max_row(sc, o, n):
    """max(sc[o:o + n]), -inf for none."""
    x = sc[o:o + n]  # indexed from 0 by the loop counter: the loop vectorizes
    m = np.float32(-np.inf)
    for c in range(n):
        m = max(m, x[c])
    return m


@kernel
def _exp_rows(sc, o, n, m):
    """sc[o + c] = e^(sc[o + c] - m) for c < n (-inf logits give 0); returns their sum."""
    x = sc[o:o + n]  # indexed from 0 by the loop counter: the loops vectorize
    for c in range(n):
        x[c] = exp32(x[c] - m)
    tot = np.float32(0.0)
    for c in range(n):
        tot += x[c]
    return tot


@kernel
def _run_blocks(out, q, at, nh, src, lo, hi, bk, mask, work):
    """Keys [lo, hi) of src for the nh heads from h0 (at = (t, h0, kvh)), their state in
    work = (sc, mx, sm): block by block, each block's K / V rows serving every head; heads in
    fours when sc holds four rows of bk scores, the rest one by one."""
    t, h0, kvh = at
    sc, mx, sm = work
    quads = sc.shape[0] >= 4 * bk
    for b0 in range(lo, hi, bk):
        b1 = min(hi, b0 + bk)
        i = 0
        while quads and i + 4 <= nh:
            _quad_block(out, q, (t, h0 + i, kvh), src, b0, b1, mask, work, i)
            i += 4
        while i < nh:
            mx[i], sm[i] = _head_block(out, q, (t, h0 + i, kvh), src, b0, b1, mask, sc[:bk],
                                       mx[i], sm[i])
            i += 1


@kernel
def _fresh(new, cache):
    """The new chunk (k_new, v_new, q_pos) as a key source beside cache: its (T, Hkv, D) keys
    and values seen head-major like the cache's (transposed views, nothing copied), with the
    cache's scales (never read: the chunk is float32)."""
    k_new, v_new, q_pos = new
    return (k_new.transpose((1, 0, 2)), v_new.transpose((1, 0, 2)), cache[2], cache[3], q_pos)


@kernel
def _run_source(out, q, at, src, mask, sc, m, l):
    """All key blocks of src, in blocks of len(sc), folded into head at's running max m and
    weight sum l (one head at a time)."""
    bk = sc.shape[0]
    n = src[4].shape[0]
    for b0 in range(0, n, bk):
        m, l = _head_block(out, q, at, src, b0, min(n, b0 + bk), mask, sc, m, l)
    return m, l


@kernel
def _finish(out, t, h, l):
    if l > 0:
        inv = np.float32(1.0) / l
        for d in range(out.shape[2]):
            out[t, h, d] *= inv


@kernel
def _plan(Hq, Hkv, L):
    """(R, rows, bk, runs per kv head) for scratch rows of length L: runs of R query heads
    sharing a kv head; a run of R > 1 heads keeps its running max / sum in the tail of the
    scratch row, and from four heads on the scores of four heads at once (rows of bk); a
    single head keeps them in registers. Depends on the shapes only, never on threads."""
    group = Hq // Hkv
    R = min(group, _RUN)
    rows = 4 if R >= 4 and L >= 2 * R + 16 else 1
    if L < 2 * R + rows:
        R = 1
    bk = min(_KEY_BLOCK, (L - 2 * R) // rows) if R > 1 else min(_KEY_BLOCK, L)
    return R, rows, bk, (group + R - 1) // R


@kernel(parallel=True)
def _split_units(out, q, cache, new, params, scratch, G, plan):
    """One query (T = 1), each run of heads over G contiguous parts of the cache (the new
    keys with the last part): unit c = run * G + g keeps its own softmax state and unnormed
    output in scratch[c] (scores | maxima | sums | Hq x Dv output). cache, new, params as in
    `attention`; plan = _plan(...)."""
    k_new, v_new, q_pos = new
    fresh = _fresh(new, cache)
    scale, window, softcap = params
    R, rows, bk, runs_per_kv = plan
    Hq = q.shape[1]
    Hkv = k_new.shape[1]
    Dv = out.shape[2]
    group = Hq // Hkv
    S = cache[4].shape[0]
    T = k_new.shape[0]
    neg = np.float32(-np.inf)
    mask = (q_pos[0], np.float32(scale), window, np.float32(softcap))
    nunit = Hkv * runs_per_kv * G
    for c in prange(nunit):
        run = c // G
        g = c - run * G
        kvh = run // runs_per_kv
        h0 = kvh * group + (run - kvh * runs_per_kv) * R
        nh = min(R, (kvh + 1) * group - h0)
        buf = scratch[c]
        scores = buf[:rows * bk]
        mx = buf[rows * bk:rows * bk + R]
        sm = buf[rows * bk + R:rows * bk + 2 * R]
        o = buf[rows * bk + 2 * R:rows * bk + 2 * R + Hq * Dv].reshape(1, Hq, Dv)
        for i in range(nh):
            mx[i] = neg
            sm[i] = 0.0
            for d in range(Dv):
                o[0, h0 + i, d] = 0.0
        at, work = (0, h0, kvh), (scores, mx, sm)
        _run_blocks(o, q, at, nh, cache, g * S // G, (g + 1) * S // G, bk, mask, work)
        if g == G - 1:
            _run_blocks(o, q, at, nh, fresh, 0, T, bk, mask, work)


@kernel
def _split_merge(out, scratch, G, R, off, Hkv, runs_per_kv):
    """out[0, h] = sum_g e^(m_g - M) o_g / sum_g e^(m_g - M) l_g over the G parts of h's run,
    in part order (M = max_g m_g, o_g / l_g / m_g from _split_units at scratch offset off;
    zeros when no part saw a key)."""
    Hq = out.shape[1]
    Dv = out.shape[2]
    group = Hq // Hkv
    neg = np.float32(-np.inf)
    base = off + 2 * R
    for h in range(Hq):
        kvh = h // group
        k = h - kvh * group
        r = k // R
        i = k - r * R
        c0 = (kvh * runs_per_kv + r) * G
        M = neg
        for g in range(G):
            M = max(M, scratch[c0 + g, off + i])
        for d in range(Dv):
            out[0, h, d] = 0.0
        if M == neg:
            continue
        tot = np.float32(0.0)
        for g in range(G):
            m = scratch[c0 + g, off + i]
            if m == neg:
                continue
            w = exp32(m - M)
            tot += w * scratch[c0 + g, off + R + i]
            for d in range(Dv):
                out[0, h, d] += w * scratch[c0 + g, base + h * Dv + d]
        inv = np.float32(1.0) / tot
        for d in range(Dv):
            out[0, h, d] *= inv


@kernel
def _one_run(out, q, run, cache, fresh, lo, hi, mask_of, plan, buf):
    """Run `run` (query t, one kv head, up to R query heads) of `attention` over the cache and
    keys lo..hi-1 of fresh (the new keys its sequence adds this step), with scratch row buf;
    mask_of = (q_pos, scale, window, softcap)."""
    q_pos, sc_, window, cap = mask_of
    R, rows, bk, runs_per_kv = plan
    Hq = q.shape[1]
    Hkv = fresh[0].shape[0]
    Dv = out.shape[2]
    group = Hq // Hkv
    neg = np.float32(-np.inf)
    S = cache[4].shape[0]
    u = run // runs_per_kv
    t = u // Hkv
    kvh = u - t * Hkv
    h0 = kvh * group + (run - u * runs_per_kv) * R
    nh = min(R, (kvh + 1) * group - h0)
    at, mask = (t, h0, kvh), (q_pos[t], sc_, window, cap)
    for h in range(h0, h0 + nh):
        for d in range(Dv):
            out[t, h, d] = 0.0
    if R == 1:
        sc = buf[:bk]
        m, l = _run_source(out, q, at, cache, mask, sc, neg, np.float32(0.0))
        own = (fresh[0][:, lo:hi], fresh[1][:, lo:hi], fresh[2], fresh[3], fresh[4][lo:hi])
        m, l = _run_source(out, q, at, own, mask, sc, m, l)
        _finish(out, t, h0, l)
        return
    scores = buf[:rows * bk]
    mx = buf[rows * bk:rows * bk + R]
    sm = buf[rows * bk + R:rows * bk + 2 * R]
    for i in range(nh):
        mx[i] = neg
        sm[i] = 0.0
    work = (scores, mx, sm)
    _run_blocks(out, q, at, nh, cache, 0, S, bk, mask, work)
    _run_blocks(out, q, at, nh, fresh, lo, hi, bk, mask, work)
    for i in range(nh):
        _finish(out, t, h0 + i, sm[i])


@kernel(parallel=True)
def attention(out, q, cache, new, params, scratch):
    """out (T, Hq, Dv) = softmax(q k^T * scale [softcapped], masked) v.

    q (T, Hq, D) already roped; cache = (k_cache, v_cache, k_scale, v_scale, cache_pos):
    k_cache (Hkv, S, D), v_cache (Hkv, S, Dv) head-major, of any KV element type, with their
    int8 block scales k_scale / v_scale (Hkv, S, ceil(D / KV_BLOCK))
    (edgerope.kernels.kvstore; any float32 3-D array for float types), cache_pos (S,) int64
    (the source's length: arrays may hold more slots, never read); new = (k_new, v_new, q_pos):
    k_new (T, Hkv, D), v_new (T, Hkv, Dv) float32 at positions q_pos (T,) int64; params =
    (scale, window, softcap), window <= 0: none, softcap <= 0: none. Query head h reads kv
    head h // (Hq // Hkv). scratch is float32 (C, L) with L >= S + T: the work is split into at
    most C chunks, chunk c keeping its scores (and the runs' softmax state) in scratch[c], so
    nothing is allocated and chunks never share memory. The key block length depends on L and
    the group size only, so results never depend on the thread count. A query that sees no
    key gets zeros.
    """
    k_new, v_new, q_pos = new
    fresh = _fresh(new, cache)  # the chunk as a key source
    scale, window, softcap = params
    T, Hq, _ = q.shape
    Hkv = k_new.shape[1]
    plan = _plan(Hq, Hkv, scratch.shape[1])
    nrun = T * Hkv * plan[3]
    C = min(scratch.shape[0], nrun)
    mask_of = (q_pos, np.float32(scale), window, np.float32(softcap))
    for c in prange(C):
        for run in range(c * nrun // C, (c + 1) * nrun // C):
            _one_run(out, q, run, cache, fresh, 0, T, mask_of, plan, scratch[c])


@kernel(parallel=True)
def attention_rows(out, q, caches, new, params, scratch, seq, seg):
    """`attention` for the rows of several sequences evaluated together (a batch step):
    row t reads the cache of sequence seq[t] -- caches is the cache tuple with a leading
    sequence axis, k (N, Hkv, S, D), v (N, Hkv, S, Dv), k_scale / v_scale (N, Hkv, S, nb),
    pos (N, S) -- and, of the new keys, rows seg[t, 0]..seg[t, 1]-1 (its own sequence's
    rows this step). Row t's numbers are those of `attention` over that cache and those
    rows; all rows' work is spread over the scratch rows at once."""
    kk, vv, ks, vs, kpos = caches
    k_new, v_new, q_pos = new
    fresh = _fresh(new, (kk[0], vv[0], ks[0], vs[0], kpos[0]))
    scale, window, softcap = params
    T, Hq, _ = q.shape
    Hkv = k_new.shape[1]
    plan = _plan(Hq, Hkv, scratch.shape[1])
    runs = Hkv * plan[3]
    nrun = T * runs
    C = min(scratch.shape[0], nrun)
    mask_of = (q_pos, np.float32(scale), window, np.float32(softcap))
    for c in prange(C):
        for run in range(c * nrun // C, (c + 1) * nrun // C):
            t = run // runs
            i = seq[t]
            cache = (kk[i], vv[i], ks[i], vs[i], kpos[i])
            _one_run(out, q, run, cache, fresh, seg[t, 0], seg[t, 1], mask_of, plan,
                     scratch[c])


@kernel
def attention_decode(out, q, cache, new, params, scratch, n_slots):
    """`attention` (the same cache, new and params tuples) for one query (T = 1) whose cache
    holds keys in slots [0, n_slots) only (a ring fills from slot 0): with room in the scratch
    rows (L >= the scores, 2 R and Hq x Dv), the slots are split into up to C parts of about
    DECODE_SPLIT slots computed in parallel, each with its own softmax state and output, then
    merged in part order (flash-decoding); otherwise `attention` over those slots. The parts
    depend on n_slots and the scratch shape, never on the thread count. A separate kernel so
    that short contexts never load it (edgerope.engine.model calls it for caches of more than
    DECODE_SPLIT slots)."""
    k_cache, v_cache, k_scale, v_scale, cache_pos = cache
    Hq = q.shape[1]
    Hkv = new[0].shape[1]
    Dv = out.shape[2]
    plan = _plan(Hq, Hkv, scratch.shape[1])
    R, rows, bk, runs_per_kv = plan
    S = min(n_slots, k_cache.shape[1])
    seen = (k_cache, v_cache, k_scale, v_scale, cache_pos[:S])  # a source's keys: len(pos)
    G = 1
    if R > 1 and scratch.shape[1] >= rows * bk + 2 * R + Hq * Dv:
        G = max(1, min((S + DECODE_SPLIT - 1) // DECODE_SPLIT,
                       scratch.shape[0] // (Hkv * runs_per_kv)))
    if G == 1:
        attention(out, q, seen, new, params, scratch)
        return
    _split_units(out, q, seen, new, params, scratch, G, plan)
    _split_merge(out, scratch, G, R, rows * bk, Hkv, runs_per_kv)
