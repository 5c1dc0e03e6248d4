/*
 * test_server.c: the server end to end. Each test starts a server of its
 * own on 127.0.0.1, port 0 (the kernel picks a free one), running on a
 * thread, and talks to it through hiredis and through raw sockets.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "server/server.h"
#include "wal/wal.h"

struct harness {
    struct fm_server *srv;
    pthread_t thread;
    int port;
    bool running;
};

static struct harness h;

static void *run_server(void *arg)
{
    struct harness *hh = arg;
    struct fm_error err = {0};
    fm_server_run(hh->srv, &err);
    return NULL;
}

/* A WAL I/O table for the next start_with (tests of write failures). */
static const void *next_wal_io;

/* Starts a server with the given "name", "value" pairs (NULL-terminated). */
static void start_with(const char *first, ...)
{
    struct fm_config cfg;
    struct fm_error err = {0};
    cr_assert_eq(fm_config_init(&cfg), FM_OK);
    cr_assert_eq(fm_config_set_by_name(&cfg, "port", "0", false, &err), FM_OK);
    cr_assert_eq(
        fm_config_set_by_name(&cfg, "loglevel", "warning", false, &err), FM_OK);
    /* No data directory unless a test asks for one. */
    cr_assert_eq(fm_config_set_by_name(&cfg, "dir", "", false, &err), FM_OK);
    va_list ap;
    va_start(ap, first);
    for (const char *name = first; name != NULL;
         name = va_arg(ap, const char *)) {
        const char *value = va_arg(ap, const char *);
        cr_assert_eq(fm_config_set_by_name(&cfg, name, value, false, &err),
                     FM_OK, "%s: %s", name, err.msg);
    }
    va_end(ap);
    cfg.wal_io = next_wal_io;
    next_wal_io = NULL;
    cr_assert_eq(fm_server_new(&cfg, &h.srv, &err), FM_OK, "%s", err.msg);
    h.port = fm_server_port(h.srv);
    cr_assert(h.port > 0);
    cr_assert_eq(pthread_create(&h.thread, NULL, run_server, &h), 0);
    h.running = true;
}

static void start(void)
{
    start_with(NULL);
}

static void stop(void)
{
    if (h.running) {
        fm_server_request_stop(h.srv);
        pthread_join(h.thread, NULL);
    }
    fm_server_free(h.srv);
    memset(&h, 0, sizeof(h));
}

static redisContext *connect_client(void)
{
    struct timeval tv = {10, 0};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", h.port, tv);
    cr_assert(c != NULL && c->err == 0, "connect: %s",
              c != NULL ? c->errstr : "?");
    redisSetTimeout(c, tv);
    return c;
}

static redisReply *command(redisContext *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(c, fmt, ap);
    va_end(ap);
    cr_assert(r != NULL, "no reply to %s: %s", fmt, c->errstr);
    return r;
}

static void expect_status(redisContext *c, const char *want, const char *fmt,
                          ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(c, fmt, ap);
    va_end(ap);
    cr_assert(r != NULL, "no reply to %s", fmt);
    cr_assert_eq(r->type, REDIS_REPLY_STATUS, "%s: type %d %s", fmt, r->type,
                 r->str != NULL ? r->str : "");
    cr_assert_str_eq(r->str, want);
    freeReplyObject(r);
}

/* Expects an error reply that starts with prefix. */
static void expect_error(redisContext *c, const char *prefix, const char *fmt,
                         ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(c, fmt, ap);
    va_end(ap);
    cr_assert(r != NULL, "no reply to %s", fmt);
    cr_assert_eq(r->type, REDIS_REPLY_ERROR, "%s: type %d", fmt, r->type);
    cr_assert(strncmp(r->str, prefix, strlen(prefix)) == 0,
              "%s: got '%s', want '%s...'", fmt, r->str, prefix);
    freeReplyObject(r);
}

static long long expect_int(redisContext *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(c, fmt, ap);
    va_end(ap);
    cr_assert(r != NULL, "no reply to %s", fmt);
    cr_assert_eq(r->type, REDIS_REPLY_INTEGER, "%s: type %d %s", fmt, r->type,
                 r->type == REDIS_REPLY_ERROR ? r->str : "");
    long long v = r->integer;
    freeReplyObject(r);
    return v;
}

/* ---- raw sockets ------------------------------------------------------- */

static int raw_connect_rcvbuf(int rcvbuf)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    cr_assert(fd >= 0);
    if (rcvbuf > 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
    struct sockaddr_in sin;
    memset(&sin, 0, sizeof(sin));
    sin.sin_family = AF_INET;
    sin.sin_port = htons((uint16_t)h.port);
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    cr_assert_eq(connect(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
    return fd;
}

static int raw_connect(void)
{
    return raw_connect_rcvbuf(0);
}

static void raw_send(int fd, const void *p, size_t len)
{
    const char *s = p;
    while (len > 0) {
        ssize_t n = send(fd, s, len, MSG_NOSIGNAL);
        cr_assert(n > 0, "send: %s", strerror(errno));
        s += n;
        len -= (size_t)n;
    }
}

static void raw_sends(int fd, const char *s)
{
    raw_send(fd, s, strlen(s));
}

/* Reads until want bytes arrived, EOF, or 10 s pass. */
static size_t raw_read(int fd, char *buf, size_t want)
{
    size_t got = 0;
    while (got < want) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 10000) <= 0)
            break;
        ssize_t n = recv(fd, buf + got, want - got, 0);
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    return got;
}

static void raw_expect(int fd, const char *want)
{
    size_t len = strlen(want);
    char *buf = malloc(len + 1);
    size_t got = raw_read(fd, buf, len);
    buf[got] = '\0';
    cr_assert(got == len && memcmp(buf, want, len) == 0, "got '%s' want '%s'",
              buf, want);
    free(buf);
}

/* Reads a line (up to CRLF) and checks its prefix. */
static void raw_expect_line_prefix(int fd, const char *prefix)
{
    char line[4096];
    size_t n = 0;
    while (n + 1 < sizeof(line)) {
        if (raw_read(fd, line + n, 1) != 1)
            break;
        n++;
        if (n >= 2 && line[n - 2] == '\r' && line[n - 1] == '\n')
            break;
    }
    line[n] = '\0';
    cr_assert(strncmp(line, prefix, strlen(prefix)) == 0,
              "got '%s' want '%s...'", line, prefix);
}

/* True when the server closes the connection within 10 s. */
static bool raw_is_closed(int fd)
{
    char buf[4096];
    for (;;) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 10000) <= 0)
            return false;
        ssize_t n = recv(fd, buf, sizeof(buf), 0);
        if (n == 0)
            return true;
        if (n < 0)
            return errno == ECONNRESET;
    }
}

static void expect_alive(void)
{
    redisContext *c = connect_client();
    expect_status(c, "PONG", "PING");
    redisFree(c);
}

/* ---- connection commands ----------------------------------------------- */

