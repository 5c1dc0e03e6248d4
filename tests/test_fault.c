/*
 * test_fault.c: the real server when its disk fails (SPEC section 4).
 *
 * fermata-server runs under tests/fault_shim.c (LD_PRELOAD), which makes
 * WAL writes or fdatasyncs fail with EIO or ENOSPC once a trigger file
 * exists. With fsync always, the write whose group failed must get
 * -READONLY, later writes too, reads must go on and INFO must say why; after
 * a SIGKILL and a restart without the fault, every acknowledged write is
 * there and the refused ones are not.
 *
 * A failed group commit also withholds every reply of the turn that ran
 * after its first write, on any client, since such a reply may carry rows
 * that were rolled back (docs/durability.md). To have two clients' requests
 * handled in one loop turn, the server is stopped with SIGSTOP while both
 * are sent, so that one epoll_wait returns both sockets, in the order the
 * requests arrived.
 */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <dirent.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>

#include "tests/server_proc.h"

#ifndef FM_FAULT_SHIM
#error "FM_FAULT_SHIM must name the fault-injection library"
#endif

static char dir[256];
static char log_path[300];
static char trigger[300];
static char stall[300];

static void setup(void)
{
    snprintf(dir, sizeof(dir), "/tmp/fm_fault_XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
    snprintf(log_path, sizeof(log_path), "%s.log", dir);
    snprintf(trigger, sizeof(trigger), "%s.trigger", dir);
    snprintf(stall, sizeof(stall), "%s.stall", dir);
}

static void teardown(void)
{
    char cmd[1400];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s' '%s' '%s' '%s'", dir, log_path,
             trigger, stall);
    cr_assert_eq(system(cmd), 0);
}

TestSuite(fault, .init = setup, .fini = teardown, .timeout = 120);

static redisReply *cmd(redisContext *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(c, fmt, ap);
    va_end(ap);
    cr_assert_not_null(r, "%s", c->errstr);
    return r;
}

static void expect_int(redisContext *c, long long want, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(c, fmt, ap);
    va_end(ap);
    cr_assert_not_null(r, "%s", c->errstr);
    cr_assert_eq(r->type, REDIS_REPLY_INTEGER, "%s: type %d %s", fmt, r->type,
                 r->type == REDIS_REPLY_ERROR ? r->str : "");
    cr_assert_eq(r->integer, want, "%s: %lld", fmt, r->integer);
    freeReplyObject(r);
}

static void run_fault(const char *call, const char *err_name)
{
    char env_preload[512];
    char env_trigger[400];
    char env_call[64];
    char env_errno[64];
    snprintf(env_preload, sizeof(env_preload), "LD_PRELOAD=%s", FM_FAULT_SHIM);
    snprintf(env_trigger, sizeof(env_trigger), "FM_FAULT_TRIGGER=%s", trigger);
    snprintf(env_call, sizeof(env_call), "FM_FAULT_CALL=%s", call);
    snprintf(env_errno, sizeof(env_errno), "FM_FAULT_ERRNO=%s", err_name);
    /* A sanitizer runtime must come first unless told otherwise. */
    char env_asan[] = "ASAN_OPTIONS=verify_asan_link_order=0:detect_leaks=0";
    char *const env[] = {env_preload, env_trigger, env_call,
                         env_errno,   env_asan,    NULL};
    static const char *const args[] = {"--fsync", "always", NULL};
    int port;
    pid_t server = fm_test_start_server(dir, log_path, args, env, &port);
    redisContext *c = redisConnect("127.0.0.1", port);
    cr_assert(c != NULL && c->err == 0);
    for (int i = 1; i <= 20; i++)
        expect_int(c, i, "INSERT artists name kept%d", i);

    FILE *f = fopen(trigger, "w");
    cr_assert_not_null(f);
    fclose(f);
    redisReply *r = cmd(c, "INSERT artists name lost1");
    cr_assert_eq(r->type, REDIS_REPLY_ERROR);
    cr_assert(strncmp(r->str, "READONLY", 8) == 0, "%s", r->str);
    freeReplyObject(r);
    r = cmd(c, "UPDATE artists 1 name lost2");
    cr_assert_eq(r->type, REDIS_REPLY_ERROR);
    cr_assert(strncmp(r->str, "READONLY", 8) == 0, "%s", r->str);
    freeReplyObject(r);
    expect_int(c, 20, "COUNT artists");
    r = cmd(c, "INFO persistence");
    cr_assert_eq(r->type, REDIS_REPLY_STRING);
    cr_assert_not_null(strstr(r->str, "readonly:1"), "%s", r->str);
    freeReplyObject(r);
    redisFree(c);
    kill(server, SIGKILL);
    waitpid(server, NULL, 0);

    unlink(trigger);
    server = fm_test_start_server(dir, log_path, args, NULL, &port);
    c = redisConnect("127.0.0.1", port);
    cr_assert(c != NULL && c->err == 0);
    expect_int(c, 20, "COUNT artists");
    expect_int(c, 0, "COUNT artists WHERE name = lost1");
    expect_int(c, 1, "COUNT artists WHERE name = kept1");
    expect_int(c, 21, "INSERT artists name after_restart");
    redisFree(c);
    kill(server, SIGTERM);
    waitpid(server, NULL, 0);
}

