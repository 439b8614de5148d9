#!/usr/bin/env bash
# The test command (README "The two commands"; .ci/run calls exactly this): installs what
# the tests need beyond cargo, then runs every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/test-deps.sh
exec cargo test --workspace "$@"
