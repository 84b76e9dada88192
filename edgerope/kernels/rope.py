"""Rotary position embedding applied in place, for any pairing of channels.

A rotation is described by two index vectors ia, ib (npairs,): pair j rotates channels
(ia[j], ib[j]) by angle j of the position's row of the cos / sin tables (P, npairs).
Half-split pairing (Llama / NeoX) is ia = arange(R/2), ib = ia + R/2, interleaved (GPT-J) is
ia = 0, 2, 4.., ib = 1, 3, 5.., and partial rotary uses R < D; channels outside ia U ib are
never written, so they stay bit-identical. Building the tables (frequencies, scaling) is the
caller's job.
"""
from edgerope.kernels.jit import kernel, prange


@kernel
def _rope_rows(x, pos, cos, sin, ia, ib, t0, t1):
    H = x.shape[1]
    npairs = ia.shape[0]
    for t in range(t0, t1):
        p = pos[t]
        for h in range(H):
            for j in range(npairs):
                c = cos[p, j]
                s = sin[p, j]
                a = x[t, h, ia[j]]
                b = x[t, h, ib[j]]
                x[t, h, ia[j]] = a * c - b * s
                x[t, h, ib[j]] = b * c + a * s


@kernel(parallel=True)
def rope_apply(x, pos, cos, sin, ia, ib):
    """Rotate x (T, H, D) in place; token t uses table row pos[t] (tokens split over the
    threads for a long chunk: the same numbers)."""
    T, H, _ = x.shape
    if T * H * ia.shape[0] < 1 << 15:
        _rope_rows(x, pos, cos, sin, ia, ib, 0, T)
        return
    for c in prange((T + 7) // 8):
        _rope_rows(x, pos, cos, sin, ia, ib, 8 * c, min(T, 8 * c + 8))


@kernel
def rope_shift(x, cos, sin, ia, ib):
    """Rotate every row of x (S, H, D) in place by one angle set cos / sin (npairs,).

    Used to move cached keys by a position delta: rotations compose, so keys roped at p and
    shifted by d equal keys roped at p + d (up to float32 rounding).
    """
    S, H, _ = x.shape
    npairs = ia.shape[0]
    for t in range(S):
        for h in range(H):
            for j in range(npairs):
                c = cos[j]
                s = sin[j]
                a = x[t, h, ia[j]]
                b = x[t, h, ib[j]]
                x[t, h, ia[j]] = a * c - b * s
                x[t, h, ib[j]] = b * c + a * s
