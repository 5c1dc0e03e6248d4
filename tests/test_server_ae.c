/*
 * test_server_ae.c: the event loop on its own (server/ae.h): file events on
 * a pipe, timers, the before-sleep hook, removal from inside callbacks.
 */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <unistd.h>

#include "server/ae.h"

struct state {
    int fds[2];
    int reads;
    int writes;
    int timer_a;
    int timer_b;
    int hooks;
    int64_t timer_b_id;
    char got[16];
};

static void on_read(struct fm_ae *ae, int fd, void *data, int mask)
{
    struct state *s = data;
    cr_assert_eq(mask, FM_AE_READABLE);
    ssize_t n = read(fd, s->got, sizeof(s->got) - 1);
    cr_assert(n > 0);
    s->got[n] = '\0';
    s->reads++;
    fm_ae_remove_file(ae, fd, FM_AE_READABLE);
    fm_ae_stop(ae);
}

static void on_write(struct fm_ae *ae, int fd, void *data, int mask)
{
    struct state *s = data;
    cr_assert_eq(mask, FM_AE_WRITABLE);
    cr_assert_eq(write(fd, "hi", 2), 2);
    s->writes++;
    /* Writable once is enough: a level-triggered watch would fire again. */
    fm_ae_remove_file(ae, fd, FM_AE_WRITABLE);
}

static void count_hook(struct fm_ae *ae, void *data)
{
    (void)ae;
    struct state *s = data;
    s->hooks++;
}

Test(server_ae, file_events_fire_and_can_be_removed_in_their_callback)
{
    struct state s = {0};
    struct fm_ae *ae = NULL;
    cr_assert_eq(pipe(s.fds), 0);
    cr_assert_eq(fm_ae_new(64, &ae, NULL), FM_OK);
    cr_assert_eq(fm_ae_add_file(ae, s.fds[0], FM_AE_READABLE, on_read, &s),
                 FM_OK);
    cr_assert_eq(fm_ae_add_file(ae, s.fds[1], FM_AE_WRITABLE, on_write, &s),
                 FM_OK);
    cr_assert_eq(fm_ae_file_mask(ae, s.fds[0]), FM_AE_READABLE);
    fm_ae_set_before_sleep(ae, count_hook, &s);
    cr_assert_eq(fm_ae_run(ae), FM_OK);
    cr_assert_eq(s.writes, 1);
    cr_assert_eq(s.reads, 1);
    cr_assert_str_eq(s.got, "hi");
    cr_assert(s.hooks >= 1);
    cr_assert_eq(fm_ae_file_mask(ae, s.fds[0]), FM_AE_NONE);
    cr_assert_eq(fm_ae_file_mask(ae, s.fds[1]), FM_AE_NONE);
    fm_ae_free(ae);
    close(s.fds[0]);
    close(s.fds[1]);
}

Test(server_ae, fd_beyond_setsize_is_refused)
{
    struct fm_ae *ae = NULL;
    int fds[2];
    cr_assert_eq(pipe(fds), 0);
    cr_assert_eq(fm_ae_new(2, &ae, NULL), FM_OK);
    cr_assert_eq(fm_ae_add_file(ae, fds[0], FM_AE_READABLE, on_read, NULL),
                 FM_ERR_LIMIT);
    fm_ae_remove_file(ae, fds[0], FM_AE_READABLE); /* harmless */
    fm_ae_free(ae);
    close(fds[0]);
    close(fds[1]);
}

static int64_t timer_a(struct fm_ae *ae, int64_t id, void *data)
{
    (void)id;
    struct state *s = data;
    s->timer_a++;
    if (s->timer_a == 3) {
        /* Deleting another timer, and stopping, from a callback. */
        fm_ae_remove_timer(ae, s->timer_b_id);
        fm_ae_stop(ae);
        return FM_AE_NOMORE;
    }
    return 1;
}

static int64_t timer_b(struct fm_ae *ae, int64_t id, void *data)
{
    (void)ae;
    (void)id;
    struct state *s = data;
    s->timer_b++;
    return 1000; /* would fire again in a second: removed before that */
}

Test(server_ae, timers_repeat_until_they_say_nomore)
{
    struct state s = {0};
    struct fm_ae *ae = NULL;
    cr_assert_eq(fm_ae_new(16, &ae, NULL), FM_OK);
    int64_t a_id;
    cr_assert_eq(fm_ae_add_timer(ae, 1, timer_a, &s, &a_id), FM_OK);
    cr_assert_eq(fm_ae_add_timer(ae, 0, timer_b, &s, &s.timer_b_id), FM_OK);
    cr_assert_neq(a_id, s.timer_b_id);
    int64_t t0 = fm_monotonic_us();
    cr_assert_eq(fm_ae_run(ae), FM_OK);
    cr_assert_eq(s.timer_a, 3);
    cr_assert_eq(s.timer_b, 1);
    /* The loop waited for the timers rather than spinning past them. */
    cr_assert(fm_monotonic_us() - t0 >= 2000);
    fm_ae_remove_timer(ae, 12345); /* unknown: harmless */
    fm_ae_free(ae);
}

static void on_read_keep(struct fm_ae *ae, int fd, void *data, int mask)
{
    (void)ae;
    (void)mask;
    struct state *s = data;
    cr_assert(read(fd, s->got, sizeof(s->got) - 1) > 0);
    s->reads++;
}

Test(server_ae, run_once_runs_one_turn_and_counts_the_ready_fds)
{
    struct state s = {0};
    struct fm_ae *ae = NULL;
    size_t n = 99;
    cr_assert_eq(pipe(s.fds), 0);
    cr_assert_eq(fm_ae_new(64, &ae, NULL), FM_OK);
    cr_assert_eq(fm_ae_add_file(ae, s.fds[0], FM_AE_READABLE, on_read_keep, &s),
                 FM_OK);
    fm_ae_set_before_sleep(ae, count_hook, &s);
    /* Nothing ready: the hook runs, the poll finds nothing. */
    cr_assert_eq(fm_ae_run_once(ae, 0, &n), FM_OK);
    cr_assert_eq(n, 0);
    cr_assert_eq(s.hooks, 1);
    cr_assert_eq(s.reads, 0);
    cr_assert_eq(write(s.fds[1], "x", 1), 1);
    cr_assert_eq(fm_ae_run_once(ae, 0, &n), FM_OK);
    cr_assert_eq(n, 1);
    cr_assert_eq(s.hooks, 2);
    cr_assert_eq(s.reads, 1);
    fm_ae_free(ae);
    close(s.fds[0]);
    close(s.fds[1]);
}
