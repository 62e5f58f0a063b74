"""The data path: how far corral's supervisor lets tiny jobs scale with cores. Part of the suite
(scripts/bench/run); alone, `python3 scripts/bench/datapath.py [--runs N] [--before REV]`
measures it and rewrites only the "Data path" section of BENCHMARKS.md.

Side by side, interleaved, 1,000,000 tiny `sum_squares` jobs: the plainest single-process
serde_json program (`corral-bench serde-loop`), corral's own single-process baseline
(`corral-bench floor`), `corral run -j 2`, the same with `--parse-threads 0` (every line
parsed on the reading thread), and, with `--before REV`, corral as of git revision REV (built
in a worktree under target/bench/). Then callgrind counts, per thread, the instructions of
100,000 of these jobs, workers included; from them the section projects the throughput on 8
to 64 cores (the model is written out in the section)."""

import argparse
import datetime
import glob
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench import BIN, CORRAL, ROOT, TOOL, WORK, generate, log, run_measured

HEADING = "## Data path"
JOBS = 1_000_000
COUNTED = 100_000
CORES = [2, 8, 16, 32, 64]


def build_before(rev):
    """corral and corral-worker as of `rev`, built in a worktree of their own."""
    tree = os.path.join(WORK, f"before-{rev}")
    target = os.path.join(WORK, f"before-{rev}-target")
    if not os.path.exists(tree):
        subprocess.run(["git", "-C", ROOT, "worktree", "add", "-f", tree, rev], check=True)
    log(f"   building corral at {rev}")
    subprocess.run(
        ["cargo", "build", "--release", "--quiet", "-p", "corral", "-p", "corral-worker"],
        cwd=tree,
        env={**os.environ, "CARGO_TARGET_DIR": target},
        check=True,
    )
    release = os.path.join(target, "release")
    return os.path.join(release, "corral"), os.path.join(release, "corral-worker")


def contenders(jobs, before):
    worker = os.path.join(BIN, "corral-worker")
    corral = [CORRAL, "run", "-q", "-j", "2", "--worker", worker]
    found = {
        "serde_json loop (one process)": ([TOOL, "serde-loop"], jobs),
        "corral's own single-process baseline": ([TOOL, "floor"], jobs),
        "corral -j 2": ([*corral, jobs], None),
        "corral -j 2 --parse-threads 0": ([*corral, "--parse-threads", "0", jobs], None),
    }
    if before:
        old, old_worker = before
        found["corral -j 2 before"] = (
            [old, "run", "-q", "-j", "2", "--worker", old_worker, jobs],
            None,
        )
    return found


def threads_of(cmd, out_dir):
    """Instructions per thread of cmd and of every process it starts, by callgrind: a list of
    (program, role, instructions); role is input, engine or writer for corral's serial
    threads, parallel for the rest."""
    subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--separate-threads=yes",
            "--trace-children=yes",
            f"--callgrind-out-file={out_dir}/cg.%p",
            *cmd,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=True,
    )
    threads = []
    for path in sorted(glob.glob(f"{out_dir}/cg.*")):
        with open(path, errors="replace") as f:
            text = f.read()
        os.remove(path)
        cmd = re.search(r"^cmd:\s+(\S+)", text, re.M)
        if cmd is None:
            # With --separate-threads, the file without a thread's number stays empty.
            continue
        program = os.path.basename(cmd.group(1))
        totals = re.search(r"^totals: (\d+)", text, re.M)
        count = int(totals.group(1)) if totals else 0
        role = "parallel"
        if program == "corral":
            # The thread that reads the input, whether it only frames or parses too (as
            # before the data path scaled; the pool's parsers parse pieces).
            parses = "JobParser::parse" in text and "parse_piece" not in text
            if "corral::input::LineReader" in text or parses:
                role = "input"
            elif "write_all_results" in text:
                role = "writer"
            elif path.endswith("-01"):
                role = "engine"
        threads.append((program, role, count))
    return threads


def per_job(threads):
    """Instructions per job: each serial thread, their sum, and everything else."""
    serial = {role: 0 for role in ("input", "engine", "writer")}
    parallel = 0
    for program, role, count in threads:
        if program == "corral" and role in serial:
            serial[role] += count / COUNTED
        elif program in ("corral", "corral-worker"):
            parallel += count / COUNTED
    return serial, parallel


