/*
 * network.c: connections, reading requests and writing replies.
 *
 * A client (struct fm_client) is created per accepted connection and lives
 * on the server's list of clients. Its state:
 *
 *   in      the bytes of a partial request, starting at its first byte, or
 *           nothing. Most reads bring whole requests: they are read into
 *           the server's shared buffer (srv->shared_in), parsed and executed
 *           from there, and only the unfinished tail, if any, is copied into
 *           the client's own buffer. A client that is idle, or that sends
 *           whole requests, owns no input buffer at all.
 *   parser  where the partial request stands (resp.h), so that the next
 *           read resumes parsing where the last one stopped.
 *   out     encoded replies: out[0, out_sent) is written, out[out_sent,
 *           out_ready) may be written, out[out_ready, len) waits for the
 *           next group commit (see server.c, before_sleep).
 *
 * Pipelining. One read may bring many requests; all complete ones are
 * executed in order and their replies appended to out. Nothing is written
 * during the read: the client goes on the server's pending list, and after
 * the WAL flush fm_server_flush_clients writes each pending client's output
 * with as few write() calls as the socket accepts. Only when the socket
 * would block is the client watched for writability, and the watch is
 * dropped as soon as the output drains.
 *
 * Limits (SPEC section 5). The parser enforces line, bulk and argument
 * limits; this file enforces the query buffer (a partial request larger
 * than client-query-buffer-limit: -LIMIT, then close) and the output buffer
 * (unsent output above client-output-buffer-limit: the client is closed at
 * once and its output dropped, so memory stays bounded whatever a client
 * that does not read sends), and maxclients at accept time. The output
 * limit is also a budget for each reply while it is built: the server's
 * reply gets what is left of the client's limit (fm_reply.limit), the
 * engine stops a FIND whose rows would pass it, and a reply that did is
 * handled as the same overflow. Without that, one FIND held its whole
 * result two or three times over (the reply, its copy in out, their
 * growth) before the limit was even looked at. A protocol
 * error is answered with one error reply and the connection is closed after
 * it is written: the byte stream is out of step and cannot be trusted.
 *
 * Closing. A client is freed at once when its socket fails or reaches EOF.
 * When it must go while a request of its own is being handled (QUIT, a
 * protocol error, the output limit), it is only flagged and put on the
 * pending list, and fm_server_flush_clients frees it, so no handler ever
 * sees its client freed under it.
 *
 * Sockets are written with send(MSG_NOSIGNAL), so a peer that went away is
 * an EPIPE for this client and never a SIGPIPE for the process, whatever
 * the embedding program did with the signal.
 *
 * Idle clients give their buffers back after FM_IDLE_SHRINK_US (the cron
 * calls fm_client_shrink), so a connected but idle client costs its struct
 * and little else.
 */
#include "server/server_int.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <sys/socket.h>
#include <unistd.h>

/* Output buffers above this are freed once drained. */
#define OUT_KEEP_BYTES (64 * 1024)

static void add_pending(struct fm_client *c)
{
    struct fm_server *srv = c->srv;
    if (c->flags & FM_CLIENT_PENDING)
        return;
    c->flags |= FM_CLIENT_PENDING;
    c->pending_prev = NULL;
    c->pending_next = srv->pending;
    if (srv->pending != NULL)
        srv->pending->pending_prev = c;
    srv->pending = c;
}

static void remove_pending(struct fm_client *c)
{
    if (!(c->flags & FM_CLIENT_PENDING))
        return;
    if (c->pending_prev != NULL)
        c->pending_prev->pending_next = c->pending_next;
    else
        c->srv->pending = c->pending_next;
    if (c->pending_next != NULL)
        c->pending_next->pending_prev = c->pending_prev;
    c->pending_prev = c->pending_next = NULL;
    c->flags &= ~FM_CLIENT_PENDING;
}

