"""Throughput of the streaming detector: its core alone, and `mcp-autonomy detect` end to end.

Run: `python benchmarks/detect_throughput.py [--core-only] [--repeats N]`. Generates a million
points (one a minute, a daily pattern, noise, a few spikes and a level shift, epoch timestamps).
First times `StreamingDetector.score_many` on them in memory (the per-point loop alone, in CPU
time; the best of `--repeats` runs, since the machine may be shared), then, unless `--core-only`,
writes them to a temporary CSV and times, in the same process, a plain CSV read + write of the same
file (the floor any CSV tool pays) and `run_detect` on it (parse, detect, write scores). Prints:

    detect_core: N points/s (best of R)
    detect_throughput: N rows/s (baseline: M rows/s, ratio: x)

where the ratio is detect / baseline (1.0 would mean detection costs nothing). The core must stay
at or above 100k points/s (issue 17).
"""

from __future__ import annotations

import argparse
import csv
import gc
import os
import sys
import tempfile
import time
from pathlib import Path

# Plain `python benchmarks/detect_throughput.py` puts benchmarks/ on sys.path, not the project root.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from mcp_autonomy.autonomy.detect_cli import run_detect
from mcp_autonomy.autonomy.detection import StreamingDetector

ROWS = 1_000_000
START_EPOCH_S = 1_767_225_600
STEP_S = 60
SEED = 7


DEFAULT_REPEATS = 3
MIN_CORE_POINTS_PER_S = 100_000


def generate_series() -> tuple[list[int], list[float]]:
    """Epoch seconds and values: a daily peak, noise, 20 spikes and a level shift half-way."""
    rng = np.random.default_rng(SEED)
    t = START_EPOCH_S + STEP_S * np.arange(ROWS, dtype=np.int64)
    hour = (t % 86_400) / 3600.0
    x = 100.0 + 30.0 * np.exp(-(((hour - 13.0) / 3.0) ** 2)) + rng.normal(0.0, 2.0, ROWS)
    x[rng.choice(ROWS, 20, replace=False)] += 40.0
    x[ROWS // 2 :] += 15.0
    # Values rounded as the CSV holds them, so the core sees what `detect` sees.
    return t.tolist(), np.round(x, 3).tolist()


def write_series(path: Path, times_s: list[int], values: list[float]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as out:
        out.write("timestamp,value\n")
        out.writelines(f"{a},{b:.3f}\n" for a, b in zip(times_s, values, strict=True))


def core_seconds(times_s: list[int], values: list[float]) -> float:
    """One run of `score_many` over the whole series on a fresh detector."""
    timestamps = [float(a) for a in times_s]
    detector = StreamingDetector()
    gc.collect()
    # CPU time, not wall time: the figure is the loop's cost, not how busy the machine is.
    started = time.process_time()
    detector.score_many(timestamps, values)
    elapsed = time.process_time() - started
    detector.drain_alerts()
    return elapsed


def plain_copy(source: Path, target: Path) -> float:
    started = time.perf_counter()
    with (
        open(source, encoding="utf-8", newline="") as inp,
        open(target, "w", encoding="utf-8", newline="") as out,
    ):
        reader = csv.reader(inp)
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow([*next(reader), "anomaly_score"])
        for row in reader:
            writer.writerow((row[0], row[1], "0"))
    return time.perf_counter() - started


def detect(source: Path, target: Path) -> float:
    args = argparse.Namespace(
        input=str(source), output=str(target), sensitivity="medium", predictions=None, series_name="value"
    )
    started = time.perf_counter()
    code = run_detect(args)
    elapsed = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"detect failed with exit code {code}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--core-only", action="store_true", help="time score_many only, no CSV")
    parser.add_argument("--repeats", type=int, default=DEFAULT_REPEATS, help="core runs; the best counts")
    options = parser.parse_args()
    if options.repeats < 1:
        raise SystemExit(f"--repeats must be >= 1, got {options.repeats}")
    times_s, values = generate_series()
    core_s = min(core_seconds(times_s, values) for _ in range(options.repeats))
    core_rate = ROWS / core_s
    print(f"detect_core: {core_rate:,.0f} points/s (best of {options.repeats})")
    if core_rate < MIN_CORE_POINTS_PER_S:
        print(f"detect_core: below the {MIN_CORE_POINTS_PER_S:,} points/s floor", file=sys.stderr)
    if options.core_only:
        return
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "series.csv"
        write_series(source, times_s, values)
        gc.collect()
        baseline_s = plain_copy(source, Path(tmp) / "copy.csv")
        detect_s = detect(source, Path(tmp) / "scores.csv")
        with open(Path(tmp) / "scores.csv", encoding="utf-8") as scores:
            rows = sum(1 for _ in scores) - 1
        if rows != ROWS:
            raise SystemExit(f"expected {ROWS} output rows, got {rows}")
        os.remove(source)
    detect_rate = ROWS / detect_s
    baseline_rate = ROWS / baseline_s
    print(
        f"detect_throughput: {detect_rate:,.0f} rows/s "
        f"(baseline: {baseline_rate:,.0f} rows/s, ratio: {detect_rate / baseline_rate:.2f}x)"
    )


if __name__ == "__main__":
    main()
