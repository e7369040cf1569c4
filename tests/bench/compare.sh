#!/usr/bin/env bash
# Benchmark (not part of CI; issue 6): ferrysync vs `lftp mirror` vs `rclone copy`, on the same
# data in the same run, against vsftpd, Pure-FTPd and ProFTPD (explicit FTPS) on 127.0.0.1,
# with a bare suppaftp/rustls client (examples/bare_client.rs) as each server's ceiling.
#
#   sudo bash tests/bench/compare.sh                  # about 10-15 minutes
#   sudo BENCH_QUICK=1 bash tests/bench/compare.sh    # a few minutes: 1 run per cell, no 1 GiB
#   sudo BENCH_LARGE=1 bash tests/bench/compare.sh    # + 100,000 files (adds 15-20 minutes)
#
# Workloads (the issue's table):
#   large up     one 200 MiB file pushed to each server (ferrysync push job, `lftp mirror -R`,
#                `rclone copy`, bare client `up`)
#   large down   one 200 MiB file pulled from each server (ferrysync pull job, `lftp mirror`,
#                `rclone copy remote: local`, bare client `down`)
#   small        2,000 files of 4 KiB in 20 directories pushed to vsftpd, 4 parallel transfers
#                for every tool, then a re-run of every tool with nothing changed; also
#                ferrysync with `tls.max_version: "1.2"` (a row for information, not a target)
#   1 GiB        one 1 GiB file pushed to vsftpd (skipped with BENCH_QUICK=1)
#   scaling      with BENCH_LARGE=1: 100,000 files of 4 KiB in 1,000 directories pushed to
#                vsftpd by every tool, then ferrysync's no-change re-run and a re-run with one
#                file changed; the table ends with how time and peak RSS grew from 2,000 files
# Every command runs under /usr/bin/time (wall seconds, peak RSS) and `timeout`; a command that
# times out is reported as "timeout" (lftp's download from Pure-FTPd hangs until lftp's own
# 300 s timeout), not as a failure of the script. Every result is checked complete: `diff -r`
# of the source against the destination on disk (the servers' roots are local folders).
# Each cell runs BENCH_REPEAT times (default 3, 1 with BENCH_QUICK=1) and the table shows the
# median, all the runs' seconds, and the 1-minute load average before the cell.
#
# Environment:
#   BENCH_QUICK=1, BENCH_LARGE=1     see above
#   BENCH_REPEAT=N                   runs per cell
#   BENCH_SERVERS="vsftpd pureftpd proftpd"   servers for the large-file rows
#   BENCH_WORKLOADS="large small gib"         workloads to run (scaling: BENCH_LARGE=1)
#   BENCH_FILE_MIB=200               size of the large file
#   BENCH_TIMEOUT=900                seconds per command (small, 1 GiB, scaling)
#   BENCH_FILE_TIMEOUT=90            seconds per command on the large file (30 when quick)
#   BENCH_SCALE_FILES=100000         files of the scaling workload (fewer to try the code path)
#   BENCH_KEEP=1                     keep the work directory (logs, data)
#   BENCH_FERRYSYNC_BIN=PATH         measure this ferrysync binary instead of building one (to
#                                    compare builds in one harness; the table names it)
#   BENCH_OUT                        markdown output (default tests/bench/last-run.md;
#                                    tests/bench/last-run-large.md with BENCH_LARGE=1)
#   BENCH_VSFTPD_USER, BENCH_PUREFTPD_USER, BENCH_PROFTPD_USER   local users the server scripts
#                                    create (defaults fsbench-vs, fsbench-pure, fsbench-pro;
#                                    never the test suite's ferrysync-* users, whose passwords
#                                    the suite resets and which its servers' stop removes);
#                                    the cleanup's stop removes the ones this run created
#   BENCH_PASV_BASE=45000            passive ports: vsftpd BASE..+99, Pure-FTPd +100..+199,
#                                    ProFTPD +200..+299
# Needs root (the server scripts create users and start servers); installs lftp, rclone and
# time from Debian's packages when missing; builds ferrysync and the bare client (release).
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$(pwd)

QUICK=${BENCH_QUICK:-0}
LARGE=${BENCH_LARGE:-0}
if [[ $QUICK == 1 ]]; then
  REPEAT=${BENCH_REPEAT:-1} FILE_TMO=${BENCH_FILE_TIMEOUT:-30}
else
  REPEAT=${BENCH_REPEAT:-3} FILE_TMO=${BENCH_FILE_TIMEOUT:-90}
