/*
 * ae.c: a small event loop over epoll, after Redis' ae.c.
 *
 * Layout. The loop owns an array of struct file_event indexed by fd (the
 * kernel hands out the lowest free fd, so a dense array is both the fastest
 * lookup and small: setsize is maxclients plus a few reserved fds). Each
 * entry has a mask of the directions watched and one callback per
 * direction. The epoll registration of an fd always equals its mask;
 * EPOLL_CTL_ADD, MOD or DEL is chosen by comparing the old and new masks.
 *
 * Timers are a singly linked list kept unsorted, as in Redis: the server
 * has two or three of them (the cron, maybe a snapshot check), so finding
 * the nearest is a short walk and sorting would buy nothing.
 *
 * A turn of the loop:
 *   1. the before-sleep hook (the server writes the WAL group commit there,
 *      then the replies of the turn, SPEC section 4);
 *   2. epoll_wait until the nearest timer is due (or forever);
 *   3. for each ready fd, the readable callback, then the writable one, each
 *      only if the fd is still watched for it (a callback may have closed or
 *      re-registered the fd, even another ready fd);
 *   4. due timers.
 *
 * Deleting a timer from inside a callback only marks it (id = -1); the
 * list is swept at the start of the next timer pass, so the walk in
 * process_timers never follows a freed node.
 *
 * fm_ae_run_once runs one such turn with a bounded wait, for tests that
 * drive a server from their own thread (tests/fuzz/fuzz_server.c).
 *
 * What it does not do: other backends (select, kqueue), threads. The loop is
 * single-threaded; the one cross-thread operation the server needs (a stop
 * request) goes through a pipe it watches like any other fd.
 */
#include "server/ae.h"

#include <errno.h>
#include <stdio.h>
#include <sys/epoll.h>
#include <unistd.h>

struct file_event {
    int mask; /* FM_AE_READABLE | FM_AE_WRITABLE */
    fm_ae_file_fn rfn;
    fm_ae_file_fn wfn;
    void *data;
};

struct timer_event {
    int64_t id;      /* -1 once deleted, freed at the next sweep */
    int64_t when_us; /* monotonic time when it fires */
    fm_ae_timer_fn fn;
    void *data;
    struct timer_event *next;
};

struct fm_ae {
    int epfd;
    size_t setsize;
    struct file_event *events;  /* setsize entries, indexed by fd */
    struct epoll_event *fired;  /* setsize entries, for epoll_wait */
    struct timer_event *timers; /* unsorted */
    int64_t next_timer_id;
    fm_ae_hook_fn before_sleep;
    void *before_sleep_data;
    bool stop;
};

fm_status fm_ae_new(size_t setsize, struct fm_ae **out, struct fm_error *err)
{
    FM_ASSERT(setsize > 0);
    fm_status st = FM_ERR_NOMEM;
    struct fm_ae *ae = fm_calloc(1, sizeof(*ae));
    if (ae == NULL)
        goto fail;
    ae->epfd = -1;
    ae->setsize = setsize;
    ae->events = fm_calloc(setsize, sizeof(*ae->events));
    ae->fired = fm_calloc(setsize, sizeof(*ae->fired));
    if (ae->events == NULL || ae->fired == NULL)
        goto fail_free;
    ae->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (ae->epfd < 0) {
        st = fm_error_set(err, FM_ERR_IO, "cannot create epoll instance: %s",
                          strerror(errno));
        goto fail_free;
    }
    *out = ae;
    return FM_OK;
fail_free:
    fm_ae_free(ae);
    return st;
fail:
    return fm_error_set(err, st, "out of memory creating the event loop");
}

void fm_ae_free(struct fm_ae *ae)
{
    if (ae == NULL)
        return;
    if (ae->epfd >= 0)
        close(ae->epfd);
    while (ae->timers != NULL) {
        struct timer_event *t = ae->timers;
        ae->timers = t->next;
        fm_free(t);
    }
    fm_free(ae->events);
    fm_free(ae->fired);
    fm_free(ae);
}

