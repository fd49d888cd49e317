#!/bin/bash
# Build the Xen integration rig: Xen 4.17 + Debian kernel + an initramfs dom0.
#
#   rig/build.sh [--cache DIR] [--force]
#
# Everything comes from the Debian mirror apt is configured with (read from
# the apt config at run time, never written here).  Artifacts go to
# $XENCLONE_RIG_CACHE (default /var/cache/xenclone-rig) under a key that
# hashes this recipe and the Debian package versions it uses, so a re-run
# with nothing changed costs a second or two; `current` points at the last
# good build.  The last line printed is the artifact directory.
#
# Layout of an artifact directory:
#   xen.elf          the hypervisor (ELF32 multiboot; QEMU -kernel)
#   vmlinux          dom0 kernel, uncompressed (TCG decompresses slowly)
#   dom0.cpio        dom0 root: debootstrap minbase + Xen tools + python3,
#                    uncompressed (same reason)
#   share/           shared read-only into dom0 at /mnt/rig
#     domu/          PVH domU: the same vmlinux, busybox initramfs, xl config
#     pylib/xenclone/_xen*.so, _linux*.so
#                    the project's cffi shims, built for dom0's python3
#
# Why the shim is built here on the host and not in dom0: dom0 has Debian's
# python3.11 and libxen 4.17 from the same mirror as the host, so building it
# with the host's Debian /usr/bin/python3 (not a venv's python, whose version
# may differ) against the host's libxen-dev gives a module dom0 loads as is,
# and keeps gcc and headers (~200 MB) out of the dom0 initramfs.
set -eu

RIG=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$RIG")
CACHE=${XENCLONE_RIG_CACHE:-/var/cache/xenclone-rig}
FORCE=0
while [ $# -gt 0 ]; do
    case $1 in
        --cache) CACHE=$2; shift 2 ;;
        --force) FORCE=1; shift ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) echo "build.sh: unknown option $1" >&2; exit 2 ;;
    esac
done

log() { printf 'rig-build: %s\n' "$*" >&2; }
T0=$(date +%s)

[ "$(id -u)" = 0 ] || { log "must run as root (debootstrap, chroot)"; exit 1; }

# ---- host packages (only what is missing) -----------------------------------
# qemu-system-x86 runs the rig; debootstrap builds dom0; python3-cffi,
# python3-dev, gcc and libxen-dev build the shim for dom0's python.
. "$RIG/lib.sh"
need_packages qemu-system-x86 debootstrap xz-utils cpio python3-cffi python3-dev \
    python3-setuptools gcc libxen-dev

# One build at a time per cache (CI jobs or users may start two rigs).
mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9

# ---- versions and the cache key ---------------------------------------------
kernel_pkg() { apt-cache depends linux-image-amd64 2>/dev/null |
               awk '/Depends: linux-image-[0-9]/ {print $2; exit}'; }
KPKG=$(kernel_pkg)
if [ -z "$KPKG" ]; then     # a fresh machine (or container) has no lists yet
    apt-get update -qq
    KPKG=$(kernel_pkg)
fi
[ -n "$KPKG" ] || { log "apt cannot resolve linux-image-amd64"; exit 1; }
XENPKG=xen-hypervisor-4.17-amd64
# One apt-cache call for every version (each call costs about a second).
VERSIONS=$(apt-cache policy "$KPKG" $XENPKG xen-utils-4.17 busybox-static python3.11 |
           awk '/^[^ ]/ {p = $1; sub(/:$/, "", p)} /Candidate:/ {print p "=" $2}')