fi
TMO=${BENCH_TIMEOUT:-900}
FILE_MIB=${BENCH_FILE_MIB:-200}
SERVERS=${BENCH_SERVERS:-vsftpd pureftpd proftpd}
WORKLOADS=${BENCH_WORKLOADS:-large small gib}
SCALE_FILES=${BENCH_SCALE_FILES:-100000}
if [[ $LARGE == 1 ]]; then
  OUT=${BENCH_OUT:-$repo/tests/bench/last-run-large.md}
else
  OUT=${BENCH_OUT:-$repo/tests/bench/last-run.md}
fi
PASV_BASE=${BENCH_PASV_BASE:-45000}

log() { printf 'compare.sh: %s\n' "$*" >&2; }
die() { printf 'compare.sh: error: %s\n' "$*" >&2; exit 1; }
[[ $(id -u) == 0 ]] || die "must run as root (the server scripts create users and start servers)"
[[ $REPEAT =~ ^[1-9][0-9]*$ ]] || die "BENCH_REPEAT must be a positive number"
for s in $SERVERS; do
  [[ $s == vsftpd || $s == pureftpd || $s == proftpd ]] || die "unknown server '$s' in BENCH_SERVERS"
done
wants() { [[ " $WORKLOADS " == *" $1 "* ]]; }

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
if [[ -n ${BENCH_FERRYSYNC_BIN:-} ]]; then
  fs_bin=$(realpath "$BENCH_FERRYSYNC_BIN")
  [[ -x $fs_bin ]] || die "BENCH_FERRYSYNC_BIN=$BENCH_FERRYSYNC_BIN is not an executable"
  log "building the bare client (release); ferrysync is $fs_bin"
  cargo build --release --quiet --example bare_client
else
  log "building ferrysync and the bare client (release)"
  cargo build --release --quiet --bin ferrysync --example bare_client
  fs_bin=$repo/target/release/ferrysync
fi
bare_bin=$repo/target/release/examples/bare_client

work=$(mktemp -d /tmp/ferrysync-bench.XXXXXX)
chmod 711 "$work" # the FTP users must traverse it to reach their roots
declare -A STARTED=()
cleanup() {
  local s
  for s in "${!STARTED[@]}"; do
    bash "$repo/tests/servers/$s.sh" stop "$work/$s" >/dev/null 2>&1 || true
  done
  if [[ ${BENCH_KEEP:-0} == 1 ]]; then log "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
mkdir -p "$work/data" "$work/jobs" "$work/state" "$work/logs" "$work/dl"

# ------------------------------------------------------------------ servers
# Server facts, by server name: control port, user, password file, CA, root on disk.
declare -A PORT USER_ PWFILE CA ROOT PASS LABEL
start_server() { # NAME
  local s=$1 prefix
  mkdir -p "$work/$s"
  case $s in
  vsftpd)
    prefix=BENCH_VSFTPD
    # vsftpd's own default (the tests require close_notify on uploads; lftp hangs on that).
    VSFTPD_USER=${BENCH_VSFTPD_USER:-fsbench-vs} VSFTPD_PASV_MIN=$PASV_BASE \
      VSFTPD_PASV_MAX=$((PASV_BASE + 99)) VSFTPD_ENV_PREFIX=$prefix VSFTPD_STRICT_SSL_EOF=NO \
      bash tests/servers/vsftpd.sh start "$work/$s" 2>"$work/logs/$s-start.log" ||
      { cat "$work/logs/$s-start.log" >&2; die "vsftpd did not start"; }
    LABEL[$s]="vsftpd $(/usr/sbin/vsftpd -v 0>&1 | sed -n '1s/[^0-9]*\([0-9][0-9.]*\).*/\1/p')"
    ;;
  pureftpd)
    prefix=BENCH_PUREFTPD
    PUREFTPD_USER=${BENCH_PUREFTPD_USER:-fsbench-pure} PUREFTPD_PASV_MIN=$((PASV_BASE + 100)) \
      PUREFTPD_PASV_MAX=$((PASV_BASE + 199)) PUREFTPD_ENV_PREFIX=$prefix \
      bash tests/servers/pureftpd.sh start "$work/$s" 2>"$work/logs/$s-start.log" ||
      { cat "$work/logs/$s-start.log" >&2; die "pure-ftpd did not start"; }
    LABEL[$s]="Pure-FTPd 1.0.50"
    ;;
  proftpd)
    prefix=BENCH_PROFTPD
    PROFTPD_USER=${BENCH_PROFTPD_USER:-fsbench-pro} PROFTPD_PASV_MIN=$((PASV_BASE + 200)) \
      PROFTPD_PASV_MAX=$((PASV_BASE + 299)) PROFTPD_ENV_PREFIX=$prefix PROFTPD_SESSION_TICKETS=on \
      bash tests/servers/proftpd.sh start "$work/$s" 2>"$work/logs/$s-start.log" ||
      { cat "$work/logs/$s-start.log" >&2; die "proftpd did not start"; }
    LABEL[$s]="ProFTPD 1.3.8 (TLS 1.2, session tickets on)"
    ;;
  esac
  STARTED[$s]=1
  # shellcheck disable=SC1090
  source "$work/$s/env"
  local v=${prefix}_PORT u=${prefix}_USER p=${prefix}_PASSWORD_FILE c=${prefix}_CA r=${prefix}_ROOT
  PORT[$s]=${!v} USER_[$s]=${!u} PWFILE[$s]=${!p} CA[$s]=${!c} ROOT[$s]=${!r}
  PASS[$s]=$(cat "${PWFILE[$s]}")
  log "${LABEL[$s]} on 127.0.0.1:${PORT[$s]}, root ${ROOT[$s]}"
}

