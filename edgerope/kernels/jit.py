"""The one JIT policy of edgerope: every Numba kernel is compiled through `kernel()`.

- cache=True, so compiled machine code survives between runs (NUMBA_CACHE_DIR may point at a
  user-writable directory when the package is installed read-only).
- fastmath without `nnan`/`ninf`: reassociation and contraction let LLVM vectorize reductions,
  while -inf attention masks and NaN checks keep their IEEE meaning.
- nogil, so independent sessions can run kernels from several Python threads.
- error_model="numpy": no Python exception checks on division in inner loops.

Memory: Numba starts without SciPy (`_SkipNumbaProbes`; so this module is imported before
any other that imports numba), and after every compile or cache load the pages of code run
once (LLVM above all) leave the resident set (`_DropCompilerPages`), so that a running
model's resident set is its weights, KV cache and buffers plus the Python objects of Python,
numpy and Numba.

Only modules inside `edgerope.kernels` import numba.
"""
import os
import sys
import threading


class _SkipNumbaProbes:
    """Import hook: refuses SciPy to two probes in Numba, nothing else.

    - numba/__init__ imports scipy only to check its version (~1.3 MiB, 23 modules);
    - numba.np.arraymath imports scipy.linalg.cython_blas when Numba's CPU target starts
      (first compile or cache load), only to decide whether np.dot inside jitted code may
      call BLAS, which no edgerope kernel does: ~15 MiB of resident memory and ~0.2 s
      (scipy.linalg brings numpy.f2py, charset_normalizer and 80 codecs).
    Both catch the ImportError. Once arraymath is in, its flag is replaced by one that runs
    Numba's own check when first read (`settle`): np.dot in other jitted code still calls
    BLAS, importing SciPy when that code is compiled. An import from anywhere else is not
    touched (the probe's frame must be on the importing thread's stack)."""

    _PROBES = (("numba", "_ensure_critical_deps", "scipy"),
               ("numba.np.arraymath", "<module>", "scipy"))

    def find_spec(self, name, path=None, target=None):
        if name.startswith("scipy"):
            f = sys._getframe(1)
            while f is not None:
                for module, code, refused in self._PROBES:
                    if (name == refused or name.startswith(refused + ".")) and \
                            f.f_code.co_name == code and f.f_globals.get("__name__") == module:
                        raise ImportError(f"{name}: not needed by edgerope's kernels")
                f = f.f_back
        return None

    def settle(self) -> bool:
        """After numba.np.arraymath is imported: its BLAS flag asked on use, hook removed
        (returns True: nothing left to do)."""
        arraymath = sys.modules.get("numba.np.arraymath")
        if arraymath is None or not hasattr(arraymath, "_HAVE_BLAS"):
            return False
        if arraymath._HAVE_BLAS is False:
            arraymath._HAVE_BLAS = _AskedOnUse(arraymath._check_blas)
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        return True


_probe = None
if "numba.np.arraymath" not in sys.modules:
    _probe = _SkipNumbaProbes()
    sys.meta_path.insert(0, _probe)

import numba  # noqa: E402 - after the hook
from numba.core import event  # noqa: E402

_PKG = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if not numba.config.CACHE_DIR and not os.access(_PKG, os.W_OK):
    # Installed read-only (system site-packages): keep compiled kernels in a user cache, so
    # the second run does not compile again.
    numba.config.CACHE_DIR = os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
        "edgerope", "numba")

FASTMATH = frozenset({"nsz", "arcp", "contract", "afn", "reassoc"})


def kernel(fn=None, *, parallel=False):
    """Decorator: compile `fn` with the project's JIT policy (`parallel=True` enables prange)."""
    def wrap(f):
        return numba.njit(cache=True, nogil=True, fastmath=set(FASTMATH),
                          parallel=parallel, error_model="numpy")(f)
    return wrap(fn) if fn is not None else wrap


def max_threads():
    """Upper bound for set_threads (numba's pool size, fixed at import)."""
    return numba.config.NUMBA_NUM_THREADS


def default_threads():
    """Physical performance cores (edgerope.system.physical_cores), at most the pool size:
    SMT siblings and LITTLE cores share a core's matmul units or lag behind, and the slowest
    thread sets the pace of a parallel matmul."""
    from edgerope.system import physical_cores
    return max(1, min(physical_cores(), max_threads()))


def set_threads(n=None):
    """Set the number of threads kernels use; None = `default_threads()`. Returns the count
    used."""
    n = default_threads() if n is None else int(n)
    n = max(1, min(n, max_threads()))
    numba.set_num_threads(n)
    return n


def get_threads():
    return numba.get_num_threads()


prange = numba.prange


class _AskedOnUse:
    """A flag computed by `check()` the first time it is read (bool())."""

    def __init__(self, check):
        self._check, self._value = check, None

    def __bool__(self):
        if self._value is None:
            self._value = bool(self._check())
        return self._value


class _DropCompilerPages(event.Listener):
    """After every compile or cache load (Numba's compiler lock, held by both), once no
    thread is compiling or waiting to, drops this process's clean shared-library pages
    (system.drop_clean_library_pages).

    What that removes from the resident set is code run once: ~36 MiB of libllvmlite that
    its start-up touched, ~30 MiB more that linking a cached kernel runs, start-up code of
    other libraries (libcrypto, numpy, libpython: ~13 MiB). None of LLVM runs again until
    another kernel is compiled; code still in use maps back on its next call from the page
    cache (microseconds a page). Kernels load during a model's first layer, before the bulk
    of the weights is read, so the peak resident set never holds both."""

    def __init__(self, blas_probe):
        self._lock = threading.Lock()
        self._depth = 0
        self._blas_probe = blas_probe

    def on_start(self, ev):
        with self._lock:
            self._depth += 1

    def on_end(self, ev):
        with self._lock:
            self._depth -= 1
            idle = self._depth == 0
        if idle:
            if self._blas_probe is not None and self._blas_probe.settle():
                self._blas_probe = None
            from edgerope.system import drop_clean_library_pages
            drop_clean_library_pages()


event.register("numba:compiler_lock", _DropCompilerPages(_probe))

# The API's default too, not only the CLI's: kernels called without set_threads() run on the
# physical cores (numba's own default is every logical CPU; the setting is per Python thread).
set_threads(None)
