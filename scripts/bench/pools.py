"""Benchmark of Python process pools: corral.Pool and corral.ProcessPoolExecutor against
multiprocessing.Pool, concurrent.futures.ProcessPoolExecutor, pebble and loky (from PyPI, installed into a virtual
environment under target/tools on first use), two workers each, on
  (a) 200,000 tiny tasks (sum_squares of eight integers) and
  (b) 2,000 tasks of about 5 ms of CPU each,
each pool at its best chunksize, interleaved rounds, medians; and what each pool does when a
worker is SIGKILLed, a task hangs or raises, or the parent is interrupted (pool_failures.py).

Run alone: python3 scripts/bench/pools.py [ROUNDS] (after cargo build --release); it prints
the markdown. Each measurement runs in a fresh interpreter: `pools.py --one POOL TASK CHUNK`.
"""

import os
import statistics
import subprocess
import sys
import time

import pool_failures

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VENV = os.path.join(ROOT, "target", "tools", "bench-pools")
PEBBLE_VERSION = "5.2.3"
LOKY_VERSION = "3.7.0"
TINY = 200_000
CPU = 2_000
CHUNKS = {"tiny": (64, 256, 1024, 4096), "cpu": (1, 4, 16)}
POOLS = pool_failures.POOLS


def sum_squares(values):
    return sum(v * v for v in values)


def spin(n):
    """About 5 ms of CPU: a fixed amount of work, the same in every pool."""
    total = 0
    for i in range(n):
        total += i * i
    return total


def workload(task):
    if task == "tiny":
        return sum_squares, [[i, 1 - i, 2, -3, i % 7, 5, 6, 7] for i in range(TINY)]
    return spin, [SPIN_N] * CPU


SPIN_N = 80_000


def run_pool(pool, fn, items, chunk):
    """Every result of fn over items, in order, from a two-worker pool of the named kind."""
    if pool == "corral.Pool":
        import corral

        with corral.Pool(processes=2) as p:
            return list(p.imap(fn, items, chunksize=chunk))
    if pool == "corral.ProcessPoolExecutor":
        import corral

        with corral.ProcessPoolExecutor(2) as p:
            return list(p.map(fn, items, chunksize=chunk))
    if pool == "multiprocessing.Pool":
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(2) as p:
            return list(p.imap(fn, items, chunksize=chunk))
    if pool == "ProcessPoolExecutor":
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(2, mp_context=ctx) as p:
            return list(p.map(fn, items, chunksize=chunk))
    if pool == "pebble":
        import multiprocessing

        from pebble import ProcessPool

        with ProcessPool(2, context=multiprocessing.get_context("spawn")) as p:
            return list(p.map(fn, items, chunksize=chunk).result())
    if pool == "loky":
        from loky import get_reusable_executor

        p = get_reusable_executor(max_workers=2)
        try:
            return list(p.map(fn, items, chunksize=chunk))
        finally:
            p.shutdown()
    raise SystemExit(f"unknown pool {pool}")


def one(pool, task, chunk):
    fn, items = workload(task)
    expected_sum = sum(map(fn, items[:100]))
    started = time.perf_counter()
    results = run_pool(pool, fn, items, int(chunk))
    elapsed = time.perf_counter() - started
    assert len(results) == len(items) and sum(results[:100]) == expected_sum, pool
    print(f"{elapsed:.6f}")


def python():
    """An interpreter with pebble and loky, and this checkout's corral on its path."""
    exe = os.path.join(VENV, "bin", "python")
    if not os.path.exists(exe):
        subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
        subprocess.run(
            [
                exe,
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                f"pebble=={PEBBLE_VERSION}",
                f"loky=={LOKY_VERSION}",
            ],
            check=True,
        )
    return exe


def environment():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([os.path.join(ROOT, "python"), os.path.dirname(__file__)])
    env["CORRAL_BIN"] = os.path.join(ROOT, "target", "release", "corral")
    return env


def measure(rounds, log=print):
    exe, env = python(), environment()
    times = {}
    for task in ("tiny", "cpu"):
        log(f"== Python pools: {task}")
        for r in range(rounds):
            for pool in POOLS:
                for chunk in CHUNKS[task]:
                    out = subprocess.run(
                        [exe, __file__, "--one", pool, task, str(chunk)],
                        env=env,
                        capture_output=True,
                        text=True,
                        timeout=600,
                    )
                    if out.returncode != 0:
                        raise SystemExit(f"{pool} {task} {chunk} failed:\n{out.stderr[-2000:]}")
                    times.setdefault((task, pool, chunk), []).append(float(out.stdout))
            log(f"   round {r + 1} done")
    medians = {key: statistics.median(ts) for key, ts in times.items()}
    best = {}
    for (task, pool, chunk), t in medians.items():
        if (task, pool) not in best or t < best[(task, pool)][0]:
            best[(task, pool)] = (t, chunk)
    return best


def report(best, outcomes, rounds):
    rows = []
    lines = [
        "## Python pools: corral.Pool against multiprocessing, concurrent.futures, pebble, loky",
        "",
        f"Two workers each, spawn start method, each pool at its best chunksize (tiny: "
        f"{', '.join(map(str, CHUNKS['tiny']))}; CPU: {', '.join(map(str, CHUNKS['cpu']))}), "
        f"medians of {rounds} interleaved rounds, each run in a fresh interpreter "
        f"(`scripts/bench/pools.py`). pebble {PEBBLE_VERSION} and loky {LOKY_VERSION} from PyPI.",
        "",
        "| task | pool | median wall time | best chunksize | corral.Pool is |",
        "| --- | --- | --- | --- | --- |",
    ]
    names = {"tiny": f"{TINY:,} tiny", "cpu": f"{CPU:,} x ~5 ms CPU"}
    for task in ("tiny", "cpu"):
        ours = best[(task, "corral.Pool")][0]
        others = [best[(task, p)][0] for p in POOLS if not p.startswith("corral.")]
        ratio = min(others) / ours
        rows.append(
            (
                f"Python pools, {names[task]}: corral.Pool vs the best other pool",
                f"{ratio:.2f}x",
                ">= 1.0x",
                "met" if ratio >= 1.0 else "**not met**",
            )
        )
        for pool in POOLS:
            t, chunk = best[(task, pool)]
            mark = "" if pool == "corral.Pool" else f"{t / ours:.2f}x faster"
            lines.append(f"| {names[task]} | {pool} | {t:.3f} s | {chunk} | {mark} |")
    lines += [
        "",
        "When things go wrong (`scripts/bench/pool_failures.py`; each scenario in a fresh "
        f"interpreter, stopped after {pool_failures.DEADLINE} s):",
        "",
        *outcomes,
        "",
    ]
    return rows, lines


def main():
    if sys.argv[1:2] == ["--one"]:
        one(*sys.argv[2:5])
        return
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    best = measure(rounds, log=lambda m: print(m, file=sys.stderr, flush=True))
    outcomes = pool_failures.table(
        python(), environment(), log=lambda m: print(m, file=sys.stderr, flush=True)
    )
    rows, lines = report(best, outcomes, rounds)
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print()
    print("\n".join(lines))


if __name__ == "__main__":
    main()
