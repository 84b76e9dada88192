"""edgerope.engine.sampler: llama.cpp chain semantics, determinism, and support/frequency checks."""
import math

import numpy as np
import pytest

from edgerope.engine.sampler import Sampler, SamplingParams


def reference_probs(logits, history=(), *, temperature, top_k, top_p, min_p,
                    repeat_penalty=1.0, repeat_last_n=64):
    """Plain full-sort implementation of llama.cpp's default chain; returns a dense prob vector."""
    x = np.asarray(logits, dtype=np.float64).copy()
    h = list(history) if repeat_last_n == -1 else list(history)[-repeat_last_n:] if repeat_last_n else []
    for t in set(h):
        x[t] = x[t] / repeat_penalty if x[t] > 0 else x[t] * repeat_penalty
    order = sorted(range(len(x)), key=lambda i: -x[i])
    if top_k > 0:
        order = order[:top_k]
    if top_p < 1.0:
        w = np.exp(x[order] - x[order[0]])
        cum = np.cumsum(w / w.sum())
        order = order[:int(np.argmax(cum >= top_p)) + 1] if (cum >= top_p).any() else order
    if min_p > 0:
        order = [i for i in order if x[i] >= x[order[0]] + math.log(min_p)]
    z = x[order] / temperature
    p = np.exp(z - z.max())
    out = np.zeros(len(x))
    out[order] = p / p.sum()
    return out


def draw(params, logits, n, history=()):
    s = Sampler(params)
    return np.bincount([s(logits, history) for _ in range(n)], minlength=len(logits))


def assert_matches(counts, probs):
    n = counts.sum()
    support = set(np.flatnonzero(probs > 0))
    assert set(np.flatnonzero(counts)) == support
    # within 5 standard deviations per token (binomial), fixed seed -> not flaky
    sd = np.sqrt(n * probs * (1 - probs))
    assert np.all(np.abs(counts - n * probs) <= 5 * sd + 1e-9), (counts, n * probs)


LOGITS = np.array([2.0, 1.6, 1.5, 1.0, 0.4, 0.0, -0.5, -1.5, -3.0, 0.9], dtype=np.float32)


def test_greedy_is_argmax():
    rng = np.random.default_rng(0)
    for temp in (0.0, -0.0):
        s = Sampler(SamplingParams(temperature=temp, top_k=0, top_p=0.5, min_p=0.3))
        for _ in range(50):
            x = rng.standard_normal(1000).astype(np.float32)
            assert s(x, []) == int(np.argmax(x))


@pytest.mark.parametrize("temp", [0.1, 0.8, 1.0, 5.0, 100.0])
def test_top_k_1_is_greedy(temp):
    rng = np.random.default_rng(1)
    s = Sampler(SamplingParams(temperature=temp, top_k=1, top_p=1.0, min_p=0.0, seed=3))
    for _ in range(50):
        x = rng.standard_normal(5000).astype(np.float32)
        assert s(x, []) == int(np.argmax(x))


def test_seed_determinism():
    rng = np.random.default_rng(2)
    seq = [rng.standard_normal(3000).astype(np.float32) for _ in range(200)]
    params = SamplingParams(temperature=1.5, top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.1, seed=42)

    def run(p):
        s, hist = Sampler(p), []
        for x in seq:
            hist.append(s(x, hist))
        return hist

    a, b = run(params), run(params)
    assert a == b
    c = run(SamplingParams(**{**params.__dict__, "seed": 43}))
    assert a != c


def test_random_seed_is_recorded():
    s = Sampler(SamplingParams(seed=None, temperature=2.0, top_k=0, top_p=1.0, min_p=0.0))
    x = np.random.default_rng(3).standard_normal(500).astype(np.float32)
    first = [s(x, []) for _ in range(20)]
    again = Sampler(SamplingParams(seed=s.seed, temperature=2.0, top_k=0, top_p=1.0, min_p=0.0))
    assert [again(x, []) for _ in range(20)] == first


