/*
 * info.c: INFO and CONFIG, the commands that report and change the server.
 *
 * INFO answers one bulk string in Redis' format, so that tools that parse
 * Redis' INFO parse ours:
 *
 *   # Server\r\n
 *   key:value\r\n
 *   ...
 *   \r\n
 *   # Clients\r\n
 *   ...
 *
 * Sections (SPEC section 3): server, clients, memory (with the engine's
 * per-table row and index bytes), persistence, stats, commandstats,
 * keyspace (rows per table). With no argument, or "default", every section
 * but commandstats; "all" or "everything" adds it; names are
 * case-insensitive and several may be given. A few fields exist only for
 * Redis tools (redis_version, db0 in keyspace) and say so in
 * docs/protocol.md.
 *
 * Persistence comes from fm_engine_persist_stats: the WAL (LSNs, bytes,
 * the read-only state and its reason) and the snapshots. The rdb_* fields
 * repeat the snapshot figures under Redis' names for Redis tools.
 *
 * CONFIG SET of several parameters is all-or-nothing, as in Redis 7: each
 * old value is kept as text, and when a later pair fails the earlier ones
 * are set back (old values always parse, having been formatted from valid
 * ones). Side effects that must follow a parameter (the log level) are
 * applied once every pair has been accepted.
 */
#include "server/server_int.h"

#include <stdio.h>
#include <strings.h>
#include <sys/utsname.h>
#include <unistd.h>

/* Appends "1.23M"-style text for a byte count. */
static void human_bytes(size_t n, char *out, size_t cap)
{
    static const char units[] = "BKMGTP";
    double v = (double)n;
    size_t u = 0;
    while (v >= 1024 && u + 1 < sizeof(units) - 1) {
        v /= 1024;
        u++;
    }
    if (u == 0)
        snprintf(out, cap, "%zuB", n);
    else
        snprintf(out, cap, "%.2f%c", v, units[u]);
}

static size_t rss_bytes(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    if (f == NULL)
        return 0;
    unsigned long long size = 0;
    unsigned long long resident = 0;
    int n = fscanf(f, "%llu %llu", &size, &resident);
    fclose(f);
    if (n != 2)
        return 0;
    return (size_t)resident * (size_t)sysconf(_SC_PAGESIZE);
}

static void section_server(const struct fm_server *srv, struct fm_buf *b)
{
    struct utsname u;
    if (uname(&u) != 0)
        memset(&u, 0, sizeof(u));
    int64_t up = (fm_monotonic_us() - srv->start_us) / 1000000;
    fm_buf_printf(b,
                  "# Server\r\n"
                  "fermata_version:%s\r\n"
                  "redis_version:7.0.0\r\n"
                  "redis_mode:standalone\r\n"
                  "os:%s %s %s\r\n"
                  "arch_bits:%d\r\n"
                  "multiplexing_api:epoll\r\n"
                  "process_id:%d\r\n"
                  "tcp_port:%d\r\n"
                  "server_time_usec:%lld\r\n"
                  "uptime_in_seconds:%lld\r\n"
                  "uptime_in_days:%lld\r\n"
                  "hz:%d\r\n"
                  "config_file:%s\r\n"
                  "data_dir:%s\r\n",
                  FM_SERVER_VERSION, u.sysname, u.release, u.machine,
                  (int)(sizeof(void *) * 8), (int)getpid(), srv->port,
                  (long long)fm_now_us(), (long long)up,
                  (long long)(up / 86400), 1000 / FM_CRON_MS,
                  srv->cfg.config_file, srv->cfg.dir);
}

static void section_clients(const struct fm_server *srv, struct fm_buf *b)
{
    size_t max_in = 0;
    size_t max_out = 0;
    size_t in_multi = 0;
    for (const struct fm_client *c = srv->clients; c != NULL; c = c->next) {
        if (c->in.cap > max_in)
            max_in = c->in.cap;
        if (c->out.len - c->out_sent > max_out)
            max_out = c->out.len - c->out_sent;
        if (c->flags & FM_CLIENT_MULTI)
            in_multi++;
    }
    fm_buf_printf(b,
                  "# Clients\r\n"
                  "connected_clients:%zu\r\n"
                  "maxclients:%lld\r\n"
                  "blocked_clients:0\r\n"
                  "clients_in_multi:%zu\r\n"
                  "client_recent_max_input_buffer:%zu\r\n"
                  "client_recent_max_output_buffer:%zu\r\n",
                  srv->n_clients, (long long)srv->cfg.maxclients, in_multi,
                  max_in, max_out);
}

