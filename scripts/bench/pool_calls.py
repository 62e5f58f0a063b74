"""Benchmark of a pool's cost per call, where users of multiprocessing feel it: the loop that
calls map per batch or per epoch, and the storm of submits gathered with as_completed.

  (a) 200 calls of pool.map(square, range(10)) on a pool of 2, per call: corral.Pool against
      multiprocessing.Pool (the fork start method, Linux's default before 3.14, and spawn),
      and against multiprocessing.Pool given the chunksize corral picks for itself;
  (b) 10,000 submits of a tiny function gathered with as_completed: corral.ProcessPoolExecutor
      against concurrent.futures.ProcessPoolExecutor (spawn, and fork).

Each measurement runs in a fresh interpreter after a warm-up call, so the pools' start-up is
not counted; rounds are interleaved and the medians reported, with their ratios.

Run alone: python3 scripts/bench/pool_calls.py [ROUNDS] (after cargo build --release); it prints
the markdown. One measurement: pool_calls.py --one KIND POOL.
"""

import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CALLS = 200
SUBMITS = 10_000
MAPS = [
    "corral.Pool",
    "multiprocessing.Pool (fork)",
    "multiprocessing.Pool (spawn)",
    # With one chunk per worker, as corral picks for cheap items (README, chunksize).
    "multiprocessing.Pool (fork, chunksize=5)",
]
EXECUTORS = [
    "corral.ProcessPoolExecutor",
    "ProcessPoolExecutor (spawn)",
    "ProcessPoolExecutor (fork)",
]


def square(x):
    return x * x


def make(pool):
    import multiprocessing

    if pool == "corral.Pool":
        import corral

        return corral.Pool(2)
    if pool == "corral.ProcessPoolExecutor":
        import corral

        return corral.ProcessPoolExecutor(2)
    method = pool.split("(")[1].rstrip(")").split(",")[0]
    context = multiprocessing.get_context(method)
    if pool.startswith("multiprocessing.Pool"):
        return context.Pool(2)
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(2, mp_context=context)


def one(kind, pool_name):
    """Seconds per call (maps) or for the whole storm (submits), after a warm-up."""
    from concurrent.futures import as_completed

    pool = make(pool_name)
    try:
        if kind == "map":
            chunksize = 5 if "chunksize=5" in pool_name else None
            assert pool.map(square, range(10), chunksize) == [i * i for i in range(10)]
            started = time.perf_counter()
            for _ in range(CALLS):
                pool.map(square, range(10), chunksize)
            elapsed = (time.perf_counter() - started) / CALLS
        else:
            pool.submit(square, 3).result()
            started = time.perf_counter()
            futures = [pool.submit(square, i) for i in range(SUBMITS)]
            total = sum(f.result() for f in as_completed(futures))
            elapsed = time.perf_counter() - started
            assert total == sum(i * i for i in range(SUBMITS))
    finally:
        if kind == "map":
            pool.terminate()
            pool.join()
        else:
            pool.shutdown()
    print(f"{elapsed:.9f}")


def environment():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([os.path.join(ROOT, "python"), os.path.dirname(__file__)])
    env.setdefault("CORRAL_BIN", os.path.join(ROOT, "target", "release", "corral"))
    return env


def measure(rounds, log=print):
    env = environment()
    times = {}
    for r in range(rounds):
        for kind, pools in (("map", MAPS), ("submit", EXECUTORS)):
            for pool in pools:
                out = subprocess.run(
                    [sys.executable, __file__, "--one", kind, pool],
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=600,
                )
                if out.returncode != 0:
                    raise SystemExit(f"{pool} {kind} failed:\n{out.stderr[-2000:]}")
                times.setdefault((kind, pool), []).append(float(out.stdout))
        log(f"   pool calls: round {r + 1} of {rounds} done")
    return {key: statistics.median(ts) for key, ts in times.items()}


def report(medians, rounds):
    """Summary rows and the section's lines."""
    ours_map = medians[("map", "corral.Pool")]
    ours_submit = medians[("submit", "corral.ProcessPoolExecutor")]
    map_ratio = medians[("map", MAPS[1])] / ours_map
    submit_ratio = medians[("submit", EXECUTORS[1])] / ours_submit
    rows = [
        (
            "Python pool, 200 x map(square, range(10)): multiprocessing.Pool (fork) per call / "
            "corral.Pool per call",
            f"{map_ratio:.2f}x",
            ">= 1.0x",
            "met" if map_ratio >= 1.0 else "**not met**",
        ),
        (
            "Python pool, 10,000 submits + as_completed: ProcessPoolExecutor (spawn) / "
            "corral.ProcessPoolExecutor",
            f"{submit_ratio:.2f}x",
            ">= 1.0x",
            "met" if submit_ratio >= 1.0 else "**not met**",
        ),
    ]
    lines = [
        "## Python pools: the cost of a call",
        "",
        f"Pools of two workers, measured after a warm-up call in a fresh interpreter each, "
        f"medians of {rounds} interleaved rounds (`python3 scripts/bench/pool_calls.py "
        f"{rounds}`).",
        "",
        "| what | pool | median | the other is |",
        "| --- | --- | --- | --- |",
    ]
    for pool in MAPS:
        t = medians[("map", pool)]
        mark = "" if pool == MAPS[0] else f"{t / ours_map:.2f}x corral's cost"
        lines.append(
            f"| {CALLS} x map(square, range(10)), per call | {pool} | {t * 1e3:.3f} ms | {mark} |"
        )
    for pool in EXECUTORS:
        t = medians[("submit", pool)]
        mark = "" if pool == EXECUTORS[0] else f"{t / ours_submit:.2f}x corral's time"
        lines.append(f"| {SUBMITS:,} submits + as_completed | {pool} | {t:.3f} s | {mark} |")
    lines.append("")
    return rows, lines


def main():
    if sys.argv[1:2] == ["--one"]:
        one(sys.argv[2], sys.argv[3])
        return
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 7
    medians = measure(rounds, log=lambda m: print(m, file=sys.stderr, flush=True))
    rows, lines = report(medians, rounds)
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print()
    print("\n".join(lines))


if __name__ == "__main__":
    main()
