/*
 * test_crash.c: the real server, killed with SIGKILL under load, must come
 * back with every acknowledged write (SPEC section 4, fsync always).
 *
 * One cycle: start fermata-server on the test's data directory; writer
 * processes pipeline INSERTs (each row names its writer and a sequence
 * number) and INCRs of a per-writer counter, and record in shared memory
 * what the server acknowledged; after a random 50-400 ms the server gets
 * SIGKILL. Then fermata-check --deep must find the directory consistent,
 * and a restarted server must hold, for each writer:
 *   - every acknowledged row, and no gap: the rows present are exactly
 *     sequence numbers 0..max, since one connection's commands are
 *     applied and logged in order;
 *   - a counter at least the acknowledged increments and at most the sent.
 * The next cycle continues from what the server holds.
 *
 * FM_CRASH_CYCLES sets the number of cycles (default 30, as CI runs it);
 * tests/crash_soak.sh runs many more. FM_TEST_SEED seeds the kill times.
 */
/* MAP_ANONYMOUS, for the memory shared with the writer processes, is not
 * in POSIX 2008. */
#define _DEFAULT_SOURCE
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "tests/server_proc.h"

#ifndef FM_CHECK_BIN
#error "FM_CHECK_BIN must name the fermata-check binary"
#endif

#define N_WRITERS 6
#define PIPELINE  8

struct writer_state {
    long base;       /* first sequence number of this cycle */
    long acked;      /* highest acknowledged sequence number, base - 1 none */
    long sent;       /* highest sequence number sent */
    long incr_base;  /* counter value at the start of the cycle */
    long incr_acked; /* increments acknowledged this cycle */
    long incr_sent;  /* increments sent this cycle */
};

static char dir[256];
static char log_path[300];
static struct writer_state *ws; /* shared with the writer processes */

