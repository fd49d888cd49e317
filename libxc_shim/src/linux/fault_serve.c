/* The pager fast path: lx_pager_serve.
 * Python owns policy (credits, holds, fetches); this C serves the common
 * faults at full speed with the GIL released and hands everything else back:
 * a read maps the image page (memfd page cache) or the zero page, both
 * write-protected, and a write to one of them is let through (the kernel
 * copies the page) while host credits last, so C knows every private page. */
#define _GNU_SOURCE
#include "uffd_region.h"
#include <errno.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <linux/userfaultfd.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>

#define MSG_BATCH 64
#define BUSY_POLL_NS 50000      /* faults C serves come in storms: spin this long after the last */
#define MAX_BATCH_NS 1000000    /* but let Python see records within a millisecond */
#define HOT_ROUNDS 16          /* busy-poll: one round in this many asks epoll for other regions */

static int64_t now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

/* Spend one credit if there is one.  Python adds to (or takes from) the
 * counter while this runs, so the spend is one atomic step. */
static int take_credit(int64_t *credits)
{
    int64_t v = __atomic_load_n(credits, __ATOMIC_RELAXED);
    while (v > 0)
        if (__atomic_compare_exchange_n(credits, &v, v - 1, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED))
            return 1;
    return 0;
}

/* Spend up to want credits, leaving at least keep: how many were spent. */
static int64_t take_credits(int64_t *credits, int64_t want, int64_t keep)
{
    int64_t v = __atomic_load_n(credits, __ATOMIC_RELAXED);
    for (;;) {
        int64_t n = v - keep < want ? v - keep : want;
        if (n <= 0)
            return 0;
        if (__atomic_compare_exchange_n(credits, &v, v - n, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED))
            return n;
    }
}

/* Fault-around that learns: after a fault C served, map the image's
 * absent pages in an aligned window around it.  The window grows fourfold
 * with every fault in its 2 MiB chunk, from the kernel's 16 pages to
 * around_max: a sparse chunk costs one small window, a dense one is mapped
 * whole after four faults instead of one fault a page (fourfold, not
 * twofold: a fault costs a guest exit, as much as mapping dozens of pages).
 * Runs of absent non-zero pages, one CONTINUE each, a credit a page, and
 * only while the clone keeps a window's worth of credits for real faults;
 * runs of zero pages, one ZEROPAGE each and no credit (left to fault, they
 * were many of a clone's faults).  A page the host cache lacks (a hole)
 * ends the window: it needs a fetch, which is Python's.  One record per
 * run, at most room; how many.  docs/design.md has the measurements. */
static uint32_t around(struct lx_region *r, uint32_t idx, uint64_t pfn,
                       struct lx_fault *out, uint32_t room)
{
    uint8_t *seen = &r->around[pfn / LX_AROUND_CHUNK];
    uint64_t w = LX_AROUND_FIRST;
    for (uint8_t k = *seen; k && w < r->around_max; k--)
        w <<= 2;
    if (w > r->around_max)
        w = r->around_max;
    if (*seen < 255)
        (*seen)++;
    uint64_t p = pfn & ~(w - 1), end = p + w < r->npages ? p + w : r->npages;
    uint32_t n = 0;
    while (p < end && n < room) {
        if (r->state[p] != LX_PAGE_ABSENT) {
            p++;
            continue;
        }
        int zero = r->zero && r->zero[p];
        uint64_t run = 1;
        while (p + run < end && r->state[p + run] == LX_PAGE_ABSENT
               && (r->zero && r->zero[p + run]) == zero)
            run++;
        int64_t got = zero ? (int64_t)run : take_credits(&r->credits, (int64_t)run, (int64_t)w);
        if (!got)
            break;
        int rc = region_fill_pages(r, p, (uint64_t)got, zero ? LX_ZEROPAGE : LX_CONTINUE, 1);
        uint8_t want = zero ? LX_PAGE_ZERO : LX_PAGE_SHARED;
        uint64_t done = 0;
        while (done < (uint64_t)got && r->state[p + done] == want)
            done++;
        if (!zero)
            lx_add_credits(&r->credits, got - (int64_t)done);
        if (done) {
            out[n++] = (struct lx_fault){ .region = idx, .kind = zero ? LX_AROUND_ZERO : LX_AROUND,
                                          .count = (uint16_t)done, .pfn = p };
            r->around_fills += done;
        }
        if (rc || done < (uint64_t)got)
            break;
        p += done;
    }
    return n;
}

