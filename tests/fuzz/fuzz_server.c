/*
 * fuzz_server.c: libFuzzer target for the whole server, from the bytes on
 * its connections to the replies it writes (SPEC section 5: no input of
 * any kind crashes the server).
 *
 * Each input gets a server of its own (fm_server_new, no data directory,
 * so that SAVE and BGSAVE are refused and nothing forks), so that state
 * left by one input (rows, CONFIG SET, AUTH) cannot make another one
 * irreproducible. The harness drives the server's event loop itself, one
 * turn at a time (fm_ae_run_once), on the fuzzer's thread: no thread, no
 * timing. Clients are Unix stream sockets accepted through the server's
 * own accept path (fm_server_accept on a listener of the harness), since
 * a byte written to a Unix socket is readable on the other end as soon as
 * send() returns, which loopback TCP does not promise; everything after
 * accept (reading, parsing, limits, dispatch, every command, MULTI, group
 * commit, writing and closing) is the code a TCP client meets.
 *
 * The input:
 *
 *   offset  size  field
 *   0       1     bit 0: requirepass "pw" at start; bit 1: small limits
 *                 (64-byte lines and bulks, 8 arguments, 1 KB query and
 *                 output buffers, 4 queued commands); bit 2: maxmemory 1
 *                 (every write refused); bits 3-4: clients, 1-4
 *   1...          the stream, sent in chunks; 0xff 0xff is one 0xff byte,
 *                 and 0xff c ends a chunk, c saying what comes next:
 *                 bits 0-1 the client that sends the next chunk; bit 2:
 *                 run the loop until it is idle first (else the next
 *                 chunk may arrive in the same read); bit 3: that client
 *                 reconnects first (a request cut by a disconnection)
 *
 * SHUTDOWN is not stripped: it stops the loop like any shutdown, and the
 * input ends there. Checks, any failure of which aborts:
 *   - every client's reply stream is well-formed RESP (hiredis' reader);
 *   - whenever the loop is idle, fm_engine_check passes and the client
 *     list holds n_clients clients;
 *   - at the end, once every client has hung up, the server has freed
 *     them all, and a new client's PING is answered +PONG (-NOAUTH when a
 *     password is set).
 *
 * With FM_FUZZ_VERBOSE set in the environment, every reply is printed.
 *
 * Not covered: the cron (its first tick is 100 ms away, longer than an
 * input lives), so idle timeouts and buffer shrinking; TCP-only paths
 * (protected mode, TCP_NODELAY); data directories (fuzz_engine's PERSIST
 * has the WAL).
 */
#include <errno.h>
#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "server/server.h"
#include "server/server_int.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

enum {
    MAX_CLIENTS = 4,
    MAX_TURNS = 10000, /* turns before the loop must be idle */
};

struct conn {
    int fd; /* -1 when closed */
    redisReader *reader;
};

struct harness {
    struct fm_server *srv;
    struct conn conns[MAX_CLIENTS];
    bool stopped; /* SHUTDOWN ran */
};

/* FM_FUZZ_VERBOSE set: every reply is printed (reproducing an input). */
static bool verbose;

/* The harness' listener, shared by every input: an abstract Unix socket. */
static int listen_fd = -1;
static struct sockaddr_un listen_addr;
static socklen_t listen_addr_len;

static void set_nonblock(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    FM_ASSERT(fl >= 0 && fcntl(fd, F_SETFL, fl | O_NONBLOCK) == 0);
}

static void open_listener(void)
{
    if (listen_fd >= 0)
        return;
    verbose = getenv("FM_FUZZ_VERBOSE") != NULL;
    memset(&listen_addr, 0, sizeof(listen_addr));
    listen_addr.sun_family = AF_UNIX;
    int n = snprintf(listen_addr.sun_path + 1, sizeof(listen_addr.sun_path) - 1,
                     "fermata-fuzz-server-%ld", (long)getpid());
    listen_addr_len =
        (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + (size_t)n);
    listen_fd = socket(AF_UNIX, SOCK_STREAM, 0);
    FM_ASSERT(listen_fd >= 0);
    FM_ASSERT(
        bind(listen_fd, (struct sockaddr *)&listen_addr, listen_addr_len) == 0);
    FM_ASSERT(listen(listen_fd, 64) == 0);
    set_nonblock(listen_fd);
}

