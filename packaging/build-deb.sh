#!/usr/bin/env bash
# Builds the Debian package with cargo-deb from [package.metadata.deb] in Cargo.toml: a release
# build, then dist/ferrysync_VERSION-1_ARCH.deb with the binary, the systemd unit (not enabled),
# the docs, an example job as a conffile, the maintainer scripts in packaging/debian/, and the
# files the release binary generates from its own definitions: shell completions (bash, zsh,
# fish), the man page and the JSON Schema of job files (into TARGET_DIR/release/generated/,
# which the assets name as target/release/generated/).
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
# The generated assets come from the binary that is packaged: build it first, then let cargo-deb
# pack without building again.
cargo build --release --locked
target_dir=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
bin="$target_dir/release/ferrysync"
generated="$target_dir/release/generated"
mkdir -p "$generated"
"$bin" completions bash >"$generated/ferrysync.bash"
"$bin" completions zsh >"$generated/_ferrysync"
"$bin" completions fish >"$generated/ferrysync.fish"
"$bin" manpage | gzip -9n >"$generated/ferrysync.1.gz"
"$bin" schema >"$generated/job.schema.json"

exec cargo deb --locked --no-build "${output[@]}" "$@"