void fm_client_free(struct fm_client *c)
{
    if (c == NULL)
        return;
    struct fm_server *srv = c->srv;
    remove_pending(c);
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        srv->clients = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    srv->n_clients--;
    fm_ae_remove_file(srv->ae, c->fd, FM_AE_READABLE | FM_AE_WRITABLE);
    close(c->fd);
    fm_client_discard_multi(c);
    fm_free(c->multi);
    fm_buf_fini(&c->in);
    fm_buf_fini(&c->out);
    fm_resp_parser_fini(&c->parser);
    fm_free(c->name);
    fm_free(c->lib_name);
    fm_free(c->lib_ver);
    fm_free(c);
}

void fm_client_close_after_reply(struct fm_client *c)
{
    /* Stop reading: nothing more will be answered, and a level-triggered
     * readable event would otherwise fire until the output drains. */
    fm_ae_remove_file(c->srv->ae, c->fd, FM_AE_READABLE);
    c->flags |= FM_CLIENT_CLOSE_AFTER;
    add_pending(c);
}

/* Drops the client's output and has it closed at the end of the turn. */
static void close_asap(struct fm_client *c)
{
    c->flags |= FM_CLIENT_CLOSE_ASAP;
    add_pending(c);
}

size_t fm_client_memory_bytes(const struct fm_client *c)
{
    return sizeof(*c) + c->in.cap + c->out.cap +
           fm_resp_parser_memory_bytes(&c->parser) + c->multi_bytes +
           c->multi_cap * sizeof(*c->multi);
}

void fm_client_shrink(struct fm_client *c)
{
    if (c->in.len == 0 && !fm_resp_parser_is_busy(&c->parser)) {
        fm_buf_fini(&c->in);
        fm_resp_parser_fini(&c->parser);
    }
    if (c->out.len == 0)
        fm_buf_fini(&c->out);
}

static void format_addr(const struct sockaddr_storage *ss, char *out,
                        size_t cap)
{
    char ip[INET6_ADDRSTRLEN] = "?";
    int port = 0;
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)ss;
        inet_ntop(AF_INET, &sin->sin_addr, ip, sizeof(ip));
        port = ntohs(sin->sin_port);
    } else if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)ss;
        inet_ntop(AF_INET6, &sin6->sin6_addr, ip, sizeof(ip));
        port = ntohs(sin6->sin6_port);
    }
    snprintf(out, cap, "%s:%d", ip, port);
}

static bool is_loopback(const struct sockaddr_storage *ss)
{
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)ss;
        return (ntohl(sin->sin_addr.s_addr) >> 24) == 127;
    }
    if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)ss;
        static const uint8_t v4mapped[12] = {0, 0, 0, 0, 0,    0,
                                             0, 0, 0, 0, 0xff, 0xff};
        const uint8_t *a = sin6->sin6_addr.s6_addr;
        if (memcmp(a, v4mapped, 12) == 0)
            return a[12] == 127;
        return IN6_IS_ADDR_LOOPBACK(&sin6->sin6_addr);
    }
    return true; /* AF_UNIX */
}

/*
 * Sends a short message to a connection that is not (or no longer) a
 * client, then closes it. Best effort: the socket is new and empty, so the
 * message fits its buffer. Closing a socket with unread input makes the
 * kernel send a reset, which can make the peer drop the message before
 * reading it; so the write side is shut first and what already arrived
 * (typically the client's first command) is drained.
 */
static void refuse(int fd, const char *msg)
{
    ssize_t n = send(fd, msg, strlen(msg), MSG_NOSIGNAL);
    (void)n;
    shutdown(fd, SHUT_WR);
    char sink[4096];
    while (recv(fd, sink, sizeof(sink), MSG_DONTWAIT) > 0)
        continue;
    close(fd);
}

static void on_readable(struct fm_ae *ae, int fd, void *data, int mask);

