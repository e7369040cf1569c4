#!/usr/bin/env bash
# Prints the path of a working `promtool` (Prometheus' checker of metrics files), for the
# test that runs `promtool check metrics` on `ferrysync status --prometheus`
# (tests/integration/metrics.rs, through FERRYSYNC_PROMTOOL). Must run as root.
#
#   FERRYSYNC_PROMTOOL=$(bash tests/servers/promtool.sh)
#
# Uses the system's promtool if there is one. Otherwise Debian's `prometheus` package is
# `apt-get download`ed and unpacked with `dpkg -x` into a cache folder that later runs reuse,
# like ProFTPD and Pure-FTPd: installing it would also install and start a Prometheus server.
#
# Environment overrides:
#   PROMTOOL_CACHE_DIR  where the unpacked package is kept (default /var/cache/ferrysync-tests/promtool)
set -euo pipefail

# shellcheck disable=SC2034 # PROG and APT_TIMEOUT are read by common.sh
PROG=${0##*/}
CACHE_DIR=${PROMTOOL_CACHE_DIR:-/var/cache/ferrysync-tests/promtool}
# shellcheck disable=SC2034
APT_TIMEOUT=300
export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:${PATH:-}"
# shellcheck source=tests/servers/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

if command -v promtool >/dev/null; then
  command -v promtool
  exit 0
fi
[[ $(id -u) == 0 ]] || die "must run as root (apt-get download)"
fetch_unpacked "$CACHE_DIR" prometheus usr/bin/promtool
"$ROOT/usr/bin/promtool" --version >/dev/null 2>&1 || die "$ROOT/usr/bin/promtool does not run (try: rm -rf $CACHE_DIR)"
echo "$ROOT/usr/bin/promtool"
