#!/usr/bin/env bash
# Measures whether `bandwidth:` holds: pushes (or pulls) BW_MIB MiB in BW_FILES files on
# BW_TRANSFERS connections to (from) a throw-away vsftpd through `ferrysync sync` under
# `bandwidth: BW_LIMIT_MIB MiB/s`, samples the bytes on the receiving side's disk (temporary
# files included) every second, and
# reports the achieved rate over the whole transfer and the worst 30 s window's deviation
# from the limit. The issue's target: within 5% over any 30 s window.
#
#   sudo bash tests/bench/bandwidth.sh
#
# Environment:
#   BW_LIMIT_MIB=4        the limit, MiB/s
#   BW_DIRECTION=push     push (the server's disk is sampled) or pull (the local folder is)
#   BW_MIB=160            MiB to push (160 at 4 MiB/s: 40 s, so several 30 s windows)
#   BW_FILES=8            files (of BW_MIB/BW_FILES MiB each, random bytes)
#   BW_TRANSFERS=4        connections
#   BW_WINDOW=30          seconds of the sliding window
#   BW_PORT=47121         vsftpd's control port; passive ports BW_PASV_BASE..+99 (47200):
#                         neither the test suite's (2121-2199, 40000-40999) nor compare.sh's
#                         (BENCH_PASV_BASE=45000..45299) nor watch_one_file.sh's (44000-44099)
#   BW_USER=fsbench-bw    the local user the server script creates (and its stop removes)
#   BW_BIN=PATH           the ferrysync binary (default: a debug build in $CARGO_TARGET_DIR
#                         or target/; the limit, not the build, sets the pace)
#   BW_KEEP=1             keep the work directory
# Needs root (the server script creates a user and starts vsftpd).
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$(pwd)

LIMIT_MIB=${BW_LIMIT_MIB:-4}
DIRECTION=${BW_DIRECTION:-push}
MIB=${BW_MIB:-160}
FILES=${BW_FILES:-8}
TRANSFERS=${BW_TRANSFERS:-4}
WINDOW=${BW_WINDOW:-30}
PORT=${BW_PORT:-47121}
PASV_BASE=${BW_PASV_BASE:-47200}
FTP_USER=${BW_USER:-fsbench-bw}

log() { printf 'bandwidth.sh: %s\n' "$*" >&2; }
die() { printf 'bandwidth.sh: error: %s\n' "$*" >&2; exit 1; }
[[ $DIRECTION == push || $DIRECTION == pull ]] || die "BW_DIRECTION must be push or pull"
[[ $(id -u) == 0 ]] || die "must run as root (the server script creates a user and starts vsftpd)"

if [[ -n ${BW_BIN:-} ]]; then
  fs_bin=$(realpath "$BW_BIN")
else
  log "building ferrysync (debug)"
  cargo build --quiet --bin ferrysync
  fs_bin=${CARGO_TARGET_DIR:-$repo/target}/debug/ferrysync
fi
[[ -x $fs_bin ]] || die "no ferrysync binary at $fs_bin"