servers_needed=""
wants large && servers_needed=$SERVERS
if wants small || wants gib || [[ $LARGE == 1 ]]; then
  [[ " $servers_needed " == *" vsftpd "* ]] || servers_needed="vsftpd $servers_needed"
fi
for s in $servers_needed; do start_server "$s"; done

# rclone: a generated config with one remote per server. Go reads extra trust roots from
# SSL_CERT_FILE, so the private CA is verified (no_check_certificate = false). vsftpd needs
# disable_tls13 (rclone 1.60's Go TLS fails vsftpd's TLS 1.3 session reuse: "tls: illegal
# parameter"). Each server has its own CA, so SSL_CERT_FILE is set per command (cmd_rclone).
RCLONE_CONF=$work/rclone.conf
: >"$RCLONE_CONF"
for s in $servers_needed; do
  cat >>"$RCLONE_CONF" <<EOF
[$s]
type = ftp
host = 127.0.0.1
port = ${PORT[$s]}
user = ${USER_[$s]}
pass = $(rclone obscure "${PASS[$s]}")
explicit_tls = true
no_check_certificate = false
disable_tls13 = $([[ $s == vsftpd ]] && echo true || echo false)

EOF
done

# ------------------------------------------------------------------ workloads
gen_file() { # DIR MiB: one file of random bytes, DIR/big.bin
  mkdir -p "$1"
  dd if=/dev/urandom of="$1/big.bin" bs=1M count="$2" status=none
}
gen_small() { # DIR FILES: FILES files of 4 KiB of random bytes, 100 per directory
  python3 - "$1" "$2" <<'PY'
import os, sys
root, count = sys.argv[1], int(sys.argv[2])
blob = os.urandom(1 << 20)
for i in range(count):
    d = os.path.join(root, f"d{i // 100:04}")
    if i % 100 == 0:
        os.makedirs(d, exist_ok=True)
    off = (i * 4099) % (len(blob) - 4096)
    with open(os.path.join(d, f"f{i:06}.dat"), "wb") as f:
        f.write(i.to_bytes(4, "little") + blob[off:off + 4092])
PY
}
# Copies DIR into server S's root as /NAME, owned by the FTP user (the source of downloads).
seed_remote() { # S DIR NAME
  rm -rf "${ROOT[$1]:?}/$3"
  cp -a "$2" "${ROOT[$1]}/$3"
  chown -R "${USER_[$1]}:" "${ROOT[$1]}/$3"
}

