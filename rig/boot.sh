#!/bin/bash
# Boot the Xen rig under QEMU, run one job in dom0, bring its results out.
#
#   rig/boot.sh [--job FILE] [--out DIR] [--memory MiB] [--timeout SECS]
#               [--xen FILE] [--kvm] [--no-build] [--verbose]
#
# --job FILE     shell script run by dom0's sh (default rig/jobs/smoke.sh);
#                it runs in $RIG_OUT with the project at $RIG_PROJECT, the
#                rig's files at $RIG_FILES and the project's Python package
#                (with the shim built for dom0) on PYTHONPATH
# --out DIR      where results go (default: a new /tmp/xenclone-rig.XXXXXX):
#                job.out, job.rc, every file the job wrote, console.log
#                (host-timestamped serial console), xen-dmesg.txt,
#                dom0-dmesg.txt, timings.json
# --memory MiB   QEMU RAM (default 2048; dom0 gets 1024 of it)
# --timeout S    hard limit for the whole boot (default 600); the job itself
#                is given S-120 s inside dom0 so it can still report
# --xen FILE     boot this hypervisor ELF instead of Debian's (e.g. the
#                MEM_PAGING build of xen/build.sh --rig)
# --kvm          -accel kvm -cpu host, for hosts with VMX/SVM and nested
#                virtualization (default: TCG, which is what works on
#                machines whose /dev/kvm cannot run Xen); or ACCEL=kvm
# --no-build     do not run rig/build.sh first (use $CACHE/current)
# --verbose      stream the console to stderr while it runs
#
# Exit status: the job's exit status; 124 if QEMU had to be killed (the
# timeout), 125 if the rig itself failed (no job result).
set -euo pipefail

RIG=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$RIG")
CACHE=${XENCLONE_RIG_CACHE:-/var/cache/xenclone-rig}
JOB=$RIG/jobs/smoke.sh
OUTDIR=""
MEM=2048
TIMEOUT=600
XEN=""
KVM=0
[ "${ACCEL:-tcg}" = kvm ] && KVM=1      # as --kvm (make xen-test ACCEL=kvm)
BUILD=1
VERBOSE=0
while [ $# -gt 0 ]; do
    case $1 in
        --job) JOB=$2; shift 2 ;;
        --out) OUTDIR=$2; shift 2 ;;
        --memory) MEM=$2; shift 2 ;;
        --timeout) TIMEOUT=$2; shift 2 ;;
        --kvm) KVM=1; shift ;;
        --no-build) BUILD=0; shift ;;
        --verbose) VERBOSE=1; shift ;;
        --xen) XEN=$2; shift 2 ;;
        -h|--help) sed -n '2,29p' "$0"; exit 0 ;;
        *) echo "boot.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
log() { printf 'rig-boot: %s\n' "$*" >&2; }
[ -f "$JOB" ] || { log "no job file $JOB"; exit 2; }
[ "$MEM" -ge 1536 ] || { log "--memory must be at least 1536 (dom0 takes 1024)"; exit 2; }

if [ $BUILD = 1 ]; then
    ART=$("$RIG/build.sh" --cache "$CACHE" | tail -1)
else
    ART=$(readlink -f "$CACHE/current")
fi
[ -f "$ART/.complete" ] || { log "no rig build in $CACHE: run rig/build.sh"; exit 125; }
XEN=$(readlink -f "${XEN:-$ART/xen.elf}")
[ -f "$XEN" ] || { log "no hypervisor at $XEN"; exit 2; }

[ -n "$OUTDIR" ] || OUTDIR=$(mktemp -d /tmp/xenclone-rig.XXXXXX)
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
# The run share is a private directory: dom0 writes its results under out/,
# which we move to OUTDIR at the end.
RUN=$(mktemp -d /tmp/xenclone-rig-run.XXXXXX)
trap 'rm -rf "$RUN"' EXIT
cp "$JOB" "$RUN/job.sh"
JOB_TIMEOUT=$(( TIMEOUT > 240 ? TIMEOUT - 120 : TIMEOUT / 2 ))
echo "JOB_TIMEOUT=$JOB_TIMEOUT" > "$RUN/rig.env"

if [ $KVM = 1 ]; then
    [ -w /dev/kvm ] || { log "--kvm: /dev/kvm not usable"; exit 2; }
    ACCEL=(-accel kvm -cpu host)
else
    # SVM+NPT so Xen offers HAP (Debian's Xen has no shadow paging, and PVH
    # needs one of them); no SMAP, which crashes dom0 under TCG (-cpu max).
    ACCEL=(-accel tcg -cpu qemu64,+svm,+npt,+nrip-save)
