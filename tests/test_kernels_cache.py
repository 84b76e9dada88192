"""The kernel cache (edgerope.kernels.jit): a second process compiles nothing, every instance
of the shared matmul bodies has its own cache files, and an edit to any kernel source
invalidates every cached kernel (the stamp is a hash of edgerope/kernels/*.py)."""
import glob
import os
import shutil
import subprocess
import sys
import textwrap

import edgerope

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(edgerope.__file__)))

# Counts compiles (numba:compile fires on cache misses only) of edgerope kernels; prints
# "<compiles> <hits>" after running `body`.
_HARNESS = """
    import numpy as np
    from numba.core import event
    compiles = []

    class Count(event.Listener):
        def on_start(self, ev):
            disp = (ev.data or {}).get("dispatcher")
            if getattr(disp, "py_func", None) is not None and \\
                    disp.py_func.__module__.startswith("edgerope.kernels"):
                compiles.append(disp.py_func.__qualname__)

        def on_end(self, ev):
            pass

    event.register("numba:compile", Count())
    hits = 0
"""


def _run(body, env, cwd=None):
    code = textwrap.dedent(_HARNESS) + textwrap.dedent(body) + "\nprint(len(compiles), hits)\n"
    p = subprocess.run([sys.executable, "-c", code], env=env, cwd=cwd, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    return [int(v) for v in p.stdout.split()[-2:]]


def test_every_path_is_cached_separately_and_reused(tmp_path):
    """q8 gemv on every SIMD path in one process (the same body, different cores), then
    again in a second process: loaded from the cache, nothing compiled, correct results."""
    body = """
        from edgerope.kernels import packed, simd
        wp = np.full((2, 2, 512), 129, np.uint8)  # every weight 1
        wsp = np.full((2, 2, 16), 0x3C00, np.uint16)  # fp16 1.0
        xq, xs = np.ones((1, 64), np.int8), np.ones((1, 2), np.float32)
        xsum = np.full((1, 2), 32, np.int32)
        for mode in simd.available():
            gemv = packed.KERNELS["q8"][mode][0]
            out = np.empty(20, np.float32)
            gemv(out, xq, xs, xsum, wp, wsp, 20)
            assert np.all(out == 64.0), (mode, out)
            hits += sum(gemv.stats.cache_hits.values())
    """
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    first = _run(body, env)
    from edgerope.kernels import simd
    n = len(simd.available())
    assert first[0] >= n and first[1] == 0  # compiled (and saved)
    names = {os.path.basename(f).split("-")[0]
             for f in glob.glob(str(tmp_path / "**" / "packed.q8p_gemv_*.nbi"), recursive=True)}
    assert names == {f"packed.q8p_gemv_{m}" for m in simd.available()}  # one set per path
    assert _run(body, env) == [0, n]  # every instance loaded, nothing compiled


def test_editing_any_kernel_source_invalidates_the_cache(tmp_path):
    """A copy of the package: a kernel of activations.py is cached, then a comment appended
    to simd.py makes the next process compile it again."""
    pkg = tmp_path / "src"
    shutil.copytree(os.path.join(ROOT, "edgerope"), pkg / "edgerope",
                    ignore=shutil.ignore_patterns("__pycache__"))
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"), PYTHONPATH=str(pkg))
    body = """
        import edgerope.kernels as K
        assert K.__file__.startswith(%r), K.__file__
        a = np.arange(5, dtype=np.float32)
        K.scale_(a, 2.0)  # a kernel that calls no other (each would count its own compile)
        assert np.all(a == 2 * np.arange(5))
        hits += sum(K.scale_.stats.cache_hits.values())
    """ % str(pkg)
    assert _run(body, env, cwd=tmp_path) == [1, 0]
    assert _run(body, env, cwd=tmp_path) == [0, 1]
    with open(pkg / "edgerope" / "kernels" / "simd.py", "a") as f:
        f.write("\n# an edit\n")
    assert _run(body, env, cwd=tmp_path) == [1, 0]
    assert _run(body, env, cwd=tmp_path) == [0, 1]


def test_import_sets_nothing_in_the_process():
    """Importing the kernels leaves Numba's own thread default and config alone."""
    code = ("import numba\n"
            "before = (numba.get_num_threads(), numba.config.CACHE_DIR)\n"
            "import edgerope.kernels\n"
            "assert (numba.get_num_threads(), numba.config.CACHE_DIR) == before\n"
            "print('ok')\n")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr


def test_every_public_kernel_name_is_the_kernel_whatever_was_imported_first():
    """edgerope.kernels loads its names on first use: in a fresh process whose first act is
    importing every submodule directly, each public name is still the kernel (or constant),
    never the module of the same name, and `import edgerope.kernels` alone imports no numba."""
    code = ("import sys, types, pkgutil, importlib\n"
            "import edgerope.kernels as K\n"
            "assert 'numba' not in sys.modules\n"
            "for m in pkgutil.iter_modules(K.__path__):\n"
            "    importlib.import_module('edgerope.kernels.' + m.name)\n"
            "bad = [n for n in K.__all__ if isinstance(getattr(K, n), types.ModuleType)]\n"
            "assert not bad, bad\n"
            "print('ok', len(K.__all__))\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and p.stdout.startswith("ok"), p.stderr
