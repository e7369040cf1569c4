#!/usr/bin/env bash
# Start/stop a throw-away ProFTPD with FTPS (AUTH TLS, or implicit) on 127.0.0.1
# for ferrysync's integration tests. Must run as root (Debian 12 / ProFTPD 1.3.8).
#
#   bash tests/servers/proftpd.sh start DIR   # fetch if needed, configure, start
#   bash tests/servers/proftpd.sh stop  DIR   # stop the proftpd started for DIR
#
# After `start`, `source DIR/env` exports FERRYSYNC_PROFTPD_{HOST,PORT,USER,
# PASSWORD_FILE,CA,ROOT,LOG}. See tests/servers/README.md.
#
# ProFTPD is never installed as a package: proftpd-core conflicts with vsftpd
# (both provide ftp-server). The script `apt-get download`s proftpd-core and
# proftpd-mod-crypto (which holds mod_tls.so), unpacks them with `dpkg -x` into
# a cache folder that later runs reuse, and apt-get installs only the shared
# libraries they need.
#
# Environment overrides:
#   PROFTPD_PORT          control port (default: 2131, or the next free port up to 2199)
#   PROFTPD_PASV_MIN      first passive data port (default 40200)
#   PROFTPD_PASV_MAX      last passive data port (default 40299)
#   PROFTPD_USER          Unix account that owns the files (default ferrysync-proftpd)
#   PROFTPD_IMPLICIT      YES for implicit FTPS (TLS from the first byte), default NO
#   PROFTPD_TLS_PROTOCOLS TLSProtocol value (default "TLSv1.2"; e.g. "TLSv1.2 TLSv1.3")
#   PROFTPD_SESSION_TICKETS on: issue TLS 1.2 session tickets (TLSSessionTickets; default
#                         off, as ProFTPD ships). Go clients (rclone) resume TLS 1.2 sessions
#                         only from tickets, so against the default they fail the required
#                         session reuse with "425 Unable to build data connection"
#   PROFTPD_LIST_TZ       a POSIX TZ (e.g. "<+03>-3"): LIST shows times in that zone
#                         (TimesGMT off), as many servers do; MDTM and MLSD stay UTC
#   PROFTPD_ENV_PREFIX    prefix of the variables in DIR/env (default FERRYSYNC_PROFTPD)
#   PROFTPD_CACHE_DIR     where the unpacked packages are kept
#                         (default /var/cache/ferrysync-tests/proftpd)
set -euo pipefail

PROG=${0##*/}
FTP_USER=${PROFTPD_USER:-ferrysync-proftpd}
PASV_MIN=${PROFTPD_PASV_MIN:-40200}
PASV_MAX=${PROFTPD_PASV_MAX:-40299}
IMPLICIT=${PROFTPD_IMPLICIT:-NO}
TLS_PROTOCOLS=${PROFTPD_TLS_PROTOCOLS:-TLSv1.2}
LIST_TZ=${PROFTPD_LIST_TZ:-}
SESSION_TICKETS=${PROFTPD_SESSION_TICKETS:-off}
CACHE_DIR=${PROFTPD_CACHE_DIR:-/var/cache/ferrysync-tests/proftpd}
PACKAGES=(proftpd-core proftpd-mod-crypto) # mod_tls.so is in proftpd-mod-crypto
START_TIMEOUT=10                           # seconds to wait for the control port
# shellcheck disable=SC2034 # STOP_TIMEOUT and DAEMON are read by common.sh
STOP_TIMEOUT=5                             # seconds to wait for processes to exit after SIGTERM
APT_TIMEOUT=300                            # seconds for one apt-get download/install
export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:${PATH:-}"

log() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }
# shellcheck disable=SC2034
DAEMON=proftpd
# shellcheck source=tests/servers/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat >&2 <<EOF
usage: bash $0 start DIR   (fetch, configure and start proftpd; writes DIR/env)
       bash $0 stop DIR    (stop the proftpd started for DIR; never fails)
