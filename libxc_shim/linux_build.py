"""cffi (API mode) builder for xenclone._linux: the KVM micro-VM, userfaultfd
pager and page helpers in libxc_shim/src/linux/*.c.

setup.py:   cffi_modules=["libxc_shim/linux_build.py:ffibuilder"]
in place:   python libxc_shim/linux_build.py   (writes xenclone/_linux.abi3.so)

Calls release the GIL (cffi's default), which the pager and KVM_RUN rely on.
"""
import glob
import os
import shutil
import sys

import cffi

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SRC = os.path.join(HERE, "src", "linux")
SOURCES = ["kvm_vm.c", "uffd_region.c", "uffd_pager.c", "fault_serve.c", "pager_thread.c",
           "pages.c", "bench_limits.c"]


def _path(p):
    """Relative to the cwd when under it (what setuptools prefers), else absolute."""
    rel = os.path.relpath(p)
    return p if rel.startswith("..") else rel


CDEF = """
/* kvm_vm.h */
#define MVM_EXIT_IO_OUT ...
#define MVM_EXIT_IO_IN ...
#define MVM_EXIT_HLT ...
#define MVM_EXIT_KICKED ...
#define MVM_EXIT_ERROR ...
struct mvm { int vm_fd, vcpu_fd; void *run; uint32_t run_size; uint64_t mem_addr, mem_size;
                int gate_fd; uint32_t gate_open; };
struct mvm_exit { uint32_t kind, reason, port, size, value, suberror; int64_t t_ns; };
int mvm_kvm_open(void);
int mvm_install_kick_handler(void);
int64_t lx_map_memfd(int fd, uint64_t size, int private_);
int lx_unmap(uint64_t addr, uint64_t size);
int mvm_create(int kvm_fd, uint64_t mem_size, int gated, struct mvm *vm);
int64_t mvm_map_memfd(struct mvm *vm, int fd, int private_);
void mvm_open_gate(struct mvm *vm);
void mvm_destroy(struct mvm *vm);
int mvm_set_boot_state(struct mvm *vm, uint32_t rip, uint32_t rsp, uint32_t eax);
uint32_t mvm_state_size(void);
int mvm_get_state(struct mvm *vm, void *buf, uint32_t len);
int mvm_set_state(struct mvm *vm, const void *buf, uint32_t len);
int mvm_run(struct mvm *vm, struct mvm_exit *e);
void mvm_set_in(struct mvm *vm, uint32_t value);
void mvm_request_exit(struct mvm *vm);

/* uffd_pager.h */
#define LX_PAGE_ABSENT ...
#define LX_PAGE_SHARED ...
#define LX_PAGE_HOLD ...
#define LX_PAGE_PRIVATE ...
#define LX_PAGE_ZERO ...
#define LX_SERVED ...
#define LX_HOLD ...
#define LX_NOCREDIT ...
#define LX_FETCH ...
#define LX_ERROR ...
#define LX_ZERO ...
#define LX_WRITTEN ...
#define LX_NOCREDIT_WRITE ...
#define LX_COPY ...
#define LX_AROUND ...
#define LX_AROUND_ZERO ...
#define LX_AROUND_CHUNK ...
#define LX_CONTINUE ...
#define LX_ZEROPAGE ...
#define LX_WAKE ...
#define LX_UNPROTECT ...
#define LX_WAKE_DATA ...
#define UFFD_FEATURE_MISSING_SHMEM ...
#define UFFD_FEATURE_MINOR_SHMEM ...
#define UFFD_FEATURE_WP_HUGETLBFS_SHMEM ...
#define UFFDIO_REGISTER_MODE_MISSING ...
#define UFFDIO_REGISTER_MODE_MINOR ...
#define UFFDIO_REGISTER_MODE_WP ...
struct lx_region {
    int uffd;
    uint64_t base;
    uint64_t npages;
    uint8_t *state;
    const uint8_t *zero;
    int64_t credits;
    uint64_t faults, minor_fills, zero_fills, dup_wakes;
    uint64_t bad_faults;
    uint64_t wp_faults, cow_fills;
    uint32_t lock;
    uint32_t no_share;
    uint32_t around_max;
    uint8_t *around;
    uint64_t around_fills;
};
struct lx_fault { uint32_t region; uint16_t kind; uint16_t count; uint64_t pfn; };
int lx_uffd_open(uint64_t features, uint64_t *got_features);
int lx_uffd_register(int uffd, uint64_t addr, uint64_t len, uint64_t mode);
int lx_epoll_add(int epfd, int fd, uint32_t region_index);
int lx_pager_serve(int epfd, struct lx_region **regions, uint32_t nregions, int wake_fd,
                   int64_t *host_credits, struct lx_fault *out, uint32_t max_out, int timeout_ms);
void lx_add_credits(int64_t *credits, int64_t delta);
int lx_resolve(struct lx_region *r, uint64_t pfn, uint64_t npages, int how);
int lx_copy_page(struct lx_region *r, uint64_t pfn, const void *src);
int lx_set_state(struct lx_region *r, const uint64_t *pfns, uint64_t n, int state, uint8_t *prev);
int lx_punch_hole(int fd, uint64_t offset, uint64_t len);
int64_t lx_prefetch(struct lx_region *r, const uint64_t *pfns, uint64_t n, uint8_t *got);

/* pager_thread.h */
struct lx_server { uint32_t nregions; ...; };
int lx_server_start(struct lx_server *s, int epfd, int wake_fd, int notify_fd,
                    struct lx_region **regions, uint32_t nregions, int64_t *host_credits,
                    struct lx_fault *ring, uint32_t ring_size);
void lx_server_pause(struct lx_server *s);
void lx_server_resume(struct lx_server *s);
void lx_server_stop(struct lx_server *s);
uint32_t lx_server_take(struct lx_server *s, struct lx_fault *out, uint32_t max);
int lx_server_error(struct lx_server *s);
struct lx_group { uint32_t region; uint16_t kind; uint16_t pad; uint32_t count; uint64_t first; };
uint32_t lx_group_records(const struct lx_fault *in, uint32_t n, struct lx_group *groups,
                          uint64_t *pfns);

/* pages.h */
#define LX_KIND_WP ...
uint32_t lx_mix(uint32_t seed, uint32_t pfn, uint32_t w);
void lx_fill_dataset(void *mem, uint64_t mem_npages, uint32_t data_first_pfn,
                     uint32_t data_npages, uint32_t seed, uint32_t zero_every);
void lx_fill_dataset_range(void *mem, uint64_t first_pfn, uint64_t npages,
                           uint32_t data_first_pfn, uint32_t data_npages,
                           uint32_t seed, uint32_t zero_every);
uint64_t lx_copy_nonzero(const void *src, void *dst_or_null, uint64_t npages, uint8_t *zero_out);
void lx_page_sums(const void *mem, uint64_t npages, uint64_t *out);
int lx_pagemap_open(void);
int lx_page_kinds(int pagemap_fd, uint64_t addr, uint64_t npages, uint8_t *kinds);
int64_t lx_drop_clean(int pagemap_fd, uint64_t base, const uint64_t *pfns, uint64_t n,
                      uint8_t *dropped);
int lx_drop_pages(uint64_t base, const uint64_t *pfns, uint64_t n);
int lx_gather_pages(uint64_t base, const uint64_t *pfns, uint64_t n, void *dst);
uint32_t lx_crc32(const void *p, uint64_t len);
int lx_store_flush(int fd, uint64_t offset, uint64_t len, int sync);

/* bench_limits.h */
int64_t lx_limit_memcpy(uint64_t bytes);
int64_t lx_limit_first_touch(uint64_t bytes);
int64_t lx_limit_raw_uffd(int memfd, uint64_t npages, const uint32_t *order, uint64_t n,
                          uint32_t threads, uint64_t *faults);
uint64_t lx_touch_pages(uint64_t base, const uint32_t *order, uint64_t n, uint64_t first,
                        uint64_t step);
"""