static void set(struct fm_config *cfg, const char *name, const char *value)
{
    struct fm_error err = {0};
    fm_status st = fm_config_set_by_name(cfg, name, value, false, &err);
    FM_ASSERT(st == FM_OK);
}

static struct fm_server *start_server(uint8_t opts)
{
    struct fm_config cfg;
    struct fm_error err = {0};
    FM_ASSERT(fm_config_init(&cfg) == FM_OK);
    set(&cfg, "port", "0");
    set(&cfg, "dir", "");
    set(&cfg, "maxclients", "64");
    /* Every log line is formatted, so the messages that quote client
     * bytes are exercised too. */
    set(&cfg, "loglevel", "debug");
    set(&cfg, "logfile", "/dev/null");
    if (opts & 1)
        set(&cfg, "requirepass", "pw");
    if (opts & 2) {
        set(&cfg, "max-inline-len", "64");
        set(&cfg, "max-bulk-len", "64");
        set(&cfg, "max-args", "8");
        set(&cfg, "client-query-buffer-limit", "1024");
        set(&cfg, "client-output-buffer-limit", "1024");
        set(&cfg, "max-multi-commands", "4");
    }
    if (opts & 4)
        set(&cfg, "maxmemory", "1");
    struct fm_server *srv = NULL;
    fm_status st = fm_server_new(&cfg, &srv, &err);
    if (st != FM_OK)
        fprintf(stderr, "fm_server_new: %s\n", err.msg);
    FM_ASSERT(st == FM_OK);
    return srv;
}

/* Reads what the server sent to conn k; the reply stream must parse. */
static bool drain(struct harness *h, size_t k)
{
    struct conn *cn = &h->conns[k];
    bool got = false;
    if (cn->fd < 0)
        return false;
    for (;;) {
        char buf[16384];
        ssize_t n = recv(cn->fd, buf, sizeof(buf), MSG_DONTWAIT);
        if (n <= 0) {
            if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) {
                close(cn->fd);
                cn->fd = -1;
            }
            return got;
        }
        got = true;
        if (verbose)
            fprintf(stderr, "client %zu <- %.*s\n", k, (int)n, buf);
        FM_ASSERT(redisReaderFeed(cn->reader, buf, (size_t)n) == REDIS_OK);
        void *reply = NULL;
        do {
            if (redisReaderGetReply(cn->reader, &reply) != REDIS_OK) {
                fprintf(stderr, "malformed reply stream: %s\n",
                        cn->reader->errstr);
                abort();
            }
            if (reply != NULL)
                freeReplyObject(reply);
        } while (reply != NULL);
    }
}

static size_t count_clients(const struct fm_server *srv)
{
    size_t n = 0;
    for (const struct fm_client *c = srv->clients; c != NULL; c = c->next)
        n++;
    return n;
}

/* Runs turns until one handles nothing and no client was sent anything,
 * then checks the engine and the client list. */
static void run_until_idle(struct harness *h)
{
    for (size_t turn = 0; !h->stopped; turn++) {
        FM_ASSERT(turn < MAX_TURNS);
        size_t n_fired = 0;
        FM_ASSERT(fm_ae_run_once(h->srv->ae, 0, &n_fired) == FM_OK);
        if (h->srv->shutdown_asap)
            h->stopped = true;
        bool got = false;
        for (size_t k = 0; k < MAX_CLIENTS; k++)
            got |= drain(h, k);
        if (n_fired == 0 && !got)
            break;
    }
    struct fm_error err = {0};
    if (fm_engine_check(h->srv->engine, &err) != FM_OK) {
        fprintf(stderr, "fm_engine_check: %s\n", err.msg);
        abort();
    }
    FM_ASSERT(count_clients(h->srv) == h->srv->n_clients);
}

/* Connects conn k (closing it first if open) and has the server accept. */
static void connect_conn(struct harness *h, size_t k)
{
    struct conn *cn = &h->conns[k];
    if (cn->fd >= 0)
        close(cn->fd);
    if (cn->reader != NULL)
        redisReaderFree(cn->reader);
    cn->reader = redisReaderCreate();
    FM_ASSERT(cn->reader != NULL);
    cn->fd = socket(AF_UNIX, SOCK_STREAM, 0);
    FM_ASSERT(cn->fd >= 0);
    FM_ASSERT(
        connect(cn->fd, (struct sockaddr *)&listen_addr, listen_addr_len) == 0);
    fm_server_accept(h->srv->ae, listen_fd, h->srv, FM_AE_READABLE);
}

