/* KVM micro-VM helpers. cffi calls these with the GIL released. */
#define _GNU_SOURCE
#include "kvm_vm.h"
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <linux/kvm.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>

#define STATE_MAGIC 0x58435354u     /* "XCST" */

/* The opaque state blob: everything a halted flat 32-bit guest needs. */
struct mvm_state {
    uint32_t magic, size;
    struct kvm_regs regs;
    struct kvm_sregs sregs;
};

static int xioctl(int fd, unsigned long req, void *arg)
{
    int r;
    do
        r = ioctl(fd, req, arg);
    while (r < 0 && errno == EINTR);
    return r < 0 ? -errno : r;
}

int mvm_kvm_open(void)
{
    int fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    if (ioctl(fd, KVM_GET_API_VERSION, 0) != KVM_API_VERSION) {
        close(fd);
        return -ENOTSUP;
    }
    return fd;
}

static void kick_handler(int sig) { (void)sig; }

int mvm_install_kick_handler(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = kick_handler;       /* no SA_RESTART: KVM_RUN must see EINTR */
    sigemptyset(&sa.sa_mask);
    return sigaction(SIGUSR1, &sa, NULL) < 0 ? -errno : 0;
}

int64_t lx_map_memfd(int fd, uint64_t size, int private_)
{
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE,
                   private_ ? MAP_PRIVATE : MAP_SHARED, fd, 0);
    return p == MAP_FAILED ? -errno : (int64_t)(uintptr_t)p;
}

int lx_unmap(uint64_t addr, uint64_t size)
{
    return munmap((void *)(uintptr_t)addr, size) < 0 ? -errno : 0;
}

/* Creating the VM, its vCPU and its memory slot is most of a clone's
 * start on kvm-pvm (the slot's metadata grows with guest RAM), so a VM
 * made ahead has them all; its RAM is backed at launch by one mmap. */
int mvm_create(int kvm_fd, uint64_t mem_size, int gated, struct mvm *vm)
{
    int r;
    memset(vm, 0, sizeof *vm);
    vm->vm_fd = vm->vcpu_fd = vm->gate_fd = -1;
    if (gated && (vm->gate_fd = eventfd(0, EFD_CLOEXEC)) < 0)
        return -errno;
    if ((r = xioctl(kvm_fd, KVM_CREATE_VM, 0)) < 0)
        goto fail;
    vm->vm_fd = r;
    if ((r = xioctl(vm->vm_fd, KVM_CREATE_VCPU, 0)) < 0)
        goto fail;
    vm->vcpu_fd = r;
    if ((r = xioctl(kvm_fd, KVM_GET_VCPU_MMAP_SIZE, 0)) < 0)
        goto fail;
    vm->run_size = r;
    vm->run = mmap(NULL, vm->run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vm->vcpu_fd, 0);
    if (vm->run == MAP_FAILED) {
        r = -errno;
        vm->run = NULL;
        goto fail;
    }
    void *ram = mmap(NULL, mem_size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                     -1, 0);
    if (ram == MAP_FAILED) {
        r = -errno;
        goto fail;
    }
    vm->mem_addr = (uint64_t)(uintptr_t)ram;
    vm->mem_size = mem_size;
    struct kvm_userspace_memory_region region = {
        .slot = 0, .guest_phys_addr = 0,
        .memory_size = mem_size, .userspace_addr = vm->mem_addr,
    };
    if ((r = xioctl(vm->vm_fd, KVM_SET_USER_MEMORY_REGION, &region)) < 0)
        goto fail;
    return 0;
fail:
    mvm_destroy(vm);
    return r;
}

/* Over the slot's reserved range: KVM follows the new mapping (its MMU
 * notifier drops what the old one had, nothing as the vCPU never ran). */
int64_t mvm_map_memfd(struct mvm *vm, int fd, int private_)
{
    void *p = mmap((void *)(uintptr_t)vm->mem_addr, vm->mem_size, PROT_READ | PROT_WRITE,
                   MAP_FIXED | (private_ ? MAP_PRIVATE : MAP_SHARED), fd, 0);
    return p == MAP_FAILED ? -errno : (int64_t)(uintptr_t)p;
}

void mvm_open_gate(struct mvm *vm)
{
    uint64_t one = 1;
    __atomic_store_n(&vm->gate_open, 1, __ATOMIC_RELEASE);
    /* Cannot fail: the counter would need 2^64 - 1 opens to fill. */
    if (vm->gate_fd >= 0 && write(vm->gate_fd, &one, sizeof one) < 0)
        return;
}

void mvm_destroy(struct mvm *vm)
{
    if (vm->run)
        munmap(vm->run, vm->run_size);
    if (vm->vcpu_fd >= 0)
        close(vm->vcpu_fd);
    if (vm->vm_fd >= 0)
        close(vm->vm_fd);
    if (vm->gate_fd >= 0)
        close(vm->gate_fd);
    /* After the VM: no MMU notifier walks its slot. */
    if (vm->mem_size)
        munmap((void *)(uintptr_t)vm->mem_addr, vm->mem_size);
    vm->run = NULL;
    vm->vcpu_fd = vm->vm_fd = vm->gate_fd = -1;
    vm->mem_size = 0;
}

