/* userfaultfd helpers and the pager fast path.
 * Python owns policy (credits, holds, fetches); this C serves the common
 * faults at full speed with the GIL released and hands everything else back:
 * a read maps the image page (memfd page cache) or the zero page, both
 * write-protected, and a write to one of them is let through (the kernel
 * copies the page) while host credits last, so C knows every private page. */
#define _GNU_SOURCE
#include "uffd_pager.h"
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <linux/userfaultfd.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>

#define PAGE 4096ull
#define MSG_BATCH 64
#define BUSY_POLL_NS 50000      /* faults C serves come in storms: spin this long after the last */
#define MAX_BATCH_NS 1000000    /* but let Python see records within a millisecond */
#define HOT_ROUNDS 16          /* busy-poll: one round in this many asks epoll for other regions */
#define MAX_EAGAIN 1000         /* EAGAIN = mm changing under us; retry a bounded number of times */

static int64_t now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

int xc_uffd_open(uint64_t features, uint64_t *got_features)
{
    int fd = syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
    if (fd < 0 && errno == EPERM) {     /* no syscall permission: try /dev/userfaultfd */
        int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
        if (dev >= 0) {
            fd = ioctl(dev, USERFAULTFD_IOC_NEW, O_CLOEXEC | O_NONBLOCK);
            close(dev);
        }
    }
    if (fd < 0)
        return -errno;
    struct uffdio_api api = { .api = UFFD_API, .features = features };
    if (ioctl(fd, UFFDIO_API, &api) < 0) {
        int err = errno;
        close(fd);
        return -err;
    }
    if (got_features)
        *got_features = api.features;   /* the kernel reports everything it supports */
    return fd;
}

int xc_uffd_register(int uffd, uint64_t addr, uint64_t len, uint64_t mode)
{
    struct uffdio_register reg = { .range = { addr, len }, .mode = mode };
    return ioctl(uffd, UFFDIO_REGISTER, &reg) < 0 ? -errno : 0;
}

int xc_epoll_add(int epfd, int fd, uint32_t region_index)
{
    struct epoll_event ev = { .events = EPOLLIN, .data.u64 = region_index };
    return epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0 ? -errno : 0;
}

static void lock(struct xc_region *r)
{
    while (__atomic_exchange_n(&r->lock, 1, __ATOMIC_ACQUIRE))
        sched_yield();
}

static void unlock(struct xc_region *r)
{
    __atomic_store_n(&r->lock, 0, __ATOMIC_RELEASE);
}

static int wake(struct xc_region *r, uint64_t pfn, uint64_t npages)
{
    struct uffdio_range range = { r->base + pfn * PAGE, npages * PAGE };
    int rc;
    do
        rc = ioctl(r->uffd, UFFDIO_WAKE, &range);
    while (rc < 0 && errno == EINTR);
    return rc < 0 ? -errno : 0;
}

/* mode UFFDIO_WRITEPROTECT_MODE_WP protects (and wakes nobody); mode 0
 * removes the protection and wakes the writers, whose retry makes the
 * kernel copy the page (or write the private page it already is). */
static int protect(struct xc_region *r, uint64_t pfn, uint64_t npages, uint64_t mode)
{
    struct uffdio_writeprotect w = { .range = { r->base + pfn * PAGE, npages * PAGE },
                                     .mode = mode };
    int rc, again = 0;
    do
        rc = ioctl(r->uffd, UFFDIO_WRITEPROTECT, &w);
    while (rc < 0 && (errno == EINTR || (errno == EAGAIN && ++again < MAX_EAGAIN)));
    return rc < 0 ? -errno : 0;
}

/* Map the image page (CONTINUE) or the zero page over [pfn, pfn + npages),
 * write-protected either way, so that a write faults and is counted. A
 * page that is already mapped (EEXIST) counts as filled, but the kernel
 * does not wake its waiters on error, so wake them here.  quiet: zero
 * pages no fault waits for (fault-around's) are not woken, which saves a
 * syscall a run; a fault that raced in still has its message queued, and
 * decide() wakes it. */
