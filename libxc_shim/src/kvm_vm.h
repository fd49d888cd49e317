/* Minimal KVM micro-VM helpers: one vCPU, one memory slot at guest physical 0. */
#ifndef XC_KVM_VM_H
#define XC_KVM_VM_H
#include <stdint.h>

/* xc_vm_run() exit kinds */
#define XC_EXIT_IO_OUT  1
#define XC_EXIT_IO_IN   2   /* call xc_vm_set_in() before the next run */
#define XC_EXIT_HLT     3
#define XC_EXIT_KICKED  4   /* KVM_RUN returned EINTR (kick or stray signal) */
#define XC_EXIT_ERROR   5   /* any other exit: see reason/suberror */

struct xc_vm {
    int vm_fd, vcpu_fd;
    void *run;              /* mmapped struct kvm_run */
    uint32_t run_size;
    uint64_t mem_addr, mem_size;    /* guest RAM, unmapped by xc_vm_destroy */
    int gate_fd;            /* eventfd: the first run waits for xc_vm_open_gate; -1: none */
    uint32_t gate_open;
};

struct xc_exit {
    uint32_t kind, reason, port, size, value, suberror;
    int64_t t_ns;           /* CLOCK_MONOTONIC right after KVM_RUN returned */
};

int xc_kvm_open(void);                          /* fd or -errno */
int xc_install_kick_handler(void);              /* no-op SIGUSR1, no SA_RESTART */
int64_t xc_map_memfd(int fd, uint64_t size, int private_);  /* address or -errno */
int xc_unmap(uint64_t addr, uint64_t size);
/* A VM, its vCPU and mem_size bytes of guest RAM in its memory slot, not
 * backed yet (PROT_NONE) until xc_vm_map_memfd. gated: the vCPU's first
 * run waits for xc_vm_open_gate. */
int xc_vm_create(int kvm_fd, uint64_t mem_size, int gated, struct xc_vm *vm);
int64_t xc_vm_map_memfd(struct xc_vm *vm, int fd, int private_);  /* address or -errno */
void xc_vm_open_gate(struct xc_vm *vm);
void xc_vm_destroy(struct xc_vm *vm);
int xc_vm_set_boot_state(struct xc_vm *vm, uint32_t rip, uint32_t rsp, uint32_t eax);
uint32_t xc_vm_state_size(void);
int xc_vm_get_state(struct xc_vm *vm, void *buf, uint32_t len);
int xc_vm_set_state(struct xc_vm *vm, const void *buf, uint32_t len);
int xc_vm_run(struct xc_vm *vm, struct xc_exit *e);   /* kind or -errno; waits at a closed gate */
void xc_vm_set_in(struct xc_vm *vm, uint32_t value);
void xc_vm_request_exit(struct xc_vm *vm);    /* then pthread_kill(vcpu thread, SIGUSR1) */
#endif