candidate() { echo "$VERSIONS" | awk -F= -v p="$1" '$1 == p {print $2}'; }
KEY=$( { echo "$VERSIONS"
         cat "$RIG/build.sh" "$RIG/dom0/init" "$RIG/domu/init" \
             "$RIG/domu/pvh.cfg" "$RIG/domu/pvh-net.cfg" "$RIG"/domu/net/* \
             "$RIG/domu/xenclone-reseed.c" "$ROOT/guest/identity-agent/xenclone-identity" \
             "$ROOT"/libxc_shim/*_build.py \
             "$ROOT"/libxc_shim/src/xen/*.[ch] "$ROOT"/libxc_shim/src/linux/*.[ch]; } |
       sha256sum | cut -c1-16)
OUT=$CACHE/$KEY
if [ $FORCE = 0 ] && [ -f "$OUT/.complete" ]; then
    ln -sfn "$KEY" "$CACHE/current"
    log "cached ($KEY)"
    echo "$OUT"
    exit 0
fi
log "building $KEY"
mkdir -p "$CACHE/debs"
rm -rf "$OUT.tmp"
mkdir -p "$OUT.tmp/share/domu" "$OUT.tmp/share/pylib/xenclone"
W=$OUT.tmp/work
mkdir -p "$W"
# Never leave a half-built tree behind (mounts first: rm must not follow them).
cleanup() { umount -R "$W/rootfs/proc" 2>/dev/null || true; rm -rf "$OUT.tmp"; }
trap cleanup EXIT

# ---- the mirror apt already uses ---------------------------------------------
# indextargets lists the configured Debian indexes: main suite, updates and
# security.  debootstrap takes the main one; the chroot's apt gets all three
# so dom0's Xen tools match the hypervisor and the host's libxen-dev.
TARGETS=$(apt-get indextargets --format '$(REPO_URI) $(RELEASE) $(COMPONENT)' \
          'Identifier: Packages' | sort -u)
MIRROR=$(echo "$TARGETS" | awk '$2 == "bookworm" && $3 == "main" {print $1; exit}')
[ -n "$MIRROR" ] || { log "no bookworm main in the apt config"; exit 1; }
SOURCES=$(echo "$TARGETS" | awk '$2 ~ /^bookworm(-updates|-security)?$/ && $3 == "main" {print "deb " $1 " " $2 " main"}')

# ---- the .debs we only unpack ------------------------------------------------
# (never installed on the host: this machine must not boot Xen)
fetch_debs "$CACHE/debs" $(for p in "$KPKG" $XENPKG busybox-static; do
                               echo "$p=$(candidate "$p")"; done)
deb() { deb_file "$CACHE/debs" "$1" "$(candidate "$1")"; }
dpkg-deb -x "$(deb $XENPKG)" "$W/xen"
# Of the kernel package only vmlinuz and the module dirs dom0 loads (the
# whole tree is ~400 MB; writing it costs seconds).
# Clones' devices (issue 18): netback and blkback, the bridge and loop
# devices in dom0; in the domU, its frontends and ext4, loaded in this order.
DOM0_MODULES="drivers/xen drivers/virtio fs/9p net/9p fs/netfs fs/fscache
              drivers/net/xen-netback drivers/block/xen-blkback net/bridge net/802 net/llc
              drivers/block/loop.ko"
DOMU_MODULES="crypto/crc32c_generic.ko lib/crc16.ko fs/mbcache.ko fs/jbd2/jbd2.ko
              fs/ext4/ext4.ko drivers/block/xen-blkfront.ko drivers/net/xen-netfront.ko"
mkdir -p "$W/kernel"
dpkg-deb --fsys-tarfile "$(deb "$KPKG")" |
    tar -C "$W/kernel" -x --wildcards './boot/vmlinuz-*' './lib/modules/*/modules.order' \
        './lib/modules/*/modules.builtin*' \
        $(for d in $DOM0_MODULES $DOMU_MODULES; do echo "./lib/modules/*/kernel/$d"; done)
dpkg-deb -x "$(deb busybox-static)" "$W/busybox"
zcat "$W"/xen/boot/xen-4.17-amd64.gz > "$OUT.tmp/xen.elf"
KVER=$(ls "$W/kernel/lib/modules")

# vmlinux: the xz payload of vmlinuz, found by its magic (as the kernel's
# scripts/extract-vmlinux does) and checked to be an ELF.
/usr/bin/python3 - "$W"/kernel/boot/vmlinuz-* "$OUT.tmp/vmlinux" <<'EOF'
import lzma, sys
data = open(sys.argv[1], "rb").read()
at = data.find(b"\xfd7zXZ\x00")
while at >= 0:
    try:
        out = lzma.LZMADecompressor().decompress(data[at:])
        if out[:4] == b"\x7fELF":
            open(sys.argv[2], "wb").write(out)
            sys.exit(0)
    except lzma.LZMAError:
        pass
    at = data.find(b"\xfd7zXZ\x00", at + 1)
sys.exit("no xz-compressed ELF in " + sys.argv[1])
EOF
log "xen + kernel $KVER unpacked ($(( $(date +%s) - T0 )) s)"

# ---- dom0 root ---------------------------------------------------------------
# The slow part (debootstrap + apt, ~45 s) is cached on its own, as a tar
# keyed only by what goes into it, so changing dom0's init, the domU or the
# shim rebuilds in seconds.  Bump BASE_REV when changing this stage.
# python3-cffi-backend: the runtime half of the cffi shim; kmod: modprobe.
BASE_REV=1
# iproute2 (the bridge, vif-bridge), qemu-system-xen (qdisk: clones' qcow2
# overlays), qemu-utils (qemu-img: snapshots and overlays), e2fsprogs (the
# domU's disk), dnsmasq-base (the bridge's DHCP).
BASE_PKGS="xen-utils-4.17 xenstore-utils python3 python3-cffi-backend kmod procps iproute2 qemu-system-xen qemu-utils e2fsprogs dnsmasq-base"
BASE=$CACHE/base-$(echo "$BASE_REV $BASE_PKGS $VERSIONS $SOURCES" | sha256sum | cut -c1-16).tar
R=$W/rootfs
if [ ! -f "$BASE" ]; then
    debootstrap --variant=minbase bookworm "$R" "$MIRROR" >"$W/debootstrap.log" 2>&1 ||
        { tail -20 "$W/debootstrap.log" >&2; exit 1; }
    log "debootstrap done ($(( $(date +%s) - T0 )) s)"
    echo "$SOURCES" > "$R/etc/apt/sources.list"
    # No daemons may start inside the chroot.
    printf '#!/bin/sh\nexit 101\n' > "$R/usr/sbin/policy-rc.d"
    chmod +x "$R/usr/sbin/policy-rc.d"
    mount -t proc proc "$R/proc"
    chroot "$R" sh -c "apt-get update -qq &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            --no-install-recommends $BASE_PKGS" >"$W/apt.log" 2>&1 ||
        { tail -20 "$W/apt.log" >&2; exit 1; }
    umount "$R/proc"
    # Trim what a diskless dom0 never reads.
    rm -rf "$R"/usr/share/doc/* "$R"/usr/share/man/* "$R"/usr/share/info/* \
           "$R"/usr/share/locale/* "$R"/var/cache/apt/* "$R"/var/lib/apt/lists/* \
           "$R"/var/cache/debconf/*-old "$R"/var/log/*.log "$R"/usr/sbin/policy-rc.d
    tar -C "$R" -cf "$BASE.tmp" .
    mv "$BASE.tmp" "$BASE"
    log "xen tools installed ($(( $(date +%s) - T0 )) s)"
else
    mkdir -p "$R"
    tar -C "$R" -xf "$BASE"
fi

# Only the kernel modules dom0 needs: Xen devices, virtio and 9p.
M=lib/modules/$KVER
mkdir -p "$R/$M/kernel/drivers" "$R/$M/kernel/fs" "$R/$M/kernel/net"
cp "$W/kernel/$M"/modules.order "$W/kernel/$M"/modules.builtin* "$R/$M/"
for d in $DOM0_MODULES; do
    [ -e "$W/kernel/$M/kernel/$d" ] || continue
    mkdir -p "$R/$M/kernel/$(dirname $d)"
    cp -a "$W/kernel/$M/kernel/$d" "$R/$M/kernel/$d"
done
chroot "$R" depmod "$KVER"

install -m 0755 "$RIG/dom0/init" "$R/init"
mkdir -p "$R/mnt/host" "$R/mnt/project" "$R/mnt/rig"
(cd "$R" && find . -xdev | LC_ALL=C sort | cpio -o -H newc --quiet) > "$OUT.tmp/dom0.cpio"
log "dom0.cpio $(( $(stat -c %s "$OUT.tmp/dom0.cpio") >> 20 )) MiB ($(( $(date +%s) - T0 )) s)"

# ---- PVH domU: same kernel, busybox initramfs --------------------------------
D=$W/domu
mkdir -p "$D/bin" "$D/dev" "$D/proc" "$D/sys"
cp "$W/busybox/bin/busybox" "$D/bin/busybox"
ln -s busybox "$D/bin/sh"
mkdir -p "$D/lib/modules"
for m in $DOMU_MODULES; do cp "$W/kernel/$M/kernel/$m" "$D/lib/modules/"; done
echo "$DOMU_MODULES" | xargs -n1 basename > "$D/lib/modules/order"
# The net domU's parts (rig/domu/pvh-net.cfg): the identity agent, its
# reseed helper in C (no python3 here), DHCP hook, HTTP answer.
gcc -static -O2 -o "$D/bin/xenclone-reseed" "$RIG/domu/xenclone-reseed.c"
install -m 0755 "$ROOT/guest/identity-agent/xenclone-identity" "$D/bin/"
# Where Debian's busybox udhcpc looks for its hook (as Debian's udhcpc
# package installs it): the agent's udhcpc applies its lease through it.
install -D -m 0755 "$RIG/domu/net/udhcpc.script" "$D/etc/udhcpc/default.script"
install -D -m 0755 "$RIG/domu/net/id.cgi" "$D/www/cgi-bin/id"
mkdir -p "$D/etc" "$D/mnt"
install -m 0755 "$RIG/domu/init" "$D/init"
# xenstore-read (Debian's xenstore-utils, from the dom0 root) and the shared
# libraries it loads: the domU reads its own XenStore home with it (a clone
# prints the clone-id dom0 wrote there).  It talks to /dev/xen/xenbus.
mkdir -p "$D/usr/bin"
cp "$R/usr/bin/xenstore" "$D/usr/bin/xenstore-read"
for verb in write rm watch; do ln "$D/usr/bin/xenstore-read" "$D/usr/bin/xenstore-$verb"; done
for lib in $(chroot "$R" ldd /usr/bin/xenstore |
             awk '$2 == "=>" {print $3} $1 ~ /^\// {print $1}'); do
    mkdir -p "$D$(dirname "$lib")"
    cp -L "$R$lib" "$D$lib"
done
(cd "$D" && find . | LC_ALL=C sort | cpio -o -H newc --quiet) > "$OUT.tmp/share/domu/initrd.cpio"
ln "$OUT.tmp/vmlinux" "$OUT.tmp/share/domu/vmlinux"   # same kernel, no copy
cp "$RIG/domu/pvh.cfg" "$RIG/domu/pvh-net.cfg" "$OUT.tmp/share/domu/"

# ---- the cffi Xen shim, for dom0's python ------------------------------------
# A private copy of libxc_shim/ next to an empty xenclone/, so the project's
# own build script runs unchanged and writes nowhere in the tree.
S=$W/shim
mkdir -p "$S/xenclone"
cp -a "$ROOT/libxc_shim" "$S/"
# Both shims: the Linux one holds the page-cache helpers (a hole punched
# in an image cache in dom0) as well as KVM's.
(cd "$S" && /usr/bin/python3 libxc_shim/xen_build.py && /usr/bin/python3 libxc_shim/linux_build.py) \
    >"$W/shim.log" 2>&1 || { tail -20 "$W/shim.log" >&2; exit 1; }
cp "$S"/xenclone/_xen*.so "$S"/xenclone/_linux*.so "$OUT.tmp/share/pylib/xenclone/"

echo "$VERSIONS" > "$OUT.tmp/versions.txt"
rm -rf "$W"
touch "$OUT.tmp/.complete"
rm -rf "$OUT"
mv "$OUT.tmp" "$OUT"
trap - EXIT
ln -sfn "$KEY" "$CACHE/current"
# Keep the cache small: drop other builds and bases (debs stay).  A build
# made in the last two hours may be another worktree's, booted right now.
for old in "$CACHE"/*/.complete; do
    d=$(dirname "$old")
    [ -n "$(find "$old" -mmin +120)" ] || continue
    [ -L "$d" ] || [ "$d" = "$OUT" ] || rm -rf "$d"
done
for old in "$CACHE"/base-*.tar; do
    [ "$old" = "$BASE" ] || rm -f "$old"
done
log "built $KEY in $(( $(date +%s) - T0 )) s"
echo "$OUT"
