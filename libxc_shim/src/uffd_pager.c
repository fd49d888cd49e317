/* userfaultfd helpers and the pager fast path.
 * Python owns policy (credits, holds, fetches); this C serves the common
 * faults (image page in the memfd page cache, or an all-zero image page) at
 * full speed with the GIL released, and hands everything else back. */
#define _GNU_SOURCE
#include "uffd_pager.h"
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <linux/userfaultfd.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>

#define PAGE 4096ull
#define MSG_BATCH 64
#define BUSY_POLL_NS 50000      /* faults come in storms: spin this long after the last one */
#define MAX_BATCH_NS 1000000    /* but let Python see records within a millisecond */
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

static int wake(struct xc_region *r, uint64_t pfn, uint64_t npages)
{
    struct uffdio_range range = { r->base + pfn * PAGE, npages * PAGE };
    int rc;
    do
        rc = ioctl(r->uffd, UFFDIO_WAKE, &range);
    while (rc < 0 && errno == EINTR);
    return rc < 0 ? -errno : 0;
}

/* CONTINUE or ZEROPAGE over [pfn, pfn + npages). A page that is already
 * mapped (EEXIST) counts as filled, but the kernel does not wake its waiters
 * on error, so wake them here. */
static int fill(struct xc_region *r, uint64_t pfn, uint64_t npages, int how)
{
    uint64_t done = 0;
    int again = 0;
    while (done < npages) {
        uint64_t start = r->base + (pfn + done) * PAGE, len = (npages - done) * PAGE;
        int64_t mapped;
        int err = 0;
        if (how == XC_CONTINUE) {
            struct uffdio_continue c = { .range = { start, len } };
            if (ioctl(r->uffd, UFFDIO_CONTINUE, &c) < 0)
                err = errno;
            mapped = err ? c.mapped : (int64_t)len;
        } else {
            struct uffdio_zeropage z = { .range = { start, len } };
            if (ioctl(r->uffd, UFFDIO_ZEROPAGE, &z) < 0)
                err = errno;
            mapped = err ? z.zeropage : (int64_t)len;
        }
        uint64_t n = mapped > 0 ? (uint64_t)mapped / PAGE : 0, skip = 0;
        if (err == EEXIST) {
            skip = 1;
            wake(r, pfn + done + n, 1);
        } else if (err == EINTR || (err == EAGAIN && (n || ++again < MAX_EAGAIN))) {
            /* partial progress (EAGAIN) or interrupted: retry the rest */
        } else if (err) {
            return -err;
        }
        for (uint64_t i = 0; i < n + skip; i++)
            r->state[pfn + done + i] = XC_PAGE_PRESENT;
        if (how == XC_CONTINUE)
            r->minor_fills += n;
        else
            r->zero_fills += n;
        done += n + skip;
    }
    return 0;
}

int xc_resolve(struct xc_region *r, uint64_t pfn, uint64_t npages, int how)
{
    if (pfn >= r->npages || npages > r->npages - pfn)
        return -EINVAL;
    if (how == XC_WAKE)
        return wake(r, pfn, npages);
    if (how != XC_CONTINUE && how != XC_ZEROPAGE)
        return -EINVAL;
    return fill(r, pfn, npages, how);
}

int xc_copy_page(struct xc_region *r, uint64_t pfn, const void *src)
{
    if (pfn >= r->npages)
        return -EINVAL;
    for (int again = 0;;) {
        struct uffdio_copy c = {
            .dst = r->base + pfn * PAGE, .src = (uint64_t)(uintptr_t)src, .len = PAGE,
        };
        if (ioctl(r->uffd, UFFDIO_COPY, &c) == 0) {
            r->state[pfn] = XC_PAGE_PRESENT;
            return 0;
        }
        if (errno == EINTR || (errno == EAGAIN && ++again < MAX_EAGAIN))
            continue;
        if (errno == EEXIST) {      /* something is mapped there: data NOT placed */
            wake(r, pfn, 1);
            return -EEXIST;
        }
        return -errno;
    }
}