EOF
  exit 2
}

# ---------------------------------------------------------------- helpers






# Makes $CACHE_DIR/root hold an unpacked proftpd-core + proftpd-mod-crypto whose
# binary runs. Sets ROOT and LD_LIBRARY_PATH.
fetch_proftpd() {
  fetch_unpacked "$CACHE_DIR" "${PACKAGES[*]}" \
    usr/sbin/proftpd usr/lib/proftpd/mod_tls.so usr/lib/proftpd/mod_digest.so
  "$ROOT/usr/sbin/proftpd" -v >/dev/null 2>&1 || die "$ROOT/usr/sbin/proftpd does not run (try: rm -rf $CACHE_DIR)"
}


# Ensures the local account that owns the uploaded files exists (no password,
# no shell: it never logs in through PAM), that $2 is its home, and writes the
# mod_auth_file user/group files that proftpd authenticates against, with the
# random password kept (without newline) in DIR/password.
make_user() {
  local dir=$1 home=$2 pw hash uid gid
  [[ $FTP_USER != root ]] || die "refusing to use root as the FTP test user"
  if ! getent passwd "$FTP_USER" >/dev/null; then
    log "creating user $FTP_USER"
    useradd --system --user-group --no-create-home --home-dir "$home" --shell /usr/sbin/nologin \
      --comment "ferrysync ProFTPD test user" "$FTP_USER" || die "useradd $FTP_USER failed"
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
  hash=$(printf '%s' "$pw" | openssl passwd -6 -stdin) || die "openssl passwd failed"
  (
    umask 077
    printf '%s:%s:%s:%s:ferrysync ProFTPD test user:%s:/usr/sbin/nologin\n' \
      "$FTP_USER" "$hash" "$uid" "$gid" "$home" >"$dir/ftpd.passwd"
    printf '%s:x:%s:\n' "$(id -gn "$FTP_USER")" "$gid" >"$dir/ftpd.group"
  )
  # The chroot/home must be reachable and writable by the user itself.
  runuser -u "$FTP_USER" -- test -w "$home" -a -x "$home" ||
    die "user $FTP_USER cannot write to $home; every parent directory of DIR must be world-traversable (o+x)"
}


write_conf() {
  local dir=$1 port=$2 home=$3 conf=$1/proftpd.conf tls_options="EnableDiags"
  [[ $IMPLICIT == YES ]] && tls_options+=" UseImplicitSSL"
  cat >"$conf" <<EOF
# Generated by tests/servers/proftpd.sh -- throw-away FTPS server for tests.
ServerName "ferrysync test ProFTPD"
ServerType standalone
DefaultServer on
DefaultAddress 127.0.0.1
# Bind 127.0.0.1 only (without this a standalone server binds the wildcard).
SocketBindTight on
UseIPv6 off
Port $port
PassivePorts $PASV_MIN $PASV_MAX
User nobody
Group nogroup
Umask 022
MaxInstances 50
PidFile $dir/proftpd.pid
ScoreboardFile $dir/proftpd.scoreboard
UseReverseDNS off
WtmpLog off
TimesGMT $([[ -n $LIST_TZ ]] && echo off || echo on)
<IfModule mod_ident.c>
  IdentLookups off
</IfModule>
<IfModule mod_delay.c>
  DelayEngine off
</IfModule>
<IfModule mod_ctrls.c>
  ControlsEngine off
</IfModule>

ModulePath $ROOT/usr/lib/proftpd
<IfModule mod_dso.c>
  LoadModule mod_tls.c
  LoadModule mod_digest.c
</IfModule>

# Users come from DIR/ftpd.passwd only (no PAM, no /etc/shadow).
AuthOrder mod_auth_file.c
AuthUserFile $dir/ftpd.passwd
AuthGroupFile $dir/ftpd.group
RequireValidShell off
<IfModule mod_auth_pam.c>
  AuthPAM off
</IfModule>
DefaultRoot ~
AllowOverwrite on
AllowStoreRestart on

# With -n, proftpd writes its messages to stderr, which the script appends
# to this same file.
SystemLog $dir/proftpd.log
LogFormat ferrysync "%{%Y-%m-%d %H:%M:%S}t %a %u \"%r\" %s \"%S\" %b"
ExtendedLog $dir/ftp.log ALL ferrysync
TransferLog $dir/xferlog.log

<IfModule mod_tls.c>
  TLSEngine on
  TLSRequired on
  # PROFTPD_TLS_PROTOCOLS. TLSv1.2 by default: with TLS 1.3, ProFTPD 1.3.8
  # rejects the second data connection of rustls clients.
  TLSProtocol $TLS_PROTOCOLS
  TLSRSACertificateFile $dir/server.pem
  TLSRSACertificateKeyFile $dir/server.key
  TLSCACertificateFile $dir/ca.pem
  TLSVerifyClient off
  TLSRenegotiate none
  # Data connections must reuse the control connection's TLS session (the
  # default: NoSessionReuseRequired is deliberately not set).
  TLSOptions $tls_options
  # PROFTPD_SESSION_TICKETS
  TLSSessionTickets $SESSION_TICKETS
  TLSLog $dir/tls.log
</IfModule>

<IfModule mod_digest.c>
  DigestEngine on
  DigestAlgorithms all
  # Never answer HASH from a cache: tests rewrite files within the same second.
  DigestCache off
</IfModule>
EOF
  chmod 0600 "$conf"
}