Test(server, ping_echo_and_quit, .init = start, .fini = stop)
{
    redisContext *c = connect_client();
    expect_status(c, "PONG", "PING");
    redisReply *r = command(c, "PING %s", "hi there");
    cr_assert_eq(r->type, REDIS_REPLY_STRING);
    cr_assert_str_eq(r->str, "hi there");
    freeReplyObject(r);
    r = command(c, "ECHO %b", "a\r\n\0b", (size_t)5);
    cr_assert_eq(r->type, REDIS_REPLY_STRING);
    cr_assert_eq(r->len, 5);
    cr_assert(memcmp(r->str, "a\r\n\0b", 5) == 0);
    freeReplyObject(r);
    expect_error(c, "ERR wrong number of arguments for 'echo'", "ECHO");
    redisFree(c);

    int fd = raw_connect();
    raw_sends(fd, "QUIT\r\n");
    raw_expect(fd, "+OK\r\n");
    cr_assert(raw_is_closed(fd));
    close(fd);
}

Test(server, inline_commands_take_quotes, .init = start, .fini = stop)
{
    int fd = raw_connect();
    raw_sends(fd, "PING\r\n");
    raw_expect(fd, "+PONG\r\n");
    raw_sends(fd, "echo \"a b\\tc\\x41\"\n");
    raw_expect(fd, "$6\r\na b\tcA\r\n");
    raw_sends(fd, "ECHO 'x \"y\"'\r\n");
    raw_expect(fd, "$5\r\nx \"y\"\r\n");
    raw_sends(fd, "\r\n\r\nPING\r\n");
    raw_expect(fd, "+PONG\r\n");
    raw_sends(fd, "ECHO \"unbalanced\r\n");
    raw_expect(fd, "-ERR Protocol error: unbalanced quotes in request\r\n");
    cr_assert(raw_is_closed(fd));
    close(fd);
    expect_alive();
}

Test(server, pipelined_requests_are_all_answered_in_order, .init = start,
     .fini = stop)
{
    int fd = raw_connect();
    size_t n = 2000;
    char *req = malloc(n * 32);
    char *want = malloc(n * 32);
    size_t rl = 0;
    size_t wl = 0;
    for (size_t i = 0; i < n; i++) {
        char num[16];
        int k = snprintf(num, sizeof(num), "%zu", i);
        if (i % 2 == 0)
            rl += (size_t)sprintf(req + rl, "*2\r\n$4\r\nECHO\r\n$%d\r\n%s\r\n",
                                  k, num);
        else
            rl += (size_t)sprintf(req + rl, "ECHO %s\r\n", num);
        wl += (size_t)sprintf(want + wl, "$%d\r\n%s\r\n", k, num);
    }
    raw_send(fd, req, rl);
    char *got = malloc(wl + 1);
    cr_assert_eq(raw_read(fd, got, wl), wl);
    cr_assert(memcmp(got, want, wl) == 0);
    free(req);
    free(want);
    free(got);
    close(fd);
}

Test(server, request_split_at_every_byte_is_answered, .init = start,
     .fini = stop)
{
    static const char req[] = "*2\r\n$4\r\nECHO\r\n$5\r\nhello\r\n";
    int fd = raw_connect();
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, 1 /* TCP_NODELAY */, &one, sizeof(one));
    for (size_t i = 0; i < sizeof(req) - 1; i++)
        raw_send(fd, req + i, 1);
    raw_expect(fd, "$5\r\nhello\r\n");
    /* Split in two at every boundary, one connection each. */
    for (size_t split = 1; split < sizeof(req) - 1; split++) {
        raw_send(fd, req, split);
        raw_send(fd, req + split, sizeof(req) - 1 - split);
        raw_expect(fd, "$5\r\nhello\r\n");
    }
    close(fd);
}

Test(server, hello_answers_resp2_and_refuses_resp3, .init = start, .fini = stop)
{
    redisContext *c = connect_client();
    redisReply *r = command(c, "HELLO");
    cr_assert_eq(r->type, REDIS_REPLY_ARRAY);
    cr_assert_eq(r->elements, 14);
    cr_assert_str_eq(r->element[0]->str, "server");
    cr_assert_str_eq(r->element[1]->str, "fermata");
    cr_assert_str_eq(r->element[4]->str, "proto");
    cr_assert_eq(r->element[5]->integer, 2);
    freeReplyObject(r);
    r = command(c, "HELLO 2 SETNAME myname");
    cr_assert_eq(r->type, REDIS_REPLY_ARRAY);
    freeReplyObject(r);
    r = command(c, "CLIENT GETNAME");
    cr_assert_str_eq(r->str, "myname");
    freeReplyObject(r);
    expect_error(c, "NOPROTO", "HELLO 3");
    expect_error(c, "ERR Protocol version", "HELLO x");
    redisFree(c);
}

Test(server, auth_guards_every_command_when_requirepass_is_set, .fini = stop)
{
    start_with("requirepass", "s3cret", NULL);
    redisContext *c = connect_client();
    expect_error(c, "NOAUTH", "PING");
    expect_error(c, "NOAUTH", "GET users 1");
    expect_error(c, "NOAUTH", "HELLO 2");
    expect_error(c, "NOAUTH", "HELP");
    expect_error(c, "NOAUTH", "CONFIG GET requirepass");
    expect_error(c, "WRONGPASS", "AUTH wrong");
    expect_error(c, "WRONGPASS", "AUTH s3cre");
    expect_error(c, "WRONGPASS", "AUTH s3cret2");
    expect_error(c, "WRONGPASS", "AUTH someone s3cret");
    expect_error(c, "NOAUTH", "PING");
    expect_status(c, "OK", "AUTH s3cret");
    expect_status(c, "PONG", "PING");
    redisFree(c);

    c = connect_client();
    expect_status(c, "OK", "AUTH default s3cret");
    expect_status(c, "PONG", "PING");
    redisFree(c);

    c = connect_client();
    redisReply *r = command(c, "HELLO 2 AUTH default s3cret");
    cr_assert_eq(r->type, REDIS_REPLY_ARRAY);
    freeReplyObject(r);
    expect_status(c, "PONG", "PING");
    redisFree(c);

    int fd = raw_connect();
    raw_sends(fd, "QUIT\r\n");
    raw_expect(fd, "+OK\r\n");
    close(fd);
}

Test(server, clearing_requirepass_lets_waiting_clients_in, .fini = stop)
{
    start_with("requirepass", "s3cret", NULL);
    redisContext *admin = connect_client();
    redisContext *c = connect_client();
    expect_status(admin, "OK", "AUTH s3cret");
    expect_error(c, "NOAUTH", "PING");
    /* With no password configured every client is authenticated, those
     * that connected while one was set included (as in Redis). */
    expect_status(admin, "OK", "CONFIG SET requirepass %s", "");
    expect_status(c, "PONG", "PING");
    redisReply *r = command(c, "HELLO 2");
    cr_assert_eq(r->type, REDIS_REPLY_ARRAY);
    freeReplyObject(r);
    expect_error(c, "ERR AUTH <password> called without", "AUTH x");
    /* A password set again applies to the client that never gave one. */
    expect_status(admin, "OK", "CONFIG SET requirepass %s", "other");
    expect_error(c, "NOAUTH", "PING");
    expect_status(admin, "PONG", "PING");
    expect_status(c, "OK", "AUTH other");
    expect_status(c, "PONG", "PING");
    redisFree(c);
    redisFree(admin);
}