work=$(mktemp -d /tmp/ferrysync-bw.XXXXXX)
chmod 711 "$work"
started=0
sampler=""
cleanup() {
  if [[ -n $sampler ]]; then kill "$sampler" 2>/dev/null || true; fi
  if ((started)); then bash "$repo/tests/servers/vsftpd.sh" stop "$work/vsftpd" >/dev/null 2>&1 || true; fi
  if [[ ${BW_KEEP:-0} == 1 ]]; then log "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
mkdir -p "$work/vsftpd" "$work/data" "$work/jobs" "$work/state" "$work/dl"

VSFTPD_PORT=$PORT VSFTPD_USER=$FTP_USER VSFTPD_PASV_MIN=$PASV_BASE VSFTPD_PASV_MAX=$((PASV_BASE + 99)) \
  VSFTPD_ENV_PREFIX=BW bash tests/servers/vsftpd.sh start "$work/vsftpd" 2>"$work/vsftpd-start.log" ||
  { cat "$work/vsftpd-start.log" >&2; die "vsftpd did not start"; }
started=1
# shellcheck disable=SC1091
source "$work/vsftpd/env"
mkdir -p "$BW_ROOT/bw"
chown "$FTP_USER" "$BW_ROOT/bw"

per=$((MIB / FILES))
# A push sends $work/data and the server's folder fills; a pull fetches that folder into $work/dl.
if [[ $DIRECTION == push ]]; then src=$work/data local_dir=$work/data watched=$BW_ROOT/bw; else
  src=$BW_ROOT/bw local_dir=$work/dl watched=$work/dl
fi
log "writing $FILES files of $per MiB"
for ((i = 0; i < FILES; i++)); do
  head -c $((per << 20)) /dev/urandom >"$src/f$i.bin"
done
chown -R "$FTP_USER" "$BW_ROOT/bw"

cat >"$work/jobs/bw.yaml" <<YAML
local: $local_dir
direction: $DIRECTION
remote:
  host: 127.0.0.1
  port: $BW_PORT
  user: $BW_USER
  password_file: $BW_PASSWORD_FILE
  path: /bw
  tls:
    ca_file: $BW_CA
transfers: $TRANSFERS
bandwidth: ${LIMIT_MIB}MiB/s
YAML

# The sampler: seconds since the start and the bytes under the remote folder, every second.
samples=$work/samples.tsv
(
  t0=$(date +%s.%N)
  while :; do
    now=$(date +%s.%N)
    bytes=$(find "$watched" -type f -printf '%s\n' 2>/dev/null | awk '{s+=$1} END {print s+0}')
    printf '%s\t%s\n' "$(echo "$now - $t0" | bc)" "$bytes" >>"$samples"
    sleep 1
  done
) &
sampler=$!

log "${DIRECTION}ing $MIB MiB on $TRANSFERS connections at ${LIMIT_MIB} MiB/s"
start=$(date +%s.%N)
FERRYSYNC_JOBS=$work/jobs FERRYSYNC_STATE=$work/state/ferrysync.db "$fs_bin" sync bw >"$work/sync.log" 2>&1 ||
  { cat "$work/sync.log" >&2; die "ferrysync sync failed"; }
end=$(date +%s.%N)
sleep 1.2
kill "$sampler" 2>/dev/null || true
wait "$sampler" 2>/dev/null || true
sampler=""

python3 - "$samples" "$LIMIT_MIB" "$MIB" "$WINDOW" "$(echo "$end - $start" | bc)" "$TRANSFERS" "$DIRECTION" <<'PY'
import sys
path, limit_mib, mib, window, elapsed, transfers, direction = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]), sys.argv[6], sys.argv[7]
limit = limit_mib * (1 << 20)
rows = [tuple(map(float, l.split("\t"))) for l in open(path) if l.strip()]
total = mib << 20
# The transfer proper: from the first sample with bytes to the first one with all of them.
first = next(i for i, (_, b) in enumerate(rows) if b > 0)
last = next((i for i, (_, b) in enumerate(rows) if b >= total), len(rows) - 1)
t0, b0 = rows[first]
t1, b1 = rows[last]
overall = (b1 - b0) / (t1 - t0)
worst, worst_at = 0.0, None
for i in range(first, last + 1):
    for j in range(i + 1, last + 1):
        if rows[j][0] - rows[i][0] >= window:
            rate = (rows[j][1] - rows[i][1]) / (rows[j][0] - rows[i][0])
            dev = rate / limit - 1
            if abs(dev) > abs(worst):
                worst, worst_at = dev, (rows[i][0], rows[j][0], rate)
            break
print(f"limit                 {limit_mib:g} MiB/s, {direction}, {transfers} connections, {mib} MiB, debug build")
print(f"run (ferrysync sync)  {elapsed:.1f} s, {total / elapsed / (1 << 20):.3f} MiB/s including log-in and verification")
print(f"transfer on the disk  {t1 - t0:.1f} s, {overall / (1 << 20):.3f} MiB/s ({(overall / limit - 1) * 100:+.2f}% of the limit)")
if worst_at:
    a, b, rate = worst_at
    print(f"worst {window} s window     {rate / (1 << 20):.3f} MiB/s ({worst * 100:+.2f}%), from {a:.0f} s to {b:.0f} s")
    print("verdict               " + ("within 5%" if abs(worst) <= 0.05 else "NOT within 5%"))
else:
    print(f"worst {window} s window     n/a: the transfer took less than {window} s (raise BW_MIB)")
PY
