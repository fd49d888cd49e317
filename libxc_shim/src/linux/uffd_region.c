/* The region primitives both the pager's fast path (fault_serve.c) and
 * Python's calls (uffd_pager.c) use: the region lock, wake, write-protect,
 * and mapping image or zero pages with the page states kept in step. */
#define _GNU_SOURCE
#include "uffd_region.h"
#include <errno.h>
#include <sched.h>
#include <string.h>
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>

void region_lock(struct lx_region *r)
{
    while (__atomic_exchange_n(&r->lock, 1, __ATOMIC_ACQUIRE))
        sched_yield();
}

void region_unlock(struct lx_region *r)
{
    __atomic_store_n(&r->lock, 0, __ATOMIC_RELEASE);
}

int region_wake(struct lx_region *r, uint64_t pfn, uint64_t npages)
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
int region_protect(struct lx_region *r, uint64_t pfn, uint64_t npages, uint64_t mode)
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
int region_fill_pages(struct lx_region *r, uint64_t pfn, uint64_t npages, int how, int quiet)
{
    uint64_t done = 0;
    int again = 0;
    while (done < npages) {
        uint64_t start = r->base + (pfn + done) * PAGE, len = (npages - done) * PAGE;
        int64_t mapped;
        int err = 0;
        if (how == LX_CONTINUE) {
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
        if (how == LX_ZEROPAGE && n + skip) {
            int rc = region_protect(r, pfn + done, n + skip, UFFDIO_WRITEPROTECT_MODE_WP);
            if (rc)
                return rc;      /* left unmarked: a retry gets EEXIST and protects again */
            if (!quiet)
                region_wake(r, pfn + done, n + skip);
        } else if (skip) {
            region_wake(r, pfn + done + n, 1);
        }
        for (uint64_t i = 0; i < n + skip; i++)
            r->state[pfn + done + i] = how == LX_CONTINUE ? LX_PAGE_SHARED : LX_PAGE_ZERO;
        if (how == LX_CONTINUE)
            r->minor_fills += n;
        else
            r->zero_fills += n;
        done += n + skip;
        if (err && err != EEXIST && err != EINTR && !(err == EAGAIN && (n || ++again < MAX_EAGAIN)))
            return -err;        /* EAGAIN = partial progress or mm changing: retry the rest */
    }
    return 0;
}

int region_fill(struct lx_region *r, uint64_t pfn, uint64_t npages, int how)
{
    return region_fill_pages(r, pfn, npages, how, 0);
}

/* Private before the writer wakes: whoever reads the states without the
 * lock never sees a written page as clean. */
int region_unprotect(struct lx_region *r, uint64_t pfn, uint64_t npages)
{
    uint8_t was = r->state[pfn];
    memset(r->state + pfn, LX_PAGE_PRIVATE, npages);
    int rc = region_protect(r, pfn, npages, 0);
    if (rc == 0)
        r->cow_fills += npages;
    else
        memset(r->state + pfn, was, npages);   /* ranges Python unprotects are uniform */
    return rc;
}
