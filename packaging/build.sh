#!/usr/bin/env bash
# Builds the sdnlinkd DEB and RPM: the one documented packaging command.
#
#   bash packaging/build.sh                 # cargo build --release, then both packages
#   bash packaging/build.sh --binary PATH   # package an already built sdnlinkd instead
#
# Packages land in $CARGO_TARGET_DIR/packages/ (default target/packages/). Installs cargo-deb and
# cargo-generate-rpm with `cargo install --locked` when missing. The lab binary (sdnlink-lab) is
# not packaged.
set -euo pipefail

usage() { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; }

binary=""
while [ $# -gt 0 ]; do
    case "$1" in
        --binary) binary="${2:?--binary needs a path}"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "build.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
target="${CARGO_TARGET_DIR:-$repo/target}"
case "$target" in /*) ;; *) target="$repo/$target" ;; esac
out="$target/packages"
# cargo-deb and cargo-generate-rpm both read the binary from <target-dir>/release/. Packaging from
# a staging target dir lets them take a stripped copy (cargo-generate-rpm does not strip, and
# [profile.release] keeps line tables for backtraces) without touching cargo's own build output.
stage="$out/stage"

need_tool() {
    local sub="$1" crate="$2"
    if ! cargo "$sub" --version >/dev/null 2>&1; then
        echo "build.sh: installing $crate" >&2
        cargo install --locked "$crate"
    fi
}
need_tool deb cargo-deb
need_tool generate-rpm cargo-generate-rpm
command -v strip >/dev/null || { echo "build.sh: strip not found (apt-get install binutils)" >&2; exit 1; }

if [ -z "$binary" ]; then
    cargo build --release -p sdnlinkd --bin sdnlinkd
    binary="$target/release/sdnlinkd"
fi
[ -x "$binary" ] || { echo "build.sh: no executable at $binary" >&2; exit 1; }

rm -rf "$stage" "$out"/*.deb "$out"/*.rpm
mkdir -p "$stage/release" "$out"
install -m 0755 "$binary" "$stage/release/sdnlinkd"
strip --strip-unneeded "$stage/release/sdnlinkd"
# The manual page and the completions come from the binary's own clap definition, so they
# always match the options it has. Man pages ship gzipped (Debian policy 12.1; rpm's
# brp-compress would do the same, but cargo-generate-rpm runs no brp scripts).
"$stage/release/sdnlinkd" man | gzip -9n >"$stage/release/sdnlinkd.1.gz"
for shell in bash zsh fish; do
    "$stage/release/sdnlinkd" completions "$shell" >"$stage/release/sdnlinkd.$shell"
done

# Both read [package.metadata.*] of crates/sdnlinkd/Cargo.toml; its asset paths are relative to
# that crate, except target/release/..., which both map to the target dir.
CARGO_TARGET_DIR="$stage" cargo deb -p sdnlinkd --no-build --no-strip --output "$out/"
cargo generate-rpm -p crates/sdnlinkd --target-dir "$stage" --output "$out/"
rm -rf "$stage"

echo "build.sh: packages in $out:"
ls -1 "$out"/*.deb "$out"/*.rpm
