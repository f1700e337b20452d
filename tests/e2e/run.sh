#!/usr/bin/env bash
# Installs the pinned playwright-core (npm ci, from tests/e2e/vendor) when missing, then runs the
# browser tests.
# Usage: run.sh SHOP_BIN
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
if [[ ! -d $here/node_modules/playwright-core ]]; then
  npm ci --prefix "$here" --offline --no-audit --no-fund >&2  # from vendor/, no network
fi
SHOP_BIN=$1 exec node --test "$here/shop_ui.test.mjs"