Test(server, auth_without_requirepass_is_an_error, .init = start, .fini = stop)
{
    redisContext *c = connect_client();
    expect_error(c, "ERR AUTH <password> called without", "AUTH x");
    redisFree(c);
}

Test(server, select_client_and_command_are_tolerated, .init = start,
     .fini = stop)
{
    redisContext *c = connect_client();
    expect_status(c, "OK", "SELECT 0");
    expect_error(c, "ERR DB index is out of range", "SELECT 1");
    expect_status(c, "OK", "CLIENT SETNAME worker-1");
    redisReply *r = command(c, "CLIENT GETNAME");
    cr_assert_str_eq(r->str, "worker-1");
    freeReplyObject(r);
    expect_error(c, "ERR Client names cannot contain spaces",
                 "CLIENT SETNAME %s", "a b");
    expect_status(c, "OK", "CLIENT SETINFO LIB-NAME hiredis");
    cr_assert(expect_int(c, "CLIENT ID") > 0);
    r = command(c, "CLIENT LIST");
    cr_assert_eq(r->type, REDIS_REPLY_STRING);
    cr_assert(strstr(r->str, "name=worker-1") != NULL);
    cr_assert(strstr(r->str, "lib-name=hiredis") != NULL);
    freeReplyObject(r);
    long long n = expect_int(c, "COMMAND COUNT");
    cr_assert(n > 20);
    r = command(c, "COMMAND");
    cr_assert_eq(r->type, REDIS_REPLY_ARRAY);
    cr_assert_eq((long long)r->elements, n);
    cr_assert_eq(r->element[0]->elements, 10);
    freeReplyObject(r);
    r = command(c, "COMMAND DOCS");
    cr_assert_eq(r->type, REDIS_REPLY_ARRAY);
    cr_assert_eq((long long)r->elements, 2 * n);
    freeReplyObject(r);
    r = command(c, "COMMAND DOCS get nosuch");
    cr_assert_eq(r->elements, 2);
    cr_assert_str_eq(r->element[0]->str, "get");
    freeReplyObject(r);
    r = command(c, "COMMAND INFO ping nosuch");
    cr_assert_eq(r->elements, 2);
    cr_assert_eq(r->element[1]->type, REDIS_REPLY_NIL);
    freeReplyObject(r);
    r = command(c, "HELP");
    cr_assert_eq((long long)r->elements, n);
    freeReplyObject(r);
    redisFree(c);
}

Test(server, unknown_command_error_names_it_and_its_args, .init = start,
     .fini = stop)
{
    redisContext *c = connect_client();
    expect_error(c,
                 "ERR unknown command 'FROB', with args beginning with: "
                 "'a' 'b' ",
                 "FROB a b");
    redisFree(c);
}

Test(server, command_names_are_found_in_any_case_and_near_misses_are_not,
     .init = start, .fini = stop)
{
    redisContext *c = connect_client();
    redisReply *list = command(c, "COMMAND LIST");
    cr_assert_eq(list->type, REDIS_REPLY_ARRAY);
    for (size_t i = 0; i < list->elements; i++) {
        char upper[32];
        char mixed[32];
        const char *name = list->element[i]->str;
        size_t n = strlen(name);
        cr_assert_lt(n, sizeof(upper));
        for (size_t k = 0; k <= n; k++) {
            char ch = name[k];
            upper[k] = (ch >= 'a' && ch <= 'z') ? (char)(ch - 32) : ch;
            mixed[k] = k % 2 == 0 ? upper[k] : ch;
        }
        redisReply *r = command(c, "COMMAND INFO %s %s %s", name, upper, mixed);
        cr_assert_eq(r->elements, 3);
        for (size_t k = 0; k < 3; k++) {
            cr_assert_eq(r->element[k]->type, REDIS_REPLY_ARRAY, "%s (%zu)",
                         name, k);
            cr_assert_str_eq(r->element[k]->element[0]->str, name);
        }
        freeReplyObject(r);
    }
    freeReplyObject(list);
    /* A prefix, an extension, a shared first and last letter, a name one
     * letter off, and bytes that fold like letters but are not. */
    redisReply *r =
        command(c, "COMMAND INFO pin pingg pg peng GE INSERTS exek %s %b",
                "P\x09NG", "PING\0", (size_t)5);
    cr_assert_eq(r->elements, 9);
    for (size_t k = 0; k < r->elements; k++)
        cr_assert_eq(r->element[k]->type, REDIS_REPLY_NIL, "near miss %zu", k);
    freeReplyObject(r);
    expect_status(c, "PONG", "pInG");
    redisFree(c);
}

/* ---- INFO and CONFIG ----------------------------------------------------- */

static void check_info_format(const char *text)
{
    const char *p = text;
    while (*p != '\0') {
        const char *eol = strstr(p, "\r\n");
        cr_assert(eol != NULL, "line without CRLF: %s", p);
        size_t len = (size_t)(eol - p);
        if (len > 0 && p[0] != '#')
            cr_assert(memchr(p, ':', len) != NULL, "bad line: %.*s", (int)len,
                      p);
        p = eol + 2;
    }
}

Test(server, info_has_redis_style_sections, .init = start, .fini = stop)
{
    redisContext *c = connect_client();
    expect_status(c, "PONG", "PING");
    redisReply *r = command(c, "INFO");
    cr_assert_eq(r->type, REDIS_REPLY_STRING);
    static const char *const want[] = {
        "# Server\r\n",
        "# Clients\r\n",
        "# Memory\r\n",
        "# Persistence\r\n",
        "# Stats\r\n",
        "# Keyspace\r\n",
        "connected_clients:1\r\n",
        "users:rows=0,next_id=1\r\n",
        "table_users:row_bytes=",
        "instantaneous_ops_per_sec:",
        "used_memory:",
    };
    for (size_t i = 0; i < FM_ARRAY_LEN(want); i++)
        cr_assert(strstr(r->str, want[i]) != NULL, "missing %s", want[i]);
    cr_assert(strstr(r->str, "# Commandstats") == NULL);
    check_info_format(r->str);
    freeReplyObject(r);
    r = command(c, "INFO commandstats");
    cr_assert(strncmp(r->str, "# Commandstats\r\n", 16) == 0);
    cr_assert(strstr(r->str, "cmdstat_ping:calls=1,") != NULL);
    check_info_format(r->str);
    freeReplyObject(r);
    r = command(c, "INFO KEYSPACE memory");
    cr_assert(strstr(r->str, "# Keyspace") != NULL);
    cr_assert(strstr(r->str, "# Memory") != NULL);
    cr_assert(strstr(r->str, "# Server") == NULL);
    freeReplyObject(r);
    r = command(c, "INFO all");
    cr_assert(strstr(r->str, "# Commandstats") != NULL);
    check_info_format(r->str);
    freeReplyObject(r);
    redisFree(c);
}

