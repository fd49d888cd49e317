#!/bin/bash
# Build (or reuse) the project's Xen hypervisor: Debian's Xen 4.17 source
# package with the project's patches (xen/patches/) and with MEM_PAGING and
# MEM_SHARING, which lazy fill and fork clones need and Debian's build lacks
# (both depend on CONFIG_UNSUPPORTED).
#
#   xen/build.sh [--rig] [--deb DIR] [--cache DIR]
#
#   --rig        also apply the rig-only patches (xen/patches/rig-only/:
#                VM fork on AMD, unsupported upstream)
#   --deb DIR    also repack Debian's xen-hypervisor-4.17-amd64 of the same
#                version with this hypervisor, into DIR (docs/xen-patches.md)
#   --cache DIR  where builds are kept (default $XENCLONE_RIG_CACHE, else
#                /var/cache/xenclone-rig)
#
# The source comes from the deb-src of the bookworm mirror apt already uses,
# through a private apt state under the cache (the host's apt config is not
# touched).  The config is the one Debian ships in its hypervisor package of
# that version, plus three options.  Builds are cached by source version,
# this script and the patches applied.  The last line printed is the path of
# the ELF to boot (rig/boot.sh --xen), or with --deb the path of the .deb.
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
CACHE=${XENCLONE_RIG_CACHE:-/var/cache/xenclone-rig}
RIG=0
DEBDIR=
while [ $# -gt 0 ]; do
    case $1 in
        --rig) RIG=1; shift ;;
        --deb) DEBDIR=${2:?--deb needs a directory}; shift 2 ;;
        --cache) CACHE=${2:?--cache needs a directory}; shift 2 ;;
        -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
        *) echo "xen/build.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
log() { printf 'xen-build: %s\n' "$*" >&2; }
T0=$(date +%s)
[ "$(id -u)" = 0 ] || { log "must run as root"; exit 1; }

# Bump with every change to the patches, so the package version rises and
# hosts upgrade to it.
REVISION=3
PKG=xen-hypervisor-4.17-amd64
# The series applied, in order: production, then with --rig the rig-only one.
series() { sed -e '/^#/d' -e '/^[[:space:]]*$/d' -e "s|^|$1/|" "$1/series"; }
PATCHES=$(series "$HERE/patches")
VARIANT=prod
SUFFIX=+xenclone$REVISION
if [ $RIG = 1 ]; then
    PATCHES="$PATCHES
$(series "$HERE/patches/rig-only")"
    VARIANT=rig
    SUFFIX=$SUFFIX+rig
fi
for p in $PATCHES; do [ -f "$p" ] || { log "missing patch $p (see its series file)"; exit 1; }; done

# Kconfig needs flex and bison; dpkg-source unpacks the source; Debian's
# banner patch calls lsb_release.
. "$ROOT/rig/lib.sh"
need_packages flex bison dpkg-dev gcc make python3 lsb-release

mkdir -p "$CACHE/debs"
exec 9>"$CACHE/.lock-xen"
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
# Debian's hypervisor package built from that same source: its config, and
# the package --deb repacks.
fetch_debs "$CACHE/debs" "$PKG=$VER"
DEB=$(deb_file "$CACHE/debs" $PKG "$VER")
PKGVER=$VER$SUFFIX

KEY=$( { echo "$VER $PKGVER"; cat "$0" $PATCHES; } | sha256sum | cut -c1-16)
OUT=$CACHE/xen-$VARIANT-$KEY
if [ -f "$OUT/.built" ]; then
    log "cached (xen $PKGVER, $KEY)"
