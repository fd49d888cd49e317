#!/bin/sh
# The rig domU's HTTP answer (busybox httpd, /cgi-bin/id): who answers,
# 16 bytes of /dev/urandom read now, and the files on its disk.
# ?write=NAME first writes the file NAME there (letters, digits, '-').
echo "Content-Type: text/plain"
echo
name=${QUERY_STRING#write=}
if [ "$name" != "$QUERY_STRING" ]; then
    case $name in ''|*[!A-Za-z0-9-]*) echo "error bad name"; exit 0 ;; esac
    echo "$name" > "/mnt/disk/$name" && sync
fi
echo "hostname $(hostname)"
echo "clone_id $(xenstore-read xenclone/clone-id 2>/dev/null || echo none)"
echo "ip $(ip -4 -o addr show eth0 | awk '{print $4}' | cut -d/ -f1)"
echo "random $(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
echo "files $(ls /mnt/disk | grep -v lost+found | tr '\n' ' ')"
