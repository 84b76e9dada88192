"""The one JIT policy of edgerope: every Numba kernel is compiled through `kernel()`.

- Cached machine code, keyed on the kernel sources: each dispatcher's cache stamp is a hash
  of every edgerope/kernels/*.py file, so editing any of them (simd.py's IR cores are inlined
  into kernels of other files) recompiles every kernel instead of reusing stale code. The
  cache lives in NUMBA_CACHE_DIR when the user set it, else in the package's __pycache__ when
  writable, else in $XDG_CACHE_HOME/edgerope/numba (~/.cache/edgerope/numba): chosen by the
  cache locator, without touching numba.config.
- fastmath without `nnan`/`ninf`: reassociation and contraction let LLVM vectorize reductions,
  while -inf attention masks and NaN checks keep their IEEE meaning.
- nogil, so independent sessions can run kernels from several Python threads.
- error_model="numpy": no Python exception checks on division in inner loops.

Importing this module changes nothing in the host process (no Numba setting, no thread
count, no import hook); threads are set on request (`set_threads`, or edgerope.runtime).
Only modules inside `edgerope.kernels` import numba.
"""
import functools
import hashlib
import os

import numba
from numba.core.caching import CompileResultCacheImpl, FunctionCache, _CacheLocator

FASTMATH = frozenset({"nsz", "arcp", "contract", "afn", "reassoc"})
_KERNELS_DIR = os.path.dirname(os.path.abspath(__file__))


@functools.lru_cache(maxsize=None)
def source_stamp():
    """sha256 over the names and contents of edgerope/kernels/*.py: the freshness stamp of
    every cached kernel."""
    h = hashlib.sha256()
    for name in sorted(os.listdir(_KERNELS_DIR)):
        if name.endswith(".py"):
            h.update(name.encode() + b"\0")
            with open(os.path.join(_KERNELS_DIR, name), "rb") as f:
                h.update(f.read())
            h.update(b"\0")
    return h.hexdigest()


def _user_cache_dir():
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "edgerope", "numba")


class _Locator(_CacheLocator):
    """Where a kernel's cache files go, and the stamp they must carry to be loaded."""

    def __init__(self, py_func, path):
        self._lineno = py_func.__code__.co_firstlineno
        self._path = path

    def get_cache_path(self):
        return self._path

    def get_source_stamp(self):
        return source_stamp()

    def get_disambiguator(self):
        return str(self._lineno)

    @classmethod
    def from_function(cls, py_func, py_file):
        sub = cls.get_suitable_cache_subpath(py_file)
        if numba.config.CACHE_DIR:  # the user's choice (NUMBA_CACHE_DIR)
            candidates = [os.path.join(numba.config.CACHE_DIR, sub)]
        else:  # in tree when writable; else per user (a read-only install)
            candidates = [os.path.join(os.path.dirname(py_file), "__pycache__"),
                          os.path.join(_user_cache_dir(), sub)]
        for path in candidates:
            self = cls(py_func, path)
            try:
                self.ensure_cache_path()
            except OSError:
                continue
            return self
        return None


class _CacheImpl(CompileResultCacheImpl):
    _locator_classes = [_Locator]


class _Cache(FunctionCache):
    _impl_class = _CacheImpl


def kernel(fn=None, *, parallel=False):
    """Decorator: compile `fn` with the project's JIT policy (`parallel=True` enables prange)."""
    def wrap(f):
        disp = numba.njit(nogil=True, fastmath=set(FASTMATH), parallel=parallel,
                          error_model="numpy")(f)
        disp._cache = _Cache(disp.py_func)  # what cache=True does, with our locator
        return disp
    return wrap(fn) if fn is not None else wrap


def max_threads() -> int:
    """Upper bound for set_threads (numba's pool size, fixed at import)."""
    return numba.config.NUMBA_NUM_THREADS


def set_threads(n: int) -> int:
    """Run kernels called from this Python thread on `n` threads, clamped to 1..max_threads().
    Returns the count used."""
    n = max(1, min(int(n), max_threads()))
    numba.set_num_threads(n)
    return n


def get_threads() -> int:
    """Threads kernels called from this Python thread run on (Numba's setting)."""
    return numba.get_num_threads()


prange = numba.prange


_listener = None


def install_compile_listener() -> None:
    """One numba:compile listener calling edgerope.kernels.on_compile's callbacks when an
    edgerope kernel starts compiling; installed only once someone registered one."""
    global _listener
    if _listener is not None:
        return
    from numba.core import event

    from edgerope import kernels

    class _Notice(event.Listener):
        def on_start(self, ev):
            disp = (ev.data or {}).get("dispatcher")
            module = getattr(getattr(disp, "py_func", None), "__module__", "") or ""
            if module.startswith("edgerope.kernels"):
                for fn in list(kernels._compile_callbacks):
                    fn()

        def on_end(self, ev):
            pass

    _listener = _Notice()
    event.register("numba:compile", _listener)


def _loaded():
    from edgerope import kernels
    if kernels._compile_callbacks:
        install_compile_listener()


_loaded()