static void close_conn(struct conn *cn)
{
    if (cn->fd >= 0)
        close(cn->fd);
    cn->fd = -1;
    if (cn->reader != NULL)
        redisReaderFree(cn->reader);
    cn->reader = NULL;
}

/* Sends p[0, len) on conn k, running the loop whenever the socket is full
 * (the server may be closing the client: then the rest is dropped). */
static void send_chunk(struct harness *h, size_t k, const uint8_t *p,
                       size_t len)
{
    while (len > 0 && !h->stopped && h->conns[k].fd >= 0) {
        ssize_t n = send(h->conns[k].fd, p, len, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                return; /* the server closed it */
            run_until_idle(h);
            continue;
        }
        p += n;
        len -= (size_t)n;
    }
}

/* The end of an input: every client hangs up, then a new one PINGs. */
static void check_ping(struct harness *h)
{
    for (size_t k = 0; k < MAX_CLIENTS; k++)
        close_conn(&h->conns[k]);
    run_until_idle(h);
    if (h->stopped)
        return;
    FM_ASSERT(h->srv->n_clients == 0);
    connect_conn(h, 0);
    struct conn *cn = &h->conns[0];
    static const char ping[] = "*1\r\n$4\r\nPING\r\n";
    FM_ASSERT(send(cn->fd, ping, sizeof(ping) - 1, MSG_NOSIGNAL) ==
              (ssize_t)(sizeof(ping) - 1));
    const char *want = h->srv->cfg.requirepass[0] != '\0'
                           ? "-NOAUTH Authentication required.\r\n"
                           : "+PONG\r\n";
    char got[128];
    size_t n_got = 0;
    for (size_t turn = 0; turn < 100 && n_got < strlen(want); turn++) {
        size_t n_fired;
        FM_ASSERT(fm_ae_run_once(h->srv->ae, 0, &n_fired) == FM_OK);
        ssize_t n =
            recv(cn->fd, got + n_got, sizeof(got) - 1 - n_got, MSG_DONTWAIT);
        if (n > 0)
            n_got += (size_t)n;
    }
    got[n_got] = '\0';
    if (strcmp(got, want) != 0) {
        fprintf(stderr, "PING answered '%s', want '%s'\n", got, want);
        abort();
    }
    close_conn(cn);
    run_until_idle(h);
}

/* Finds the end of the chunk starting at data[i]: unescapes it into out
 * and returns the index after its terminator (0xff c, or the end). */
static size_t next_chunk(const uint8_t *data, size_t size, size_t i,
                         struct fm_buf *out, int *ctrl_out)
{
    out->len = 0;
    *ctrl_out = -1;
    while (i < size) {
        uint8_t b = data[i++];
        if (b == 0xff && i < size) {
            uint8_t c = data[i++];
            if (c != 0xff) {
                *ctrl_out = c;
                return i;
            }
        }
        FM_ASSERT(fm_buf_push(out, b) == FM_OK);
    }
    return i;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    open_listener();
    struct harness h;
    memset(&h, 0, sizeof(h));
    for (size_t k = 0; k < MAX_CLIENTS; k++)
        h.conns[k].fd = -1;
    uint8_t opts = data[0];
    size_t n_clients = 1 + ((opts >> 3) & 3);
    h.srv = start_server(opts);
    for (size_t k = 0; k < n_clients; k++)
        connect_conn(&h, k);
    struct fm_buf chunk = {0};
    size_t k = 0;
    size_t i = 1;
    while (i < size && !h.stopped) {
        int ctrl;
        i = next_chunk(data, size, i, &chunk, &ctrl);
        if (h.conns[k].fd < 0)
            connect_conn(&h, k);
        send_chunk(&h, k, chunk.data, chunk.len);
        if (ctrl < 0)
            break;
        k = (size_t)(ctrl & 3);
        if (ctrl & 4)
            run_until_idle(&h);
        if (ctrl & 8)
            connect_conn(&h, k);
    }
    run_until_idle(&h);
    check_ping(&h);
    for (size_t j = 0; j < MAX_CLIENTS; j++)
        close_conn(&h.conns[j]);
    fm_buf_fini(&chunk);
    fm_server_free(h.srv);
    return 0;
}
