/* userfaultfd helpers and the region operations Python calls (resolve,
 * copy, prefetch, set_state); the fault fast path is fault_serve.c.
 * Python owns policy (credits, holds, fetches); C serves the common
 * faults at full speed with the GIL released and hands everything else back. */
#define _GNU_SOURCE
#include "uffd_region.h"
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>
#include <linux/userfaultfd.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>

int lx_uffd_open(uint64_t features, uint64_t *got_features)
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

int lx_uffd_register(int uffd, uint64_t addr, uint64_t len, uint64_t mode)
{
    struct uffdio_register reg = { .range = { addr, len }, .mode = mode };
    return ioctl(uffd, UFFDIO_REGISTER, &reg) < 0 ? -errno : 0;
}

int lx_epoll_add(int epfd, int fd, uint32_t region_index)
{
    struct epoll_event ev = { .events = EPOLLIN, .data.u64 = region_index };
    return epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0 ? -errno : 0;
}

int lx_resolve(struct lx_region *r, uint64_t pfn, uint64_t npages, int how)
{
    if (pfn >= r->npages || npages > r->npages - pfn)
        return -EINVAL;
    int rc;
    region_lock(r);
    if (how == LX_WAKE)
        rc = region_wake(r, pfn, npages);
    else if (how == LX_UNPROTECT)
        rc = region_unprotect(r, pfn, npages);
    else if (how == LX_CONTINUE || how == LX_ZEROPAGE)
        rc = region_fill(r, pfn, npages, how);
    else
        rc = -EINVAL;
    region_unlock(r);
    return rc;
}

int lx_copy_page(struct lx_region *r, uint64_t pfn, const void *src)
{
    if (pfn >= r->npages)
        return -EINVAL;
    int rc = 0;
    region_lock(r);
    for (int again = 0;;) {
        /* no WP: a private page is the clone's own, writes need no tracking */
        struct uffdio_copy c = {
            .dst = r->base + pfn * PAGE, .src = (uint64_t)(uintptr_t)src, .len = PAGE,
        };
        if (ioctl(r->uffd, UFFDIO_COPY, &c) == 0) {
            r->state[pfn] = LX_PAGE_PRIVATE;
            break;
        }
        if (errno == EINTR || (errno == EAGAIN && ++again < MAX_EAGAIN))
            continue;
        rc = -errno;
        if (errno == EEXIST)    /* something is mapped there: data NOT placed */
            region_wake(r, pfn, 1);
        break;
    }
    region_unlock(r);
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
int64_t lx_prefetch(struct lx_region *r, const uint64_t *pfns, uint64_t n, uint8_t *got)
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
        region_lock(r);
        uint64_t len = 0, done = 0;     /* the absent prefix of the run; what got mapped */
        while (len < run && r->state[p + len] == LX_PAGE_ABSENT)
            len++;
        if (len)
            region_fill(r, p, len, zero ? LX_ZEROPAGE : LX_CONTINUE);
        while (done < len && r->state[p + done] != LX_PAGE_ABSENT)
            got[i + done] = r->state[p + done], done++;
        for (uint64_t k = 0; r->around && k < done; k++) {
            uint8_t *seen = &r->around[(p + k) / LX_AROUND_CHUNK];
            if (*seen < 255)
                (*seen)++;
        }
        region_unlock(r);
        mapped += done;
        i += done < len ? done + 1 : (len ? len : 1);   /* past a page that failed or was present */
    }
    return mapped;
}

int lx_set_state(struct lx_region *r, const uint64_t *pfns, uint64_t n, int state, uint8_t *prev)
{
    if (state < LX_PAGE_ABSENT || state > LX_PAGE_ZERO)
        return -EINVAL;
    for (uint64_t i = 0; i < n; i++)
        if (pfns[i] >= r->npages)
            return -EINVAL;
    int err = 0;
    region_lock(r);
    for (uint64_t i = 0; i < n; i++) {
        uint64_t p = pfns[i];
        uint8_t old = r->state[p];
        int rc;
        if (prev)
            prev[i] = old;
        r->state[p] = (uint8_t)state;
        if (state == LX_PAGE_HOLD)      /* shared and zero pages are protected already */
            rc = old == LX_PAGE_PRIVATE ? region_protect(r, p, 1, UFFDIO_WRITEPROTECT_MODE_WP) : 0;
        else if (state == LX_PAGE_PRIVATE)
            rc = region_protect(r, p, 1, 0);
        else
            rc = region_wake(r, p, 1);
        if (rc && !err)
            err = rc;
    }
    region_unlock(r);
    return err;
}

int lx_punch_hole(int fd, uint64_t offset, uint64_t len)
{
    return fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)offset, (off_t)len) < 0
        ? -errno : 0;
}

void lx_add_credits(int64_t *credits, int64_t delta)
{
    __atomic_add_fetch(credits, delta, __ATOMIC_RELAXED);
}
