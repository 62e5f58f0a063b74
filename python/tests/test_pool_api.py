"""corral.Pool as multiprocessing.Pool: its signature, state errors, results, exceptions and
the hangs multiprocessing users know, each side by side with multiprocessing where they agree."""

import multiprocessing
import os
import pickle
import signal
import threading
import time

import corral
import pool_tasks
import pytest


def both():
    """multiprocessing's spawn Pool and corral's, for the checks where they must agree."""
    return [multiprocessing.get_context("spawn").Pool, corral.Pool]


@pytest.mark.parametrize("make", both(), ids=["multiprocessing", "corral"])
def test_the_constructor_validates_as_multiprocessing_does(make):
    for processes in (0, -1):
        with pytest.raises(ValueError, match="Number of processes must be at least 1"):
            make(processes)
    with pytest.raises(TypeError, match="initializer must be a callable"):
        make(1, initializer=1)
    for value in (0, -1, 0.5, "12"):
        with pytest.raises(ValueError, match="maxtasksperchild must be a positive int or None"):
            make(1, maxtasksperchild=value)


def test_the_fourth_positional_parameter_is_maxtasksperchild(tmp_path):
    # Pool(2, None, (), 1): one job per worker, as in multiprocessing (not a timeout).
    with corral.Pool(2, None, (), 1) as pool:
        pids = pool.map(pool_tasks.sleep_for, [0.2] * 6, chunksize=1)
    assert len(set(pids)) == 6, "each worker ran one job, then was replaced"
    with corral.Pool(2, max_tasks_per_child=1) as pool:
        assert len(set(pool.map(pool_tasks.pid, range(4), chunksize=1))) == 4


def test_corral_options_are_keyword_only_and_checked_at_once():
    with pytest.raises(TypeError):
        corral.Pool(2, None, (), None, None, "30s")
    with pytest.raises(ValueError, match="timeout"):
        corral.Pool(1, timeout=-1)
    with pytest.raises(ValueError, match="retries"):
        corral.Pool(1, retries=-1)
    with pytest.raises(TypeError, match="give maxtasksperchild or max_tasks_per_child"):
        corral.Pool(1, maxtasksperchild=2, max_tasks_per_child=3)


def test_state_errors_are_multiprocessing_s():
    pool = corral.Pool(1)
    with pytest.raises(ValueError, match="Pool is still running"):
        pool.join()
    pool.close()
    for call in (
        lambda: pool.map(pool_tasks.square, [1]),
        lambda: pool.apply_async(pool_tasks.square, (1,)),
        lambda: pool.imap(pool_tasks.square, [1]),
    ):
        with pytest.raises(ValueError, match="Pool not running"):
            call()
    pool.join()
    with pytest.raises(NotImplementedError):
        pickle.dumps(pool)


def test_the_initializer_runs_once_per_worker_over_many_calls(tmp_path, monkeypatch):
    log = tmp_path / "inits"
    monkeypatch.setenv(pool_tasks.INIT_LOG, str(log))
    with corral.Pool(2, initializer=pool_tasks.init, initargs=("ready",)) as pool:
        seen = set()
        for _ in range(5):
            for worker, inits, tag in pool.map(pool_tasks.who, range(200)):
                assert inits == 1 and tag == "ready"
                seen.add(worker)
        assert len(pool.apply(pool_tasks.who, (0,))) == 3
    pids = [int(p) for p in log.read_text().split()]
    # Once in each worker process that started, however many calls ran: not once per call.
    assert len(pids) == len(set(pids)) <= 2, f"the initializer ran in {pids}"
    assert seen <= set(pids)


def test_apply_async_callbacks_and_async_result():
    got = []
    with corral.Pool(2) as pool:
        ok = pool.apply_async(pool_tasks.square, (6,), callback=got.append)
        bad = pool.apply_async(pool_tasks.fail_on_three, (3,), error_callback=got.append)
        slow = pool.apply_async(pool_tasks.sleep_for, (5,))
        assert ok.get(timeout=10) == 36
        with pytest.raises(ValueError, match="three is not allowed"):
            bad.get(timeout=10)
        assert ok.ready() and ok.successful()
        assert bad.ready() and not bad.successful()
        with pytest.raises(corral.TimeoutError):
            slow.get(timeout=0.1)
        assert corral.TimeoutError is multiprocessing.TimeoutError
        with pytest.raises(ValueError, match="not ready"):
            slow.successful()
        slow.wait(0.05)
        assert not slow.ready()
        assert got[0] == 36 and isinstance(got[1], ValueError)
        # kwds, and a map whose results are awaited later
        assert pool.apply(pool_tasks.keywords, (1,), {"b": 2}) == {"a": 1, "b": 2}
        result = pool.starmap_async(divmod, [(7, 2), (9, 4)], callback=got.append)
        assert result.get(10) == [(3, 1), (2, 1)] and got[-1] == [(3, 1), (2, 1)]