Test(fault, failed_fdatasync_with_eio_turns_the_server_readonly)
{
    run_fault("fdatasync", "EIO");
}

Test(fault, failed_wal_write_with_enospc_turns_the_server_readonly)
{
    run_fault("pwrite", "ENOSPC");
}

Test(fault, failed_wal_write_with_eio_turns_the_server_readonly)
{
    run_fault("pwrite", "EIO");
}

/* Starts the server under the shim with the fault armed for call/err_name
 * once the trigger file exists; returns its pid. */
static pid_t start_faulty(const char *call, const char *err_name,
                          const char *fsync, int *port)
{
    static char env_preload[512];
    static char env_trigger[400];
    static char env_call[64];
    static char env_errno[64];
    static char env_asan[] =
        "ASAN_OPTIONS=verify_asan_link_order=0:detect_leaks=0";
    snprintf(env_preload, sizeof(env_preload), "LD_PRELOAD=%s", FM_FAULT_SHIM);
    snprintf(env_trigger, sizeof(env_trigger), "FM_FAULT_TRIGGER=%s", trigger);
    snprintf(env_call, sizeof(env_call), "FM_FAULT_CALL=%s", call);
    snprintf(env_errno, sizeof(env_errno), "FM_FAULT_ERRNO=%s", err_name);
    char *const env[] = {env_preload, env_trigger, env_call,
                         env_errno,   env_asan,    NULL};
    const char *const args[] = {"--fsync", fsync, NULL};
    return fm_test_start_server(dir, log_path, args, env, port);
}

static redisContext *connect_to(int port)
{
    redisContext *c = redisConnect("127.0.0.1", port);
    cr_assert(c != NULL && c->err == 0);
    return c;
}

static void arm_fault(void)
{
    FILE *f = fopen(trigger, "w");
    cr_assert_not_null(f);
    fclose(f);
}

/* Sends everything appended to c without reading a reply. */
static void send_appended(redisContext *c)
{
    int done = 0;
    while (!done)
        cr_assert_eq(redisBufferWrite(c, &done), REDIS_OK, "%s", c->errstr);
}

/* Bytes waiting unread in the server's end of c's connection, from
 * /proc/net/tcp (the server listens on 127.0.0.1), or -1 if not found. */
static long server_rx_queue(redisContext *c, int server_port)
{
    struct sockaddr_in me;
    socklen_t me_len = sizeof(me);
    cr_assert_eq(getsockname(c->fd, (struct sockaddr *)&me, &me_len), 0);
    unsigned client_port = ntohs(me.sin_port);
    FILE *f = fopen("/proc/net/tcp", "r");
    cr_assert_not_null(f);
    char line[512];
    long found = -1;
    while (found < 0 && fgets(line, sizeof(line), f) != NULL) {
        unsigned lip, lport, rip, rport, st, txq, rxq;
        if (sscanf(line, " %*d: %8x:%4x %8x:%4x %2x %8x:%8x", &lip, &lport,
                   &rip, &rport, &st, &txq, &rxq) == 7 &&
            lport == (unsigned)server_port && rport == client_port)
            found = (long)rxq;
    }
    fclose(f);
    return found;
}

