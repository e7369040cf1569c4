#!/usr/bin/env bash
# Start/stop a throw-away Pure-FTPd with FTPS (AUTH TLS required, private data connections)
# on 127.0.0.1 for ferrysync's integration tests. Must run as root (Debian 12 / Pure-FTPd
# 1.0.50).
#
#   bash tests/servers/pureftpd.sh start DIR   # fetch if needed, configure, start
#   bash tests/servers/pureftpd.sh stop  DIR   # stop the pure-ftpd started for DIR
#
# After `start`, `source DIR/env` exports FERRYSYNC_PUREFTPD_{HOST,PORT,USER,
# PASSWORD_FILE,CA,ROOT,LOG}. See tests/servers/README.md.
#
# Pure-FTPd is never installed as a package: pure-ftpd conflicts with vsftpd (both provide
# ftp-server). The script `apt-get download`s pure-ftpd, unpacks it with `dpkg -x` into a cache
# folder that later runs reuse, and apt-get installs only the shared libraries it lacks. The
# server runs from a configuration file DIR/pure-ftpd.conf (Pure-FTPd parses it itself), in the
# foreground, with one virtual user in a PureDB file (DIR/pureftpd.pdb) mapped to a local
# system account that owns the files.
#
# Environment overrides:
#   PUREFTPD_PORT       control port (default: 2141, or the next free port up to 2199)
#   PUREFTPD_PASV_MIN   first passive data port (default 40700)
#   PUREFTPD_PASV_MAX   last passive data port (default 40799)
#   PUREFTPD_USER       the FTP user and the Unix account that owns its files
#                       (default ferrysync-pureftpd)
#   PUREFTPD_TLS        3 (default: TLS required on the control and the data connections) or
#                       2 (TLS required on the control connection only)
#   PUREFTPD_ENV_PREFIX prefix of the variables in DIR/env (default FERRYSYNC_PUREFTPD)
#   PUREFTPD_CACHE_DIR  where the unpacked package is kept
#                       (default /var/cache/ferrysync-tests/pure-ftpd)
set -euo pipefail

PROG=${0##*/}
FTP_USER=${PUREFTPD_USER:-ferrysync-pureftpd}
PASV_MIN=${PUREFTPD_PASV_MIN:-40700}
PASV_MAX=${PUREFTPD_PASV_MAX:-40799}
TLS_LEVEL=${PUREFTPD_TLS:-3}
CACHE_DIR=${PUREFTPD_CACHE_DIR:-/var/cache/ferrysync-tests/pure-ftpd}
PACKAGES=(pure-ftpd) # pure-ftpd-common only holds Debian's wrapper scripts and docs
START_TIMEOUT=10     # seconds to wait for the control port
# shellcheck disable=SC2034 # STOP_TIMEOUT, APT_TIMEOUT and DAEMON are read by common.sh
STOP_TIMEOUT=5       # seconds to wait for processes to exit after SIGTERM
# shellcheck disable=SC2034
APT_TIMEOUT=300      # seconds for one apt-get download/install
export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:${PATH:-}"

log() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }
# shellcheck disable=SC2034
DAEMON=pure-ftpd
# shellcheck source=tests/servers/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat >&2 <<EOF
usage: bash $0 start DIR   (fetch, configure and start pure-ftpd; writes DIR/env)
       bash $0 stop DIR    (stop the pure-ftpd started for DIR; never fails)
EOF
  exit 2
}

# ---------------------------------------------------------------- helpers

# Makes $CACHE_DIR/root hold an unpacked pure-ftpd whose binary runs. Sets ROOT.
fetch_pureftpd() {
  fetch_unpacked "$CACHE_DIR" "${PACKAGES[*]}" usr/sbin/pure-ftpd usr/bin/pure-pw
  "$ROOT/usr/sbin/pure-ftpd" --help 2>&1 | grep -q 'pure-ftpd v' ||
    die "$ROOT/usr/sbin/pure-ftpd does not run (try: rm -rf $CACHE_DIR)"
}

# Ensures the local account that owns the uploaded files exists (no password, no shell: it
# never logs in through PAM or /etc/shadow), that $2 is its home, and writes the PureDB user
# database DIR/pureftpd.pdb (from DIR/pureftpd.passwd) with one virtual user of the same name,
# mapped to that account and chrooted to $2 (the `/./` suffix), whose random password is kept
# (without newline) in DIR/password.
make_user() {
  local dir=$1 home=$2 pw hash uid gid
  [[ $FTP_USER != root ]] || die "refusing to use root as the FTP test user"
  if ! getent passwd "$FTP_USER" >/dev/null; then
    log "creating user $FTP_USER"
    useradd --system --user-group --no-create-home --home-dir "$home" --shell /usr/sbin/nologin \
      --comment "ferrysync Pure-FTPd test user" "$FTP_USER" || die "useradd $FTP_USER failed"
  fi
  uid=$(id -u "$FTP_USER") gid=$(id -g "$FTP_USER")
  ((uid != 0)) || die "user $FTP_USER has uid 0"
  mkdir -p "$home"
  chown "$uid:$gid" "$home"
  chmod 0755 "$home"
  if [[ ! -s $dir/password ]]; then
    (umask 077 && openssl rand -hex 16 | tr -d '\n' >"$dir/password")
  fi
  chmod 0600 "$dir/password"
  pw=$(cat "$dir/password")
  # SHA-512 crypt(3): pure-pw's default (argon2id, t=511) costs about a second per login, and
  # the tests log in hundreds of times. A throw-away password needs no slow hash.
  hash=$(printf '%s' "$pw" | openssl passwd -6 -stdin) || die "openssl passwd failed"
  (
    umask 077
    # account:hash:uid:gid:gecos:home (/./ = chroot there), then 12 empty limit fields.
    printf '%s:%s:%s:%s:ferrysync Pure-FTPd test user:%s/./::::::::::::\n' \
      "$FTP_USER" "$hash" "$uid" "$gid" "$home" >"$dir/pureftpd.passwd"
    rm -f "$dir/pureftpd.pdb"
    "$ROOT/usr/bin/pure-pw" mkdb "$dir/pureftpd.pdb" -f "$dir/pureftpd.passwd" >&2
  ) || die "pure-pw mkdb $dir/pureftpd.pdb failed"
  # The chroot/home must be reachable and writable by the user itself.
  runuser -u "$FTP_USER" -- test -w "$home" -a -x "$home" ||
    die "user $FTP_USER cannot write to $home; every parent directory of DIR must be world-traversable (o+x)"
}

