#!/bin/sh
# Installs what `make dist` needs to build static binaries for TARGET...
# (Rust target triples; `make dist` passes its DIST_TARGETS). Safe to run
# again: what is already there is kept, so a second run downloads nothing.
#
#   x86_64-unknown-linux-musl, aarch64-unknown-linux-musl
#       the stable toolchain's prebuilt std (`rustup target add`), linked
#       with the rust-lld that rustup ships.
#   armv7-unknown-linux-musleabihf, armv7-unknown-linux-musleabi,
#   arm-unknown-linux-musleabihf, mipsel-unknown-linux-musl,
#   mips-unknown-linux-musl
#       std built from source (`-Z build-std`: nightly and its rust-src),
#       because the MIPS targets are tier 3 and ship no prebuilt std, and
#       the ARM ones then share the same recipe; linked by zig's clang and
#       musl (the ziglang package from PyPI) through cargo-zigbuild (from
#       crates.io), so no C cross toolchain is needed.
#
# Everything comes from the package registries: rustup's own
# distribution server, PyPI and crates.io. Environment:
#   NIGHTLY      the nightly toolchain to use (default `nightly`; e.g.
#                `nightly-2026-05-19` to pin one); installed when missing
#   ZIGLANG_DIR  where the ziglang package goes (`pip install --target`,
#                so neither the system's Python nor the user's is changed)
set -eu

NIGHTLY=${NIGHTLY:-nightly}
ZIGLANG_DIR=${ZIGLANG_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/iot-ota-server/ziglang}
# The versions `make dist` was checked with; a newer zig may link differently.
ZIGLANG_VERSION=0.17.1
CARGO_ZIGBUILD_VERSION=0.24.1

say() { echo "toolchain: $*"; }
fail() { echo "toolchain: $*" >&2; exit 1; }

command -v rustup >/dev/null 2>&1 || fail "needs rustup (https://rustup.rs)"

stable_targets=
source_targets=
for target in "$@"; do
    case $target in
        x86_64-unknown-linux-musl | aarch64-unknown-linux-musl)
            stable_targets="$stable_targets $target" ;;
        armv7-unknown-linux-musleabihf | armv7-unknown-linux-musleabi \
            | arm-unknown-linux-musleabihf | mipsel-unknown-linux-musl \
            | mips-unknown-linux-musl)
            source_targets="$source_targets $target" ;;
        *) fail "unknown target $target (see src/packaging/README.md, \"Builds for routers\")" ;;
    esac
done

installed_targets=$(rustup target list --installed)
for target in $stable_targets; do
    if ! echo "$installed_targets" | grep -qx "$target"; then
        say "rustup target add $target"
        rustup target add "$target"
    fi
done

[ -n "$source_targets" ] || exit 0

if ! rustup run "$NIGHTLY" rustc --version >/dev/null 2>&1; then
    say "rustup toolchain install $NIGHTLY"
    rustup toolchain install "$NIGHTLY" --profile minimal --component rust-src
elif ! rustup component list --installed --toolchain "$NIGHTLY" | grep -qx 'rust-src'; then
    say "rustup component add rust-src --toolchain $NIGHTLY"
    rustup component add rust-src --toolchain "$NIGHTLY"
fi

if [ "$(PYTHONPATH=$ZIGLANG_DIR python3 -m ziglang version 2>/dev/null)" != "$ZIGLANG_VERSION" ]; then
    python3 -m pip --version >/dev/null 2>&1 \
        || fail "needs python3 with pip (Debian: apt-get install python3-pip)"
    say "pip install ziglang==$ZIGLANG_VERSION into $ZIGLANG_DIR"
    rm -rf "$ZIGLANG_DIR"
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
        --target "$ZIGLANG_DIR" "ziglang==$ZIGLANG_VERSION"
fi

if [ "$(cargo-zigbuild --version 2>/dev/null)" != "cargo-zigbuild $CARGO_ZIGBUILD_VERSION" ]; then
    say "cargo install cargo-zigbuild $CARGO_ZIGBUILD_VERSION (a few minutes)"
    # Without CARGO_TARGET_DIR cargo builds the tool in a temporary
    # directory it removes; a CARGO_TARGET_DIR set for the product would
    # keep the tool's build in there.
    env -u CARGO_TARGET_DIR cargo install --locked --quiet \
        --version "$CARGO_ZIGBUILD_VERSION" cargo-zigbuild
fi