def measure(runs, rev=None):
    log(f"== Data path: {JOBS:,} tiny jobs")
    jobs = generate(os.path.join(WORK, "tiny-1m.jsonl"), "tiny", str(JOBS))
    before = build_before(rev) if rev else None
    found = contenders(jobs, before)
    times = {name: [] for name in found}
    cpu = {name: [] for name in found}
    for r in range(runs):
        for name, (cmd, stdin) in found.items():
            wall, used = run_measured(cmd, stdin_path=stdin)
            times[name].append(wall)
            cpu[name].append(used)
        log(f"   round {r + 1}: " + ", ".join(f"{k} {v[-1]:.3f}s" for k, v in times.items()))
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    cpus = {name: statistics.median(c) for name, c in cpu.items()}
    counts = None
    if shutil.which("valgrind"):
        small = os.path.join(WORK, f"tiny-{COUNTED // 1000}k.jsonl")
        if not os.path.exists(small):
            with open(jobs, "rb") as src, open(small, "wb") as out:
                for _, line in zip(range(COUNTED), src):
                    out.write(line)
        counts = {}
        with tempfile.TemporaryDirectory() as tmp:
            log(f"   instructions (callgrind), {COUNTED:,} jobs")
            counts["serde"] = serde_instructions(small, tmp)
            worker = os.path.join(BIN, "corral-worker")
            counts["corral"] = per_job(
                threads_of([CORRAL, "run", "-q", "-j", "2", "--worker", worker, small], tmp)
            )
            if before:
                old, old_worker = before
                counts["before"] = per_job(
                    threads_of([old, "run", "-q", "-j", "2", "--worker", old_worker, small], tmp)
                )
    return medians, cpus, counts, rev


def serde_instructions(small, tmp):
    """Instructions per job of the serde_json loop."""
    out = os.path.join(tmp, "serde")
    with open(small, "rb") as stdin:
        subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", TOOL, "serde-loop"],
            stdin=stdin,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=True,
        )
    with open(out) as f:
        total = int(re.search(r"^totals: (\d+)", f.read(), re.M).group(1))
    os.remove(out)
    return total / COUNTED


def projection(serial, parallel, rate):
    """Jobs per second on each of CORES cores: the serial threads form a pipeline, so the
    slowest of them bounds the rate however many cores there are, and every instruction of
    every thread shares the cores."""
    slowest = max(serial.values())
    total = sum(serial.values()) + parallel
    return {n: rate / max(slowest, total / n) for n in CORES}


