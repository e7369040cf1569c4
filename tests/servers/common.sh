# shellcheck shell=bash
# Shared by the test-server scripts in this folder (sourced, not run): ports and throw-away
# certificates, finding and stopping a server's processes, and fetching a server that is
# unpacked from Debian packages rather than installed. The sourcing script defines PROG,
# DAEMON (the server's process name; its files are DIR/$DAEMON.pid and DIR/$DAEMON.conf),
# STOP_TIMEOUT and, for fetch_unpacked, APT_TIMEOUT.

log() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }

# Succeeds if something accepts TCP connections on 127.0.0.1:$1.
port_open() {
  timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null
}

# Prints the first 3 bytes the server sends on 127.0.0.1:$1 (the FTP greeting code).
greeting_code() {
  timeout 3 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1 && head -c3 <&3" 2>/dev/null || true
}

# Creates DIR/ca.pem (+ca.key) and DIR/server.pem/server.key unless valid ones exist.
make_certs() {
  local dir=$1
  if [[ -s $dir/ca.pem && -s $dir/ca.key && -s $dir/server.pem && -s $dir/server.key ]] &&
    openssl x509 -in "$dir/ca.pem" -noout -checkend 86400 >/dev/null 2>&1 &&
    openssl x509 -in "$dir/server.pem" -noout -checkend 86400 >/dev/null 2>&1 &&
    openssl verify -CAfile "$dir/ca.pem" "$dir/server.pem" >/dev/null 2>&1 &&
    [[ $(openssl x509 -in "$dir/server.pem" -noout -pubkey 2>/dev/null) == \
      "$(openssl pkey -in "$dir/server.key" -pubout 2>/dev/null)" ]]; then
    return 0
  fi
  log "generating throw-away CA and server certificate in $dir"
  local tmp
  tmp=$(mktemp -d "$dir/.certs.XXXXXX")
  (
    umask 077
    cat >"$tmp/ca.cnf" <<'EOF'
[req]
distinguished_name = dn
prompt = no
x509_extensions = v3_ca
[dn]
CN = ferrysync throw-away test CA
[v3_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
EOF
    cat >"$tmp/server.ext" <<'EOF'
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
EOF
    openssl req -x509 -config "$tmp/ca.cnf" -newkey rsa:2048 -nodes -sha256 -days 365 \
      -keyout "$tmp/ca.key" -out "$tmp/ca.pem" 2>"$tmp/openssl.err"
    openssl req -new -newkey rsa:2048 -nodes -sha256 -subj "/CN=localhost" \
      -keyout "$tmp/server.key" -out "$tmp/server.csr" 2>>"$tmp/openssl.err"
    openssl x509 -req -sha256 -days 365 -in "$tmp/server.csr" \
      -CA "$tmp/ca.pem" -CAkey "$tmp/ca.key" -set_serial "0x$(openssl rand -hex 8)" \
      -extfile "$tmp/server.ext" -out "$tmp/server.pem" 2>>"$tmp/openssl.err"
    openssl verify -CAfile "$tmp/ca.pem" "$tmp/server.pem" >/dev/null
  ) || { cat "$tmp/openssl.err" >&2 2>/dev/null || true; rm -rf "$tmp"; die "certificate generation failed"; }
  chmod 0644 "$tmp/ca.pem" "$tmp/server.pem"
  chmod 0600 "$tmp/ca.key" "$tmp/server.key"
  mv -f "$tmp/ca.pem" "$tmp/ca.key" "$tmp/server.pem" "$tmp/server.key" "$dir/"
  rm -rf "$tmp"
}

# Prints the port to listen on: $1 names the variable that may set it, $2 is the first port
# tried otherwise (up to 2199).
pick_port() {
  local var=$1 first=$2 p
  local want=${!var:-}
  if [[ -n $want ]]; then
    if ! [[ $want =~ ^[0-9]{1,5}$ ]] || ((want < 1 || want > 65535)); then
      die "$var must be a TCP port number, got '$want'"
    fi
    port_open "$want" && die "port $want ($var) is already in use on 127.0.0.1"
    echo "$want"
    return
  fi
  for ((p = first; p < 2200; p++)); do
    port_open "$p" || { echo "$p"; return; }
  done
  die "no free port in $first-2199; set $var"
}

# Writes DIR/client.pem and DIR/client.key: a client certificate (CN ferrysync-test-client)
# signed by the CA of make_certs, for servers that authenticate clients by certificate.
make_client_cert() {
  local dir=$1
  if [[ -s $dir/client.pem && -s $dir/client.key ]] &&
    openssl verify -CAfile "$dir/ca.pem" "$dir/client.pem" >/dev/null 2>&1; then
    return 0
  fi
  local tmp
  tmp=$(mktemp -d "$dir/.client.XXXXXX")
  (
    umask 077
    printf 'basicConstraints = critical, CA:FALSE\nkeyUsage = critical, digitalSignature, keyEncipherment\nextendedKeyUsage = clientAuth\n' >"$tmp/client.ext"
    openssl req -new -newkey rsa:2048 -nodes -sha256 -subj "/CN=ferrysync-test-client" \
      -keyout "$tmp/client.key" -out "$tmp/client.csr" 2>"$tmp/openssl.err"
    openssl x509 -req -sha256 -days 365 -in "$tmp/client.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" \
      -set_serial "0x$(openssl rand -hex 8)" -extfile "$tmp/client.ext" -out "$tmp/client.pem" 2>>"$tmp/openssl.err"
  ) || { cat "$tmp/openssl.err" >&2 2>/dev/null || true; rm -rf "$tmp"; die "client certificate generation failed"; }
  chmod 0644 "$tmp/client.pem"
  chmod 0600 "$tmp/client.key"
  mv -f "$tmp/client.pem" "$tmp/client.key" "$dir/"
  rm -rf "$tmp"
}

# Succeeds if PID $1 is a live $DAEMON process. A zombie does not count: it
# has exited, and whoever adopted it (PID 1) may take seconds to reap it.
is_daemon_pid() {
  local stat
  [[ -n ${1:-} && -r /proc/$1/comm ]] && [[ $(cat "/proc/$1/comm" 2>/dev/null) == "$DAEMON" ]] &&
    stat=$(cat "/proc/$1/stat" 2>/dev/null) && [[ ${stat##*) } != Z* ]]
}

# PIDs of every process belonging to the $DAEMON instance of config $1:
# the ones whose session id is the recorded PID (we start it with setsid; the
# session children it forks stay in that session) and the ones whose command
# line still names our config file.
instance_pids() {
  local conf=$1 sid=${2:-} p stat rest cmd _state _ppid _pgrp session
  for p in /proc/[0-9]*; do
    p=${p#/proc/}
    [[ $p == "$$" ]] && continue
    if [[ -n $sid ]] && stat=$(cat "/proc/$p/stat" 2>/dev/null); then
      rest=${stat##*) } # fields after "(comm) "
      read -r _state _ppid _pgrp session _ <<<"$rest"
      if [[ $session == "$sid" ]] && is_daemon_pid "$p"; then echo "$p"; continue; fi
    fi
    cmd=$(tr '\0' ' ' 2>/dev/null <"/proc/$p/cmdline") || continue
    if [[ $cmd == *"$conf"* ]] && is_daemon_pid "$p"; then echo "$p"; fi
  done
}

stop_instance() {
  local dir=$1 pidfile=$1/$DAEMON.pid conf=$1/$DAEMON.conf pid="" i
  local -a pids
  [[ -f $pidfile ]] && pid=$(tr -dc '0-9' <"$pidfile")
  is_daemon_pid "$pid" || pid=""
  mapfile -t pids < <(instance_pids "$conf" "$pid")
  if ((${#pids[@]} == 0)); then
    rm -f "$pidfile"
    return 0
  fi
  log "stopping $DAEMON for $dir (pids: ${pids[*]})"
  kill -TERM "${pids[@]}" 2>/dev/null || true
  for ((i = 0; i < STOP_TIMEOUT * 10; i++)); do
    mapfile -t pids < <(instance_pids "$conf" "$pid")
    ((${#pids[@]} == 0)) && break
    sleep 0.1
  done
  if ((${#pids[@]} > 0)); then
    log "still running after ${STOP_TIMEOUT}s, sending SIGKILL to: ${pids[*]}"
    kill -KILL "${pids[@]}" 2>/dev/null || true
    sleep 0.2
  fi
  rm -f "$pidfile"
  return 0
}

# `stop DIR`: stops the server started for DIR, and removes the local user if the start for
# DIR created it; never fails.
cmd_stop() {
  local dir=$1
  if [[ ! -d $dir ]]; then
    log "$dir does not exist; nothing to stop"
    return 0
  fi
  dir=$(cd "$dir" && pwd -P)
  stop_instance "$dir" || true
  log "$DAEMON for $dir is stopped"
  remove_created_user "$dir" || true
}

# ---- the local user: a start that creates it says so in DIR/created-user, and the stop for
# DIR removes that user again, so test runs leave no accounts behind. A user that existed
# before the start (someone else's, or one a crashed run left) is never removed.

# Creates the local user FTP_USER with `useradd ARGS...` and records it in DIR/created-user.
create_user() {
  local dir=$1
  shift
  log "creating user $FTP_USER"
  useradd "$@" "$FTP_USER" || die "useradd $FTP_USER failed"
  printf '%s\n' "$FTP_USER" >"$dir/created-user"
}

# Removes the user named in DIR/created-user (and, as userdel does, its group of the same name),
# then the record. Its server is stopped by then; userdel refuses while a process of the user
# is still exiting, so it is tried for up to STOP_TIMEOUT seconds.
remove_created_user() {
  local dir=$1 user i
  [[ -f $dir/created-user ]] || return 0
  user=$(head -n 1 "$dir/created-user")
  if ! [[ $user =~ ^[a-z_][a-z0-9_-]{0,30}$ ]] || [[ $user == root ]]; then
    log "not removing '$user' named in $dir/created-user: not a test user name"
    return 0
  fi
  if getent passwd "$user" >/dev/null; then
    for ((i = 0; i < STOP_TIMEOUT * 5; i++)); do
      userdel "$user" 2>/dev/null && break
      sleep 0.2
    done
    if getent passwd "$user" >/dev/null; then
      log "userdel $user failed; the user stays (remove it with: userdel $user)"
      return 0
    fi
    log "removed user $user"
  fi
  rm -f "$dir/created-user"
}

# ---- servers unpacked from Debian packages rather than installed (they conflict with vsftpd:
# each provides ftp-server). The sourcing script defines APT_TIMEOUT (seconds for one apt-get).

APT_UPDATED=0
apt_update_once() {
  ((APT_UPDATED)) && return 0
  log "apt-get update"
  timeout "$APT_TIMEOUT" apt-get -o DPkg::Lock::Timeout=120 update -q >&2 || die "apt-get update failed"
  APT_UPDATED=1
}

# apt-get install of the named packages (only ones that are not installed yet:
# naming an installed package would upgrade it). Retries once after an update.
apt_install() {
  local p missing=()
  for p in "$@"; do
    [[ $(dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null) == ii* ]] || missing+=("$p")
  done
  ((${#missing[@]})) || return 0
  log "installing missing packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  if ! timeout "$APT_TIMEOUT" apt-get -o DPkg::Lock::Timeout=120 install -y -q --no-install-recommends "${missing[@]}" >&2; then
    ((APT_UPDATED)) && die "apt-get install ${missing[*]} failed"
    apt_update_once
    timeout "$APT_TIMEOUT" apt-get -o DPkg::Lock::Timeout=120 install -y -q --no-install-recommends "${missing[@]}" >&2 ||
      die "apt-get install ${missing[*]} failed"
  fi
}

install_tools() {
  local missing=() b
  command -v lftp >/dev/null || missing+=(lftp)
  command -v openssl >/dev/null || missing+=(openssl)
  command -v flock >/dev/null || missing+=(util-linux)
  command -v dpkg-deb >/dev/null || missing+=(dpkg)
  ((${#missing[@]})) && apt_install "${missing[@]}"
  for b in lftp openssl flock dpkg-deb; do
    command -v "$b" >/dev/null || die "$b still not found after apt-get install"
  done
}

# The shared library packages named in the Depends of the .deb files $@
# (first alternative of each, without version), one a line.
lib_depends() {
  local deb
  for deb in "$@"; do
    dpkg-deb -f "$deb" Depends
  done | tr ',' '\n' | sed -E 's/\|.*//; s/\(.*\)//; s/:any//; s/[[:space:]]//g' |
    grep -E '^lib[a-z0-9.+-]+$' | grep -v '^libpam-runtime$' | sort -u
}

# Lists the shared libraries that the files $2... (relative to the unpacked root $1) cannot find.
missing_libs() {
  local root=$1 f
  shift
  for f in "$@"; do
    [[ -e $root/$f ]] || { echo "${f##*/}(file)"; continue; }
    LD_LIBRARY_PATH="$root/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
      ldd "$root/$f" 2>/dev/null | awk '/not found/ {print $1}'
  done | sort -u
}

# `fetch_unpacked CACHE_DIR "PACKAGE..." FILE...`: makes CACHE_DIR/root hold the packages,
# `apt-get download`ed and unpacked with `dpkg -x`, with the FILEs (relative to the root; the
# first one is the server's executable) present and their shared libraries installed. Sets
# ROOT, and LD_LIBRARY_PATH to the root's library folder. Serialised with flock so parallel
# starts do not race; later runs reuse the unpacked root.
fetch_unpacked() {
  local cache=$1 tmp deb lock_fd missing f complete=1
  local -a packages deps
  read -r -a packages <<<"$2"
  shift 2
  mkdir -p "$cache"
  exec {lock_fd}>"$cache/.lock"
  flock -w "$APT_TIMEOUT" "$lock_fd" || die "timed out waiting for the lock on $cache"
  ROOT=$cache/root
  [[ -f $ROOT/.ferrysync-complete && -x $ROOT/$1 ]] || complete=0
  for f in "$@"; do [[ -f $ROOT/$f ]] || complete=0; done
  if ((!complete)); then
    log "downloading ${packages[*]} into $cache (not installing: they conflict with vsftpd)"
    rm -rf "$ROOT" "$cache"/tmp.*
    tmp=$(mktemp -d "$cache/tmp.XXXXXX")
    chmod 0755 "$tmp"
    # apt-get download drops privileges to _apt, which must be able to write here.
    getent passwd _apt >/dev/null && chown _apt "$tmp"
    if ! (cd "$tmp" && timeout "$APT_TIMEOUT" apt-get download -q "${packages[@]}" >&2); then
      apt_update_once
      (cd "$tmp" && timeout "$APT_TIMEOUT" apt-get download -q "${packages[@]}" >&2) ||
        { rm -rf "$tmp"; die "apt-get download ${packages[*]} failed"; }
    fi
    mkdir "$tmp/root"
    for deb in "$tmp"/*.deb; do
      dpkg -x "$deb" "$tmp/root" || { rm -rf "$tmp"; die "dpkg -x $deb failed"; }
    done
    lib_depends "$tmp"/*.deb >"$tmp/root/.ferrysync-libdeps"
    (cd "$tmp" && ls -1 -- *.deb) >"$tmp/root/.ferrysync-complete"
    mv "$tmp/root" "$ROOT"
    rm -rf "$tmp"
  fi
  # The libraries the server links against (libsodium23, libhiredis0.14, libmemcached11, ...)
  # are not all on a fresh Debian 12: install the missing ones.
  missing=$(missing_libs "$ROOT" "$@")
  if [[ -n $missing ]]; then
    log "${1##*/} needs missing libraries: ${missing//$'\n'/ }"
    mapfile -t deps <"$ROOT/.ferrysync-libdeps"
    ((${#deps[@]})) && apt_install "${deps[@]}"
    missing=$(missing_libs "$ROOT" "$@")
    [[ -z $missing ]] || die "libraries still missing for $ROOT/$1: ${missing//$'\n'/ }"
  fi
  exec {lock_fd}>&-
  if [[ -d $ROOT/usr/lib/x86_64-linux-gnu ]]; then
    export LD_LIBRARY_PATH="$ROOT/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  fi
}

# ---------------------------------------------------------------- starting a server
# The steps every start shares. The sourcing script also defines FTP_USER, PASV_MIN, PASV_MAX
# and START_TIMEOUT.

# Checks what every start needs (root; DIR a plain path; the passive range; the user name)
# and sets START_DIR to DIR, created and resolved. $2 names the script's variables in messages
# (VSFTPD, PROFTPD, PUREFTPD).
check_start() {
  local dir=$1 var=$2
  [[ $(id -u) == 0 ]] || die "must run as root (it installs packages, creates a user and starts $DAEMON)"
  mkdir -p "$dir"
  START_DIR=$(cd "$dir" && pwd -P)
  [[ $START_DIR =~ ^/[A-Za-z0-9._/+-]+$ ]] ||
    die "DIR must be a path without spaces or special characters (got '$START_DIR')"
  if ! [[ $PASV_MIN =~ ^[0-9]{4,5}$ && $PASV_MAX =~ ^[0-9]{4,5}$ ]] ||
    ((PASV_MIN > PASV_MAX || PASV_MAX > 65535)); then
    die "bad passive port range ${var}_PASV_MIN=$PASV_MIN ${var}_PASV_MAX=$PASV_MAX"
  fi
  [[ $FTP_USER =~ ^[a-z_][a-z0-9_-]{0,30}$ ]] || die "bad ${var}_USER '$FTP_USER'"
}

# Fresh logs for this run; the previous run's stay next to them as *.old. $1 DIR, then names.
fresh_logs() {
  local dir=$1 f
  shift
  for f; do
    [[ -s $dir/$f ]] && mv -f "$dir/$f" "$dir/$f.old"
    : >"$dir/$f"
  done
}

# The last lines of each log that has any. $1 DIR, then names.
print_logs() {
  local dir=$1 f
  shift
  for f; do
    if [[ -s $dir/$f ]]; then
      log "---- last lines of $dir/$f ----"
      tail -n 30 "$dir/$f" >&2
    fi
  done
}

# In the subshell that execs the daemon: closes the descriptors above 2 it inherited (e.g. CI
# pipes), which the daemon would otherwise hold open.
close_inherited_fds() {
  local fd
  for fd in "/proc/$BASHPID/fd/"*; do
    fd=${fd##*/}
    if ((fd > 2)); then eval "exec $fd>&-" 2>/dev/null || true; fi
  done
}

# Waits until the daemon started as PID greets with 220 on 127.0.0.1:PORT; with IMPLICIT=YES
# an open port is enough (an implicit-TLS server greets only after a handshake). On failure
# shows the logs named after the first four arguments and dies.
wait_until_serving() {
  local dir=$1 pid=$2 port=$3 implicit=$4 i code=""
  shift 4
  for ((i = 0; i < START_TIMEOUT * 10; i++)); do
    if ! kill -0 "$pid" 2>/dev/null; then
      print_logs "$dir" "$@"
      rm -f "$dir/$DAEMON.pid"
      die "$DAEMON exited during startup (config $dir/$DAEMON.conf)"
    fi
    if port_open "$port"; then
      [[ $implicit == YES ]] && return 0
      code=$(greeting_code "$port")
      [[ $code == 220 ]] && return 0
    fi
    sleep 0.1
  done
  print_logs "$dir" "$@"
  stop_instance "$dir"
  die "$DAEMON did not answer '220' on 127.0.0.1:$port within ${START_TIMEOUT}s"
}

# Writes DIR/env for the tests: PREFIX_{HOST,PORT,USER,PASSWORD_FILE,CA,ROOT,LOG}.
write_env() {
  local dir=$1 prefix=$2 port=$3 home=$4 logfile=$5
  {
    printf 'export %s_HOST=127.0.0.1\n' "$prefix"
    printf 'export %s_PORT=%s\n' "$prefix" "$port"
    printf 'export %s_USER=%s\n' "$prefix" "$FTP_USER"
    printf 'export %s_PASSWORD_FILE=%s\n' "$prefix" "$dir/password"
    printf 'export %s_CA=%s\n' "$prefix" "$dir/ca.pem"
    printf 'export %s_ROOT=%s\n' "$prefix" "$home"
    printf 'export %s_LOG=%s\n' "$prefix" "$logfile"
  } >"$dir/env"
}

# For servers with their own user file (ProFTPD, Pure-FTPd): ensures the local account
# FTP_USER that owns the uploaded files exists (a system account with no password and no
# shell: it never logs in through PAM), that $2 is its home, and that DIR/password holds a
# random password without newline. $3 is the account's comment.
ensure_file_user_account() {
  local dir=$1 home=$2 comment=$3
  [[ $FTP_USER != root ]] || die "refusing to use root as the FTP test user"
  if ! getent passwd "$FTP_USER" >/dev/null; then
    create_user "$dir" --system --user-group --no-create-home --home-dir "$home" \
      --shell /usr/sbin/nologin --comment "$comment"
  fi
  (($(id -u "$FTP_USER") != 0)) || die "user $FTP_USER has uid 0"
  mkdir -p "$home"
  chown "$FTP_USER:$(id -gn "$FTP_USER")" "$home"
  chmod 0755 "$home"
  new_password "$dir"
}

# DIR/password: a random password without newline, kept across restarts.
new_password() {
  local dir=$1
  if [[ ! -s $dir/password ]]; then
    (umask 077 && openssl rand -hex 16 | tr -d '\n' >"$dir/password")
  fi
  chmod 0600 "$dir/password"
}

# Fails unless FTP_USER can write to its home $1 (the chroot) and every parent lets it through.
check_home_writable() {
  runuser -u "$FTP_USER" -- test -w "$1" -a -x "$1" ||
    die "user $FTP_USER cannot write to $1; every parent directory of DIR must be world-traversable (o+x)"
}

# Stops a server already started for DIR (a start restarts it), removes DIR/env (only a
# successful start writes it) and prepares DIR/home so the FTP user can reach its home below
# it; prints the home (DIR/home/ftp-root).
reset_instance_dir() {
  local dir=$1
  stop_instance "$dir"
  rm -f "$dir/env"
  chmod 0711 "$dir"
  mkdir -p "$dir/home"
  chmod 0711 "$dir/home"
  echo "$dir/home/ftp-root"
}