int mvm_set_boot_state(struct mvm *vm, uint32_t rip, uint32_t rsp, uint32_t eax)
{
    struct kvm_sregs s;
    int r;
    if ((r = xioctl(vm->vcpu_fd, KVM_GET_SREGS, &s)) < 0)
        return r;
    struct kvm_segment code = {
        .base = 0, .limit = 0xffffffff, .selector = 8, .type = 11,
        .present = 1, .dpl = 0, .db = 1, .s = 1, .l = 0, .g = 1,
    };
    struct kvm_segment data = code;
    data.type = 3;
    data.selector = 16;
    s.cs = code;
    s.ds = s.es = s.fs = s.gs = s.ss = data;
    s.cr0 |= 1;                                 /* PE, paging off */
    if ((r = xioctl(vm->vcpu_fd, KVM_SET_SREGS, &s)) < 0)
        return r;
    struct kvm_regs regs = { .rip = rip, .rsp = rsp, .rflags = 2, .rax = eax };
    return xioctl(vm->vcpu_fd, KVM_SET_REGS, &regs);
}

uint32_t mvm_state_size(void) { return sizeof(struct mvm_state); }

int mvm_get_state(struct mvm *vm, void *buf, uint32_t len)
{
    struct mvm_state *st = buf;
    int r;
    if (len < sizeof *st)
        return -EINVAL;
    st->magic = STATE_MAGIC;
    st->size = sizeof *st;
    if ((r = xioctl(vm->vcpu_fd, KVM_GET_REGS, &st->regs)) < 0)
        return r;
    return xioctl(vm->vcpu_fd, KVM_GET_SREGS, &st->sregs);
}

int mvm_set_state(struct mvm *vm, const void *buf, uint32_t len)
{
    struct mvm_state st;
    int r;
    if (len < sizeof st)
        return -EINVAL;
    memcpy(&st, buf, sizeof st);
    if (st.magic != STATE_MAGIC || st.size != sizeof st)
        return -EINVAL;
    if ((r = xioctl(vm->vcpu_fd, KVM_SET_SREGS, &st.sregs)) < 0)
        return r;
    return xioctl(vm->vcpu_fd, KVM_SET_REGS, &st.regs);
}

static int64_t now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

/* The vCPU thread blocks here, the GIL released, until the launch opens
 * the gate: it then enters KVM_RUN without waiting for the GIL. */
static int wait_gate(struct mvm *vm)
{
    uint64_t v;
    while (!__atomic_load_n(&vm->gate_open, __ATOMIC_ACQUIRE))
        if (read(vm->gate_fd, &v, sizeof v) < 0 && errno != EINTR)
            return -errno;
    return 0;
}

int mvm_run(struct mvm *vm, struct mvm_exit *e)
{
    struct kvm_run *run = vm->run;
    int r;
    if (vm->gate_fd >= 0 && (r = wait_gate(vm)) < 0)
        return r;
    memset(e, 0, sizeof *e);
    r = ioctl(vm->vcpu_fd, KVM_RUN, 0);
    e->t_ns = now_ns();
    if (r < 0) {
        if (errno != EINTR && errno != EAGAIN)
            return -errno;
        /* A kick stays pending (immediate_exit) until a run consumes it. */
        run->immediate_exit = 0;
        return e->kind = MVM_EXIT_KICKED;
    }
    e->reason = run->exit_reason;
    switch (run->exit_reason) {
    case KVM_EXIT_IO: {
        uint8_t *data = (uint8_t *)run + run->io.data_offset;
        e->port = run->io.port;
        e->size = run->io.size;
        if (run->io.direction == KVM_EXIT_IO_IN)
            return e->kind = MVM_EXIT_IO_IN;
        memcpy(&e->value, data, e->size <= 4 ? e->size : 4);
        return e->kind = MVM_EXIT_IO_OUT;
    }
    case KVM_EXIT_HLT:
        return e->kind = MVM_EXIT_HLT;
    case KVM_EXIT_INTERNAL_ERROR:
        e->suberror = run->internal.suberror;
        break;
    case KVM_EXIT_FAIL_ENTRY:
        e->suberror = (uint32_t)run->fail_entry.hardware_entry_failure_reason;
        break;
    case KVM_EXIT_MMIO:
        e->suberror = (uint32_t)run->mmio.phys_addr;
        break;
    }
    return e->kind = MVM_EXIT_ERROR;
}

void mvm_set_in(struct mvm *vm, uint32_t value)
{
    struct kvm_run *run = vm->run;
    uint8_t *data = (uint8_t *)run + run->io.data_offset;
    memcpy(data, &value, run->io.size <= 4 ? run->io.size : 4);
}

void mvm_request_exit(struct mvm *vm)
{
    if (vm->run)
        __atomic_store_n(&((struct kvm_run *)vm->run)->immediate_exit, 1, __ATOMIC_SEQ_CST);
}
