#!/usr/bin/env bash
# Benchmark (not part of CI; issue 6): how soon a watched change reaches the server, and the peak
# memory of a very large job.
#
#   sudo bash tests/bench/watch_one_file.sh
#
# 1. Watch latency. A tree of BENCH_FILES (default 100,000) small files in 1,000 directories is
#    pushed once to vsftpd (explicit FTPS, 127.0.0.1) with `ferrysync sync`; then `ferrysync run`
#    watches it (`watch: true`, `debounce: 200ms`, mirror). BENCH_TRIALS times (default 9) one
#    file is rewritten, and the time from the end of the debounce (the moment the writer closed
#    the file + 200 ms) until the new content is on vsftpd's disk under its final name is
#    measured by polling that file every 2 ms. Printed: every trial, the median, and the
#    agent's own "scanned"/"planned" lines for the last run.
# 2. Memory. BENCH_RSS_FILES (default 1,000,000) empty files in 1,000 directories are written
#    both locally and straight onto vsftpd's disk, and the ledger rows a push of them would have
#    left (size 0, local mtime, BLAKE3 of nothing, remote size 0, remote mtime = the server
#    file's mtime) are inserted with sqlite3: pushing a million files over FTPS would take about
#    40 minutes here. Then `ferrysync sync` of that job runs under `/usr/bin/time` (wall seconds,
#    peak RSS): every file is listed, scanned and planned; nothing needs transferring.
#    BENCH_RSS_FILES=0 skips it, as BENCH_FILES=0 skips the first part.
#
# Environment: BENCH_FILES, BENCH_TRIALS, BENCH_RSS_FILES, BENCH_SEED=1 (seed the 100,000-file
#   tree like the 1,000,000 one, with empty files, instead of the first push: quicker),
#   BENCH_BIN (default target/release/ferrysync, built if missing), BENCH_RSS_BINS (several
#   binaries to measure on the same million-file tree), BENCH_KEEP=1 (keep the work
#   directory), VSFTPD_USER (default fsperf-a), VSFTPD_PASV_MIN/MAX (default 44000-44099).
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$(pwd)

FILES=${BENCH_FILES:-100000}
TRIALS=${BENCH_TRIALS:-9}
RSS_FILES=${BENCH_RSS_FILES:-1000000}
DEBOUNCE_MS=200
export VSFTPD_USER=${VSFTPD_USER:-fsperf-a}
export VSFTPD_PASV_MIN=${VSFTPD_PASV_MIN:-44000} VSFTPD_PASV_MAX=${VSFTPD_PASV_MAX:-44099}
export VSFTPD_ENV_PREFIX=BENCH_VSFTPD

log() { printf 'watch_one_file.sh: %s\n' "$*" >&2; }
die() { printf 'watch_one_file.sh: error: %s\n' "$*" >&2; exit 1; }
[[ $(id -u) == 0 ]] || die "must run as root (vsftpd.sh creates a user and starts vsftpd)"
[[ -x /usr/bin/time ]] || die "/usr/bin/time is missing (apt-get install time)"
command -v sqlite3 >/dev/null || die "sqlite3 is missing (apt-get install sqlite3)"

bin=${BENCH_BIN:-$repo/target/release/ferrysync}
if [[ ! -x $bin ]]; then
  log "building ferrysync (release)"
  cargo build --release --quiet
fi

