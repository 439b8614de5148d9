#!/usr/bin/env bash
# Installs what the test suite needs beyond cargo, when it is missing (idempotent; safe to
# run on every test run): promtool, from Debian's `prometheus` package, which checks the
# /metrics exposition and the alert rules in deploy/prometheus; Chromium, from Debian's
# `chromium`, in which the status page's test runs headless.
set -euo pipefail

need=()
command -v promtool >/dev/null || need+=(prometheus)
[ -x /usr/bin/chromium ] || need+=(chromium)

if [ ${#need[@]} -eq 0 ]; then
    exit 0
fi
echo "scripts/test-deps.sh: installing Debian packages: ${need[*]}" >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || {
        echo "scripts/test-deps.sh: need root (or sudo) to install: ${need[*]}" >&2
        exit 1
    }
    SUDO=sudo
fi
export DEBIAN_FRONTEND=noninteractive
# --no-install-recommends: only what the packages need to run.
$SUDO apt-get install -y --no-install-recommends "${need[@]}" >/dev/null 2>&1 || {
    $SUDO apt-get update >/dev/null
    $SUDO apt-get install -y --no-install-recommends "${need[@]}" >/dev/null
}
