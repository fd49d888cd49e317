#include <errno.h>
#include <string.h>
#include <xenctrl.h>            /* the public memory.h and __HYPERVISOR_memory_op */

#include "fork_pages.h"

#define SHARING_OP_FORK_PAGES 11

/* The patch's union member, at the union's offset in xen_mem_sharing_op. */
struct fork_pages_op {
    uint64_t start;
    uint64_t gfns;              /* XEN_GUEST_HANDLE_64(uint64) */
    uint32_t nr;
    uint32_t pad;
};

_Static_assert(sizeof(struct fork_pages_op) <= sizeof(((xen_mem_sharing_op_t *)0)->u),
               "the patch's member must fit the union");

int xen_shim_fork_pages(xencall_handle *xcall, uint32_t domid, uint64_t start,
                        uint64_t *gfns, uint32_t nr)
{
    xen_mem_sharing_op_t *mso;
    struct fork_pages_op *op;
    uint64_t *buf;
    int rc, saved;

    /* Both must be hypercall-safe memory: Xen copies to and from them. */
    mso = xencall_alloc_buffer(xcall, sizeof(*mso));
    buf = xencall_alloc_buffer(xcall, (size_t)nr * sizeof(*buf));
    if ( !mso || !buf )
    {
        rc = -1;
        errno = ENOMEM;
        goto out;
    }
    memset(mso, 0, sizeof(*mso));
    mso->op = SHARING_OP_FORK_PAGES;
    mso->domain = domid;
    op = (struct fork_pages_op *)&mso->u;
    op->start = start;
    op->gfns = (uint64_t)(uintptr_t)buf;
    op->nr = nr;
    rc = xencall2(xcall, __HYPERVISOR_memory_op, XENMEM_sharing_op,
                  (uint64_t)(uintptr_t)mso);
    if ( rc == 0 )
    {
        rc = op->nr;
        memcpy(gfns, buf, (size_t)rc * sizeof(*buf));
    }
 out:
    saved = errno;
    if ( buf )
        xencall_free_buffer(xcall, buf);
    if ( mso )
        xencall_free_buffer(xcall, mso);
    errno = saved;
    return rc;
}