static void section_memory(const struct fm_server *srv, struct fm_buf *b)
{
    char used_h[32];
    char max_h[32];
    size_t used = fm_server_used_memory(srv);
    human_bytes(used, used_h, sizeof(used_h));
    human_bytes((size_t)srv->cfg.maxmemory, max_h, sizeof(max_h));
    fm_buf_printf(b,
                  "# Memory\r\n"
                  "used_memory:%zu\r\n"
                  "used_memory_human:%s\r\n"
                  "used_memory_engine:%zu\r\n"
                  "used_memory_clients:%zu\r\n"
                  "used_memory_rss:%zu\r\n"
                  "maxmemory:%lld\r\n"
                  "maxmemory_human:%s\r\n"
                  "maxmemory_policy:noeviction\r\n",
                  used, used_h, fm_engine_memory_bytes(srv->engine),
                  srv->client_mem_bytes, rss_bytes(),
                  (long long)srv->cfg.maxmemory, max_h);
    size_t n = fm_engine_table_count(srv->engine);
    for (size_t i = 0; i < n; i++) {
        struct fm_table_stats ts;
        fm_engine_table_stats(srv->engine, i, &ts);
        fm_buf_printf(b,
                      "table_%s:row_bytes=%zu,index_bytes=%zu,indexes=%zu"
                      "\r\n",
                      ts.name, ts.row_bytes, ts.index_bytes, ts.n_indexes);
    }
}

static void section_persistence(const struct fm_server *srv, struct fm_buf *b)
{
    struct fm_persist_stats ps;
    fm_engine_persist_stats(srv->engine, &ps);
    /* A failure shows even before the first snapshot ever written. */
    const char *status = !ps.last_save_ok           ? "err"
                         : ps.last_save_time_s == 0 ? "none"
                                                    : "ok";
    fm_buf_printf(
        b,
        "# Persistence\r\n"
        "loading:0\r\n"
        "wal_enabled:%d\r\n"
        "fsync:%s\r\n"
        "wal_next_lsn:%llu\r\n"
        "wal_durable_lsn:%llu\r\n"
        "wal_bytes:%llu\r\n"
        "wal_segments:%llu\r\n"
        "wal_since_snapshot_bytes:%llu\r\n"
        "wal_fsyncs:%llu\r\n"
        "wal_lag_syncs:%llu\r\n"
        "readonly:%d\r\n"
        "readonly_reason:%s\r\n"
        "changes_since_last_snapshot:%llu\r\n"
        "bgsave_in_progress:%d\r\n"
        "last_snapshot_time:%lld\r\n"
        "last_snapshot_status:%s\r\n"
        "last_snapshot_error:%s\r\n"
        "snapshot_failures_in_a_row:%llu\r\n"
        "last_snapshot_lsn:%llu\r\n"
        "last_snapshot_duration_usec:%lld\r\n"
        "last_snapshot_bytes:%llu\r\n"
        "last_snapshot_raw_bytes:%llu\r\n"
        "last_fork_usec:%lld\r\n"
        "last_cow_bytes:%zu\r\n"
        "recovered_rows:%llu\r\n"
        "recovered_wal_records:%llu\r\n"
        "recovery_skipped_regions:%llu\r\n"
        "recovery_lost_lsns:%llu\r\n"
        "recovery_usec:%lld\r\n"
        "rdb_changes_since_last_save:%llu\r\n"
        "rdb_bgsave_in_progress:%d\r\n"
        "rdb_last_save_time:%lld\r\n"
        "rdb_last_bgsave_status:%s\r\n"
        "aof_enabled:0\r\n",
        ps.enabled, fm_fsync_policy_name(ps.fsync),
        (unsigned long long)ps.next_lsn, (unsigned long long)ps.durable_lsn,
        (unsigned long long)ps.wal_bytes, (unsigned long long)ps.wal_segments,
        (unsigned long long)ps.wal_since_snapshot_bytes,
        (unsigned long long)ps.wal_fsyncs, (unsigned long long)ps.wal_lag_syncs,
        ps.readonly, ps.readonly ? ps.readonly_reason : "",
        (unsigned long long)ps.changes_since_save, ps.bgsave_in_progress,
        (long long)ps.last_save_time_s, status, ps.last_save_error,
        (unsigned long long)ps.save_failures,
        (unsigned long long)ps.last_save_lsn,
        (long long)ps.last_save_duration_us,
        (unsigned long long)ps.last_save_bytes,
        (unsigned long long)ps.last_save_raw_bytes, (long long)ps.last_fork_us,
        ps.last_cow_bytes, (unsigned long long)ps.recovered_rows,
        (unsigned long long)ps.recovered_records,
        (unsigned long long)ps.recovery_skipped,
        (unsigned long long)ps.recovery_lsns_lost, (long long)ps.recovery_us,
        (unsigned long long)ps.changes_since_save, ps.bgsave_in_progress,
        (long long)ps.last_save_time_s, ps.last_save_ok ? "ok" : "err");
}