# ------------------------------------------------------------------ commands
write_job() { # S NAME LOCAL REMOTE_DIR DIRECTION [TLS_LINE]
  cat >"$work/jobs/$2.yaml" <<YAML
local: $3
remote:
  host: 127.0.0.1
  port: ${PORT[$1]}
  path: $4
  user: ${USER_[$1]}
  password_file: ${PWFILE[$1]}
  tls:
    ca_file: ${CA[$1]}
${6:-}
direction: $5
$([[ $5 == pull ]] && echo 'settle: 0 # files as listed, as lftp and rclone take them')
transfers: 4
YAML
}
# The name of ferrysync's job (and ledger) for server S, LOCAL and REMOTE_DIR: a re-run of the
# same triple reuses its ledger, a fresh destination gets a fresh one.
job_name() { # S LOCAL REMOTE_DIR
  local n="$1-${2##*/}-${3#/}"
  echo "${n//\//_}"
}
# cmd_TOOL S DIRECTION LOCAL REMOTE_DIR: sets CMD, the command that copies LOCAL to REMOTE_DIR
# (push) or REMOTE_DIR into LOCAL (pull) on server S.
cmd_ferrysync() {
  local name
  name=$(job_name "$1" "$3" "$4")
  [[ -f $work/jobs/$name.yaml ]] || write_job "$1" "$name" "$3" "$4" "$2"
  CMD=("$fs_bin" sync "$name" --jobs "$work/jobs" --state "$work/state/$name.db")
}
# The same with `tls.max_version: "1.2"` (informational, small files only: README "TLS session
# reuse and TLS 1.3"); the targets are judged on the default above.
cmd_ferrysync12() {
  local name
  name=$(job_name "$1" "$3" "$4")-tls12
  [[ -f $work/jobs/$name.yaml ]] || write_job "$1" "$name" "$3" "$4" "$2" '    max_version: "1.2"'
  CMD=("$fs_bin" sync "$name" --jobs "$work/jobs" --state "$work/state/$name.db")
}
cmd_lftp() {
  local what
  if [[ $2 == push ]]; then what="mirror -R --parallel=4 $3 $4"; else what="mirror --parallel=4 $4 $3"; fi
  CMD=(lftp -u "${USER_[$1]},${PASS[$1]}" -e "set ftp:ssl-force true; set ftp:ssl-protect-data true; set ssl:ca-file ${CA[$1]}; set ssl:check-hostname yes; set cmd:fail-exit true; set net:max-retries 1; $what; quit" "ftp://localhost:${PORT[$1]}")
}
cmd_rclone() {
  if [[ $2 == push ]]; then
    CMD=(env "SSL_CERT_FILE=${CA[$1]}" rclone --config "$RCLONE_CONF" copy "$3" "$1:$4" --transfers 4)
  else
    CMD=(env "SSL_CERT_FILE=${CA[$1]}" rclone --config "$RCLONE_CONF" copy "$1:$4" "$3" --transfers 4)
  fi
}
cmd_bare() { # one file: LOCAL/big.bin <-> REMOTE_DIR/big.bin
  local a=(--port "${PORT[$1]}" --user "${USER_[$1]}" --password-file "${PWFILE[$1]}" --ca-file "${CA[$1]}")
  if [[ $2 == push ]]; then
    CMD=("$bare_bin" "${a[@]}" up "$3/big.bin" "$4/big.bin")
  else
    CMD=("$bare_bin" "${a[@]}" down "$4/big.bin")
  fi
}
tool_label() {
  case $1 in
  ferrysync) echo ferrysync ;;
  ferrysync12) echo "ferrysync (tls.max_version 1.2)" ;;
  lftp) echo lftp ;;
  rclone) [[ $2 == vsftpd ]] && echo "rclone (disable_tls13)" || echo rclone ;;
  bare) echo "bare client (ceiling)" ;;
  esac
}

# ------------------------------------------------------------------ measuring
results=$work/results.tsv # one line per cell, see cell()
: >"$results"
NRUN=0

# once TOOL S DIRECTION LOCAL REMOTE_DIR TIMEOUT: one timed run; sets SECS, RSS_KIB, STATUS.
once() {
  local tool=$1 s=$2 dir=$3 local_=$4 rdir=$5 tmo=$6 rc=0 tag tf=$work/logs/time.out
  NRUN=$((NRUN + 1))
  tag=$(printf '%03d-%s-%s-%s' "$NRUN" "$s" "$tool" "${rdir//\//_}")
  "cmd_$tool" "$s" "$dir" "$local_" "$rdir"
  # Every run starts with nothing dirty in the page cache: otherwise the kernel writes back the
  # previous run's (or the generated data's) hundreds of MiB during this one, on the same two
  # cores, and whichever tool runs first after a data set is made pays for it.
  sync
  /usr/bin/time -f "%e %M %U %S" -o "$tf" timeout -k 5 "$tmo" "${CMD[@]}" >"$work/logs/$tag.out" 2>&1 </dev/null || rc=$?
  read -r SECS RSS_KIB CPU_U CPU_S < <(tail -n 1 "$tf")
  CPU=$(awk -v u="$CPU_U" -v s="$CPU_S" 'BEGIN {printf "%.2f", u + s}')
  local bare_bytes=""
  if [[ $tool == bare && $rc == 0 ]]; then
    # The ceiling: the bare client's own seconds (TCP connect to the 226, the file already in
    # memory); a download's bytes are counted, not kept.
    read -r bare_bytes SECS _ <"$work/logs/$tag.out"
  fi
  if ((rc == 124)); then
    STATUS=timeout
  elif ((rc != 0)); then
    STATUS="exit $rc"
  elif [[ $dir == push ]] && ! diff -r "$local_" "${ROOT[$s]}$rdir" >"$work/logs/$tag.diff" 2>&1; then
    STATUS=INCOMPLETE
  elif [[ $tool == bare && $dir == pull ]]; then
    if [[ $bare_bytes == "$(stat -c %s "${ROOT[$s]}$rdir/big.bin")" ]]; then STATUS=complete; else STATUS=INCOMPLETE; fi
  elif [[ $dir == pull ]] && ! diff -r "${ROOT[$s]}$rdir" "$local_" >"$work/logs/$tag.diff" 2>&1; then
    STATUS=INCOMPLETE
  else
    STATUS=complete
  fi
  if [[ $STATUS != complete ]]; then
    log "$s $tool $dir $rdir: $STATUS; last lines of its output ($work/logs/$tag.out):"
    tail -n 5 "$work/logs/$tag.out" >&2 || true
    head -n 5 "$work/logs/$tag.diff" >&2 2>/dev/null || true
  fi
}

