#!/usr/bin/env bash
# Builds dist/ferrysync_VERSION_ARCH.deb from a release build: the binary, the systemd unit,
# /etc/ferrysync/jobs, a `ferrysync` system user and /var/lib/ferrysync.
#   bash packaging/build-deb.sh
set -euo pipefail
cd "$(dirname "$0")/.."
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
arch=$(dpkg --print-architecture)
cargo build --release --locked
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
install -Dm755 target/release/ferrysync "$root/usr/bin/ferrysync"
install -Dm644 packaging/ferrysync.service "$root/lib/systemd/system/ferrysync.service"
install -Dm644 README.md "$root/usr/share/doc/ferrysync/README.md"
install -Dm644 jobs/example.yaml "$root/usr/share/doc/ferrysync/example.yaml"
install -d -m750 "$root/etc/ferrysync/jobs"
install -d "$root/DEBIAN"
cat > "$root/DEBIAN/control" <<CONTROL
Package: ferrysync
Version: $version
Architecture: $arch
Maintainer: ferrysync developers <ferrysync@localhost>
Depends: ca-certificates
Section: net
Priority: optional
Description: unattended, scheduled directory sync over FTPS
 Reads YAML job definitions, diffs local folders and remote FTPS directories against a
 SQLite ledger with BLAKE3 checksums, and mirrors them on cron schedules.
CONTROL
cat > "$root/DEBIAN/postinst" <<'POSTINST'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
  getent group ferrysync >/dev/null || addgroup --system ferrysync
  getent passwd ferrysync >/dev/null || adduser --system --ingroup ferrysync --home /var/lib/ferrysync --no-create-home ferrysync
  install -d -o ferrysync -g ferrysync -m 750 /var/lib/ferrysync
  chgrp ferrysync /etc/ferrysync/jobs
  if [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi
fi
POSTINST
cat > "$root/DEBIAN/prerm" <<'PRERM'
#!/bin/sh
set -e
if [ -d /run/systemd/system ] && [ "$1" = remove ]; then systemctl stop ferrysync.service || true; fi
PRERM
chmod 755 "$root/DEBIAN/postinst" "$root/DEBIAN/prerm"
mkdir -p dist
dpkg-deb --root-owner-group --build "$root" "dist/ferrysync_${version}_${arch}.deb"
echo "built dist/ferrysync_${version}_${arch}.deb"
