"""Baseline: Python's multiprocessing.Pool (spawn start method) running the same job file.

Reads JSON lines, computes the same task (sum of squares / primes below n), and prints one result
line per job in the same format as corral. Usage: pool.py JOBS.jsonl WORKERS CHUNKSIZE
"""

import json
import multiprocessing
import os
import sys
import time


def primes_below(n):
    if n <= 2:
        return 0
    sieve = bytearray([1]) * n
    sieve[0] = sieve[1] = 0
    i = 2
    while i * i < n:
        if sieve[i]:
            sieve[i * i :: i] = bytearray(len(range(i * i, n, i)))
        i += 1
    return sum(sieve)


TASKS = {
    "sum_squares": lambda values: sum(v * v for v in values),
    "primes": primes_below,
}


def run_line(line):
    job = json.loads(line)
    started = time.perf_counter()
    output = TASKS[job["task"]](job.get("input"))
    ms = (time.perf_counter() - started) * 1000.0
    return json.dumps(
        {
            "id": job["id"],
            "ok": True,
            "output": output,
            "attempts": 1,
            "worker": os.getpid(),
            "ms": round(ms, 3),
        },
        separators=(",", ":"),
    )


def main():
    path, workers, chunksize = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    ctx = multiprocessing.get_context("spawn")
    out = sys.stdout
    with open(path) as jobs, ctx.Pool(workers) as pool:
        for result in pool.imap(run_line, jobs, chunksize=chunksize):
            out.write(result)
            out.write("\n")
    out.flush()


if __name__ == "__main__":
    main()