def test_analytic_restriction_by_hand():
    """Support computed by hand, independent of the reference implementation."""
    # temperature-1 probs of LOGITS sorted: 2.0, 1.6, 1.5, 1.0, 0.9, ...
    # top_k=4 -> {0,1,2,3}; min_p=0.5 -> keep logit >= 2 + ln 0.5 = 1.307 -> {0,1,2}
    counts = draw(SamplingParams(temperature=1.0, top_k=4, top_p=1.0, min_p=0.5, seed=0), LOGITS, 6000)
    assert set(np.flatnonzero(counts)) == {0, 1, 2}
    e = np.exp([2.0, 1.6, 1.5])
    assert_matches(counts, np.pad(e / e.sum(), (0, 7)))
    # top_p over all 10: p(0) ~ 0.266, p(0)+p(1) ~ 0.445 -> top_p=0.4 keeps {0, 1}
    counts = draw(SamplingParams(temperature=1.0, top_k=0, top_p=0.4, min_p=0.0, seed=0), LOGITS, 4000)
    assert set(np.flatnonzero(counts)) == {0, 1}


CASES = [
    dict(temperature=1.0, top_k=3, top_p=1.0, min_p=0.0),
    dict(temperature=0.7, top_k=0, top_p=0.8, min_p=0.0),
    dict(temperature=1.3, top_k=0, top_p=1.0, min_p=0.2),
    dict(temperature=0.8, top_k=6, top_p=0.9, min_p=0.1),
    dict(temperature=2.0, top_k=8, top_p=0.95, min_p=0.05),
    dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0),
]


@pytest.mark.parametrize("case", CASES)
def test_distribution_matches_reference(case):
    counts = draw(SamplingParams(seed=7, **case), LOGITS, 20000)
    assert_matches(counts, reference_probs(LOGITS, **case))


@pytest.mark.parametrize("case", [dict(temperature=1.0, top_k=0, top_p=0.9, min_p=0.0),
                                  dict(temperature=1.0, top_k=0, top_p=0.6, min_p=0.02),
                                  dict(temperature=3.0, top_k=200, top_p=0.99, min_p=0.0)])
def test_support_on_large_vocab(case):
    """Exercises the partial-selection paths (growing nucleus window, near-max prefilter)."""
    x = (np.random.default_rng(5).standard_normal(5000) * 2).astype(np.float32)
    ref = reference_probs(x, **case)
    counts = draw(SamplingParams(seed=11, **case), x, 1500)
    assert set(np.flatnonzero(counts)) <= set(np.flatnonzero(ref > 0))


def test_top_k_with_widely_spread_logits():
    """Fewer than k tokens near the maximum: top-k must still pick exactly the k largest."""
    x = -np.arange(0, 1000, dtype=np.float32) * 20.0
    np.random.default_rng(6).shuffle(x)
    counts = draw(SamplingParams(temperature=1e6, top_k=5, top_p=1.0, min_p=0.0, seed=1), x, 2000)
    assert set(np.flatnonzero(counts)) == set(np.argsort(-x)[:5])


def test_repeat_penalty_positive_and_negative():
    greedy = dict(temperature=0.0)
    pos = np.array([2.0, 1.5, -0.5], dtype=np.float32)
    assert Sampler(SamplingParams(**greedy))(pos, [0]) == 0
    assert Sampler(SamplingParams(repeat_penalty=2.0, **greedy))(pos, [0]) == 1      # 2.0 -> 1.0
    neg = np.array([-1.0, -1.5], dtype=np.float32)
    assert Sampler(SamplingParams(repeat_penalty=2.0, **greedy))(neg, [0]) == 1      # -1.0 -> -2.0
    # penalty < 1 rewards repeats: -1.5 * 0.5 = -0.75 > -1.0
    assert Sampler(SamplingParams(repeat_penalty=0.5, **greedy))(neg, [1]) == 1


def test_repeat_penalty_window():
    x = np.array([2.0, 1.5, 0.0], dtype=np.float32)
    hist = [0, 2, 2, 2]
    mk = lambda n: Sampler(SamplingParams(temperature=0.0, repeat_penalty=2.0, repeat_last_n=n))
    assert mk(3)(x, hist) == 0    # token 0 is outside the last 3
    assert mk(4)(x, hist) == 1
    assert mk(-1)(x, hist) == 1   # whole history
    assert mk(0)(x, hist) == 0    # off


