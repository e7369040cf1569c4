#!/usr/bin/env bash
# Benchmark (not part of CI; issue 16): ferrysync vs `lftp mirror -R` vs `rclone copy` over an
# emulated WAN link: every connection goes through tests/bench/latency_proxy.rs, which listens
# on a second loopback address on vsftpd's control port and its passive range and adds a round
# trip (and optionally a bandwidth cap) in user space (the kernels here have no netem).
#
#   sudo bash tests/bench/latency.sh                          # the whole matrix, median of 3
#   sudo BENCH_REPEAT=1 BENCH_RTTS="20 50" BENCH_WORKLOADS="small" bash tests/bench/latency.sh
#
# Workloads (BENCH_WORKLOADS, default "small rerun gib trace"):
#   small   first push of BENCH_FILES (2,000) x 4 KiB files in 20 directories to vsftpd, at
#           every RTT of BENCH_RTTS and every connection count of BENCH_CONNS (ferrysync
#           `transfers: N`, `lftp mirror -R --parallel=N`, `rclone copy --transfers N`)
#   rerun   the no-change re-run of each tool into its own destination of the first push with
#           the first connection count of BENCH_CONNS (needs small)
#   gib     one BENCH_GIB_MIB (1024) MiB file at BENCH_GIB_RTT (20) ms and BENCH_GIB_RATE
#           (200mbit) per direction, the three tools plus a bare client (curl --ssl-reqd -T),
#           which shows the link's capacity
#   trace   BENCH_TRACE_FILES (100) x 4 KiB files with one connection at BENCH_TRACE_RTT (50) ms,
#           the proxy's trace summarised by tests/bench/trace_summary.py: round trips per file
#
# Environment:
#   BENCH_REPEAT=3                 runs per cell (median)
#   BENCH_RTTS="0 20 50"           round trips (ms) of the small/rerun rows, in this order
#   BENCH_CONNS="auto 4 16"        connection counts of the small rows; "auto" is ferrysync's
#                                  default (`transfers: auto`), run by ferrysync only; the
#                                  re-run uses each tool's first count (ferrysync: auto)
#   BENCH_TOOLS="ferrysync lftp rclone"
#   BENCH_WORKLOADS="small rerun gib trace"
#   BENCH_FILES=2000 BENCH_TRACE_FILES=100 BENCH_GIB_MIB=1024 BENCH_GIB_RTT=20
#   BENCH_GIB_RATE=200mbit         the proxy's --rate for the gib row
#   BENCH_TIMEOUT=1800             seconds per command
#   BENCH_PROXY_ADDR=127.0.0.7     the proxy's address (127.0.0.2..9)
#   BENCH_CTRL_PORT=2470           vsftpd's control port; BENCH_PASV_BASE=46000: passive ports
#                                  BASE..BASE+99 (none of them the test suite's, so no suite lock;
#                                  compare.sh uses 45000..45299)
#   BENCH_FERRYSYNC_BIN=PATH       measure this binary instead of building one (release)
#   BENCH_PROXY_BIN=PATH           this proxy instead of `cargo build --example latency_proxy`
#   BENCH_OUT                      markdown (default tests/bench/last-run-latency.md)
#   BENCH_KEEP=1                   keep the work directory (logs, traces)
#   BENCH_TRACE_SMALL=1            trace the small and rerun rows too (logs/small-RTT.tsv; with
#                                  BENCH_KEEP=1, to see where a run's round trips go)
# Needs root (the server script creates a user and starts vsftpd); installs lftp, rclone, curl
# and time from Debian's packages when missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$(pwd)