# cell WORKLOAD S TOOL DIRECTION LOCAL REMOTE_DIR BYTES FILES TIMEOUT FRESH
# Runs one tool REPEAT times and records the median. FRESH=1: every run starts from an empty
# destination (a fresh remote directory and ferrysync ledger for pushes, an empty local
# directory for pulls); the last run's destination is kept for a following no-change re-run.
# FRESH=0: every run goes to the same destination (re-runs). A run that does not complete ends
# the cell (a timeout is not waited for three times).
cell() {
  local wl=$1 s=$2 tool=$3 dir=$4 local_=$5 rdir=$6 bytes=$7 files=$8 tmo=$9 fresh=${10}
  local i secs=() cpus=() rss=0 status=complete load l r jn
  load=$(cut -d' ' -f1 /proc/loadavg)
  log "$wl: $s, $tool (load $load)"
  for ((i = 1; i <= REPEAT; i++)); do
    l=$local_ r=$rdir
    if [[ $fresh == 1 ]]; then
      if [[ $dir == push ]]; then
        r="$rdir-r$i"
        rm -rf "${ROOT[$s]:?}$r"
        if [[ $tool == bare ]]; then # one STOR: the directory must exist
          mkdir "${ROOT[$s]}$r" && chown "${USER_[$s]}:" "${ROOT[$s]}$r"
        fi
      else
        l="$local_-r$i"
        rm -rf "$l" && mkdir -p "$l"
      fi
      jn=$(job_name "$s" "$l" "$r")
      rm -f "$work/state/$jn.db"* "$work/jobs/$jn.yaml"
    fi
    once "$tool" "$s" "$dir" "$l" "$r" "$tmo"
    secs+=("$SECS")
    cpus+=("$CPU")
    if ((RSS_KIB > rss)); then rss=$RSS_KIB; fi
    if [[ $fresh == 1 && $i -lt $REPEAT ]]; then
      # Free the disk between runs; the last run's destination stays for re-runs.
      if [[ $dir == push ]]; then rm -rf "${ROOT[$s]:?}$r"; else rm -rf "$l"; fi
    fi
    if [[ $STATUS != complete ]]; then status=$STATUS; break; fi
  done
  LAST_DEST=$([[ $dir == push ]] && echo "$r" || echo "$l")
  local med cpu
  med=$(printf '%s\n' "${secs[@]}" | sort -g | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}')
  cpu=$(printf '%s\n' "${cpus[@]}" | sort -g | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}')
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$wl" "$s" "$tool" "$med" "$bytes" "$files" \
    "$rss" "$status" "${secs[*]}" "$load" "$cpu" >>"$results"
}

commas() { sed -E ':a;s/([0-9])([0-9]{3})($|,)/\1,\2\3/;ta' <<<"$1"; } # 100000 -> 100,000
tree_bytes() { find "$1" -type f -printf '%s\n' | awk '{s += $1} END {print s + 0}'; }
tree_files() { find "$1" -type f | wc -l; }

# ------------------------------------------------------------------ the runs
started_at=$(date -u +%Y-%m-%dT%H:%MZ)
load_start=$(cut -d' ' -f1-3 /proc/loadavg)

if wants large; then
  gen_file "$work/data/large" "$FILE_MIB"
  bytes=$((FILE_MIB * 1048576))
  for s in $SERVERS; do
    for tool in ferrysync lftp rclone bare; do
      cell "$FILE_MIB MiB up" "$s" "$tool" push "$work/data/large" "/up-$tool" "$bytes" 1 "$FILE_TMO" 1
      rm -rf "${ROOT[$s]:?}/up-$tool"-r*
    done
    seed_remote "$s" "$work/data/large" dl
    for tool in ferrysync lftp rclone bare; do
      cell "$FILE_MIB MiB down" "$s" "$tool" pull "$work/dl/$s-$tool" /dl "$bytes" 1 "$FILE_TMO" 1
      rm -rf "$work/dl/$s-$tool"-r*
    done
    rm -rf "${ROOT[$s]:?}/dl"
  done
  rm -rf "$work/data/large"
