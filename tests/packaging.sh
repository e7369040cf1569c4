#!/usr/bin/env bash
# The Debian package: builds it with cargo-deb (packaging/build-deb.sh, which installs cargo-deb
# when missing), then checks its contents and control data, runs the packaged binary, verifies
# the packaged unit with `systemd-analyze verify`, and (as root, where no ferrysync is installed)
# installs, removes and purges it with dpkg to exercise the maintainer scripts.
#   bash tests/packaging.sh
# FERRYSYNC_PACKAGING_INSTALL=0 skips the dpkg install cycle (it adds a `ferrysync` system user
# to this machine, which purge leaves in place by design; when the user and its group did not
# exist before the cycle, the script removes them again at its end).
set -euo pipefail
cd "$(dirname "$0")/.."

passed=0
failed=0
pass() {
  passed=$((passed + 1))
  echo "ok   $1"
}
fail() {
  failed=$((failed + 1))
  echo "FAIL $1" >&2
}
# check NAME COMMAND...: one counted check.
check() {
  local name=$1
  shift
  if "$@"; then pass "$name"; else fail "$name"; fi
}
finish() {
  echo "packaging: $passed passed, $failed failed"
  [[ $failed == 0 ]]
}

# Tools: systemd-analyze (package systemd), shellcheck and man (man-db), from Debian's packages when missing.
missing=()
command -v systemd-analyze >/dev/null || missing+=(systemd)
command -v shellcheck >/dev/null || missing+=(shellcheck)
command -v man >/dev/null || missing+=(man-db)
if ((${#missing[@]})); then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

work=$(mktemp -d /tmp/ferrysync-packaging.XXXXXX)
installed_by_us=
user_added_by_us=
group_added_by_us=
cleanup() {
  if [[ -n $installed_by_us ]]; then dpkg --purge ferrysync >/dev/null 2>&1 || true; fi
  # The package's purge keeps its user (by design); a test run does not.
  if [[ -n $user_added_by_us ]] && getent passwd ferrysync >/dev/null; then
    userdel ferrysync >/dev/null 2>&1 || echo "packaging: userdel ferrysync failed" >&2
  fi
  if [[ -n $group_added_by_us ]] && getent group ferrysync >/dev/null; then
    groupdel ferrysync >/dev/null 2>&1 || echo "packaging: groupdel ferrysync failed" >&2
  fi
  rm -rf "$work"
}
trap cleanup EXIT

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)

# 1. Build.
if bash packaging/build-deb.sh --output "$work/" >"$work/build.log" 2>&1; then
  pass "cargo deb builds the package"
else
  tail -40 "$work/build.log" >&2
  fail "cargo deb builds the package"
  finish
  exit 1
fi
shopt -s nullglob
debs=("$work"/ferrysync_*.deb)
shopt -u nullglob
if [[ ${#debs[@]} != 1 ]]; then
  fail "exactly one ferrysync_*.deb in the output (found ${#debs[@]})"
  finish
  exit 1
fi
deb=${debs[0]}
echo "     $(basename "$deb"): $(du -h "$deb" | cut -f1)"

# 2. Contents (dpkg-deb -c) and control data (dpkg-deb -I).
dpkg-deb -c "$deb" | awk '{print $1, $NF}' >"$work/contents"
dpkg-deb -I "$deb" >"$work/info"
dpkg-deb -f "$deb" Depends >"$work/depends"
has_file() { grep -qxF -- "$1 $2" "$work/contents"; }
check "binary /usr/bin/ferrysync, mode 755" has_file -rwxr-xr-x ./usr/bin/ferrysync
check "unit /lib/systemd/system/ferrysync.service" has_file -rw-r--r-- ./lib/systemd/system/ferrysync.service
check "doc /usr/share/doc/ferrysync/README.md" has_file -rw-r--r-- ./usr/share/doc/ferrysync/README.md
check "doc example /usr/share/doc/ferrysync/examples/example.yaml" \
  has_file -rw-r--r-- ./usr/share/doc/ferrysync/examples/example.yaml
check "example job /etc/ferrysync/jobs/example.yaml.disabled" \
  has_file -rw-r--r-- ./etc/ferrysync/jobs/example.yaml.disabled
check "bash completion /usr/share/bash-completion/completions/ferrysync" \
  has_file -rw-r--r-- ./usr/share/bash-completion/completions/ferrysync
check "zsh completion /usr/share/zsh/vendor-completions/_ferrysync" \
  has_file -rw-r--r-- ./usr/share/zsh/vendor-completions/_ferrysync
check "fish completion /usr/share/fish/vendor_completions.d/ferrysync.fish" \
  has_file -rw-r--r-- ./usr/share/fish/vendor_completions.d/ferrysync.fish
check "man page /usr/share/man/man1/ferrysync.1.gz" has_file -rw-r--r-- ./usr/share/man/man1/ferrysync.1.gz
check "job schema /usr/share/ferrysync/job.schema.json" has_file -rw-r--r-- ./usr/share/ferrysync/job.schema.json
no_job_in_etc() { ! grep -qE '^[^ ]+ \./etc/ferrysync/jobs/.*\.ya?ml$' "$work/contents"; }
check "no *.yaml/*.yml in /etc/ferrysync/jobs (the agent would load it)" no_job_in_etc
is_conffile() { dpkg-deb --ctrl-tarfile "$deb" | tar -xO ./conffiles | grep -qxF "$1"; }
check "the example job is a conffile" is_conffile /etc/ferrysync/jobs/example.yaml.disabled
for s in postinst prerm postrm; do
  check "maintainer script $s in the control archive" grep -qE "^ +[0-9]+ bytes, +[0-9]+ lines +\* +$s " "$work/info"
done
check "Depends: ca-certificates" grep -qE '(^|, )ca-certificates(,|$| )' "$work/depends"
check "Depends: adduser (postinst uses it)" grep -qE '(^|, )adduser(,|$| )' "$work/depends"
name_version() { [[ $(dpkg-deb -f "$deb" Package) == ferrysync && $(dpkg-deb -f "$deb" Version) == "$version"-* ]]; }
check "Package ferrysync, version $version" name_version

# 3. The maintainer scripts as packaged: the ones in packaging/debian/, valid sh, and none of them
# enables or starts the service (an upgrade's `try-restart` only restarts a running agent).
mkdir "$work/control"
dpkg-deb -e "$deb" "$work/control"
same_executable() { cmp -s "$1" "$2" && [[ -x $1 ]]; }
for s in postinst prerm postrm; do
  check "$s is packaging/debian/$s, executable" same_executable "$work/control/$s" "packaging/debian/$s"
done
check "maintainer scripts pass shellcheck -s sh" \
  shellcheck -s sh "$work/control/postinst" "$work/control/prerm" "$work/control/postrm"
never_starts() {
  ! grep -nE 'systemctl[^#]*[[:space:]](enable|start|restart|reenable|--now)([[:space:]]|$)|deb-systemd-(invoke|helper)' "$@"
}
check "maintainer scripts never enable or start the service" \
  never_starts "$work/control/postinst" "$work/control/prerm" "$work/control/postrm"

# 4. The packaged binary runs.
root="$work/root"
dpkg-deb -x "$deb" "$root"
bin="$root/usr/bin/ferrysync"
prints_version() { [[ $("$bin" --version) == "ferrysync $version" ]]; }
check "ferrysync --version prints ferrysync $version" prints_version
# The generated files are the packaged binary's own: completions and schema as it prints them,
# a man page that gzip and man read without a warning and that names every command.
same_output() { cmp -s "$1" <("$bin" "${@:2}"); }
check "bash completion is what the binary generates" same_output "$root/usr/share/bash-completion/completions/ferrysync" completions bash
check "zsh completion is what the binary generates" same_output "$root/usr/share/zsh/vendor-completions/_ferrysync" completions zsh
check "fish completion is what the binary generates" same_output "$root/usr/share/fish/vendor_completions.d/ferrysync.fish" completions fish
check "job.schema.json is what \`ferrysync schema\` prints" same_output "$root/usr/share/ferrysync/job.schema.json" schema
completes() {
  bash -c 'source "$1" && complete -p ferrysync' _ "$root/usr/share/bash-completion/completions/ferrysync" >/dev/null
}
check "bash loads the completion (complete -p ferrysync)" completes
check "gzip -t reads the man page" gzip -t "$root/usr/share/man/man1/ferrysync.1.gz"
man_reads() {
  local err c
  if ! err=$(MANWIDTH=80 man --warnings -E UTF-8 -l "$root/usr/share/man/man1/ferrysync.1.gz" 2>&1 >"$work/man.txt"); then
    echo "$err" >&2
    return 1
  fi
  if [[ -n $err ]]; then
    echo "$err" >&2
    return 1
  fi
  for c in run sync status history check demo schema; do
    grep -q "^   ferrysync $c\$" "$work/man.txt" || { echo "man page lacks ferrysync $c" >&2; return 1; }
  done
  grep -q "^EXIT STATUS" "$work/man.txt"
}
check "man -l renders the man page without warnings, every command in it" man_reads

# As installed, /etc/ferrysync/jobs holds no job: the example is ignored under its .disabled name.
no_jobs() { local out; out=$("$bin" check --jobs "$1") && grep -q "no job files" <<<"$out"; }
check "check --jobs /etc/ferrysync/jobs (as packaged): no job files, exit 0" no_jobs "$root/etc/ferrysync/jobs"
# Enabled the documented way (copied to a .yaml name, password in the environment), it is valid.
mkdir "$work/jobs"
cp "$root/etc/ferrysync/jobs/example.yaml.disabled" "$work/jobs/partner.yaml"
job_ok() {
  local out
  out=$(PARTNER_PASS=secret "$bin" check --jobs "$1") && echo "     $out" && grep -q "^ok   $2 " <<<"$out"
}
check "check --jobs accepts the example job once copied to partner.yaml" job_ok "$work/jobs" partner

# 5. The packaged unit passes `systemd-analyze verify` with no message at all (unknown keys are
# only warnings there). Verify resolves ExecStart= on this machine, so it sees a copy of the
# unit whose /usr/bin/ferrysync is the extracted binary; nothing else is changed.
mkdir "$work/unit"
sed "s#/usr/bin/ferrysync#$bin#g" "$root/lib/systemd/system/ferrysync.service" >"$work/unit/ferrysync.service"
check "the packaged unit is packaging/ferrysync.service" \
  cmp -s "$root/lib/systemd/system/ferrysync.service" packaging/ferrysync.service
verify_silent() {
  local out rc=0
  out=$(systemd-analyze verify "$1" 2>&1) || rc=$?
  [[ -n $out ]] && echo "$out" >&2
  [[ $rc == 0 && -z $out ]]
}
check "systemd-analyze verify ferrysync.service: no errors, no warnings" verify_silent "$work/unit/ferrysync.service"

# 6. Install, remove and purge with dpkg: the maintainer scripts on a real system.
if [[ ${FERRYSYNC_PACKAGING_INSTALL:-1} == 0 ]]; then
  echo "     dpkg install cycle skipped (FERRYSYNC_PACKAGING_INSTALL=0)"
elif [[ $(id -u) != 0 ]]; then
  echo "     dpkg install cycle skipped (needs root)"
elif status=$(dpkg-query -W -f='${Status}' ferrysync 2>/dev/null) && [[ $status != *not-installed ]] ||
  [[ -e /usr/bin/ferrysync ]]; then
  echo "     dpkg install cycle skipped (a ferrysync package or /usr/bin/ferrysync is on this machine)"
elif ! dpkg-query -W -f='${Status}\n' adduser ca-certificates 2>/dev/null | grep -c '^install ok installed$' | grep -qx 2; then
  echo "     dpkg install cycle skipped (adduser or ca-certificates is not installed)"
else
  installed_by_us=1
  getent passwd ferrysync >/dev/null || user_added_by_us=1
  getent group ferrysync >/dev/null || group_added_by_us=1
  wants=/etc/systemd/system/multi-user.target.wants/ferrysync.service
  quiet() { "$@" >/dev/null; }
  system_user() {
    getent group ferrysync >/dev/null && [[ $(id -u ferrysync) -lt 1000 && $(id -gn ferrysync) == ferrysync ]]
  }
  owner_mode() { [[ $(stat -c "%U:%G %a" "$1") == "$2" ]]; }
  check "dpkg -i installs the package" quiet dpkg -i "$deb"
  check "postinst created the ferrysync system user and group" system_user
  check "/var/lib/ferrysync: ferrysync:ferrysync, mode 750" owner_mode /var/lib/ferrysync "ferrysync:ferrysync 750"
  check "/etc/ferrysync/jobs: root:ferrysync, mode 750" owner_mode /etc/ferrysync/jobs "root:ferrysync 750"
  check "the service is not enabled" test ! -e "$wants"
  check "the installed agent checks the installed jobs directory" quiet /usr/bin/ferrysync check --jobs /etc/ferrysync/jobs
  touch /var/lib/ferrysync/ferrysync.db
  check "dpkg -r removes the package" quiet dpkg -r ferrysync
  check "remove keeps the state and the example conffile" \
    test -f /var/lib/ferrysync/ferrysync.db -a -f /etc/ferrysync/jobs/example.yaml.disabled -a ! -e /usr/bin/ferrysync
  purge_keeps_state() { dpkg -P ferrysync >/dev/null && [[ -f /var/lib/ferrysync/ferrysync.db ]]; }
  check "purge keeps a non-empty /var/lib/ferrysync" purge_keeps_state
  rm -f /var/lib/ferrysync/ferrysync.db
  dpkg -i "$deb" >/dev/null
  purge_cleans() {
    dpkg -P ferrysync >/dev/null && [[ ! -e /var/lib/ferrysync && ! -e /etc/ferrysync/jobs/example.yaml.disabled ]] &&
      getent passwd ferrysync >/dev/null
  }
  check "purge removes an empty /var/lib/ferrysync and the conffile, keeps the user" purge_cleans
  installed_by_us=
fi

finish
