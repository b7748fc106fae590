#!/usr/bin/env bash
# Installs the OpenID Connect provider the authorization tests run (npm package oidc-provider,
# pinned) under .cache/, on the pinned Node 22 (scripts/node22.sh), once; later runs reuse it.
# Prints the directory holding its node_modules and, on a second line, the node binary.
#
#   bash scripts/oidc_provider.sh        (or: make oidc-provider; make pytest runs it)
#
# Environment overrides: OIDC_PROVIDER_VERSION, NODE22_VERSION, NODE22.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OIDC_PROVIDER_VERSION="${OIDC_PROVIDER_VERSION:-9.13.3}"
DIR="$ROOT/.cache/oidc-provider-$OIDC_PROVIDER_VERSION"
NODE="$(bash "$ROOT/scripts/node22.sh")"
NODE_BIN_DIR="$(dirname "$NODE")"

installed="$("$NODE" -p "require('$DIR/node_modules/oidc-provider/package.json').version" 2>/dev/null || true)"
if [[ "$installed" != "$OIDC_PROVIDER_VERSION" ]]; then
  command -v npm >/dev/null || { echo "oidc-provider: npm is needed once to install it" >&2; exit 2; }
  printf 'oidc-provider: installing oidc-provider@%s into %s\n' "$OIDC_PROVIDER_VERSION" "${DIR#"$ROOT/"}" >&2
  rm -rf "$DIR"
  mkdir -p "$DIR"
  PATH="$NODE_BIN_DIR:$PATH" npm install --prefix "$DIR" --no-audit --no-fund --loglevel=error \
    "oidc-provider@$OIDC_PROVIDER_VERSION" >&2
fi
echo "$DIR"
echo "$NODE"
