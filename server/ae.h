/*
 * ae.h: the event loop (file events on epoll, timers, a before-sleep hook),
 * in the style of Redis' ae.c.
 */
#ifndef FM_SERVER_AE_H
#define FM_SERVER_AE_H

#include "engine/base.h"

struct fm_ae;

enum {
    FM_AE_NONE = 0,
    FM_AE_READABLE = 1,
    FM_AE_WRITABLE = 2,
};

/* Returned by a timer callback to stop the timer. */
#define FM_AE_NOMORE (-1)

/* Called when fd is ready for mask (one of READABLE and WRITABLE). */
typedef void (*fm_ae_file_fn)(struct fm_ae *ae, int fd, void *data, int mask);

/* A timer fired. Returns the milliseconds until it fires again, or
 * FM_AE_NOMORE to delete it. */
typedef int64_t (*fm_ae_timer_fn)(struct fm_ae *ae, int64_t id, void *data);

/* Runs once per loop turn, after the events were handled and before the
 * loop waits again: where group commit writes the WAL and replies go out. */
typedef void (*fm_ae_hook_fn)(struct fm_ae *ae, void *data);

/*
 * Creates a loop able to watch fds 0 .. setsize-1. FM_ERR_NOMEM, FM_ERR_IO
 * (epoll_create1 failed; message in err).
 */
fm_status fm_ae_new(size_t setsize, struct fm_ae **out, struct fm_error *err);

/* Releases the loop (not the fds it watched); NULL does nothing. */
void fm_ae_free(struct fm_ae *ae);

/* The number of fds the loop can watch. */
size_t fm_ae_setsize(const struct fm_ae *ae);

/*
 * Watches fd for mask, calling fn with data. A second call for the other
 * direction keeps the first; each direction has its own callback.
 * FM_ERR_LIMIT when fd >= setsize, FM_ERR_IO when epoll_ctl fails.
 */
fm_status fm_ae_add_file(struct fm_ae *ae, int fd, int mask, fm_ae_file_fn fn,
                         void *data);

/* Stops watching fd for mask; harmless when it was not watched. */
void fm_ae_remove_file(struct fm_ae *ae, int fd, int mask);

/* The directions fd is watched for. */
int fm_ae_file_mask(const struct fm_ae *ae, int fd);

/* Adds a timer firing in ms milliseconds. FM_ERR_NOMEM. */
fm_status fm_ae_add_timer(struct fm_ae *ae, int64_t ms, fm_ae_timer_fn fn,
                          void *data, int64_t *id_out);

/* Deletes a timer; harmless for an unknown id. */
void fm_ae_remove_timer(struct fm_ae *ae, int64_t id);

/* Installs the before-sleep hook (NULL removes it). */
void fm_ae_set_before_sleep(struct fm_ae *ae, fm_ae_hook_fn fn, void *data);

/* Makes fm_ae_run return after the current turn. */
void fm_ae_stop(struct fm_ae *ae);

/*
 * Runs turns until fm_ae_stop: before-sleep hook, wait for the next event
 * or timer, handle what is ready. Returns FM_OK after a stop, FM_ERR_IO if
 * epoll_wait fails for a reason other than EINTR.
 */
fm_status fm_ae_run(struct fm_ae *ae);

/*
 * Runs one turn as fm_ae_run does (the before-sleep hook, a wait of at most
 * max_wait_ms, 0 to only poll, then the ready fds and due timers), for
 * callers that drive the loop themselves, such as tests. It ignores
 * fm_ae_stop apart from skipping the wait and the events when the hook
 * stopped the loop. n_fired_out: the fds that were ready (0 when nothing
 * happened). FM_ERR_IO if epoll_wait fails for a reason other than EINTR.
 */
fm_status fm_ae_run_once(struct fm_ae *ae, int max_wait_ms,
                         size_t *n_fired_out);

#endif /* FM_SERVER_AE_H */