static void create_client(struct fm_server *srv, int fd,
                          const struct sockaddr_storage *ss)
{
    struct fm_client *c = fm_calloc(1, sizeof(*c));
    if (c == NULL) {
        refuse(fd, "-OOM out of memory accepting a connection\r\n");
        return;
    }
    c->srv = srv;
    c->fd = fd;
    c->id = srv->next_client_id++;
    c->created_us = c->last_io_us = fm_monotonic_us();
    if (srv->cfg.requirepass[0] == '\0')
        c->flags |= FM_CLIENT_AUTHED;
    format_addr(ss, c->addr, sizeof(c->addr));
    struct sockaddr_storage local;
    socklen_t local_len = sizeof(local);
    if (getsockname(fd, (struct sockaddr *)&local, &local_len) == 0)
        format_addr(&local, c->laddr, sizeof(c->laddr));
    if (fm_ae_add_file(srv->ae, fd, FM_AE_READABLE, on_readable, c) != FM_OK) {
        fm_free(c);
        refuse(fd, "-ERR max number of clients reached\r\n");
        return;
    }
    c->next = srv->clients;
    if (srv->clients != NULL)
        srv->clients->prev = c;
    srv->clients = c;
    srv->n_clients++;
    srv->total_connections++;
    fm_log_write(&srv->log, FM_LOG_VERBOSE, "Accepted %s (id=%llu)", c->addr,
                 (unsigned long long)c->id);
}

/* Checks maxclients and protected mode; true when fd may become a client. */
static bool admit(struct fm_server *srv, int fd,
                  const struct sockaddr_storage *ss)
{
    if (srv->n_clients >= (size_t)srv->cfg.maxclients ||
        (size_t)fd >= fm_ae_setsize(srv->ae)) {
        srv->rejected_connections++;
        refuse(fd, "-ERR max number of clients reached\r\n");
        return false;
    }
    if (srv->cfg.protected_mode && srv->cfg.requirepass[0] == '\0' &&
        !is_loopback(ss)) {
        srv->rejected_connections++;
        refuse(fd, "-DENIED fermata is running in protected mode because no "
                   "password is set: only loopback clients may connect. To "
                   "accept other hosts, set a password with 'CONFIG SET "
                   "requirepass <password>' from a loopback connection or "
                   "start the server with --requirepass <password> (or "
                   "'requirepass <password>' in the config file); or, if "
                   "you are sure, disable protected mode with "
                   "--protected-mode no\r\n");
        return false;
    }
    return true;
}

void fm_server_accept(struct fm_ae *ae, int fd, void *data, int mask)
{
    (void)ae;
    (void)mask;
    struct fm_server *srv = data;
    /* Bounded, so that a connection storm cannot starve the clients. */
    for (int i = 0; i < 1000; i++) {
        struct sockaddr_storage ss;
        socklen_t ss_len = sizeof(ss);
        int cfd = accept(fd, (struct sockaddr *)&ss, &ss_len);
        if (cfd < 0) {
            if (errno == EMFILE || errno == ENFILE) {
                /* The pending connection keeps the listener readable: stop
                 * watching it until the cron's next tick rather than spin
                 * on a failing accept(). */
                fm_log_write(&srv->log, FM_LOG_WARNING,
                             "accept: %s; pausing accepts for %d ms",
                             strerror(errno), FM_CRON_MS);
                fm_ae_remove_file(srv->ae, fd, FM_AE_READABLE);
                srv->accept_paused = true;
            } else if (errno != EAGAIN && errno != EWOULDBLOCK &&
                       errno != EINTR) {
                fm_log_write(&srv->log, FM_LOG_WARNING, "accept: %s",
                             strerror(errno));
            }
            return;
        }
        int fl = fcntl(cfd, F_GETFL);
        int one = 1;
        if (fl < 0 || fcntl(cfd, F_SETFL, fl | O_NONBLOCK) < 0 ||
            fcntl(cfd, F_SETFD, FD_CLOEXEC) < 0) {
            close(cfd);
            continue;
        }
        if (ss.ss_family != AF_UNIX)
            setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        if (admit(srv, cfd, &ss))
            create_client(srv, cfd, &ss);
    }
}

