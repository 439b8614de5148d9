#!/usr/bin/env bash
# Installs what the test suite needs beyond cargo, when it is missing (idempotent; safe to
# run on every test run): promtool, from Debian's `prometheus` package, which checks the
# /metrics exposition and the alert rules in deploy/prometheus; Chromium, from Debian's
# `chromium`, in which the status page's test runs headless; Ruby and Go (`ruby`,
# `golang-go`), for the client libraries' suites; Python's venv (`python3-venv`), into
# which schemathesis is installed from PyPI (target/tools/schemathesis), for the OpenAPI
# fuzz test; libfaketime (`libfaketime`), under which the clock-fault tests run nodes.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v promtool >/dev/null || need+=(prometheus)
[ -x /usr/bin/chromium ] || need+=(chromium)
command -v ruby >/dev/null || need+=(ruby)
command -v go >/dev/null || need+=(golang-go)
python3 -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv)
ls /usr/lib/*/faketime/libfaketime.so.1 >/dev/null 2>&1 || need+=(libfaketime)

install_schemathesis() {
    local venv=target/tools/schemathesis
    local version=4.32.5
    if [ -x "$venv/bin/schemathesis" ] &&
        "$venv/bin/schemathesis" --version 2>/dev/null | grep -q "$version"; then
        return 0
    fi
    echo "scripts/test-deps.sh: installing schemathesis $version into $venv" >&2
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$version"
}

if [ ${#need[@]} -eq 0 ]; then
    install_schemathesis
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
install_schemathesis
