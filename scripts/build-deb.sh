#!/usr/bin/env bash
# Builds the Debian package target/debian/mxgate_VERSION-REV_ARCH.deb from this tree
# (docs/packaging.md): the release binary, then the generated man pages, completions,
# packaged configuration and unit (crates/mxgate/src/manpage.rs), then cargo-deb with
# the metadata in crates/mxgate/Cargo.toml. Prints the package's path last.
set -euo pipefail
cd "$(dirname "$0")/.."

# cargo-deb from crates.io (about 45 s to install on 2 cores); pinned so that the
# maintainer-script fragments it adds do not change under us.
cargo_deb_version=3.8.0
if ! cargo deb --version 2>/dev/null | grep -qF "$cargo_deb_version"; then
    cargo install --locked --quiet cargo-deb --version "$cargo_deb_version"
fi

cargo build --release --locked -p mxgate

# cargo-deb maps target/release/ to the real target directory.
target_dir=$(cargo metadata --format-version 1 --no-deps --locked |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
if [ "$target_dir" != "$PWD/target" ]; then
    echo "build-deb.sh: the unit path in crates/mxgate/Cargo.toml assumes target/ here, not $target_dir" >&2
    exit 1
fi
assets=$target_dir/release/package-assets
rm -rf "$assets"
mkdir -p "$assets"
# The pages carry the date of the last commit, so that a rebuild is identical.
date=$(git log -1 --format=%cs 2>/dev/null || date -u +%F)
MXGATE_ASSETS_DIR=$assets MXGATE_MAN_DATE=$date \
    cargo test --locked --quiet -p mxgate --bin mxgate manpage::tests::write_package_assets \
    -- --exact >/dev/null
gzip -9n "$assets/mxgate.8" "$assets/mxgate.toml.5"

export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}
# cargo-deb prints the package's path.
cargo deb -p mxgate --no-build --quiet
