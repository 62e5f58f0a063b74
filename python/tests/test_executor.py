"""corral.ProcessPoolExecutor as concurrent.futures.ProcessPoolExecutor: futures, wait,
as_completed, asyncio's run_in_executor; and where it differs on purpose, a killed worker."""

import asyncio
import concurrent.futures as cf
import os
import signal
import subprocess
import sys
import textwrap
import time
from concurrent.futures.process import BrokenProcessPool

import corral
import pool_tasks
import pytest
from processes import alive, wait_until

TESTS = os.path.dirname(os.path.abspath(__file__))


@pytest.mark.parametrize(
    "make", [cf.ProcessPoolExecutor, corral.ProcessPoolExecutor], ids=["stdlib", "corral"]
)
def test_the_constructor_validates_as_the_stdlib_does(make):
    for workers in (0, -1):
        with pytest.raises(ValueError, match="max_workers must be greater than 0"):
            make(workers)
    with pytest.raises(TypeError, match="initializer must be a callable"):
        make(1, initializer=1)
    with pytest.raises(TypeError, match="max_tasks_per_child must be an integer"):
        make(1, max_tasks_per_child=0.5)
    with pytest.raises(ValueError, match="max_tasks_per_child must be >= 1"):
        make(1, max_tasks_per_child=0)


def test_futures_wait_as_completed_and_run_in_executor():
    with corral.ProcessPoolExecutor(2) as executor:
        futures = [executor.submit(pool_tasks.square, i) for i in range(1_000)]
        done = {f.result() for f in cf.as_completed(futures, timeout=60)}
        assert done == {i * i for i in range(1_000)}
        first = executor.submit(pool_tasks.sleep_for, 0)
        slow = executor.submit(pool_tasks.sleep_for, 2)
        finished, pending = cf.wait([first, slow], return_when=cf.FIRST_COMPLETED, timeout=20)
        assert finished == {first} and pending == {slow}
        assert slow.cancel() is False, "a future sent to the workers is running"
        assert executor.submit(pool_tasks.keywords, 1, b=2).result() == {"a": 1, "b": 2}

        async def main():
            loop = asyncio.get_running_loop()
            return await asyncio.gather(
                *(loop.run_in_executor(executor, pool_tasks.square, i) for i in range(20))
            )

        assert asyncio.run(main()) == [i * i for i in range(20)]
        executor.shutdown(wait=False, cancel_futures=True)


def test_map_is_in_order_raises_where_it_fails_and_times_out():
    with corral.ProcessPoolExecutor(2) as executor:
        assert list(executor.map(pow, range(10), range(10), chunksize=3)) == [
            pow(i, i) for i in range(10)
        ]
        results = executor.map(divmod, [1, 1, 1], [2, 0, 5])
        assert next(results) == (0, 1)
        with pytest.raises(ZeroDivisionError):
            next(results)
        with pytest.raises(cf.TimeoutError):
            list(executor.map(time.sleep, [0, 2], timeout=0.5))


def test_a_task_s_exception_carries_the_worker_s_traceback():
    with corral.ProcessPoolExecutor(1) as executor:
        with pytest.raises(pool_tasks.Custom) as caught:
            executor.submit(pool_tasks.raise_custom, "boom").result()
    assert caught.value.args == ("boom",)
    assert type(caught.value.__cause__) is cf.process._RemoteTraceback
    assert "raise Custom(" in caught.value.__cause__.tb


def test_a_worker_killed_mid_storm_costs_no_future_and_the_executor_goes_on(tmp_path):
    # Where the stdlib's breaks for good, corral retries the jobs the dead worker held.
    marker = str(tmp_path / "killed")
    with corral.ProcessPoolExecutor(2) as executor:
        futures = [executor.submit(pool_tasks.die_once, (i, marker)) for i in range(2_000)]
        assert [f.result(timeout=120) for f in futures] == [i * i for i in range(2_000)]
        assert os.path.exists(marker), "a worker was killed"
        # A job that kills its worker on every attempt fails alone, as a BrokenProcessPool.
        doomed = executor.submit(pool_tasks.kill_self_on, 2)
        with pytest.raises(BrokenProcessPool) as caught:
            doomed.result(timeout=60)
        assert isinstance(caught.value, corral.JobCrashed)
        assert executor.submit(pool_tasks.square, 5).result(timeout=60) == 25


