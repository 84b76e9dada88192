"""What slow first-run phases say on stderr (edgerope.runtime): one line when kernels compile
(only on a cache miss) and when a registry model is converted, none with -q / quiet, no
progress-bar frames when stderr is not a terminal; and the run after a conversion compiles
nothing (it runs on the same memory-mapped files as every later run)."""
import os
import subprocess
import sys
import textwrap

from test_generate import tiny_dir  # noqa: F401 - a tiny Llama with a tokenizer

_COMPILE = "edgerope: compiling kernels for this CPU (first run only; cached for later runs) ..."


def _run(code, *args, env):
    p = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], env=env,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    return p


def test_compile_line_once_on_a_cache_miss_and_quiet_silences_it(tmp_path):
    code = """
        import sys
        import numpy as np
        from edgerope import kernels as K, runtime
        runtime.setup(quiet=sys.argv[1] == "quiet")
        a = np.arange(5, dtype=np.float32)
        out = np.empty_like(a)
        K.add(out, a, a)                     # two kernels compiled, one line
        K.scale_(out, np.float32(0.5))
        assert np.array_equal(out, a)
        for _ in runtime.progress(range(3), desc="bar"):  # stderr is a pipe: no frames
            pass
    """
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "a"))
    assert _run(code, "talk", env=env).stderr.splitlines() == [_COMPILE]
    assert _run(code, "talk", env=env).stderr == ""  # cached: nothing compiled, nothing said
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "b"))
    assert _run(code, "quiet", env=env).stderr == ""  # compiled, silently


def test_first_run_converts_and_the_second_compiles_nothing(tiny_dir, tmp_path):
    """A registry model (here a tiny one): run 1 says it compiles and converts (and where
    to), then runs on the converted files; run 2, a new process, compiles nothing and says
    nothing. A fresh kernel cache, so run 1 compiles every kernel the model needs."""
    code = """
        import sys
        from edgerope.io import registry
        registry.is_registered = lambda name: name == "tiny"
        registry.locate = lambda name: sys.argv[1]
        from edgerope.cli import main
        main(["generate", "-m", "tiny", "-n", "3", "--temp", "0", "-p", "hello"] + sys.argv[2:])
    """
    weights = tmp_path / "weights"
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba"), EDGEROPE_WEIGHTS=str(weights))
    first = _run(code, tiny_dir[0], env=env)
    said = [x for x in first.stderr.splitlines() if x.startswith("edgerope: ")]
    assert said == [f"edgerope: converting tiny once into edgerope's int8 format: "
                    f"{weights / 'tiny-int8'} ...", _COMPILE], first.stderr
    second = _run(code, tiny_dir[0], env=env)
    assert not [x for x in second.stderr.splitlines() if x.startswith("edgerope: ")], \
        second.stderr
    assert second.stdout == first.stdout  # the same tokens from the converted files
    env["EDGEROPE_WEIGHTS"] = str(tmp_path / "weights-q")  # converts again, silently
    quiet = _run(code, tiny_dir[0], "-q", env=env)
    assert not [x for x in quiet.stderr.splitlines() if x.startswith("edgerope: ")]
    assert os.path.isdir(tmp_path / "weights-q" / "tiny-int8")
