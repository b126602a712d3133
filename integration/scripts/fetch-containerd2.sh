#!/bin/sh
# Fetch Debian unstable's `containerd` package (2.1.x) and unpack it into DEST,
# without touching the system's apt sources, lists or cache: everything apt
# needs lives in a private temporary directory passed through -o options.
#
# Usage: fetch-containerd2.sh [DEST]   (default /var/cache/airlock-test/containerd2)
# Result: DEST/usr/bin/containerd, DEST/usr/bin/ctr, DEST/usr/bin/containerd-shim-runc-v2
# Idempotent: does nothing if DEST/usr/bin/containerd already exists.
set -eu

DEST=${1:-${AIRLOCK_CONTAINERD2_DIR:-/var/cache/airlock-test/containerd2}}
if [ -x "$DEST/usr/bin/containerd" ]; then
    echo "containerd 2 already present in $DEST: $("$DEST/usr/bin/containerd" --version)"
    exit 0
fi

# Same mirror host as the machine's own sources (deb822 "URIs:" or one-line "deb" format).
MIRROR=${DEBIAN_MIRROR:-}
if [ -z "$MIRROR" ]; then
    MIRROR=$(cat /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null |
        sed -n -e 's/^URIs:[[:space:]]*\(http[^[:space:]]*\/debian\)\/*$/\1/p' \
               -e 's/^deb[[:space:]]\+\(\[[^]]*\][[:space:]]\+\)\?\(http[^[:space:]]*\/debian\)\/*[[:space:]].*/\2/p' |
        head -n 1)
fi
MIRROR=${MIRROR:-http://deb.debian.org/debian}
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT INT TERM
mkdir -p "$WORK/lists/partial" "$WORK/cache/archives/partial" "$WORK/dl"
echo "deb [signed-by=$KEYRING] $MIRROR unstable main" > "$WORK/sources.list"

APT_OPTS="-o Dir::Etc::SourceList=$WORK/sources.list
 -o Dir::Etc::SourceParts=/dev/null
 -o Dir::State::Lists=$WORK/lists
 -o Dir::Cache=$WORK/cache
 -o Dir::Cache::pkgcache=
 -o Dir::Cache::srcpkgcache=
 -o APT::Default-Release=
 -o Debug::NoLocking=1
 -o APT::Sandbox::User=root"

echo "fetching containerd from $MIRROR unstable main" >&2
# shellcheck disable=SC2086
apt-get -q $APT_OPTS update >&2
# shellcheck disable=SC2086
(cd "$WORK/dl" && apt-get -q $APT_OPTS download containerd/unstable >&2)

DEB=$(ls "$WORK"/dl/containerd_*.deb)
mkdir -p "$DEST"
dpkg -x "$DEB" "$DEST"
cp "$DEB" "$DEST/"
"$DEST/usr/bin/containerd" --version
ls "$DEST/usr/bin"
