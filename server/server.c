/*
 * server.c: the server's life: start-up, the event loop's hooks, the cron,
 * signals and shutdown.
 *
 * One thread runs everything (SPEC section 2: commands execute one at a
 * time), on the event loop of ae.c:
 *
 *   listening socket  readable -> fm_server_accept (network.c)
 *   each client       readable -> read, parse, execute every complete
 *                                 request, append the replies to its output
 *                     writable -> only while a reply did not fit the socket
 *   wake pipe         readable -> a stop request from another thread
 *   signalfd          readable -> SIGTERM / SIGINT
 *   cron timer        every FM_CRON_MS: ops/sec sample, client memory,
 *                     idle timeouts, shrinking idle clients' buffers,
 *                     fm_engine_cron (background snapshots)
 *   before sleep      the group-commit point: fm_server_commit_turn(),
 *                     then fm_server_flush_clients() writes the replies of
 *                     this turn, then a scheduled shutdown runs
 *
 * Why replies wait for the before-sleep hook: a reply to a write may be
 * sent only once the write is in the WAL as far as the fsync policy
 * promises (SPEC sections 2 and 4), and one WAL write (and fdatasync) per
 * turn for all the writes of the turn is what makes durable throughput
 * possible (FACTS.md). So command handlers only append to output buffers;
 * bytes go out after fm_server_commit_turn() (fm_engine_flush) returns.
 * Writable handlers respect the same rule: they send only out_ready bytes,
 * which advance after the flush. A failed flush rolls the turn's writes
 * back, and then no reply may go out that could have seen them: every
 * reply of a command run after the turn's first write, on any client, is
 * replaced by -READONLY (fm_server_commit_turn, fm_client_end_turn). The
 * cron and SAVE/BGSAVE commit the turn before the engine flushes on its
 * own, so no flush escapes this accounting. With --dir "" the engine keeps
 * no WAL and the flush is a no-op (for tests and benchmarks only).
 *
 * Shutdown (SHUTDOWN, a signal, fm_server_request_stop) is scheduled, not
 * done on the spot: the turn finishes, pending replies are written, then
 * persist_before_exit() (fm_engine_shutdown: flush and fsync the WAL, and
 * a snapshot unless NOSAVE) runs and the loop stops. fm_server_free closes
 * every client.
 *
 * Memory accounting for maxmemory: fm_engine_memory_bytes() at the moment
 * of the check, plus the clients' buffers as the cron last summed them
 * (summing 10,000 clients on every write would cost more than the write).
 */
#include "server/server.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "server/server_int.h"

static void close_fd(int *fd)
{
    if (*fd >= 0)
        close(*fd);
    *fd = -1;
}

static fm_status set_nonblock_cloexec(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
        return FM_ERR_IO;
    int fdfl = fcntl(fd, F_GETFD);
    if (fdfl < 0 || fcntl(fd, F_SETFD, fdfl | FD_CLOEXEC) < 0)
        return FM_ERR_IO;
    return FM_OK;
}

/* Reads the schema file, or takes the built-in schema. */
static fm_status read_schema(const char *path, struct fm_buf *out,
                             struct fm_error *err)
{
    if (path[0] == '\0')
        return FM_OK;
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return fm_error_set(err, FM_ERR_IO, "cannot open schema '%s': %s", path,
                            strerror(errno));
    fm_status st = FM_OK;
    for (;;) {
        st = fm_buf_reserve(out, 4096);
        if (st != FM_OK)
            break;
        size_t n = fread(out->data + out->len, 1, 4096, f);
        out->len += n;
        if (n < 4096) {
            if (ferror(f))
                st = fm_error_set(err, FM_ERR_IO, "cannot read schema '%s'",
                                  path);
            break;
        }
    }
    fclose(f);
    return st;
}

void fm_server_snapshot_config(const struct fm_config *cfg,
                               struct fm_snapshot_config *out)
{
    memset(out, 0, sizeof(*out));
    out->interval_s = (uint64_t)cfg->snapshot_interval;
    out->wal_mb = (uint64_t)cfg->snapshot_wal_mb;
    out->keep = (uint64_t)cfg->snapshot_keep;
}

enum fm_fsync_policy fm_server_fsync_policy(const struct fm_config *cfg)
{
    static const enum fm_fsync_policy by_index[] = {
        FM_FSYNC_ALWAYS, FM_FSYNC_EVERYSEC, FM_FSYNC_NO};
    FM_ASSERT(cfg->fsync >= 0 && cfg->fsync < 3);
    return by_index[cfg->fsync];
}