/* Decide one page fault; returns 1 if a record was written to *out. */
static int handle_fault(struct xc_region *r, uint32_t idx, const struct uffd_msg *m,
                        int64_t *credits, struct xc_fault *out)
{
    uint64_t addr = m->arg.pagefault.address;
    if (addr < r->base || (addr - r->base) / PAGE >= r->npages) {
        r->bad_faults++;
        return 0;
    }
    uint64_t pfn = (addr - r->base) / PAGE;
    uint32_t kind;
    r->faults++;
    switch (r->state[pfn]) {
    case XC_PAGE_PRESENT:           /* raced with a fill: just wake the thread */
        wake(r, pfn, 1);
        r->dup_wakes++;
        return 0;
    case XC_PAGE_HOLD:
        kind = XC_HOLD;
        break;
    default:
        if (__atomic_load_n(credits, __ATOMIC_RELAXED) <= 0)
            kind = XC_NOCREDIT;
        else if (m->arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_MINOR)
            kind = fill(r, pfn, 1, XC_CONTINUE) ? XC_ERROR : XC_SERVED;
        else if (r->zero && r->zero[pfn])
            kind = fill(r, pfn, 1, XC_ZEROPAGE) ? XC_ERROR : XC_SERVED;
        else
            kind = XC_FETCH;
        if (kind == XC_SERVED)
            __atomic_fetch_sub(credits, 1, __ATOMIC_RELAXED);
    }
    out->region = idx;
    out->kind = kind;
    out->pfn = pfn;
    return 1;
}

/* Read and decide queued faults of one region; never reads more messages
 * than there is room for records, so nothing read is ever dropped. */
static uint32_t drain(struct xc_region *r, uint32_t idx, int64_t *credits,
                      struct xc_fault *out, uint32_t room)
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
        for (size_t i = 0; i < count; i++)
            if (msgs[i].event == UFFD_EVENT_PAGEFAULT)
                n += handle_fault(r, idx, &msgs[i], credits, out + n);
        if (count < want)
            break;
    }
    return n;
}

int xc_pager_serve(int epfd, struct xc_region **regions, uint32_t nregions, int wake_fd,
                   int64_t *credits, struct xc_fault *out, uint32_t max_out, int timeout_ms)
{
    struct epoll_event evs[MSG_BATCH];
    int64_t start = now_ns(), first_record = 0, last_event = 0;
    int64_t deadline = start + (int64_t)timeout_ms * 1000000;
    uint32_t n_out = 0;
    for (;;) {
        int wait_ms;
        if (n_out) {                /* busy-poll while the storm lasts */
            int64_t t = now_ns();
            if (t - last_event > BUSY_POLL_NS || t - first_record > MAX_BATCH_NS)
                return n_out;
            wait_ms = 0;
        } else if (timeout_ms < 0) {
            wait_ms = -1;
        } else {
            int64_t left = deadline - now_ns();
            if (left <= 0)
                return 0;
            wait_ms = (int)((left + 999999) / 1000000);
        }
        int nev = epoll_wait(epfd, evs, MSG_BATCH, wait_ms);
        if (nev < 0) {
            if (errno == EINTR)
                continue;
            return n_out ? (int)n_out : -errno;
        }
        int woke = 0;
        for (int i = 0; i < nev; i++) {
            uint32_t idx = (uint32_t)evs[i].data.u64;
            if (idx == XC_WAKE_DATA) {
                uint64_t v;
                while (read(wake_fd, &v, sizeof v) < 0 && errno == EINTR)
                    ;
                woke = 1;
            } else if (idx < nregions && regions[idx]) {
                n_out += drain(regions[idx], idx, credits, out + n_out, max_out - n_out);
                if (n_out >= max_out)
                    return n_out;
            }
        }
        if (nev > 0) {
            last_event = now_ns();
            if (n_out && !first_record)
                first_record = last_event;
        }
        if (woke)
            return n_out;
    }
}