/*
 * Sends what was appended to c and waits until it sits in the server's
 * socket: loopback hands data over in a softirq that can run late on a
 * loaded machine, and the tests below need every request queued (and
 * queued in order) before the stopped server resumes.
 */
static void send_queued(redisContext *c, int server_port)
{
    send_appended(c);
    for (int i = 0; i < 500 && server_rx_queue(c, server_port) <= 0; i++)
        fm_test_pause_ms(2);
    cr_assert_gt(server_rx_queue(c, server_port), 0,
                 "the request never reached the server's socket");
}

static redisReply *next_reply(redisContext *c)
{
    void *r = NULL;
    cr_assert_eq(redisGetReply(c, &r), REDIS_OK, "%s", c->errstr);
    return r;
}

static void expect_readonly(redisContext *c, const char *what)
{
    redisReply *r = next_reply(c);
    cr_assert_eq(r->type, REDIS_REPLY_ERROR, "%s: type %d (%s)", what, r->type,
                 r->type == REDIS_REPLY_STRING ? r->str : "");
    cr_assert(strncmp(r->str, "READONLY", 8) == 0, "%s: %s", what, r->str);
    freeReplyObject(r);
}

static void expect_error_prefix(redisContext *c, const char *prefix,
                                const char *what)
{
    redisReply *r = next_reply(c);
    cr_assert_eq(r->type, REDIS_REPLY_ERROR, "%s: type %d", what, r->type);
    cr_assert(strncmp(r->str, prefix, strlen(prefix)) == 0, "%s: %s", what,
              r->str);
    freeReplyObject(r);
}

static void expect_nil(redisContext *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(c, fmt, ap);
    va_end(ap);
    cr_assert_not_null(r, "%s", c->errstr);
    cr_assert_eq(r->type, REDIS_REPLY_NIL, "%s: type %d", fmt, r->type);
    freeReplyObject(r);
}

/* True when the server's main thread sleeps in epoll_wait. */
static bool is_in_epoll_wait(pid_t server)
{
    char path[64];
    char wchan[64] = "";
    snprintf(path, sizeof(path), "/proc/%d/wchan", (int)server);
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f);
    size_t n = fread(wchan, 1, sizeof(wchan) - 1, f);
    wchan[n] = '\0';
    fclose(f);
    return strstr(wchan, "epoll") != NULL;
}

/*
 * Stops the server once it sleeps in epoll_wait. Stopping it earlier, while
 * it still finishes the last turn, would leave the sockets it just served
 * on epoll's ready list (level-triggered events are queued again after they
 * are reported), and the next epoll_wait would report them first, whatever
 * order the new requests arrive in.
 */
static void stop_server(pid_t server)
{
    int status;
    for (int i = 0; i < 500 && !is_in_epoll_wait(server); i++)
        fm_test_pause_ms(2);
    cr_assert_eq(kill(server, SIGSTOP), 0);
    cr_assert_eq(waitpid(server, &status, WUNTRACED), server);
    cr_assert(WIFSTOPPED(status));
}

static void kill_server(pid_t server)
{
    kill(server, SIGKILL);
    waitpid(server, NULL, 0);
}

static void pipelined_read_after_failed_write(const char *call,
                                              const char *err_name,
                                              const char *fsync)
{
    int port;
    pid_t server = start_faulty(call, err_name, fsync, &port);
    redisContext *c = connect_to(port);
    expect_int(c, 1, "INSERT artists name kept");
    arm_fault();
    redisAppendCommand(c, "INSERT artists name lost");
    redisAppendCommand(c, "GET artists 2");
    redisAppendCommand(c, "PING");
    send_appended(c);
    expect_readonly(c, "INSERT");
    expect_readonly(c, "GET of the rolled-back row");
    expect_readonly(c, "PING after the write");
    /* The next turn sees the state after the rollback. */
    expect_nil(c, "GET artists 2");
    expect_int(c, 1, "COUNT artists");
    redisFree(c);
    kill_server(server);
}

Test(fault, pipelined_read_after_a_failed_write_gets_readonly)
{
    pipelined_read_after_failed_write("fdatasync", "EIO", "always");
}

Test(fault, pipelined_read_after_a_failed_write_gets_readonly_under_everysec)
{
    /* Under everysec the flush is a write() without fdatasync; when that
     * write fails, the group is rolled back as under always. */
    pipelined_read_after_failed_write("pwrite", "ENOSPC", "everysec");
}

