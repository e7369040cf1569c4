#!/usr/bin/env bash
# Benchmark (not part of CI; issue 6): ferrysync vs `lftp mirror -R` vs `rclone copy`, pushing the
# same workloads to one vsftpd (explicit FTPS, require_ssl_reuse=YES) on 127.0.0.1 in the same
# run. Each push goes to its own remote directory, is timed with /usr/bin/time (wall seconds,
# peak RSS) under `timeout`, and is checked complete with `diff -r` against vsftpd's root on disk.
#
#   sudo bash tests/bench/compare.sh
#
# Workloads:
#   W1  2,000 files of 1-64 KiB in nested directories (+ a no-change re-run of every tool)
#   W2  one 1 GiB file (256 MiB with BENCH_QUICK=1)
#   W3  100,000 small files, only with BENCH_LARGE=1 (+ ferrysync's no-change and
#       one-changed-file re-runs)
# Environment: BENCH_QUICK=1, BENCH_LARGE=1, BENCH_TIMEOUT (seconds per command, default 900),
#   BENCH_W3_FILES (default 100000; fewer only to try the W3 code path), BENCH_KEEP=1 (keep
#   the work directory), BENCH_OUT (markdown table, default tests/bench/last-run.md),
#   VSFTPD_PORT (default: the first free port from 2121).
# Needs root (vsftpd.sh creates the user ferrysync-bench and starts vsftpd); installs lftp, rclone
# and time from Debian's packages when missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$(pwd)

QUICK=${BENCH_QUICK:-0}
LARGE=${BENCH_LARGE:-0}
TMO=${BENCH_TIMEOUT:-900}
OUT=${BENCH_OUT:-$repo/tests/bench/last-run.md}
export VSFTPD_USER=ferrysync-bench # never the CI's ferrysync-test (the test suite resets its password)
export VSFTPD_PASV_MIN=41000 VSFTPD_PASV_MAX=41099

log() { printf 'compare.sh: %s\n' "$*" >&2; }
die() { printf 'compare.sh: error: %s\n' "$*" >&2; exit 1; }
[[ $(id -u) == 0 ]] || die "must run as root (vsftpd.sh creates a user and starts vsftpd)"