static void section_stats(const struct fm_server *srv, struct fm_buf *b)
{
    uint64_t sum = 0;
    for (size_t i = 0; i < FM_OPS_SAMPLES; i++)
        sum += srv->ops_samples[i];
    fm_buf_printf(b,
                  "# Stats\r\n"
                  "total_connections_received:%llu\r\n"
                  "total_commands_processed:%llu\r\n"
                  "instantaneous_ops_per_sec:%llu\r\n"
                  "total_net_input_bytes:%llu\r\n"
                  "total_net_output_bytes:%llu\r\n"
                  "rejected_connections:%llu\r\n"
                  "total_error_replies:%llu\r\n"
                  "client_query_buffer_limit_disconnections:%llu\r\n"
                  "client_output_buffer_limit_disconnections:%llu\r\n",
                  (unsigned long long)srv->total_connections,
                  (unsigned long long)srv->total_commands,
                  (unsigned long long)(sum / FM_OPS_SAMPLES),
                  (unsigned long long)srv->net_input_bytes,
                  (unsigned long long)srv->net_output_bytes,
                  (unsigned long long)srv->rejected_connections,
                  (unsigned long long)srv->total_errors,
                  (unsigned long long)srv->query_limit_disconnections,
                  (unsigned long long)srv->output_limit_disconnections);
}

static void section_commandstats(const struct fm_server *srv, struct fm_buf *b)
{
    fm_buf_printf(b, "# Commandstats\r\n");
    size_t n = fm_command_count();
    for (size_t i = 0; i <= n; i++) {
        const struct fm_command_stat *s = &srv->cmd_stats[i];
        if (s->calls == 0 && s->rejected == 0)
            continue;
        char name[32];
        const char *src = i < n ? fm_command_defs[i].name : "other";
        size_t k = 0;
        for (; src[k] != '\0' && k + 1 < sizeof(name); k++)
            name[k] =
                (char)((src[k] >= 'A' && src[k] <= 'Z') ? src[k] + 32 : src[k]);
        name[k] = '\0';
        fm_buf_printf(
            b,
            "cmdstat_%s:calls=%llu,usec=%llu,usec_per_call=%.2f,"
            "rejected_calls=%llu,failed_calls=%llu\r\n",
            name, (unsigned long long)s->calls, (unsigned long long)s->usec,
            s->calls > 0 ? (double)s->usec / (double)s->calls : 0.0,
            (unsigned long long)s->rejected, (unsigned long long)s->failed);
    }
}

static void section_keyspace(const struct fm_server *srv, struct fm_buf *b)
{
    fm_buf_printf(b, "# Keyspace\r\n");
    uint64_t rows = fm_engine_row_count(srv->engine);
    if (rows > 0)
        fm_buf_printf(b, "db0:keys=%llu,expires=0,avg_ttl=0\r\n",
                      (unsigned long long)rows);
    size_t n = fm_engine_table_count(srv->engine);
    for (size_t i = 0; i < n; i++) {
        struct fm_table_stats ts;
        fm_engine_table_stats(srv->engine, i, &ts);
        fm_buf_printf(b, "%s:rows=%llu,next_id=%llu\r\n", ts.name,
                      (unsigned long long)ts.n_rows,
                      (unsigned long long)ts.next_id);
    }
}

typedef void (*section_fn)(const struct fm_server *srv, struct fm_buf *b);

static const struct {
    const char *name;
    section_fn fn;
    bool in_default;
} sections[] = {
    {"server", section_server, true},
    {"clients", section_clients, true},
    {"memory", section_memory, true},
    {"persistence", section_persistence, true},
    {"stats", section_stats, true},
    {"commandstats", section_commandstats, false},
    {"keyspace", section_keyspace, true},
};

