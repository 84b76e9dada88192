"""Defaults for small machines (issue 7): threads = physical performance cores (fake sysfs
trees), the RAM a model needs (edgerope.engine.memory), and generate / chat refusing, before loading,
a model that cannot fit ($EDGEROPE_MEM_AVAILABLE stands in for MemAvailable). The process's
own memory as /proc reports it: anonymous (private) and file-backed pages apart."""
import gc
import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from click.testing import CliRunner

import edgerope
from edgerope import kernels as K
from edgerope.cli import main
from edgerope.engine.memory import RUNTIME_BYTES, estimate, weight_bytes
from edgerope.io.preflight import config_of, preflight
from edgerope.system import mem_available, parse_cpu_list, physical_cores, process_memory
from test_generate import tiny_dir  # noqa: F401 - a tiny model with a tokenizer


def fake_sysfs(root, siblings, capacity=None, cpuinfo=None, cpu_core=None):
    """siblings: per CPU its core's sibling list ("0,4"); capacity: per CPU cpu_capacity."""
    for c, sib in enumerate(siblings):
        topo = root / "sys" / "devices" / "system" / "cpu" / f"cpu{c}" / "topology"
        topo.mkdir(parents=True)
        if sib is not None:
            (topo / "core_cpus_list").write_text(sib + "\n")
        if capacity is not None:
            (topo.parent / "cpu_capacity").write_text(f"{capacity[c]}\n")
    if cpuinfo is not None:
        (root / "proc").mkdir()
        (root / "proc" / "cpuinfo").write_text(cpuinfo)
    if cpu_core is not None:
        d = root / "sys" / "devices" / "cpu_core"
        d.mkdir(parents=True)
        (d / "cpus").write_text(cpu_core + "\n")
    return str(root)


def test_parse_cpu_list():
    assert parse_cpu_list("0-3,8,10-11\n") == {0, 1, 2, 3, 8, 10, 11}
    assert parse_cpu_list("") == set() and parse_cpu_list("x-1") == set()


def test_smt_siblings_count_once(tmp_path):
    root = fake_sysfs(tmp_path, ["0,4", "1,5", "2,6", "3,7"] * 2)  # 4 cores x 2 threads
    assert physical_cores(root, allowed=range(8)) == 4
    assert physical_cores(root, allowed={0, 4}) == 1   # affinity: one core's two threads
    assert physical_cores(root, allowed={0, 1, 5}) == 2


def test_big_little_counts_big_cores(tmp_path):
    # RK3588-like: 4 x Cortex-A55 (capacity 530) + 4 x Cortex-A76 (1024), no SMT
    root = fake_sysfs(tmp_path, [str(c) for c in range(8)], capacity=[530] * 4 + [1024] * 4)
    assert physical_cores(root, allowed=range(8)) == 4
    assert physical_cores(root, allowed=range(4)) == 4  # pinned to the LITTLE cores: those


def test_three_clusters_keep_prime_and_big(tmp_path):
    root = fake_sysfs(tmp_path, [str(c) for c in range(8)],
                      capacity=[325] * 4 + [870] * 3 + [1024])
    assert physical_cores(root, allowed=range(8)) == 4


def test_intel_hybrid_counts_p_cores(tmp_path):
    # 2 P-cores with SMT (cpus 0-3) + 4 E-cores (4-7), as the cpu_core PMU lists them
    root = fake_sysfs(tmp_path, ["0-1", "0-1", "2-3", "2-3", "4", "5", "6", "7"],
                      cpu_core="0-3")
    assert physical_cores(root, allowed=range(8)) == 2
    assert physical_cores(root, allowed={4, 5}) == 2  # only E-cores allowed


def test_cpuinfo_fallback_then_cpu_count(tmp_path):
    info = "".join(f"processor\t: {p}\nphysical id\t: 0\ncore id\t\t: {p % 2}\n\n"
                   for p in range(4))
    root = fake_sysfs(tmp_path, [None] * 4, cpuinfo=info)
    assert physical_cores(root, allowed=range(4)) == 2
    assert physical_cores(str(tmp_path / "nothing"), allowed={0, 1, 2}) == 3
    assert physical_cores("/") >= 1  # the real machine


