#!/usr/bin/env bash
# Start/stop a throw-away vsftpd with explicit FTPS (AUTH TLS) on 127.0.0.1
# for ferrysync's integration tests. Must run as root (Debian 12 / vsftpd 3.0.3).
#
#   bash tests/servers/vsftpd.sh start DIR   # install if needed, configure, start
#   bash tests/servers/vsftpd.sh stop  DIR   # stop the vsftpd started for DIR
#
# After `start`, `source DIR/env` exports FERRYSYNC_VSFTPD_{HOST,PORT,USER,
# PASSWORD_FILE,CA,ROOT,LOG}. See tests/servers/README.md.
#
# Environment overrides:
#   VSFTPD_PORT       control port (default: 2121, or the next free port up to 2199)
#   VSFTPD_PASV_MIN   first passive data port (default 40000)
#   VSFTPD_PASV_MAX   last passive data port (default 40099)
#   VSFTPD_USER       local Unix user for the tests (default ferrysync-test)
#   VSFTPD_IMPLICIT   YES for implicit FTPS (TLS from the first byte), default NO
#   VSFTPD_CLIENT_CERT YES to require a client certificate (DIR/client.pem, DIR/client.key)
#   VSFTPD_MAX_PER_IP connections allowed per client address (default 0: unlimited)
#   VSFTPD_CMDS_DENIED commands the server refuses (e.g. RNFR,RNTO,SIZE for a drop folder)
#   VSFTPD_PASV_ADDRESS the address PASV replies announce (default 127.0.0.1; another one acts
#                     like a server behind NAT announcing its private address)
#   VSFTPD_ENV_PREFIX prefix of the variables in DIR/env (default FERRYSYNC_VSFTPD)
set -euo pipefail

PROG=${0##*/}
FTP_USER=${VSFTPD_USER:-ferrysync-test}
PASV_MIN=${VSFTPD_PASV_MIN:-40000}
PASV_MAX=${VSFTPD_PASV_MAX:-40099}
START_TIMEOUT=10 # seconds to wait for the control port
# shellcheck disable=SC2034 # STOP_TIMEOUT and DAEMON are read by common.sh
STOP_TIMEOUT=5   # seconds to wait for processes to exit after SIGTERM
export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:${PATH:-}"

log() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }
# shellcheck disable=SC2034
DAEMON=vsftpd
# shellcheck source=tests/servers/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat >&2 <<EOF
usage: bash $0 start DIR   (install, configure and start vsftpd; writes DIR/env)
       bash $0 stop DIR    (stop the vsftpd started for DIR; never fails)
EOF
  exit 2
}

# ---------------------------------------------------------------- helpers