static struct fm_resp_limits current_limits(const struct fm_server *srv)
{
    struct fm_resp_limits lim = {
        .max_inline_len = (size_t)srv->cfg.max_inline_len,
        .max_bulk_len = (size_t)srv->cfg.max_bulk_len,
        .max_args = (size_t)srv->cfg.max_args,
    };
    return lim;
}

/* Answers a protocol or limit error and closes after writing it. */
static void fail_request(struct fm_client *c, const struct fm_error *err)
{
    struct fm_server *srv = c->srv;
    fm_log_write(&srv->log, FM_LOG_VERBOSE, "Client id=%llu %s: %s",
                 (unsigned long long)c->id, c->addr, err->msg);
    srv->total_errors++;
    if (fm_resp_append_error(&c->out, err->st, err->msg) != FM_OK) {
        close_asap(c);
        return;
    }
    /* A marked client's replies are counted so that a failed group commit
     * replaces exactly as many (fm_client_end_turn). */
    if (c->turn_marked)
        c->turn_n_replies++;
    fm_client_close_after_reply(c);
}

static bool is_closing(const struct fm_client *c)
{
    return (c->flags & (FM_CLIENT_CLOSE_AFTER | FM_CLIENT_CLOSE_ASAP)) != 0;
}

/* The bytes the client's next reply may take: what is left of its output
 * buffer limit beside the output it has not read yet. */
static size_t output_allowance(const struct fm_client *c)
{
    size_t limit = (size_t)c->srv->cfg.client_output_buffer_limit;
    size_t pending = c->out.len - c->out_sent;
    /* 0 would mean no limit: a client with nothing left gets one byte,
     * which no reply fits in. */
    return pending < limit ? limit - pending : 1;
}

/*
 * Parses and runs every complete request of buf[0, len), which starts at
 * the first byte of a request. Returns the bytes consumed; what is left is
 * the start of a partial request (or input after a close decision).
 */
static size_t process_input(struct fm_client *c, uint8_t *buf, size_t len)
{
    struct fm_resp_limits lim = current_limits(c->srv);
    size_t off = 0;
    while (off < len && !is_closing(c)) {
        struct fm_resp_request req;
        struct fm_error err = {0};
        bool complete;
        fm_status st = fm_resp_parse_request(&c->parser, &lim, buf + off,
                                             len - off, &complete, &req, &err);
        if (st != FM_OK) {
            fm_resp_parser_reset(&c->parser);
            fail_request(c, &err);
            return len;
        }
        if (!complete)
            break;
        off += req.req_len;
        if (req.argc == 0)
            continue;
        struct fm_args a = {req.argc, req.argv, req.argv_len};
        /* The reply may take what is left of the output limit and no
         * more: the engine stops building it there (fm_reply.limit). */
        c->srv->reply.limit = output_allowance(c);
        fm_client_execute(c, &a);
        add_pending(c);
    }
    return off;
}

/* Refuses a partial request that has outgrown the query buffer limit. */
static bool check_query_limit(struct fm_client *c, size_t pending)
{
    struct fm_server *srv = c->srv;
    if (pending <= (size_t)srv->cfg.client_query_buffer_limit)
        return true;
    struct fm_error err;
    fm_error_set(&err, FM_ERR_LIMIT,
                 "query buffer of %zu bytes is over client-query-buffer-limit "
                 "%lld",
                 pending, (long long)srv->cfg.client_query_buffer_limit);
    srv->query_limit_disconnections++;
    fm_buf_fini(&c->in);
    fm_resp_parser_reset(&c->parser);
    fail_request(c, &err);
    return false;
}

