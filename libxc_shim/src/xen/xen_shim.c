/* See xen_shim.h.  Ring discipline follows tools/xenpaging (Xen 4.17). */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include "xen_shim.h"

xentoollog_logger *xen_shim_logger(int min_level)
{
    return (xentoollog_logger *)
        xtl_createlogger_stdiostream(stderr, (xentoollog_level)min_level, 0);
}

void xen_shim_ring_init(vm_event_back_ring_t *ring, void *page)
{
    SHARED_RING_INIT((vm_event_sring_t *)page);
    BACK_RING_INIT(ring, (vm_event_sring_t *)page, XC_PAGE_SIZE);
}

/* Copy up to max requests off the ring; returns how many. */
int xen_shim_ring_take(vm_event_back_ring_t *ring, vm_event_request_t *out,
                       int max)
{
    int n = 0;
    RING_IDX cons = ring->req_cons;

    while ( n < max && RING_HAS_UNCONSUMED_REQUESTS(ring) )
    {
        xen_rmb();   /* see req_prod before the request it covers */
        memcpy(&out[n++], RING_GET_REQUEST(ring, cons), sizeof(*out));
        ring->req_cons = ++cons;
        ring->sring->req_event = cons + 1;
    }
    return n;
}

/* Put n responses and publish them; the caller notifies the channel. */
int xen_shim_ring_put(vm_event_back_ring_t *ring,
                      const vm_event_response_t *rsp, int n)
{
    int i;

    for ( i = 0; i < n; i++ )
    {
        memcpy(RING_GET_RESPONSE(ring, ring->rsp_prod_pvt), &rsp[i],
               sizeof(*rsp));
        ring->rsp_prod_pvt++;
    }
    RING_PUSH_RESPONSES(ring);
    return n;
}

/* Xen drops a response whose version is not VM_EVENT_INTERFACE_VERSION and
 * routes it by reason; Debian's xenpaging sets neither and so freezes its
 * guest.  Only VCPU_PAUSED is echoed: it is what asks Xen to unpause. */
void xen_shim_paging_response(const vm_event_request_t *req,
                              vm_event_response_t *rsp)
{
    memset(rsp, 0, sizeof(*rsp));
    rsp->version = VM_EVENT_INTERFACE_VERSION;
    rsp->reason = req->reason;
    rsp->vcpu_id = req->vcpu_id;
    rsp->flags = req->flags & VM_EVENT_FLAG_VCPU_PAUSED;
    rsp->u.mem_paging.gfn = req->u.mem_paging.gfn;
    rsp->u.mem_paging.flags = req->u.mem_paging.flags;
}

/* xc_vm_event_enable maps the ring with a plain foreign mmap. */
int xen_shim_ring_unmap(void *page)
{
    return munmap(page, XC_PAGE_SIZE);
}

/* One call for a whole range: from Python each page cost two hypercall
 * round trips plus the interpreter (docs/design.md, Lazy fill).  A page
 * that fails keeps going for the rest; err[i] says why (errno), 0 if the
 * steps asked for all succeeded. */
int xen_shim_paging_evict_pages(xc_interface *xch, uint32_t domid,
                                const uint64_t *gfns, int n, int steps,
                                int *err)
{
    int i, done = 0;

    for ( i = 0; i < n; i++ )
    {
        err[i] = 0;
        if ( (steps & XEN_SHIM_NOMINATE) &&
             xc_mem_paging_nominate(xch, domid, gfns[i]) < 0 )
        {
            err[i] = errno ? errno : EIO;
            continue;
        }
        if ( (steps & XEN_SHIM_EVICT) &&
             xc_mem_paging_evict(xch, domid, gfns[i]) < 0 )
        {
            err[i] = errno ? errno : EIO;
            continue;
        }
        done++;
    }
    return done;
}
