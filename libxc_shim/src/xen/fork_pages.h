/* fork_pages: XENMEM_sharing_op_fork_pages, the project's hypervisor
 * patch 0003 (xen/patches/): the GFNs of the pages a fork owns, the ones a
 * helper can page out to make room.  Debian's public headers predate it, so
 * its argument is laid out here as the patch adds it to xen_mem_sharing_op's
 * union, and the memop is made through libxencall (libxenctrl keeps its
 * memop helper private). */
#ifndef FORK_PAGES_H
#define FORK_PAGES_H

#include <stdint.h>
#include <xencall.h>

/* Returns the GFNs written to gfns (at most nr; fewer: the list ended),
 * skipping the first `start` pages of the fork's list; -1 with errno set
 * on failure (ENOSYS: not a fork, or a hypervisor without the patch). */
int xen_shim_fork_pages(xencall_handle *xcall, uint32_t domid, uint64_t start,
                        uint64_t *gfns, uint32_t nr);

#endif
