#!/usr/bin/env bash
# Builds the Debian package with cargo-deb from [package.metadata.deb] in Cargo.toml: a release
# build, then dist/ferrysync_VERSION-1_ARCH.deb with the binary, the systemd unit (not enabled),
# the docs, an example job as a conffile and the maintainer scripts in packaging/debian/.
# Installs cargo-deb first (`cargo install`, a few minutes) when it is missing or another version.
#   bash packaging/build-deb.sh                 # -> dist/
#   bash packaging/build-deb.sh -o DIR/ [...]   # other cargo-deb options are passed on
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_DEB_VERSION=3.8.0 # builds with rustc >= 1.85

if [[ $(cargo deb --version 2>/dev/null || true) != "cargo-deb $CARGO_DEB_VERSION" ]]; then
  echo "build-deb: installing cargo-deb $CARGO_DEB_VERSION" >&2
  cargo install cargo-deb --version "$CARGO_DEB_VERSION" --locked
fi

output=(--output dist/)
for arg in "$@"; do
  case $arg in -o | --output | --output=* | -o?*) output=() ;; esac
done
exec cargo deb --locked "${output[@]}" "$@"
