/* Minimal KVM micro-VM helpers: one vCPU, one memory slot at guest physical 0. */
#ifndef MVM_KVM_VM_H
#define MVM_KVM_VM_H
#include <stdint.h>

/* mvm_run() exit kinds */
#define MVM_EXIT_IO_OUT  1
#define MVM_EXIT_IO_IN   2   /* call mvm_set_in() before the next run */
#define MVM_EXIT_HLT     3
#define MVM_EXIT_KICKED  4   /* KVM_RUN returned EINTR (kick or stray signal) */
#define MVM_EXIT_ERROR   5   /* any other exit: see reason/suberror */

struct mvm {
    int vm_fd, vcpu_fd;
    void *run;              /* mmapped struct kvm_run */
    uint32_t run_size;
    uint64_t mem_addr, mem_size;    /* guest RAM, unmapped by mvm_destroy */
    int gate_fd;            /* eventfd: the first run waits for mvm_open_gate; -1: none */
    uint32_t gate_open;
};

struct mvm_exit {
    uint32_t kind, reason, port, size, value, suberror;
    int64_t t_ns;           /* CLOCK_MONOTONIC right after KVM_RUN returned */
};

int mvm_kvm_open(void);                          /* fd or -errno */
int mvm_install_kick_handler(void);              /* no-op SIGUSR1, no SA_RESTART */
int64_t lx_map_memfd(int fd, uint64_t size, int private_);  /* address or -errno */
int lx_unmap(uint64_t addr, uint64_t size);
/* A VM, its vCPU and mem_size bytes of guest RAM in its memory slot, not
 * backed yet (PROT_NONE) until mvm_map_memfd. gated: the vCPU's first
 * run waits for mvm_open_gate. */
int mvm_create(int kvm_fd, uint64_t mem_size, int gated, struct mvm *vm);
int64_t mvm_map_memfd(struct mvm *vm, int fd, int private_);  /* address or -errno */
void mvm_open_gate(struct mvm *vm);
void mvm_destroy(struct mvm *vm);
int mvm_set_boot_state(struct mvm *vm, uint32_t rip, uint32_t rsp, uint32_t eax);
uint32_t mvm_state_size(void);
int mvm_get_state(struct mvm *vm, void *buf, uint32_t len);
int mvm_set_state(struct mvm *vm, const void *buf, uint32_t len);
int mvm_run(struct mvm *vm, struct mvm_exit *e);   /* kind or -errno; waits at a closed gate */
void mvm_set_in(struct mvm *vm, uint32_t value);
void mvm_request_exit(struct mvm *vm);    /* then pthread_kill(vcpu thread, SIGUSR1) */
#endif