# ------------------------------------------------------------------ tools
missing=()
command -v lftp >/dev/null || missing+=(lftp)
command -v rclone >/dev/null || missing+=(rclone)
[[ -x /usr/bin/time ]] || missing+=(time)
if ((${#missing[@]})); then
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=120 update -q >/dev/null
  apt-get -o DPkg::Lock::Timeout=120 install -y -q "${missing[@]}" >/dev/null
fi
log "building ferrysync (release)"
cargo build --release --quiet
fs_bin=$repo/target/release/ferrysync

work=$(mktemp -d /tmp/ferrysync-bench.XXXXXX)
chmod 711 "$work"
cleanup() {
  bash "$repo/tests/servers/vsftpd.sh" stop "$work/vsftpd" >/dev/null 2>&1 || true
  if [[ ${BENCH_KEEP:-0} == 1 ]]; then log "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$work/vsftpd" "$work/data" "$work/jobs" "$work/state" "$work/logs"
bash tests/servers/vsftpd.sh start "$work/vsftpd" 2>"$work/logs/vsftpd-start.log" ||
  { cat "$work/logs/vsftpd-start.log" >&2; die "vsftpd did not start"; }
# shellcheck disable=SC1091
source "$work/vsftpd/env"
HOST=$FERRYSYNC_VSFTPD_HOST PORT=$FERRYSYNC_VSFTPD_PORT USER_=$FERRYSYNC_VSFTPD_USER
CA=$FERRYSYNC_VSFTPD_CA ROOT=$FERRYSYNC_VSFTPD_ROOT PWFILE=$FERRYSYNC_VSFTPD_PASSWORD_FILE
pass=$(cat "$PWFILE")
log "vsftpd on $HOST:$PORT, root $ROOT"

# rclone: a generated config. Go reads extra trust roots from SSL_CERT_FILE, so the private CA
# can be verified (no_check_certificate = false). vsftpd needs disable_tls13 (TLS 1.3 session
# reuse on the data connection fails with rclone's Go TLS).
RCLONE_CONF=$work/rclone.conf
cat >"$RCLONE_CONF" <<EOF
[bench]
type = ftp
host = $HOST
port = $PORT
user = $USER_
pass = $(rclone obscure "$pass")
explicit_tls = true
no_check_certificate = ${BENCH_RCLONE_NO_CHECK:-false}
disable_tls13 = true
EOF

# ------------------------------------------------------------------ workloads
gen_w1() { # DIR: 2,000 files of 1-64 KiB, random content, in 3-level nested directories
  python3 - "$1" <<'PY'
import os, random, sys
root = sys.argv[1]
rnd = random.Random(1)
blob = os.urandom(64 * 1024 + 4096)
for i in range(2000):
    d = os.path.join(root, f"d{i % 10}", f"s{i % 7}", f"t{i % 3}")
    os.makedirs(d, exist_ok=True)
    n = rnd.randint(1024, 64 * 1024)
    off = rnd.randint(0, 4096)
    with open(os.path.join(d, f"f{i:05}.bin"), "wb") as f:
        f.write(i.to_bytes(4, "little") + blob[off:off + n - 4])
PY
}
gen_w2() { # DIR MiB: one file of random bytes
  mkdir -p "$1"
  dd if=/dev/urandom of="$1/big.bin" bs=1M count="$2" status=none
}
gen_w3() { # DIR N: N files of 1-4 KiB in 100 x 10 directories
  python3 - "$1" "$2" <<'PY'
import os, random, sys
root, count = sys.argv[1], int(sys.argv[2])
rnd = random.Random(3)
blob = os.urandom(8192)
for i in range(count):
    d = os.path.join(root, f"d{i % 100:02}", f"s{(i // 100) % 10}")
    if i < 1000:
        os.makedirs(d, exist_ok=True)
    n = rnd.randint(1024, 4096)
    off = rnd.randint(0, 4096)
    with open(os.path.join(d, f"f{i:06}.dat"), "wb") as f:
        f.write(i.to_bytes(4, "little") + blob[off:off + n - 4])
PY
}

# ------------------------------------------------------------------ runners
write_job() { # NAME SRC REMOTE_DIR
  cat >"$work/jobs/$1.yaml" <<YAML
local: $2
remote:
  host: $HOST
  port: $PORT
  path: $3
  user: $USER_
  password_file: $PWFILE
  tls:
    ca_file: $CA
transfers: 4
YAML
}
# cmd_TOOL SRC REMOTE_DIR: sets CMD to the command line that pushes SRC to REMOTE_DIR.
cmd_ferrysync() { # the job and its ledger are named after the remote dir
  local name=${2#/}
  [[ -f $work/jobs/$name.yaml ]] || write_job "$name" "$1" "$2"
  CMD=("$fs_bin" sync "$name" --jobs "$work/jobs" --state "$work/state/$name.db")
}
cmd_lftp() {
  CMD=(lftp -u "$USER_,$pass" -e "set ftp:ssl-force true; set ftp:ssl-protect-data true; set ssl:ca-file $CA; set ssl:check-hostname yes; set cmd:fail-exit true; set net:max-retries 1; mirror -R --parallel=4 $1 $2; quit" "ftp://localhost:$PORT")
}
cmd_rclone() {
  CMD=(env "SSL_CERT_FILE=$CA" rclone --config "$RCLONE_CONF" copy "$1" "bench:$2" --transfers 4)
}

results=$work/results.tsv # workload tool seconds bytes files rss_kib status
: >"$results"
NRUN=0

# measure WORKLOAD TOOL SRC REMOTE_DIR BYTES FILES: runs cmd_TOOL's command under time and timeout, checks diff -r.
measure() {
  local wl=$1 tool=$2 src=$3 rdir=$4 bytes=$5 files=$6 rc=0 secs rss status
  local tf=$work/logs/time.out tag
  NRUN=$((NRUN + 1))
  tag=$(printf '%02d-%s' "$NRUN" "${rdir#/}")
  log "$wl: $tool -> $rdir"
  "cmd_$tool" "$src" "$rdir"
  /usr/bin/time -f "%e %M" -o "$tf" timeout "$TMO" "${CMD[@]}" >"$work/logs/$tag.out" 2>&1 </dev/null || rc=$?
  read -r secs rss < <(tail -n 1 "$tf")
  if ((rc == 124)); then
    status=timeout
  elif ((rc != 0)); then
    status="exit $rc"
  elif diff -r "$src" "$ROOT$rdir" >"$work/logs/$tag.diff" 2>&1; then
    status=complete
  else
    status=INCOMPLETE
  fi
  if [[ $status != complete ]]; then
    log "$wl $tool: $status; last lines of its output:"
    tail -n 5 "$work/logs/$tag.out" >&2 || true
    head -n 5 "$work/logs/$tag.diff" >&2 2>/dev/null || true
  fi
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$wl" "$tool" "$secs" "$bytes" "$files" "$rss" "$status" >>"$results"
}

tree_bytes() { find "$1" -type f -printf '%s\n' | awk '{s += $1} END {print s + 0}'; }
tree_files() { find "$1" -type f | wc -l; }

push_all() { # WORKLOAD TAG SRC: every tool pushes SRC to /TAG-TOOL
  local wl=$1 tag=$2 src=$3 b f tool
  b=$(tree_bytes "$src") f=$(tree_files "$src")
  for tool in ferrysync lftp rclone; do
    measure "$wl" "$tool" "$src" "/$tag-$tool" "$b" "$f"
  done
}

# W1
gen_w1 "$work/data/W1"
push_all W1 W1 "$work/data/W1"
# A no-change re-run of every tool (0 bytes sent; files/s is the tree size / seconds).
f=$(tree_files "$work/data/W1")
for tool in ferrysync lftp rclone; do
  measure "W1 re-run, no change" "$tool" "$work/data/W1" "/W1-$tool" 0 "$f"
done
rm -rf "$work/data/W1" "$ROOT"/W1-*

# W2
if [[ $QUICK == 1 ]]; then mib=256; else mib=1024; fi
gen_w2 "$work/data/W2" "$mib"
push_all "W2 ($mib MiB)" W2 "$work/data/W2"
rm -rf "$work/data/W2" "$ROOT"/W2*

# W3
if [[ $LARGE == 1 ]]; then
  n3=${BENCH_W3_FILES:-100000}
  gen_w3 "$work/data/W3" "$n3"
  w3="W3 ($n3 files)"
  push_all "$w3" W3 "$work/data/W3"
  f=$(tree_files "$work/data/W3")
  measure "$w3 re-run, no change" ferrysync "$work/data/W3" /W3-ferrysync 0 "$f"
  changed=$work/data/W3/d01/s0/f000001.dat
  echo "changed" >>"$changed"
  measure "$w3 re-run, 1 file changed" ferrysync "$work/data/W3" /W3-ferrysync "$(stat -c %s "$changed")" 1
fi

# ------------------------------------------------------------------ table
# Ratio: seconds / the best complete run's seconds for that workload (1.00 = fastest).
# MiB/s and files/s: bytes and files of the workload per wall second ("-" where nothing moved).
rows=$(awk -F'\t' '
  { wl[NR] = $1; tool[NR] = $2; s[NR] = $3; b[NR] = $4; f[NR] = $5; rss[NR] = $6; st[NR] = $7
    if ($7 == "complete" && (!($1 in best) || $3 < best[$1])) best[$1] = $3 }
  END {
    for (i = 1; i <= NR; i++) {
      mibs = (b[i] > 0 && s[i] > 0) ? sprintf("%.1f", b[i] / 1048576 / s[i]) : "-"
      fps = (f[i] > 0 && s[i] > 0) ? sprintf(f[i] / s[i] < 10 ? "%.2f" : "%.0f", f[i] / s[i]) : "-"
      secs = (st[i] == "timeout") ? "timeout" : sprintf("%.2f", s[i])
      ratio = (st[i] == "complete" && best[wl[i]] > 0) ? sprintf("%.2f", s[i] / best[wl[i]]) : "-"
      printf "%s\t%s\t%s\t%s\t%s\t%.1f\t%s\t%s\n", wl[i], tool[i], secs, mibs, fps, rss[i] / 1024, ratio, st[i]
    }
  }' "$results")
header=$'workload\ttool\tseconds\tMiB/s\tfiles/s\tpeak RSS MiB\tratio to best\tresult'
versions="ferrysync $(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo ?)$(git -C "$repo" diff --quiet HEAD -- src Cargo.toml 2>/dev/null || echo '+local changes'), lftp $(lftp --version | head -n 1 | grep -o '[0-9][0-9.]*' | head -n 1), $(rclone version | head -n 1), vsftpd $(/usr/sbin/vsftpd -v 0>&1 | grep -o '[0-9][0-9.]*' | head -n 1)"
machine="$(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg) at the end"
echo
{ echo "$header"; echo "$rows"; } | column -t -s $'\t'
echo
echo "$versions; $machine"
{
  echo "Made by \`$([[ $QUICK == 1 ]] && printf 'BENCH_QUICK=1 ')$([[ $LARGE == 1 ]] && printf 'BENCH_LARGE=1 ')bash tests/bench/compare.sh\` on $(date -u +%Y-%m-%dT%H:%MZ): explicit FTPS to vsftpd on 127.0.0.1, 4 parallel transfers each; $versions; $machine."
  echo
  echo "| ${header//$'\t'/ | } |"
  echo "|---|---|---:|---:|---:|---:|---:|---|"
  while IFS= read -r line; do echo "| ${line//$'\t'/ | } |"; done <<<"$rows"
  echo
  cat <<'NOTE'
Ratio: seconds / the fastest complete run of that workload. Every result was checked with `diff -r`
against vsftpd's root on disk. The source data was in the page cache for every tool; tools ran in
the order shown. rclone: `explicit_tls = true`, `disable_tls13 = true` (needed against vsftpd), the
private CA verified through `SSL_CERT_FILE` (`no_check_certificate = false`); it logs
`SetModTime is not supported` for every file (vsftpd has no MFMT) and exits 0. lftp:
`mirror -R --parallel=4` with `ftp:ssl-force`, `ftp:ssl-protect-data`, `ssl:ca-file`. ferrysync:
`transfers: 4`, `tls.ca_file`. Wall times on a shared 2-core machine with other work running:
compare ratios within one run, not across runs.
NOTE
} >"$OUT"
log "markdown table written to $OUT"
