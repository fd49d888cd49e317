/* userfaultfd helpers and the pager fast path: Python decides, C serves. */
#ifndef XC_UFFD_PAGER_H
#define XC_UFFD_PAGER_H
#include <stdint.h>

/* per-page state[] values */
#define XC_PAGE_ABSENT  0
#define XC_PAGE_PRESENT 1   /* set by C when it fills */
#define XC_PAGE_HOLD    2   /* Python decides (e.g. a paged-out dirty page: CONTINUE would
                               map the stale image page, so C must not fill it) */

/* xc_fault.kind */
#define XC_SERVED   1   /* C filled it (CONTINUE or ZEROPAGE), one credit spent */
#define XC_HOLD     2   /* state was XC_PAGE_HOLD: left unresolved for Python */
#define XC_NOCREDIT 3   /* no credit left: left unresolved for Python */
#define XC_FETCH    4   /* MISSING fault on a non-zero page: Python fetches */
#define XC_ERROR    5   /* the fill ioctl failed: left unresolved; retry with xc_resolve */

/* xc_resolve() how */
#define XC_CONTINUE 1
#define XC_ZEROPAGE 2
#define XC_WAKE     3

#define XC_WAKE_DATA 0xFFFFFFFFu   /* epoll data of the wake eventfd */

struct xc_region {          /* one clone's guest RAM as seen by the pager; memory owned by Python */
    int uffd;
    uint64_t base;          /* host VA of guest RAM inside the VMM process (may be another process) */
    uint64_t npages;
    uint8_t *state;         /* per page: XC_PAGE_ABSENT / _PRESENT / _HOLD */
    const uint8_t *zero;    /* per page: 1 = image page is all zero (shared by clones of one image) */
    uint64_t faults, minor_fills, zero_fills, dup_wakes;   /* counters C maintains */
    uint64_t bad_faults;    /* fault addresses outside [base, base + npages pages) */
};

struct xc_fault { uint32_t region; uint32_t kind; uint64_t pfn; };

int xc_uffd_open(uint64_t features, uint64_t *got_features);
int xc_uffd_register(int uffd, uint64_t addr, uint64_t len, uint64_t mode);
int xc_epoll_add(int epfd, int fd, uint32_t region_index);
/* Serve faults of all regions registered in epfd (xc_epoll_add, data = index
 * into regions; wake_fd with XC_WAKE_DATA). Returns the number of records
 * in out (0 on timeout or wake) or -errno. Faults that need Python (HOLD,
 * NOCREDIT, FETCH, ERROR) stay unresolved until xc_resolve/xc_copy_page;
 * several threads faulting one such page give several records.
 * Contract: `regions` must not change during a call (wake it, then pass a
 * new array), and a uffd goes into epfd only once the array holds its region. */
int xc_pager_serve(int epfd, struct xc_region **regions, uint32_t nregions, int wake_fd,
                   int64_t *credits, struct xc_fault *out, uint32_t max_out, int timeout_ms);
int xc_resolve(struct xc_region *r, uint64_t pfn, uint64_t npages, int how);
int xc_copy_page(struct xc_region *r, uint64_t pfn, const void *src);
#endif