def test_exceptions_come_back_as_themselves_with_the_remote_traceback():
    with corral.Pool(1) as pool:
        with pytest.raises(ValueError) as caught:
            pool.map(int, ["1", "a"])
        assert caught.value.args == ("invalid literal for int() with base 10: 'a'",)
        assert isinstance(caught.value.__cause__, multiprocessing.pool.RemoteTraceback)
        with pytest.raises(pool_tasks.Custom) as caught:
            pool.apply(pool_tasks.raise_custom, ("x", 3))
        assert caught.value.args == ("x", 3)
        assert "raise Custom(" in caught.value.__cause__.tb
        # An exception that cannot be pickled comes back as a stand-in naming it.
        with pytest.raises(corral.RemoteError) as caught:
            pool.apply(pool_tasks.raise_unpicklable)
        assert caught.value.type_name == "pool_tasks.Unpicklable"
        assert "cannot travel" in caught.value.message
        assert "raise Unpicklable(" in str(caught.value.__cause__)


def test_a_crash_on_every_attempt_is_a_job_failed_and_a_broken_process_pool():
    from concurrent.futures.process import BrokenProcessPool

    with corral.Pool(2, retries=1) as pool:
        results = pool.map(pool_tasks.kill_self_on, [1, 2, 3], chunksize=1, return_exceptions=True)
        assert results[0] == 1 and results[2] == 3
        crashed = results[1]
        assert isinstance(crashed, corral.JobCrashed) and isinstance(crashed, BrokenProcessPool)
        assert crashed.kind == "crashed" and crashed.attempts == 2 and crashed.worker > 0
        assert "SIGKILL" in crashed.message
        # The pool goes on.
        assert pool.map(pool_tasks.square, range(4)) == [0, 1, 4, 9]


def test_close_and_join_return_at_once_after_a_failed_map_or_a_broken_imap():
    # CPython issue 23992: corral read every result, whatever the caller does with them.
    pool = corral.Pool(2)
    with pytest.raises(ValueError):
        pool.map(pool_tasks.fail_on_three, range(5_000))
    for value in pool.imap(pool_tasks.ident, range(20_000)):
        if value == 10:
            break
    started = time.monotonic()
    pool.close()
    pool.join()
    assert time.monotonic() - started < 5


def test_an_abandoned_imap_drops_its_queued_jobs():
    with corral.Pool(1) as pool:
        it = pool.imap(pool_tasks.sleep_for, [0.2] * 1_000)
        next(it)
        started = time.monotonic()
        del it
        # Were the 999 others still queued, this would wait behind them.
        assert pool.apply(pool_tasks.square, (3,)) == 9
        assert time.monotonic() - started < 5
        pool.close()
        pool.join()
        assert time.monotonic() - started < 5