static long long monotonic_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* The usec of a command in INFO commandstats, or -1. */
static long long cmdstat_usec(redisContext *c, const char *name)
{
    char key[64];
    snprintf(key, sizeof(key), "cmdstat_%s:", name);
    redisReply *r = command(c, "INFO commandstats");
    const char *p = strstr(r->str, key);
    const char *u = p != NULL ? strstr(p, "usec=") : NULL;
    long long usec = u != NULL ? atoll(u + 5) : -1;
    freeReplyObject(r);
    return usec;
}

Test(server, commandstats_time_falls_within_the_time_the_commands_took,
     .init = start, .fini = stop)
{
    redisContext *c = connect_client();
    expect_status(c, "PONG", "PING");
    cr_assert_geq(cmdstat_usec(c, "ping"), 0);
    expect_status(c, "OK", "CONFIG RESETSTAT");
    /* An idle gap before the batch must not count: a pause, not a wait for
     * an event, since the idle time itself is what is tested. */
    struct timespec gap = {0, 50 * 1000 * 1000};
    nanosleep(&gap, NULL);
    long long t0 = monotonic_us();
    for (int i = 0; i < 100; i++)
        redisAppendCommand(c, "PING");
    for (int i = 0; i < 100; i++) {
        redisReply *r = NULL;
        cr_assert_eq(redisGetReply(c, (void **)&r), REDIS_OK);
        freeReplyObject(r);
    }
    long long elapsed = monotonic_us() - t0;
    long long usec = cmdstat_usec(c, "ping");
    cr_assert(usec >= 0 && usec <= elapsed, "usec=%lld, elapsed %lld us", usec,
              elapsed);
    redisFree(c);
}

static void expect_config(redisContext *c, const char *name, const char *want)
{
    redisReply *r = command(c, "CONFIG GET %s", name);
    cr_assert_eq(r->type, REDIS_REPLY_ARRAY);
    cr_assert_eq(r->elements, 2, "CONFIG GET %s: %zu elements", name,
                 r->elements);
    cr_assert_str_eq(r->element[0]->str, name);
    cr_assert_str_eq(r->element[1]->str, want, "%s", name);
    freeReplyObject(r);
}

Test(server, config_get_and_set, .init = start, .fini = stop)
{
    redisContext *c = connect_client();
    char port[16];
    snprintf(port, sizeof(port), "%d", h.port);
    expect_config(c, "port", port);
    expect_config(c, "bind", "127.0.0.1");
    expect_config(c, "save", "");
    expect_config(c, "appendonly", "no");
    expect_config(c, "fsync", "everysec");
    expect_status(c, "OK", "CONFIG SET max-args 100");
    expect_config(c, "max-args", "100");
    expect_status(c, "OK", "CONFIG SET maxmemory 1mb");
    expect_config(c, "maxmemory", "1048576");
    expect_status(c, "OK", "CONFIG SET maxmemory 0 loglevel warning");
    expect_error(c,
                 "ERR CONFIG SET failed (possibly related to argument "
                 "'port')",
                 "CONFIG SET port 1234");
    expect_error(c,
                 "ERR CONFIG SET failed (possibly related to argument "
                 "'max-args')",
                 "CONFIG SET max-args lots");
    expect_error(c, "ERR CONFIG SET failed", "CONFIG SET fsync sometimes");
    expect_error(c, "ERR Unknown option", "CONFIG SET nosuch 1");
    expect_error(c, "ERR CONFIG SET failed", "CONFIG SET appendonly yes");
    /* All or nothing: the first pair is undone when the second fails. */
    expect_error(c, "ERR", "CONFIG SET max-args 200 max-bulk-len x");
    expect_config(c, "max-args", "100");
    redisReply *r = command(c, "CONFIG GET max-*");
    cr_assert_eq(r->elements, 8);
    freeReplyObject(r);
    r = command(c, "CONFIG GET *");
    cr_assert(r->elements > 40);
    freeReplyObject(r);
    r = command(c, "CONFIG GET nomatch*");
    cr_assert_eq(r->elements, 0);
    freeReplyObject(r);
    expect_status(c, "OK", "CONFIG RESETSTAT");
    redisFree(c);
}

Test(server, config_parsing_of_flags_and_files)
{
    struct fm_config cfg;
    struct fm_error err = {0};
    cr_assert_eq(fm_config_init(&cfg), FM_OK);
    char path[] = "/tmp/fermata-conf-XXXXXX";
    int fd = mkstemp(path);
    cr_assert(fd >= 0);
    static const char text[] = "# a comment\n"
                               "port 7000\n"
                               "  maxmemory 2mb\n"
                               "requirepass \"a b\\\"c\"\n"
                               "\n"
                               "force-recovery yes\n";
    cr_assert_eq(write(fd, text, sizeof(text) - 1),
                 (ssize_t)(sizeof(text) - 1));
    close(fd);
    char *argv[] = {"fermata-server", "--maxclients", "7", "--config", path,
                    "--port",         "7001",         NULL};
    cr_assert_eq(fm_config_parse_args(&cfg, 7, argv, &err), FM_OK, "%s",
                 err.msg);
    cr_assert_eq(cfg.port, 7001); /* flags override the file */
    cr_assert_eq(cfg.maxmemory, 2 * 1024 * 1024);
    cr_assert_eq(cfg.maxclients, 7);
    cr_assert_str_eq(cfg.requirepass, "a b\"c");
    cr_assert(cfg.force_recovery);
    char *bad[] = {"fermata-server", "--port", "70000", NULL};
    cr_assert_eq(fm_config_parse_args(&cfg, 3, bad, &err), FM_ERR_SYNTAX);
    cr_assert(strstr(err.msg, "port") != NULL);
    char *unknown[] = {"fermata-server", "--nosuch", "1", NULL};
    cr_assert_eq(fm_config_parse_args(&cfg, 3, unknown, &err), FM_ERR_NOTFOUND);
    FILE *f = fopen(path, "w");
    fputs("port 1\nbogus line here\n", f);
    fclose(f);
    cr_assert_eq(fm_config_load_file(&cfg, path, &err), FM_ERR_SYNTAX);
    cr_assert(strstr(err.msg, ":2:") != NULL, "%s", err.msg);
    unlink(path);
    fm_config_fini(&cfg);
    /* Every parameter reads back as it was set from its own text. */
    cr_assert_eq(fm_config_init(&cfg), FM_OK);
    for (size_t i = 0; i < fm_config_count(); i++) {
        struct fm_buf a = {0};
        struct fm_buf b = {0};
        cr_assert_eq(fm_config_format(&cfg, i, &a), FM_OK);
        cr_assert_eq(fm_buf_push(&a, 0), FM_OK);
        fm_status st =
            fm_config_set(&cfg, i, (const char *)a.data, false, &err);
        cr_assert(st == FM_OK || st == FM_ERR_STATE, "%s: %s",
                  fm_config_name(i), err.msg);
        cr_assert_eq(fm_config_format(&cfg, i, &b), FM_OK);
        cr_assert_eq(fm_buf_push(&b, 0), FM_OK);
        cr_assert_str_eq((const char *)a.data, (const char *)b.data);
        fm_buf_fini(&a);
        fm_buf_fini(&b);
    }
    fm_config_fini(&cfg);
    cr_assert(fm_config_glob_match("max-*", 5, "max-args", 8));
    cr_assert(fm_config_glob_match("*LEN", 4, "max-bulk-len", 12));
    cr_assert(fm_config_glob_match("p?r[st]", 7, "port", 4));
    cr_assert(!fm_config_glob_match("p?r[^t]", 7, "port", 4));
}