Test(fault, read_of_another_client_in_the_failed_turn_gets_readonly)
{
    int port;
    pid_t server = start_faulty("fdatasync", "EIO", "always", &port);
    redisContext *before = connect_to(port);
    redisContext *writer = connect_to(port);
    redisContext *reader = connect_to(port);
    expect_int(writer, 1, "INSERT artists name kept");
    arm_fault();
    stop_server(server);
    /* All three arrive while the server is stopped, so one turn runs them
     * in this order: a read before the turn's first write, the write, a
     * read that sees the written row. */
    redisAppendCommand(before, "GET artists 1");
    send_queued(before, port);
    redisAppendCommand(writer, "INSERT artists name lost");
    send_queued(writer, port);
    redisAppendCommand(reader, "GET artists 2");
    send_queued(reader, port);
    cr_assert_eq(kill(server, SIGCONT), 0);
    redisReply *r = next_reply(before);
    cr_assert_eq(r->type, REDIS_REPLY_ARRAY, "a read before the write: %d",
                 r->type);
    freeReplyObject(r);
    expect_readonly(writer, "INSERT");
    expect_readonly(reader, "GET of the rolled-back row by another client");
    expect_nil(reader, "GET artists 2");
    redisFree(before);
    redisFree(writer);
    redisFree(reader);
    kill_server(server);
}

Test(fault, multi_begun_in_a_failed_turn_is_undone)
{
    int port;
    pid_t server = start_faulty("fdatasync", "EIO", "always", &port);
    redisContext *c = connect_to(port);
    expect_int(c, 1, "INSERT artists name kept");
    arm_fault();
    redisAppendCommand(c, "INSERT artists name lost");
    redisAppendCommand(c, "MULTI");
    redisAppendCommand(c, "GET artists 2");
    send_appended(c);
    expect_readonly(c, "INSERT");
    expect_readonly(c, "MULTI");
    expect_readonly(c, "queued GET");
    /* The client was told MULTI failed, and the server agrees. */
    redisReply *r = cmd(c, "EXEC");
    cr_assert_eq(r->type, REDIS_REPLY_ERROR);
    cr_assert_not_null(strstr(r->str, "EXEC without MULTI"), "%s", r->str);
    freeReplyObject(r);
    redisFree(c);
    kill_server(server);
}

Test(fault, commands_queued_in_a_failed_turn_abort_the_exec)
{
    int port;
    pid_t server = start_faulty("fdatasync", "EIO", "always", &port);
    redisContext *writer = connect_to(port);
    redisContext *tx = connect_to(port);
    expect_int(writer, 1, "INSERT artists name kept");
    redisReply *r = cmd(tx, "MULTI");
    cr_assert_eq(r->type, REDIS_REPLY_STATUS);
    freeReplyObject(r);
    arm_fault();
    stop_server(server);
    redisAppendCommand(writer, "INSERT artists name lost");
    send_queued(writer, port);
    redisAppendCommand(tx, "GET artists 2");
    send_queued(tx, port);
    cr_assert_eq(kill(server, SIGCONT), 0);
    expect_readonly(writer, "INSERT");
    expect_readonly(tx, "GET queued after the write");
    redisAppendCommand(tx, "EXEC");
    send_appended(tx);
    expect_error_prefix(tx, "EXECABORT",
                        "EXEC of a transaction told of a "
                        "failed queuing");
    redisFree(writer);
    redisFree(tx);
    kill_server(server);
}

Test(fault, save_after_a_write_in_the_same_turn_does_not_hide_the_failure)
{
    int port;
    pid_t server = start_faulty("fdatasync", "EIO", "always", &port);
    redisContext *c = connect_to(port);
    expect_int(c, 1, "INSERT artists name kept");
    arm_fault();
    /* SAVE flushes the WAL itself, before the end of the turn. */
    redisAppendCommand(c, "INSERT artists name lost");
    redisAppendCommand(c, "GET artists 2");
    redisAppendCommand(c, "SAVE");
    send_appended(c);
    expect_readonly(c, "INSERT");
    expect_readonly(c, "GET of the rolled-back row");
    redisReply *r = next_reply(c);
    freeReplyObject(r);
    expect_nil(c, "GET artists 2");
    redisFree(c);
    kill_server(server);

    unlink(trigger);
    const char *const args[] = {"--fsync", "always", NULL};
    server = fm_test_start_server(dir, log_path, args, NULL, &port);
    c = connect_to(port);
    expect_int(c, 1, "COUNT artists");
    expect_nil(c, "GET artists 2");
    redisFree(c);
    kill_server(server);
}