fi

small_dest=()
if wants small; then
  gen_small "$work/data/small" 2000
  b=$(tree_bytes "$work/data/small") f=$(tree_files "$work/data/small")
  for tool in ferrysync lftp rclone; do
    cell "2,000 x 4 KiB up" vsftpd "$tool" push "$work/data/small" "/small-$tool" "$b" "$f" "$TMO" 1
    small_dest+=("$LAST_DEST")
  done
  cell "2,000 x 4 KiB up" vsftpd ferrysync12 push "$work/data/small" "/small-ferrysync12" "$b" "$f" "$TMO" 1
  rm -rf "${ROOT[vsftpd]:?}"/small-ferrysync12*
  # Re-run with nothing changed, into each tool's own last destination (0 bytes move; files/s
  # is the tree's size over the seconds).
  i=0
  for tool in ferrysync lftp rclone; do
    cell "2,000 x 4 KiB re-run, no change" vsftpd "$tool" push "$work/data/small" "${small_dest[$i]}" 0 "$f" "$TMO" 0
    i=$((i + 1))
  done
  rm -rf "$work/data/small" "${ROOT[vsftpd]:?}"/small-*
fi

if wants gib && [[ $QUICK != 1 ]]; then
  gen_file "$work/data/gib" 1024
  for tool in ferrysync lftp rclone bare; do
    cell "1 GiB up" vsftpd "$tool" push "$work/data/gib" "/gib-$tool" $((1024 * 1048576)) 1 "$TMO" 1
    rm -rf "${ROOT[vsftpd]:?}/gib-$tool"-r*
  done
  rm -rf "$work/data/gib"
fi

if [[ $LARGE == 1 ]]; then
  gen_small "$work/data/scale" "$SCALE_FILES"
  b=$(tree_bytes "$work/data/scale") f=$(tree_files "$work/data/scale")
  wl="$(commas "$f") x 4 KiB up"
  save_repeat=$REPEAT
  REPEAT=1 # minutes per run: once
  for tool in ferrysync lftp rclone; do
    cell "$wl" vsftpd "$tool" push "$work/data/scale" "/scale-$tool" "$b" "$f" "$TMO" 1
    if [[ $tool == ferrysync ]]; then scale_dest=$LAST_DEST; fi
    if [[ $tool == rclone ]]; then rclone_dest=$LAST_DEST; fi
  done
  REPEAT=$save_repeat
  cell "$(commas "$f") x 4 KiB re-run, no change" vsftpd ferrysync push "$work/data/scale" "$scale_dest" 0 "$f" "$TMO" 0
  cell "$(commas "$f") x 4 KiB re-run, no change" vsftpd rclone push "$work/data/scale" "$rclone_dest" 0 "$f" "$TMO" 0
  changed=$work/data/scale/d0000/f000001.dat
  echo "changed" >>"$changed"
  REPEAT=1 # a second run would find nothing changed
  cell "$(commas "$f") x 4 KiB re-run, 1 file changed" vsftpd ferrysync push "$work/data/scale" "$scale_dest" "$(stat -c %s "$changed")" "$f" "$TMO" 0
  REPEAT=$save_repeat
  rm -rf "$work/data/scale" "${ROOT[vsftpd]:?}"/scale-*
fi

