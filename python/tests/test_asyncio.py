"""corral.Pool under asyncio: awaited calls and async iterators without a thread of their
own, and cancellation of the awaiting task dropping that call's queued jobs."""

import asyncio
import threading
import time

import corral
import pool_tasks
import pytest


def test_awaited_calls_and_async_iterators():
    async def main(pool):
        threads = threading.active_count()
        squares = await pool.amap(pool_tasks.square, range(100))
        pairs = await pool.astarmap(divmod, [(7, 2), (9, 4)])
        one = await pool.aapply(pool_tasks.keywords, (1,), {"b": 2})
        ordered = [r async for r in pool.aimap(pool_tasks.square, range(50), chunksize=4)]
        unordered = sorted([r async for r in pool.aimap_unordered(pool_tasks.square, range(50))])
        # Many calls awaited at once, each on its own call, none on a thread of its own.
        many = await asyncio.gather(*(pool.amap(pool_tasks.square, [i]) for i in range(30)))
        assert threading.active_count() == threads, "no thread per call"
        return squares, pairs, one, ordered, unordered, many

    with corral.Pool(2) as pool:
        squares, pairs, one, ordered, unordered, many = asyncio.run(main(pool))
    assert squares == [i * i for i in range(100)]
    assert pairs == [(3, 1), (2, 1)] and one == {"a": 1, "b": 2}
    assert ordered == unordered == [i * i for i in range(50)]
    assert many == [[i * i] for i in range(30)]


def test_exceptions_are_raised_where_awaited():
    async def main(pool):
        with pytest.raises(ValueError, match="three is not allowed"):
            await pool.amap(pool_tasks.fail_on_three, range(5))
        got = await pool.amap(pool_tasks.fail_on_three, range(5), return_exceptions=True)
        assert isinstance(got[3], ValueError)
        results = []
        with pytest.raises(ValueError):
            async for value in pool.aimap(pool_tasks.fail_on_three, range(5)):
                results.append(value)
        assert results == [0, 1, 2]

    with corral.Pool(2) as pool:
        asyncio.run(main(pool))


def test_cancelling_the_awaiting_task_drops_the_call_s_queued_jobs():
    async def main(pool):
        task = asyncio.ensure_future(pool.amap(pool_tasks.sleep_for, [0.5] * 200, chunksize=1))
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        started = time.monotonic()
        # Behind 200 half-second jobs on one worker, this would wait 100 s.
        assert await pool.aapply(pool_tasks.square, (4,)) == 16
        return time.monotonic() - started

    with corral.Pool(1) as pool:
        waited = asyncio.run(main(pool))
        pool.close()
        pool.join()
    assert waited < 30


def test_an_async_iterator_left_early_drops_its_jobs():
    async def main(pool):
        first = None
        async for first in pool.aimap(pool_tasks.sleep_for, [0.2] * 200):  # noqa: B007
            break
        return first

    with corral.Pool(1) as pool:
        assert asyncio.run(main(pool)) > 0
        started = time.monotonic()
        pool.close()
        pool.join()
    assert time.monotonic() - started < 30


def test_the_asyncio_example_fetches_in_the_loop_and_parses_in_the_workers():
    import os
    import re
    import subprocess
    import sys

    example = os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "..", "examples", "asyncio_fetch_parse.py"
    )
    done = subprocess.run(
        [sys.executable, example, "6"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    loop_pid = int(re.search(r"event loop and server in pid (\d+)", done.stdout).group(1))
    fetched = [int(p) for p in re.findall(r"fetched page .* in pid (\d+)", done.stdout)]
    parsed = [int(p) for p in re.findall(r"parsed  page .* in pid (\d+)", done.stdout)]
    assert fetched == [loop_pid] * 6
    assert len(parsed) == 6 and loop_pid not in parsed
