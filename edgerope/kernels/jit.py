"""The one JIT policy of edgerope: every Numba kernel is compiled through `kernel()`.

- cache=True, so compiled machine code survives between runs (NUMBA_CACHE_DIR may point at a
  user-writable directory when the package is installed read-only).
- fastmath without `nnan`/`ninf`: reassociation and contraction let LLVM vectorize reductions,
  while -inf attention masks and NaN checks keep their IEEE meaning.
- nogil, so independent sessions can run kernels from several Python threads.
- error_model="numpy": no Python exception checks on division in inner loops.

Only modules inside `edgerope.kernels` import numba.
"""
import os

import numba

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
    from ..system import physical_cores
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

# The API's default too, not only the CLI's: kernels called without set_threads() run on the
# physical cores (numba's own default is every logical CPU; the setting is per Python thread).
set_threads(None)