/*
 * Runs in a background snapshot's child right after the fork (the engine's
 * atfork_child). The child needs none of the server's descriptors but the
 * log's, and each one it kept would stay open after the server closes its
 * own: a client the server closes would see no end of the connection until
 * the snapshot is done, and a listening socket would outlive a killed
 * server, its port bound and accepting connections nobody serves. Only
 * close(): the child runs on the server's memory, copy-on-write.
 */
static void close_in_snapshot_child(void *ctx)
{
    struct fm_server *srv = ctx;
    for (struct fm_client *c = srv->clients; c != NULL; c = c->next)
        close(c->fd);
    close_fd(&srv->listen_fd);
    close_fd(&srv->wake_fd[0]);
    close_fd(&srv->wake_fd[1]);
    close_fd(&srv->signal_fd);
}

static fm_status create_engine(struct fm_server *srv, struct fm_error *err)
{
    struct fm_buf schema = {0};
    fm_status st = read_schema(srv->cfg.schema, &schema, err);
    if (st != FM_OK)
        goto out;
    struct fm_engine_options opts;
    memset(&opts, 0, sizeof(opts));
    if (schema.len > 0) {
        opts.schema_text = (const char *)schema.data;
        opts.schema_len = schema.len;
    }
    opts.log = fm_log_callback;
    opts.log_ctx = &srv->log;
    /* An empty dir runs without durability: tests and benchmarks. */
    opts.dir = srv->cfg.dir[0] != '\0' ? srv->cfg.dir : NULL;
    opts.fsync = fm_server_fsync_policy(&srv->cfg);
    opts.force_recovery = srv->cfg.force_recovery;
    opts.wal_io = srv->cfg.wal_io;
    opts.atfork_child = close_in_snapshot_child;
    opts.atfork_ctx = srv;
    fm_server_snapshot_config(&srv->cfg, &opts.snapshot);
    st = fm_engine_new(&opts, &srv->engine, err);
out:
    fm_buf_fini(&schema);
    return st;
}

/* Binds and listens on cfg bind:port; records the port actually bound. */
static fm_status open_listener(struct fm_server *srv, struct fm_error *err)
{
    struct addrinfo hints;
    struct addrinfo *res = NULL;
    char port[16];
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE;
    snprintf(port, sizeof(port), "%d", (int)srv->cfg.port);
    int rc = getaddrinfo(srv->cfg.bind, port, &hints, &res);
    if (rc != 0)
        return fm_error_set(err, FM_ERR_IO,
                            "cannot resolve bind address "
                            "'%s': %s",
                            srv->cfg.bind, gai_strerror(rc));
    fm_status st = FM_ERR_IO;
    int fd = socket(res->ai_family, res->ai_socktype, res->ai_protocol);
    if (fd < 0) {
        st = fm_error_set(err, FM_ERR_IO, "cannot create socket: %s",
                          strerror(errno));
        goto out;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, res->ai_addr, res->ai_addrlen) < 0 ||
        listen(fd, (int)srv->cfg.tcp_backlog) < 0) {
        st = fm_error_set(err, FM_ERR_IO, "cannot listen on %s:%s: %s",
                          srv->cfg.bind, port, strerror(errno));
        goto out;
    }
    struct sockaddr_storage ss;
    socklen_t ss_len = sizeof(ss);
    if (getsockname(fd, (struct sockaddr *)&ss, &ss_len) < 0 ||
        set_nonblock_cloexec(fd) != FM_OK) {
        st = fm_error_set(err, FM_ERR_IO, "cannot set up the listener: %s",
                          strerror(errno));
        goto out;
    }
    if (ss.ss_family == AF_INET6)
        srv->port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    else
        srv->port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
    /* CONFIG GET port and INFO tell the port actually bound. */
    srv->cfg.port = srv->port;
    srv->listen_fd = fd;
    fd = -1;
    st = FM_OK;
out:
    close_fd(&fd);
    freeaddrinfo(res);
    return st;
}

static void on_wake(struct fm_ae *ae, int fd, void *data, int mask)
{
    (void)ae;
    (void)mask;
    struct fm_server *srv = data;
    uint8_t buf[64];
    while (read(fd, buf, sizeof(buf)) > 0)
        continue;
    fm_log_write(&srv->log, FM_LOG_NOTICE, "Stop requested, shutting down");
    fm_server_schedule_shutdown(srv, false);
}

