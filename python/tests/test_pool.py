"""corral.Pool against the real corral binary and real Python workers."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import corral
import pool_tasks
import pytest
from processes import alive, wait_until


def test_imap_gives_every_result_in_order():
    with corral.Pool(processes=2) as pool:
        assert list(pool.imap(pool_tasks.square, range(10_000))) == [i * i for i in range(10_000)]


def test_map_starmap_and_unordered_with_inputs():
    with corral.Pool(processes=2) as pool:
        assert pool.map(pool_tasks.square, [3, 4]) == [9, 16]
        assert pool.starmap(divmod, [(7, 2), (9, 4)]) == [(3, 1), (2, 1)]
        got = sorted(pool.imap_unordered(pool_tasks.square, range(100), with_input=True))
        assert got == [(i, i * i) for i in range(100)]
        # Values JSON would change come back as they went: tuples, bytes, sets, int keys.
        odd = [(1, 2), b"\x00", {3}, {1: "a"}, float("nan")]
        back = pool.map(pool_tasks.ident, odd)
        assert back[:4] == odd[:4] and back[4] != back[4]


def test_chunks_give_the_same_results_and_keep_exceptions_per_item():
    with corral.Pool(processes=2) as pool:
        got = list(pool.imap(pool_tasks.square, range(5_000), chunksize=64))
        assert got == [i * i for i in range(5_000)]
        results = pool.map(pool_tasks.fail_on_three, range(10), chunksize=4, return_exceptions=True)
        assert [r for i, r in enumerate(results) if i != 3] == [0, 1, 2, 4, 5, 6, 7, 8, 9]
        assert isinstance(results[3], ValueError) and results[3].args == ("three is not allowed",)
        pairs = sorted(pool.imap_unordered(pool_tasks.square, range(50), 8, with_input=True))
        assert pairs == [(i, i * i) for i in range(50)]
        assert pool.starmap(divmod, [(7, 2), (9, 4), (5, 5)], chunksize=2) == [
            (3, 1),
            (2, 1),
            (1, 0),
        ]


def test_a_worker_sigkilled_mid_run_loses_nothing(tmp_path):
    marker = str(tmp_path / "killed")
    jobs = [(i, marker) for i in range(2_000)]
    with corral.Pool(processes=2) as pool:
        results = list(pool.imap(pool_tasks.die_once, jobs))
    assert os.path.exists(marker), "the worker was killed"
    assert results == [i * i for i in range(2_000)]


def test_a_raising_function_is_its_own_exception_and_the_rest_goes_on():
    with corral.Pool(processes=2) as pool:
        results = pool.map(pool_tasks.fail_on_three, range(6), return_exceptions=True)
        assert results[:3] == [0, 1, 2] and results[4:] == [4, 5]
        failure = results[3]
        assert type(failure) is ValueError and failure.args == ("three is not allowed",)
        # The worker's traceback is the cause, as multiprocessing gives it.
        assert "fail_on_three" in str(failure.__cause__)
        assert 'raise ValueError("three is not allowed")' in str(failure.__cause__)
        it = pool.imap(pool_tasks.fail_on_three, range(6))
        assert [next(it) for _ in range(3)] == [0, 1, 2]
        with pytest.raises(ValueError, match="three is not allowed"):
            next(it)
        assert list(it) == [4, 5], "iteration goes on after a failure"


def test_a_task_past_its_timeout_fails_alone():
    with corral.Pool(processes=2, timeout="500ms", retries=0) as pool:
        results = pool.map(pool_tasks.sleep_for, [0, 30, 0], return_exceptions=True)
    assert isinstance(results[1], corral.JobTimedOut) and results[1].kind == "timeout"
    assert isinstance(results[1], corral.JobFailed) and results[1].attempts == 1
    assert isinstance(results[0], int) and isinstance(results[2], int)


def test_a_chunk_that_times_out_fails_each_of_its_items_the_short_last_one_too():
    items = [0] * 8 + [0, 30]
    with corral.Pool(processes=2, timeout="500ms", retries=0) as pool:
        # A generator: its length unknown, every chunk is full but the last.
        results = list(
            pool.imap(pool_tasks.sleep_for, iter(items), chunksize=4, return_exceptions=True)
        )
    assert len(results) == len(items)
    assert all(isinstance(r, int) for r in results[:8])
    assert [r.kind for r in results[8:]] == ["timeout", "timeout"]
    # A list: its last chunks' worth (2 workers x 2 chunks) goes in quarter chunks, here of
    # one item each, so the timeout fails its own item alone.
    with corral.Pool(processes=2, timeout="500ms", retries=0) as pool:
        results = pool.map(pool_tasks.sleep_for, items, chunksize=4, return_exceptions=True)
    failed = [i for i, r in enumerate(results) if isinstance(r, corral.JobFailed)]
    assert len(results) == len(items) and failed == [9]


def test_job_failed_survives_pickle():
    import pickle

    failure = corral.JobFailed("crashed", "worker 7 was killed", 3, 7, None, "item")
    back = pickle.loads(pickle.dumps(failure))
    assert (back.kind, back.message, back.attempts, back.worker, back.item) == (
        "crashed",
        "worker 7 was killed",
        3,
        7,
        "item",
    )
    assert str(back) == str(failure)


def test_progress_reaches_a_callback_and_a_tqdm_bar(capsys):
    seen = []
    with corral.Pool(
        processes=2, progress=lambda done, failed: seen.append((done, failed))
    ) as pool:
        pool.map(pool_tasks.fail_on_three, range(10), chunksize=3, return_exceptions=True)
    assert len(seen) == 10 and seen[-1] == (9, 1)
    assert all(a[0] + a[1] + 1 == b[0] + b[1] for a, b in zip(seen, seen[1:]))
    pytest.importorskip("tqdm")
    with corral.Pool(processes=2, progress=True) as pool:
        assert pool.map(pool_tasks.square, range(500)) == [i * i for i in range(500)]
    bar = capsys.readouterr().err
    assert "500/500" in bar and "100%" in bar, bar


def test_an_imap_progress_bar_is_closed_at_the_end_or_when_the_iterator_is_closed():
    tqdm = pytest.importorskip("tqdm")
    open_bars = len(tqdm.tqdm._instances)
    with corral.Pool(processes=2, progress=True) as pool:
        assert list(pool.imap(pool_tasks.square, range(300))) == [i * i for i in range(300)]
        assert len(tqdm.tqdm._instances) == open_bars, "the bar of a finished imap is closed"
        it = pool.imap_unordered(pool_tasks.square, range(300))
        next(it)
        assert len(tqdm.tqdm._instances) == open_bars + 1
        it.close()
        assert len(tqdm.tqdm._instances) == open_bars, "close() closes the bar"

        async def all_of_them():
            return [x async for x in pool.imap(pool_tasks.square, range(50))]

        import asyncio

        assert asyncio.run(all_of_them()) == [i * i for i in range(50)]
        assert len(tqdm.tqdm._instances) == open_bars, "so does the end of an async for"


def test_the_initializer_runs_once_per_worker(tmp_path, monkeypatch):
    log = tmp_path / "inits"
    monkeypatch.setenv(pool_tasks.INIT_LOG, str(log))
    with corral.Pool(processes=2, initializer=pool_tasks.init, initargs=("ready",)) as pool:
        results = pool.map(pool_tasks.who, range(2_000))
    pids = log.read_text().split()
    assert len(pids) == len(set(pids)), f"an initializer ran twice in one worker: {pids}"
    for worker, inits, tag in results:
        assert inits == 1 and tag == "ready"
        assert str(worker) in pids


def test_lambdas_and_nested_functions_are_refused_at_submit_time():
    import pickle

    def nested(x):
        return x

    with corral.Pool(processes=1) as pool:
        for fn in (lambda x: x, nested):
            started = time.monotonic()
            # What pickle says of them, as multiprocessing raises it.
            with pytest.raises((pickle.PicklingError, AttributeError)) as caught:
                pool.map(fn, [1])
            assert time.monotonic() - started < 1
            notes = "".join(getattr(caught.value, "__notes__", []))
            assert "top level of a module" in notes
        # A partial or a builtin goes, pickled or by name.
        import functools

        assert pool.map(functools.partial(divmod, 7), [2, 3]) == [(3, 1), (2, 1)]
        assert pool.map(abs, [-1, 2]) == [1, 2]


SCRIPT = """
import os, signal, sys, threading, time
sys.path.insert(0, {tests!r})
import corral, pool_tasks

