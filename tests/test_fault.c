/*
 * test_fault.c: the real server when its disk fails (SPEC section 4).
 *
 * fermata-server runs under tests/fault_shim.c (LD_PRELOAD), which makes
 * WAL writes or fdatasyncs fail with EIO or ENOSPC once a trigger file
 * exists. With fsync always, the write whose group failed must get
 * -READONLY, later writes too, reads must go on and INFO must say why; after
 * a SIGKILL and a restart without the fault, every acknowledged write is
 * there and the refused ones are not.
 */
#include <criterion/criterion.h>
#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "tests/server_proc.h"

#ifndef FM_FAULT_SHIM
#error "FM_FAULT_SHIM must name the fault-injection library"
#endif

static char dir[256];
static char log_path[300];
static char trigger[300];

static void setup(void)
{
    snprintf(dir, sizeof(dir), "/tmp/fm_fault_XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
    snprintf(log_path, sizeof(log_path), "%s.log", dir);
    snprintf(trigger, sizeof(trigger), "%s.trigger", dir);
}

static void teardown(void)
{
    char cmd[1000];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s' '%s' '%s'", dir, log_path, trigger);
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
