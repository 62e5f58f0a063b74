"""The cost of --shard: one node of four reading a 10M-line job file whole, against the same
node running only its own 2.5M lines from a file of their own. Part of the suite
(scripts/bench/run); alone, `python3 scripts/bench/shards.py [--runs N]` measures it and
rewrites only the "Sharding" section of BENCHMARKS.md."""

import argparse
import datetime
import os
import re
import shutil
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench import CORRAL, ROOT, WORK, generate, log, run_timed

LINES = 10_000_000
SHARDS = 4
HEADING = "## Sharding"


def own_lines(big, index, count):
    """The lines of shard `index` of `count` by line number, as a file of their own."""
    path = big.replace(".jsonl", f".shard-{index}-of-{count}.jsonl")
    if not os.path.exists(path):
        with open(big, "rb") as src, open(path, "wb") as out:
            for number, line in enumerate(src):
                if number % count == index - 1:
                    out.write(line)
    return path


def instructions(cmd):
    """Instructions of corral itself (not its workers) running cmd, counted by callgrind:
    the same on every run, however noisy the machine."""
    out = os.path.join(WORK, "shards.callgrind")
    proc = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={out}",
            "--trace-children=no",
            *cmd,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        check=True,
    )
    os.remove(out)
    return int(re.search(r"Collected : (\d+)", proc.stderr).group(1))


def count_instructions():
    """Per line skipped, from 400,000 lines (a quarter of them the shard's own)."""
    if shutil.which("valgrind") is None:
        return None
    big = os.path.join(WORK, "tiny-400k.jsonl")
    if not os.path.exists(big):
        with open(os.path.join(WORK, "tiny-10m.jsonl"), "rb") as src, open(big, "wb") as out:
            for _, line in zip(range(400_000), src):
                out.write(line)
    alone = own_lines(big, 1, SHARDS)
    run = [CORRAL, "run", "-j", "2", "-q"]
    log("   instructions (callgrind, corral alone), 400,000 lines")
    return {
        "alone": instructions([*run, alone]),
        "line": instructions([*run, "--shard", f"1/{SHARDS}", big]),
    }


def measure(runs):
    log(f"== Sharding: shard 1 of {SHARDS} of a {LINES:,}-line file")
    big = generate(os.path.join(WORK, "tiny-10m.jsonl"), "tiny", str(LINES))
    alone = own_lines(big, 1, SHARDS)
    contenders = {
        "its own lines alone": [CORRAL, "run", "-j", "2", "-q", alone],
        "--shard 1/4 of the whole file": [
            CORRAL,
            "run",
            "-j",
            "2",
            "-q",
            "--shard",
            f"1/{SHARDS}",
            big,
        ],
        "--shard 1/4 --shard-by id": [
            CORRAL,
            "run",
            "-j",
            "2",
            "-q",
            "--shard",
            f"1/{SHARDS}",
            "--shard-by",
            "id",
            big,
        ],
        "the whole file, unsharded": [CORRAL, "run", "-j", "2", "-q", big],
    }
    times = {name: [] for name in contenders}
    for r in range(runs):
        for name, cmd in contenders.items():
            times[name].append(run_timed(cmd))
        log(f"   round {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()))
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    return medians, count_instructions()


def report(measured, runs):
    """Rows for the targets table and the markdown section."""
    medians, counts = measured
    alone = medians["its own lines alone"]
    by_line = medians["--shard 1/4 of the whole file"]
    skipped = LINES - LINES // SHARDS
    per_line_ns = (by_line - alone) / skipped * 1e9
    rows = [
        (
            "Sharding: --shard 1/4 of 10M lines vs its 2.5M lines alone",
            f"{by_line / alone:.2f}x the time ({per_line_ns:.0f} ns per line skipped)",
            "(none set)",
            "",
        )
    ]
    lines = [
        HEADING,
        "",
        f"One node of {SHARDS}: `corral run -j 2 --shard 1/{SHARDS}` on a {LINES:,}-line file of tiny",
        "`sum_squares` jobs, against the same node running its 2,500,000 lines from a file of their",
        f"own (medians of {runs} interleaved runs; the whole file unsharded for scale). By line, another",
        "shard's line is framed (memchr) and skipped unparsed; by id, its leading id is read, then skipped.",
        "",
        "| run | median | vs its own lines alone |",
        "| --- | --- | --- |",
    ]
    for name, median in medians.items():
        lines.append(f"| {name} | {median:.3f} s | {median / alone:.2f}x |")
    lines += [
        "",
        f"Skipping costs {per_line_ns:.0f} ns per line of the other shards by line number, so the",
        "whole file read on every node adds that much per node, not the whole file's parsing.",
        "",
    ]
    if counts:
        per_line = (counts["line"] - counts["alone"]) / (400_000 * (SHARDS - 1) / SHARDS)
        lines += [
            "Instructions of corral itself (callgrind, workers not counted), 400,000 lines of which",
            f"100,000 are the shard's: {counts['alone']:,} for its own lines alone, "
            f"{counts['line']:,} with `--shard 1/{SHARDS}`: {per_line:.0f} instructions per line skipped.",
            "",
        ]
    return rows, lines


def splice(path, section):
    """Replaces the Sharding section of BENCHMARKS.md (or appends it)."""
    text = open(path).read() if os.path.exists(path) else "# Benchmarks\n"
    pattern = re.compile(rf"^{re.escape(HEADING)}\n.*?(?=^## |\Z)", re.S | re.M)
    body = "\n".join(section).rstrip("\n") + "\n\n"
    text = pattern.sub(body, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + body
    with open(path, "w") as out:
        out.write(text.rstrip("\n") + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--output", default=os.path.join(ROOT, "BENCHMARKS.md"))
    args = parser.parse_args()
    os.makedirs(WORK, exist_ok=True)
    medians = measure(args.runs)
    _, section = report(medians, args.runs)
    stamp = datetime.datetime.now(datetime.timezone.utc)
    section.insert(
        2,
        f"Measured {stamp:%Y-%m-%d %H:%M} UTC apart from the rest of the suite, with "
        f"`python3 scripts/bench/shards.py --runs {args.runs}`.\n",
    )
    splice(args.output, section)
    print("\n".join(section))


if __name__ == "__main__":
    main()