/* Reads into buf's spare room; false when the client was freed. */
static bool read_some(struct fm_client *c, struct fm_buf *buf, ssize_t *n_out)
{
    struct fm_server *srv = c->srv;
    if (fm_buf_reserve(buf, FM_READ_CHUNK) != FM_OK) {
        fm_log_write(&srv->log, FM_LOG_WARNING,
                     "Out of memory reading from client id=%llu",
                     (unsigned long long)c->id);
        fm_client_free(c);
        return false;
    }
    ssize_t n = read(c->fd, buf->data + buf->len, buf->cap - buf->len);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
        *n_out = 0;
        return true;
    }
    if (n <= 0) {
        if (n < 0)
            fm_log_write(&srv->log, FM_LOG_VERBOSE,
                         "Reading from client id=%llu: %s",
                         (unsigned long long)c->id, strerror(errno));
        fm_client_free(c);
        return false;
    }
    buf->len += (size_t)n;
    srv->net_input_bytes += (uint64_t)n;
    c->last_io_us = fm_monotonic_us();
    *n_out = n;
    return true;
}

static void on_readable(struct fm_ae *ae, int fd, void *data, int mask)
{
    (void)ae;
    (void)fd;
    (void)mask;
    struct fm_client *c = data;
    struct fm_server *srv = c->srv;
    if (is_closing(c))
        return; /* do not read what will never be answered */
    /* With no partial request, read into the shared buffer and keep only
     * the unfinished tail; otherwise append to the client's buffer. */
    bool shared = c->in.len == 0;
    struct fm_buf *buf = shared ? &srv->shared_in : &c->in;
    ssize_t n;
    if (!read_some(c, buf, &n))
        return;
    if (n == 0)
        return;
    /* The first command of the batch starts at the read (commandstats). */
    srv->cmd_clock_us = c->last_io_us;
    size_t used = process_input(c, buf->data, buf->len);
    size_t left = buf->len - used;
    if (is_closing(c)) {
        left = 0;
    } else if (shared && left > 0) {
        if (fm_buf_append(&c->in, buf->data + used, left) != FM_OK) {
            fm_client_free(c);
            srv->shared_in.len = 0;
            return;
        }
    } else if (!shared && used > 0 && left > 0) {
        memmove(c->in.data, c->in.data + used, left);
    }
    if (shared)
        srv->shared_in.len = 0;
    else
        c->in.len = left;
    if (left > 0)
        check_query_limit(c, left);
}

/* Drops the output of a client over its output limit and has it closed
 * (SPEC section 5); why is the end of the log line. */
static void close_over_output_limit(struct fm_client *c, const char *why)
{
    struct fm_server *srv = c->srv;
    fm_log_write(&srv->log, FM_LOG_WARNING,
                 "Client id=%llu %s closed for overcoming of output buffer "
                 "limits (%s, client-output-buffer-limit %lld)",
                 (unsigned long long)c->id, c->addr, why,
                 (long long)srv->cfg.client_output_buffer_limit);
    srv->output_limit_disconnections++;
    fm_buf_fini(&c->out);
    c->out_sent = c->out_ready = 0;
    close_asap(c);
}

/* Output above the limit: drop it and close. */
static void enforce_output_limit(struct fm_client *c)
{
    size_t pending = c->out.len - c->out_sent;
    if (pending <= (size_t)c->srv->cfg.client_output_buffer_limit)
        return;
    char why[64];
    snprintf(why, sizeof(why), "%zu bytes pending", pending);
    close_over_output_limit(c, why);
}

void fm_client_append_reply(struct fm_client *c, const struct fm_reply *r)
{
    if (c->flags & FM_CLIENT_CLOSE_ASAP)
        return;
    if (r->over_limit) {
        /* The engine stopped the reply at the client's allowance: the
         * same overflow as below, found before the whole reply was built
         * (docs/protocol.md, Limits). */
        char why[96];
        snprintf(why, sizeof(why),
                 "a reply over the %zu bytes left with %zu pending", r->limit,
                 c->out.len - c->out_sent);
        close_over_output_limit(c, why);
        return;
    }
    if (fm_resp_encode_reply(&c->out, r) != FM_OK) {
        fm_log_write(&c->srv->log, FM_LOG_WARNING,
                     "Out of memory encoding a reply for client id=%llu",
                     (unsigned long long)c->id);
        close_asap(c);
        return;
    }
    enforce_output_limit(c);
}