work=$(mktemp -d /tmp/fsperf-bench.XXXXXX)
chmod 711 "$work"
agent_pid=""
cleanup() {
  [[ -n $agent_pid ]] && kill "$agent_pid" 2>/dev/null && wait "$agent_pid" 2>/dev/null
  bash "$repo/tests/servers/vsftpd.sh" stop "$work/vsftpd" >/dev/null 2>&1 || true
  if [[ ${BENCH_KEEP:-0} == 1 ]]; then log "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$work/vsftpd" "$work/jobs" "$work/logs"
bash tests/servers/vsftpd.sh start "$work/vsftpd" 2>"$work/logs/vsftpd-start.log" ||
  { cat "$work/logs/vsftpd-start.log" >&2; die "vsftpd did not start"; }
# shellcheck disable=SC1091
source "$work/vsftpd/env"
ROOT=$BENCH_VSFTPD_ROOT
state=$work/state/ferrysync.db
log "vsftpd on 127.0.0.1:$BENCH_VSFTPD_PORT as $BENCH_VSFTPD_USER, root $ROOT; ferrysync $(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo '?')"

job() { # NAME LOCAL REMOTE_DIR EXTRA_YAML
  cat >"$work/jobs/$1.yaml" <<YAML
local: $2
remote:
  host: 127.0.0.1
  port: $BENCH_VSFTPD_PORT
  path: $3
  user: $BENCH_VSFTPD_USER
  password_file: $BENCH_VSFTPD_PASSWORD_FILE
  tls:
    ca_file: $BENCH_VSFTPD_CA
direction: push
mode: mirror
transfers: 4
$4
YAML
}
fs() { "$bin" "$@" --jobs "$work/jobs" --state "$state"; }

# An empty job creates the ledger (schema and all) before anything is seeded into it.
mkdir -p "$work/empty"
job init "$work/empty" /init ""
fs sync init >/dev/null

# seed NAME LOCAL REMOTE_DIR FILES: empty files in 1,000 directories on both sides, and the
# ledger rows a push would have left. Remote mtimes are whole seconds, as LIST shows them.
seed() {
  python3 - "$1" "$2" "$ROOT/$3" "$4" "$state" <<'PY'
import os, sqlite3, sys, time
job, local, remote, n, db = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
empty = "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"  # BLAKE3("")
per_dir = max(1, n // 1000)
rows = []
now = int(time.time())
for i in range(n):
    d, f = f"d{i // per_dir:03d}", f"f{i % per_dir:04d}.dat"
    for root in (local, remote):
        os.makedirs(os.path.join(root, d), exist_ok=True)
        open(os.path.join(root, d, f), "wb").close()
    lm = os.stat(os.path.join(local, d, f)).st_mtime_ns
    rm = os.stat(os.path.join(remote, d, f)).st_mtime_ns // 10**9 * 10**9
    rows.append((job, f"{d}/{f}", 0, lm, empty, 0, rm, now))
c = sqlite3.connect(db)
c.execute("DELETE FROM entries WHERE job = ?", (job,))
c.executemany("INSERT INTO entries (job, path, size, mtime, blake3, remote_size, remote_mtime, synced_at) VALUES (?,?,?,?,?,?,?,?)", rows)
c.commit()
PY
  chown -R "$BENCH_VSFTPD_USER:" "$ROOT/$3"
}

# ------------------------------------------------------------------ 1. watch latency
tree=$work/tree
remote_dir=watched
if ((FILES > 0)); then
if [[ ${BENCH_SEED:-0} == 1 ]]; then
  log "seeding $FILES empty files locally, on the server and in the ledger"
  seed watched "$tree" "$remote_dir" "$FILES"
else
  log "writing $FILES small files in 1,000 directories"
  python3 - "$tree" "$FILES" <<'PY'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
per_dir = max(1, n // 1000)
for i in range(n):
    d = os.path.join(root, f"d{i // per_dir:03d}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i % per_dir:04d}.dat"), "wb") as f:
        f.write(b"%d\n" % i * (1 + i % 50))
PY
fi
job watched "$tree" "/$remote_dir" "watch: true
debounce: ${DEBOUNCE_MS}ms"
log "first sync (ferrysync sync)"
/usr/bin/time -f '%e s %M KB' -o "$work/logs/first.time" "$bin" sync watched --jobs "$work/jobs" --state "$state" >"$work/logs/first.out" 2>"$work/logs/first.err" ||
  { cat "$work/logs/first.out" "$work/logs/first.err" >&2; die "the first sync failed"; }
echo "first sync: $(head -1 "$work/logs/first.out") [$(cat "$work/logs/first.time")]"
/usr/bin/time -f '%e s %M KB' -o "$work/logs/rerun.time" "$bin" sync watched --jobs "$work/jobs" --state "$state" >"$work/logs/rerun.out" 2>&1
echo "no-change re-run (ferrysync sync): $(head -1 "$work/logs/rerun.out") [$(cat "$work/logs/rerun.time")]"

rm -f "$work/jobs/init.yaml"
FERRYSYNC_LOG=ferrysync=info NO_COLOR=1 "$bin" run --jobs "$work/jobs" --state "$state" 2>"$work/logs/agent.log" &
agent_pid=$!
python3 - "$tree" "$ROOT/$remote_dir" "$FILES" "$TRIALS" "$DEBOUNCE_MS" "$bin" "$work/jobs" "$state" <<'PY'
import json, os, statistics, subprocess, sys, time
tree, remote, n, trials, debounce_ms, binary, jobs, state = sys.argv[1:9]
n, trials, debounce = int(n), int(trials), int(debounce_ms) / 1000
per_dir = max(1, n // 1000)

def runs():
    out = subprocess.run([binary, "history", "watched", "--limit", "1000", "--json", "--state", state],
                         capture_output=True, text=True)
    return json.loads(out.stdout) if out.returncode == 0 else []

def wait_idle(done, deadline):
    """Until `done(runs)` holds and no run is running."""
    while time.time() < deadline:
        r = runs()
        if done(r) and all(x["outcome"] != "running" for x in r):
            return r
        time.sleep(0.1)
    sys.exit("watch_one_file.sh: the agent did not finish its run in time")

# The start-up run (a full run) first.
wait_idle(lambda r: any(x["trigger"] == "startup" for x in r), time.time() + 600)
time.sleep(1)
lat = []
for t in range(trials):
    i = (t * 7919 + 13) % n
    rel = f"d{i // per_dir:03d}/f{i % per_dir:04d}.dat"
    content = f"trial {t} at {time.time()}\n".encode()
    count = len(runs())
    with open(os.path.join(tree, rel), "wb") as f:
        f.write(content)
    closed = time.time()
    target = os.path.join(remote, rel)
    deadline = closed + 120
    while True:
        try:
            with open(target, "rb") as f:
                if f.read() == content:
                    break
        except OSError:
            pass
        if time.time() > deadline:
            sys.exit(f"watch_one_file.sh: {rel} not on the server within 120 s")
        time.sleep(0.002)
    took = time.time() - closed - debounce
    lat.append(took)
    print(f"trial {t + 1}: {rel}: on the server {took:.3f} s after the debounce", flush=True)
    r = wait_idle(lambda r: len(r) > count, time.time() + 120)
    if r[0]["trigger"] != "watch" or r[0]["files_up"] != 1 or r[0]["outcome"] != "ok":
        print(f"  unexpected run: {r[0]}", flush=True)
    time.sleep(0.5)
lat.sort()
print(f"watch latency after a {debounce_ms} ms debounce, {n} files, {trials} trials: "
      f"median {statistics.median(lat):.3f} s, min {lat[0]:.3f} s, max {lat[-1]:.3f} s", flush=True)
PY
kill "$agent_pid"
wait "$agent_pid" || true
agent_pid=""
grep -E 'scanned|incremental|planned' "$work/logs/agent.log" | tail -4 | sed 's/^/agent: /' || true
fi

# ------------------------------------------------------------------ 2. memory
if ((RSS_FILES > 0)); then
  rm -rf "$tree" "${ROOT:?}/$remote_dir"
  log "seeding $RSS_FILES empty files locally, on the server and in the ledger"
  seed million "$work/million" million "$RSS_FILES"
  job million "$work/million" /million ""
  # BENCH_RSS_BINS="A B": compare several builds on the same seeded tree.
  for b in ${BENCH_RSS_BINS:-$bin}; do
    for pass in 1 2; do
      /usr/bin/time -f '%e s %M KB' -o "$work/logs/million.time" "$b" sync million --jobs "$work/jobs" --state "$state" >"$work/logs/million.out" 2>"$work/logs/million.err" ||
        { cat "$work/logs/million.out" "$work/logs/million.err" >&2; die "the sync of $RSS_FILES files failed"; }
      echo "$b: sync of $RSS_FILES files, nothing to transfer (pass $pass): $(head -1 "$work/logs/million.out") [$(cat "$work/logs/million.time") peak RSS]"
    done
  done
fi