REPEAT=${BENCH_REPEAT:-3}
RTTS=${BENCH_RTTS:-0 20 50}
CONNS=${BENCH_CONNS:-auto 4 16}
TOOLS=${BENCH_TOOLS:-ferrysync lftp rclone}
WORKLOADS=${BENCH_WORKLOADS:-small rerun gib trace}
FILES=${BENCH_FILES:-2000}
TRACE_FILES=${BENCH_TRACE_FILES:-100}
TRACE_RTT=${BENCH_TRACE_RTT:-50}
GIB_MIB=${BENCH_GIB_MIB:-1024}
GIB_RTT=${BENCH_GIB_RTT:-20}
GIB_RATE=${BENCH_GIB_RATE:-200mbit}
TMO=${BENCH_TIMEOUT:-1800}
ADDR=${BENCH_PROXY_ADDR:-127.0.0.7}
CTRL_PORT=${BENCH_CTRL_PORT:-2470}
PASV_BASE=${BENCH_PASV_BASE:-46000}
OUT=${BENCH_OUT:-$repo/tests/bench/last-run-latency.md}

log() { printf 'latency.sh: %s\n' "$*" >&2; }
die() { printf 'latency.sh: error: %s\n' "$*" >&2; exit 1; }
[[ $(id -u) == 0 ]] || die "must run as root (the server script creates a user and starts vsftpd)"
[[ $REPEAT =~ ^[1-9][0-9]*$ ]] || die "BENCH_REPEAT must be a positive number"
[[ $ADDR =~ ^127\.0\.0\.[2-9]$ ]] || die "BENCH_PROXY_ADDR must be 127.0.0.2..9"
wants() { [[ " $WORKLOADS " == *" $1 "* ]]; }
# first_conns_of TOOL: the first connection count of CONNS the tool runs (peers skip "auto")
first_conns_of() {
  local c
  for c in $CONNS; do
    if [[ $c != auto || $1 == ferrysync ]]; then echo "$c"; return; fi
  done
}
# The 1 GiB row is one file: one connection count (a number) for every tool.
gib_conns=$(first_conns_of lftp)
gib_conns=${gib_conns:-4}

