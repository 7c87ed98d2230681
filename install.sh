#!/bin/sh
# Installs the gpustack binary from a release:
#
#   curl -fsSL <release-url>/install.sh | sh
#   curl -fsSL <release-url>/install.sh | sh -s -- --prefix ~/.local --service
#
# It picks the archive for this OS and architecture (the CUDA 12 build where nvidia-smi sees a
# GPU), checks it against the release's SHA256SUMS (and refuses it on a mismatch), unpacks it to
# PREFIX/lib/gpustack and links PREFIX/bin/gpustack. PREFIX is /usr/local when writable, else
# ~/.local (no root needed). --service adds a systemd user unit running `gpustack serve`.
#
# Environment: GPUSTACK_DOWNLOAD_URL (where the release's files are: a mirror, a test server),
# GPUSTACK_PREFIX (as --prefix), GPUSTACK_CPU_ONLY=1 (never the CUDA build).
set -eu

DOWNLOAD_URL="${GPUSTACK_DOWNLOAD_URL:-@DOWNLOAD_URL@}"
PREFIX="${GPUSTACK_PREFIX:-}"
SERVICE=0

say() { printf '%s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) [ $# -ge 2 ] || die "--prefix needs a folder"; PREFIX="$2"; shift 2 ;;
        --prefix=*) PREFIX="${1#--prefix=}"; shift ;;
        --service) SERVICE=1; shift ;;
        -h|--help) sed -n '2,14p' "$0" 2>/dev/null || true; exit 0 ;;
        *) die "unknown option $1 (try --prefix DIR, --service)" ;;
    esac
done

case "$DOWNLOAD_URL" in
    @*) die "set GPUSTACK_DOWNLOAD_URL to the release's download folder (this copy of install.sh names none)" ;;
esac

case "$(uname -s)" in
    Linux) os=linux ;;
    Darwin) os=macos ;;
    *) die "no build for $(uname -s) here; on Windows download the .zip from the release" ;;
esac
case "$(uname -m)" in
    x86_64|amd64) arch=x86_64 ;;
    aarch64|arm64) arch=arm64 ;;
    *) die "no build for the $(uname -m) architecture" ;;
esac

if command -v curl >/dev/null 2>&1; then
    fetch() { curl -fsSL --retry 3 -o "$2" "$1"; }
elif command -v wget >/dev/null 2>&1; then
    fetch() { wget -q -O "$2" "$1"; }
else
    die "curl or wget is needed"
fi
if command -v sha256sum >/dev/null 2>&1; then
    digest() { sha256sum "$1" | cut -d' ' -f1; }
elif command -v shasum >/dev/null 2>&1; then
    digest() { shasum -a 256 "$1" | cut -d' ' -f1; }
else
    die "sha256sum or shasum is needed to check the download"
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT INT TERM

fetch "$DOWNLOAD_URL/SHA256SUMS" "$work/SHA256SUMS" || die "cannot fetch $DOWNLOAD_URL/SHA256SUMS"

# The archive for this machine: gpustack-VERSION-OS-ARCH[-cuda12].tar.gz
find_archive() { grep -E "  gpustack-[^ ]+-$os-$arch$1\\.tar\\.gz\$" "$work/SHA256SUMS" | head -n 1 | cut -d' ' -f3; }
variant=""
if [ "$os" = linux ] && [ "${GPUSTACK_CPU_ONLY:-0}" != 1 ] && command -v nvidia-smi >/dev/null 2>&1 \
        && nvidia-smi -L >/dev/null 2>&1; then
    if [ -n "$(find_archive -cuda12)" ]; then
        variant=-cuda12
        say "NVIDIA GPU found: installing the CUDA 12 build"
    else
        say "NVIDIA GPU found, but this release has no CUDA build for $os-$arch: installing the CPU build"
    fi
fi
archive="$(find_archive "$variant")"
[ -n "$archive" ] || die "this release has no build for $os-$arch"
expected="$(grep -E "  $archive\$" "$work/SHA256SUMS" | cut -d' ' -f1)"

say "downloading $archive"
fetch "$DOWNLOAD_URL/$archive" "$work/$archive" || die "cannot fetch $DOWNLOAD_URL/$archive"
actual="$(digest "$work/$archive")"
if [ "$actual" != "$expected" ]; then
    die "checksum mismatch for $archive (expected $expected, got $actual): refusing to install it"
fi

if [ -z "$PREFIX" ]; then
    if [ -w /usr/local/bin ] && [ -w /usr/local/lib ]; then PREFIX=/usr/local; else PREFIX="$HOME/.local"; fi
fi
mkdir -p "$PREFIX/bin" "$PREFIX/lib" "$work/unpacked"
tar -xzf "$work/$archive" -C "$work/unpacked"
[ -x "$work/unpacked/gpustack/gpustack" ] || die "$archive holds no gpustack/gpustack"

# Replace an earlier install in one step: the new folder beside it, then renamed into place.
rm -rf "$PREFIX/lib/gpustack.new"
mv "$work/unpacked/gpustack" "$PREFIX/lib/gpustack.new"
rm -rf "$PREFIX/lib/gpustack.old"
if [ -e "$PREFIX/lib/gpustack" ]; then mv "$PREFIX/lib/gpustack" "$PREFIX/lib/gpustack.old"; fi
mv "$PREFIX/lib/gpustack.new" "$PREFIX/lib/gpustack"
rm -rf "$PREFIX/lib/gpustack.old"
ln -sf "$PREFIX/lib/gpustack/gpustack" "$PREFIX/bin/gpustack"
say "installed $("$PREFIX/bin/gpustack" version) in $PREFIX/lib/gpustack, linked from $PREFIX/bin/gpustack"

if [ "$SERVICE" = 1 ]; then
    [ "$os" = linux ] || die "--service makes a systemd unit: Linux only"
    command -v systemctl >/dev/null 2>&1 || die "--service needs systemd (systemctl)"
    units="${XDG_CONFIG_HOME:-$HOME/.config}/systemd/user"
    mkdir -p "$units"
    cat > "$units/gpustack.service" <<UNIT
[Unit]
Description=gpustack model server
After=network-online.target

[Service]
ExecStart=$PREFIX/bin/gpustack serve
Restart=on-failure

[Install]
WantedBy=default.target
UNIT
    systemctl --user daemon-reload
    systemctl --user enable --now gpustack.service
    say "gpustack serve runs as a systemd user service: systemctl --user status gpustack"
fi

case ":$PATH:" in
    *":$PREFIX/bin:"*) ;;
    *) say "add $PREFIX/bin to your PATH to run gpustack" ;;
esac
say "next: gpustack serve, then open http://127.0.0.1:11500/"