if __name__ == "__main__":
    with corral.Pool(processes=2) as pool:
        it = pool.imap_unordered(pool_tasks.sleep_for, [0, 0] + [30] * 4)
        first = [next(it), next(it)]
        print(" ".join(map(str, first)), flush=True)
        print(pool._supervisor.directory, flush=True)
        {then}
"""


def run_script(tmp_path, then):
    script = tmp_path / "parent.py"
    tests = os.path.dirname(os.path.abspath(__file__))
    script.write_text(textwrap.dedent(SCRIPT.format(tests=tests, then=then)))
    return subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def test_keyboard_interrupt_in_the_parent_leaves_no_process(tmp_path):
    parent = run_script(tmp_path, "os.kill(os.getpid(), signal.SIGINT); time.sleep(30)")
    workers = [int(p) for p in parent.stdout.readline().split()]
    assert workers, parent.stderr.read()
    parent.wait(timeout=30)
    assert "KeyboardInterrupt" in parent.stderr.read()
    assert wait_until(lambda: not any(alive(p) for p in workers), 2), workers


def test_sigkill_of_the_parent_takes_corral_and_its_workers_within_a_second(tmp_path):
    parent = run_script(tmp_path, "time.sleep(60)")
    workers = [int(p) for p in parent.stdout.readline().split()]
    assert workers, parent.stderr.read()
    directory = parent.stdout.readline().strip()
    assert os.path.isdir(directory)
    parent.send_signal(signal.SIGKILL)
    parent.wait(timeout=10)
    assert wait_until(lambda: not any(alive(p) for p in workers), 1), workers
    # Nobody is left to remove the pool's private directory but corral, as it goes.
    assert wait_until(lambda: not os.path.exists(directory), 2), directory


def test_python_dash_m_corral_is_the_cli():
    out = subprocess.run(
        [sys.executable, "-m", "corral", "run", "--lines", "--task", "sha256", "-q"],
        input="",
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout == ""
    version = subprocess.run([sys.executable, "-m", "corral", "--version"], capture_output=True)
    assert version.stdout.startswith(b"corral ")


def test_a_generator_of_ten_million_items_runs_in_bounded_memory():
    import resource

    def items():
        yield from range(10_000_000)

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    total = count = 0
    with corral.Pool(processes=2) as pool:
        for value in pool.imap_unordered(pool_tasks.ident, items(), chunksize=1_000):
            total += value
            count += 1
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert count == 10_000_000 and total == sum(range(10_000_000))
    assert grown_mib < 64, f"the parent grew by {grown_mib:.0f} MiB"


def test_quick_results_are_not_held_back_by_a_slow_job_in_the_same_batch(tmp_path):
    # The first worker ready answers a quick job, then takes a batch of a quick one and slow
    # ones: the quick one's result comes when it is done, not when the batch is. The slow
    # jobs end only once the quick results are in (the deadline is for a hang, not speed).
    release = str(tmp_path / "release")
    with corral.Pool(processes=2) as pool:
        it = pool.imap_unordered(pool_tasks.hold_until, [None, None] + [release] * 4)
        quick = [it.next(timeout=30), it.next(timeout=30)]
        assert quick == [None, None], "a quick result waited for a slow job"
        open(release, "w").close()
        assert list(it) == [release] * 4
