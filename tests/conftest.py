"""Fixtures shared by several test modules."""
import pytest


@pytest.fixture(scope="session")
def built(tmp_path_factory):
    """name -> (directory, transformers model) of a tests/tiny_models.py case, each built once
    per test run (needs torch and transformers: import-skip them in the module first)."""
    from tiny_models import build
    cache = {}

    def get(name):
        if name not in cache:
            d = tmp_path_factory.mktemp(name)
            cache[name] = (str(d), build(name, str(d)))
        return cache[name]
    return get


@pytest.fixture(scope="session", autouse=True)
def _no_compile_notice_in_process():
    """In-process CLI tests compare stderr line by line; whether a kernel compiles first in
    one of them depends on test order and the cache. The notice is tested in fresh processes
    (test_progress.py), so here it counts as said already."""
    from edgerope import runtime
    runtime._state["said"].add("compile")
    yield


@pytest.fixture(scope="session")
def real_model():
    """`real_model(name)`: a real model installed from the package index (load_any), loaded
    once a session; the test skips when its package is not installed."""
    from edgerope.errors import EdgeropeError
    from edgerope.io.registry import load_any, locate
    loaded = {}

    def get(name):
        try:
            locate(name)
        except EdgeropeError as e:
            pytest.skip(str(e))
        if name not in loaded:
            loaded[name] = load_any(name)
        return loaded[name]
    return get
