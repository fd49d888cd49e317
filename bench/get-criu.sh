#!/bin/sh
# Unpack Debian 13's CRIU 4.1.1 with its own glibc into a private root
# (criu_peer.py finds it there): Debian 12's 3.17 fails on this kernel,
# and 4.1.1 needs a glibc newer than Debian 12's, so it is not installed.
set -e
ROOT=${XENCLONE_CRIU_ROOT:-/var/cache/xenclone-bench/criu-root}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/lists/partial" "$WORK/cache/archives/partial" "$WORK/debs"
echo "deb http://deb.debian.org/debian trixie main" > "$WORK/sources.list"
APT="-o Dir::Etc::sourcelist=$WORK/sources.list -o Dir::Etc::sourceparts=- \
     -o Dir::State::Lists=$WORK/lists -o Dir::Cache=$WORK/cache"
apt-get $APT update -qq
cd "$WORK/debs"
for p in criu libcompel1 libc6 libgnutls30t64 libnftables1 libprotobuf-c1 libnet1 \
         libnl-3-200 libbsd0 libuuid1 libmd0 libp11-kit0 libidn2-0 libunistring5 \
         libtasn1-6 libnettle8t64 libhogweed6t64 libgmp10 libjansson4 libmnl0 \
         libnftnl11 libxtables12 libffi8 libedit2 libbrotli1 libzstd1 zlib1g libgcc-s1 \
         libtinfo6 libbpf1 libelf1t64 libcap2; do
    apt-get $APT download -qq "$p/trixie"
done
mkdir -p "$ROOT"
for d in *.deb; do dpkg -x "$d" "$ROOT"; done
"$ROOT/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" \
    --library-path "$ROOT/usr/lib/x86_64-linux-gnu:$ROOT/lib/x86_64-linux-gnu" \
    "$ROOT/usr/sbin/criu" check
