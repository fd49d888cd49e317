"""cffi (API mode) build of ``xenclone._xen`` against the installed Xen headers.

The real headers decide every layout: structs are declared with ``...;`` and
only the fields the Xen backend reads.  Built only where Debian's
``libxen-dev`` (or a Xen tools install) provides ``xenctrl.h``; setup.py asks
``modules()`` so non-Xen hosts simply skip it.

    python libxc_shim/xen_build.py      # compile in place into xenclone/
"""

import glob
import os
import shutil
import sys
import tempfile

from cffi import FFI

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# setuptools runs from the project root and wants relative paths; compile()
# changes directory, so the script form needs absolute ones.
PREFIX = ROOT if __name__ == "__main__" else ""
HEADER_DIRS = ("/usr/include", "/usr/local/include")

CDEF = r"""
typedef uint64_t xen_pfn_t;
typedef uint16_t domid_t;
typedef uint32_t evtchn_port_t;
typedef ... xentoollog_logger;
typedef ... xc_interface;
typedef ... xenforeignmemory_handle;
typedef ... xengnttab_handle;
typedef ... xengntshr_handle;
typedef ... xenevtchn_handle;

/* xentoollog levels, for xen_shim_logger */
typedef enum { XTL_NONE, XTL_DEBUG, XTL_VERBOSE, XTL_DETAIL,
               XTL_PROGRESS, XTL_INFO, XTL_NOTICE, XTL_WARN, XTL_ERROR,
               XTL_CRITICAL, XTL_NUM_LEVELS } xentoollog_level;

/* ---- xenctrl ---- */
enum xc_error_code { XC_ERROR_NONE, ... };
typedef struct { enum xc_error_code code; char message[...]; ...; } xc_error;

#define XENVER_version ...
#define XENVER_extraversion ...
#define XEN_EXTRAVERSION_LEN ...

#define XEN_DOMINF_dying ...
#define XEN_DOMINF_hvm_guest ...
#define XEN_DOMINF_shutdown ...
#define XEN_DOMINF_paused ...
#define XEN_DOMINF_blocked ...
#define XEN_DOMINF_running ...
#define XEN_DOMINF_hap ...
#define XEN_DOMINF_shutdownmask ...
#define XEN_DOMINF_shutdownshift ...
typedef struct {
    domid_t domain;
    uint32_t flags;
    uint64_t tot_pages, max_pages, outstanding_pages, shr_pages, paged_pages;
    uint64_t cpu_time;
    uint32_t nr_online_vcpus, max_vcpu_id;
    ...;
} xc_domaininfo_t;

#define XEN_SYSCTL_PHYSCAP_hvm ...
#define XEN_SYSCTL_PHYSCAP_pv ...
#define XEN_SYSCTL_PHYSCAP_hap ...
#define XEN_SYSCTL_PHYSCAP_shadow ...
typedef struct {
    uint32_t nr_cpus, cpu_khz, capabilities;
    uint64_t total_pages, free_pages, scrub_pages, outstanding_pages;
    ...;
} xc_physinfo_t;

xc_interface *xc_interface_open(xentoollog_logger *logger,
                                xentoollog_logger *dombuild_logger,
                                unsigned open_flags);
int xc_interface_close(xc_interface *xch);
void xc_clear_last_error(xc_interface *xch);
const xc_error *xc_get_last_error(xc_interface *handle);
const char *xc_strerror(xc_interface *xch, int errcode);
int xc_version(xc_interface *xch, int cmd, void *arg);
int xc_physinfo(xc_interface *xch, xc_physinfo_t *info);

int xc_domain_getinfolist(xc_interface *xch, uint32_t first_domain,
                          unsigned int max_domains, xc_domaininfo_t *info);
int xc_domain_pause(xc_interface *xch, uint32_t domid);
int xc_domain_unpause(xc_interface *xch, uint32_t domid);
int xc_domain_destroy(xc_interface *xch, uint32_t domid);
int xc_domain_hvm_getcontext(xc_interface *xch, uint32_t domid,
                             uint8_t *ctxt_buf, uint32_t size);
int xc_domain_hvm_setcontext(xc_interface *xch, uint32_t domid,
                             uint8_t *hvm_ctxt, uint32_t size);
int xc_domain_maximum_gpfn(xc_interface *xch, uint32_t domid,
                           xen_pfn_t *gpfns);
int xc_domain_populate_physmap_exact(xc_interface *xch, uint32_t domid,
                                     unsigned long nr_extents,
                                     unsigned int extent_order,
                                     unsigned int mem_flags,
                                     xen_pfn_t *extent_start);
int xc_hvm_param_get(xc_interface *handle, uint32_t dom, uint32_t param,
                     uint64_t *value);
#define HVM_PARAM_CALLBACK_IRQ ...
#define HVM_PARAM_STORE_PFN ...
#define HVM_PARAM_STORE_EVTCHN ...
#define HVM_PARAM_CONSOLE_PFN ...
#define HVM_PARAM_CONSOLE_EVTCHN ...

/* ---- VM fork (MEM_SHARING): a child domain built by hand, then forked ---- */
typedef uint8_t xen_domain_handle_t[16];
#define XEN_DOMCTL_CDF_hvm ...
#define XEN_DOMCTL_CDF_hap ...
#define XEN_X86_EMU_LAPIC ...
struct xen_arch_domainconfig { uint32_t emulation_flags; ...; };
struct xen_domctl_createdomain {
    uint32_t ssidref;
    xen_domain_handle_t handle;
    uint32_t flags, max_vcpus, max_evtchn_port;
    int32_t max_grant_frames, max_maptrack_frames;
    uint32_t grant_opts;
    struct xen_arch_domainconfig arch;
    ...;
};
int xc_domain_create(xc_interface *xch, uint32_t *pdomid,
                     struct xen_domctl_createdomain *config);
int xc_memshr_control(xc_interface *xch, uint32_t domid, int enable);
int xc_memshr_fork(xc_interface *xch, uint32_t source_domain,
                   uint32_t client_domain, bool allow_with_iommu,
                   bool block_interrupts);
int xc_memshr_fork_reset(xc_interface *xch, uint32_t forked_domain,
                         bool reset_state, bool reset_memory);
int xc_memshr_ring_disable(xc_interface *xch, uint32_t domid);

/* ---- libxencall: the project's own memop (fork_pages.h) ---- */
typedef ... xencall_handle;
xencall_handle *xencall_open(xentoollog_logger *logger, unsigned open_flags);
int xencall_close(xencall_handle *xcall);
int xen_shim_fork_pages(xencall_handle *xcall, uint32_t domid, uint64_t start,
                        uint64_t *gfns, uint32_t nr);
int xc_evtchn_alloc_unbound(xc_interface *xch, uint32_t dom, uint32_t remote_dom);
int xc_evtchn_reset(xc_interface *xch, uint32_t dom);
int xc_hvm_param_set(xc_interface *handle, uint32_t dom, uint32_t param,
                     uint64_t value);
int xc_domain_setmaxmem(xc_interface *xch, uint32_t domid, uint64_t max_memkb);
int xc_dom_gnttab_seed(xc_interface *xch, uint32_t guest_domid, bool is_hvm,
                       xen_pfn_t console_gfn, xen_pfn_t xenstore_gfn,
                       uint32_t console_domid, uint32_t xenstore_domid);
typedef uint8_t *xc_cpumap_t;
#define XEN_VCPUAFFINITY_HARD ...
int xc_get_cpumap_size(xc_interface *xch);
int xc_vcpu_setaffinity(xc_interface *xch, uint32_t domid, int vcpu,
                        xc_cpumap_t cpumap_hard_inout,
                        xc_cpumap_t cpumap_soft_inout, uint32_t flags);
int xc_vcpu_getaffinity(xc_interface *xch, uint32_t domid, int vcpu,
                        xc_cpumap_t cpumap_hard, xc_cpumap_t cpumap_soft,
                        uint32_t flags);

/* ---- xenguest: a cooperative (fast) resume of a suspended guest ---- */
int xc_domain_resume(xc_interface *xch, uint32_t domid, int fast);

int xc_domain_decrease_reservation_exact(xc_interface *xch, uint32_t domid,
                                         unsigned long nr_extents,
                                         unsigned int extent_order,
                                         xen_pfn_t *extent_start);

int xc_mem_paging_enable(xc_interface *xch, uint32_t domain_id,
                         uint32_t *port);
int xc_mem_paging_disable(xc_interface *xch, uint32_t domain_id);
int xc_mem_paging_nominate(xc_interface *xch, uint32_t domain_id,
                           uint64_t gfn);
int xc_mem_paging_evict(xc_interface *xch, uint32_t domain_id, uint64_t gfn);
int xc_mem_paging_prep(xc_interface *xch, uint32_t domain_id, uint64_t gfn);
int xc_mem_paging_load(xc_interface *xch, uint32_t domain_id,
                       uint64_t gfn, void *buffer);
void *xc_vm_event_enable(xc_interface *xch, uint32_t domain_id, int param,
                         uint32_t *port);

/* ---- vm_event ring ---- */
#define HVM_PARAM_PAGING_RING_PFN ...
#define HVM_PARAM_MONITOR_RING_PFN ...
#define HVM_PARAM_SHARING_RING_PFN ...
#define VM_EVENT_INTERFACE_VERSION ...
#define VM_EVENT_FLAG_VCPU_PAUSED ...
#define VM_EVENT_REASON_MEM_PAGING ...
#define VM_EVENT_REASON_MEM_SHARING ...
#define MEM_PAGING_DROP_PAGE ...
#define MEM_PAGING_EVICT_FAIL ...
struct vm_event_paging { uint64_t gfn; uint32_t p2mt; uint32_t flags; };
typedef union { struct vm_event_paging mem_paging; ...; } xen_shim_vm_event_u;
typedef struct {
    uint32_t version, flags, reason, vcpu_id;
    uint16_t altp2m_idx;
    xen_shim_vm_event_u u;
    ...;
} vm_event_request_t;
typedef vm_event_request_t vm_event_response_t;
typedef struct { unsigned int req_prod, req_event, rsp_prod, rsp_event; ...; } vm_event_sring_t;
typedef struct { unsigned int rsp_prod_pvt, req_cons; vm_event_sring_t *sring; ...; } vm_event_back_ring_t;

/* ---- HVM save record: vCPU state a Linux clone's lazy fill reads ---- */
struct hvm_save_descriptor { uint16_t typecode; uint16_t instance; uint32_t length; };
struct hvm_hw_cpu { uint64_t cr3; uint64_t cr4; uint64_t gs_base; uint64_t shadow_gs;
                    uint64_t msr_efer; ...; };
#define XEN_SHIM_HVM_CPU ...
#define XEN_SHIM_HVM_END ...

/* ---- xenforeignmemory ---- */
xenforeignmemory_handle *xenforeignmemory_open(xentoollog_logger *logger,
                                               unsigned open_flags);
int xenforeignmemory_close(xenforeignmemory_handle *fmem);
void *xenforeignmemory_map(xenforeignmemory_handle *fmem, uint32_t dom,
                           int prot, size_t pages, const xen_pfn_t arr[],
                           int err[]);
int xenforeignmemory_unmap(xenforeignmemory_handle *fmem, void *addr,
                           size_t pages);
typedef ... xenforeignmemory_resource_handle;
#define XENMEM_resource_grant_table ...
#define XENMEM_resource_grant_table_id_shared ...
xenforeignmemory_resource_handle *xenforeignmemory_map_resource(
    xenforeignmemory_handle *fmem, domid_t domid, unsigned int type,
    unsigned int id, unsigned long frame, unsigned long nr_frames,
    void **paddr, int prot, int flags);
int xenforeignmemory_unmap_resource(xenforeignmemory_handle *fmem,
                                    xenforeignmemory_resource_handle *fres);

/* ---- xengnttab / xengntshr ---- */
xengnttab_handle *xengnttab_open(xentoollog_logger *logger,
                                 unsigned open_flags);
int xengnttab_close(xengnttab_handle *xgt);
void *xengnttab_map_grant_ref(xengnttab_handle *xgt, uint32_t domid,
                              uint32_t ref, int prot);
void *xengnttab_map_grant_refs(xengnttab_handle *xgt, uint32_t count,
                               uint32_t *domids, uint32_t *refs, int prot);
int xengnttab_unmap(xengnttab_handle *xgt, void *start_address,
                    uint32_t count);
xengntshr_handle *xengntshr_open(xentoollog_logger *logger,
                                 unsigned open_flags);
int xengntshr_close(xengntshr_handle *xgs);
void *xengntshr_share_pages(xengntshr_handle *xgs, uint32_t domid,
                            int count, uint32_t *refs, int writable);
int xengntshr_unshare(xengntshr_handle *xgs, void *start_address,
                      uint32_t count);

/* ---- xenevtchn ---- */
xenevtchn_handle *xenevtchn_open(xentoollog_logger *logger,
                                 unsigned int flags);
int xenevtchn_close(xenevtchn_handle *xce);
int xenevtchn_fd(xenevtchn_handle *xce);
int xenevtchn_bind_interdomain(xenevtchn_handle *xce, uint32_t domid,
                               evtchn_port_t remote_port);
int xenevtchn_pending(xenevtchn_handle *xce);
int xenevtchn_unmask(xenevtchn_handle *xce, evtchn_port_t port);
int xenevtchn_notify(xenevtchn_handle *xce, evtchn_port_t port);
int xenevtchn_unbind(xenevtchn_handle *xce, evtchn_port_t port);

/* ---- xen_shim.c ---- */
xentoollog_logger *xen_shim_logger(int min_level);
void xen_shim_ring_init(vm_event_back_ring_t *ring, void *page);
int xen_shim_ring_take(vm_event_back_ring_t *ring, vm_event_request_t *out,
                       int max);
int xen_shim_ring_put(vm_event_back_ring_t *ring,
                      const vm_event_response_t *rsp, int n);
void xen_shim_paging_response(const vm_event_request_t *req,
                              vm_event_response_t *rsp);
int xen_shim_ring_unmap(void *page);
#define XEN_SHIM_NOMINATE ...
#define XEN_SHIM_EVICT ...
int xen_shim_paging_evict_pages(xc_interface *xch, uint32_t domid,
                                const uint64_t *gfns, int n, int steps,
                                int *err);

/* ---- grant_seed.c ---- */
void xen_shim_grant_seed(void *table, uint32_t first_ref, const uint64_t *gfns,
                         uint32_t n, uint16_t domid, int readonly);
uint32_t xen_shim_grant_revoke(void *table, uint32_t first_ref, uint32_t n);

/* ---- pages.c (shared with the KVM shim) ---- */
void lx_fill_dataset_range(void *mem, uint64_t first_pfn, uint64_t npages,
                           uint32_t data_first_pfn, uint32_t data_npages,
                           uint32_t seed, uint32_t zero_every);
void lx_page_sums(const void *mem, uint64_t npages, uint64_t *out);

/* ==== libxenstore (xenstore.h): XenStore over xenstored's socket or
 * /dev/xen/xenbus; used by xenclone/xenstore/libxs.py.  Every result is
 * malloc'ed by the library: release it with free(). ==== */
struct xs_handle;
typedef uint32_t xs_transaction_t;
#define XBT_NULL ...
#define XS_UNWATCH_FILTER ...
#define XS_PERM_NONE ...
#define XS_PERM_READ ...
#define XS_PERM_WRITE ...
struct xs_permissions { unsigned int id; unsigned int perms; };
enum xs_watch_type { XS_WATCH_PATH, XS_WATCH_TOKEN };
struct xs_handle *xs_open(unsigned long flags);
void xs_close(struct xs_handle *xsh);
int xs_fileno(struct xs_handle *h);
void *xs_read(struct xs_handle *h, xs_transaction_t t, const char *path,
              unsigned int *len);
bool xs_write(struct xs_handle *h, xs_transaction_t t, const char *path,
              const void *data, unsigned int len);
bool xs_mkdir(struct xs_handle *h, xs_transaction_t t, const char *path);
bool xs_rm(struct xs_handle *h, xs_transaction_t t, const char *path);
char **xs_directory(struct xs_handle *h, xs_transaction_t t, const char *path,
                    unsigned int *num);
struct xs_permissions *xs_get_permissions(struct xs_handle *h,
                                          xs_transaction_t t, const char *path,
                                          unsigned int *num);
bool xs_set_permissions(struct xs_handle *h, xs_transaction_t t,
                        const char *path, struct xs_permissions *perms,
                        unsigned int num_perms);
bool xs_watch(struct xs_handle *h, const char *path, const char *token);
bool xs_unwatch(struct xs_handle *h, const char *path, const char *token);
char **xs_read_watch(struct xs_handle *h, unsigned int *num);
char **xs_check_watch(struct xs_handle *h);
xs_transaction_t xs_transaction_start(struct xs_handle *h);
bool xs_transaction_end(struct xs_handle *h, xs_transaction_t t, bool abort);
bool xs_introduce_domain(struct xs_handle *h, unsigned int domid,
                         unsigned long mfn, unsigned int eventchn);
bool xs_release_domain(struct xs_handle *h, unsigned int domid);
bool xs_resume_domain(struct xs_handle *h, unsigned int domid);
bool xs_set_target(struct xs_handle *h, unsigned int domid,
                   unsigned int target);
char *xs_get_domain_path(struct xs_handle *h, unsigned int domid);
bool xs_is_domain_introduced(struct xs_handle *h, unsigned int domid);
void free(void *ptr);
/* ==== end of libxenstore ==== */
"""