def test_default_threads_is_physical_cores_within_the_pool():
    from edgerope import runtime
    assert runtime.default_threads() == max(1, min(physical_cores(), K.max_threads()))
    before, chosen = K.get_threads(), runtime._state["threads"]
    try:
        assert runtime.set_threads(None) == runtime.default_threads() == runtime.threads()
        with pytest.raises(ValueError):
            runtime.set_threads(0)
    finally:
        K.set_threads(before)
        runtime._state["threads"] = chosen


def test_import_and_load_leave_numba_threads_alone(tiny):
    """Importing edgerope and loading a model keep Numba's own thread default; a session runs
    on edgerope's count (set_threads) and gives the caller's setting back after each call."""
    code = textwrap.dedent("""
        import sys, numba
        default = numba.get_num_threads()
        import edgerope
        m = edgerope.load(sys.argv[1], tokenizer=False)
        assert numba.get_num_threads() == default
        edgerope.set_threads(1)           # edgerope's choice, applied to this thread too
        assert numba.get_num_threads() == 1
        numba.set_num_threads(default)    # the host's own setting
        from edgerope.engine.model import Session
        seen, inner = [], Session._eval
        Session._eval = lambda self, *a: seen.append(numba.get_num_threads()) or inner(self, *a)
        m.new_session(n_ctx=16).eval([1, 2, 3])
        assert seen == [1] and numba.get_num_threads() == default, (seen, default)
        print("ok", default)
    """)
    r = subprocess.run([sys.executable, "-c", code, tiny["llama"]], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.split()[0] == "ok", r.stderr


def test_mem_available(tmp_path, monkeypatch):
    monkeypatch.delenv("EDGEROPE_MEM_AVAILABLE", raising=False)
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "meminfo").write_text("MemTotal: 4000000 kB\nMemFree: 100 kB\n"
                                               "MemAvailable:    1153434 kB\n")
    assert mem_available(str(tmp_path)) == 1153434 * 1024
    assert mem_available(str(tmp_path / "none")) is None
    monkeypatch.setenv("EDGEROPE_MEM_AVAILABLE", "12345")
    assert mem_available(str(tmp_path)) == 12345
    monkeypatch.setenv("EDGEROPE_MEM_AVAILABLE", "1G")
    with pytest.raises(edgerope.EdgeropeError, match="EDGEROPE_MEM_AVAILABLE"):
        mem_available()


# -- the estimate ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    pytest.importorskip("torch")
    from tiny_models import build
    out = {}
    for name in ("llama", "gemma3", "gpt_neox", "llama-gqa4"):
        out[name] = str(tmp_path_factory.mktemp(f"mem-{name}"))
        build(name, out[name])
    return out


@pytest.mark.parametrize("name", ["llama", "gemma3", "gpt_neox", "llama-gqa4"])
@pytest.mark.parametrize("dtype", ["int8", "int4", "float32"])
def test_weights_from_the_config_equal_the_loaded_weights(tiny, name, dtype):
    m = edgerope.load(tiny[name], dtype=dtype, tokenizer=False)
    assert weight_bytes(m.config, dtype) == m.weights.nbytes
    from_cfg, loaded = estimate(m.config, 128, "f16", dtype=dtype), estimate(m, 128, "f16")
    assert from_cfg == loaded
    s = m.new_session(n_ctx=128, kv_type="f16", n_keep=4, context_shift=True)  # as the CLI
    assert loaded.kv_cache == s.cache.nbytes
    assert loaded.runtime == RUNTIME_BYTES
    assert loaded.total == sum((loaded.weights, loaded.kv_cache, loaded.buffers,
                                loaded.tokenizer, loaded.runtime))
    # the plan from the headers says the same, matrix by matrix
    from edgerope.io.loading import plan
    p = plan(tiny[name], dtype=dtype, tokenizer=False)
    assert [x.nbytes for x in p.weights.linears()] == [x.nbytes for x in m.weights.linears()]
    assert [(x.out_features, x.in_features) for x in p.weights.linears()] == [
        (x.out_features, x.in_features) for x in m.weights.linears()]
    assert estimate(p, 128, "f16") == loaded
    # the session's buffers, once every matmul ran, are what the estimate counts (RoPE
    # tables aside: the model holds them, shared by its sessions)
    s.eval(list(range(1, 40)))
    rope = sum(a.nbytes for t in m._tables.values() for a in t[:2])
    assert s.buf.nbytes + rope == loaded.buffers