static int fill_pages(struct xc_region *r, uint64_t pfn, uint64_t npages, int how, int quiet)
{
    uint64_t done = 0;
    int again = 0;
    while (done < npages) {
        uint64_t start = r->base + (pfn + done) * PAGE, len = (npages - done) * PAGE;
        int64_t mapped;
        int err = 0;
        if (how == XC_CONTINUE) {
            struct uffdio_continue c = { .range = { start, len }, .mode = UFFDIO_CONTINUE_MODE_WP };
            if (ioctl(r->uffd, UFFDIO_CONTINUE, &c) < 0)
                err = errno;
            mapped = err ? c.mapped : (int64_t)len;
        } else {
            /* ZEROPAGE has no WP mode: map without waking, protect, then wake.
             * Only the (sleeping) faulting vCPU writes a clone's RAM, so
             * nothing writes the page in between. */
            struct uffdio_zeropage z = { .range = { start, len },
                                         .mode = UFFDIO_ZEROPAGE_MODE_DONTWAKE };
            if (ioctl(r->uffd, UFFDIO_ZEROPAGE, &z) < 0)
                err = errno;
            mapped = err ? z.zeropage : (int64_t)len;
        }
        uint64_t n = mapped > 0 ? (uint64_t)mapped / PAGE : 0, skip = err == EEXIST;
        if (how == XC_ZEROPAGE && n + skip) {
            int rc = protect(r, pfn + done, n + skip, UFFDIO_WRITEPROTECT_MODE_WP);
            if (rc)
                return rc;      /* left unmarked: a retry gets EEXIST and protects again */
            if (!quiet)
                wake(r, pfn + done, n + skip);
        } else if (skip) {
            wake(r, pfn + done + n, 1);
        }
        for (uint64_t i = 0; i < n + skip; i++)
            r->state[pfn + done + i] = how == XC_CONTINUE ? XC_PAGE_SHARED : XC_PAGE_ZERO;
        if (how == XC_CONTINUE)
            r->minor_fills += n;
        else
            r->zero_fills += n;
        done += n + skip;
        if (err && err != EEXIST && err != EINTR && !(err == EAGAIN && (n || ++again < MAX_EAGAIN)))
            return -err;        /* EAGAIN = partial progress or mm changing: retry the rest */
    }
    return 0;
}

static int fill(struct xc_region *r, uint64_t pfn, uint64_t npages, int how)
{
    return fill_pages(r, pfn, npages, how, 0);
}

/* Private before the writer wakes: whoever reads the states without the
 * lock never sees a written page as clean. */
static int unprotect(struct xc_region *r, uint64_t pfn, uint64_t npages)
{
    uint8_t was = r->state[pfn];
    memset(r->state + pfn, XC_PAGE_PRIVATE, npages);
    int rc = protect(r, pfn, npages, 0);
    if (rc == 0)
        r->cow_fills += npages;
    else
        memset(r->state + pfn, was, npages);   /* ranges Python unprotects are uniform */
    return rc;
}

int xc_resolve(struct xc_region *r, uint64_t pfn, uint64_t npages, int how)
{
    if (pfn >= r->npages || npages > r->npages - pfn)
        return -EINVAL;
    int rc;
    lock(r);
    if (how == XC_WAKE)
        rc = wake(r, pfn, npages);
    else if (how == XC_UNPROTECT)
        rc = unprotect(r, pfn, npages);
    else if (how == XC_CONTINUE || how == XC_ZEROPAGE)
        rc = fill(r, pfn, npages, how);
    else
        rc = -EINVAL;
    unlock(r);
    return rc;
}

int xc_copy_page(struct xc_region *r, uint64_t pfn, const void *src)
{
    if (pfn >= r->npages)
        return -EINVAL;
    int rc = 0;
    lock(r);
    for (int again = 0;;) {
        /* no WP: a private page is the clone's own, writes need no tracking */
        struct uffdio_copy c = {
            .dst = r->base + pfn * PAGE, .src = (uint64_t)(uintptr_t)src, .len = PAGE,
        };
        if (ioctl(r->uffd, UFFDIO_COPY, &c) == 0) {
            r->state[pfn] = XC_PAGE_PRIVATE;
            break;
        }
        if (errno == EINTR || (errno == EAGAIN && ++again < MAX_EAGAIN))
            continue;
        rc = -errno;
        if (errno == EEXIST)    /* something is mapped there: data NOT placed */
            wake(r, pfn, 1);
        break;
    }
    unlock(r);
    return rc;
}

/* Map pages ahead of their faults (a recorded working set), in the given
 * order, runs of consecutive absent pages in one ioctl.  Only pages C may
 * fill alone: absent, and a zero page or one the image cache holds (a hole
 * that is not a zero page needs a fetch, which is Python's: skipped).
 * got[i] gets the state page pfns[i] was put in, or 0.  Costs no credit:
 * the caller accounts what was mapped.  Each page mapped counts as a fault
 * in its chunk for fault-around: where the set is dense, so is the clone's
 * reading, and its first fault there maps a big window.  Returns how many
 * were mapped. */
