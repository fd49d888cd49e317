/* xen_shim: the few things cffi cannot bind from Xen's headers directly.
 *
 * The vm_event ring is driven by C macros (io/ring.h), so taking requests
 * and putting responses live here as functions.  xc_vm_event_enable() is
 * exported by Debian's libxenctrl 4.17 but declared only in the private
 * xc_private.h, so it is declared here with the 4.17 signature (its third
 * argument is the HVM param of the ring page, e.g.
 * HVM_PARAM_PAGING_RING_PFN, which is passed straight to xc_hvm_param_get).
 */
#ifndef XEN_SHIM_H
#define XEN_SHIM_H

#include <xenctrl.h>          /* defines __XEN_TOOLS__, xen_rmb/xen_wmb */
#include <xenguest.h>         /* xc_domain_resume */
#include <xenforeignmemory.h>
#include <xengnttab.h>
#include <xenevtchn.h>
#include <xentoollog.h>
#include <xenstore.h>         /* libxenstore: xs_open and the XenStore calls */
#include <xen/vm_event.h>
#include <xen/hvm/params.h>
#include <xen/hvm/save.h>

/* Save-record type codes are sizeof-expressions (HVM_SAVE_CODE). */
#define XEN_SHIM_HVM_CPU HVM_SAVE_CODE(CPU)
#define XEN_SHIM_HVM_END HVM_SAVE_CODE(END)

/* A name for the anonymous union of event payloads: cffi needs one to
 * declare it partially (only mem_paging is bound). */
typedef __typeof__(((vm_event_request_t *)0)->u) xen_shim_vm_event_u;

void *xc_vm_event_enable(xc_interface *xch, uint32_t domain_id, int param,
                         uint32_t *port);

/* A stderr logger that only prints at or above min_level (an
 * xentoollog_level); errors reach Python through errno and
 * xc_get_last_error, so the daemon keeps libxc quiet by default. */
xentoollog_logger *xen_shim_logger(int min_level);

void xen_shim_ring_init(vm_event_back_ring_t *ring, void *page);
int xen_shim_ring_take(vm_event_back_ring_t *ring, vm_event_request_t *out,
                       int max);
int xen_shim_ring_put(vm_event_back_ring_t *ring,
                      const vm_event_response_t *rsp, int n);
void xen_shim_paging_response(const vm_event_request_t *req,
                              vm_event_response_t *rsp);
int xen_shim_ring_unmap(void *page);

/* Steps of xen_shim_paging_evict_pages, per page in this order. */
#define XEN_SHIM_NOMINATE 1
#define XEN_SHIM_EVICT    2
int xen_shim_paging_evict_pages(xc_interface *xch, uint32_t domid,
                                const uint64_t *gfns, int n, int steps,
                                int *err);

#endif