def report(measured, runs):
    """Rows for the targets table and the markdown section."""
    medians, cpus, counts, rev = measured
    serde = medians["serde_json loop (one process)"]
    corral = medians["corral -j 2"]
    rows = [
        (
            "Tiny, -j 2: corral vs a plain serde_json loop",
            f"{serde / corral:.2f}x",
            ">= 1.8x",
            "met" if serde / corral >= 1.8 else "not met",
        )
    ]
    if "corral -j 2 before" in medians:
        before = medians["corral -j 2 before"]
        rows.append(
            (
                f"Tiny, -j 2: corral vs corral at {rev}",
                f"{before / corral:.2f}x",
                ">= 1.2x",
                "met" if before / corral >= 1.2 else "not met",
            )
        )
    lines = [
        HEADING,
        "",
        f"{JOBS:,} tiny `sum_squares` jobs from a file, medians of {runs} interleaved runs; CPU is",
        "user + system of the process and everything it waited for.",
        "",
        "| contender | median wall time | CPU | corral -j 2 is |",
        "| --- | --- | --- | --- |",
    ]
    for name, median in medians.items():
        ratio = "" if name == "corral -j 2" else f"{median / corral:.2f}x faster"
        lines.append(f"| {name} | {median:.3f} s | {cpus[name]:.2f} s | {ratio} |")
    lines.append("")
    if counts:
        serde_per_job = counts["serde"]
        # Instructions per second of one core, as the serde_json loop runs them.
        rate = serde_per_job * JOBS / serde
        lines += [
            f"Instructions per job (callgrind, {COUNTED:,} jobs, `--separate-threads=yes`, workers",
            "included). The serial threads are the one that reads the input, the engine's loop",
            "(the scheduler) and the one that writes the results; everything else (workers, the",
            "threads that carry batches to and from them, parser and formatter pools) runs on as",
            "many cores as there are.",
            "",
            "| | reading thread | engine thread | writing thread | all parallel work |",
            "| --- | --- | --- | --- | --- |",
        ]
        for key, label in (("before", f"corral at {rev}"), ("corral", "corral now")):
            if key in counts:
                serial, parallel = counts[key]
                lines.append(
                    f"| {label} | {serial['input']:.0f} | {serial['engine']:.0f} | "
                    f"{serial['writer']:.0f} | {parallel:.0f} |"
                )
        lines += [
            f"| serde_json loop, for scale | | | | {serde_per_job:.0f} (one thread) |",
            "",
        ]
        if "before" in counts:
            old = max(counts["before"][0].values())
            new = max(counts["corral"][0].values())
            lines += [
                f"The busiest serial thread went from {old:.0f} to {new:.0f} instructions per job: "
                f"{new / old:.2f} of what it was.",
                "",
            ]
        lines += [
            "Projection (Amdahl, with the serial stages pipelined): with S the instructions per",
            "job of the busiest serial thread, T those of every thread together and r the",
            "instructions per second of one core (r from the serde_json loop in this run:",
            f"{rate / 1e9:.2f} G/s), N cores run at most r / max(S, T / N) jobs per second: the",
            "busiest serial thread caps the rate, and below that cap every instruction shares",
            "the N cores. It ignores what more cores cost (memory bandwidth, hand-offs between",
            "threads), so it is a bound; the 2-core row is beside what was measured.",
            "",
            "| cores | "
            + " | ".join(
                label
                for key, label in (("before", f"corral at {rev}"), ("corral", "corral now"))
                if key in counts
            )
            + " | serde_json loop |",
            "| --- | "
            + " | ".join("---" for key in ("before", "corral") if key in counts)
            + " | --- |",
        ]
        projected = {
            key: projection(*counts[key], rate) for key in ("before", "corral") if key in counts
        }
        for n in CORES:
            cells = []
            for key in ("before", "corral"):
                if key in projected:
                    cell = f"{projected[key][n] / 1e6:.1f} M/s"
                    if n == 2:
                        measured_name = "corral -j 2" if key == "corral" else "corral -j 2 before"
                        cell += f" (measured {JOBS / medians[measured_name] / 1e6:.1f})"
                    cells.append(cell)
            loop = f"{rate / serde_per_job / 1e6:.1f} M/s, one core"
            lines.append(f"| {n} | " + " | ".join(cells) + f" | {loop} |")
        lines.append("")
    lines += [
        "Reproduce: `python3 scripts/bench/datapath.py --runs 7 --before REV` (REV: the revision",
        "to compare with; it is built in a worktree under target/bench/).",
        "",
    ]
    return rows, lines


def splice(path, section, heading=HEADING):
    """Replaces the section of BENCHMARKS.md under `heading` (or appends it)."""
    text = open(path).read() if os.path.exists(path) else "# Benchmarks\n"
    pattern = re.compile(rf"^{re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)
    body = "\n".join(section).rstrip("\n") + "\n\n"
    text = pattern.sub(body, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + body
    with open(path, "w") as out:
        out.write(text.rstrip("\n") + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--before", metavar="REV", help="also measure corral at this revision")
    parser.add_argument("--output", default=os.path.join(ROOT, "BENCHMARKS.md"))
    args = parser.parse_args()
    os.makedirs(WORK, exist_ok=True)
    measured = measure(args.runs, args.before)
    rows, section = report(measured, args.runs)
    stamp = datetime.datetime.now(datetime.timezone.utc)
    section.insert(
        2,
        f"Measured {stamp:%Y-%m-%d %H:%M} UTC apart from the rest of the suite, with "
        f"`python3 scripts/bench/datapath.py --runs {args.runs}"
        + (f" --before {args.before}" if args.before else "")
        + "`.\n",
    )
    section[2:2] = [
        "| what | measured | target | |",
        "| --- | --- | --- | --- |",
        *[f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows],
        "",
    ]
    splice(args.output, section)
    print("\n".join(section))


if __name__ == "__main__":
    main()