/* A name is compared whole: one whose bytes end in a NUL and more must not
 * pass for the parameter named by the bytes before the NUL. */
Test(server, config_file_name_with_a_nul_byte_is_unknown)
{
    struct fm_config cfg;
    struct fm_error err = {0};
    cr_assert_eq(fm_config_init(&cfg), FM_OK);
    char path[] = "/tmp/fermata-conf-XXXXXX";
    int fd = mkstemp(path);
    cr_assert(fd >= 0);
    static const char text[] = "port\0zz 7000\n";
    cr_assert_eq(write(fd, text, sizeof(text) - 1),
                 (ssize_t)(sizeof(text) - 1));
    close(fd);
    fm_status st = fm_config_load_file(&cfg, path, &err);
    unlink(path);
    cr_assert_neq(st, FM_OK, "loaded as port %lld", (long long)cfg.port);
    cr_assert_eq(cfg.port, 7878);
    fm_config_fini(&cfg);
}

/* ---- MULTI / EXEC ------------------------------------------------------- */

Test(server, multi_exec_runs_all_queued_commands, .init = start, .fini = stop)
{
    redisContext *c = connect_client();
    expect_status(c, "OK", "MULTI");
    expect_error(c, "ERR MULTI calls can not be nested", "MULTI");
    expect_status(c, "QUEUED", "INSERT artists name a");
    expect_status(c, "QUEUED", "INSERT artists name b");
    redisReply *r = command(c, "EXEC");
    cr_assert_eq(r->type, REDIS_REPLY_ARRAY);
    cr_assert_eq(r->elements, 2);
    cr_assert_eq(r->element[0]->type, REDIS_REPLY_INTEGER);
    cr_assert_eq(r->element[1]->integer, r->element[0]->integer + 1);
    freeReplyObject(r);
    cr_assert_eq(expect_int(c, "COUNT artists"), 2);
    expect_error(c, "ERR EXEC without MULTI", "EXEC");
    expect_error(c, "ERR DISCARD without MULTI", "DISCARD");
    expect_status(c, "OK", "MULTI");
    expect_status(c, "QUEUED", "INSERT artists name c");
    expect_status(c, "OK", "DISCARD");
    cr_assert_eq(expect_int(c, "COUNT artists"), 2);
    expect_status(c, "OK", "MULTI");
    r = command(c, "EXEC");
    cr_assert_eq(r->type, REDIS_REPLY_ARRAY);
    cr_assert_eq(r->elements, 0);
    freeReplyObject(r);
    redisFree(c);
}

Test(server, multi_with_a_queuing_error_is_aborted, .init = start, .fini = stop)
{
    redisContext *c = connect_client();
    expect_status(c, "OK", "MULTI");
    expect_status(c, "QUEUED", "INSERT artists name a");
    expect_error(c, "ERR unknown command", "FROB");
    expect_error(c, "ERR wrong number of arguments", "GET artists");
    expect_error(c, "ERR 'ping' cannot be queued", "PING");
    expect_error(c, "EXECABORT", "EXEC");
    cr_assert_eq(expect_int(c, "COUNT artists"), 0);
    redisFree(c);
}

Test(server, multi_with_a_failing_command_applies_nothing, .init = start,
     .fini = stop)
{
    redisContext *c = connect_client();
    expect_status(c, "OK", "MULTI");
    expect_status(c, "QUEUED", "INSERT artists name a");
    expect_status(c, "QUEUED", "INSERT tracks title t song_url u album_id 99");
    expect_status(c, "QUEUED", "INSERT artists name b");
    expect_error(c, "EXECABORT", "EXEC");
    cr_assert_eq(expect_int(c, "COUNT artists"), 0);
    cr_assert_eq(expect_int(c, "DBSIZE"), 0);
    redisFree(c);
}

/* ---- data commands ------------------------------------------------------ */

Test(server, data_commands_have_their_reply_shapes, .init = start, .fini = stop)
{
    redisContext *c = connect_client();
    long long id = expect_int(c, "INSERT artists name %s", "Nina Simone");
    cr_assert(id >= 1);
    redisReply *r = command(c, "GET artists %lld", id);
    cr_assert_eq(r->type, REDIS_REPLY_ARRAY);
    cr_assert_eq(r->elements % 2, 0);
    cr_assert_str_eq(r->element[0]->str, "id");
    cr_assert_eq(r->element[1]->type, REDIS_REPLY_INTEGER);
    cr_assert_eq(r->element[1]->integer, id);
    cr_assert_str_eq(r->element[2]->str, "name");
    cr_assert_str_eq(r->element[3]->str, "Nina Simone");
    freeReplyObject(r);
    r = command(c, "GET artists 999");
    cr_assert_eq(r->type, REDIS_REPLY_NIL);
    freeReplyObject(r);
    r = command(c, "FIND artists WHERE name = %s", "Nina Simone");
    cr_assert_eq(r->type, REDIS_REPLY_ARRAY);
    cr_assert_eq(r->elements, 1);
    cr_assert_eq(r->element[0]->type, REDIS_REPLY_ARRAY);
    freeReplyObject(r);
    cr_assert_eq(expect_int(c, "COUNT artists"), 1);
    cr_assert_eq(expect_int(c, "DBSIZE"), 1);
    cr_assert_eq(expect_int(c, "UPDATE artists %lld name x", id), 1);
    cr_assert_eq(expect_int(c, "DELETE artists %lld", id), 1);
    r = command(c, "TABLES");
    cr_assert_eq(r->type, REDIS_REPLY_ARRAY);
    cr_assert_eq(r->elements, 10);
    freeReplyObject(r);
    expect_error(c, "ERR", "GET nosuchtable 1");
    expect_error(c, "ERR", "INSERT artists nosuchcol 1");
    expect_int(c, "INSERT users username u email e password_digest p "
                  "session_token s");
    expect_error(c, "UNIQUE",
                 "INSERT users username u email e2 "
                 "password_digest p session_token s");
    expect_error(c, "FOREIGNKEY",
                 "INSERT tracks title t song_url u album_id 42");
    redisFree(c);
}