# ------------------------------------------------------------------ the table
# ratio to best peer: the fastest complete peer's (lftp, rclone) median seconds / this row's,
# for the same workload and server: 1.50 = one and a half times as fast as the best peer.
table=$(awk -F'\t' -v OFS='\t' '
  function label(tool, s) {
    if (tool == "rclone" && s == "vsftpd") return "rclone (disable_tls13)"
    if (tool == "bare") return "bare client (ceiling)"
    if (tool == "ferrysync12") return "ferrysync (tls.max_version 1.2)"
    return tool
  }
  { n++; wl[n] = $1; sv[n] = $2; tool[n] = $3; s[n] = $4; b[n] = $5; f[n] = $6; rss[n] = $7
    st[n] = $8; runs[n] = $9; load[n] = $10; cpu[n] = $11; key = $1 SUBSEP $2
    if ((tool[n] == "lftp" || tool[n] == "rclone") && st[n] == "complete" && (!(key in best) || s[n] < best[key])) best[key] = s[n] }
  END {
    for (i = 1; i <= n; i++) {
      key = wl[i] SUBSEP sv[i]
      ok = (st[i] == "complete")
      secs = ok ? sprintf("%.2f", s[i]) : (st[i] == "timeout" ? "timeout" : "-")
      mibs = (ok && b[i] > 0 && s[i] > 0) ? sprintf("%.0f", b[i] / 1048576 / s[i]) : "-"
      fps = (ok && f[i] > 1 && s[i] > 0) ? sprintf("%.0f", f[i] / s[i]) : "-"
      ratio = (ok && (key in best) && s[i] > 0) ? sprintf("%.2f", best[key] / s[i]) : "-"
      print wl[i], sv[i], label(tool[i], sv[i]), secs, mibs, fps, sprintf("%.1f", rss[i] / 1024), (tool[i] == "bare") ? "-" : cpu[i], ratio, runs[i], load[i], st[i]
    }
  }' "$results")

# Targets (issue 6), each met or not met, from the medians.
targets=$(awk -F'\t' '
  { k = $1 SUBSEP $2; if ($8 != "complete") next
    if ($3 == "ferrysync") fs[k] = $4
    else if ($3 == "bare") bare[k] = $4
    else if ($3 == "lftp" || $3 == "rclone") { if (!(k in peer) || $4 < peer[k]) { peer[k] = $4; peername[k] = $3 } }
    if ($3 == "rclone") rc[k] = $4
    order[k] = ++n; wl[k] = $1; sv[k] = $2 }
  END {
    for (k in order) idx[order[k]] = k
    for (i = 1; i <= n; i++) {
      if (!(i in idx)) continue
      k = idx[i]; w = wl[k]
      if (!(k in fs)) continue
      if (w ~ /MiB (up|down)$/ || w == "1 GiB up") {
        if (!(k in peer)) { printf "- %s, %s: no peer completed: not judged\n", w, sv[k]; continue }
        need = peer[k] / 1.5
        line = sprintf("- %s, %s: ferrysync %.2f s, fastest peer %s %.2f s (x%.2f; target x1.5)", w, sv[k], fs[k], peername[k], peer[k], peer[k] / fs[k])
        if (k in bare) line = line sprintf(", bare client %.2f s (ferrysync at %.0f%% of its rate; target 90%%)", bare[k], 100 * bare[k] / fs[k])
        if (fs[k] <= need) verdict = "met (1.5x the fastest peer)"
        else if ((k in bare) && bare[k] > need && fs[k] <= bare[k] * 1.1) verdict = "met (the server caps the rate: within 10% of the bare client)"
        else verdict = "NOT MET"
        print line ": **" verdict "**"
      } else if (w ~ /^2,000 x 4 KiB up$/) {
        if (!(k in peer)) { printf "- %s: no peer completed: not judged\n", w; continue }
        printf "- %s, %s: ferrysync %.2f s, fastest peer %s %.2f s (x%.2f; target x3): **%s**\n", w, sv[k], fs[k], peername[k], peer[k], peer[k] / fs[k], (fs[k] * 3 <= peer[k]) ? "met" : "NOT MET"
      } else if (w ~ /^2,000 x 4 KiB re-run, no change$/) {
        if (!(k in rc)) { printf "- %s: rclone did not complete: not judged\n", w; continue }
        printf "- %s, %s: ferrysync %.2f s, rclone %.2f s (%.0f%% of rclone; target at most 50%%): **%s**\n", w, sv[k], fs[k], rc[k], 100 * fs[k] / rc[k], (fs[k] * 2 <= rc[k]) ? "met" : "NOT MET"
      }
    }
  }' "$results")

# Scaling: how ferrysync's time and peak RSS grew from 2,000 files to the scaling workload.
scaling=$(awk -F'\t' '
  $3 == "ferrysync" && $8 == "complete" {
    if ($1 == "2,000 x 4 KiB up") { s1 = $4; r1 = $7 }
    else if ($1 == "2,000 x 4 KiB re-run, no change") { s2 = $4; r2 = $7 }
    else if ($1 ~ / x 4 KiB up$/) { l1 = $4; q1 = $7; nf = $6 }
    else if ($1 ~ / x 4 KiB re-run, no change$/) { l2 = $4; q2 = $7 }
    else if ($1 ~ / x 4 KiB re-run, 1 file changed$/) { l3 = $4; q3 = $7 }
  }
  END {
    if (!nf) exit
    x = nf / 2000
    if (s1 && l1) printf "- first push: %.2f s -> %.2f s (x%.1f for x%g files), peak RSS %.1f -> %.1f MiB (x%.1f)\n", s1, l1, l1 / s1, x, r1 / 1024, q1 / 1024, q1 / r1
    if (s2 && l2) printf "- no-change re-run: %.2f s -> %.2f s (x%.1f for x%g files), peak RSS %.1f -> %.1f MiB (x%.1f)\n", s2, l2, l2 / s2, x, r2 / 1024, q2 / 1024, q2 / r2
    if (s2 && l3) printf "- one file changed among %d: %.2f s, peak RSS %.1f MiB\n", nf, l3, q3 / 1024
  }' "$results")

header=$'workload\tserver\ttool\tseconds (median)\tMiB/s\tfiles/s\tpeak RSS MiB\tCPU s\tratio to best peer\truns (s)\tload\tresult'
servers_list=""
for s in $servers_needed; do servers_list+="${servers_list:+, }${LABEL[$s]}"; done
if [[ -n ${BENCH_FERRYSYNC_BIN:-} ]]; then
  fs_version="ferrysync $fs_bin"
else
  fs_version="ferrysync $(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo ?)$(git -C "$repo" diff --quiet HEAD -- src Cargo.toml examples 2>/dev/null || echo '+local changes')"
fi
versions="$fs_version, lftp $(lftp --version | sed -n '1s/[^0-9]*\([0-9][0-9.]*\).*/\1/p'), rclone $(rclone version | sed -n '1s/.*\(v[0-9][0-9.]*\).*/\1/p'); servers: $servers_list"
machine="$(nproc) cores; load average $load_start at the start, $(cut -d' ' -f1-3 /proc/loadavg) at the end"
command_line="bash tests/bench/compare.sh"
[[ $LARGE == 1 ]] && command_line="BENCH_LARGE=1 $command_line"
[[ $QUICK == 1 ]] && command_line="BENCH_QUICK=1 $command_line"
[[ -n ${BENCH_REPEAT:-} ]] && command_line="BENCH_REPEAT=$REPEAT $command_line"
[[ -n ${BENCH_WORKLOADS:-} ]] && command_line="BENCH_WORKLOADS=\"$WORKLOADS\" $command_line"
[[ -n ${BENCH_SERVERS:-} ]] && command_line="BENCH_SERVERS=\"$SERVERS\" $command_line"
echo
{ echo "$header"; echo "$table"; } | column -t -s $'\t'
echo
echo "Targets:"
echo "$targets"
if [[ -n $scaling ]]; then echo "Scaling:"; echo "$scaling"; fi
echo
echo "$versions; $machine"
{
  echo "Made by \`$command_line\` on $started_at: explicit FTPS on 127.0.0.1, median of $REPEAT run(s) per cell; $versions; $machine."
  echo
  echo "| ${header//$'\t'/ | } |"
  echo "|---|---|---|---:|---:|---:|---:|---:|---:|---|---:|---|"
  while IFS= read -r line; do echo "| ${line//$'\t'/ | } |"; done <<<"$table"
  echo
  echo "Targets (issue 6):"
  echo
  echo "$targets"
  if [[ -n $scaling ]]; then
    echo
    echo "Scaling of ferrysync from 2,000 files:"
    echo
    echo "$scaling"
  fi
  echo
  cat <<'NOTE'
ratio to best peer: the fastest complete peer's (lftp, rclone) median seconds for the same
workload and server / this row's (1.50 = one and a half times as fast as the best peer). Seconds
are wall time of the whole command (start-up, login, listing, transfer, verification); MiB/s
and files/s are the workload's bytes and files over those seconds; peak RSS is the largest of
the runs; CPU s is the median user + system CPU time of the tool's own processes (steadier
than wall time on a busy machine; not shown for the bare client, whose file is read outside its
clock). A "timeout" is a command killed by `timeout` (BENCH_FILE_TIMEOUT / BENCH_TIMEOUT).
Every completed result was checked with `diff -r` against the destination on disk. Sources
were in the page cache for every tool; tools ran in the order shown. Pushes go to a fresh
remote directory (and ferrysync to a fresh ledger) in every run; pulls to an empty local one.
ferrysync: `transfers: 4`, `tls.ca_file`; a push verifies SIZE, renames from a temporary name
and fsyncs nothing locally; a pull fsyncs and renames. lftp: `mirror [-R] --parallel=4` with
`ftp:ssl-force`, `ftp:ssl-protect-data`, `ssl:ca-file`. rclone: `copy --transfers 4`,
`explicit_tls = true`, the private CA verified through `SSL_CERT_FILE`, `disable_tls13 = true`
against vsftpd only (needed there). The bare client (examples/bare_client.rs) is one STOR or
RETR with 256 KiB writes over suppaftp + rustls and nothing else, its seconds its own (TCP
connect to the 226, the upload's file already in memory, the download's bytes counted, checked
by size, and dropped): the ceiling of the server and the client stack. ProFTPD runs the test suite's default instance (TLS 1.2 only, session reuse
required). Wall times on a shared 2-core machine: compare ratios within one run, not across
runs, and look at the load column.
NOTE
} >"$OUT"
log "markdown table written to $OUT"