# ------------------------------------------------------------------ tools
missing=()
command -v lftp >/dev/null || missing+=(lftp)
command -v rclone >/dev/null || missing+=(rclone)
command -v curl >/dev/null || missing+=(curl)
[[ -x /usr/bin/time ]] || missing+=(time)
if ((${#missing[@]})); then
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=120 update -q >/dev/null
  apt-get -o DPkg::Lock::Timeout=120 install -y -q "${missing[@]}" >/dev/null
fi
if [[ -n ${BENCH_FERRYSYNC_BIN:-} ]]; then
  fs_bin=$(realpath "$BENCH_FERRYSYNC_BIN")
else
  log "building ferrysync (release)"
  cargo build --release --quiet --bin ferrysync
  fs_bin=${CARGO_TARGET_DIR:-$repo/target}/release/ferrysync
fi
[[ -x $fs_bin ]] || die "no ferrysync binary at $fs_bin"
if [[ -n ${BENCH_PROXY_BIN:-} ]]; then
  proxy_bin=$(realpath "$BENCH_PROXY_BIN")
else
  log "building the latency proxy"
  cargo build --quiet --example latency_proxy
  proxy_bin=${CARGO_TARGET_DIR:-$repo/target}/debug/examples/latency_proxy
fi
[[ -x $proxy_bin ]] || die "no proxy binary at $proxy_bin"

work=$(mktemp -d /tmp/ferrysync-latency.XXXXXX)
chmod 711 "$work" # the FTP user must traverse it to reach its root
server_started=0 proxy_pid=""
stop_proxy() {
  if [[ -n $proxy_pid ]]; then
    kill "$proxy_pid" 2>/dev/null || true
    wait "$proxy_pid" 2>/dev/null || true
    proxy_pid=""
  fi
}
cleanup() {
  stop_proxy
  if [[ $server_started == 1 ]]; then
    bash "$repo/tests/servers/vsftpd.sh" stop "$work/vsftpd" >/dev/null 2>&1 || true
  fi
  if [[ ${BENCH_KEEP:-0} == 1 ]]; then log "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
mkdir -p "$work/data" "$work/jobs" "$work/state" "$work/logs" "$work/vsftpd"

# ------------------------------------------------------------------ server
# The certificate must name the proxy's address (clients connect to it): make it here with
# the server script's own recipe plus that address; the script keeps valid certificates.
(
  cd "$work/vsftpd"
  umask 077
  printf '[req]\ndistinguished_name = dn\nprompt = no\nx509_extensions = v3_ca\n[dn]\nCN = ferrysync latency bench CA\n[v3_ca]\nbasicConstraints = critical, CA:TRUE\nkeyUsage = critical, keyCertSign, cRLSign\nsubjectKeyIdentifier = hash\n' >ca.cnf
  printf 'basicConstraints = critical, CA:FALSE\nkeyUsage = critical, digitalSignature, keyEncipherment\nextendedKeyUsage = serverAuth\nsubjectAltName = DNS:localhost, IP:127.0.0.1, IP:%s\nsubjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid, issuer\n' "$ADDR" >server.ext
  openssl req -x509 -config ca.cnf -newkey rsa:2048 -nodes -sha256 -days 30 -keyout ca.key -out ca.pem 2>/dev/null
  openssl req -new -newkey rsa:2048 -nodes -sha256 -subj "/CN=localhost" -keyout server.key -out server.csr 2>/dev/null
  openssl x509 -req -sha256 -days 30 -in server.csr -CA ca.pem -CAkey ca.key \
    -set_serial "0x$(openssl rand -hex 8)" -extfile server.ext -out server.pem 2>/dev/null
  chmod 0644 ca.pem server.pem
  rm -f ca.cnf server.ext server.csr
)
# vsftpd's own default for upload EOF (lftp hangs on strict close_notify, as in compare.sh);
# PASV replies announce the proxy, so PASV clients (lftp) go through it as EPSV ones do.
server_started=1
VSFTPD_USER=${BENCH_VSFTPD_USER:-fsbench-lat} VSFTPD_PORT=$CTRL_PORT VSFTPD_PASV_MIN=$PASV_BASE \
  VSFTPD_PASV_MAX=$((PASV_BASE + 99)) VSFTPD_PASV_ADDRESS=$ADDR VSFTPD_ENV_PREFIX=BENCH_VSFTPD \
  VSFTPD_STRICT_SSL_EOF=NO bash tests/servers/vsftpd.sh start "$work/vsftpd" 2>"$work/logs/vsftpd-start.log" ||
  { cat "$work/logs/vsftpd-start.log" >&2; die "vsftpd did not start"; }
# shellcheck disable=SC1091
source "$work/vsftpd/env"
FTP_USER=$BENCH_VSFTPD_USER PWFILE=$BENCH_VSFTPD_PASSWORD_FILE CA=$BENCH_VSFTPD_CA ROOT=$BENCH_VSFTPD_ROOT
PASS=$(cat "$PWFILE")
server_label="vsftpd $(/usr/sbin/vsftpd -v 0>&1 | sed -n '1s/[^0-9]*\([0-9][0-9.]*\).*/\1/p')"
log "$server_label on 127.0.0.1:$CTRL_PORT, proxied on $ADDR, root $ROOT"

RCLONE_CONF=$work/rclone.conf
cat >"$RCLONE_CONF" <<EOF
[vsftpd]
type = ftp
host = $ADDR
port = $CTRL_PORT
user = $FTP_USER
pass = $(rclone obscure "$PASS")
explicit_tls = true
no_check_certificate = false
disable_tls13 = true
EOF
CURL_CONF=$work/curl.conf
printf 'user = "%s:%s"\n' "$FTP_USER" "$PASS" >"$CURL_CONF"
chmod 600 "$CURL_CONF"

# ------------------------------------------------------------------ proxy
# start_proxy RTT_MS [RATE] [TRACE_FILE]
start_proxy() {
  stop_proxy
  local args=(--listen "$ADDR" --control-port "$CTRL_PORT" --ports "$PASV_BASE-$((PASV_BASE + 99))" --rtt-ms "$1")
  [[ -n ${2:-} ]] && args+=(--rate "$2")
  [[ -n ${3:-} ]] && args+=(--trace "$3")
  "$proxy_bin" "${args[@]}" 2>>"$work/logs/proxy.log" &
  proxy_pid=$!
  local i
  for ((i = 0; i < 100; i++)); do
    if (exec 3<>"/dev/tcp/$ADDR/$CTRL_PORT") 2>/dev/null; then return 0; fi
    kill -0 "$proxy_pid" 2>/dev/null || die "the proxy exited: $(tail -n 3 "$work/logs/proxy.log")"
    sleep 0.1
  done
  die "the proxy does not answer on $ADDR:$CTRL_PORT"
}

# ------------------------------------------------------------------ data and commands
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
job_name() { local n="${2##*/}-${3#/}-c$1"; echo "${n//\//_}"; } # CONNS LOCAL REMOTE_DIR
# cmd_TOOL CONNS LOCAL REMOTE_DIR: sets CMD, which pushes LOCAL to REMOTE_DIR through the proxy.
cmd_ferrysync() {
  local name
  name=$(job_name "$@")
  [[ -f $work/jobs/$name.yaml ]] || cat >"$work/jobs/$name.yaml" <<YAML
local: $2
remote:
  host: $ADDR
  port: $CTRL_PORT
  path: $3
  user: $FTP_USER
  password_file: $PWFILE
  tls:
    ca_file: $CA
direction: push
transfers: $1
YAML
  CMD=("$fs_bin" sync "$name" --jobs "$work/jobs" --state "$work/state/$name.db")
}
cmd_lftp() {
  CMD=(lftp -u "$FTP_USER,$PASS" -e "set ftp:ssl-force true; set ftp:ssl-protect-data true; set ssl:ca-file $CA; set ssl:check-hostname yes; set cmd:fail-exit true; set net:max-retries 1; mirror -R --parallel=$1 $2 $3; quit" "ftp://$ADDR:$CTRL_PORT")
}
cmd_rclone() {
  CMD=(env "SSL_CERT_FILE=$CA" rclone --config "$RCLONE_CONF" copy "$2" "vsftpd:$3" --transfers "$1")
}
cmd_curl() { # one file: LOCAL/big.bin -> REMOTE_DIR/big.bin, one STOR and nothing else
  CMD=(curl -sS -K "$CURL_CONF" --ssl-reqd --cacert "$CA" --ftp-create-dirs -T "$2/big.bin" "ftp://$ADDR:$CTRL_PORT$3/big.bin")
}

# ------------------------------------------------------------------ measuring
results=$work/results.tsv # workload, rtt, conns, tool, median, runs, status
: >"$results"
NRUN=0
once() { # TOOL CONNS LOCAL REMOTE_DIR: one timed run; sets SECS, STATUS
  local tool=$1 rc=0 tag tf=$work/logs/time.out
  NRUN=$((NRUN + 1))
  tag=$(printf '%03d-%s-c%s-%s' "$NRUN" "$tool" "$2" "${4//\//_}")
  "cmd_$tool" "$2" "$3" "$4"
  sync
  /usr/bin/time -f "%e" -o "$tf" timeout -k 5 "$TMO" "${CMD[@]}" >"$work/logs/$tag.out" 2>&1 </dev/null || rc=$?
  SECS=$(tail -n 1 "$tf")
  if ((rc == 124)); then
    STATUS=timeout
  elif ((rc != 0)); then
    STATUS="exit $rc"
  elif ! diff -r "$3" "$ROOT$4" >"$work/logs/$tag.diff" 2>&1; then
    STATUS=INCOMPLETE
  else
    STATUS=complete
  fi
  if [[ $STATUS != complete ]]; then
    log "$tool $4: $STATUS; last lines of $work/logs/$tag.out:"
    tail -n 5 "$work/logs/$tag.out" >&2 || true
    head -n 5 "$work/logs/$tag.diff" >&2 2>/dev/null || true
  fi
}
median() { sort -g | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
# cell WORKLOAD RTT CONNS TOOL LOCAL REMOTE_DIR FRESH: REPEAT runs, the median recorded.
# FRESH=1: each run into a fresh remote directory (and ferrysync ledger); the last one is kept
# in LAST_DEST for a re-run. FRESH=0: every run into REMOTE_DIR as it is.
# LABEL (optional): the connections column of the table row (default CONNS).
cell() {
  local wl=$1 rtt=$2 conns=$3 tool=$4 local_=$5 rdir=$6 fresh=$7 label=${8:-$3} i r secs=() status=complete
  log "$wl, $rtt ms, $conns connections: $tool (load $(cut -d' ' -f1 /proc/loadavg))"
  for ((i = 1; i <= REPEAT; i++)); do
    r=$rdir
    if [[ $fresh == 1 ]]; then
      r="$rdir-r$i"
      rm -rf "${ROOT:?}$r" "$work/jobs/$(job_name "$conns" "$local_" "$r").yaml"
      rm -f "$work/state/$(job_name "$conns" "$local_" "$r").db"*
    fi
    once "$tool" "$conns" "$local_" "$r"
    secs+=("$SECS")
    if [[ $fresh == 1 && $i -lt $REPEAT ]]; then rm -rf "${ROOT:?}$r"; fi
    if [[ $STATUS != complete ]]; then status=$STATUS; break; fi
  done
  LAST_DEST=$r
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$wl" "$rtt" "$label" "$tool" \
    "$(printf '%s\n' "${secs[@]}" | median)" "${secs[*]}" "$status" >>"$results"
}

# ------------------------------------------------------------------ the runs
started_at=$(date -u +%Y-%m-%dT%H:%MZ)
load_start=$(cut -d' ' -f1-3 /proc/loadavg)

if wants small || wants rerun; then
  gen_small "$work/data/small" "$FILES"
  small_label="$FILES x 4 KiB first push"
  for rtt in $RTTS; do
    if [[ -n ${BENCH_TRACE_SMALL:-} ]]; then
      start_proxy "$rtt" "" "$work/logs/small-$rtt.tsv"
    else
      start_proxy "$rtt"
    fi
    declare -A dest=()
    for conns in $CONNS; do
      for tool in $TOOLS; do
        [[ $conns == auto && $tool != ferrysync ]] && continue
        cell "$small_label" "$rtt" "$conns" "$tool" "$work/data/small" "/s$rtt-c$conns-$tool" 1
        dest[$tool-$conns]=$LAST_DEST
      done
    done
    if wants rerun; then
      rerun_label=$(for tool in $TOOLS; do first_conns_of "$tool"; done | awk '!seen[$0]++' | paste -sd/ -)
      for tool in $TOOLS; do
        c=$(first_conns_of "$tool")
        [[ -n $c && -n ${dest[$tool-$c]:-} ]] || continue
        cell "$FILES x 4 KiB re-run, no change" "$rtt" "$c" "$tool" "$work/data/small" "${dest[$tool-$c]}" 0 "$rerun_label"
      done
    fi
    rm -rf "${ROOT:?}"/s"$rtt"-*
    unset dest
  done
  stop_proxy
fi

if wants gib; then
  mkdir -p "$work/data/gib"
  dd if=/dev/urandom of="$work/data/gib/big.bin" bs=1M count="$GIB_MIB" status=none
  start_proxy "$GIB_RTT" "$GIB_RATE"
  for tool in $TOOLS curl; do
    cell "$GIB_MIB MiB file, $GIB_RATE" "$GIB_RTT" "$gib_conns" "$tool" "$work/data/gib" "/gib-$tool" 1
    rm -rf "${ROOT:?}/gib-$tool"-r*
  done
  stop_proxy
  rm -rf "$work/data/gib"
fi

trace_md=""
if wants trace; then
  trace_md=$(python3 tests/bench/trace_summary.py --header)$'\n'
  gen_small "$work/data/trace" "$TRACE_FILES"
  for tool in $TOOLS; do
    start_proxy "$TRACE_RTT" "" "$work/logs/trace-$tool.tsv"
    save=$REPEAT REPEAT=1
    cell "trace: $TRACE_FILES x 4 KiB, 1 connection" "$TRACE_RTT" 1 "$tool" "$work/data/trace" "/trace-$tool" 1
    REPEAT=$save
    stop_proxy
    trace_md+=$(python3 tests/bench/trace_summary.py --tool "$tool" --files "$TRACE_FILES" --rtt-ms "$TRACE_RTT" "$work/logs/trace-$tool.tsv")$'\n'
    rm -rf "${ROOT:?}/trace-$tool"-r*
  done
fi

# ------------------------------------------------------------------ the table
if [[ -n ${BENCH_FERRYSYNC_BIN:-} ]]; then
  fs_version="ferrysync $fs_bin (built $(date -u -r "$fs_bin" +%Y-%m-%dT%H:%MZ))"
else
  fs_version="ferrysync $(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo ?)"
fi
versions="$fs_version, proxy $proxy_bin, lftp $(lftp --version | sed -n '1s/[^0-9]*\([0-9][0-9.]*\).*/\1/p'), rclone $(rclone version | sed -n '1s/.*\(v[0-9][0-9.]*\).*/\1/p'), $(curl --version | head -n 1 | cut -d' ' -f1-2); $server_label"
machine="$(nproc) cores; load average $load_start at the start, $(cut -d' ' -f1-3 /proc/loadavg) at the end"
command_line="bash tests/bench/latency.sh"
for v in BENCH_REPEAT BENCH_RTTS BENCH_CONNS BENCH_TOOLS BENCH_WORKLOADS BENCH_FILES BENCH_GIB_MIB BENCH_GIB_RATE; do
  [[ -n ${!v:-} ]] && command_line="$v=\"${!v}\" $command_line"
done
table=$(python3 - "$results" "$TOOLS" <<'PY'
import sys
rows, order = {}, []
tools = sys.argv[2].split()
for line in open(sys.argv[1]):
    wl, rtt, conns, tool, med, runs, status = line.rstrip("\n").split("\t")
    key = (wl, rtt, conns)
    if key not in rows:
        rows[key] = {}
        order.append(key)
    rows[key][tool] = (float(med), runs, status)
cols = tools + (["curl"] if any("curl" in r for r in rows.values()) else [])
head = ["workload", "RTT ms", "connections"] + [c if c != "curl" else "curl (bare)" for c in cols] + ["ferrysync / best peer", "runs (s)"]
print("| " + " | ".join(head) + " |")
print("|---|---:|---:|" + "---:|" * len(cols) + "---:|---|")
for key in order:
    r = rows[key]
    def cell(t):
        if t not in r:
            return ""
        med, _, st = r[t]
        return f"{med:.2f}" if st == "complete" else st
    peers = [r[t][0] for t in ("lftp", "rclone") if t in r and r[t][2] == "complete"]
    ratio = ""
    if "ferrysync" in r and r["ferrysync"][2] == "complete" and peers:
        ratio = f"{r['ferrysync'][0] / min(peers):.2f}"
    runs = "; ".join(f"{t} {r[t][1]}" for t in cols if t in r)
    conns = key[2] if "gib" not in key[0] and "MiB file" not in key[0] else f"{key[2]} (1 file)"
    print("| " + " | ".join([key[0], key[1], conns] + [cell(t) for t in cols] + [ratio, runs]) + " |")
PY
)
# Issue 16's targets, each a ratio of two cells of this run.
targets_md=$(python3 - "$results" "$GIB_MIB" "$GIB_RATE" <<'PY'
import re, sys
cells = {}
for line in open(sys.argv[1]):
    wl, rtt, conns, tool, med, runs, status = line.rstrip("\n").split("\t")
    if status == "complete":
        cells[(wl.split(",")[0], rtt, conns, tool)] = float(med)
def get(kind, rtt, conns, tool):
    return next((v for (w, r, c, t), v in cells.items() if kind in w and r == rtt and c == conns and t == tool), None)
def peers(kind, rtt, conns):
    found = [(get(kind, rtt, conns, t), t) for t in ("lftp", "rclone")]
    found = [f for f in found if f[0] is not None]
    return min(found) if found else None
out = []
def verdict(ok):
    return "met" if ok else "NOT met"
rtts = sorted({r for (_, r, _, _) in cells if r != "0"}, key=float)
for rtt in rtts:
    best = peers("first push", rtt, "4")
    fs = get("first push", rtt, "auto", "ferrysync")
    if best and fs:
        x = best[0] / fs
        out.append(f"- first push at {rtt} ms, ferrysync's defaults against the best peer with 4 connections ({best[1]}): {fs:.2f} s against {best[0]:.2f} s, {x:.2f}x faster (target >= 3x): {verdict(x >= 3)}")
    best = peers("first push", rtt, "16")
    fs = get("first push", rtt, "16", "ferrysync")
    if best and fs:
        x = best[0] / fs
        out.append(f"- first push at {rtt} ms, 16 connections each ({best[1]}): {fs:.2f} s against {best[0]:.2f} s, {x:.2f}x faster (target >= 1.5x): {verdict(x >= 1.5)}")
    rerun = [(v, c, t) for (w, r, c, t), v in cells.items() if "re-run" in w and r == rtt]
    fs = next((v for v, c, t in rerun if t == "ferrysync"), None)
    best = min(((v, t) for v, c, t in rerun if t != "ferrysync"), default=None)
    if best and fs:
        x = fs / best[0]
        out.append(f"- no-change re-run at {rtt} ms ({best[1]}): {fs:.2f} s against {best[0]:.2f} s, {x:.2f} of its time (target <= 0.5): {verdict(x <= 0.5)}")
gib = {t: v for (w, r, c, t), v in cells.items() if "MiB file" in w}
m = re.fullmatch(r"(\d+)mbit", sys.argv[3])
if "ferrysync" in gib and m:
    floor = int(sys.argv[2]) * 1048576 * 8 / (int(m.group(1)) * 1e6)
    fs = gib["ferrysync"]
    out.append(f"- one {sys.argv[2]} MiB file at {sys.argv[3]}: ferrysync {fs:.2f} s, the link's floor {floor:.1f} s, {floor / fs * 100:.1f}% of capacity (target >= 90%): {verdict(floor / fs >= 0.9)}"
               + (f"; the bare client (curl) {gib['curl']:.2f} s" if "curl" in gib else ""))
    best = min(((v, t) for t, v in gib.items() if t in ("lftp", "rclone")), default=None)
    if best:
        out.append(f"- the same file against the best peer ({best[1]}): {fs:.2f} s against {best[0]:.2f} s, {best[0] / fs:.3f}x (target >= 1, at the link's cap any difference under 1% is noise): {verdict(fs <= best[0] * 1.01)}")
print("\n".join(out))
PY
)
echo
echo "$table"
[[ -n $targets_md ]] && { echo; echo "$targets_md"; }
[[ -n $trace_md ]] && { echo; echo "$trace_md"; }
{
  echo "Made by \`$command_line\` on $started_at: explicit FTPS through tests/bench/latency_proxy.rs on $ADDR, median of $REPEAT run(s) per cell (seconds, wall time of the whole command); $versions; $machine."
  echo
  echo "$table"
  echo
  cat <<'NOTE'
ferrysync / best peer: ferrysync's seconds over the faster of lftp and rclone (below 1 is
faster). Every completed run was checked with `diff -r` against vsftpd's root on disk. Each
first push goes to a fresh remote directory (ferrysync: a fresh ledger); the re-run goes into the
same tool's destination of its first push. ferrysync: `transfers: N`, `tls.ca_file`. lftp:
`mirror -R --parallel=N` (PASV; vsftpd announces the proxy's address). rclone: `copy
--transfers N`, `disable_tls13 = true` (needed against vsftpd). curl: one `-T` upload with
`--ssl-reqd`, the link's capacity. The proxy delays each direction by RTT/2 (a FIFO that does
not cap throughput) and emulates each connection's TCP handshake; a client that waits for its
data connection's connect() before sending on the control connection saves up to 1 RTT per
file here that it would pay on a real link, so all tools' small-file times are slightly
optimistic.
NOTE
  if [[ -n $targets_md ]]; then
    echo
    echo "Issue 16's targets, from this run:"
    echo
    echo "$targets_md"
  fi
  if [[ -n $trace_md ]]; then
    echo
    echo "Round trips per file, from the proxy's trace at $TRACE_RTT ms RTT with one connection ($TRACE_FILES x 4 KiB, tests/bench/trace_summary.py):"
    echo
    echo "$trace_md"
  fi
} >"$OUT"
log "markdown written to $OUT"