int64_t xc_prefetch(struct xc_region *r, const uint64_t *pfns, uint64_t n, uint8_t *got)
{
    int64_t mapped = 0;
    memset(got, 0, n);
    for (uint64_t i = 0; i < n;) {
        uint64_t p = pfns[i], run = 1;
        if (p >= r->npages || r->no_share) {
            i++;
            continue;
        }
        int zero = r->zero && r->zero[p];
        while (i + run < n && pfns[i + run] == p + run && p + run < r->npages
               && (r->zero && r->zero[p + run]) == zero)
            run++;
        lock(r);
        uint64_t len = 0, done = 0;     /* the absent prefix of the run; what got mapped */
        while (len < run && r->state[p + len] == XC_PAGE_ABSENT)
            len++;
        if (len)
            fill(r, p, len, zero ? XC_ZEROPAGE : XC_CONTINUE);
        while (done < len && r->state[p + done] != XC_PAGE_ABSENT)
            got[i + done] = r->state[p + done], done++;
        for (uint64_t k = 0; r->around && k < done; k++) {
            uint8_t *seen = &r->around[(p + k) / XC_AROUND_CHUNK];
            if (*seen < 255)
                (*seen)++;
        }
        unlock(r);
        mapped += done;
        i += done < len ? done + 1 : (len ? len : 1);   /* past a page that failed or was present */
    }
    return mapped;
}

int xc_set_state(struct xc_region *r, const uint64_t *pfns, uint64_t n, int state, uint8_t *prev)
{
    if (state < XC_PAGE_ABSENT || state > XC_PAGE_ZERO)
        return -EINVAL;
    for (uint64_t i = 0; i < n; i++)
        if (pfns[i] >= r->npages)
            return -EINVAL;
    int err = 0;
    lock(r);
    for (uint64_t i = 0; i < n; i++) {
        uint64_t p = pfns[i];
        uint8_t old = r->state[p];
        int rc;
        if (prev)
            prev[i] = old;
        r->state[p] = (uint8_t)state;
        if (state == XC_PAGE_HOLD)      /* shared and zero pages are protected already */
            rc = old == XC_PAGE_PRIVATE ? protect(r, p, 1, UFFDIO_WRITEPROTECT_MODE_WP) : 0;
        else if (state == XC_PAGE_PRIVATE)
            rc = protect(r, p, 1, 0);
        else
            rc = wake(r, p, 1);
        if (rc && !err)
            err = rc;
    }
    unlock(r);
    return err;
}

int xc_punch_hole(int fd, uint64_t offset, uint64_t len)
{
    return fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)offset, (off_t)len) < 0
        ? -errno : 0;
}