static bool arg_is(const struct fm_args *a, size_t i, const char *word)
{
    size_t n = strlen(word);
    return i < a->argc && a->argv_len[i] == n &&
           strncasecmp((const char *)a->argv[i], word, n) == 0;
}

void fm_cmd_info(struct fm_client *c, const struct fm_args *a,
                 struct fm_reply *r)
{
    struct fm_server *srv = c->srv;
    struct fm_buf *b = &srv->scratch;
    b->len = 0;
    bool first = true;
    for (size_t s = 0; s < FM_ARRAY_LEN(sections); s++) {
        bool want = a->argc == 1 ? sections[s].in_default : false;
        for (size_t i = 1; i < a->argc && !want; i++)
            want = arg_is(a, i, sections[s].name) || arg_is(a, i, "all") ||
                   arg_is(a, i, "everything") ||
                   (arg_is(a, i, "default") && sections[s].in_default);
        if (!want)
            continue;
        if (!first)
            fm_buf_printf(b, "\r\n");
        first = false;
        sections[s].fn(srv, b);
    }
    fm_reply_bulk(r, b->data, b->len);
}

/* ---- CONFIG ------------------------------------------------------------- */

static void config_get(struct fm_server *srv, const struct fm_args *a,
                       struct fm_reply *r)
{
    struct fm_buf *v = &srv->scratch;
    fm_reply_array(r, 0);
    size_t mark = fm_reply_mark(r);
    size_t n = 0;
    for (size_t i = 0; i < fm_config_count(); i++) {
        const char *name = fm_config_name(i);
        bool match = false;
        for (size_t k = 2; k < a->argc && !match; k++)
            match = fm_config_glob_match((const char *)a->argv[k],
                                         a->argv_len[k], name, strlen(name));
        if (!match)
            continue;
        v->len = 0;
        if (fm_config_format(&srv->cfg, i, v) != FM_OK) {
            r->failed = true;
            return;
        }
        fm_reply_cstr(r, name);
        fm_reply_bulk(r, v->data, v->len);
        n += 2;
    }
    fm_reply_patch_array(r, mark, n);
}

/* Applies what must follow a changed parameter; false with a message when
 * the value cannot be used while running. */
static bool config_check(struct fm_server *srv, size_t i, char *msg, size_t cap)
{
    const char *name = fm_config_name(i);
    if (strcmp(name, "maxclients") == 0 &&
        (size_t)srv->cfg.maxclients > srv->max_clients_at_start) {
        snprintf(msg, cap,
                 "maxclients can be raised up to %zu while running; restart "
                 "with a higher --maxclients to go further",
                 srv->max_clients_at_start);
        return false;
    }
    return true;
}

/* Copies argument i into a NUL-terminated buffer; false if it holds NUL. */
static bool arg_cstr(const struct fm_args *a, size_t i, struct fm_buf *out)
{
    out->len = 0;
    if (memchr(a->argv[i], '\0', a->argv_len[i]) != NULL)
        return false;
    return fm_buf_append(out, a->argv[i], a->argv_len[i]) == FM_OK &&
           fm_buf_push(out, 0) == FM_OK;
}

/* Hands the parameters that live in other modules to them. */
static void apply_config(struct fm_server *srv)
{
    struct fm_snapshot_config sc;
    struct fm_error err = {0};
    srv->log.level = (enum fm_log_level)srv->cfg.loglevel;
    fm_server_snapshot_config(&srv->cfg, &sc);
    fm_engine_set_snapshot_config(srv->engine, &sc);
    if (fm_engine_set_fsync(srv->engine, fm_server_fsync_policy(&srv->cfg),
                            &err) != FM_OK)
        fm_log_write(&srv->log, FM_LOG_WARNING, "Cannot change fsync: %s",
                     err.msg);
}

static void reply_config_error(struct fm_reply *r, const char *name,
                               const char *msg)
{
    char full[FM_ERROR_MSG_CAP + 128];
    snprintf(full, sizeof(full),
             "CONFIG SET failed (possibly related to argument '%s') - %s", name,
             msg);
    fm_reply_error(r, FM_ERR_SYNTAX, full);
}

