#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs what the tests need (vsftpd, lftp, curl,
# openssl from Debian's packages; ProFTPD and Pure-FTPd unpacked beside them), starts on
# 127.0.0.1, each on a free port: vsftpd (explicit FTPS, require_ssl_reuse), vsftpd (implicit),
# vsftpd (client certificate required), vsftpd (two connections per client), vsftpd (a
# write-only drop folder), vsftpd (behind NAT: no EPSV, PASV naming 127.0.0.200), ProFTPD (TLS
# 1.2, HASH, LIST in UTC+3), ProFTPD (TLS 1.2 and 1.3), ProFTPD (implicit, session reuse
# required) and Pure-FTPd (TLS required on control and data connections); runs every unit and
# integration test against them and the in-process server; and stops every server again, which
# removes the local users their starts created, and removes its work directory (in /tmp; the
# tests' temp dirs are inside it), also when a test fails. Needs root (apt-get, local test
# users, a tmpfs mount in one test).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v curl >/dev/null || ! command -v openssl >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl openssl ca-certificates >/dev/null
fi
# The status page's browser test (tests/integration/status_page.rs drives
# tests/browser/status_page.py): Debian's chromium and chromedriver, through Selenium.
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ] ||
  ! /usr/bin/python3 -c 'import selenium' 2>/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver python3-selenium >/dev/null
fi

