"""CPython's own concurrent.futures process-pool tests, run against
corral.ProcessPoolExecutor.

The tests are the interpreter's own (`test.test_concurrent_futures`, CPython 3.12 and later):
nothing of them is copied here, only the harness is swapped, as CPython's own
create_executor_tests() does for each kind of executor: the executor under test is
corral.ProcessPoolExecutor, with the spawn context the stdlib's tests give it. The tests that
read the stdlib executor's private attributes are skipped, each with its reason, and so are the
few whose expectation is the very behaviour corral changes on purpose (a killed worker breaks the
whole stdlib executor; corral retries the job). An interpreter without CPython's test package
skips the module.
"""

import importlib
import sys

import corral
import pytest

util = pytest.importorskip("test.test_concurrent_futures.util")


def _tests(name):
    return importlib.import_module(f"test.test_concurrent_futures.{name}")


PRIVATE = "not public API: reads the stdlib executor's private attributes"
RETRIES = (
    "corral's documented difference: a worker that dies is replaced and its job retried, so "
    "the executor does not break"
)
SKIPS = {
    "test_killed_child": PRIVATE + " (executor._processes)",
    "test_saturation": PRIVATE + " (executor._processes)",
    "test_idle_process_reuse_one": PRIVATE + " (executor._processes)",
    "test_idle_process_reuse_multiple": PRIVATE + " (executor._processes)",
    "test_max_tasks_per_child": PRIVATE + " (executor._processes)",
    "test_max_tasks_per_child_defaults_to_spawn_context": PRIVATE + " (executor._mp_context)",
    "test_processes_terminate": PRIVATE + " (executor._processes)",
    "test_python_finalization_error": PRIVATE + " (threading._start_joinable_thread)",
    "test_gh105829_should_not_deadlock_if_wakeup_pipe_full": PRIVATE + " (_ThreadWakeup)",
    "test_shutdown_deadlock_pickle": PRIVATE + " (executor._executor_manager_thread)",
    "test_initializer": PRIVATE + " (executor._broken); test_pool_api.py checks the same",
    # These start a child interpreter that imports the executor by its name from
    # concurrent.futures: they test the stdlib's own, whatever the harness says (CPython skips
    # the last for it). test_executor.py runs the same scripts with corral's.
    "test_interpreter_shutdown": "runs concurrent.futures' own executor in a child",
    "test_submit_after_interpreter_shutdown": "runs concurrent.futures' own executor in a child",
    "test_hang_gh83386": "runs concurrent.futures' own executor in a child",
}


class CorralMixin(util.ExecutorMixin):
    """What the stdlib's ProcessPoolSpawnMixin gives a test, with corral's executor."""

    executor_type = corral.ProcessPoolExecutor
    ctx = "spawn"

    def setUp(self):
        reason = SKIPS.get(self._testMethodName)
        if reason is not None:
            self.skipTest(reason)
        super().setUp()


def _case(name, *bases):
    case = type(name, (*bases, CorralMixin, util.BaseTestCase), {"__module__": __name__})
    setattr(sys.modules[__name__], name, case)
    return case


_case("ProcessPoolExecutorTest", _tests("test_process_pool").ProcessPoolExecutorTest)
_case("WaitTest", _tests("test_wait").WaitTests)
_case("AsCompletedTest", _tests("test_as_completed").AsCompletedTests)
_case("ShutdownTest", _tests("test_shutdown").ProcessPoolShutdownTest)
_case("InitializerTest", _tests("test_init").InitializerMixin)
_case("FailingInitializerTest", _tests("test_init").FailingInitializerMixin)
_case("DeadlockTest", _tests("test_deadlock").ExecutorDeadlockTest)