static void on_signal(struct fm_ae *ae, int fd, void *data, int mask)
{
    (void)ae;
    (void)mask;
    struct fm_server *srv = data;
    struct signalfd_siginfo si;
    while (read(fd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
        fm_log_write(&srv->log, FM_LOG_WARNING,
                     "Received %s, scheduling shutdown...",
                     si.ssi_signo == SIGINT ? "SIGINT" : "SIGTERM");
        fm_server_schedule_shutdown(srv, false);
    }
}

/* Samples the command rate for instantaneous_ops_per_sec. */
static void sample_ops(struct fm_server *srv, int64_t now)
{
    int64_t dt = now - srv->ops_last_us;
    if (dt <= 0)
        return;
    uint64_t ops = srv->total_commands - srv->ops_last_commands;
    srv->ops_samples[srv->ops_sample_idx] = ops * 1000000 / (uint64_t)dt;
    srv->ops_sample_idx = (srv->ops_sample_idx + 1) % FM_OPS_SAMPLES;
    srv->ops_last_us = now;
    srv->ops_last_commands = srv->total_commands;
}

/* Sums client memory; closes timed-out clients; shrinks idle ones. */
static void clients_cron(struct fm_server *srv, int64_t now)
{
    bool shrink = now - srv->last_shrink_us >= 1000 * 1000;
    if (shrink)
        srv->last_shrink_us = now;
    size_t total = srv->shared_in.cap + srv->reply.buf.cap + srv->scratch.cap;
    struct fm_client *next;
    for (struct fm_client *c = srv->clients; c != NULL; c = next) {
        next = c->next;
        int64_t idle = now - c->last_io_us;
        bool waiting = c->out.len == 0 && !(c->flags & FM_CLIENT_MULTI);
        if (srv->cfg.timeout > 0 && waiting &&
            idle > srv->cfg.timeout * 1000000) {
            fm_log_write(&srv->log, FM_LOG_VERBOSE,
                         "Closing idle client id=%llu",
                         (unsigned long long)c->id);
            fm_client_free(c);
            continue;
        }
        if (shrink && idle > FM_IDLE_SHRINK_US)
            fm_client_shrink(c);
        total += fm_client_memory_bytes(c);
    }
    srv->client_mem_bytes = total;
}

static int64_t cron(struct fm_ae *ae, int64_t id, void *data)
{
    (void)ae;
    (void)id;
    struct fm_server *srv = data;
    int64_t now = fm_monotonic_us();
    sample_ops(srv, now);
    clients_cron(srv, now);
    if (srv->accept_paused &&
        fm_ae_add_file(srv->ae, srv->listen_fd, FM_AE_READABLE,
                       fm_server_accept, srv) == FM_OK)
        srv->accept_paused = false;
    /* Reaps a finished background snapshot, starts one when due. Starting
     * one flushes the WAL, so the turn's writes are committed first, with
     * their clients' replies settled (the timer runs in the same loop turn
     * as the reads before it). */
    fm_server_commit_turn(srv);
    fm_engine_cron(srv->engine);
    /* One huge reply (a FIND of every row) must not pin its memory. */
    if (srv->reply.buf.cap > 1024 * 1024)
        fm_reply_fini(&srv->reply);
    if (srv->scratch.cap > 1024 * 1024)
        fm_buf_fini(&srv->scratch);
    return FM_CRON_MS;
}

void fm_server_commit_turn(struct fm_server *srv)
{
    /* A write always leaves WAL records pending; the second test only
     * keeps a flush from being skipped should that ever not hold. */
    if (!srv->turn_wrote && !fm_engine_has_pending(srv->engine))
        return;
    struct fm_error err = {0};
    char msg[FM_ERROR_MSG_CAP + 96];
    const char *fail_msg = NULL;
    if (fm_engine_flush(srv->engine, &err) != FM_OK) {
        fm_log_write(&srv->log, FM_LOG_WARNING,
                     "WAL write failed, writes are refused from now on: %s",
                     err.msg);
        snprintf(msg, sizeof(msg),
                 "the writes of this turn were rolled back and this reply "
                 "withheld: %s",
                 err.msg);
        fail_msg = msg;
    }
    /* Every marked client ran a command in this turn, so it is pending. */
    for (struct fm_client *c = srv->pending; c != NULL; c = c->pending_next)
        fm_client_end_turn(c, fail_msg);
    srv->turn_wrote = false;
}

/*
 * Runs at shutdown, after the last replies were written: flushes and fsyncs
 * the WAL and, unless nosave, writes a snapshot (SPEC section 3, SHUTDOWN),
 * also when the WAL is read-only, since then only memory is sure to hold
 * every acknowledged write. A failure is logged and the server exits
 * anyway: the next start recovers from the WAL as far as the disk kept it.
 */
static void persist_before_exit(struct fm_server *srv, bool nosave)
{
    struct fm_error err = {0};
    fm_log_write(&srv->log, FM_LOG_NOTICE, "User requested shutdown%s...",
                 nosave ? " without a snapshot" : "");
    if (fm_engine_shutdown(srv->engine, nosave, &err) != FM_OK)
        fm_log_write(&srv->log, FM_LOG_WARNING, "Error while shutting down: %s",
                     err.msg);
}

static void before_sleep(struct fm_ae *ae, void *data)
{
    struct fm_server *srv = data;
    fm_server_commit_turn(srv);
    fm_server_flush_clients(srv);
    if (srv->shutdown_asap) {
        persist_before_exit(srv, srv->shutdown_nosave);
        fm_log_write(&srv->log, FM_LOG_WARNING,
                     "fermata is now ready to exit, bye bye...");
        fm_ae_stop(ae);
    }
}

void fm_server_schedule_shutdown(struct fm_server *srv, bool nosave)
{
    srv->shutdown_asap = true;
    srv->shutdown_nosave = srv->shutdown_nosave || nosave;
}

static fm_status open_wake_pipe(struct fm_server *srv, struct fm_error *err)
{
    if (pipe(srv->wake_fd) < 0 || set_nonblock_cloexec(srv->wake_fd[0]) ||
        set_nonblock_cloexec(srv->wake_fd[1]))
        return fm_error_set(err, FM_ERR_IO, "cannot create a pipe: %s",
                            strerror(errno));
    return FM_OK;
}

/*
 * Makes room for maxclients connections in the open-files limit, as Redis
 * does: raises the soft limit when it is too low, and when even the hard
 * limit is too low, lowers maxclients to fit and says so. Without this, a
 * server over its fd limit would fail every accept() while the pending
 * connection keeps the listener readable.
 */
static void fit_open_files_limit(struct fm_server *srv)
{
    struct rlimit rl;
    rlim_t want = (rlim_t)srv->cfg.maxclients + FM_RESERVED_FDS;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur >= want)
        return;
    rlim_t cap = rl.rlim_max == RLIM_INFINITY || rl.rlim_max >= want
                     ? want
                     : rl.rlim_max;
    rl.rlim_cur = cap;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0 &&
        getrlimit(RLIMIT_NOFILE, &rl) == 0)
        cap = rl.rlim_cur;
    if (cap >= want)
        return;
    int64_t fit = cap > FM_RESERVED_FDS ? (int64_t)(cap - FM_RESERVED_FDS) : 1;
    fm_log_write(&srv->log, FM_LOG_WARNING,
                 "The open files limit is %llu: maxclients lowered from %lld "
                 "to %lld (raise 'ulimit -n' to allow more)",
                 (unsigned long long)cap, (long long)srv->cfg.maxclients,
                 (long long)fit);
    srv->cfg.maxclients = fit;
}

