"""Build the public load traces the scaling policy's cadence rule was developed on (no NAB series).

Run: `python scripts/public_scaling_traces.py` (needs `npm` and `pip` once; about a minute). It
fetches two packages from the public registries into `.cache/public-traces/`, pinned:

- npm `vega-datasets@3.2.1`: `flights-3m.parquet` (3 million US domestic flights, Jan-Jun 2001,
  scheduled time and delay) and `github.csv` (a repository's commits per hour, 2015);
- PyPI `pmdarima==2.1.1` (the wheel, not installed): the `taylor` series of the R forecast package
  (half-hourly electricity demand in England and Wales, June-August 2000).

and writes `timestamp,value` CSVs for `mcp-autonomy simulate-scaling` next to them:

| trace | cadence | load (TPM) | suggested `--target-tpm-per-instance` |
|---|---|---|---|
| `flights_all_5min.csv` | 5 min, 6 months | departures (scheduled + delay) per 5 min / 5 x 20 | 20 |
| `flights_ord_10min.csv` | 10 min, 6 months | Chicago O'Hare departures per 10 min / 10 x 300 | 25 |
| `taylor_30min.csv` | 30 min, 12 weeks | demand in MW / 10 | 100 |
| `github_1h.csv` | 1 hour, 5 months | commits per hour x 50 | 100 |

Reading the parquet file needs `pyarrow`, installed into a throwaway venv under the cache (the
project does not depend on it). Then, for example:

    mcp-autonomy simulate-scaling .cache/public-traces/flights_ord_10min.csv \\
        --target-tpm-per-instance 25 --max 500 --output /tmp/timeline.csv
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tarfile
import venv
import zipfile
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "public-traces"
VEGA = "vega-datasets@3.2.1"
PMDARIMA = "pmdarima==2.1.1"
TAYLOR_START = "2000-06-05"  # a Monday; the series starts on Monday 5 June 2000

BUILD = r"""
import sys
from pathlib import Path
import pyarrow.compute as pc
import pyarrow.parquet as pq

out = Path(sys.argv[1])
table = pq.read_table(sys.argv[2])
departed = pc.add(
    pc.cast(table["date"], "int64"),
    pc.multiply(pc.max_element_wise(table["delay"], -30), 60_000_000),
)  # microseconds since the epoch: scheduled time + delay (early departures capped at 30 min)
origin = table["origin"].to_pylist()
stamps = [at // 1_000_000 for at in departed.to_pylist()]


def write(name, every_s, scale, keep):
    counts = {}
    for at, where in zip(stamps, origin):
        if keep(where):
            slot = at // every_s * every_s
            counts[slot] = counts.get(slot, 0) + 1
    first, last = min(counts), max(counts)
    with (out / name).open("w") as handle:
        handle.write("timestamp,value\n")
        for slot in range(first, last + every_s, every_s):
            handle.write(f"{slot},{counts.get(slot, 0) * scale:g}\n")


write("flights_all_5min.csv", 300, 20 / 5, lambda where: True)
write("flights_ord_10min.csv", 600, 300 / 10, lambda where: where == "ORD")
"""


def run(*command: str) -> None:
    subprocess.run(command, check=True, cwd=CACHE, stdout=sys.stderr)


def build_taylor() -> None:
    wheel = next(CACHE.glob("pmdarima-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        source = archive.read("pmdarima/datasets/taylor.py").decode()
    match = re.search(r"np\.array\(\[(.*?)\]", source, re.S)
    if match is None:
        raise SystemExit("public_scaling_traces: the taylor series was not found in the pmdarima wheel")
    values = [float(v) for v in match.group(1).replace("\n", " ").split(",") if v.strip()]
    start = int(datetime.fromisoformat(TAYLOR_START).replace(tzinfo=UTC).timestamp())
    with (CACHE / "taylor_30min.csv").open("w") as handle:
        handle.write("timestamp,value\n")
        for index, value in enumerate(values):
            handle.write(f"{start + 1800 * index},{value / 10:g}\n")


def build_github(csv_text: str) -> None:
    counts: dict[int, int] = {}
    for line in csv_text.splitlines()[1:]:
        stamp, count = line.split(",")
        epoch = int(datetime.strptime(stamp, "%Y/%m/%d %H:%M:%S").replace(tzinfo=UTC).timestamp())
        counts[epoch // 3600 * 3600] = counts.get(epoch // 3600 * 3600, 0) + int(count)
    first, last = min(counts), max(counts)
    with (CACHE / "github_1h.csv").open("w") as handle:
        handle.write("timestamp,value\n")
        for slot in range(first, last + 3600, 3600):
            handle.write(f"{slot},{counts.get(slot, 0) * 50}\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.parse_args()
    CACHE.mkdir(parents=True, exist_ok=True)
    if not list(CACHE.glob("vega-datasets-*.tgz")):
        run("npm", "pack", "--silent", VEGA)
    if not list(CACHE.glob("pmdarima-*.whl")):
        run(sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", ".", PMDARIMA)
    with tarfile.open(next(CACHE.glob("vega-datasets-*.tgz"))) as archive:
        for member in ("package/data/flights-3m.parquet", "package/data/github.csv"):
            archive.extract(member, CACHE, filter="data")
    tools = CACHE / "venv"
    python = tools / "bin" / "python"
    if not python.exists():
        venv.create(tools, with_pip=True)
        run(str(python), "-m", "pip", "install", "--quiet", "pyarrow")
    run(str(python), "-c", BUILD, str(CACHE), str(CACHE / "package/data/flights-3m.parquet"))
    build_taylor()
    build_github((CACHE / "package/data/github.csv").read_text())
    for name in ("flights_all_5min", "flights_ord_10min", "taylor_30min", "github_1h"):
        print(CACHE / f"{name}.csv")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