size_t fm_ae_setsize(const struct fm_ae *ae)
{
    return ae->setsize;
}

/* Makes the kernel's registration of fd match new_mask. */
static fm_status sync_epoll(struct fm_ae *ae, int fd, int old_mask,
                            int new_mask)
{
    struct epoll_event ee;
    memset(&ee, 0, sizeof(ee));
    ee.data.fd = fd;
    if (new_mask & FM_AE_READABLE)
        ee.events |= EPOLLIN;
    if (new_mask & FM_AE_WRITABLE)
        ee.events |= EPOLLOUT;
    int op;
    if (old_mask == FM_AE_NONE)
        op = EPOLL_CTL_ADD;
    else if (new_mask == FM_AE_NONE)
        op = EPOLL_CTL_DEL;
    else
        op = EPOLL_CTL_MOD;
    if (epoll_ctl(ae->epfd, op, fd, &ee) < 0)
        return FM_ERR_IO;
    return FM_OK;
}

fm_status fm_ae_add_file(struct fm_ae *ae, int fd, int mask, fm_ae_file_fn fn,
                         void *data)
{
    FM_ASSERT(fd >= 0 && fn != NULL);
    if ((size_t)fd >= ae->setsize)
        return FM_ERR_LIMIT;
    struct file_event *fe = &ae->events[fd];
    int new_mask = fe->mask | mask;
    if (new_mask != fe->mask) {
        fm_status st = sync_epoll(ae, fd, fe->mask, new_mask);
        if (st != FM_OK)
            return st;
    }
    fe->mask = new_mask;
    if (mask & FM_AE_READABLE)
        fe->rfn = fn;
    if (mask & FM_AE_WRITABLE)
        fe->wfn = fn;
    fe->data = data;
    return FM_OK;
}

void fm_ae_remove_file(struct fm_ae *ae, int fd, int mask)
{
    if (fd < 0 || (size_t)fd >= ae->setsize)
        return;
    struct file_event *fe = &ae->events[fd];
    int new_mask = fe->mask & ~mask;
    if (new_mask == fe->mask)
        return;
    /* A failure here means the fd is already closed, which also removed it
     * from the epoll set: nothing left to undo. */
    (void)sync_epoll(ae, fd, fe->mask, new_mask);
    fe->mask = new_mask;
    if (new_mask == FM_AE_NONE)
        memset(fe, 0, sizeof(*fe));
}

int fm_ae_file_mask(const struct fm_ae *ae, int fd)
{
    if (fd < 0 || (size_t)fd >= ae->setsize)
        return FM_AE_NONE;
    return ae->events[fd].mask;
}

fm_status fm_ae_add_timer(struct fm_ae *ae, int64_t ms, fm_ae_timer_fn fn,
                          void *data, int64_t *id_out)
{
    FM_ASSERT(fn != NULL && ms >= 0);
    struct timer_event *t = fm_calloc(1, sizeof(*t));
    if (t == NULL)
        return FM_ERR_NOMEM;
    t->id = ae->next_timer_id++;
    t->when_us = fm_monotonic_us() + ms * 1000;
    t->fn = fn;
    t->data = data;
    t->next = ae->timers;
    ae->timers = t;
    if (id_out != NULL)
        *id_out = t->id;
    return FM_OK;
}

void fm_ae_remove_timer(struct fm_ae *ae, int64_t id)
{
    for (struct timer_event *t = ae->timers; t != NULL; t = t->next) {
        if (t->id == id) {
            t->id = -1;
            return;
        }
    }
}

void fm_ae_set_before_sleep(struct fm_ae *ae, fm_ae_hook_fn fn, void *data)
{
    ae->before_sleep = fn;
    ae->before_sleep_data = data;
}

void fm_ae_stop(struct fm_ae *ae)
{
    ae->stop = true;
}