Test(fault, background_snapshot_in_the_turn_does_not_hide_the_failure)
{
    int port;
    pid_t server = start_faulty("fdatasync", "EIO", "always", &port);
    redisContext *c = connect_to(port);
    expect_int(c, 1, "INSERT artists name kept");
    redisReply *r = cmd(c, "SAVE");
    freeReplyObject(r);
    r = cmd(c, "CONFIG SET snapshot-interval 1");
    freeReplyObject(r);
    arm_fault();
    /* While the server is stopped the cron falls due, so the timer runs in
     * the same turn as the write and starts a background snapshot, which
     * flushes the WAL before the end of the turn. */
    stop_server(server);
    fm_test_pause_ms(1200);
    redisAppendCommand(c, "INSERT artists name lost");
    redisAppendCommand(c, "GET artists 2");
    send_queued(c, port);
    cr_assert_eq(kill(server, SIGCONT), 0);
    expect_readonly(c, "INSERT");
    expect_readonly(c, "GET of the rolled-back row");
    expect_nil(c, "GET artists 2");
    redisFree(c);
    kill_server(server);
}

/* True when the server's log holds a line with every one of the words. */
static bool log_has(const char *word1, const char *word2)
{
    FILE *f = fopen(log_path, "r");
    cr_assert_not_null(f);
    char line[2048];
    bool found = false;
    while (!found && fgets(line, sizeof(line), f) != NULL)
        found = strstr(line, word1) != NULL && strstr(line, word2) != NULL;
    fclose(f);
    return found;
}

/* INFO persistence of c, malloc'ed. */
static char *info_persistence(redisContext *c)
{
    redisReply *r = cmd(c, "INFO persistence");
    cr_assert_eq(r->type, REDIS_REPLY_STRING);
    char *text = strdup(r->str);
    freeReplyObject(r);
    return text;
}

Test(fault, failed_background_fsync_turns_the_server_readonly_without_a_write)
{
    int port;
    pid_t server = start_faulty("fdatasync", "EIO", "everysec", &port);
    redisContext *c = connect_to(port);
    expect_int(c, 1, "INSERT artists name kept1");
    arm_fault();
    /* Written and acknowledged; the background fdatasync (about once a
     * second) fails on it. */
    expect_int(c, 2, "INSERT artists name kept2");
    /* No write follows: the server must notice on its own (SPEC 4: from
     * then on INFO and the log say why). */
    char *info = NULL;
    for (int i = 0; i < 100; i++) {
        free(info);
        info = info_persistence(c);
        if (strstr(info, "readonly:1\r\n") != NULL)
            break;
        fm_test_pause_ms(50);
    }
    cr_assert_not_null(strstr(info, "readonly:1\r\n"), "%s", info);
    /* Record 1 may or may not have been synced before the fault. */
    cr_assert_not_null(strstr(info, "acknowledged records "), "%s", info);
    cr_assert_not_null(strstr(info, "..2 may be lost"), "%s", info);
    free(info);
    cr_assert(log_has("refusing writes", "..2 may be lost"),
              "the log says why, with the LSNs at stake; see %s", log_path);
    redisReply *r = cmd(c, "INSERT artists name refused");
    cr_assert_eq(r->type, REDIS_REPLY_ERROR);
    cr_assert(strncmp(r->str, "READONLY", 8) == 0, "%s", r->str);
    freeReplyObject(r);
    expect_int(c, 2, "COUNT artists");
    redisFree(c);
    kill_server(server);
}

/* Polls INFO until the server reports readonly:1 (5 s at most). */
static void wait_readonly(redisContext *c)
{
    char *info = NULL;
    for (int i = 0; i < 100; i++) {
        free(info);
        info = info_persistence(c);
        if (strstr(info, "readonly:1\r\n") != NULL)
            break;
        fm_test_pause_ms(50);
    }
    cr_assert_not_null(strstr(info, "readonly:1\r\n"), "%s", info);
    free(info);
}