Test(server, maxmemory_refuses_writes_and_serves_reads, .init = start,
     .fini = stop)
{
    redisContext *c = connect_client();
    long long id = expect_int(c, "INSERT artists name a");
    expect_status(c, "OK", "CONFIG SET maxmemory 1");
    expect_error(c, "OOM command not allowed", "INSERT artists name b");
    redisReply *r = command(c, "GET artists %lld", id);
    cr_assert_eq(r->type, REDIS_REPLY_ARRAY);
    freeReplyObject(r);
    cr_assert_eq(expect_int(c, "COUNT artists"), 1);
    cr_assert_eq(expect_int(c, "DELETE artists 999"), 0);
    expect_status(c, "OK", "MULTI");
    expect_error(c, "OOM", "INSERT artists name c");
    expect_error(c, "EXECABORT", "EXEC");
    expect_status(c, "OK", "CONFIG SET maxmemory 0");
    expect_int(c, "INSERT artists name b");
    redisFree(c);
}

/* ---- limits and bad input ----------------------------------------------- */

Test(server, huge_bulk_length_is_refused_with_limit, .init = start,
     .fini = stop)
{
    int fd = raw_connect();
    raw_sends(fd, "*2\r\n$4\r\nECHO\r\n$99999999999\r\n");
    raw_expect_line_prefix(fd, "-LIMIT bulk argument of 99999999999 bytes");
    cr_assert(raw_is_closed(fd));
    close(fd);
    fd = raw_connect();
    raw_sends(fd, "*2\r\n$4\r\nECHO\r\n$-7\r\n");
    raw_expect_line_prefix(fd, "-ERR Protocol error: invalid bulk length");
    cr_assert(raw_is_closed(fd));
    close(fd);
    expect_alive();
}

Test(server, thousands_of_arguments_are_handled_or_refused, .init = start,
     .fini = stop)
{
    /* Under max-args: an ordinary (arity) error. */
    size_t n = 3000;
    char *req = malloc(n * 16 + 32);
    size_t len = (size_t)sprintf(req, "*%zu\r\n$4\r\nPING\r\n", n);
    for (size_t i = 1; i < n; i++)
        len += (size_t)sprintf(req + len, "$1\r\nx\r\n");
    int fd = raw_connect();
    raw_send(fd, req, len);
    raw_expect_line_prefix(fd, "-ERR wrong number of arguments for 'ping'");
    /* Over max-args: -LIMIT and the connection closes. */
    raw_sends(fd, "*100000\r\n");
    raw_expect_line_prefix(fd, "-LIMIT too many arguments");
    cr_assert(raw_is_closed(fd));
    close(fd);
    free(req);
    expect_alive();
}

Test(server, over_long_inline_line_is_refused, .init = start, .fini = stop)
{
    redisContext *c = connect_client();
    expect_status(c, "OK", "CONFIG SET max-inline-len 1024");
    int fd = raw_connect();
    char line[4096];
    memset(line, 'a', sizeof(line));
    raw_send(fd, line, sizeof(line));
    raw_expect_line_prefix(fd, "-LIMIT inline request over max-inline-len");
    cr_assert(raw_is_closed(fd));
    close(fd);
    expect_status(c, "PONG", "PING");
    redisFree(c);
}

Test(server, query_buffer_limit_closes_the_connection, .init = start,
     .fini = stop)
{
    redisContext *c = connect_client();
    expect_status(c, "OK", "CONFIG SET client-query-buffer-limit 4096");
    int fd = raw_connect();
    raw_sends(fd, "*2\r\n$4\r\nECHO\r\n$100000\r\n");
    char chunk[8192];
    memset(chunk, 'z', sizeof(chunk));
    send(fd, chunk, sizeof(chunk), MSG_NOSIGNAL);
    raw_expect_line_prefix(fd, "-LIMIT query buffer of");
    cr_assert(raw_is_closed(fd));
    close(fd);
    expect_status(c, "PONG", "PING");
    redisFree(c);
}

Test(server, client_that_never_reads_is_disconnected, .init = start,
     .fini = stop)
{
    redisContext *c = connect_client();
    expect_status(c, "OK", "CONFIG SET client-output-buffer-limit 256kb");
    int fd = raw_connect_rcvbuf(4096);
    /* ECHO of 32 KiB, pipelined, never reading the replies. */
    size_t arg = 32 * 1024;
    char *req = malloc(arg + 64);
    size_t len = (size_t)sprintf(req, "*2\r\n$4\r\nECHO\r\n$%zu\r\n", arg);
    memset(req + len, 'q', arg);
    len += arg;
    memcpy(req + len, "\r\n", 2);
    len += 2;
    bool closed = false;
    for (int i = 0; i < 4096 && !closed; i++) {
        size_t off = 0;
        while (off < len) {
            struct pollfd p = {.fd = fd, .events = POLLOUT};
            if (poll(&p, 1, 10000) <= 0)
                break;
            ssize_t n =
                send(fd, req + off, len - off, MSG_NOSIGNAL | MSG_DONTWAIT);
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
                continue;
            if (n <= 0) {
                closed = true;
                break;
            }
            off += (size_t)n;
        }
        /* Meanwhile, another client is served. */
        if (i % 64 == 0)
            expect_status(c, "PONG", "PING");
    }
    cr_assert(closed, "the server kept a client that never reads");
    free(req);
    close(fd);
    redisReply *r = command(c, "INFO stats");
    cr_assert(strstr(r->str, "client_output_buffer_limit_disconnections:1") !=
              NULL);
    freeReplyObject(r);
    expect_status(c, "PONG", "PING");
    redisFree(c);
}

/* A field of /proc/self/status in kB ("VmHWM:"), or -1. */
static long proc_status_kb(const char *field)
{
    FILE *f = fopen("/proc/self/status", "r");
    if (f == NULL)
        return -1;
    char line[256];
    long kb = -1;
    while (fgets(line, sizeof(line), f) != NULL) {
        if (strncmp(line, field, strlen(field)) == 0)
            kb = strtol(line + strlen(field), NULL, 10);
    }
    fclose(f);
    return kb;
}

/* Resets the peak RSS (VmHWM) to the current RSS; false if the kernel
 * does not let us. */
static bool reset_peak_rss(void)
{
    FILE *f = fopen("/proc/self/clear_refs", "w");
    if (f == NULL)
        return false;
    bool ok = fputs("5", f) >= 0;
    return fclose(f) == 0 && ok;
}

/* Sends cmd (inline) on a new connection, which must be closed without a
 * row of the reply (MULTI's +OK may come); returns how much the process's
 * peak RSS rose meanwhile, in kB, or -1 when it cannot be measured. */