static void setup(void)
{
    snprintf(dir, sizeof(dir), "/tmp/fm_crash_XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
    snprintf(log_path, sizeof(log_path), "%s.log", dir);
    ws = mmap(NULL, sizeof(*ws) * N_WRITERS, PROT_READ | PROT_WRITE,
              MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    cr_assert_neq(ws, MAP_FAILED);
    memset(ws, 0, sizeof(*ws) * N_WRITERS);
}

static void teardown(void)
{
    char cmd[700];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s' '%s'", dir, log_path);
    cr_assert_eq(system(cmd), 0);
    munmap(ws, sizeof(*ws) * N_WRITERS);
}

/* Starts the server the way every cycle does; *port_out gets its port. */
static pid_t start_server(int *port_out)
{
    static const char *const args[] = {"--fsync", "always", "--snapshot-wal-mb",
                                       "1", NULL};
    return fm_test_start_server(dir, log_path, args, NULL, port_out);
}

static redisContext *connect_to(int port)
{
    redisContext *c = redisConnect("127.0.0.1", port);
    cr_assert(c != NULL && c->err == 0, "connect: %s", c ? c->errstr : "null");
    return c;
}

static long long command_int(redisContext *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(c, fmt, ap);
    va_end(ap);
    cr_assert_not_null(r, "%s", c->errstr);
    cr_assert_eq(r->type, REDIS_REPLY_INTEGER, "reply %d %s", r->type,
                 r->type == REDIS_REPLY_ERROR ? r->str : "");
    long long v = r->integer;
    freeReplyObject(r);
    return v;
}

/* One writer: pipelines until the connection breaks. */
static void writer_main(int k, int port)
{
    struct writer_state *w = &ws[k];
    redisContext *c = redisConnect("127.0.0.1", port);
    if (c == NULL || c->err)
        _exit(0);
    long seq = w->base;
    for (;;) {
        /* Each batch: PIPELINE inserts, then one increment. */
        for (int i = 0; i < PIPELINE; i++) {
            char name[32];
            snprintf(name, sizeof(name), "w%02d_%08ld", k, seq + i);
            redisAppendCommand(c, "INSERT artists name %s", name);
        }
        redisAppendCommand(c,
                           "UPSERT user_track_history user_id %d track_id 1 "
                           "INCR listen_count 1",
                           k + 1);
        w->sent = seq + PIPELINE - 1;
        w->incr_sent++;
        for (int i = 0; i <= PIPELINE; i++) {
            redisReply *r = NULL;
            if (redisGetReply(c, (void **)&r) != REDIS_OK || r == NULL)
                _exit(0);
            bool ok = r->type == REDIS_REPLY_INTEGER;
            freeReplyObject(r);
            if (!ok)
                _exit(1);
            if (i < PIPELINE)
                w->acked = seq + i;
            else
                w->incr_acked++;
        }
        seq += PIPELINE;
    }
}

/* Verifies writer k against the restarted server and prepares its next
 * cycle. */
static void verify_writer(redisContext *c, int k)
{
    struct writer_state *w = &ws[k];
    char lo[32];
    char hi[32];
    snprintf(lo, sizeof(lo), "w%02d_", k);
    snprintf(hi, sizeof(hi), "w%02d_99999999", k);
    long long n =
        command_int(c, "COUNT artists WHERE name > %s AND name <= %s", lo, hi);
    cr_assert_geq(n - 1, w->acked,
                  "writer %d: %lld rows, but %ld was acknowledged", k, n,
                  w->acked);
    cr_assert_leq(n - 1, w->sent, "writer %d: more rows than sent", k);
    /* No gap: the newest row present is number n - 1. */
    char last[32];
    snprintf(last, sizeof(last), "w%02d_%08lld", k, n - 1);
    cr_assert_eq(command_int(c, "COUNT artists WHERE name = %s", last), 1,
                 "writer %d: rows are not 0..%lld", k, n - 1);
    redisReply *r = redisCommand(c,
                                 "FIND user_track_history WHERE user_id = %d "
                                 "AND track_id = 1",
                                 k + 1);
    cr_assert(r != NULL && r->type == REDIS_REPLY_ARRAY && r->elements == 1);
    redisReply *row = r->element[0];
    long long count = -1;
    for (size_t i = 0; i + 1 < row->elements; i += 2) {
        if (strcmp(row->element[i]->str, "listen_count") == 0)
            count = row->element[i + 1]->integer;
    }
    freeReplyObject(r);
    cr_assert_geq(count, w->incr_base + w->incr_acked,
                  "writer %d: counter %lld below the %ld acknowledged", k,
                  count, w->incr_base + w->incr_acked);
    cr_assert_leq(count, w->incr_base + w->incr_sent);
    w->base = n;
    w->acked = n - 1;
    w->sent = n - 1;
    w->incr_base = count;
    w->incr_acked = 0;
    w->incr_sent = 0;
}

static void prepare_schema(int port)
{
    redisContext *c = connect_to(port);
    for (int k = 0; k < N_WRITERS; k++)
        command_int(c,
                    "INSERT users username u%d email e%d password_digest d "
                    "session_token t",
                    k, k);
    command_int(c, "INSERT albums title a");
    command_int(c, "INSERT tracks title t song_url u album_id 1");
    for (int k = 0; k < N_WRITERS; k++) {
        command_int(c, "UPSERT user_track_history user_id %d track_id 1",
                    k + 1);
        ws[k].acked = -1;
        ws[k].sent = -1;
    }
    redisFree(c);
}

Test(crash, sigkill_under_load_loses_no_acknowledged_write, .init = setup,
     .fini = teardown, .timeout = 900)
{
    const char *env = getenv("FM_CRASH_CYCLES");
    int cycles = env != NULL ? atoi(env) : 30;
    const char *seed_env = getenv("FM_TEST_SEED");
    unsigned seed = seed_env != NULL ? (unsigned)strtoul(seed_env, NULL, 10)
                                     : (unsigned)time(NULL);
    srand(seed);
    int port;
    long acked_total = 0;
    pid_t server = start_server(&port);
    prepare_schema(port);
    for (int cycle = 0; cycle < cycles; cycle++) {
        pid_t writers[N_WRITERS];
        for (int k = 0; k < N_WRITERS; k++) {
            writers[k] = fork();
            cr_assert_geq(writers[k], 0);
            if (writers[k] == 0)
                writer_main(k, port);
        }
        fm_test_pause_ms(50 + rand() % 350);
        kill(server, SIGKILL);
        waitpid(server, NULL, 0);
        for (int k = 0; k < N_WRITERS; k++) {
            int status;
            waitpid(writers[k], &status, 0);
            cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0,
                      "seed %u cycle %d: writer %d got an error reply", seed,
                      cycle, k);
        }
        char cmd[600];
        snprintf(cmd, sizeof(cmd), "%s --deep '%s' > '%s.check' 2>&1",
                 FM_CHECK_BIN, dir, dir);
        cr_assert_eq(system(cmd), 0,
                     "seed %u cycle %d: fermata-check --deep failed, see "
                     "%s.check",
                     seed, cycle, dir);
        server = start_server(&port);
        redisContext *c = connect_to(port);
        for (int k = 0; k < N_WRITERS; k++) {
            acked_total += ws[k].acked - ws[k].base + 1;
            verify_writer(c, k);
        }
        redisFree(c);
    }
    /* The load was real: the server acknowledged writes in every cycle on
     * average, so the kills did land between acknowledged writes. */
    cr_assert_gt(acked_total, (long)cycles * N_WRITERS * PIPELINE,
                 "only %ld writes were acknowledged", acked_total);
    cr_log_info("%d cycles, %ld acknowledged inserts, seed %u", cycles,
                acked_total, seed);
    kill(server, SIGTERM);
    waitpid(server, NULL, 0);
    char cmd[600];
    snprintf(cmd, sizeof(cmd), "rm -f '%s.check'", dir);
    cr_assert_eq(system(cmd), 0);
}
