"""bench/fidelity.py's paired statistics (--texts): per-token figures against a reference and
the bootstrap intervals of two engines' differences, on made-up logits."""
import importlib.util
import os

import numpy as np

_PATH = os.path.join(os.path.dirname(__file__), "..", "bench", "fidelity.py")
_spec = importlib.util.spec_from_file_location("fidelity", _PATH)
fidelity = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fidelity)


def _logits(rng, t=40, v=50):
    return rng.standard_normal((t, v)).astype(np.float32) * 3


def test_per_token_figures_match_their_definitions():
    rng = np.random.default_rng(0)
    ref, got = _logits(rng), _logits(rng)
    ids = list(rng.integers(0, 50, 40))
    same = fidelity.per_token(ref, ref, ids)
    assert same.shape == (4, 39)
    np.testing.assert_allclose(same[0], 0, atol=1e-12)  # KL of a distribution to itself
    assert (same[2] == 1).all() and (same[1] == same[3]).all()
    a = fidelity.per_token(ref, got, ids)
    p = np.exp(ref[:-1].astype(np.float64))
    p /= p.sum(1, keepdims=True)
    q = np.exp(got[:-1].astype(np.float64))
    q /= q.sum(1, keepdims=True)
    np.testing.assert_allclose(a[0], (p * np.log(p / q)).sum(1), rtol=1e-9)
    np.testing.assert_allclose(a[1], -np.log(q[np.arange(39), ids[1:]]), rtol=1e-9)
    np.testing.assert_allclose(a[3], -np.log(p[np.arange(39), ids[1:]]), rtol=1e-9)
    assert (a[2] == (ref[:-1].argmax(1) == got[:-1].argmax(1))).all()
    s = fidelity.summary([a])
    assert s["ppl_ratio"] == round(float(np.exp((a[1] - a[3]).mean())), 4)


def test_paired_intervals_hold_the_point_and_see_a_real_difference():
    rng = np.random.default_rng(1)
    theirs = [rng.random((4, 30)) for _ in range(8)]
    same = fidelity.paired(theirs, [x.copy() for x in theirs], rounds=200)
    assert same == {"top1_diff": [0, 0, 0], "kl_diff": [0, 0, 0], "ppl_quotient": [1, 1, 1]}
    # ours: KL 0.01 higher on every token, NLL noisy around theirs, top-1 the same
    ours = [x + np.array([[0.01], [0], [0], [0]]) for x in theirs]
    for x in ours:
        x[1] += rng.normal(0, 0.05, x.shape[1])
    r = fidelity.paired(ours, theirs, rounds=300)
    assert r["kl_diff"] == [0.01, 0.01, 0.01]
    lo, hi = r["ppl_quotient"][1:]
    assert lo <= r["ppl_quotient"][0] <= hi and lo < 1 < hi  # noise: 1 inside