else
    log "building xen $PKGVER"
    rm -rf "$OUT.tmp"
    mkdir -p "$OUT.tmp"
    trap 'rm -rf "$OUT.tmp"' EXIT
    (cd "$OUT.tmp" && apt-get "${APT_OPTS[@]}" source -qq "xen=$VER") >"$OUT.tmp/source.log" 2>&1 ||
        { tail -20 "$OUT.tmp/source.log" >&2; exit 1; }
    SRC=$(ls -d "$OUT.tmp"/xen-*/ | head -1)
    SRC=${SRC%/}
    # No fuzz: a patch that does not apply exactly was written for other code.
    for p in $PATCHES; do
        patch -d "$SRC" -p1 -s -F0 -N --no-backup-if-mismatch < "$p" >&2 ||
            { log "$(basename "$p") does not apply to xen $VER"; exit 1; }
    done
    dpkg-deb --fsys-tarfile "$DEB" | tar -xO ./boot/xen-4.17-amd64.config > "$SRC/xen/.config"
    printf 'CONFIG_UNSUPPORTED=y\nCONFIG_MEM_PAGING=y\nCONFIG_MEM_SHARING=y\n' >> "$SRC/xen/.config"
    log "source unpacked and patched ($(( $(date +%s) - T0 )) s)"
    # As debian/rules builds it: the banner shows the package version, and
    # the build date is the source's, not today's.
    EPOCH=$(dpkg-parsechangelog -l "$SRC/debian/changelog" -STimestamp)
    MAKE_ARGS=(DEB_VERSION="$PKGVER"
               DEB_MAINTAINER="$(dpkg-deb -f "$DEB" Maintainer)"
               XEN_BUILD_DATE="$(LC_ALL=C date -u -d "@$EPOCH")"
               XEN_BUILD_TIME="$(LC_ALL=C date -u -d "@$EPOCH" +%T)"
               EXTRA_CFLAGS_XEN_CORE="-ffile-prefix-map=$SRC=. -fdebug-prefix-map=$SRC=.")
    make -C "$SRC/xen" olddefconfig "${MAKE_ARGS[@]}" >"$OUT.tmp/build.log" 2>&1 &&
        make -C "$SRC/xen" -j2 "${MAKE_ARGS[@]}" >>"$OUT.tmp/build.log" 2>&1 ||
        { tail -30 "$OUT.tmp/build.log" >&2; exit 1; }
    for opt in UNSUPPORTED MEM_PAGING MEM_SHARING; do
        grep -q "^CONFIG_$opt=y" "$SRC/xen/.config" || { log "CONFIG_$opt did not stick"; exit 1; }
    done
    # xen.gz and xen.efi are what Debian's package installs in /boot.
    [ -f "$SRC/xen/xen.efi" ] || { log "no xen.efi built (binutils without PE support?)"; exit 1; }
    cp "$SRC/xen/xen" "$OUT.tmp/xen.elf"
    cp "$SRC/xen/xen.gz" "$SRC/xen/xen.efi" "$OUT.tmp/"
    cp "$SRC/xen/.config" "$OUT.tmp/xen.config"
    rm -rf "$SRC" "$OUT.tmp"/*.dsc "$OUT.tmp"/*.tar.* "$OUT.tmp"/*.debian.*
    touch "$OUT.tmp/.built"
    rm -rf "$OUT"
    mv "$OUT.tmp" "$OUT"
    trap - EXIT
    for old in "$CACHE/xen-$VARIANT"-*; do
        [ "$old" = "$OUT" ] || rm -rf "$old"
    done
    log "built in $(( $(date +%s) - T0 )) s"
fi
[ -n "$DEBDIR" ] || { echo "$OUT/xen.elf"; exit 0; }

# ---- --deb: Debian's package with this hypervisor -----------------------------
# Same files, maintainer scripts (update-grub) and dependencies; only the
# hypervisor, its config, the version, the changelog and md5sums change.
mkdir -p "$DEBDIR"
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
dpkg-deb -R "$DEB" "$W/pkg"
cp "$OUT/xen.config" "$W/pkg/boot/xen-4.17-amd64.config"
cp "$OUT/xen.efi" "$W/pkg/boot/xen-4.17-amd64.efi"
cp "$OUT/xen.gz" "$W/pkg/boot/xen-4.17-amd64.gz"
CHANGELOG=$W/pkg/usr/share/doc/$PKG/changelog.Debian.gz
{ printf 'xen (%s) bookworm; urgency=medium\n\n' "$PKGVER"
  printf '  * Hypervisor rebuilt by xenclone with CONFIG_UNSUPPORTED, CONFIG_MEM_PAGING\n'
  printf '    and CONFIG_MEM_SHARING, and these patches:\n'
  for p in $PATCHES; do   # the Subject: header, unfolded, without "[PATCH n/m]"
      awk '/^Subject: / {s = $0; while ((getline l) > 0 && l ~ /^ /) s = s l; print s; exit}' "$p" |
          sed -e 's/^Subject: \(\[PATCH[^]]*\] \)\{0,1\}/    - /'
  done
  printf '\n -- xenclone <root@localhost>  %s\n\n' "$(date -R)"
  zcat "$CHANGELOG"; } | gzip -9n > "$W/changelog.gz"
mv "$W/changelog.gz" "$CHANGELOG"
sed -i -e "s/^Version: .*/Version: $PKGVER/" \
    -e "s/^Installed-Size: .*/Installed-Size: $(du -sk --exclude=DEBIAN "$W/pkg" | cut -f1)/" \
    "$W/pkg/DEBIAN/control"
(cd "$W/pkg" && find . -type f ! -path './DEBIAN/*' -printf '%P\n' | sort |
     xargs md5sum > DEBIAN/md5sums)
OUTDEB=$DEBDIR/${PKG}_${PKGVER}_amd64.deb
dpkg-deb --root-owner-group -b "$W/pkg" "$OUTDEB" >/dev/null
log "packaged $PKG $PKGVER"
echo "$OUTDEB"
