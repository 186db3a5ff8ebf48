#!/usr/bin/env bash
# The .deb as a user gets it: builds it with `cargo deb`, installs it with
# dpkg, checks its files and unit (systemd-analyze verify: skipped where
# systemd is not installed, except under CI=true), serves the bundled sample image with the installed server to
# the installed client, byte-compared, also after a reload (SIGHUP, what
# `systemctl reload` sends), checks that the installed client has no load
# generator (no `bench`, no `baseline` listener), and removes and purges
# the package again, also when a step fails. Needs root and cargo-deb
# (`cargo install cargo-deb --locked`).
# .ci/run runs it; it refuses to touch an iot-ota-server already installed.
set -euo pipefail
cd "$(dirname "$0")/../../.."

package=iot-ota-server
if dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -Eq 'installed|config-files'; then
    echo "ci-check: $package (or its configuration) is already installed here; purge it first (dpkg --purge $package)" >&2
    exit 1
fi

work=$(mktemp -d)
server_pid=
probe_pid=
cleanup() {
    for pid in "$server_pid" "$probe_pid"; do
        if [ -n "$pid" ]; then
            kill "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        fi
    done
    # Installed, or removed with its conffiles left: purged.
    if dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -Eq 'installed|config-files'; then
        dpkg --purge "$package" >/dev/null
    fi
    rm -rf "$work"
}
trap cleanup EXIT

# Checks passed so far; the last line counts them as test runners do.
passed=0
fail() {
    echo "ci-check: FAILED: $*" >&2
    if [ -f "$work/server.log" ]; then
        echo "--- server log" >&2
        cat "$work/server.log" >&2
    fi
    echo "ci-check: $passed passed, 1 failed"
    exit 1
}

