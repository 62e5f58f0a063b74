"""The cost of what a run reports besides its results, and the report's own cost. Alone:

    python3 scripts/bench/observe.py [--runs N]

(after cargo build --release). It rewrites only the "Joblog, metrics and report" section of
BENCHMARKS.md.

Each round runs, in an order that turns each round, the tiny-job benchmark (1,000,000 tiny
`sum_squares` jobs from a file, `corral run -j 2`) four ways: plain, with `--joblog FILE`, with
`--metrics ADDR` (scraped by nothing: the cost of the notes and the counts), and with both. The
instructions of each way are
counted once beside the times, which noise does not move: callgrind counts the supervisor's
own (all its threads; not its workers'). Then `corral report` builds the page
of a real run's joblog of 1,000,000 and of 10,000,000 jobs: its time (median), its peak RSS and
the page's size.
"""

import argparse
import datetime
import os
import shutil
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench import CORRAL, ROOT, WORK, generate, log, run_timed
from datapath import splice

HEADING = "## Joblog, metrics and report"
JOBS = 1_000_000


def ways(joblog, socket):
    return {
        "plain": [],
        "--joblog": ["--joblog", joblog],
        "--metrics": ["--metrics", socket],
        "both": ["--joblog", joblog, "--metrics", socket],
    }


def command(jobs, extra):
    return [CORRAL, "run", "-q", "-j", "2", *extra, jobs]


def instructions(cmd):
    """Instructions of `cmd`'s own process, all its threads (not the workers it starts), by
    callgrind; None without valgrind."""
    if not shutil.which("valgrind"):
        return None
    out = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *cmd],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in out.stderr.splitlines():
        if "Collected :" in line:
            return int(line.rsplit(":", 1)[1].strip())
    return None


def report_cost(joblog):
    """Median seconds (3 runs), peak RSS and page size of `corral report JOBLOG`."""
    page = os.path.join(WORK, "observe-report.html")
    times, peak = [], 0
    for _ in range(3):
        started = time.perf_counter()
        out = subprocess.run(
            ["/usr/bin/time", "-f", "%M", CORRAL, "report", joblog, "-o", page],
            stderr=subprocess.PIPE,
            text=True,
            check=True,
        )
        times.append(time.perf_counter() - started)
        peak = max(peak, int(out.stderr.strip().splitlines()[-1]) * 1024)
    return statistics.median(times), peak, os.path.getsize(page)


def measure(runs):
    os.makedirs(WORK, exist_ok=True)
    jobs = generate(os.path.join(WORK, "tiny-1m.jsonl"), "tiny", str(JOBS))
    joblog = os.path.join(WORK, "observe.joblog")
    socket = os.path.join(WORK, "observe-metrics.sock")
    found = {name: [] for name in ways(joblog, socket)}
    for r in range(runs):
        order = list(found)
        order = order[r % len(order) :] + order[: r % len(order)]
        for name in order:
            found[name].append(run_timed(command(jobs, ways(joblog, socket)[name])))
        log(f"   round {r + 1}: " + ", ".join(f"{n} {found[n][-1]:.3f} s" for n in found))
    counted = {n: instructions(command(jobs, extra)) for n, extra in ways(joblog, socket).items()}
    log(f"   instructions: {counted}")

    # The joblogs of real runs of 1M and 10M tiny jobs.
    big = os.path.join(WORK, "tiny-10m.jsonl")
    if not os.path.exists(big):
        with open(jobs, "rb") as one, open(big, "wb") as out:
            block = one.read()
            for _ in range(10):
                out.write(block)
    reports = {}
    for label, path in (("1,000,000", jobs), ("10,000,000", big)):
        run_timed(command(path, ["--joblog", joblog]))
        joblog_size = os.path.getsize(joblog)
        seconds, peak, size = report_cost(joblog)
        reports[label] = (joblog_size, seconds, peak, size)
        log(f"   report of {label} jobs: {seconds:.2f} s, {peak / 2**20:.1f} MiB, {size} bytes")
    os.remove(joblog)
    return found, counted, reports


def section(runs, found, counted, reports):
    med = {name: statistics.median(times) for name, times in found.items()}
    stamp = datetime.datetime.now(datetime.timezone.utc)
    lines = [
        HEADING,
        "",
        f"Measured {stamp:%Y-%m-%d %H:%M} UTC, interleaved, medians of {runs} rounds: "
        f"`python3 scripts/bench/observe.py --runs {runs}`. The tiny-job benchmark "
        "(1,000,000 tiny `sum_squares` jobs from a file, `corral run -j 2`), without and with "
        "what a run can report besides its results; the target is within 5% of the plain run. "
        "Instructions are the supervisor's own, all its threads but not its workers "
        "(`valgrind --tool=callgrind`, one run each).",
        "",
        "| run | median | / plain | instructions | / plain |",
        "| --- | --- | --- | --- | --- |",
    ]
    base_i = counted.get("plain")
    for name in found:
        ratio_i = f"{counted[name] / base_i:.3f}" if counted.get(name) and base_i else "n/a"
        count = f"{counted[name] / 1e6:.0f}M" if counted.get(name) else "n/a"
        label = "plain" if name == "plain" else f"`{name}`" if name != "both" else "both"
        lines.append(
            f"| {label} | {med[name]:.3f} s | {med[name] / med['plain']:.3f} | {count} | {ratio_i} |"
        )
    lines += [
        "",
        "A joblog is a second output of one line per job, as large as the results (52 MiB for "
        "these 1,000,000 jobs). The workers write the lines of their blocks themselves, so the "
        "supervisor's own instructions barely move; the time is the workers' formatting and the "
        "file's writes, on the same two cores. The metrics are counted in the workers too, a "
        "few counts per batch.",
        "",
        "`corral report` of the joblog of a real run of tiny jobs (median of 3 builds; peak RSS "
        "by `/usr/bin/time`):",
        "",
        "| jobs | joblog | build time | peak RSS | page |",
        "| --- | --- | --- | --- | --- |",
    ]
    for label, (joblog_size, seconds, peak, size) in reports.items():
        lines.append(
            f"| {label} | {joblog_size / 2**20:.0f} MiB | {seconds:.2f} s | "
            f"{peak / 2**20:.1f} MiB | {size / 1024:.0f} KiB |"
        )
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--output", default=os.path.join(ROOT, "BENCHMARKS.md"))
    args = parser.parse_args()
    found, counted, reports = measure(args.runs)
    lines = section(args.runs, found, counted, reports)
    print("\n".join(lines))
    splice(args.output, lines, HEADING)


if __name__ == "__main__":
    main()
