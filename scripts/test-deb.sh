#!/usr/bin/env bash
# Builds the Debian package, installs it on this machine with dpkg, checks what it
# installed, reinstalls it over a changed conffile, removes and purges it, and runs
# lintian (docs/packaging.md). Needs root; meant for CI's throw-away machine or a
# development machine without a real mxgate installation. Works without a running
# systemd: the package then only records the unit as enabled.
# Ends with one line: "deb: N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "test-deb.sh: needs root (dpkg -i)" >&2
    exit 1
fi
if dpkg-query -W -f='${Status}' mxgate 2>/dev/null | grep -q 'installed\|config-files'; then
    echo "test-deb.sh: an mxgate package is installed here already; not touching it" >&2
    exit 1
fi

deb=$(scripts/build-deb.sh | tail -n 1)
if [ ! -f "$deb" ]; then
    echo "test-deb.sh: build-deb.sh made no package" >&2
    exit 1
fi
version=$(dpkg-deb -f "$deb" Version)

passed=0
failed=0
check() {
    local what=$1
    shift
    if "$@" >/tmp/test-deb.out 2>&1; then
        passed=$((passed + 1))
        echo "ok   $what"
    else
        failed=$((failed + 1))
        echo "FAIL $what"
        sed 's/^/     /' /tmp/test-deb.out | head -n 20
    fi
}
# The package must not outlive a failed run.
cleanup() { dpkg --purge mxgate >/dev/null 2>&1 || true; rm -f /tmp/test-deb.out; }
trap cleanup EXIT

mode_is() { [ "$(stat -c '%a %U:%G' "$1")" = "$2" ] || { stat -c '%a %U:%G %n' "$1"; return 1; }; }
absent() { [ ! -e "$1" ] && [ ! -L "$1" ] || { ls -ld "$1"; return 1; }; }
status_is() { [ "$(dpkg-query -W -f='${db:Status-Abbrev}' mxgate 2>/dev/null | tr -d ' ')" = "$1" ]; }
conffile_listed() { dpkg-query -W -f='${Conffiles}\n' mxgate | grep -q '^ /etc/mxgate/mxgate.toml '; }
user_is_system() {
    local entry uid home shell
    entry=$(getent passwd mxgate) || return 1
    IFS=: read -r _ _ uid _ _ home shell <<<"$entry"
    echo "$entry"
    [ "$uid" -lt 1000 ] && [ "$home" = /var/lib/mxgate ] && [ "$shell" = /usr/sbin/nologin ] &&
        getent group mxgate >/dev/null
}
unit=/usr/lib/systemd/system/mxgate.service
wants=/etc/systemd/system/multi-user.target.wants/mxgate.service
# deb-systemd-helper links to /lib/systemd/system (the same directory on merged /usr).
enabled() { [ -L "$wants" ] && [ "$(readlink -f "$wants")" = "$(readlink -f "$unit")" ]; }
# "Not started": no process runs the installed binary (other mxgate processes on a
# development machine run from target/).
not_running() { ! ls -l /proc/[0-9]*/exe 2>/dev/null | grep -q ' -> /usr/sbin/mxgate$'; }
man_renders() {
    local page=$1 needle=$2 out err
    err=$(mktemp)
    out=$(MANWIDTH=80 man --warnings -l "$page" 2>"$err" | col -b) || { cat "$err"; rm -f "$err"; return 1; }
    if [ -s "$err" ]; then cat "$err"; rm -f "$err"; return 1; fi
    rm -f "$err"
    grep -qF -- "$needle" <<<"$out" || { echo "no '$needle' in the page"; return 1; }
}
bash_completes() {
    bash -c 'source /usr/share/bash-completion/completions/mxgate && complete -p mxgate'
}

echo "== dpkg -i $(basename "$deb")"
check "dpkg -i installs" dpkg -i "$deb"
check "package installed" status_is ii
check "/usr/sbin/mxgate 755 root" mode_is /usr/sbin/mxgate "755 root:root"
check "mxgate --version is $version" sh -c "/usr/sbin/mxgate --version | grep -qF ' ${version%-*}'"
check "/etc/mxgate/mxgate.toml 644 root" mode_is /etc/mxgate/mxgate.toml "644 root:root"
check "mxgate.toml is a conffile" conffile_listed
check "mxgate system user and group" user_is_system
check "/var/lib/mxgate 700 mxgate" mode_is /var/lib/mxgate "700 mxgate:mxgate"
check "unit runs /usr/sbin/mxgate" grep -qx 'ExecStart=/usr/sbin/mxgate run --config /etc/mxgate/mxgate.toml' "$unit"
check "unit enabled" enabled
check "unit not started" not_running
check "check-config (as mxgate) on the installed config" \
    runuser -u mxgate -- /usr/sbin/mxgate check-config --config /etc/mxgate/mxgate.toml
check "man mxgate finds mxgate(8)" sh -c '[ "$(man -w mxgate)" = /usr/share/man/man8/mxgate.8.gz ]'
check "man -l mxgate(8) renders every command" man_renders /usr/share/man/man8/mxgate.8.gz "mxgate queue bounce"
check "man -l mxgate.toml(5) renders" man_renders /usr/share/man/man5/mxgate.toml.5.gz "policy.min_tls_version"
check "bash completion loads" bash_completes
check "zsh completion" test -s /usr/share/zsh/vendor-completions/_mxgate
check "fish completion" test -s /usr/share/fish/vendor_completions.d/mxgate.fish
# README.md's links (docs/*.md, ARCHITECTURE.md) resolve in the installed copy.
for f in copyright changelog.Debian.gz README.md ARCHITECTURE.md examples/mxgate.toml \
    $(grep -o '](docs/[a-z]*\.md)' README.md | tr -d '()]' | sort -u); do
    check "/usr/share/doc/mxgate/$f" mode_is "/usr/share/doc/mxgate/$f" "644 root:root"
done
check "lintian: no errors" lintian --fail-on error "$deb"

echo "== reinstall over a changed conffile"
echo '# local change' >>/etc/mxgate/mxgate.toml
touch /var/lib/mxgate/spooled
check "dpkg -i again (upgrade path)" dpkg -i "$deb"
check "local change kept" grep -qx '# local change' /etc/mxgate/mxgate.toml
check "state kept" test -e /var/lib/mxgate/spooled
check "still enabled" enabled

echo "== dpkg -r"
check "dpkg -r removes" dpkg -r mxgate
check "state is config-files" status_is rc
check "binary removed" absent /usr/sbin/mxgate
check "unit removed" absent "$unit"
check "man page removed" absent /usr/share/man/man8/mxgate.8.gz
check "conffile kept" grep -qx '# local change' /etc/mxgate/mxgate.toml
check "spool kept" test -e /var/lib/mxgate/spooled

echo "== dpkg --purge"
check "dpkg --purge purges" dpkg --purge mxgate
check "package gone" sh -c '! dpkg-query -W mxgate 2>/dev/null | grep -q .'
check "/etc/mxgate removed" absent /etc/mxgate
check "/var/lib/mxgate removed" absent /var/lib/mxgate
check "enablement removed" absent "$wants"
check "no mask left" absent /etc/systemd/system/mxgate.service
check "user kept (Debian keeps system users)" getent passwd mxgate

echo "deb: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
