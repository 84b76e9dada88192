"""`edgerope bench` records and `--profile` tables on a tiny model."""
import json

import pytest

pytest.importorskip("torch")

from click.testing import CliRunner  # noqa: E402
import edgerope  # noqa: E402
from edgerope.cli import main  # noqa: E402
from tiny_models import build  # noqa: E402

FIELDS = {"test", "avg_ts", "stddev_ts", "n_threads", "n_prompt", "n_gen", "model_size",
          "model_n_params", "samples_ts"}


@pytest.fixture(autouse=True)
def _small_bandwidth_probe(tmp_path, monkeypatch):
    """The roofline's bandwidth probe: a small array (a quarter of a stated 256 MiB) and a
    cache of this test's own."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("EDGEROPE_MEM_AVAILABLE", str(256 << 20))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("bench-llama")
    build("llama", str(d))
    return str(d)


def test_bench_json_sweeps_like_llama_bench(tiny):
    r = CliRunner().invoke(main, ["bench", "-m", tiny, "-p", "16,32", "-n", "4", "-t", "1,2",
                                  "-r", "2", "-o", "json"])
    assert r.exit_code == 0, r.output
    recs = json.loads(r.stdout)
    assert [(x["test"], x["n_threads"]) for x in recs] == [
        ("pp16", 1), ("pp32", 1), ("tg4", 1), ("pp16", 2), ("pp32", 2), ("tg4", 2)]
    for x in recs:
        assert FIELDS <= set(x) and len(x["samples_ts"]) == 2 and x["avg_ts"] > 0
        assert (x["n_prompt"], x["n_gen"]) in ((16, 0), (32, 0), (0, 4))
    import sys
    if sys.platform.startswith("linux"):  # memory as /proc tells it: peak and private apart
        for x in recs:
            assert x["mem_peak_rss"] >= x["mem_rss"] >= x["mem_anonymous"] > 0
            assert x["mem_rss"] == x["mem_anonymous"] + x["mem_file"]
    # the roofline of tg tests: bytes a token reads times tokens/s against the read bandwidth
    m = edgerope.load(tiny, tokenizer=False)
    for x in recs:
        if x["n_gen"]:
            assert x["weight_bytes_per_token"] == m.weights.bytes_per_token()
            assert x["kv_bytes_per_token"] > 0 and x["bandwidth_gbps"] > 0
            got = (x["weight_bytes_per_token"] + x["kv_bytes_per_token"]) * x["avg_ts"] / 1e9
            assert x["gbps"] == pytest.approx(got)
            assert x["roofline_pct"] == pytest.approx(100 * got / x["bandwidth_gbps"])
        else:
            assert "gbps" not in x


def test_bench_markdown_and_profile(tiny):
    r = CliRunner().invoke(main, ["bench", "-m", tiny, "-p", "8", "-n", "3", "-r", "1",
                                  "--profile"])
    assert r.exit_code == 0, r.output
    assert "| model | size | params | dtype | kv | threads | test | t/s |" in r.stdout
    assert "profile tg3" in r.stdout and "| matmul.lm_head |" in r.stdout
    assert "| attention |" in r.stdout and "| python overhead |" in r.stdout
    assert "| profiler (est.) |" in r.stdout
    assert "memory: peak RSS " in r.stderr and " MiB, anonymous (private) " in r.stderr
    assert "| GB/s (% of read bw) |" in r.stdout and "% of " in r.stdout.split("tg3")[1]


def test_profile_table_takes_its_own_timing_out_of_python_overhead(monkeypatch):
    """The profiler's own cost (calls x own_cost) is a row of its own, taken from what the
    ops leave of the wall time, never more than that."""
    from edgerope.engine import profile
    assert 0 < profile.own_cost() < 1e-3  # measured: a real, small per-call cost
    monkeypatch.setattr(profile, "_own_cost", 1e-6)
    p = profile.Profiler()
    p.add("matmul", 0.004)
    for _ in range(999):
        p.calls["norm"] += 1
    p.seconds["norm"] = 0.001
    p.wall, p.tokens = 0.010, 2  # 1000 calls: 1 ms of profiler, 4 ms of Python left
    rows = {r.split("|")[1].strip(): r.split("|")[2].strip() for r in p.table().splitlines()[2:]}
    assert rows["profiler (est.)"] == "0.500" and rows["python overhead"] == "2.000"
    assert rows["total"] == "5.000"
    p.wall = 0.0055  # less left than the estimate: capped, python overhead 0
    rows = {r.split("|")[1].strip(): r.split("|")[2].strip() for r in p.table().splitlines()[2:]}
    assert rows["profiler (est.)"] == "0.250" and rows["python overhead"] == "0.000"


def test_read_bandwidth_is_measured_once_and_cached(tmp_path):
    from edgerope.apps.bench import _cache_file, read_bandwidth
    first = read_bandwidth(1)
    assert 0.05 < first < 10_000
    with open(_cache_file()) as f:
        assert list(json.load(f).values()) == [round(first, 2)]
    assert read_bandwidth(1) == round(first, 2)  # from the cache, not measured again


def test_bytes_per_token_reads_one_embedding_row(tmp_path):
    """Untied: every matrix, but of the embedding one row; tied: the table once, as the head."""
    for case, tied in (("llama", False), ("llama-gqa4", True)):
        d = str(tmp_path / case)
        build(case, d)
        w = edgerope.load(d, tokenizer=False).weights
        assert (w.lm_head is w.embed) == tied
        row = w.embed.nbytes // w.embed.out_features
        assert w.bytes_per_token() == (w.nbytes if tied else w.nbytes - w.embed.nbytes + row)


def test_bench_depth_and_kv_type_sweeps(tiny):
    """-d evaluates context first (llama-bench's "@ dN" tests); --kv-type sweeps caches."""
    r = CliRunner().invoke(main, ["bench", "-m", tiny, "-p", "8", "-n", "3", "-d", "0,20",
                                  "--kv-type", "f32,int8", "-r", "1", "-o", "json"])
    assert r.exit_code == 0, r.output
    recs = json.loads(r.stdout)
    assert [(x["kv_type"], x["test"], x["n_depth"]) for x in recs] == [
        ("f32", "pp8", 0), ("f32", "tg3", 0), ("f32", "pp8 @ d20", 20),
        ("f32", "tg3 @ d20", 20), ("int8", "pp8", 0), ("int8", "tg3", 0),
        ("int8", "pp8 @ d20", 20), ("int8", "tg3 @ d20", 20)]


def test_bench_rejects_bad_lists(tiny):
    r = CliRunner().invoke(main, ["bench", "-m", tiny, "-p", "12,x"])
    assert r.exit_code == 2 and "comma-separated" in r.output
    r = CliRunner().invoke(main, ["bench", "-m", tiny, "--kv-type", "f32,q4"])
    assert r.exit_code == 2 and "unknown KV type" in r.output