static long closed_unanswered(const char *cmd)
{
    bool measured = reset_peak_rss();
    long rss_kb = proc_status_kb("VmRSS:");
    int fd = raw_connect();
    raw_sends(fd, cmd);
    static char buf[1 << 16];
    size_t got = raw_read(fd, buf, sizeof(buf) - 1);
    buf[got] = '\0';
    cr_assert_lt(got, sizeof(buf) - 1, "%s was answered", cmd);
    cr_assert_null(strstr(buf, "a0000"), "%s was answered", cmd);
    cr_assert(raw_is_closed(fd), "%s: the connection stayed open", cmd);
    close(fd);
    return measured ? proc_status_kb("VmHWM:") - rss_kb : -1;
}

/*
 * 40,000 rows of 1 KB make a FIND reply of 42 MB. With a 1 MB output limit
 * the client is closed as before, but the reply is never built past what
 * the limit leaves: the server (this process) must not grow by anything
 * like the result, where building it in full took the reply, its copy in
 * the output buffer and their growth, about 90 MB. The same holds for a
 * sorted FIND and for an EXEC of FINDs, whose writes are applied.
 */
Test(server, a_find_over_the_output_limit_is_never_built_in_full, .init = start,
     .fini = stop)
{
    redisContext *c = connect_client();
    expect_status(c, "OK", "CONFIG SET client-output-buffer-limit 1mb");
    char name[1024];
    size_t n = 40000;
    for (size_t i = 0; i < n; i++) {
        int len = snprintf(name, sizeof(name), "a%06zu", i);
        memset(name + len, 'r', sizeof(name) - (size_t)len);
        redisAppendCommand(c, "INSERT artists name %b", name, sizeof(name));
    }
    for (size_t i = 0; i < n; i++) {
        redisReply *r = NULL;
        cr_assert_eq(redisGetReply(c, (void **)&r), REDIS_OK);
        cr_assert_eq(r->type, REDIS_REPLY_INTEGER);
        freeReplyObject(r);
    }
    long result_kb = (long)(n * sizeof(name) / 1024);
    static const char *const cmds[] = {
        "FIND artists\r\n",
        "FIND artists ORDER BY name DESC\r\n",
        ("MULTI\r\nINSERT artists name one\r\nFIND artists\r\n"
         "INSERT artists name two\r\nEXEC\r\n"),
    };
    for (size_t i = 0; i < FM_ARRAY_LEN(cmds); i++) {
        long grew_kb = closed_unanswered(cmds[i]);
        cr_log_info("peak RSS rose by %ld kB for a result of %ld kB", grew_kb,
                    result_kb);
        if (grew_kb >= 0)
            cr_assert_lt(grew_kb, result_kb / 4,
                         "%s: peak RSS rose by %ld kB for a result of %ld kB",
                         cmds[i], grew_kb, result_kb);
        else
            cr_log_warn("the peak RSS cannot be reset here: not measured");
        /* Other clients are served, and the data is as it was, but for
         * the writes of the EXEC, which were applied whole. */
        expect_status(c, "PONG", "PING");
        cr_assert_eq(expect_int(c, "COUNT artists"),
                     (long long)n + (long long)(i / 2) * 2);
        redisReply *r = command(c, "FIND artists LIMIT 2");
        cr_assert_eq(r->type, REDIS_REPLY_ARRAY);
        cr_assert_eq(r->elements, 2);
        freeReplyObject(r);
    }
    redisReply *r = command(c, "INFO stats");
    cr_assert(strstr(r->str, "client_output_buffer_limit_disconnections:3") !=
                  NULL,
              "%s", r->str);
    freeReplyObject(r);
    r = command(c, "INFO memory");
    long long used = 0;
    const char *p = strstr(r->str, "used_memory:");
    cr_assert(p != NULL && sscanf(p, "used_memory:%lld", &used) == 1);
    freeReplyObject(r);
    /* Rows and indexes, and the clients' buffers, and no trace of a
     * 42 MB reply. */
    cr_assert_lt(used, (long long)n * 1200, "used_memory %lld", used);
    redisFree(c);
}

Test(server, garbage_and_truncated_requests_never_stop_the_server,
     .init = start, .fini = stop)
{
    srand(7);
    for (int round = 0; round < 100; round++) {
        int fd = raw_connect();
        char buf[512];
        size_t len = (size_t)(rand() % (int)sizeof(buf)) + 1;
        for (size_t i = 0; i < len; i++)
            buf[i] =
                (char)(round % 2 == 0 ? rand() : "*$\r\n1-9 \"'"[rand() % 10]);
        send(fd, buf, len, MSG_NOSIGNAL);
        close(fd);
    }
    int fd = raw_connect();
    raw_sends(fd, "*3\r\n$3\r\nGET\r\n$6\r\nartists\r\n$1");
    close(fd);
    fd = raw_connect();
    raw_sends(fd, "*1\r\n$4\r\nPINGxx");
    raw_expect_line_prefix(fd, "-ERR Protocol error");
    cr_assert(raw_is_closed(fd));
    close(fd);
    expect_alive();
}

Test(server, maxclients_refuses_extra_connections, .fini = stop)
{
    start_with("maxclients", "2", NULL);
    redisContext *a = connect_client();
    redisContext *b = connect_client();
    expect_status(a, "PONG", "PING");
    expect_status(b, "PONG", "PING");
    int fd = raw_connect();
    raw_expect(fd, "-ERR max number of clients reached\r\n");
    cr_assert(raw_is_closed(fd));
    close(fd);
    redisFree(a);
    /* A slot frees up once a client leaves. */
    bool ok = false;
    for (int i = 0; i < 200 && !ok; i++) {
        redisContext *c = connect_client();
        redisReply *r = redisCommand(c, "PING");
        ok = r != NULL && r->type == REDIS_REPLY_STATUS;
        if (r != NULL)
            freeReplyObject(r);
        redisFree(c);
        if (!ok)
            poll(NULL, 0, 10);
    }
    cr_assert(ok);
    redisFree(b);
}

Test(server, idle_clients_are_closed_after_timeout, .init = start, .fini = stop)
{
    redisContext *c = connect_client();
    expect_status(c, "OK", "CONFIG SET timeout 1");
    int fd = raw_connect();
    int64_t t0 = fm_monotonic_us();
    cr_assert(raw_is_closed(fd));
    cr_assert(fm_monotonic_us() - t0 >= 900 * 1000);
    close(fd);
    redisFree(c);
}

Test(server, shutdown_stops_the_server, .init = start, .fini = stop)
{
    redisContext *c = connect_client();
    expect_error(c, "ERR syntax error", "SHUTDOWN BOGUS");
    redisReply *r = redisCommand(c, "SHUTDOWN NOSAVE");
    cr_assert_null(r, "SHUTDOWN answered instead of closing");
    redisFree(c);
    pthread_join(h.thread, NULL);
    h.running = false;
}