fi
# noreboot is left out on purpose: if dom0 dies, Xen reboots after 5 s and
# -no-reboot turns that into QEMU exiting, instead of waiting for the timeout.
# gnttab_max_frames: room for the memory-server domain's grants (daemon.sh).
XEN_ARGS="dom0_mem=1024M,max:1024M dom0_max_vcpus=2 gnttab_max_frames=128 console=com1 com1=115200,8n1 loglvl=all guest_loglvl=all"
DOM0_ARGS="console=hvc0 earlyprintk=xen rdinit=/init panic=1"
# A comma inside a -initrd module's arguments is written ",,".
share() { echo "local,path=$1,mount_tag=$2,security_model=none,id=$2$3"; }
# 3 pCPUs: dom0's 2 vCPUs on 0-1, every guest on 2 (dom0/init says why).
QEMU=(qemu-system-x86_64 "${ACCEL[@]}" -m "$MEM" -smp 3
      -nodefaults -display none -no-reboot -serial stdio -monitor none
      -kernel "$XEN" -append "$XEN_ARGS"
      -initrd "$ART/vmlinux $DOM0_ARGS,$ART/dom0.cpio"
      -virtfs "$(share "$RUN" host "")"
      -virtfs "$(share "$ROOT" project ,readonly=on)"
      -virtfs "$(share "$ART/share" rig ,readonly=on)")

log "booting (timeout ${TIMEOUT} s, results in $OUTDIR)"
START=${EPOCHREALTIME/./}
# Peak RSS: VmHWM of QEMU, read every second while it runs (monotonic, so
# the last value read is the peak give or take the last second).
: > "$RUN/hwm"
( while sleep 1 && kill -0 $$ 2>/dev/null; do   # ends with boot.sh, whatever kills it
      pid=$(pgrep -n -f "^qemu-system-x86_64 .*$RUN") || continue
      awk '/VmHWM/ {print $2}' /proc/$pid/status 2>/dev/null > "$RUN/hwm.new" &&
          [ -s "$RUN/hwm.new" ] && mv "$RUN/hwm.new" "$RUN/hwm"
  done ) &
WATCH=$!
# The serial console, each line stamped with seconds since QEMU started.
set +e
# (The subshell keeps bash's own "Aborted ..." report of a QEMU that died
# on a signal in qemu.stderr too, instead of on our stderr.)
( timeout -k 10 "$TIMEOUT" "${QEMU[@]}" </dev/null; exit $? ) 2>"$OUTDIR/qemu.stderr" |
    while IFS= read -r line; do
        now=${EPOCHREALTIME/./}
        line=${line%$'\r'}
        t=$(( (now - START) / 10000 ))
        printf '%4d.%02d %s\n' $((t / 100)) $((t % 100)) "$line"
        [ $VERBOSE = 1 ] && printf '%4d.%02d %s\n' $((t / 100)) $((t % 100)) "$line" >&2
    done > "$OUTDIR/console.log"
QRC=${PIPESTATUS[0]}
set -e
kill $WATCH 2>/dev/null || true
wait $WATCH 2>/dev/null || true
ELAPSED=$(( (${EPOCHREALTIME/./} - START) / 10000 ))
HWM=$(cat "$RUN/hwm" 2>/dev/null || true)

[ -d "$RUN/out" ] && cp -a "$RUN/out/." "$OUTDIR/"

# timings.json: seconds from QEMU start to each rig-mark dom0 printed.
awk -v total="$ELAPSED" -v hwm="${HWM:-0}" -v qrc="$QRC" '
    /rig-mark: / { s = $0; sub(/.*rig-mark: /, "", s); split(s, f, " ")
                   marks[n++] = sprintf("\"%s\": %s", f[1], $1) }
    END {
        printf "{\"qemu_exit\": %d, \"total_s\": %.2f, \"qemu_peak_rss_kib\": %d, \"marks_s\": {", qrc, total / 100, hwm
        for (i = 0; i < n; i++) printf "%s%s", (i ? ", " : ""), marks[i]
        print "}}"
    }' "$OUTDIR/console.log" > "$OUTDIR/timings.json"

if [ "$QRC" = 124 ] || [ "$QRC" = 137 ]; then
    log "TIMEOUT: QEMU killed after $TIMEOUT s; last console lines:"
    tail -25 "$OUTDIR/console.log" >&2
    exit 124
fi
if [ ! -f "$OUTDIR/job.rc" ]; then
    log "rig failed: QEMU exited $QRC without a job result; last console lines:"
    [ -f "$OUTDIR/init-failed" ] && log "$(cat "$OUTDIR/init-failed")"
    tail -25 "$OUTDIR/console.log" >&2
    cat "$OUTDIR/qemu.stderr" >&2
    exit 125
fi
RC=$(cat "$OUTDIR/job.rc")
cat "$OUTDIR/job.out"
log "job exit $RC; $(cat "$OUTDIR/timings.json")"
log "results in $OUTDIR"
exit "$RC"