static void config_set(struct fm_server *srv, const struct fm_args *a,
                       struct fm_reply *r)
{
    size_t n_pairs = (a->argc - 2) / 2;
    struct fm_buf *old = NULL;
    size_t *index = NULL;
    struct fm_buf value = {0};
    size_t done = 0;
    char msg[FM_ERROR_MSG_CAP] = "";
    const char *bad = "";
    if (a->argc < 4 || (a->argc - 2) % 2 != 0) {
        fm_reply_error(r, FM_ERR_SYNTAX,
                       "wrong number of arguments for 'config|set' command");
        return;
    }
    old = fm_calloc(n_pairs, sizeof(*old));
    index = fm_calloc(n_pairs, sizeof(*index));
    if (old == NULL || index == NULL) {
        fm_reply_error(r, FM_ERR_NOMEM, "out of memory");
        goto out;
    }
    for (; done < n_pairs; done++) {
        size_t k = 2 + 2 * done;
        char name[64];
        fm_format_value(name, sizeof(name), a->argv[k], a->argv_len[k]);
        bad = "";
        if (!fm_config_find((const char *)a->argv[k], a->argv_len[k],
                            &index[done])) {
            snprintf(msg, sizeof(msg),
                     "Unknown option or number of arguments for CONFIG SET "
                     "- '%s'",
                     name);
            break;
        }
        bad = fm_config_name(index[done]);
        struct fm_error err = {0};
        if (fm_config_format(&srv->cfg, index[done], &old[done]) != FM_OK ||
            fm_buf_push(&old[done], 0) != FM_OK ||
            !arg_cstr(a, k + 1, &value)) {
            snprintf(msg, sizeof(msg), "invalid value");
            break;
        }
        if (fm_config_set(&srv->cfg, index[done], (const char *)value.data,
                          true, &err) != FM_OK) {
            snprintf(msg, sizeof(msg), "%s", err.msg);
            break;
        }
        if (!config_check(srv, index[done], msg, sizeof(msg))) {
            done++; /* this one was set: undo it too */
            break;
        }
    }
    if (msg[0] != '\0') {
        for (size_t i = done; i-- > 0;)
            fm_config_set(&srv->cfg, index[i], (const char *)old[i].data, true,
                          NULL);
        if (bad[0] != '\0')
            reply_config_error(r, bad, msg);
        else
            fm_reply_error(r, FM_ERR_SYNTAX, msg);
        goto out;
    }
    apply_config(srv);
    fm_reply_status(r, "OK");
out:
    for (size_t i = 0; old != NULL && i < n_pairs; i++)
        fm_buf_fini(&old[i]);
    fm_free(old);
    fm_free(index);
    fm_buf_fini(&value);
}

static void reset_stats(struct fm_server *srv)
{
    memset(srv->cmd_stats, 0,
           (fm_command_count() + 1) * sizeof(*srv->cmd_stats));
    srv->total_connections = 0;
    srv->rejected_connections = 0;
    srv->total_commands = 0;
    srv->total_errors = 0;
    srv->net_input_bytes = 0;
    srv->net_output_bytes = 0;
    srv->output_limit_disconnections = 0;
    srv->query_limit_disconnections = 0;
    srv->ops_last_commands = 0;
    memset(srv->ops_samples, 0, sizeof(srv->ops_samples));
}

void fm_cmd_config(struct fm_client *c, const struct fm_args *a,
                   struct fm_reply *r)
{
    struct fm_server *srv = c->srv;
    if (arg_is(a, 1, "GET") && a->argc >= 3) {
        config_get(srv, a, r);
    } else if (arg_is(a, 1, "SET")) {
        config_set(srv, a, r);
    } else if (arg_is(a, 1, "RESETSTAT") && a->argc == 2) {
        reset_stats(srv);
        fm_reply_status(r, "OK");
    } else if (arg_is(a, 1, "HELP")) {
        static const char *const lines[] = {
            "CONFIG <subcommand> [<arg> ...]. Subcommands are:",
            "GET <pattern> [<pattern> ...]",
            "SET <parameter> <value> [<parameter> <value> ...]", "RESETSTAT"};
        fm_reply_array(r, FM_ARRAY_LEN(lines));
        for (size_t i = 0; i < FM_ARRAY_LEN(lines); i++)
            fm_reply_status(r, lines[i]);
    } else {
        char sub[80];
        fm_format_value(sub, sizeof(sub), a->argv[1], a->argv_len[1]);
        char msg[160];
        snprintf(msg, sizeof(msg),
                 "unknown subcommand or wrong number of arguments for '%s'. "
                 "Try CONFIG HELP.",
                 sub);
        fm_reply_error(r, FM_ERR_SYNTAX, msg);
    }
}