work=$(mktemp -d /tmp/ferrysync-tests.XXXXXX)
chmod 711 "$work" # the vsftpd users must reach their home directories below it
# The tests' temp dirs (sandboxes, the shared 1 GiB file) and those of the builds go inside the
# work directory, which cleanup removes: whatever a killed or failed test could not remove
# does not outlive the run. Mode 1777 like /tmp (a test runs the binary as `nobody`).
mkdir -m 1777 "$work/tmp"
export TMPDIR=$work/tmp
cleanup() {
  bash tests/servers/vsftpd.sh stop "$work/vsftpd" || true
  bash tests/servers/vsftpd.sh stop "$work/vsftpd-implicit" || true
  bash tests/servers/vsftpd.sh stop "$work/vsftpd-cert" || true
  bash tests/servers/vsftpd.sh stop "$work/vsftpd-limited" || true
  bash tests/servers/vsftpd.sh stop "$work/vsftpd-drop" || true
  bash tests/servers/vsftpd.sh stop "$work/vsftpd-nat" || true
  bash tests/servers/proftpd.sh stop "$work/proftpd" || true
  bash tests/servers/proftpd.sh stop "$work/proftpd13" || true
  bash tests/servers/proftpd.sh stop "$work/proftpd-implicit" || true
  bash tests/servers/pureftpd.sh stop "$work/pureftpd" || true
  rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/vsftpd"
bash tests/servers/vsftpd.sh start "$work/vsftpd"
mkdir -p "$work/vsftpd-implicit"
VSFTPD_IMPLICIT=YES VSFTPD_PASV_MIN=40100 VSFTPD_PASV_MAX=40199 \
  VSFTPD_USER=ferrysync-implicit VSFTPD_ENV_PREFIX=FERRYSYNC_VSFTPD_IMPLICIT \
  bash tests/servers/vsftpd.sh start "$work/vsftpd-implicit"
mkdir -p "$work/vsftpd-cert"
VSFTPD_CLIENT_CERT=YES VSFTPD_PASV_MIN=40400 VSFTPD_PASV_MAX=40499 \
  VSFTPD_USER=ferrysync-cert VSFTPD_ENV_PREFIX=FERRYSYNC_VSFTPD_CERT \
  bash tests/servers/vsftpd.sh start "$work/vsftpd-cert"
mkdir -p "$work/vsftpd-limited"
VSFTPD_MAX_PER_IP=2 VSFTPD_PASV_MIN=40500 VSFTPD_PASV_MAX=40599 \
  VSFTPD_USER=ferrysync-limited VSFTPD_ENV_PREFIX=FERRYSYNC_VSFTPD_LIMITED \
  bash tests/servers/vsftpd.sh start "$work/vsftpd-limited"
mkdir -p "$work/vsftpd-drop"
VSFTPD_CMDS_DENIED=RNFR,RNTO,SIZE,RETR VSFTPD_PASV_MIN=40600 VSFTPD_PASV_MAX=40699 \
  VSFTPD_USER=ferrysync-drop VSFTPD_ENV_PREFIX=FERRYSYNC_VSFTPD_DROP \
  bash tests/servers/vsftpd.sh start "$work/vsftpd-drop"
# A server behind NAT: EPSV refused, PASV naming an address its data ports are not on.
mkdir -p "$work/vsftpd-nat"
VSFTPD_CMDS_DENIED=EPSV VSFTPD_PASV_ADDRESS=127.0.0.200 VSFTPD_PASV_MIN=40900 VSFTPD_PASV_MAX=40979 \
  VSFTPD_USER=ferrysync-nat VSFTPD_ENV_PREFIX=FERRYSYNC_VSFTPD_NAT \
  bash tests/servers/vsftpd.sh start "$work/vsftpd-nat"
mkdir -p "$work/proftpd"
# LIST in the server's zone (UTC+3), MDTM and MLSD in UTC, as many servers do.
PROFTPD_LIST_TZ="<+03>-3" bash tests/servers/proftpd.sh start "$work/proftpd"
mkdir -p "$work/proftpd13"
PROFTPD_TLS_PROTOCOLS="TLSv1.2 TLSv1.3" PROFTPD_PASV_MIN=40300 \
  PROFTPD_PASV_MAX=40399 PROFTPD_USER=ferrysync-proftpd13 PROFTPD_ENV_PREFIX=FERRYSYNC_PROFTPD13 \
  bash tests/servers/proftpd.sh start "$work/proftpd13"
mkdir -p "$work/proftpd-implicit"
PROFTPD_IMPLICIT=YES PROFTPD_PASV_MIN=40800 PROFTPD_PASV_MAX=40899 \
  PROFTPD_USER=ferrysync-proftpd-implicit PROFTPD_ENV_PREFIX=FERRYSYNC_PROFTPD_IMPLICIT \
  bash tests/servers/proftpd.sh start "$work/proftpd-implicit"
mkdir -p "$work/pureftpd"
PUREFTPD_PASV_MIN=40700 PUREFTPD_PASV_MAX=40799 \
  bash tests/servers/pureftpd.sh start "$work/pureftpd"
# shellcheck disable=SC1091
source "$work/vsftpd-cert/env"
# shellcheck disable=SC1091
source "$work/vsftpd-limited/env"
# shellcheck disable=SC1091
source "$work/vsftpd-drop/env"
# shellcheck disable=SC1091
source "$work/vsftpd-nat/env"
# shellcheck disable=SC1091
source "$work/proftpd/env"
# shellcheck disable=SC1091
source "$work/proftpd13/env"
# shellcheck disable=SC1091
source "$work/proftpd-implicit/env"
# shellcheck disable=SC1091
source "$work/pureftpd/env"
# shellcheck disable=SC1091
source "$work/vsftpd/env"
# shellcheck disable=SC1091
source "$work/vsftpd-implicit/env"
# Every server above must reach the tests: one whose variables are missing fails its tests
# instead of skipping them (tests/integration/harness/mod.rs, Server::from_env).
export FERRYSYNC_REQUIRE_SERVERS=1
# `promtool check metrics` on `status --prometheus` (tests/integration/metrics.rs).
FERRYSYNC_PROMTOOL=$(bash tests/servers/promtool.sh)
export FERRYSYNC_PROMTOOL

cargo build --all-targets
# `bash tests/run.sh NAME...` runs only the tests whose names contain a NAME (against the same
# servers) and skips the packaging checks: for working on one area. CI passes no arguments.
cargo test --all-targets -- --test-threads="${TEST_THREADS:-4}" "$@"
if (($# == 0)); then
  bash tests/packaging.sh # the .deb (cargo-deb, release build): contents, unit, install cycle
fi