def test_estimate_defaults_to_the_model_context(tiny):
    m = edgerope.load(tiny["llama"], tokenizer=False)
    assert estimate(m).n_ctx == m.default_ctx() == 256  # max_position_embeddings of the tiny
    assert config_of(tiny["llama"]) == m.config


_INFO_WITHOUT_NUMBA = textwrap.dedent("""
    import sys
    from edgerope.cli import main
    try:
        main(["info", sys.argv[1]])
    except SystemExit as e:
        assert not e.code, e.code
    assert "numba" not in sys.modules, "info imported numba"
    print("no numba")
""")


def test_info_of_a_gguf_reads_its_header_only(tmp_path, tiny):
    """`edgerope info` on a GGUF file (and on a Hugging Face directory) plans the model from
    the headers: no numba import, no weight read; its figures are those of the loaded model."""
    pytest.importorskip("gguf")
    import numpy as np
    from test_q8_formats import SHAPES, q8_0_blocks, write_gguf
    r = np.random.default_rng(0)
    path = write_gguf(str(tmp_path / "t.gguf"), {n: q8_0_blocks(r, *s) for n, s in SHAPES.items()})
    for target in (path, tiny["llama"]):
        p = subprocess.run([sys.executable, "-c", _INFO_WITHOUT_NUMBA, target],
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 0 and "no numba" in p.stdout, p.stderr
        assert "RAM needed at context" in p.stdout and "weights in memory" in p.stdout
        from edgerope.apps.info import describe
        from edgerope.io.loading import plan
        # (the GGUF's Q8_0 blocks include the largest fp16 scales: no int4 form exists)
        for dtype in ("int8",) if target == path else ("int8", "int4", "float32"):
            assert describe(plan(target, dtype)) == describe(edgerope.load(target, dtype))


def test_info_prints_ram_needed(tiny):
    r = CliRunner().invoke(main, ["info", tiny["llama"]])
    assert r.exit_code == 0, r.output
    line = next(x for x in r.stdout.splitlines() if x.startswith("RAM needed"))
    assert line.startswith("RAM needed at context 256 ") and "~" in line
    for part in ("weights", "KV f16", "buffers", "tokenizer", f"runtime {RUNTIME_BYTES >> 20}"):
        assert part in line
    r = CliRunner().invoke(main, ["info", tiny["llama"], "-c", "64", "--kv-type", "int8"])
    assert "RAM needed at context 64 " in r.stdout and "KV int8" in r.stdout


# -- refusing what cannot fit ----------------------------------------------------------------

def test_generate_refuses_a_model_that_cannot_fit(tiny_dir, monkeypatch):
    monkeypatch.setenv("EDGEROPE_MEM_AVAILABLE", str(64 << 20))  # 64 MiB
    args = ["generate", "-m", tiny_dir[0], "-p", "The", "-n", "2", "-c", "128"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 1, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: model needs ~")
    for w in ("at context 128", "only 64 MiB is available", "smaller -c", "--kv-type int8",
              "int4", "--force"):
        assert w in lines[0], (w, lines[0])
    r = CliRunner().invoke(main, args + ["--force"])
    assert r.exit_code == 0 and "generation: 2 tokens" in r.stderr, r.output
    monkeypatch.setenv("EDGEROPE_MEM_AVAILABLE", str(8 << 30))
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output


def test_chat_refuses_too(tiny_dir, monkeypatch):
    monkeypatch.setenv("EDGEROPE_MEM_AVAILABLE", str(1 << 20))
    r = CliRunner().invoke(main, ["chat", "-m", tiny_dir[0], "--chat-template", "chatml"],
                           input="hi\n")
    assert r.exit_code == 1 and "only 1 MiB is available" in r.stderr
    r = CliRunner().invoke(main, ["chat", "-m", tiny_dir[0], "--chat-template", "chatml", "-n",
                                  "2", "--force"], input="hi\n")
    assert r.exit_code == 0, r.output


def test_the_check_runs_before_the_weights_are_read(tiny_dir, tmp_path, monkeypatch):
    """The refusal comes from config.json alone: with weights that would fail to load, the
    memory error is what is reported (a 1B model on a 1 GB board is refused, not killed)."""
    d = str(tmp_path / "m")
    shutil.copytree(tiny_dir[0], d)
    st = os.path.join(d, "model.safetensors")
    with open(st, "r+b") as f:
        f.truncate(os.path.getsize(st) // 2)
    monkeypatch.setenv("EDGEROPE_MEM_AVAILABLE", str(1 << 20))
    r = CliRunner().invoke(main, ["generate", "-m", d, "-p", "The", "-n", "2"])
    assert r.exit_code == 1 and "error: model needs" in r.stderr, r.output
    r = CliRunner().invoke(main, ["generate", "-m", d, "-p", "The", "-n", "2", "--force"])
    assert r.exit_code == 1 and "model.safetensors" in r.stderr  # now the load's own error
    assert preflight(str(tmp_path / "missing"), available=1) is None  # the load reports it


def test_preflight_reads_gguf_headers(tmp_path):
    pytest.importorskip("gguf")
    import numpy as np
    from test_q8_formats import SHAPES, q8_0_blocks, write_gguf
    r = np.random.default_rng(0)
    path = write_gguf(str(tmp_path / "t.gguf"),
                      {n: q8_0_blocks(r, *s) for n, s in SHAPES.items()})
    est = preflight(path, n_ctx=64, available=1 << 40)
    m = edgerope.load(path)
    assert est == estimate(m, 64)
    with pytest.raises(edgerope.EdgeropeError, match="at context 64 but only"):
        preflight(path, n_ctx=64, available=est.total - 1)


# -- the runtime's own memory ----------------------------------------------------------------

_MEMORY_PROBE = textwrap.dedent("""
    import json, sys
    import numpy as np
    from edgerope.system import process_memory
    before = process_memory()
    block = np.ones(64 << 20, np.uint8)  # 64 MiB of private pages, touched
    after = process_memory()
    print(json.dumps({"before": before, "after": after, "scipy": "scipy" in sys.modules}))
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc")
def test_process_memory_tells_anonymous_from_file_pages():
    """In a fresh process: 64 MiB of touched numpy memory shows up in `anonymous` (and rss,
    peak_rss), not in `file`; rss = anonymous + file; importing edgerope's system module
    imports no scipy."""
    r = subprocess.run([sys.executable, "-c", _MEMORY_PROBE], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    b, a = out["before"], out["after"]
    mib = 1 << 20
    for m in (b, a):
        assert set(m) == {"rss", "peak_rss", "anonymous", "file"}, m
        assert m["rss"] == m["anonymous"] + m["file"] and m["peak_rss"] >= m["rss"], m
    assert 60 * mib <= a["anonymous"] - b["anonymous"] <= 72 * mib, (b, a)
    assert abs(a["file"] - b["file"]) < 8 * mib, (b, a)
    assert a["peak_rss"] - b["peak_rss"] >= 60 * mib
    assert out["scipy"] is False


def test_process_memory_of_a_missing_process_is_empty():
    assert process_memory("no-such-pid") == {}


def _resident_kib(path):
    kib, cur = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            p = line.split()
            if p and not p[0].endswith(":"):
                cur = len(p) > 5 and p[5] == path
            elif cur and p[0] == "Rss:":
                kib += int(p[1])
    return kib


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/smaps")
def test_a_loaded_gguf_model_does_not_hold_the_file(tmp_path):
    """Loading a GGUF file converts its tensors into edgerope's blocks and then unmaps the
    file (GGUFFile.close): a loaded model keeps no mapping of it. A view still alive keeps
    the mapping until it goes."""
    pytest.importorskip("gguf")
    import numpy as np
    from edgerope.io.gguf_file import GGUFFile
    from test_q8_formats import SHAPES, q8_0_blocks, write_gguf
    r = np.random.default_rng(0)
    path = os.path.realpath(write_gguf(str(tmp_path / "t.gguf"),
                                       {n: q8_0_blocks(r, *s) for n, s in SHAPES.items()}))
    g = GGUFFile(path)
    t = g.tensors["token_embd.weight"]
    view = t.raw()
    before = view.copy()  # touches every page of the tensor
    assert _resident_kib(path) >= t.nbytes // 1024 - 4
    g.close()
    np.testing.assert_array_equal(view, before)  # still mapped for the view
    del view
    gc.collect()
    assert _resident_kib(path) == 0
    del t, g
    m = edgerope.load(path, tokenizer=False)
    assert _resident_kib(path) == 0  # unmapped after loading
    assert np.isfinite(m.new_session(n_ctx=8).eval([1, 2])).all()


def test_cpu_model_from_cpuinfo(tmp_path):
    from edgerope.system import cpu_model
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "cpuinfo").write_text("processor\t: 0\nmodel name\t: Example CPU 9\n")
    assert cpu_model(str(tmp_path)) == "Example CPU 9"
    (tmp_path / "proc" / "cpuinfo").write_text("processor\t: 0\nBogoMIPS\t: 108\n")
    assert cpu_model(str(tmp_path)) == os.uname().machine


@pytest.mark.parametrize("dtype", ["int8", "float32"])
def test_no_mmap_reads_native_weights_into_memory(tiny_dir, tmp_path, dtype):
    """load(mmap=False) / --no-mmap on an edgerope directory: the same logits and the same
    generated text, every weight array copied out of the file (packed weights into the
    huge-page maps of edgerope.formats.pages), none with mmap=True."""
    from edgerope.formats import pages
    from edgerope.io.loading import load
    from edgerope.io.native import save_native
    native = str(tmp_path / "native")
    save_native(load(tiny_dir[0], dtype=dtype), native)
    mapped, read = load(native, mmap=True), load(native, mmap=False)
    ids = [1, 5, 9, 3, 7]
    np.testing.assert_array_equal(mapped.logits(ids), read.logits(ids))

    def arrays(model):
        W = model.weights
        for lin in W.linears():
            for p in getattr(lin, "parts", [lin]):
                yield from (a for a in (p.w, p.wp, p.wsp, p.bias) if a is not None)
        for lw in W.layers:
            for n in (lw.attn_norm, lw.ffn_norm):
                if n is not None:
                    yield from (n.weight, n.bias)
        yield from (W.out_norm.weight, W.out_norm.bias)

    def from_file(a):
        root = a
        while isinstance(root.base, np.ndarray):
            root = root.base
        return not isinstance(root.base, np.ndarray) and root.base is not None and \
            pages._maps.get(id(root)) is not root

    assert all(pages.in_weight_memory(a) is a for a in arrays(read))
    assert not any(from_file(a) for a in arrays(read))
    assert any(from_file(a) for a in arrays(mapped))
    outs = []
    for flags in ([], ["--no-mmap"]):
        r = CliRunner().invoke(main, ["generate", "-m", native, "-p", "The", "-n", "6",
                                      "--temp", "0", "-q"] + flags)
        assert r.exit_code == 0, r.output
        outs.append(r.stdout)
    assert outs[0] == outs[1] and outs[0].strip()
