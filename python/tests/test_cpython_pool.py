"""CPython's own multiprocessing.Pool tests, run against corral.Pool.

The tests are the interpreter's own (`test._test_multiprocessing`, shipped with CPython's test
suite): nothing of them is copied here, only the harness is swapped. Their Pool is corral.Pool,
and the `multiprocessing` they call Pool on is multiprocessing itself but for Pool. The few that
read multiprocessing's private attributes (`pool._pool`, the list of its worker processes) are
skipped, each with its reason. An interpreter without CPython's test package skips the module.
"""

import multiprocessing
import sys
import unittest

import corral
import pytest

mp_tests = pytest.importorskip("test._test_multiprocessing")

# Read a private attribute of multiprocessing.Pool: not part of the API corral.Pool promises.
PRIVATE = {
    "test_make_pool": "reads pool._pool, multiprocessing's list of worker processes",
    "test_pool_worker_lifetime": "reads pool._pool and calls pool._repopulate_pool()",
}


class _Multiprocessing:
    """multiprocessing, with corral.Pool as its Pool: what the tests that call
    multiprocessing.Pool(...) themselves see."""

    Pool = staticmethod(corral.Pool)

    def __getattr__(self, name):
        return getattr(multiprocessing, name)


def setup_module():
    mp_tests.multiprocessing = _Multiprocessing()


def teardown_module():
    mp_tests.multiprocessing = multiprocessing


class _Harness:
    """What the tests' ProcessesMixin gives them, with corral.Pool as Pool."""

    TYPE = "processes"
    Pool = staticmethod(corral.Pool)

    @classmethod
    def setUpClass(cls):
        super().setUpClass()

    def setUp(self):
        reason = PRIVATE.get(self._testMethodName)
        if reason is not None:
            self.skipTest(f"not public API: {reason}")
        super().setUp()


def _cases(base):
    return type(base.__name__.lstrip("_"), (_Harness, base, unittest.TestCase), {})


TestPool = _cases(mp_tests._TestPool)
TestPoolWorkerErrors = _cases(mp_tests._TestPoolWorkerErrors)
TestPoolWorkerLifetime = _cases(mp_tests._TestPoolWorkerLifetime)

# The functions the tests run are found in the workers by module and name.
for _case in (TestPool, TestPoolWorkerErrors, TestPoolWorkerLifetime):
    _case.__module__ = __name__
    setattr(sys.modules[__name__], _case.__name__, _case)
