/* The pager's serve loop as a native thread; see pager_thread.h. */
#define _GNU_SOURCE
#include "pager_thread.h"
#include <errno.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define FULL_SLEEP_NS 200000    /* ring full: Python is behind, wait for it */

static void poke(int fd)
{
    uint64_t one = 1;
    while (write(fd, &one, sizeof one) < 0 && errno == EINTR)
        ;
}

static void notify(struct lx_server *s)
{
    if (!__atomic_exchange_n(&s->notified, 1, __ATOMIC_SEQ_CST))
        poke(s->notify_fd);
}

/* Waits while Python holds a pause; 1 when told to stop. */
static int wait_unpaused(struct lx_server *s)
{
    pthread_mutex_lock(&s->mu);
    while (s->pause_req && !s->stop) {
        s->paused = 1;
        pthread_cond_broadcast(&s->cv);
        pthread_cond_wait(&s->cv, &s->mu);
    }
    s->paused = 0;
    int stop = s->stop;
    pthread_mutex_unlock(&s->mu);
    return stop;
}

static void *serve(void *arg)
{
    struct lx_server *s = arg;
    while (!wait_unpaused(s)) {
        uint64_t head = s->head, tail = __atomic_load_n(&s->tail, __ATOMIC_ACQUIRE);
        uint32_t at = (uint32_t)(head % s->ring_size);
        uint32_t room = s->ring_size - (uint32_t)(head - tail);
        if (room > s->ring_size - at)
            room = s->ring_size - at;       /* up to the end of the ring */
        if (!room) {
            struct timespec t = { 0, FULL_SLEEP_NS };
            nanosleep(&t, NULL);
            continue;
        }
        int n = lx_pager_serve(s->epfd, s->regions, s->nregions, s->wake_fd, s->host_credits,
                               s->ring + at, room, 100);
        if (n < 0)
            __atomic_store_n(&s->error, -n, __ATOMIC_RELAXED);
        else if (n > 0)
            __atomic_store_n(&s->head, head + (uint64_t)n, __ATOMIC_RELEASE);
        if (n)
            notify(s);
    }
    return NULL;
}

int lx_server_start(struct lx_server *s, int epfd, int wake_fd, int notify_fd,
                    struct lx_region **regions, uint32_t nregions, int64_t *host_credits,
                    struct lx_fault *ring, uint32_t ring_size)
{
    memset(s, 0, sizeof *s);
    s->epfd = epfd;
    s->wake_fd = wake_fd;
    s->notify_fd = notify_fd;
    s->regions = regions;
    s->nregions = nregions;
    s->host_credits = host_credits;
    s->ring = ring;
    s->ring_size = ring_size;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    int rc = pthread_create(&s->thread, NULL, serve, s);
    if (rc)
        return -rc;
    s->running = 1;
    return 0;
}

void lx_server_pause(struct lx_server *s)
{
    pthread_mutex_lock(&s->mu);
    s->pause_req++;
    if (s->running && !s->paused)
        poke(s->wake_fd);           /* out of epoll_wait */
    while (s->running && !s->paused && !s->stop)
        pthread_cond_wait(&s->cv, &s->mu);
    pthread_mutex_unlock(&s->mu);
}

void lx_server_resume(struct lx_server *s)
{
    pthread_mutex_lock(&s->mu);
    if (s->pause_req && !--s->pause_req)
        pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

void lx_server_stop(struct lx_server *s)
{
    pthread_mutex_lock(&s->mu);
    int running = s->running && !s->stop;
    s->stop = 1;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    if (!running)
        return;
    poke(s->wake_fd);
    pthread_join(s->thread, NULL);
    pthread_mutex_lock(&s->mu);
    s->running = 0;
    pthread_mutex_unlock(&s->mu);
}

uint32_t lx_server_take(struct lx_server *s, struct lx_fault *out, uint32_t max)
{
    /* re-armed first: records written after head is read notify again */
    __atomic_store_n(&s->notified, 0, __ATOMIC_SEQ_CST);
    uint64_t tail = s->tail, head = __atomic_load_n(&s->head, __ATOMIC_ACQUIRE);
    uint32_t n = 0;
    while (tail + n < head && n < max) {
        out[n] = s->ring[(tail + n) % s->ring_size];
        n++;
    }
    __atomic_store_n(&s->tail, tail + n, __ATOMIC_RELEASE);
    return n;
}

int lx_server_error(struct lx_server *s)
{
    return __atomic_exchange_n(&s->error, 0, __ATOMIC_RELAXED);
}

static int is_run(uint16_t kind)
{
    return kind == LX_AROUND || kind == LX_AROUND_ZERO;
}

/* The group of (region, kind), or a new one; last is where the previous
 * record went, most often this one's too. */
static uint32_t group_of(struct lx_group *groups, uint32_t *ngroups, uint32_t *last,
                         const struct lx_fault *f)
{
    if (!is_run(f->kind)) {
        if (*ngroups && groups[*last].region == f->region && groups[*last].kind == f->kind)
            return *last;
        for (uint32_t g = 0; g < *ngroups; g++)
            if (groups[g].region == f->region && groups[g].kind == f->kind)
                return *last = g;
    }
    groups[*ngroups] = (struct lx_group){ .region = f->region, .kind = f->kind };
    return *last = (*ngroups)++;
}

uint32_t lx_group_records(const struct lx_fault *in, uint32_t n, struct lx_group *groups,
                          uint64_t *pfns)
{
    uint32_t ngroups = 0, last = 0;
    for (uint32_t i = 0; i < n; i++) {     /* sizes, then where each group starts */
        struct lx_group *g = &groups[group_of(groups, &ngroups, &last, &in[i])];
        g->count += is_run(in[i].kind) ? in[i].count : 1;
        if (is_run(in[i].kind))
            g->first = in[i].pfn;
    }
    uint64_t at = 0;
    for (uint32_t g = 0; g < ngroups; g++)
        if (!is_run(groups[g].kind)) {
            groups[g].first = at;
            at += groups[g].count;
            groups[g].count = 0;
        }
    for (uint32_t i = 0; i < n; i++) {    /* finds, never adds: every group exists */
        if (is_run(in[i].kind))
            continue;
        uint32_t g = group_of(groups, &ngroups, &last, &in[i]);
        pfns[groups[g].first + groups[g].count++] = in[i].pfn;
    }
    return ngroups;
}
