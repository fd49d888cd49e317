#!/bin/bash
# Build (or reuse) the rig's second hypervisor: Xen 4.17 from Debian's own
# source package with MEM_PAGING and MEM_SHARING, which lazy fill needs and
# Debian's build lacks (both depend on CONFIG_UNSUPPORTED).
#
#   rig/build-xen-paging.sh [--cache DIR]
#
# The source comes from the deb-src of the bookworm mirror apt already uses,
# through a private apt state under the cache (the host's apt config is not
# touched).  The config is Debian's own (from the hypervisor .deb that
# rig/build.sh downloads) plus three options.  Cached by source version and
# this script; the last line printed is the path of the ELF to boot
# (rig/boot.sh --xen).
set -eu

RIG=$(cd "$(dirname "$0")" && pwd)
CACHE=${XENCLONE_RIG_CACHE:-/var/cache/xenclone-rig}
while [ $# -gt 0 ]; do
    case $1 in
        --cache) CACHE=$2; shift 2 ;;
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
        *) echo "build-xen-paging.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
log() { printf 'rig-xen-paging: %s\n' "$*" >&2; }
T0=$(date +%s)
[ "$(id -u)" = 0 ] || { log "must run as root"; exit 1; }

# Xen's Kconfig needs flex and bison; dpkg-source unpacks the source.
. "$RIG/lib.sh"
need_packages flex bison dpkg-dev gcc make python3

mkdir -p "$CACHE"
exec 9>"$CACHE/.lock-xen-paging"
flock 9

APT=$CACHE/apt-src
mkdir -p "$APT/lists/partial" "$APT/archives/partial"
MIRROR=$(apt-get indextargets --format '$(REPO_URI) $(RELEASE) $(COMPONENT)' \
         'Identifier: Packages' | awk '$2 == "bookworm" && $3 == "main" {print $1; exit}')
[ -n "$MIRROR" ] || { log "no bookworm main in the apt config"; exit 1; }
echo "deb-src $MIRROR bookworm main" > "$APT/sources.list"
APT_OPTS=(-o Dir::Etc::SourceList="$APT/sources.list" -o Dir::Etc::SourceParts=/nonexistent
          -o Dir::State::Lists="$APT/lists" -o Dir::Cache::Archives="$APT/archives"
          -o APT::Sandbox::User=root)
[ -n "$(ls "$APT/lists" 2>/dev/null | grep Sources)" ] || apt-get "${APT_OPTS[@]}" update -qq
VER=$(apt-cache "${APT_OPTS[@]}" showsrc xen 2>/dev/null | awk '/^Version:/ {print $2}' |
      sort -V | tail -1)
[ -n "$VER" ] || { log "no xen source package on $MIRROR"; exit 1; }
# Debian's config, from the stock hypervisor package rig/build.sh keeps.
DEB=$(ls "$CACHE"/debs/xen-hypervisor-4.17-amd64_*.deb 2>/dev/null | sort -V | tail -1)
[ -n "$DEB" ] || { log "no xen-hypervisor .deb in $CACHE/debs: run rig/build.sh first"; exit 1; }
KEY=$( { echo "$VER $(basename "$DEB")"; cat "$0"; } | sha256sum | cut -c1-16)
OUT=$CACHE/xen-paging-$KEY
if [ -f "$OUT/.built" ]; then
    log "cached (xen $VER, $KEY)"
    echo "$OUT/xen.elf"
    exit 0
fi

log "building xen $VER with MEM_PAGING"
rm -rf "$OUT.tmp"
mkdir -p "$OUT.tmp"
trap 'rm -rf "$OUT.tmp"' EXIT
(cd "$OUT.tmp" && apt-get "${APT_OPTS[@]}" source -qq "xen=$VER") >"$OUT.tmp/source.log" 2>&1 ||
    { tail -20 "$OUT.tmp/source.log" >&2; exit 1; }
SRC=$(ls -d "$OUT.tmp"/xen-*/ | head -1)
dpkg-deb --fsys-tarfile "$DEB" | tar -xO ./boot/xen-4.17-amd64.config > "$SRC/xen/.config"
printf 'CONFIG_UNSUPPORTED=y\nCONFIG_MEM_PAGING=y\nCONFIG_MEM_SHARING=y\n' >> "$SRC/xen/.config"
log "source unpacked ($(( $(date +%s) - T0 )) s)"
make -C "$SRC/xen" olddefconfig >"$OUT.tmp/build.log" 2>&1 &&
    make -C "$SRC/xen" -j2 >>"$OUT.tmp/build.log" 2>&1 ||
    { tail -30 "$OUT.tmp/build.log" >&2; exit 1; }
for opt in MEM_PAGING MEM_SHARING; do
    grep -q "^CONFIG_$opt=y" "$SRC/xen/.config" || { log "CONFIG_$opt did not stick"; exit 1; }
done
cp "$SRC/xen/xen" "$OUT.tmp/xen.elf"
cp "$SRC/xen/.config" "$OUT.tmp/xen.config"
rm -rf "$SRC" "$OUT.tmp"/*.dsc "$OUT.tmp"/*.tar.* "$OUT.tmp"/*.debian.*
touch "$OUT.tmp/.built"
rm -rf "$OUT"
mv "$OUT.tmp" "$OUT"
trap - EXIT
for old in "$CACHE"/xen-paging-*; do
    [ "$old" = "$OUT" ] || rm -rf "$old"
done
log "built in $(( $(date +%s) - T0 )) s"
echo "$OUT/xen.elf"
