#!/bin/sh
# System packages the test suite starts for real, installed only when missing:
# Debian's libb64-0d (Triton's perf_analyzer links it) and postgresql (the
# PostgreSQL store's tests start a private server with its initdb/pg_ctl,
# which Debian keeps in /usr/lib/postgresql/*/bin), chromium (the console's
# browser tests drive /usr/bin/chromium with Playwright), iptables (the
# network fault tests' DROP and loss rules, tests/netns.py) and curl
# (tests/system/test_e2e.py runs the README's REST calls with it). Needs root (or sudo)
# when something is missing; does nothing when all is there.
set -eu
missing=""
dpkg -s libb64-0d >/dev/null 2>&1 || missing="$missing libb64-0d"
command -v chromium >/dev/null 2>&1 || missing="$missing chromium"
command -v curl >/dev/null 2>&1 || missing="$missing curl"  # the README's REST calls, run as written
command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$missing postgresql"
command -v iptables >/dev/null 2>&1 || missing="$missing iptables"
[ -z "$missing" ] && exit 0
if [ "$(id -u)" -eq 0 ]; then as_root=""; else as_root="sudo"; fi
echo "installing system packages:$missing" >&2
$as_root apt-get update -qq
# shellcheck disable=SC2086
$as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing
