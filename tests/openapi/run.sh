#!/usr/bin/env bash
# Installs the pinned OpenAPI validator and its dependencies (npm ci, from tests/openapi/vendor)
# when missing, then validates the document the shop serves.
# Usage: run.sh SHOP_BIN
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
if [[ ! -d $here/node_modules/@seriousme/openapi-schema-validator ]]; then
  npm ci --prefix "$here" --offline --no-audit --no-fund >&2  # from vendor/, no network
fi
SHOP_BIN=$1 exec node --test "$here/openapi.test.mjs"