/* What to do with one fault; called with the region locked. Returns the
 * record kind, or 0 when the fault needs no record (a duplicate: woken). */
static uint32_t decide(struct lx_region *r, uint64_t pfn, uint64_t flags, int64_t *host_credits)
{
    uint8_t s = r->state[pfn];
    if (s == LX_PAGE_HOLD)
        return LX_HOLD;
    if (flags & UFFD_PAGEFAULT_FLAG_WP) {
        r->wp_faults++;
        if (s == LX_PAGE_SHARED || s == LX_PAGE_ZERO) {
            if (!take_credit(host_credits))
                return LX_NOCREDIT_WRITE;
            if (region_unprotect(r, pfn, 1)) {
                lx_add_credits(host_credits, 1);
                return LX_ERROR;
            }
            return LX_WRITTEN;
        }
        /* private (a protection left from a hold) or absent (dropped since):
         * unprotecting wakes the writer and allocates nothing */
        region_protect(r, pfn, 1, 0);
        r->dup_wakes++;
        return 0;
    }
    if (s != LX_PAGE_ABSENT) {  /* raced with a fill: just wake the thread */
        region_wake(r, pfn, 1);
        r->dup_wakes++;
        return 0;
    }
    if (flags & UFFD_PAGEFAULT_FLAG_MINOR) {
        if (r->no_share)
            return LX_COPY;
        if (!take_credit(&r->credits))
            return LX_NOCREDIT;
        if (region_fill(r, pfn, 1, LX_CONTINUE)) {
            lx_add_credits(&r->credits, 1);
            return LX_ERROR;
        }
        return LX_SERVED;
    }
    if (r->zero && r->zero[pfn])    /* one zero page for everyone: costs no credit */
        return region_fill(r, pfn, 1, LX_ZEROPAGE) ? LX_ERROR : LX_ZERO;
    return LX_FETCH;
}

/* Decide one page fault: its record, if any, then fault-around's, at
 * most room (>= 1) in all.  Returns how many were written to out. */
static uint32_t handle_fault(struct lx_region *r, uint32_t idx, const struct uffd_msg *m,
                             int64_t *host_credits, struct lx_fault *out, uint32_t room)
{
    uint64_t addr = m->arg.pagefault.address;
    if (addr < r->base || (addr - r->base) / PAGE >= r->npages) {
        r->bad_faults++;
        return 0;
    }
    uint64_t pfn = (addr - r->base) / PAGE;
    uint32_t n = 0;
    region_lock(r);
    r->faults++;
    uint32_t kind = decide(r, pfn, m->arg.pagefault.flags, host_credits);
    if (kind) {
        out[n++] = (struct lx_fault){ .region = idx, .kind = (uint16_t)kind, .count = 1, .pfn = pfn };
        if (kind == LX_SERVED && r->around_max && r->around)
            n += around(r, idx, pfn, out + n, room - n);
    }
    region_unlock(r);
    return n;
}

/* Read and decide queued faults of one region; never reads more messages
 * than there is room for records, so nothing read is ever dropped: each
 * fault keeps one record's room for every message read after it. */