/* Waits for the server to exit on its own (10 s at most). */
static void wait_exit(pid_t server)
{
    for (int i = 0; i < 500; i++) {
        int status;
        if (waitpid(server, &status, WNOHANG) == server)
            return;
        fm_test_pause_ms(20);
    }
    kill_server(server);
    cr_assert_fail("the server did not exit; see %s", log_path);
}

/* Deletes every WAL segment of dir. */
static void remove_wal(void)
{
    char command[600];
    snprintf(command, sizeof(command), "rm -f '%s'/*.wal", dir);
    cr_assert_eq(system(command), 0);
}

Test(fault, shutdown_after_a_failed_background_fsync_saves_every_acked_write)
{
    int port;
    pid_t server = start_faulty("fdatasync", "EIO", "everysec", &port);
    redisContext *c = connect_to(port);
    expect_int(c, 1, "INSERT artists name kept1");
    arm_fault();
    expect_int(c, 2, "INSERT artists name kept2");
    wait_readonly(c);
    redisReply *r = cmd(c, "INSERT artists name refused");
    cr_assert_eq(r->type, REDIS_REPLY_ERROR);
    freeReplyObject(r);
    /* Memory holds exactly the acknowledged writes; the WAL may not. */
    r = redisCommand(c, "SHUTDOWN");
    cr_assert_null(r, "SHUTDOWN answered instead of closing");
    redisFree(c);
    wait_exit(server);
    cr_assert(log_has("read-only", "writing a snapshot at lsn 2"),
              "the log says why it snapshots; see %s", log_path);
    /* What an OS crash could do to records whose fdatasync failed: here,
     * all of them. The snapshot alone must hold every acknowledged write. */
    remove_wal();
    unlink(trigger);
    const char *const args[] = {"--fsync", "everysec", NULL};
    server = fm_test_start_server(dir, log_path, args, NULL, &port);
    c = connect_to(port);
    expect_int(c, 2, "COUNT artists");
    expect_int(c, 1, "COUNT artists WHERE name = kept2");
    expect_int(c, 3, "INSERT artists name after_restart");
    redisFree(c);
    kill_server(server);
    /* Snapshot plus WAL after it: each write exactly once. */
    server = fm_test_start_server(dir, log_path, args, NULL, &port);
    c = connect_to(port);
    expect_int(c, 3, "COUNT artists");
    expect_int(c, 4, "INSERT artists name next");
    redisFree(c);
    kill_server(server);
}

/* Starts the server under the shim with the writes of snapshots held for
 * as long as the stall file exists; returns its pid. */
static pid_t start_stalling(int *port)
{
    static char env_preload[512];
    static char env_stall[400];
    static char env_asan[] =
        "ASAN_OPTIONS=verify_asan_link_order=0:detect_leaks=0";
    snprintf(env_preload, sizeof(env_preload), "LD_PRELOAD=%s", FM_FAULT_SHIM);
    snprintf(env_stall, sizeof(env_stall), "FM_FAULT_STALL=%s", stall);
    char *const env[] = {env_preload, env_stall, env_asan, NULL};
    return fm_test_start_server(dir, log_path, NULL, env, port);
}

static void hold_snapshots(void)
{
    FILE *f = fopen(stall, "w");
    cr_assert_not_null(f);
    fclose(f);
}

/* The pid of the last "background snapshot started by pid N" line of the
 * log (5 s at most). */
static pid_t snapshot_child(void)
{
    static const char key[] = "snapshot started by pid ";
    for (int i = 0; i < 250; i++) {
        FILE *f = fopen(log_path, "r");
        cr_assert_not_null(f);
        char line[1024];
        pid_t pid = 0;
        while (fgets(line, sizeof(line), f) != NULL) {
            const char *p = strstr(line, key);
            if (p != NULL)
                pid = (pid_t)atoi(p + strlen(key));
        }
        fclose(f);
        if (pid > 0)
            return pid;
        fm_test_pause_ms(20);
    }
    cr_assert_fail("no snapshot child in %s", log_path);
    return 0;
}