echo "ci-check: cargo deb"
cargo deb --locked --output "$work/" >"$work/cargo-deb.log" 2>&1 || {
    cat "$work/cargo-deb.log" >&2
    fail "cargo deb"
}
deb=$(ls "$work"/*.deb)
echo "ci-check: built $(basename "$deb"), $(stat -c %s "$deb") bytes"

dpkg -i "$deb" >/dev/null || fail "dpkg -i $deb"
passed=$((passed + 1))

for path in /usr/bin/iot-ota-server /usr/bin/iot-ota-client; do
    [ -x "$path" ] || fail "$path is not installed"
done
unit=/usr/lib/systemd/system/iot-ota-server.service
for path in "$unit" /etc/default/iot-ota-server /usr/lib/tmpfiles.d/iot-ota-server.conf \
    /usr/share/doc/iot-ota-server/README.md; do
    [ -f "$path" ] || fail "$path is not installed"
done
dpkg-query -W -f='${Conffiles}\n' "$package" | grep -q '/etc/default/iot-ota-server' \
    || fail "/etc/default/iot-ota-server is not a conffile"
summary=$(dpkg-query -W -f='${binary:Summary}' "$package")
[ "${#summary}" -le 79 ] || fail "the description's first line has ${#summary} characters: '$summary'"
# The defaults file is read by systemd and must also be valid shell.
(. /etc/default/iot-ota-server && [ "$FIRMWARE_DIR" = /srv/firmware ]) \
    || fail "/etc/default/iot-ota-server does not set FIRMWARE_DIR=/srv/firmware"
passed=$((passed + 1))

# No load generator in the installed client (the loadgen feature, which
# cargo deb leaves out): its `baseline` answers any datagram with 1 KiB or
# more, an amplifier for anyone who forges a source address, and `bench`
# floods any address. Each is refused at once with exit 2 and one line,
# and holds no UDP socket while it runs (its descriptors' socket inodes
# looked up in /proc/net/udp and udp6); --help offers neither. The
# arguments would start a listener and a 30 s run in a client that has them.
udp_sockets_of() {
    local inode
    for inode in $(ls -l "/proc/$1/fd" 2>/dev/null | sed -n 's/.*socket:\[\([0-9]*\)\]$/\1/p'); do
        awk -v inode="$inode" '$10 == inode { print $2 }' /proc/net/udp /proc/net/udp6
    done
}
refused() {
    local sockets= socket status=0
    /usr/bin/iot-ota-client "$@" >"$work/refused.out" 2>"$work/refused.err" &
    probe_pid=$!
    for _ in $(seq 20); do
        for socket in $(udp_sockets_of "$probe_pid"); do
            case " $sockets " in
            *" $socket "*) ;;
            *) sockets="${sockets:+$sockets }$socket" ;;
            esac
        done
        kill -0 "$probe_pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$probe_pid" 2>/dev/null; then
        fail "iot-ota-client $* still ran after 2 s (UDP sockets: ${sockets:-none seen}):" \
            "the installed client has a load generator: $(cat "$work/refused.err")"
    fi
    wait "$probe_pid" || status=$?
    probe_pid=
    [ "$status" = 2 ] || fail "iot-ota-client $*: exit status $status, not 2: $(cat "$work/refused.err")"
    [ -z "$sockets" ] || fail "iot-ota-client $* opened UDP sockets: $sockets"
    [ "$(wc -l <"$work/refused.err")" = 1 ] \
        && grep -q 'is part of the load generator, which this build lacks' "$work/refused.err" \
        || fail "iot-ota-client $*: not the one-line refusal: $(cat "$work/refused.err")"
    [ ! -s "$work/refused.out" ] || fail "iot-ota-client $* printed to stdout"
}
refused baseline --listen 127.0.0.1:56831 --size 65507
refused bench 127.0.0.1:56831 --baseline --devices 1 --duration-ms 30000
client_help=$(/usr/bin/iot-ota-client --help) || fail "iot-ota-client --help"
case $client_help in
*bench* | *baseline*)
    fail "iot-ota-client --help offers the load generator: $(printf '%s\n' "$client_help" | grep -E 'bench|baseline')"
    ;;
esac
echo "ci-check: the installed client refuses bench and baseline, and its help names neither"
passed=$((passed + 1))

if command -v systemd-analyze >/dev/null 2>&1; then
    # It exits 0 on a directive it ignores, and says so: any output fails.
    verify=$(systemd-analyze verify "$unit" 2>&1) || fail "systemd-analyze verify $unit: $verify"
    [ -z "$verify" ] || fail "systemd-analyze verify $unit: $verify"
    echo "ci-check: systemd-analyze verify: nothing to report"
    # The postinst runs the tmpfiles entry only under a running systemd:
    # applied here to an empty root instead.
    mkdir "$work/root"
    systemd-tmpfiles --create --root="$work/root" /usr/lib/tmpfiles.d/iot-ota-server.conf \
        || fail "systemd-tmpfiles --create iot-ota-server.conf"
    [ "$(stat -c '%a %U' "$work/root/srv/firmware" 2>/dev/null)" = "755 root" ] \
        || fail "the tmpfiles.d entry did not create /srv/firmware, root's, mode 755"
    passed=$((passed + 1))
elif [ "${CI:-}" = true ]; then
    fail "systemd-analyze is required under CI=true (Debian package systemd)"
else
    echo "ci-check: SKIPPED: systemd-analyze not installed: unit not verified"
fi

# The installed server on a copy of the bundled images, on a port the
# kernel picks; its "listening on" line names it.
mkdir "$work/firmware"
cp updates/*.fmu "$work/firmware/"
sample=$(ls updates/*.fmu | head -n 1)
/usr/bin/iot-ota-server -d "$work/firmware" -l 127.0.0.1:0 --rescan 0 --settle 0 2>"$work/server.log" &
server_pid=$!
address=
for _ in $(seq 100); do
    address=$(sed -n 's/.*listening on \([0-9.]*:[0-9]*\).*/\1/p' "$work/server.log" | head -n 1)
    [ -n "$address" ] && break
    kill -0 "$server_pid" 2>/dev/null || fail "the installed server exited"
    sleep 0.1
done
[ -n "$address" ] || fail "the installed server did not report its address within 10 s"

pid_of() { basename "$1" | cut -d_ -f1; }
timeout 60 /usr/bin/iot-ota-client "$address" --pid "$(pid_of "$sample")" --version 0.0.1 \
    --timeout-ms 200 -o "$work/download.bin" || fail "the installed client did not download"
cmp "$sample" "$work/download.bin" || fail "the download differs from $sample"
echo "ci-check: downloaded $(basename "$sample") byte-exact"
passed=$((passed + 1))

# A newer image of the same product, published while the server runs with
# no timed rescan (nor settling time): taken in at once (inotify saw it renamed into
# place) or on SIGHUP (what `systemctl reload` sends, for a file system inotify cannot
# watch), as the server's log says, then served.
images=$(ls "$work/firmware" | wc -l)
newer="$work/firmware/$(pid_of "$sample")_200_0_0_APP.fmu"
head -c 5000 /dev/urandom >"$work/newer.tmp"
mv "$work/newer.tmp" "$newer"
kill -HUP "$server_pid"
rescanned=0
for _ in $(seq 100); do
    if grep -Eq "catalog \((inotify|SIGHUP)\): $((images + 1)) images" "$work/server.log"; then
        rescanned=1
        break
    fi
    sleep 0.1
done
[ "$rescanned" = 1 ] || fail "no rescan of $((images + 1)) images logged within 10 s of the publish and SIGHUP"
timeout 60 /usr/bin/iot-ota-client "$address" --pid "$(pid_of "$sample")" --version 199.0.0 \
    --timeout-ms 200 -o "$work/newer.bin" || fail "the newly published image was not served"
cmp "$newer" "$work/newer.bin" || fail "the download after SIGHUP differs from $newer"
echo "ci-check: after publishing (and SIGHUP), downloaded the newly published image byte-exact"
passed=$((passed + 1))

kill -TERM "$server_pid"
status=0
wait "$server_pid" || status=$?
server_pid=
[ "$status" = 0 ] || fail "the server exited $status on SIGTERM"
passed=$((passed + 1))

dpkg -r "$package" >/dev/null || fail "dpkg -r $package"
[ ! -e /usr/bin/iot-ota-server ] || fail "/usr/bin/iot-ota-server is still there after dpkg -r"
[ -f /etc/default/iot-ota-server ] || fail "dpkg -r removed the conffile /etc/default/iot-ota-server"
dpkg --purge "$package" >/dev/null || fail "dpkg --purge $package"
[ ! -e /etc/default/iot-ota-server ] || fail "/etc/default/iot-ota-server is still there after dpkg --purge"
passed=$((passed + 1))
echo "ci-check: $passed passed, 0 failed"