install_packages() {
  local missing=()
  command -v vsftpd >/dev/null || missing+=(vsftpd)
  command -v lftp >/dev/null || missing+=(lftp)
  command -v openssl >/dev/null || missing+=(openssl)
  if ((${#missing[@]})); then
    log "installing missing packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=120 update -q ||
      die "apt-get update failed"
    # Only the missing ones: naming an installed package would upgrade it.
    apt-get -o DPkg::Lock::Timeout=120 install -y -q "${missing[@]}" ||
      die "apt-get install ${missing[*]} failed"
    for b in vsftpd lftp openssl; do
      command -v "$b" >/dev/null || die "$b still not found after apt-get install"
    done
  fi
  # We never use the distribution's service (it may or may not have been
  # started by the package, e.g. on port 21). Stop it if it runs; never fail.
  if command -v service >/dev/null; then
    service vsftpd stop >/dev/null 2>&1 || true
  fi
}


# Ensures the local test user exists, has a bash login shell and $2 as home,
# and a random password stored (without newline) in DIR/password.
make_user() {
  local dir=$1 home=$2 pw
  [[ $FTP_USER != root ]] || die "refusing to use root as the FTP test user"
  grep -qx '/bin/bash' /etc/shells || die "/bin/bash is not listed in /etc/shells (PAM pam_shells would refuse the login)"
  if ! getent passwd "$FTP_USER" >/dev/null; then
    log "creating user $FTP_USER"
    useradd --no-create-home --home-dir "$home" --shell /bin/bash \
      --comment "ferrysync FTP test user" "$FTP_USER" || die "useradd $FTP_USER failed"
  else
    local cur_home cur_shell
    cur_home=$(getent passwd "$FTP_USER" | cut -d: -f6)
    cur_shell=$(getent passwd "$FTP_USER" | cut -d: -f7)
    if [[ $cur_home != "$home" || $cur_shell != /bin/bash ]]; then
      usermod --home "$home" --shell /bin/bash "$FTP_USER" || die "usermod $FTP_USER failed"
    fi
  fi
  if [[ -f /etc/ftpusers ]] && grep -qx "$FTP_USER" /etc/ftpusers; then
    die "$FTP_USER is listed in /etc/ftpusers, so PAM would refuse it"
  fi
  mkdir -p "$home"
  chown "$FTP_USER:" "$home"
  chmod 0755 "$home"
  if [[ ! -s $dir/password ]]; then
    (umask 077 && openssl rand -hex 16 | tr -d '\n' >"$dir/password")
  fi
  chmod 0600 "$dir/password"
  pw=$(cat "$dir/password")
  printf '%s:%s\n' "$FTP_USER" "$pw" | chpasswd || die "chpasswd for $FTP_USER failed"
  # The chroot/home must be reachable and writable by the user itself.
  runuser -u "$FTP_USER" -- test -w "$home" -a -x "$home" ||
    die "user $FTP_USER cannot write to $home; every parent directory of DIR must be world-traversable (o+x)"
}


# Succeeds if the vsftpd binary knows the config option $2.
has_option() {
  grep -aq -- "$2" "$1"
}

write_conf() {
  local dir=$1 port=$2 home=$3 bin=$4 conf=$1/vsftpd.conf
  {
    cat <<EOF
# Generated by tests/servers/vsftpd.sh -- throw-away FTPS server for tests.
listen=YES
listen_ipv6=NO
listen_address=127.0.0.1
listen_port=$port
background=NO
# Never use clone(CLONE_NEWPID/NEWNET) or seccomp: both fail in containers.
seccomp_sandbox=NO
isolate=NO
isolate_network=NO

anonymous_enable=NO
local_enable=YES
write_enable=YES
local_umask=022
chroot_local_user=YES
allow_writeable_chroot=YES
pam_service_name=vsftpd
secure_chroot_dir=$dir/empty
mdtm_write=YES
force_dot_files=YES
hide_ids=NO
# VSFTPD_CMDS_DENIED=RNFR,RNTO,SIZE: a write-only drop folder that refuses renames and reads.
cmds_denied=${VSFTPD_CMDS_DENIED:-}
# VSFTPD_MAX_PER_IP=N: a server that allows N connections per client (421 beyond).
max_per_ip=${VSFTPD_MAX_PER_IP:-0}
max_clients=0

pasv_enable=YES
# VSFTPD_PASV_ADDRESS=127.0.0.200: PASV names an address the data port is not on (NAT).
pasv_address=${VSFTPD_PASV_ADDRESS:-127.0.0.1}
pasv_min_port=$PASV_MIN
pasv_max_port=$PASV_MAX
port_enable=YES
connect_from_port_20=NO

ssl_enable=YES
rsa_cert_file=$dir/server.pem
rsa_private_key_file=$dir/server.key
force_local_logins_ssl=YES
force_local_data_ssl=YES
require_ssl_reuse=YES
# An upload must end with the client's TLS close_notify, not a bare TCP FIN (which an attacker
# could fake to cut a file short); off by default because "so few clients get it right".
strict_ssl_read_eof=YES
# Downloads end with the server's close_notify.
strict_ssl_write_shutdown=YES
# VSFTPD_IMPLICIT=YES: TLS from the first byte (implicit FTPS) instead of AUTH TLS.
implicit_ssl=${VSFTPD_IMPLICIT:-NO}
ssl_sslv2=NO
ssl_sslv3=NO
ssl_tlsv1=NO
# Debian's vsftpd 3.0.3 default is DES-CBC3-SHA, which rustls does not offer.
ssl_ciphers=HIGH
debug_ssl=YES
# VSFTPD_CLIENT_CERT=YES: clients must present a certificate signed by DIR/ca.pem (the tests'
# DIR/client.pem is); without one, or with another, the TLS handshake is refused.
require_cert=${VSFTPD_CLIENT_CERT:-NO}
validate_cert=${VSFTPD_CLIENT_CERT:-NO}
ca_certs_file=$dir/ca.pem

xferlog_enable=YES
dual_log_enable=YES
xferlog_std_format=NO
log_ftp_protocol=YES
vsftpd_log_file=$dir/vsftpd.log
xferlog_file=$dir/xferlog.log
EOF
    # Options only some vsftpd builds know (an unknown option is a fatal error).
    has_option "$bin" utf8_filesystem && echo "utf8_filesystem=YES"
    has_option "$bin" ssl_tlsv1_1 && echo "ssl_tlsv1_1=NO"
    has_option "$bin" ssl_tlsv1_2 && echo "ssl_tlsv1_2=YES"
    has_option "$bin" ssl_tlsv1_3 && echo "ssl_tlsv1_3=YES"
    true
  } >"$conf"
  chmod 0600 "$conf" # vsftpd insists the config is owned by the user running it
}

# ---------------------------------------------------------------- commands

cmd_start() {
  local dir port home bin pid
  check_start "$1" VSFTPD
  dir=$START_DIR
  [[ ${VSFTPD_PASV_ADDRESS:-127.0.0.1} =~ ^[0-9]{1,3}(\.[0-9]{1,3}){3}$ ]] ||
    die "bad VSFTPD_PASV_ADDRESS '${VSFTPD_PASV_ADDRESS:-}' (an IPv4 address)"

  install_packages
  bin=$(command -v vsftpd)

  # Idempotent: a vsftpd already started for this DIR is restarted.
  stop_instance "$dir"
  rm -f "$dir/env" # only a successful start writes it

  chmod 0711 "$dir" # the FTP user must be able to traverse DIR to reach its home
  home=$dir/home/ftp-root
  mkdir -p "$dir/home" "$dir/empty"
  chown root:root "$dir/empty" && chmod 0555 "$dir/empty"
  chmod 0711 "$dir/home"
  mkdir -p /var/run/vsftpd/empty

  make_certs "$dir"
  make_client_cert "$dir"
  make_user "$dir" "$home"
  port=$(pick_port VSFTPD_PORT 2121)
  write_conf "$dir" "$port" "$home" "$bin"

  fresh_logs "$dir" vsftpd.log xferlog.log vsftpd.stderr
  # setsid: own session, so `stop` can find every process of this instance.
  # The subshell is not a process-group leader, so setsid execs without forking
  # and $! is vsftpd's own PID.
  (
    close_inherited_fds
    # vsftpd writes fatal startup errors ("500 OOPS: ...") to fd 0, not stderr,
    # so fd 0 must be a writable file rather than /dev/null.
    exec setsid "$bin" "$dir/vsftpd.conf" 0<>"$dir/vsftpd.stderr" 1>&0 2>&0
  ) &
  pid=$!
  echo "$pid" >"$dir/vsftpd.pid"

  wait_until_serving "$dir" "$pid" "$port" "${VSFTPD_IMPLICIT:-NO}" vsftpd.stderr vsftpd.log

  write_env "$dir" "${VSFTPD_ENV_PREFIX:-FERRYSYNC_VSFTPD}" "$port" "$home" "$dir/vsftpd.log"
  log "vsftpd (pid $pid) is serving $([[ ${VSFTPD_IMPLICIT:-NO} == YES ]] && echo implicit || echo explicit) FTPS on 127.0.0.1:$port as user $FTP_USER, root $home"
  log "source $dir/env to get ${VSFTPD_ENV_PREFIX:-FERRYSYNC_VSFTPD}_* variables"
}

[[ $# == 2 && -n $2 ]] || usage
case $1 in
start) cmd_start "$2" ;;
stop) cmd_stop "$2" || true ;;
*) usage ;;
esac
