#!/usr/bin/env bash
# Benchmark (not part of CI): the first push of a 1,000-file tree to vsftpd on 127.0.0.1, by
# ferrysync and by `lftp mirror -R`, in the same run, each checked complete with diff -r.
#   bash tests/bench/first_push.sh [FILES]
set -euo pipefail
cd "$(dirname "$0")/../.."
files=${1:-1000}
work=$(mktemp -d /tmp/ferrysync-bench.XXXXXX)
chmod 711 "$work"
trap 'bash tests/servers/vsftpd.sh stop "$work/vsftpd" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT

cargo build --release --quiet
mkdir -p "$work/vsftpd"
VSFTPD_PORT=${VSFTPD_PORT:-2995} bash tests/servers/vsftpd.sh start "$work/vsftpd" >/dev/null
# shellcheck disable=SC1091
source "$work/vsftpd/env"
pass=$(cat "$FERRYSYNC_VSFTPD_PASSWORD_FILE")

# The tree of the integration tests: nested directories (8 levels), empty files and
# directories, spaces and UTF-8 in names, 1 B to 4 KiB of binary content per file.
python3 - "$work/tree" "$files" <<'PY'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    d = ["", f"dir {i % 7}", f"dir {i % 7}/sub-{i % 3}", f"données/ünïcode {i % 4}", f"a/b/c/d/e/f/g/h{i % 2}"][i % 5]
    name = f"file {i}.bin" if i % 11 == 0 else f"f{i}.dat"
    data = b"" if i % 13 == 0 else bytes(((k * 31 + i) % 256) for k in range(i * 37 % 4096 + 1))
    os.makedirs(os.path.join(root, d), exist_ok=True)
    open(os.path.join(root, d, name), "wb").write(data)
os.makedirs(os.path.join(root, "empty dir/nested empty"), exist_ok=True)
PY
chown -R "$FERRYSYNC_VSFTPD_USER" "$FERRYSYNC_VSFTPD_ROOT"

mkdir -p "$work/jobs"
job() { # NAME REMOTE_DIR TRANSFERS
  cat > "$work/jobs/$1.yaml" <<YAML
local: $work/tree
remote:
  host: 127.0.0.1
  port: $FERRYSYNC_VSFTPD_PORT
  path: $2
  user: $FERRYSYNC_VSFTPD_USER
  password_file: $FERRYSYNC_VSFTPD_PASSWORD_FILE
  tls:
    ca_file: $FERRYSYNC_VSFTPD_CA
transfers: $3
YAML
}
seconds() { local s e; s=$(date +%s.%N); "$@" >/dev/null 2>&1; e=$(date +%s.%N); echo "$e - $s" | bc; }
check() { diff -r "$work/tree" "$FERRYSYNC_VSFTPD_ROOT/$1" >/dev/null && echo complete || echo INCOMPLETE; }
lftp_mirror() { # REMOTE_DIR PARALLEL
  lftp -u "$FERRYSYNC_VSFTPD_USER,$pass" -e "set ftp:ssl-force true; set ftp:ssl-protect-data true; set ssl:ca-file $FERRYSYNC_VSFTPD_CA; set ssl:check-hostname yes; set cmd:fail-exit true; set net:max-retries 1; mirror -R --parallel=$2 $work/tree $1; quit" "ftp://localhost:$FERRYSYNC_VSFTPD_PORT"
}

printf '%-34s %9s  %s\n' "tool ($files files, first push)" seconds result
for n in 1 4; do
  job "fs$n" "/fs$n" "$n"
  t=$(seconds ./target/release/ferrysync sync "fs$n" --jobs "$work/jobs" --state "$work/state.db")
  printf '%-34s %9.2f  %s\n' "ferrysync sync (transfers: $n)" "$t" "$(check "fs$n")"
  t=$(seconds lftp_mirror "/lftp$n" "$n")
  printf '%-34s %9.2f  %s\n' "lftp mirror -R --parallel=$n" "$t" "$(check "lftp$n")"
done
t=$(seconds ./target/release/ferrysync sync fs4 --jobs "$work/jobs" --state "$work/state.db")
printf '%-34s %9.2f  %s\n' "ferrysync re-run, nothing changed" "$t" "$(check fs4)"
