/* lx_pager_serve in a thread of its own, records into a ring: the serve
 * loop never waits for Python (nor its GIL); Python takes the records when
 * the notify eventfd says there are some. */
#ifndef LX_PAGER_THREAD_H
#define LX_PAGER_THREAD_H
#include <pthread.h>
#include <stdint.h>
#include "uffd_pager.h"

struct lx_server {              /* memory owned by Python */
    uint32_t nregions;          /* Python changes it (and regions[]) only while paused */
    int epfd, wake_fd, notify_fd;
    struct lx_region **regions;
    int64_t *host_credits;
    struct lx_fault *ring;
    uint32_t ring_size;
    uint64_t head, tail;        /* records written by the thread / taken by Python */
    uint32_t notified;          /* notify_fd written, records not taken yet */
    int error;                  /* last -errno of lx_pager_serve, until taken */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    uint32_t pause_req, paused, stop, running;
    pthread_t thread;
};

int lx_server_start(struct lx_server *s, int epfd, int wake_fd, int notify_fd,
                    struct lx_region **regions, uint32_t nregions, int64_t *host_credits,
                    struct lx_fault *ring, uint32_t ring_size);
/* Returns once the thread is out of lx_pager_serve (at once if stopped);
 * pauses nest, each one ended by a resume. */
void lx_server_pause(struct lx_server *s);
void lx_server_resume(struct lx_server *s);
void lx_server_stop(struct lx_server *s);
/* Up to max records, oldest first; also re-arms the notification. */
uint32_t lx_server_take(struct lx_server *s, struct lx_fault *out, uint32_t max);
int lx_server_error(struct lx_server *s);

/* Records regrouped for Python, which pays per object it builds: one group
 * per region and kind, its pages in order at pfns[first], count of them; an
 * LX_AROUND(_ZERO) record stays a group of its own, first = its first pfn. */
struct lx_group { uint32_t region; uint16_t kind; uint16_t pad; uint32_t count; uint64_t first; };
/* groups and pfns: room for n each.  Returns how many groups. */
uint32_t lx_group_records(const struct lx_fault *in, uint32_t n, struct lx_group *groups,
                          uint64_t *pfns);
#endif