/* ---- durability --------------------------------------------------------- */

static char data_dir[64];

static void make_data_dir(void)
{
    strcpy(data_dir, "/tmp/fermata-srv-XXXXXX");
    cr_assert(mkdtemp(data_dir) != NULL);
}

static void remove_data_dir(void)
{
    stop();
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", data_dir);
    cr_assert_eq(system(cmd), 0);
}

Test(server, writes_survive_a_restart_and_snapshots_work, .init = make_data_dir,
     .fini = remove_data_dir)
{
    start_with("dir", data_dir, "fsync", "always", NULL);
    redisContext *c = connect_client();
    long long id = expect_int(c, "INSERT artists name %s", "kept");
    cr_assert_eq(expect_int(c, "LASTSAVE"), 0);
    expect_status(c, "OK", "SAVE");
    cr_assert(expect_int(c, "LASTSAVE") > 0);
    expect_int(c, "INSERT artists name %s", "after-snapshot");
    redisReply *r = command(c, "INFO persistence");
    cr_assert(strstr(r->str, "wal_enabled:1\r\n") != NULL, "%s", r->str);
    cr_assert(strstr(r->str, "fsync:always\r\n") != NULL);
    cr_assert(strstr(r->str, "last_snapshot_status:ok\r\n") != NULL);
    cr_assert(strstr(r->str, "last_snapshot_error:\r\n") != NULL);
    cr_assert(strstr(r->str, "snapshot_failures_in_a_row:0\r\n") != NULL);
    cr_assert(strstr(r->str, "rdb_last_bgsave_status:ok\r\n") != NULL);
    /* Two inserts under always: at least two fdatasyncs, and none of them
     * forced by a lagging background fsync (there is none under always). */
    const char *f = strstr(r->str, "wal_fsyncs:");
    cr_assert(f != NULL && atoll(f + strlen("wal_fsyncs:")) >= 2, "%s", r->str);
    cr_assert(strstr(r->str, "wal_lag_syncs:0\r\n") != NULL, "%s", r->str);
    freeReplyObject(r);
    r = command(c, "BGSAVE");
    cr_assert(r->type == REDIS_REPLY_STATUS ||
                  (r->type == REDIS_REPLY_ERROR && strstr(r->str, "running")),
              "%s", r->str);
    freeReplyObject(r);
    expect_status(c, "OK", "CONFIG SET fsync everysec");
    expect_config(c, "fsync", "everysec");
    r = redisCommand(c, "SHUTDOWN");
    cr_assert_null(r);
    redisFree(c);
    pthread_join(h.thread, NULL);
    h.running = false;
    fm_server_free(h.srv);
    memset(&h, 0, sizeof(h));

    start_with("dir", data_dir, NULL);
    c = connect_client();
    r = command(c, "GET artists %lld", id);
    cr_assert_eq(r->type, REDIS_REPLY_ARRAY);
    cr_assert_str_eq(r->element[3]->str, "kept");
    freeReplyObject(r);
    cr_assert_eq(expect_int(c, "COUNT artists"), 2);
    redisFree(c);
}

Test(server, a_second_server_on_the_same_dir_refuses_to_start,
     .init = make_data_dir, .fini = remove_data_dir)
{
    start_with("dir", data_dir, NULL);
    struct fm_config cfg;
    struct fm_error err = {0};
    struct fm_server *other = NULL;
    cr_assert_eq(fm_config_init(&cfg), FM_OK);
    fm_config_set_by_name(&cfg, "port", "0", false, &err);
    fm_config_set_by_name(&cfg, "dir", data_dir, false, &err);
    cr_assert_neq(fm_server_new(&cfg, &other, &err), FM_OK);
    cr_assert(err.msg[0] != '\0');
    fm_config_fini(&cfg);
}

/* WAL system calls that start failing (EIO) once fail_writes is set. */
static volatile bool fail_writes;

static int io_open(void *ctx, const char *path, int flags, int mode)
{
    (void)ctx;
    return open(path, flags, mode);
}

static ssize_t io_pwrite(void *ctx, int fd, const void *buf, size_t len,
                         off_t off)
{
    (void)ctx;
    if (fail_writes) {
        errno = EIO;
        return -1;
    }
    return pwrite(fd, buf, len, off);
}

static int io_fdatasync(void *ctx, int fd)
{
    (void)ctx;
    if (fail_writes) {
        errno = EIO;
        return -1;
    }
    return fdatasync(fd);
}

static int io_fsync(void *ctx, int fd)
{
    (void)ctx;
    return fsync(fd);
}

static int io_ftruncate(void *ctx, int fd, off_t len)
{
    (void)ctx;
    return ftruncate(fd, len);
}

static int io_rename(void *ctx, const char *from, const char *to)
{
    (void)ctx;
    return rename(from, to);
}

static int io_unlink(void *ctx, const char *path)
{
    (void)ctx;
    return unlink(path);
}

static int io_close(void *ctx, int fd)
{
    (void)ctx;
    return close(fd);
}

static const struct fm_wal_io failing_io = {
    NULL,         io_open,   io_pwrite, io_fdatasync, io_fsync,
    io_ftruncate, io_rename, io_unlink, io_close,
};

Test(server, failed_wal_write_answers_readonly_and_reads_go_on,
     .init = make_data_dir, .fini = remove_data_dir)
{
    fail_writes = false;
    next_wal_io = &failing_io;
    start_with("dir", data_dir, "fsync", "always", NULL);
    redisContext *c = connect_client();
    long long id = expect_int(c, "INSERT artists name %s", "durable");
    fail_writes = true;
    /* A pipeline: the write, a read that saw it, another write. All three
     * replies come back -READONLY: the write was rolled back. */
    redisAppendCommand(c, "INSERT artists name %s", "lost");
    redisAppendCommand(c, "COUNT artists");
    redisAppendCommand(c, "INSERT artists name %s", "lost too");
    for (int i = 0; i < 3; i++) {
        redisReply *r = NULL;
        cr_assert_eq(redisGetReply(c, (void **)&r), REDIS_OK);
        cr_assert_eq(r->type, REDIS_REPLY_ERROR, "reply %d type %d", i,
                     r->type);
        cr_assert(strncmp(r->str, "READONLY", 8) == 0, "%s", r->str);
        freeReplyObject(r);
    }
    expect_error(c, "READONLY", "INSERT artists name %s", "refused");
    cr_assert_eq(expect_int(c, "COUNT artists"), 1);
    redisReply *r = command(c, "GET artists %lld", id);
    cr_assert_eq(r->type, REDIS_REPLY_ARRAY);
    freeReplyObject(r);
    r = command(c, "INFO persistence");
    cr_assert(strstr(r->str, "readonly:1\r\n") != NULL, "%s", r->str);
    freeReplyObject(r);
    redisFree(c);
    fail_writes = false;
}