/* Sockets among the open files of pid (/proc/pid/fd). */
static int sockets_held(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/fd", (int)pid);
    DIR *d = opendir(path);
    cr_assert_not_null(d, "%s", path);
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        char link[600];
        char target[256];
        snprintf(link, sizeof(link), "%s/%s", path, de->d_name);
        ssize_t len = readlink(link, target, sizeof(target) - 1);
        if (len <= 0)
            continue;
        target[len] = '\0';
        n += strncmp(target, "socket:", 7) == 0;
    }
    closedir(d);
    return n;
}

/* True once pid has exited (gone, or a zombie nobody reaped yet). */
static bool has_exited(pid_t pid)
{
    char path[64];
    char buf[512];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return true;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *p = strrchr(buf, ')');
    return p != NULL && (p[2] == 'Z' || p[2] == 'X');
}

/* True when the server closes c's connection within 5 s. */
static bool sees_eof(redisContext *c)
{
    struct pollfd pfd = {c->fd, POLLIN, 0};
    char b;
    return poll(&pfd, 1, 5000) == 1 && recv(c->fd, &b, 1, 0) == 0;
}

Test(fault, snapshot_child_holds_no_socket_and_dies_with_its_server)
{
    int port;
    hold_snapshots();
    pid_t server = start_stalling(&port);
    redisContext *c = connect_to(port);
    redisContext *other = connect_to(port);
    expect_int(c, 1, "INSERT artists name kept");
    redisReply *r = cmd(c, "BGSAVE");
    cr_assert_eq(r->type, REDIS_REPLY_STATUS, "%s", r->str);
    freeReplyObject(r);
    pid_t child = snapshot_child();
    /* The listener and both clients are closed in the child at once. */
    int held = -1;
    for (int i = 0; i < 250 && (held = sockets_held(child)) != 0; i++)
        fm_test_pause_ms(20);
    cr_assert_eq(held, 0, "the snapshot child holds %d sockets", held);
    /* So a connection the server closes is closed now, not when the
     * snapshot is done. */
    r = cmd(other, "QUIT");
    freeReplyObject(r);
    cr_assert(sees_eof(other), "QUIT left the connection open");
    redisFree(other);
    /* The child dies with its server and lets go of the directory. */
    kill_server(server);
    for (int i = 0; i < 250 && !has_exited(child); i++)
        fm_test_pause_ms(20);
    cr_assert(has_exited(child), "the snapshot child outlived its server");
    redisFree(c);
    server = fm_test_start_server(dir, log_path, NULL, NULL, &port);
    c = connect_to(port);
    expect_int(c, 1, "COUNT artists");
    redisFree(c);
    kill_server(server);
}

/* Files of dir whose names end in suffix. */
static int files_ending(const char *suffix)
{
    DIR *d = opendir(dir);
    cr_assert_not_null(d);
    int n = 0;
    struct dirent *de;
    size_t s = strlen(suffix);
    while ((de = readdir(d)) != NULL) {
        size_t len = strlen(de->d_name);
        n += len > s && strcmp(de->d_name + len - s, suffix) == 0;
    }
    closedir(d);
    return n;
}

Test(fault, shutdown_nosave_stops_a_running_background_snapshot)
{
    int port;
    hold_snapshots();
    pid_t server = start_stalling(&port);
    redisContext *c = connect_to(port);
    expect_int(c, 1, "INSERT artists name kept");
    redisReply *r = cmd(c, "BGSAVE");
    cr_assert_eq(r->type, REDIS_REPLY_STATUS, "%s", r->str);
    freeReplyObject(r);
    pid_t child = snapshot_child();
    /* The child is held mid-write for as long as the test likes: the
     * server must not wait for it (Redis kills its child too). */
    r = redisCommand(c, "SHUTDOWN NOSAVE");
    cr_assert_null(r, "SHUTDOWN answered instead of closing");
    redisFree(c);
    wait_exit(server);
    cr_assert(has_exited(child), "the snapshot child is still running");
    cr_assert_eq(files_ending(".snap.tmp"), 0, "its temporary file is left");
    cr_assert_eq(files_ending(".snap"), 0, "NOSAVE wrote a snapshot");
    cr_assert(log_has("background snapshot", "abandoned"), "see %s", log_path);
    server = fm_test_start_server(dir, log_path, NULL, NULL, &port);
    c = connect_to(port);
    expect_int(c, 1, "COUNT artists");
    redisFree(c);
    kill_server(server);
}