def test_repeat_penalty_distribution():
    case = dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.8, repeat_last_n=64)
    hist = [0, 0, 6, 3]
    counts = draw(SamplingParams(seed=9, **case), LOGITS, 20000, history=hist)
    assert_matches(counts, reference_probs(LOGITS, hist, **case))


def test_caller_logits_untouched():
    x = np.random.default_rng(8).standard_normal(4000).astype(np.float32)
    before = x.copy()
    x.setflags(write=False)  # any in-place write would raise
    hist = list(range(0, 4000, 7))
    for case in CASES + [dict(temperature=0.0)]:
        Sampler(SamplingParams(repeat_penalty=1.3, seed=0, **case))(x, hist)
    assert np.array_equal(x, before)


def test_other_dtypes_and_history_types():
    x = np.array([0.0, 3.0, 1.0])
    s = Sampler(SamplingParams(temperature=0.0))
    assert s(x, []) == 1
    assert s(x.astype(np.float16), np.array([], dtype=np.int64)) == 1
    assert isinstance(Sampler(SamplingParams(seed=0))(x.astype(np.float32), (1, 1)), int)


@pytest.mark.parametrize("kwargs, field", [
    (dict(temperature=-0.1), "temperature"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(top_k=-1), "top_k"),
    (dict(top_k=2.5), "top_k"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.01), "top_p"),
    (dict(min_p=-0.01), "min_p"),
    (dict(min_p=1.5), "min_p"),
    (dict(repeat_penalty=0.0), "repeat_penalty"),
    (dict(repeat_penalty=-1.0), "repeat_penalty"),
    (dict(repeat_last_n=-2), "repeat_last_n"),
    (dict(seed=-1), "seed"),
])
def test_validate_errors(kwargs, field):
    p = SamplingParams(**kwargs)
    with pytest.raises(ValueError) as e:
        p.validate()
    msg = str(e.value)
    assert msg.startswith(field) and "\n" not in msg
    with pytest.raises(ValueError):
        Sampler(p)


def test_validate_accepts_edges():
    for kw in (dict(temperature=0.0, top_k=0, top_p=1.0, min_p=0.0, repeat_last_n=-1),
               dict(min_p=1.0, seed=0), dict(seed=2**64 - 1)):
        SamplingParams(**kw).validate()


def test_degenerate_logits():
    s = Sampler(SamplingParams(seed=0))
    assert s(np.array([0.0, np.inf, 1.0], np.float32), []) == 1
    with pytest.raises(ValueError, match="cannot sample"):
        s(np.array([-np.inf, -np.inf], np.float32), [])
    with pytest.raises(ValueError, match="cannot sample"):
        s(np.array([0.0, np.nan], np.float32), [])
    # masked tokens (-inf) are never drawn
    x = np.array([0.0, -np.inf, 0.5, -np.inf], np.float32)
    counts = draw(SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=2), x, 500)
    assert counts[1] == counts[3] == 0


def test_presence_and_frequency_penalties():
    """As llama.cpp's penalties sampler: after the repeat penalty, each token in the window
    loses frequency_penalty per occurrence and presence_penalty once."""
    x = np.array([3.0, 2.0, 1.0, 0.5], dtype=np.float32)
    hist = [0, 0, 0, 1, 3]
    s = Sampler(SamplingParams(temperature=0.0, frequency_penalty=0.6, presence_penalty=0.25))
    got = s._penalize(x, hist)
    np.testing.assert_allclose(got, [3.0 - 1.8 - 0.25, 2.0 - 0.6 - 0.25, 1.0, 0.5 - 0.85],
                               rtol=1e-6)
    assert s(x, hist) == 1
    both = Sampler(SamplingParams(repeat_penalty=2.0, frequency_penalty=1.0, repeat_last_n=2))
    np.testing.assert_allclose(both._penalize(x, hist), [3.0, 0.0, 1.0, 0.25 - 1.0])
    np.testing.assert_array_equal(x, [3.0, 2.0, 1.0, 0.5])  # the caller's logits untouched
    for bad in (2.5, float("nan"), "1"):
        with pytest.raises(ValueError, match="presence_penalty"):
            SamplingParams(presence_penalty=bad).validate()