static uint32_t drain(struct lx_region *r, uint32_t idx, int64_t *host_credits,
                      struct lx_fault *out, uint32_t room, uint32_t *msgs_read)
{
    struct uffd_msg msgs[MSG_BATCH];
    uint32_t n = 0;
    while (n < room) {
        size_t want = room - n < MSG_BATCH ? room - n : MSG_BATCH;
        ssize_t got = read(r->uffd, msgs, want * sizeof msgs[0]);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0)
            break;                  /* EAGAIN: drained */
        size_t count = (size_t)got / sizeof msgs[0];
        *msgs_read += (uint32_t)count;
        for (size_t i = 0; i < count; i++)
            if (msgs[i].event == UFFD_EVENT_PAGEFAULT)
                n += handle_fault(r, idx, &msgs[i], host_credits, out + n,
                                  room - n - (uint32_t)(count - 1 - i));
        if (count < want)
            break;
    }
    return n;
}

/* The faulting thread sleeps until Python answers this record. */
static int waits_for_python(uint32_t kind)
{
    return kind != LX_SERVED && kind != LX_ZERO && kind != LX_WRITTEN;
}

/* Drain the regions faults came from lately, straight from their uffds:
 * during a storm that skips an epoll_wait a round.  How many messages. */
static uint32_t drain_hot(struct lx_region **regions, uint32_t nregions, const uint32_t *hot,
                          uint32_t nhot, int64_t *host_credits, struct lx_fault *out,
                          uint32_t *n_out, uint32_t max_out)
{
    uint32_t msgs = 0;
    for (uint32_t i = 0; i < nhot && *n_out < max_out; i++)
        if (hot[i] < nregions && regions[hot[i]])
            *n_out += drain(regions[hot[i]], hot[i], host_credits, out + *n_out,
                            max_out - *n_out, &msgs);
    return msgs;
}

int lx_pager_serve(int epfd, struct lx_region **regions, uint32_t nregions, int wake_fd,
                   int64_t *host_credits, struct lx_fault *out, uint32_t max_out, int timeout_ms)
{
    struct epoll_event evs[MSG_BATCH];
    uint32_t hot[MSG_BATCH], nhot = 0, rounds = 0;
    int64_t start = now_ns(), first_record = 0, last_event = 0;
    int64_t deadline = start + (int64_t)timeout_ms * 1000000;
    uint32_t n_out = 0, checked = 0;
    for (;;) {
        int wait_ms, nev = 0, woke = 0, hot_only = 0;
        uint32_t msgs = 0;
        if (n_out) {                /* busy-poll while the storm lasts */
            int64_t t = now_ns();
            if (t - last_event > BUSY_POLL_NS || t - first_record > MAX_BATCH_NS)
                return n_out;
            wait_ms = 0;
            /* the storm's regions alone; epoll for the others now and then */
            if (nhot && ++rounds % HOT_ROUNDS) {
                msgs = drain_hot(regions, nregions, hot, nhot, host_credits, out, &n_out, max_out);
                hot_only = 1;
            }
        } else if (timeout_ms < 0) {
            wait_ms = -1;
        } else {
            int64_t left = deadline - now_ns();
            if (left <= 0)
                return 0;
            wait_ms = (int)((left + 999999) / 1000000);
        }
        if (!hot_only) {
            nev = epoll_wait(epfd, evs, MSG_BATCH, wait_ms);
            if (nev < 0) {
                if (errno == EINTR)
                    continue;
                return n_out ? (int)n_out : -errno;
            }
            nhot = 0;
        }
        for (int i = 0; i < nev; i++) {
            uint32_t idx = (uint32_t)evs[i].data.u64;
            if (idx == LX_WAKE_DATA) {
                uint64_t v;
                while (read(wake_fd, &v, sizeof v) < 0 && errno == EINTR)
                    ;
                woke = 1;
            } else if (idx < nregions && regions[idx]) {
                hot[nhot++] = idx;
                n_out += drain(regions[idx], idx, host_credits, out + n_out, max_out - n_out, &msgs);
            }
            if (n_out >= max_out)
                return n_out;
        }
        while (checked < n_out)     /* no busy-poll while a vCPU waits for Python */
            if (waits_for_python(out[checked++].kind))
                return n_out;
        if (msgs || nev > 0) {
            last_event = now_ns();
            if (n_out && !first_record)
                first_record = last_event;
        }
        if (woke || n_out >= max_out)
            return n_out;
    }
}
