/* userfaultfd helpers and the pager fast path: Python decides, C serves. */
#ifndef LX_UFFD_PAGER_H
#define LX_UFFD_PAGER_H
#include <stdint.h>

/* per-page state[] values; equal to interfaces.PageState */
#define LX_PAGE_ABSENT  0
#define LX_PAGE_SHARED  1   /* the image's page, mapped write-protected */
#define LX_PAGE_HOLD    2   /* Python decides (evicting, or paged out: CONTINUE would map
                               the stale image page, so C must not fill it) */
#define LX_PAGE_PRIVATE 3   /* written: the clone's own copy */
#define LX_PAGE_ZERO    4   /* the zero page, mapped write-protected */

/* lx_fault.kind; equal to interfaces.FaultKind */
#define LX_SERVED         1   /* C mapped the image page: one clone credit spent */
#define LX_HOLD           2   /* state was LX_PAGE_HOLD: left unresolved for Python */
#define LX_NOCREDIT       3   /* the clone has no credit left: left unresolved */
#define LX_FETCH          4   /* MISSING fault on a non-zero page: Python fetches */
#define LX_ERROR          5   /* the ioctl failed: left unresolved; retry with lx_resolve */
#define LX_ZERO           6   /* C mapped the zero page (no credit) */
#define LX_WRITTEN        7   /* a write made the page private: one host credit spent */
#define LX_NOCREDIT_WRITE 8   /* a write needs a host page and there are no host credits */
#define LX_COPY           9   /* the clone does not share image pages: Python copies one in */
#define LX_AROUND        10   /* C mapped `count` image pages from pfn on around a fault it
                                 served: one clone credit a page */
#define LX_AROUND_ZERO   11   /* ... or `count` zero pages there (no credit) */

/* lx_resolve() how */
#define LX_CONTINUE  1   /* map the image page write-protected -> SHARED */
#define LX_ZEROPAGE  2   /* map the zero page write-protected  -> ZERO */
#define LX_WAKE      3
#define LX_UNPROTECT 4   /* let the write proceed (kernel copy on write) -> PRIVATE */

#define LX_WAKE_DATA 0xFFFFFFFFu   /* epoll data of the wake eventfd */

/* Not in Debian 12's headers (kernel >= 6.4 / 6.7). */
#ifndef UFFDIO_CONTINUE_MODE_WP
#define UFFDIO_CONTINUE_MODE_WP ((uint64_t)1 << 1)
#endif

struct lx_region {          /* one clone's guest RAM as seen by the pager; memory owned by Python */
    int uffd;
    uint64_t base;          /* host VA of guest RAM inside the VMM process (may be another process) */
    uint64_t npages;
    uint8_t *state;         /* per page: LX_PAGE_* */
    const uint8_t *zero;    /* per page: 1 = image page is all zero (shared by clones of one image) */
    int64_t credits;        /* how many more pages C may map into this clone */
    uint64_t faults, minor_fills, zero_fills, dup_wakes;   /* counters C maintains */
    uint64_t bad_faults;    /* fault addresses outside [base, base + npages pages) */
    uint64_t wp_faults, cow_fills;
    uint32_t lock;          /* serialises state changes with their ioctls (C and Python) */
    uint32_t no_share;      /* 1: image pages are copied in by Python, never mapped shared */
    uint32_t around_max;    /* fault-around: largest window in pages (a power of two); 0 = off */
    uint8_t *around;        /* per LX_AROUND_CHUNK pages: faults served there so far */
    uint64_t around_fills;  /* pages mapped around faults */
};

#define LX_AROUND_FIRST 16      /* the first window in a chunk (the kernel's fault-around) */
#define LX_AROUND_CHUNK 512     /* windows double per fault within one 2 MiB chunk */

/* count: pages in the record (LX_AROUND, LX_AROUND_ZERO), else 1 */
struct lx_fault { uint32_t region; uint16_t kind; uint16_t count; uint64_t pfn; };

int lx_uffd_open(uint64_t features, uint64_t *got_features);
int lx_uffd_register(int uffd, uint64_t addr, uint64_t len, uint64_t mode);
int lx_epoll_add(int epfd, int fd, uint32_t region_index);
/* Serve faults of all regions registered in epfd (lx_epoll_add, data = index
 * into regions; wake_fd with LX_WAKE_DATA). host_credits: pages C may
 * allocate (copy on write). Returns the number of records in out (0 on
 * timeout or wake) or -errno. Faults that need Python stay unresolved until
 * lx_resolve/lx_copy_page; several threads faulting one such page give
 * several records.
 * Contract: `regions` must not change during a call (wake it, then pass a
 * new array), and a uffd goes into epfd only once the array holds its region. */
int lx_pager_serve(int epfd, struct lx_region **regions, uint32_t nregions, int wake_fd,
                   int64_t *host_credits, struct lx_fault *out, uint32_t max_out, int timeout_ms);
/* Add delta (may be negative) to host_credits or a region's credits while
 * lx_pager_serve runs: it spends them atomically. */
void lx_add_credits(int64_t *credits, int64_t delta);
int lx_resolve(struct lx_region *r, uint64_t pfn, uint64_t npages, int how);
int lx_copy_page(struct lx_region *r, uint64_t pfn, const void *src);
/* Set the state of n pages, atomically with C's fault handling; prev (may
 * be NULL) gets the old states. HOLD write-protects private pages, so a
 * write faults to Python; ABSENT, SHARED and ZERO wake waiters; PRIVATE
 * removes the write protection (and wakes). */
int lx_set_state(struct lx_region *r, const uint64_t *pfns, uint64_t n, int state, uint8_t *prev);
int lx_punch_hole(int fd, uint64_t offset, uint64_t len);
/* Map absent pages ahead of their faults (zero or in the image cache), runs
 * in one ioctl; got[i]: the page's new state or 0.  Returns pages mapped. */
int64_t lx_prefetch(struct lx_region *r, const uint64_t *pfns, uint64_t n, uint8_t *got);
#endif