/* Frees timers deleted since the last sweep. */
static void sweep_timers(struct fm_ae *ae)
{
    struct timer_event **link = &ae->timers;
    while (*link != NULL) {
        struct timer_event *t = *link;
        if (t->id == -1) {
            *link = t->next;
            fm_free(t);
        } else {
            link = &t->next;
        }
    }
}

/* Milliseconds until the nearest timer, -1 when there is none. */
static int wait_ms(const struct fm_ae *ae)
{
    int64_t nearest = INT64_MAX;
    for (const struct timer_event *t = ae->timers; t != NULL; t = t->next)
        if (t->id != -1 && t->when_us < nearest)
            nearest = t->when_us;
    if (nearest == INT64_MAX)
        return -1;
    int64_t delta = nearest - fm_monotonic_us();
    if (delta <= 0)
        return 0;
    int64_t ms = (delta + 999) / 1000;
    return ms > 60000 ? 60000 : (int)ms;
}

static void process_timers(struct fm_ae *ae)
{
    sweep_timers(ae);
    /* Timers added by a callback have ids from max_id on and wait for the
     * next pass, so a timer that re-adds itself cannot spin this loop. */
    int64_t max_id = ae->next_timer_id;
    int64_t now = fm_monotonic_us();
    for (struct timer_event *t = ae->timers; t != NULL; t = t->next) {
        if (t->id == -1 || t->id >= max_id || t->when_us > now)
            continue;
        int64_t again = t->fn(ae, t->id, t->data);
        if (t->id == -1)
            continue; /* deleted by its own callback */
        if (again == FM_AE_NOMORE)
            t->id = -1;
        else
            t->when_us = fm_monotonic_us() + again * 1000;
    }
}

static void process_files(struct fm_ae *ae, int n)
{
    for (int i = 0; i < n; i++) {
        const struct epoll_event *ee = &ae->fired[i];
        int fd = ee->data.fd;
        struct file_event *fe = &ae->events[fd];
        bool readable = (ee->events & (EPOLLIN | EPOLLERR | EPOLLHUP)) != 0;
        bool writable = (ee->events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) != 0;
        bool done_read = false;
        if (readable && (fe->mask & FM_AE_READABLE)) {
            fe->rfn(ae, fd, fe->data, FM_AE_READABLE);
            done_read = true;
        }
        /* The read callback may have closed fd, or replaced its handlers;
         * look again, and do not call one function twice for one event. */
        fe = &ae->events[fd];
        if (writable && (fe->mask & FM_AE_WRITABLE) &&
            !(done_read && fe->wfn == fe->rfn))
            fe->wfn(ae, fd, fe->data, FM_AE_WRITABLE);
    }
}

/* One turn: hook, wait up to wait_ms (-1: until the nearest timer), handle
 * what is ready. n_out is the number of ready fds. */
static fm_status run_turn(struct fm_ae *ae, int max_wait_ms, int *n_out)
{
    *n_out = 0;
    if (ae->before_sleep != NULL)
        ae->before_sleep(ae, ae->before_sleep_data);
    if (ae->stop)
        return FM_OK;
    int ms = wait_ms(ae);
    if (max_wait_ms >= 0 && (ms < 0 || ms > max_wait_ms))
        ms = max_wait_ms;
    int n = epoll_wait(ae->epfd, ae->fired, (int)ae->setsize, ms);
    if (n < 0)
        return errno == EINTR ? FM_OK : FM_ERR_IO;
    process_files(ae, n);
    process_timers(ae);
    *n_out = n;
    return FM_OK;
}

fm_status fm_ae_run(struct fm_ae *ae)
{
    ae->stop = false;
    while (!ae->stop) {
        int n;
        fm_status st = run_turn(ae, -1, &n);
        if (st != FM_OK)
            return st;
    }
    return FM_OK;
}

fm_status fm_ae_run_once(struct fm_ae *ae, int max_wait_ms, size_t *n_fired_out)
{
    int n;
    fm_status st = run_turn(ae, max_wait_ms, &n);
    if (st == FM_OK)
        *n_fired_out = (size_t)n;
    return st;
}