void xc_add_credits(int64_t *credits, int64_t delta)
{
    __atomic_add_fetch(credits, delta, __ATOMIC_RELAXED);
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
 * twofold: a fault costs a guest exit, some 15-20 us, as much as mapping
 * ~30 pages; 8 x 256 MiB x 10%: 21% less machinery time, 16% fewer faults).
 * Runs of absent non-zero pages, one CONTINUE each, a credit a page, and
 * only while the clone keeps a window's worth of credits for real faults;
 * runs of zero pages, one ZEROPAGE each and no credit (left to fault, they
 * were a third of 8 x 1 GiB x 10%'s faults: 29.0k -> 18.7k).  A page the
 * host cache lacks (a hole) ends the window: it needs a fetch, which is
 * Python's.  One record per run, at most room; how many. */
static uint32_t around(struct xc_region *r, uint32_t idx, uint64_t pfn,
                       struct xc_fault *out, uint32_t room)
{
    uint8_t *seen = &r->around[pfn / XC_AROUND_CHUNK];
    uint64_t w = XC_AROUND_FIRST;
    for (uint8_t k = *seen; k && w < r->around_max; k--)
        w <<= 2;
    if (w > r->around_max)
        w = r->around_max;
    if (*seen < 255)
        (*seen)++;
    uint64_t p = pfn & ~(w - 1), end = p + w < r->npages ? p + w : r->npages;
    uint32_t n = 0;
    while (p < end && n < room) {
        if (r->state[p] != XC_PAGE_ABSENT) {
            p++;
            continue;
        }
        int zero = r->zero && r->zero[p];
        uint64_t run = 1;
        while (p + run < end && r->state[p + run] == XC_PAGE_ABSENT
               && (r->zero && r->zero[p + run]) == zero)
            run++;
        int64_t got = zero ? (int64_t)run : take_credits(&r->credits, (int64_t)run, (int64_t)w);
        if (!got)
            break;
        int rc = fill_pages(r, p, (uint64_t)got, zero ? XC_ZEROPAGE : XC_CONTINUE, 1);
        uint8_t want = zero ? XC_PAGE_ZERO : XC_PAGE_SHARED;
        uint64_t done = 0;
        while (done < (uint64_t)got && r->state[p + done] == want)
            done++;
        if (!zero)
            xc_add_credits(&r->credits, got - (int64_t)done);
        if (done) {
            out[n++] = (struct xc_fault){ .region = idx, .kind = zero ? XC_AROUND_ZERO : XC_AROUND,
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
static uint32_t decide(struct xc_region *r, uint64_t pfn, uint64_t flags, int64_t *host_credits)
{
    uint8_t s = r->state[pfn];
    if (s == XC_PAGE_HOLD)
        return XC_HOLD;
    if (flags & UFFD_PAGEFAULT_FLAG_WP) {
        r->wp_faults++;
        if (s == XC_PAGE_SHARED || s == XC_PAGE_ZERO) {
            if (!take_credit(host_credits))
                return XC_NOCREDIT_WRITE;
            if (unprotect(r, pfn, 1)) {
                xc_add_credits(host_credits, 1);
                return XC_ERROR;
            }
            return XC_WRITTEN;
        }
        /* private (a protection left from a hold) or absent (dropped since):
         * unprotecting wakes the writer and allocates nothing */
        protect(r, pfn, 1, 0);
        r->dup_wakes++;
        return 0;
    }
    if (s != XC_PAGE_ABSENT) {  /* raced with a fill: just wake the thread */
        wake(r, pfn, 1);
        r->dup_wakes++;
        return 0;
    }
    if (flags & UFFD_PAGEFAULT_FLAG_MINOR) {
        if (r->no_share)
            return XC_COPY;
        if (!take_credit(&r->credits))
            return XC_NOCREDIT;
        if (fill(r, pfn, 1, XC_CONTINUE)) {
            xc_add_credits(&r->credits, 1);
            return XC_ERROR;
        }
        return XC_SERVED;
    }
    if (r->zero && r->zero[pfn])    /* one zero page for everyone: costs no credit */
        return fill(r, pfn, 1, XC_ZEROPAGE) ? XC_ERROR : XC_ZERO;
    return XC_FETCH;
}

/* Decide one page fault: its record, if any, then fault-around's, at
 * most room (>= 1) in all.  Returns how many were written to out. */
static uint32_t handle_fault(struct xc_region *r, uint32_t idx, const struct uffd_msg *m,
                             int64_t *host_credits, struct xc_fault *out, uint32_t room)
{
    uint64_t addr = m->arg.pagefault.address;
    if (addr < r->base || (addr - r->base) / PAGE >= r->npages) {
        r->bad_faults++;
        return 0;
    }
    uint64_t pfn = (addr - r->base) / PAGE;
    uint32_t n = 0;
    lock(r);
    r->faults++;
    uint32_t kind = decide(r, pfn, m->arg.pagefault.flags, host_credits);
    if (kind) {
        out[n++] = (struct xc_fault){ .region = idx, .kind = (uint16_t)kind, .count = 1, .pfn = pfn };
        if (kind == XC_SERVED && r->around_max && r->around)
            n += around(r, idx, pfn, out + n, room - n);
    }
    unlock(r);
    return n;
}

/* Read and decide queued faults of one region; never reads more messages
 * than there is room for records, so nothing read is ever dropped: each
 * fault keeps one record's room for every message read after it. */
static uint32_t drain(struct xc_region *r, uint32_t idx, int64_t *host_credits,
                      struct xc_fault *out, uint32_t room, uint32_t *msgs_read)
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
    return kind != XC_SERVED && kind != XC_ZERO && kind != XC_WRITTEN;
}

/* Drain the regions faults came from lately, straight from their uffds:
 * during a storm that skips an epoll_wait a round.  How many messages. */
static uint32_t drain_hot(struct xc_region **regions, uint32_t nregions, const uint32_t *hot,
                          uint32_t nhot, int64_t *host_credits, struct xc_fault *out,
                          uint32_t *n_out, uint32_t max_out)
{
    uint32_t msgs = 0;
    for (uint32_t i = 0; i < nhot && *n_out < max_out; i++)
        if (hot[i] < nregions && regions[hot[i]])
            *n_out += drain(regions[hot[i]], hot[i], host_credits, out + *n_out,
                            max_out - *n_out, &msgs);
    return msgs;
}

int xc_pager_serve(int epfd, struct xc_region **regions, uint32_t nregions, int wake_fd,
                   int64_t *host_credits, struct xc_fault *out, uint32_t max_out, int timeout_ms)
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
            if (idx == XC_WAKE_DATA) {
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