def make_ffibuilder(path=_path):
    ffi = cffi.FFI()
    ffi.cdef(CDEF)
    ffi.set_source(
        "xenclone._linux",
        '#include "kvm_vm.h"\n#include "uffd_pager.h"\n#include "pager_thread.h"\n'
        '#include "pages.h"\n#include "bench_limits.h"\n'
        "#include <linux/userfaultfd.h>\n",
        sources=[path(os.path.join(SRC, s)) for s in SOURCES],
        include_dirs=[path(SRC)],
        depends=[path(os.path.join(SRC, h)) for h in (
            "kvm_vm.h", "uffd_region.h", "uffd_pager.h", "pager_thread.h", "pages.h",
            "bench_limits.h")],
        extra_compile_args=["-O2", "-std=gnu11", "-Wall"],
    )
    return ffi


ffibuilder = make_ffibuilder()


def build_inplace():
    """Compile in <root>/build/cffi and install as xenclone/_linux.abi3.so, the
    name `setup.py build_ext --inplace` uses (cffi modules are limited-API), so
    neither build shadows the other."""
    tmpdir = os.path.join(ROOT, "build", "cffi")
    # compile() runs the compiler from tmpdir, so the sources must be absolute.
    built = make_ffibuilder(os.path.abspath).compile(tmpdir=tmpdir, verbose=False)
    for stale in glob.glob(os.path.join(ROOT, "xenclone", "_linux.*.so")):
        os.unlink(stale)
    dest = os.path.join(ROOT, "xenclone", "_linux.abi3.so")
    shutil.copy2(built, dest)
    return dest


if __name__ == "__main__":
    print(build_inplace(), file=sys.stderr)