static void on_writable(struct fm_ae *ae, int fd, void *data, int mask);

/*
 * Writes out[out_sent, out_ready), now_us being the time for last_io_us
 * (one clock reading serves all the clients of a turn). Returns false
 * when the client was freed (write error, or everything written and the
 * client was to be closed).
 */
static bool write_client(struct fm_client *c, int64_t now_us)
{
    struct fm_server *srv = c->srv;
    while (c->out_sent < c->out_ready) {
        ssize_t n = send(c->fd, c->out.data + c->out_sent,
                         c->out_ready - c->out_sent, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        if (n <= 0) {
            fm_log_write(&srv->log, FM_LOG_VERBOSE,
                         "Writing to client id=%llu: %s",
                         (unsigned long long)c->id, strerror(errno));
            fm_client_free(c);
            return false;
        }
        c->out_sent += (size_t)n;
        srv->net_output_bytes += (uint64_t)n;
        c->last_io_us = now_us;
    }
    if (c->out_sent == c->out.len) {
        c->out.len = c->out_sent = c->out_ready = 0;
        c->turn_mark = 0; /* a mark here was at the end of out */
        if (c->out.cap > OUT_KEEP_BYTES)
            fm_buf_fini(&c->out);
        if (c->flags & FM_CLIENT_CLOSE_AFTER) {
            fm_client_free(c);
            return false;
        }
    }
    bool more = c->out_sent < c->out_ready;
    if (more && !(c->flags & FM_CLIENT_WRITE_HANDLER)) {
        if (fm_ae_add_file(srv->ae, c->fd, FM_AE_WRITABLE, on_writable, c) !=
            FM_OK) {
            fm_client_free(c);
            return false;
        }
        c->flags |= FM_CLIENT_WRITE_HANDLER;
    } else if (!more && (c->flags & FM_CLIENT_WRITE_HANDLER)) {
        fm_ae_remove_file(srv->ae, c->fd, FM_AE_WRITABLE);
        c->flags &= ~FM_CLIENT_WRITE_HANDLER;
    }
    return true;
}

static void on_writable(struct fm_ae *ae, int fd, void *data, int mask)
{
    (void)ae;
    (void)fd;
    (void)mask;
    write_client(data, fm_monotonic_us());
}

void fm_client_end_turn(struct fm_client *c, const char *fail_msg)
{
    bool marked = c->turn_marked;
    bool began_multi = c->turn_began_multi;
    size_t n_replies = c->turn_n_replies;
    c->turn_marked = false;
    c->turn_began_multi = false;
    c->turn_n_replies = 0;
    if (!marked || fail_msg == NULL || (c->flags & FM_CLIENT_CLOSE_ASAP))
        return;
    FM_ASSERT(c->turn_mark >= c->out_ready && c->turn_mark <= c->out.len);
    c->out.len = c->turn_mark;
    for (size_t i = 0; i < n_replies; i++) {
        if (fm_resp_append_error(&c->out, FM_ERR_READONLY, fail_msg) != FM_OK) {
            close_asap(c);
            return;
        }
    }
    /* The client was told that its MULTI failed: leave it. Or it was told
     * that commands failed to queue: EXEC must abort, as in Redis. */
    if ((c->flags & FM_CLIENT_MULTI) && began_multi)
        fm_client_discard_multi(c);
    else if (c->flags & FM_CLIENT_MULTI)
        c->flags |= FM_CLIENT_DIRTY_EXEC;
}

void fm_server_flush_clients(struct fm_server *srv)
{
    int64_t now_us = fm_monotonic_us();
    while (srv->pending != NULL) {
        struct fm_client *c = srv->pending;
        remove_pending(c);
        if (c->flags & FM_CLIENT_CLOSE_ASAP) {
            fm_client_free(c);
            continue;
        }
        /* The WAL flush of this turn is done (fm_server_commit_turn):
         * release the turn's output. */
        FM_ASSERT(!c->turn_marked);
        c->out_ready = c->out.len;
        write_client(c, now_us);
    }
}