def available():
    """True when the Xen tools headers needed to build are installed."""
    return any(os.path.exists(os.path.join(d, "xenctrl.h"))
               for d in HEADER_DIRS)


def modules():
    """The ``cffi_modules`` entry for setup.py, or nothing on non-Xen hosts."""
    return ["libxc_shim/xen_build.py:ffibuilder"] if available() else []


ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "xenclone._xen",
    '#include "xen_shim.h"\n#include "grant_seed.h"\n#include "pages.h"\n'
    '#include "fork_pages.h"',
    # pages.c: the guest's data set and page sums, over foreign mappings.
    sources=[os.path.join(PREFIX, "libxc_shim", "src", f)
             for f in ("xen/xen_shim.c", "xen/grant_seed.c", "linux/pages.c",
                       "xen/fork_pages.c")],
    include_dirs=[os.path.join(PREFIX, "libxc_shim", "src", d) for d in ("xen", "linux")],
    libraries=["xenctrl", "xenguest", "xenforeignmemory", "xengnttab",
               "xenevtchn", "xentoollog", "xenstore", "xencall"],
    extra_compile_args=["-O2", "-Wall"],
)

if __name__ == "__main__":
    if not available():
        sys.exit("xenctrl.h not found (apt-get install libxen-dev): "
                 "xenclone._xen not built")
    with tempfile.TemporaryDirectory() as tmp:   # keep objects out of the tree
        built = ffibuilder.compile(tmpdir=tmp)
        # The name `setup.py build_ext --inplace` gives it (cffi modules are
        # limited-API): a build under another name would shadow the other's.
        dest = os.path.join(ROOT, "xenclone", "_xen.abi3.so")
        for stale in glob.glob(os.path.join(ROOT, "xenclone", "_xen.*.so")):
            if stale != dest:
                os.unlink(stale)
        # Replace, never overwrite in place: a running process may have the
        # old library mapped.
        shutil.copy(built, dest + ".new")
        os.replace(dest + ".new", dest)
