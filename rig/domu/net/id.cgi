#!/bin/sh
# The rig domU's HTTP answer (busybox httpd, /cgi-bin/id): who answers,
# 16 bytes of /dev/urandom read now, and the files on its disk.
# ?write=NAME first writes the file NAME there (letters, digits, '-').
# Few processes: under TCG each fork in a busy clone costs most of a second.
echo "Content-Type: text/plain"
echo
name=${QUERY_STRING#write=}
if [ "$name" != "$QUERY_STRING" ]; then
    case $name in ''|*[!A-Za-z0-9-]*) echo "error bad name"; exit 0 ;; esac
    echo "$name" > "/mnt/disk/$name" && sync
fi
read -r host < /proc/sys/kernel/hostname
echo "hostname $host"
echo "clone_id $(xenstore-read xenclone/clone-id 2>/dev/null || echo none)"
set -- $(ip -4 -o addr show eth0)
echo "ip ${4%/*}"
random=$(od -An -tx1 -N16 /dev/urandom)
echo "random ${random// /}"
files=
for f in /mnt/disk/*; do
    f=${f##*/}
    case $f in lost+found|'*') ;; *) files="$files$f " ;; esac
done
echo "files $files"