def test_workers_killed_from_outside_mid_storm_lose_nothing():
    with corral.ProcessPoolExecutor(2) as executor:
        futures = [executor.submit(pool_tasks.sleep_then_square, i) for i in range(300)]
        pids = {executor.submit(pool_tasks.pid, i).result() for i in range(6)}
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        assert [f.result(timeout=120) for f in futures] == [i * i for i in range(300)]


def test_a_failing_initializer_breaks_the_executor_with_its_own_exception():
    executor = corral.ProcessPoolExecutor(2, initializer=pool_tasks.init_fails)
    future = executor.submit(pool_tasks.square, 2)
    with pytest.raises(BrokenProcessPool) as caught:
        future.result(timeout=60)
    cause = caught.value.__cause__
    assert type(cause) is ValueError and cause.args == ("no model here",)
    assert "init_fails" in str(cause.__cause__), "the worker's traceback"
    with pytest.raises(BrokenProcessPool):
        executor.submit(pool_tasks.square, 3)
    executor.shutdown()


def test_shutdown_cancel_futures_cancels_what_was_not_sent():
    executor = corral.ProcessPoolExecutor(2)
    futures = [executor.submit(pool_tasks.sleep_for, 0.1) for _ in range(50)]
    executor.shutdown(cancel_futures=True)
    cancelled = [f for f in futures if f.cancelled()]
    assert len(cancelled) > 20
    assert all(f.done() for f in futures)
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        executor.submit(pool_tasks.square, 1)


def run_script(tmp_path, body, *args):
    script = tmp_path / "script.py"
    script.write_text(f"import sys\nsys.path.insert(0, {TESTS!r})\n" + textwrap.dedent(body))
    return subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, timeout=120
    )


def test_work_submitted_before_exit_finishes_as_with_the_stdlib(tmp_path):
    # CPython's test_interpreter_shutdown and test_hang_gh83386, with corral's executor.
    done = run_script(
        tmp_path,
        """
        import corral, pool_tasks
        if __name__ == "__main__":
            executor = corral.ProcessPoolExecutor(3)
            executor.submit(pool_tasks.sleep_and_print, 1.0, "apple")
            executor.shutdown(wait=False)
        """,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "apple" and not done.stderr


def test_submit_after_interpreter_shutdown_is_refused(tmp_path):
    done = run_script(
        tmp_path,
        """
        import atexit, corral, pool_tasks
        if __name__ == "__main__":
            executor = corral.ProcessPoolExecutor(1)
            def later():
                try:
                    executor.submit(pool_tasks.square, 2)
                except RuntimeError as e:
                    print("refused:", e)
            atexit.register(later)
        """,
    )
    assert done.returncode == 0, done.stderr
    assert "cannot schedule new futures after interpreter shutdown" in done.stdout


def test_ctrl_c_in_the_parent_stops_the_executor_at_once(tmp_path):
    # Where the stdlib's executor waits for every job it was given, corral's stops.
    started = time.monotonic()
    done = run_script(
        tmp_path,
        """
        import os, signal, corral, pool_tasks
        if __name__ == "__main__":
            signal.signal(signal.SIGINT, signal.default_int_handler)
            with corral.ProcessPoolExecutor(2) as executor:
                pids = {executor.submit(pool_tasks.pid, i).result() for i in range(4)}
                print(" ".join(map(str, pids)), flush=True)
                futures = [executor.submit(pool_tasks.sleep_for, 30) for _ in range(8)]
                os.kill(os.getpid(), signal.SIGINT)
                futures[0].result()
        """,
    )
    assert time.monotonic() - started < 20
    assert "KeyboardInterrupt" in done.stderr
    pids = [int(p) for p in done.stdout.split()]
    assert pids
    assert wait_until(lambda: not any(alive(p) for p in pids), 2), pids
