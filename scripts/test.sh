#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine with the Rust toolchain:
# installs the system packages the tests drive (Postfix as the submitting MTA, unbound
# as the validating resolver of dns.dnssec = "trust-ad", redis-server for [cluster];
# dpkg-dev, lintian, man-db,
# bsdextrautils and adduser for the Debian package test), then checks formatting and
# lints, runs every test, and builds, installs, checks and purges the Debian package
# (scripts/test-deb.sh, as root only). The fuzz corpora (fuzz/corpus/) are replayed by
# the owning crates' tests/fuzz_corpus.rs (docs/fuzzing.md).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
[ -x /usr/sbin/postfix ] || need+=(postfix)
command -v unbound >/dev/null || need+=(unbound)
# dkimpy verifies the DKIM signature of mailed TLS reports (tests/tlsrpt.rs); openssl
# makes the test's RSA key.
/usr/bin/python3 -c 'import dkim' 2>/dev/null || need+=(python3-dkim)
command -v openssl >/dev/null || need+=(openssl)
command -v redis-server >/dev/null || need+=(redis-server)
command -v dpkg-shlibdeps >/dev/null || need+=(dpkg-dev)
command -v lintian >/dev/null || need+=(lintian)
command -v man >/dev/null || need+=(man-db)
command -v col >/dev/null || need+=(bsdextrautils)
command -v adduser >/dev/null || need+=(adduser)
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "scripts/test.sh: needs root to install: ${need[*]}" >&2
        exit 1
    fi
    # Postfix without a prompt and without a system listener: the tests run private
    # instances with `postfix -c DIR start-fg`.
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}"
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# Licences, sources (crates.io only) and duplicate versions (deny.toml). cargo-deny
# from crates.io, pinned; about 3 CPU-minutes to install, once per machine.
cargo_deny_version=0.20.2
if ! cargo deny --version 2>/dev/null | grep -qF "$cargo_deny_version"; then
    cargo install --locked --quiet cargo-deny --version "$cargo_deny_version"
fi
cargo deny --locked check bans licenses sources
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace --locked "$@" 2>&1 | tee "$log"
# The benchmark harness's own parsing and arithmetic (bench/, docs/benchmarks.md).
python3 -m unittest bench/test_mxbench.py
# The Debian package: build (release), dpkg -i, checks, dpkg -r/--purge, lintian.
deb_status=0
if [ "$(id -u)" -eq 0 ]; then
    scripts/test-deb.sh || deb_status=$?
else
    echo "deb: skipped (scripts/test-deb.sh needs root)"
fi
# One closing line for the whole Rust suite (cargo's last line is the doc-tests').
awk '/^test result:/ { p += $4; f += $6 } END { printf "cargo: %d passed, %d failed\n", p, f }' "$log"
exit "$deb_status"