/* Registers the listener, the wake pipe, the cron and the hook. */
static fm_status setup_loop(struct fm_server *srv, struct fm_error *err)
{
    fit_open_files_limit(srv);
    size_t setsize = (size_t)srv->cfg.maxclients + FM_RESERVED_FDS;
    fm_status st = fm_ae_new(setsize, &srv->ae, err);
    if (st != FM_OK)
        return st;
    srv->max_clients_at_start = (size_t)srv->cfg.maxclients;
    st = fm_ae_add_file(srv->ae, srv->listen_fd, FM_AE_READABLE,
                        fm_server_accept, srv);
    if (st == FM_OK)
        st = fm_ae_add_file(srv->ae, srv->wake_fd[0], FM_AE_READABLE, on_wake,
                            srv);
    if (st == FM_OK)
        st = fm_ae_add_timer(srv->ae, FM_CRON_MS, cron, srv, NULL);
    if (st != FM_OK)
        return fm_error_set(err, st, "cannot set up the event loop");
    fm_ae_set_before_sleep(srv->ae, before_sleep, srv);
    return FM_OK;
}

fm_status fm_server_new(struct fm_config *cfg, struct fm_server **out,
                        struct fm_error *err)
{
    fm_status st = FM_ERR_NOMEM;
    struct fm_server *srv = fm_calloc(1, sizeof(*srv));
    if (srv == NULL) {
        fm_config_fini(cfg);
        return fm_error_set(err, st, "out of memory");
    }
    srv->cfg = *cfg;
    memset(cfg, 0, sizeof(*cfg));
    srv->listen_fd = -1;
    srv->wake_fd[0] = srv->wake_fd[1] = -1;
    srv->signal_fd = -1;
    srv->next_client_id = 1;
    srv->start_us = fm_monotonic_us();
    srv->start_wall_us = fm_now_us();
    srv->ops_last_us = srv->start_us;
    fm_log_init(&srv->log);
    srv->log.level = (enum fm_log_level)srv->cfg.loglevel;
    st = fm_log_open(&srv->log, srv->cfg.logfile, err);
    if (st != FM_OK)
        goto fail;
    fm_command_index_init(&srv->cmd_index);
    srv->cmd_stats = fm_calloc(fm_command_count() + 1, sizeof(*srv->cmd_stats));
    if (srv->cmd_stats == NULL) {
        st = fm_error_set(err, FM_ERR_NOMEM, "out of memory");
        goto fail;
    }
    st = create_engine(srv, err);
    if (st == FM_OK)
        st = open_listener(srv, err);
    if (st == FM_OK)
        st = open_wake_pipe(srv, err);
    if (st == FM_OK)
        st = setup_loop(srv, err);
    if (st != FM_OK)
        goto fail;
    *out = srv;
    return FM_OK;
fail:
    fm_server_free(srv);
    return st;
}