write_conf() {
  local dir=$1 port=$2 conf=$1/pure-ftpd.conf
  # Pure-FTPd wants the key and the certificate in one PEM file.
  (umask 077 && cat "$dir/server.key" "$dir/server.pem" >"$dir/pure-ftpd.pem")
  cat >"$conf" <<EOF
# Generated by tests/servers/pureftpd.sh -- throw-away FTPS server for tests.
# Pure-FTPd 1.0.50 reads this file itself (pure-ftpd FILE); keywords as in its pure-ftpd.conf.
Bind 127.0.0.1,$port
IPV4Only yes
DontResolve yes
PIDFile $dir/pure-ftpd.pid
PassivePortRange $PASV_MIN $PASV_MAX
ForcePassiveIP 127.0.0.1
# The tests run several jobs with several connections each, all from 127.0.0.1.
MaxClientsNumber 200
MaxClientsPerIP 200

# Users come from DIR/pureftpd.pdb only (no PAM, no /etc/shadow); no anonymous login.
PureDB $dir/pureftpd.pdb
UnixAuthentication no
PAMAuthentication no
NoAnonymous yes
MinUID 1
ChrootEveryone yes
Umask 133:022
# List dot files without -a: ferrysync uploads to .NAME.ferrysync-part and must see leftovers.
DisplayDotFiles yes

# PUREFTPD_TLS: 3 = TLS required for the control connection and PROT P for data
# connections, 2 = TLS required for the control connection only.
TLS $TLS_LEVEL
CertFile $dir/pure-ftpd.pem

# Transfers, one a line (W3C format). Pure-FTPd logs everything else to syslog only.
AltLog w3c:$dir/transfer.log
EOF
  chmod 0600 "$conf"
}

# ---------------------------------------------------------------- commands

cmd_start() {
  local dir port home pid
  check_start "$1" PUREFTPD
  dir=$START_DIR
  [[ $TLS_LEVEL == 2 || $TLS_LEVEL == 3 ]] || die "PUREFTPD_TLS must be 2 or 3, got '$TLS_LEVEL'"

  install_tools
  fetch_pureftpd

  # Idempotent: a pure-ftpd already started for this DIR is restarted.
  stop_instance "$dir"
  rm -f "$dir/env" # only a successful start writes it

  chmod 0711 "$dir" # the FTP user must be able to traverse DIR to reach its home
  home=$dir/home/ftp-root
  mkdir -p "$dir/home"
  chmod 0711 "$dir/home"

  make_certs "$dir"
  make_user "$dir" "$home"
  port=$(pick_port PUREFTPD_PORT 2141)
  write_conf "$dir" "$port"

  fresh_logs "$dir" transfer.log pure-ftpd.stderr
  # setsid: own session, so `stop` can find every process of this instance (pure-ftpd forks
  # two per connection: a privileged helper and the session running as the user; both stay
  # in the session). The subshell is not a process-group leader, so setsid execs without
  # forking and $! is pure-ftpd's own PID. Without Daemonize it stays in the foreground.
  (
    close_inherited_fds
    # Like vsftpd, pure-ftpd writes fatal startup errors ("421 Configuration error: ...") to
    # fd 0, so fd 0 must be a writable file; a socket there would mean inetd mode.
    exec setsid "$ROOT/usr/sbin/pure-ftpd" "$dir/pure-ftpd.conf" 0<>"$dir/pure-ftpd.stderr" 1>&0 2>&0
  ) &
  pid=$!
  echo "$pid" >"$dir/pure-ftpd.pid"

  wait_until_serving "$dir" "$pid" "$port" NO pure-ftpd.stderr transfer.log
  # pure-ftpd writes its PIDFile itself, with the same PID; make sure it is ours.
  echo "$pid" >"$dir/pure-ftpd.pid"

  write_env "$dir" "${PUREFTPD_ENV_PREFIX:-FERRYSYNC_PUREFTPD}" "$port" "$home" "$dir/transfer.log"
  log "pure-ftpd (pid $pid) is serving explicit FTPS (TLS level $TLS_LEVEL) on 127.0.0.1:$port as user $FTP_USER, root $home"
  log "source $dir/env to get ${PUREFTPD_ENV_PREFIX:-FERRYSYNC_PUREFTPD}_* variables"
}

[[ $# == 2 && -n $2 ]] || usage
case $1 in
start) cmd_start "$2" ;;
stop) cmd_stop "$2" || true ;;
*) usage ;;
esac