print_failure_logs() {
  local dir=$1 f
  for f in "$dir/proftpd.log" "$dir/tls.log"; do
    if [[ -s $f ]]; then
      log "---- last lines of $f ----"
      tail -n 30 "$f" >&2
    fi
  done
}

# ---------------------------------------------------------------- commands

cmd_start() {
  local dir=$1 port home pid i code f
  [[ $(id -u) == 0 ]] || die "must run as root (it installs packages, creates a user and starts proftpd)"
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd -P)
  [[ $dir =~ ^/[A-Za-z0-9._/+-]+$ ]] ||
    die "DIR must be a path without spaces or special characters (got '$dir')"

  if ! [[ $PASV_MIN =~ ^[0-9]{4,5}$ && $PASV_MAX =~ ^[0-9]{4,5}$ ]] ||
    ((PASV_MIN > PASV_MAX || PASV_MAX > 65535)); then
    die "bad passive port range PROFTPD_PASV_MIN=$PASV_MIN PROFTPD_PASV_MAX=$PASV_MAX"
  fi
  [[ $FTP_USER =~ ^[a-z_][a-z0-9_-]{0,30}$ ]] || die "bad PROFTPD_USER '$FTP_USER'"
  [[ $IMPLICIT == YES || $IMPLICIT == NO ]] || die "PROFTPD_IMPLICIT must be YES or NO, got '$IMPLICIT'"
  [[ $TLS_PROTOCOLS =~ ^(TLSv1(\.[123])?|ALL)([[:space:]]+(TLSv1(\.[123])?|ALL))*$ ]] ||
    die "bad PROFTPD_TLS_PROTOCOLS '$TLS_PROTOCOLS' (e.g. \"TLSv1.2 TLSv1.3\")"
  [[ $SESSION_TICKETS == on || $SESSION_TICKETS == off ]] ||
    die "PROFTPD_SESSION_TICKETS must be on or off, got '$SESSION_TICKETS'"

  install_tools
  fetch_proftpd

  # Idempotent: a proftpd already started for this DIR is restarted.
  stop_instance "$dir"
  rm -f "$dir/env" # only a successful start writes it

  chmod 0711 "$dir" # the FTP user must be able to traverse DIR to reach its home
  home=$dir/home/ftp-root
  mkdir -p "$dir/home"
  chmod 0711 "$dir/home"

  make_certs "$dir"
  make_user "$dir" "$home"
  port=$(pick_port PROFTPD_PORT 2131)
  write_conf "$dir" "$port" "$home"

  local check
  if ! check=$("$ROOT/usr/sbin/proftpd" -t -c "$dir/proftpd.conf" 2>&1); then
    printf '%s\n' "$check" >&2
    die "proftpd rejects the generated config $dir/proftpd.conf"
  fi

  # Fresh logs for this run; keep the previous run's next to them.
  for f in proftpd.log ftp.log tls.log xferlog.log; do
    [[ -s $dir/$f ]] && mv -f "$dir/$f" "$dir/$f.old"
    : >"$dir/$f"
  done
  rm -f "$dir/proftpd.scoreboard" "$dir/proftpd.scoreboard.lck"
  # setsid: own session, so `stop` can find every process of this instance.
  # The subshell is not a process-group leader, so setsid execs without forking
  # and $! is proftpd's own PID. -n: stay in the foreground (no daemon fork).
  (
    # Do not hand the caller's extra file descriptors (e.g. CI pipes) to the daemon.
    for fd in "/proc/$BASHPID/fd/"*; do
      fd=${fd##*/}
      if ((fd > 2)); then eval "exec $fd>&-" 2>/dev/null || true; fi
    done
    if [[ -n $LIST_TZ ]]; then export TZ=$LIST_TZ; fi
    exec setsid "$ROOT/usr/sbin/proftpd" -n -c "$dir/proftpd.conf" </dev/null >>"$dir/proftpd.log" 2>&1
  ) &
  pid=$!
  echo "$pid" >"$dir/proftpd.pid"

  code=""
  for ((i = 0; i < START_TIMEOUT * 10; i++)); do
    if ! kill -0 "$pid" 2>/dev/null; then
      print_failure_logs "$dir"
      rm -f "$dir/proftpd.pid"
      die "proftpd exited during startup (config $dir/proftpd.conf)"
    fi
    if port_open "$port"; then
      # An implicit-TLS server greets only after a handshake: an open port is enough there.
      [[ $IMPLICIT == YES ]] && { code=220; break; }
      code=$(greeting_code "$port")
      [[ $code == 220 ]] && break
    fi
    sleep 0.1
  done
  if [[ $code != 220 ]]; then
    print_failure_logs "$dir"
    stop_instance "$dir"
    die "proftpd did not answer '220' on 127.0.0.1:$port within ${START_TIMEOUT}s"
  fi
  # proftpd rewrites its PidFile with the same PID; make sure it is ours.
  echo "$pid" >"$dir/proftpd.pid"

  {
    local p=${PROFTPD_ENV_PREFIX:-FERRYSYNC_PROFTPD}
    printf 'export %s_HOST=127.0.0.1\n' "$p"
    printf 'export %s_PORT=%s\n' "$p" "$port"
    printf 'export %s_USER=%s\n' "$p" "$FTP_USER"
    printf 'export %s_PASSWORD_FILE=%s\n' "$p" "$dir/password"
    printf 'export %s_CA=%s\n' "$p" "$dir/ca.pem"
    printf 'export %s_ROOT=%s\n' "$p" "$home"
    printf 'export %s_LOG=%s\n' "$p" "$dir/ftp.log"
    printf 'export %s_LIST_TZ=%q\n' "$p" "$LIST_TZ"
  } >"$dir/env"
  log "proftpd (pid $pid) is serving $([[ $IMPLICIT == YES ]] && echo implicit || echo explicit) FTPS ($TLS_PROTOCOLS) on 127.0.0.1:$port as user $FTP_USER, root $home"
  log "source $dir/env to get ${PROFTPD_ENV_PREFIX:-FERRYSYNC_PROFTPD}_* variables"
}

[[ $# == 2 && -n $2 ]] || usage
case $1 in
start) cmd_start "$2" ;;
stop) cmd_stop "$2" || true ;;
*) usage ;;
esac