void fm_server_free(struct fm_server *srv)
{
    if (srv == NULL)
        return;
    while (srv->clients != NULL)
        fm_client_free(srv->clients);
    close_fd(&srv->listen_fd);
    close_fd(&srv->wake_fd[0]);
    close_fd(&srv->wake_fd[1]);
    close_fd(&srv->signal_fd);
    fm_ae_free(srv->ae);
    fm_engine_free(srv->engine);
    fm_buf_fini(&srv->shared_in);
    fm_buf_fini(&srv->scratch);
    fm_reply_fini(&srv->reply);
    fm_free(srv->cmd_stats);
    fm_log_fini(&srv->log);
    fm_config_fini(&srv->cfg);
    fm_free(srv);
}

int fm_server_port(const struct fm_server *srv)
{
    return srv->port;
}

static void fatal_signals(sigset_t *set)
{
    sigemptyset(set);
    sigaddset(set, SIGTERM);
    sigaddset(set, SIGINT);
}

fm_status fm_server_block_signals(struct fm_error *err)
{
    sigset_t set;
    fatal_signals(&set);
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = SIG_IGN;
    if (sigaction(SIGPIPE, &sa, NULL) < 0 ||
        sigprocmask(SIG_BLOCK, &set, NULL) < 0)
        return fm_error_set(err, FM_ERR_IO, "cannot set up signals: %s",
                            strerror(errno));
    return FM_OK;
}

fm_status fm_server_watch_signals(struct fm_server *srv, struct fm_error *err)
{
    sigset_t set;
    fatal_signals(&set);
    fm_status st = fm_server_block_signals(err);
    if (st != FM_OK)
        return st;
    srv->signal_fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
    if (srv->signal_fd < 0)
        return fm_error_set(err, FM_ERR_IO, "cannot create a signalfd: %s",
                            strerror(errno));
    st =
        fm_ae_add_file(srv->ae, srv->signal_fd, FM_AE_READABLE, on_signal, srv);
    if (st != FM_OK)
        return fm_error_set(err, st, "cannot watch signals");
    return FM_OK;
}

fm_status fm_server_run(struct fm_server *srv, struct fm_error *err)
{
    fm_log_write(&srv->log, FM_LOG_NOTICE,
                 "Ready to accept connections tcp on %s:%d", srv->cfg.bind,
                 srv->port);
    fm_status st = fm_ae_run(srv->ae);
    if (st != FM_OK)
        return fm_error_set(err, st, "event loop failed: %s", strerror(errno));
    return FM_OK;
}

void fm_server_request_stop(struct fm_server *srv)
{
    uint8_t byte = 1;
    /* A full pipe already holds a stop request: nothing more to say. */
    ssize_t n = write(srv->wake_fd[1], &byte, 1);
    (void)n;
}