def test_calls_from_many_threads_share_the_workers():
    with corral.Pool(2) as pool:
        results = {}

        def run(n):
            results[n] = pool.map(pool_tasks.square, range(n, n + 50))

        threads = [threading.Thread(target=run, args=(n,)) for n in range(0, 400, 50)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        pids = set(pool.map(pool_tasks.pid, range(100)))
    assert all(results[n] == [i * i for i in range(n, n + 50)] for n in results)
    assert len(pids) <= 2


def test_a_terminated_pool_fails_what_it_had_not_answered():
    pool = corral.Pool(1)
    result = pool.map_async(pool_tasks.sleep_for, [30])
    time.sleep(0.2)
    started = time.monotonic()
    pool.terminate()
    pool.join()
    assert time.monotonic() - started < 5
    with pytest.raises(corral.JobCancelled):
        result.get(timeout=5)


def test_a_running_pool_collected_warns_and_stops():
    pool = corral.Pool(1)
    supervisor = pool._supervisor.proc
    with pytest.warns(ResourceWarning, match="unclosed running multiprocessing pool"):
        del pool
        import gc

        gc.collect()
    supervisor.wait(timeout=5)


def test_values_json_would_change_and_lone_surrogates_travel():
    odd = [(1, 2), b"\x00", {3}, {1: "a"}, "caf\udce9", ["x\udc80"], 2**80]
    with corral.Pool(1) as pool:
        assert pool.map(pool_tasks.ident, odd) == odd
        assert pool.apply(pool_tasks.ident, ("caf\udce9",)) == "caf\udce9"
        assert pool.apply(pool_tasks.surrogate) == "name-\udcff"


def test_large_arguments_and_results_travel_whole():
    big = os.urandom(80 << 20)
    with corral.Pool(1) as pool:
        assert pool.apply(pool_tasks.length, (big,)) == len(big)
        back = pool.apply(pool_tasks.make_bytes, (70 << 20,))
        assert len(back) == 70 << 20
        # A crash retries a job whose arguments went through a file.
        assert pool.map(pool_tasks.length, [big[: 2 << 20]] * 2) == [2 << 20] * 2
        directory = pool._supervisor.directory
        # Inputs that went through files are removed once answered, results once read.
        assert [n for n in os.listdir(directory) if n.startswith(("in-", "out-"))] == []
    assert not os.path.exists(directory)


def test_manager_proxies_work_as_arguments_and_initargs():
    with multiprocessing.Manager() as manager:
        shared = manager.list()
        with corral.Pool(2, initializer=pool_tasks.remember, initargs=(shared,)) as pool:
            pool.map(pool_tasks.append_to, [(shared, i) for i in range(10)])
            pool.map(pool_tasks.append_remembered, range(3))
        assert sorted(shared) == [*range(10), 100, 101, 102]


def test_what_a_task_prints_reaches_this_process_s_stdout(capfd):
    with corral.Pool(1) as pool:
        pool.apply(pool_tasks.shout, ("hello from a worker",))
        pool.apply(pool_tasks.write_fd1, (b"raw bytes on fd 1\n",))
    out = capfd.readouterr().out
    assert "hello from a worker" in out and "raw bytes on fd 1" in out


def test_a_task_that_leaves_a_thread_running_does_not_hold_the_pool():
    started = time.monotonic()
    with corral.Pool(2) as pool:
        assert pool.map(pool_tasks.start_thread, range(4)) == list(range(4))
        pool.close()
        pool.join()
    assert time.monotonic() - started < 10


def test_sigkill_of_workers_mid_run_loses_nothing(tmp_path):
    with corral.Pool(2) as pool:
        result = pool.map_async(pool_tasks.sleep_then_square, range(200), chunksize=1)
        time.sleep(0.5)
        for pid in set(pool.map(pool_tasks.pid, range(8), chunksize=1)):
            os.kill(pid, signal.SIGKILL)
        assert result.get(60) == [i * i for i in range(200)]


def test_a_supervisor_killed_under_the_pool_fails_its_calls_clearly():
    pool = corral.Pool(1)
    try:
        pending = pool.map_async(pool_tasks.sleep_for, [30])
        os.kill(pool._supervisor.proc.pid, signal.SIGKILL)
        with pytest.raises(corral.BrokenPool, match="supervisor ended"):
            pending.get(timeout=30)
        # Calls made after it are failed too, not left waiting or broken pipes.
        with pytest.raises(corral.BrokenPool):
            pool.map(pool_tasks.square, range(3))
        with pytest.raises(corral.BrokenPool):
            pool.apply(pool_tasks.square, (3,))
    finally:
        pool.terminate()
        pool.join()


def test_a_bound_method_goes_with_its_object_s_state_at_each_call():
    adder = pool_tasks.Adder(1)
    with corral.Pool(1) as pool:
        assert pool.map(adder.add, [1, 2]) == [2, 3]
        adder.n = 10
        assert pool.map(adder.add, [1, 2]) == [11, 12], "not the state of the first call"


def test_a_map_without_chunksize_goes_in_one_chunk_per_worker_once_its_items_are_cheap():
    from corral import _calls

    ref = _calls.function_ref(pool_tasks.fail_on_three)
    # Never measured: multiprocessing's rule, about four chunks per worker, the last ones split.
    _calls._costs.pop(ref, None)
    assert _calls.default_chunksize(pool_tasks.fail_on_three, 10, 2) == (2, True)
    with corral.Pool(2) as pool:
        with pytest.raises(ValueError):
            pool.map(pool_tasks.fail_on_three, range(10))
        # What each item took, as corral measured its chunks.
        assert _calls._costs[ref] > 0
        # Cheap items: ten of them are less work than is worth balancing.
        _calls._costs[ref] = 0.01
        assert _calls.default_chunksize(pool_tasks.fail_on_three, 10, 2) == (5, False)
        assert _calls.default_chunksize(pool_tasks.fail_on_three, 200, 2) == (100, False)
        # One chunk per worker changes nothing a map returns or raises.
        _calls._costs[ref] = 0.01
        with pytest.raises(ValueError, match="three"):
            pool.map(pool_tasks.fail_on_three, range(10))
        _calls._costs[ref] = 0.01
        assert pool.map(pool_tasks.fail_on_three, range(3)) == [0, 1, 2]
        # Items measured slow, or many cheap ones, are balanced as multiprocessing does.
        _calls._costs[ref] = 50.0
        assert _calls.default_chunksize(pool_tasks.fail_on_three, 10, 2) == (2, True)
        _calls._costs[ref] = 0.01
        assert _calls.default_chunksize(pool_tasks.fail_on_three, 100_000, 2) == (12_500, True)


def test_corral_s_exceptions_are_importable_and_pickle_as_themselves():
    from concurrent.futures.process import BrokenProcessPool

    for name in corral.__all__:
        cls = getattr(corral, name)
        if not (isinstance(cls, type) and issubclass(cls, BaseException)):
            continue
        assert cls.__module__ == "corral" or cls is corral.TimeoutError, name
        if issubclass(cls, corral.JobFailed):
            exc = cls("crashed", "message", 3, 1234)
            again = pickle.loads(pickle.dumps(exc))
            assert type(again) is cls and again.attempts == 3 and again.worker == 1234
    for name in ("JobCrashed", "JobUnreadable", "BrokenPool"):
        assert issubclass(getattr(corral, name), BrokenProcessPool), name
    assert not issubclass(corral.JobTimedOut, BrokenProcessPool)
