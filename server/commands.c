/*
 * commands.c: the command table, dispatch, and the commands that the server
 * answers itself (SPEC section 3).
 *
 * Dispatch of one request, in order:
 *   1. look the name up in fm_command_defs (case-insensitive); a name the
 *      table lacks but the engine knows (fm_engine_has_command) is still
 *      an engine command, so the engine can grow commands without a change
 *      here; anything else is "-ERR unknown command 'x', with args
 *      beginning with: ..." in Redis' words;
 *   2. AUTH: with requirepass set, an unauthenticated client may run only
 *      the commands flagged FM_CMD_NOAUTH (AUTH, HELLO, QUIT):
 *      -NOAUTH;
 *   3. arity, in Redis' convention (n exactly, -n at least n);
 *   4. maxmemory: an engine write while the server uses more than maxmemory
 *      gets -OOM; reads and DELETE (which frees memory) go on (SPEC 5);
 *   5. inside MULTI, commands other than those flagged FM_CMD_NOQUEUE
 *      (EXEC, DISCARD, MULTI, QUIT, ...) are queued (copied, since the
 *      request's bytes live in a read buffer that the next read reuses) and
 *      answered +QUEUED. Only engine commands can be queued:
 *      fm_engine_exec_multi runs the queue as one atomic transaction, and a
 *      server command (PING, DBSIZE) has no place inside it, so queuing one
 *      is an error. Any error while queuing marks the transaction, and EXEC
 *      then answers -EXECABORT and runs nothing;
 *   6. run: the engine's fm_engine_exec, or the handler here.
 * Every handler appends exactly one top-level value to the reply (SHUTDOWN
 * none, as in Redis), which is then encoded onto the client's output.
 *
 * The lookup of step 1 is a small open-addressing hash of the table
 * (struct fm_command_index, built when the server starts) keyed by length
 * and first and last letters, then one case-insensitive comparison: a
 * linear scan with strncasecmp per entry cost about 2% of a pipelined
 * UPSERT benchmark.
 *
 * Statistics: every request counts in total_commands; each table entry
 * (and one "other" slot for engine commands the table lacks) counts calls,
 * microseconds, failed calls (the reply is an error) and rejected calls
 * (refused before running), as Redis' commandstats. The clock is read once
 * per command that runs: its reading ends this command and starts the
 * next one of the same read (the first starts at the read), so a command's
 * time includes parsing it and encoding the previous reply. Reading the
 * clock before and after each command cost about 4% of that benchmark on
 * a paravirtualised guest.
 *
 * Group commit (SPEC section 4, docs/durability.md): once a command of the
 * current loop turn has written, every client that runs a command before
 * the turn's WAL flush is marked at that command's reply (mark_turn), so
 * that a failed flush withholds every reply that may have seen a write it
 * rolled back, reads and other clients' commands included.
 *
 * AUTH compares passwords in time that depends only on the length of the
 * password the client sent, never on where the first difference is.
 *
 * Compatibility commands (HELLO, COMMAND, CLIENT, SELECT) answer what
 * redis-cli 7, redis-benchmark 7 and client libraries ask on connect:
 * redis-cli sends COMMAND DOCS in interactive mode, client libraries send
 * HELLO, CLIENT SETINFO and SELECT, redis-benchmark sends CONFIG GET save
 * and CONFIG GET appendonly (info.c).
 */
#include "server/server_int.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <strings.h>

static void cmd_ping(struct fm_client *c, const struct fm_args *a,
                     struct fm_reply *r);
static void cmd_echo(struct fm_client *c, const struct fm_args *a,
                     struct fm_reply *r);
static void cmd_quit(struct fm_client *c, const struct fm_args *a,
                     struct fm_reply *r);
static void cmd_auth(struct fm_client *c, const struct fm_args *a,
                     struct fm_reply *r);
static void cmd_hello(struct fm_client *c, const struct fm_args *a,
                      struct fm_reply *r);
static void cmd_select(struct fm_client *c, const struct fm_args *a,
                       struct fm_reply *r);
static void cmd_client(struct fm_client *c, const struct fm_args *a,
                       struct fm_reply *r);
static void cmd_command(struct fm_client *c, const struct fm_args *a,
                        struct fm_reply *r);
static void cmd_multi(struct fm_client *c, const struct fm_args *a,
                      struct fm_reply *r);
static void cmd_exec(struct fm_client *c, const struct fm_args *a,
                     struct fm_reply *r);
static void cmd_discard(struct fm_client *c, const struct fm_args *a,
                        struct fm_reply *r);
static void cmd_dbsize(struct fm_client *c, const struct fm_args *a,
                       struct fm_reply *r);
static void cmd_shutdown(struct fm_client *c, const struct fm_args *a,
                         struct fm_reply *r);
static void cmd_help(struct fm_client *c, const struct fm_args *a,
                     struct fm_reply *r);
static void cmd_save(struct fm_client *c, const struct fm_args *a,
                     struct fm_reply *r);

#define NOAUTH  FM_CMD_NOAUTH
#define NOQUEUE FM_CMD_NOQUEUE
#define ENGINE  FM_CMD_ENGINE

const struct fm_command_def fm_command_defs[] = {
    /* Data commands: executed by the engine (docs/commands.md). Their
     * arities are the engine's minimums, so that the engine, which knows
     * each command's grammar, words every other argument error. */
    {"INSERT", NULL, -2, ENGINE, "INSERT table col val [col val ...]",
     "insert a row; replies its id"},
    {"GET", NULL, -3, ENGINE, "GET table id", "the row with this id, or nil"},
    {"FIND", NULL, -2, ENGINE,
     "FIND table [WHERE col op val [AND ...]] [ORDER BY col [ASC|DESC]] "
     "[LIMIT n [OFFSET m]]",
     "rows matching the conditions"},
    {"COUNT", NULL, -2, ENGINE, "COUNT table [WHERE ...]",
     "the number of matching rows"},
    {"EXPLAIN", NULL, -3, ENGINE, "EXPLAIN FIND ...",
     "the query plan of a FIND"},
    {"UPDATE", NULL, -3, ENGINE, "UPDATE table id col val [col val ...]",
     "change columns of a row; :1 if updated, :0 if no such row"},
    {"INCR", NULL, -2, ENGINE, "INCR table id col delta",
     "add delta to an integer column; replies the new value"},
    {"UPSERT", NULL, -2, ENGINE,
     "UPSERT table keycol val [keycol val ...] [SET col val ...] "
     "[INCR col delta ...]",
     "insert or update the row with this unique key; replies its id"},
    {"DELETE", NULL, -3, ENGINE, "DELETE table id | DELETE table WHERE ...",
     "remove rows, cascades included; replies the count"},
    {"TABLES", NULL, -1, ENGINE, "TABLES", "the names of the tables"},
    {"SCHEMA", NULL, -1, ENGINE, "SCHEMA [table]", "the DDL text"},
    /* Server commands. */
    {"PING", cmd_ping, -1, 0, "PING [message]", "+PONG, or the message"},
    {"ECHO", cmd_echo, 2, 0, "ECHO message", "the message"},
    {"QUIT", cmd_quit, -1, NOAUTH | NOQUEUE, "QUIT",
     "+OK, then close the connection"},
    {"AUTH", cmd_auth, -2, NOAUTH | NOQUEUE, "AUTH [username] password",
     "authenticate (requirepass)"},
    {"HELLO", cmd_hello, -1, NOAUTH | NOQUEUE,
     "HELLO [2 [AUTH username password] [SETNAME name]]",
     "handshake: server facts; RESP2 only"},
    {"SELECT", cmd_select, 2, 0, "SELECT 0", "there is one database, 0"},
    {"CLIENT", cmd_client, -2, NOQUEUE,
     "CLIENT SETNAME|GETNAME|SETINFO|ID|LIST|INFO ...",
     "connection name and facts"},
    {"COMMAND", cmd_command, -1, NOQUEUE, "COMMAND [COUNT|DOCS|INFO|LIST ...]",
     "facts about commands"},
    {"MULTI", cmd_multi, 1, NOQUEUE, "MULTI", "start a transaction"},
    {"EXEC", cmd_exec, 1, NOQUEUE, "EXEC",
     "run the queued commands atomically: all or nothing"},
    {"DISCARD", cmd_discard, 1, NOQUEUE, "DISCARD", "drop the queued commands"},
    {"INFO", fm_cmd_info, -1, NOQUEUE, "INFO [section ...]",
     "server facts as key:value text"},
    {"DBSIZE", cmd_dbsize, 1, 0, "DBSIZE", "rows in all tables"},
    {"CONFIG", fm_cmd_config, -2, NOQUEUE,
     "CONFIG GET pattern | CONFIG SET name value [name value ...] | "
     "CONFIG RESETSTAT",
     "read or change parameters"},
    {"SHUTDOWN", cmd_shutdown, -1, NOQUEUE, "SHUTDOWN [SAVE|NOSAVE]",
     "flush, snapshot unless NOSAVE, exit"},
    {"HELP", cmd_help, -1, NOQUEUE, "HELP", "this list"},
    {"SAVE", cmd_save, 1, 0, "SAVE", "snapshot now (blocking)"},
    {"BGSAVE", cmd_save, -1, 0, "BGSAVE", "snapshot in the background"},
    {"LASTSAVE", cmd_save, 1, 0, "LASTSAVE", "unix time of the last snapshot"},
};

size_t fm_command_count(void)
{
    return FM_ARRAY_LEN(fm_command_defs);
}

static uint8_t fold_upper(uint8_t ch)
{
    return ch >= 'a' && ch <= 'z' ? (uint8_t)(ch - 32) : ch;
}

/* The slot where the probe for a name starts: a mix of its length and its
 * first and last letters, case folded. Names that share a slot follow each
 * other (linear probing). */
static size_t index_hash(const uint8_t *name, size_t len)
{
    size_t h = len * 7 + (size_t)fold_upper(name[0]) * 31 +
               (size_t)fold_upper(name[len - 1]) * 131;
    return h & (FM_COMMAND_INDEX_SLOTS - 1);
}

void fm_command_index_init(struct fm_command_index *idx)
{
    FM_ASSERT(FM_ARRAY_LEN(fm_command_defs) < FM_COMMAND_INDEX_SLOTS);
    memset(idx, 0, sizeof(*idx));
    for (size_t i = 0; i < FM_ARRAY_LEN(fm_command_defs); i++) {
        const char *n = fm_command_defs[i].name;
        size_t h = index_hash((const uint8_t *)n, strlen(n));
        while (idx->slot[h] != 0)
            h = (h + 1) & (FM_COMMAND_INDEX_SLOTS - 1);
        idx->slot[h] = (uint8_t)(i + 1);
    }
}

/* True when name[0, len) is the upper-case, NUL-terminated def, ignoring
 * the case of name. */
static bool name_matches(const char *def, const uint8_t *name, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        if (def[i] == '\0' || (uint8_t)def[i] != fold_upper(name[i]))
            return false;
    }
    return def[len] == '\0';
}

const struct fm_command_def *
fm_command_lookup(const struct fm_command_index *idx, const uint8_t *name,
                  size_t len)
{
    if (len == 0)
        return NULL;
    /* The table holds fewer names than slots, so an empty slot ends every
     * probe sequence. */
    for (size_t h = index_hash(name, len); idx->slot[h] != 0;
         h = (h + 1) & (FM_COMMAND_INDEX_SLOTS - 1)) {
        const struct fm_command_def *cmd = &fm_command_defs[idx->slot[h] - 1];
        if (name_matches(cmd->name, name, len))
            return cmd;
    }
    return NULL;
}

/* True when argument i equals word, ignoring ASCII case. */
static bool arg_is(const struct fm_args *a, size_t i, const char *word)
{
    size_t n = strlen(word);
    return i < a->argc && a->argv_len[i] == n &&
           strncasecmp((const char *)a->argv[i], word, n) == 0;
}

static void reply_errorf(struct fm_reply *r, fm_status st, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

static void reply_errorf(struct fm_reply *r, fm_status st, const char *fmt, ...)
{
    char msg[FM_ERROR_MSG_CAP];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    fm_reply_error(r, st, msg);
}

/* Parses argument i as a decimal int64. */
static bool arg_int(const struct fm_args *a, size_t i, int64_t *out)
{
    char buf[24];
    if (i >= a->argc || a->argv_len[i] == 0 || a->argv_len[i] >= sizeof(buf))
        return false;
    memcpy(buf, a->argv[i], a->argv_len[i]);
    buf[a->argv_len[i]] = '\0';
    char *end;
    long long v = strtoll(buf, &end, 10);
    if (*end != '\0')
        return false;
    *out = v;
    return true;
}

static void lower_name(const char *name, char *out, size_t cap)
{
    size_t i = 0;
    for (; name[i] != '\0' && i + 1 < cap; i++)
        out[i] =
            (char)((name[i] >= 'A' && name[i] <= 'Z') ? name[i] + 32 : name[i]);
    out[i] = '\0';
}

/* ---- dispatch ---------------------------------------------------------- */

static void reply_unknown(const struct fm_args *a, struct fm_reply *r)
{
    char name[160];
    char args[160] = "";
    size_t n = 0;
    fm_format_value(name, sizeof(name), a->argv[0],
                    a->argv_len[0] > 128 ? 128 : a->argv_len[0]);
    for (size_t i = 1; i < a->argc && n < 128; i++) {
        char one[80];
        fm_format_value(one, sizeof(one), a->argv[i], a->argv_len[i]);
        int w = snprintf(args + n, sizeof(args) - n, "'%s' ", one);
        if (w < 0 || (size_t)w >= sizeof(args) - n)
            break;
        n += (size_t)w;
    }
    reply_errorf(r, FM_ERR_SYNTAX,
                 "unknown command '%s', with args beginning with: %s", name,
                 args);
}

static bool arity_ok(const struct fm_command_def *cmd, size_t argc)
{
    if (cmd->arity >= 0)
        return argc == (size_t)cmd->arity;
    return argc >= (size_t)-cmd->arity;
}

size_t fm_server_used_memory(const struct fm_server *srv)
{
    return fm_engine_memory_bytes(srv->engine) + srv->client_mem_bytes;
}

static bool is_over_maxmemory(const struct fm_server *srv)
{
    return srv->cfg.maxmemory > 0 &&
           fm_server_used_memory(srv) > (size_t)srv->cfg.maxmemory;
}

void fm_client_discard_multi(struct fm_client *c)
{
    for (size_t i = 0; i < c->n_multi; i++)
        fm_free((void *)c->multi[i].argv);
    c->n_multi = 0;
    c->multi_bytes = 0;
    c->flags &= ~(FM_CLIENT_MULTI | FM_CLIENT_DIRTY_EXEC);
}

/* Copies a command into the MULTI queue; an error reply when it cannot. */
static void queue_command(struct fm_client *c, const struct fm_args *a,
                          struct fm_reply *r)
{
    struct fm_server *srv = c->srv;
    /* Argument bytes are bounded by the query buffer limit, so this sum
     * cannot overflow. */
    size_t bytes = a->argc * (sizeof(uint8_t *) + sizeof(size_t));
    for (size_t i = 0; i < a->argc; i++)
        bytes += a->argv_len[i];
    if (c->n_multi >= (size_t)srv->cfg.max_multi_commands ||
        c->multi_bytes + bytes > (size_t)srv->cfg.client_query_buffer_limit) {
        reply_errorf(r, FM_ERR_LIMIT,
                     "transaction over max-multi-commands %lld or "
                     "client-query-buffer-limit %lld bytes",
                     (long long)srv->cfg.max_multi_commands,
                     (long long)srv->cfg.client_query_buffer_limit);
        goto fail;
    }
    if (c->n_multi == c->multi_cap) {
        size_t cap = c->multi_cap < 8 ? 8 : c->multi_cap * 2;
        struct fm_queued_cmd *grown =
            fm_realloc(c->multi, cap * sizeof(*grown));
        if (grown == NULL)
            goto fail_nomem;
        c->multi = grown;
        c->multi_cap = cap;
    }
    uint8_t *block = fm_malloc(bytes);
    if (block == NULL)
        goto fail_nomem;
    struct fm_queued_cmd *q = &c->multi[c->n_multi++];
    q->argc = a->argc;
    q->argv = (const uint8_t **)(void *)block;
    q->argv_len = (size_t *)(void *)(block + a->argc * sizeof(uint8_t *));
    q->bytes = bytes;
    uint8_t *data = block + a->argc * (sizeof(uint8_t *) + sizeof(size_t));
    for (size_t i = 0; i < a->argc; i++) {
        if (a->argv_len[i] > 0)
            memcpy(data, a->argv[i], a->argv_len[i]);
        q->argv[i] = data;
        q->argv_len[i] = a->argv_len[i];
        data += a->argv_len[i];
    }
    c->multi_bytes += bytes;
    fm_reply_status(r, "QUEUED");
    return;
fail_nomem:
    fm_reply_error(r, FM_ERR_NOMEM, "out of memory queuing the command");
fail:
    c->flags |= FM_CLIENT_DIRTY_EXEC;
}

/*
 * Whether the client may run commands other than AUTH, HELLO and QUIT.
 * Asked at every command rather than fixed at accept: with no password
 * configured every client is authenticated, including one that connected
 * while a password was set and never gave it (as Redis does; a flag set at
 * accept would lock it out after CONFIG SET requirepass ""). A password
 * set later applies to such a client again.
 */
static bool is_authenticated(const struct fm_client *c)
{
    return (c->flags & FM_CLIENT_AUTHED) || c->srv->cfg.requirepass[0] == '\0';
}

/* Checks that come before running or queuing; false with an error. */
static bool admit_command(struct fm_client *c, const struct fm_command_def *cmd,
                          bool engine, const struct fm_args *a,
                          struct fm_reply *r)
{
    if (cmd == NULL && !engine) {
        reply_unknown(a, r);
        return false;
    }
    if (!is_authenticated(c) &&
        (cmd == NULL || !(cmd->flags & FM_CMD_NOAUTH))) {
        fm_reply_error(r, FM_ERR_NOAUTH, "Authentication required.");
        return false;
    }
    if (cmd != NULL && !arity_ok(cmd, a->argc)) {
        char name[32];
        lower_name(cmd->name, name, sizeof(name));
        reply_errorf(r, FM_ERR_SYNTAX,
                     "wrong number of arguments for '%s' command", name);
        return false;
    }
    /* DELETE is let through, as Redis lets DEL through: it frees memory.
     * The memory test comes first: it is the cheap one, and false unless
     * maxmemory is set. */
    if (engine && is_over_maxmemory(c->srv) &&
        fm_engine_command_is_write(a->argv[0], a->argv_len[0]) &&
        !arg_is(a, 0, "DELETE")) {
        reply_errorf(r, FM_ERR_OOM,
                     "command not allowed when used memory > 'maxmemory' "
                     "(%zu > %lld bytes)",
                     fm_server_used_memory(c->srv),
                     (long long)c->srv->cfg.maxmemory);
        return false;
    }
    return true;
}

/*
 * Group commit bookkeeping after a command ran (or was refused): a write
 * starts the turn's exposure, and from then until the flush every client
 * that runs anything is marked at the start of this reply, since what it
 * read, or a failure it got, may rest on writes that the flush could still
 * roll back (SPEC section 4, docs/durability.md).
 */
static void mark_turn(struct fm_client *c, bool wrote, bool began_multi)
{
    struct fm_server *srv = c->srv;
    if (wrote)
        srv->turn_wrote = true;
    if (!srv->turn_wrote)
        return;
    if (!c->turn_marked) {
        c->turn_marked = true;
        c->turn_mark = c->out.len;
        c->turn_n_replies = 0;
        c->turn_began_multi = false;
    }
    if (began_multi)
        c->turn_began_multi = true;
}

void fm_client_execute(struct fm_client *c, const struct fm_args *a)
{
    struct fm_server *srv = c->srv;
    struct fm_reply *r = &srv->reply;
    bool wrote = false;
    bool began_multi = false;
    fm_reply_reset(r);
    const struct fm_command_def *cmd =
        fm_command_lookup(&srv->cmd_index, a->argv[0], a->argv_len[0]);
    bool engine = cmd != NULL
                      ? (cmd->flags & FM_CMD_ENGINE) != 0
                      : fm_engine_has_command(a->argv[0], a->argv_len[0]);
    size_t slot = cmd != NULL ? (size_t)(cmd - fm_command_defs)
                              : FM_ARRAY_LEN(fm_command_defs);
    struct fm_command_stat *stat = &srv->cmd_stats[slot];
    c->last_cmd = cmd != NULL ? cmd->name : (engine ? "OTHER" : "UNKNOWN");
    srv->total_commands++;
    bool queue = (c->flags & FM_CLIENT_MULTI) &&
                 (cmd == NULL || !(cmd->flags & FM_CMD_NOQUEUE));
    if (!admit_command(c, cmd, engine, a, r)) {
        if (cmd != NULL || engine)
            stat->rejected++;
        if (c->flags & FM_CLIENT_MULTI)
            c->flags |= FM_CLIENT_DIRTY_EXEC;
        srv->total_errors++;
        goto out;
    }
    if (queue) {
        if (!engine) {
            char name[32];
            lower_name(cmd->name, name, sizeof(name));
            reply_errorf(r, FM_ERR_SYNTAX,
                         "'%s' cannot be queued: only data commands can be "
                         "part of a transaction",
                         name);
            c->flags |= FM_CLIENT_DIRTY_EXEC;
            srv->total_errors++;
            goto out;
        }
        queue_command(c, a, r);
        goto out;
    }
    bool was_multi = (c->flags & FM_CLIENT_MULTI) != 0;
    if (engine)
        fm_engine_exec(srv->engine, a->argc, a->argv, a->argv_len, r);
    else
        cmd->fn(c, a, r);
    /* One clock reading per command: it ends this command and starts the
     * next one of the batch (the caller set cmd_clock_us at the read), so
     * parsing and encoding between commands count towards the next. */
    int64_t now_us = fm_monotonic_us();
    stat->usec += (uint64_t)(now_us - srv->cmd_clock_us);
    srv->cmd_clock_us = now_us;
    stat->calls++;
    /* A reply over the output limit is no error of the command: the client
     * is closed for its output (network.c), and a write it made counts. */
    bool failed = fm_reply_is_error(r) && !r->over_limit;
    if (failed) {
        stat->failed++;
        srv->total_errors++;
    }
    wrote = !failed && (engine || (cmd != NULL && cmd->fn == cmd_exec)) &&
            fm_engine_last_exec_wrote(srv->engine);
    began_multi = !was_multi && (c->flags & FM_CLIENT_MULTI);
out:
    mark_turn(c, wrote, began_multi);
    size_t out_len = c->out.len;
    fm_client_append_reply(c, r);
    /* SHUTDOWN appends nothing, and a client closed for its output limit
     * has no output left. */
    if (c->turn_marked && c->out.len > out_len)
        c->turn_n_replies++;
}

/* ---- connection commands ---------------------------------------------- */

static void cmd_ping(struct fm_client *c, const struct fm_args *a,
                     struct fm_reply *r)
{
    (void)c;
    if (a->argc > 2)
        fm_reply_error(r, FM_ERR_SYNTAX,
                       "wrong number of arguments for 'ping' command");
    else if (a->argc == 2)
        fm_reply_bulk(r, a->argv[1], a->argv_len[1]);
    else
        fm_reply_status(r, "PONG");
}

static void cmd_echo(struct fm_client *c, const struct fm_args *a,
                     struct fm_reply *r)
{
    (void)c;
    fm_reply_bulk(r, a->argv[1], a->argv_len[1]);
}

static void cmd_quit(struct fm_client *c, const struct fm_args *a,
                     struct fm_reply *r)
{
    (void)a;
    fm_reply_status(r, "OK");
    fm_client_close_after_reply(c);
}

/*
 * Compares the password sent with the configured one in time that depends
 * on the sent length only: every byte of the sent password is compared,
 * against the configured one repeated, and the lengths are compared too.
 */
static bool password_matches(const char *want, const uint8_t *got,
                             size_t got_len)
{
    size_t want_len = strlen(want);
    volatile uint8_t diff = (uint8_t)(want_len != got_len);
    for (size_t i = 0; i < got_len; i++) {
        uint8_t w = want_len > 0 ? (uint8_t)want[i % want_len] : 0;
        diff |= (uint8_t)(w ^ got[i]);
    }
    return diff == 0;
}

/*
 * Checks [user] password: FM_OK and the client is authenticated, or the
 * error reply is appended and its status returned.
 */
static fm_status authenticate(struct fm_client *c, const uint8_t *user,
                              size_t user_len, const uint8_t *pass,
                              size_t pass_len, struct fm_reply *r)
{
    const char *want = c->srv->cfg.requirepass;
    if (want[0] == '\0') {
        fm_reply_error(r, FM_ERR_SYNTAX,
                       "AUTH <password> called without any password "
                       "configured for the default user. Are you sure your "
                       "configuration is correct?");
        return FM_ERR_SYNTAX;
    }
    bool user_ok =
        user == NULL ||
        (user_len == 7 && strncasecmp((const char *)user, "default", 7) == 0);
    bool pass_ok = password_matches(want, pass, pass_len);
    if (!user_ok || !pass_ok) {
        fm_log_write(&c->srv->log, FM_LOG_VERBOSE,
                     "Failed AUTH from client id=%llu %s",
                     (unsigned long long)c->id, c->addr);
        fm_reply_error(r, FM_ERR_WRONGPASS,
                       "invalid username-password pair or user is disabled.");
        return FM_ERR_WRONGPASS;
    }
    c->flags |= FM_CLIENT_AUTHED;
    return FM_OK;
}

static void cmd_auth(struct fm_client *c, const struct fm_args *a,
                     struct fm_reply *r)
{
    if (a->argc > 3) {
        fm_reply_error(r, FM_ERR_SYNTAX, "syntax error");
        return;
    }
    fm_status st;
    if (a->argc == 2)
        st = authenticate(c, NULL, 0, a->argv[1], a->argv_len[1], r);
    else
        st = authenticate(c, a->argv[1], a->argv_len[1], a->argv[2],
                          a->argv_len[2], r);
    if (st == FM_OK)
        fm_reply_status(r, "OK");
}

static bool set_client_name(struct fm_client *c, const uint8_t *p, size_t len,
                            struct fm_reply *r)
{
    for (size_t i = 0; i < len; i++) {
        if (p[i] <= ' ' || p[i] > '~') {
            fm_reply_error(r, FM_ERR_SYNTAX,
                           "Client names cannot contain spaces, newlines or "
                           "special characters.");
            return false;
        }
    }
    char *name = NULL;
    if (len > 0) {
        name = fm_malloc(len + 1);
        if (name == NULL) {
            fm_reply_error(r, FM_ERR_NOMEM, "out of memory");
            return false;
        }
        memcpy(name, p, len);
        name[len] = '\0';
    }
    fm_free(c->name);
    c->name = name;
    return true;
}

static void reply_hello(const struct fm_client *c, struct fm_reply *r)
{
    fm_reply_array(r, 14);
    fm_reply_cstr(r, "server");
    fm_reply_cstr(r, "fermata");
    fm_reply_cstr(r, "version");
    fm_reply_cstr(r, FM_SERVER_VERSION);
    fm_reply_cstr(r, "proto");
    fm_reply_int(r, 2);
    fm_reply_cstr(r, "id");
    fm_reply_int(r, (int64_t)c->id);
    fm_reply_cstr(r, "mode");
    fm_reply_cstr(r, "standalone");
    fm_reply_cstr(r, "role");
    fm_reply_cstr(r, "master");
    fm_reply_cstr(r, "modules");
    fm_reply_array(r, 0);
}

static void cmd_hello(struct fm_client *c, const struct fm_args *a,
                      struct fm_reply *r)
{
    size_t i = 1;
    if (a->argc >= 2) {
        int64_t ver;
        if (!arg_int(a, 1, &ver)) {
            fm_reply_error(r, FM_ERR_SYNTAX,
                           "Protocol version is not an integer or out of "
                           "range");
            return;
        }
        if (ver != 2) {
            fm_reply_error(r, FM_ERR_NOPROTO,
                           "unsupported protocol version: fermata speaks "
                           "RESP2 only");
            return;
        }
        i = 2;
    }
    /* Options are all checked before any of them takes effect. */
    size_t auth_at = 0;
    size_t name_at = 0;
    for (; i < a->argc; i++) {
        if (arg_is(a, i, "AUTH") && i + 2 < a->argc) {
            auth_at = i;
            i += 2;
        } else if (arg_is(a, i, "SETNAME") && i + 1 < a->argc) {
            name_at = i;
            i += 1;
        } else {
            char opt[80];
            fm_format_value(opt, sizeof(opt), a->argv[i], a->argv_len[i]);
            reply_errorf(r, FM_ERR_SYNTAX, "Syntax error in HELLO option '%s'",
                         opt);
            return;
        }
    }
    /* Without requirepass the default user needs no password, and HELLO's
     * AUTH option succeeds as it does in Redis (plain AUTH says why it is
     * pointless instead). */
    if (auth_at > 0 && c->srv->cfg.requirepass[0] != '\0' &&
        authenticate(c, a->argv[auth_at + 1], a->argv_len[auth_at + 1],
                     a->argv[auth_at + 2], a->argv_len[auth_at + 2],
                     r) != FM_OK)
        return;
    if (!is_authenticated(c)) {
        fm_reply_error(r, FM_ERR_NOAUTH,
                       "HELLO must be called with the client already "
                       "authenticated, otherwise the HELLO <proto> AUTH "
                       "<user> <pass> option can be used to authenticate the "
                       "client and select the RESP protocol version at the "
                       "same time");
        return;
    }
    if (name_at > 0 &&
        !set_client_name(c, a->argv[name_at + 1], a->argv_len[name_at + 1], r))
        return;
    reply_hello(c, r);
}

static void cmd_select(struct fm_client *c, const struct fm_args *a,
                       struct fm_reply *r)
{
    (void)c;
    int64_t db;
    if (!arg_int(a, 1, &db))
        fm_reply_error(r, FM_ERR_SYNTAX,
                       "value is not an integer or out of range");
    else if (db != 0)
        fm_reply_error(r, FM_ERR_SYNTAX,
                       "DB index is out of range (fermata has one database, "
                       "0)");
    else
        fm_reply_status(r, "OK");
}

/* Appends one CLIENT LIST line for c to out. */
static void format_client(const struct fm_client *c, int64_t now,
                          struct fm_buf *out)
{
    fm_buf_printf(out,
                  "id=%llu addr=%s laddr=%s fd=%d name=%s age=%lld "
                  "idle=%lld flags=%s db=0 multi=%lld qbuf=%zu obl=%zu "
                  "tot-mem=%zu cmd=%s lib-name=%s lib-ver=%s\n",
                  (unsigned long long)c->id, c->addr, c->laddr, c->fd,
                  c->name != NULL ? c->name : "",
                  (long long)((now - c->created_us) / 1000000),
                  (long long)((now - c->last_io_us) / 1000000),
                  (c->flags & FM_CLIENT_MULTI) ? "x" : "N",
                  (c->flags & FM_CLIENT_MULTI) ? (long long)c->n_multi : -1LL,
                  c->in.len, c->out.len - c->out_sent,
                  fm_client_memory_bytes(c),
                  c->last_cmd != NULL ? c->last_cmd : "NULL",
                  c->lib_name != NULL ? c->lib_name : "",
                  c->lib_ver != NULL ? c->lib_ver : "");
}

static void client_setinfo(struct fm_client *c, const struct fm_args *a,
                           struct fm_reply *r)
{
    char **field;
    if (arg_is(a, 2, "LIB-NAME")) {
        field = &c->lib_name;
    } else if (arg_is(a, 2, "LIB-VER")) {
        field = &c->lib_ver;
    } else {
        char opt[80];
        fm_format_value(opt, sizeof(opt), a->argv[2], a->argv_len[2]);
        reply_errorf(r, FM_ERR_SYNTAX, "Unrecognized option '%s'", opt);
        return;
    }
    size_t len = a->argv_len[3] > 128 ? 128 : a->argv_len[3];
    char *v = fm_malloc(len + 1);
    if (v == NULL) {
        fm_reply_error(r, FM_ERR_NOMEM, "out of memory");
        return;
    }
    /* Stored printable, since CLIENT LIST shows it space-separated. */
    for (size_t i = 0; i < len; i++)
        v[i] = (a->argv[3][i] > ' ' && a->argv[3][i] <= '~')
                   ? (char)a->argv[3][i]
                   : '_';
    v[len] = '\0';
    fm_free(*field);
    *field = v;
    fm_reply_status(r, "OK");
}

static void client_help(struct fm_reply *r)
{
    static const char *const lines[] = {
        "CLIENT <subcommand> [<arg> ...]. Subcommands are:",
        "SETNAME <name>",
        "GETNAME",
        "SETINFO LIB-NAME|LIB-VER <value>",
        "ID",
        "LIST",
        "INFO",
    };
    fm_reply_array(r, FM_ARRAY_LEN(lines));
    for (size_t i = 0; i < FM_ARRAY_LEN(lines); i++)
        fm_reply_status(r, lines[i]);
}

static void cmd_client(struct fm_client *c, const struct fm_args *a,
                       struct fm_reply *r)
{
    struct fm_buf *text = &c->srv->scratch;
    int64_t now = fm_monotonic_us();
    text->len = 0;
    if (arg_is(a, 1, "SETNAME") && a->argc == 3) {
        if (set_client_name(c, a->argv[2], a->argv_len[2], r))
            fm_reply_status(r, "OK");
    } else if (arg_is(a, 1, "GETNAME") && a->argc == 2) {
        if (c->name != NULL)
            fm_reply_cstr(r, c->name);
        else
            fm_reply_nil(r);
    } else if (arg_is(a, 1, "SETINFO") && a->argc == 4) {
        client_setinfo(c, a, r);
    } else if (arg_is(a, 1, "ID") && a->argc == 2) {
        fm_reply_int(r, (int64_t)c->id);
    } else if (arg_is(a, 1, "LIST")) {
        for (const struct fm_client *o = c->srv->clients; o != NULL;
             o = o->next)
            format_client(o, now, text);
        fm_reply_bulk(r, text->data, text->len);
    } else if (arg_is(a, 1, "INFO") && a->argc == 2) {
        format_client(c, now, text);
        fm_reply_bulk(r, text->data, text->len);
    } else if (arg_is(a, 1, "HELP")) {
        client_help(r);
    } else {
        char sub[80];
        fm_format_value(sub, sizeof(sub), a->argv[1], a->argv_len[1]);
        reply_errorf(r, FM_ERR_SYNTAX,
                     "unknown subcommand or wrong number of arguments for "
                     "'%s'. Try CLIENT HELP.",
                     sub);
    }
}

/* ---- COMMAND ------------------------------------------------------------ */

static void reply_command_info(const struct fm_command_def *cmd,
                               struct fm_reply *r)
{
    char name[32];
    lower_name(cmd->name, name, sizeof(name));
    bool write = (cmd->flags & FM_CMD_ENGINE) &&
                 fm_engine_command_is_write((const uint8_t *)cmd->name,
                                            strlen(cmd->name));
    /* Redis 7's ten fields: name, arity, flags, first key, last key, step,
     * ACL categories, tips, key specs, subcommands. */
    fm_reply_array(r, 10);
    fm_reply_cstr(r, name);
    fm_reply_int(r, cmd->arity);
    bool noauth = (cmd->flags & FM_CMD_NOAUTH) != 0;
    fm_reply_array(r, noauth ? 2 : 1);
    fm_reply_status(r, write ? "write" : "readonly");
    if (noauth)
        fm_reply_status(r, "no_auth");
    fm_reply_int(r, 0);
    fm_reply_int(r, 0);
    fm_reply_int(r, 0);
    fm_reply_array(r, 0);
    fm_reply_array(r, 0);
    fm_reply_array(r, 0);
    fm_reply_array(r, 0);
}

static void reply_command_doc(const struct fm_command_def *cmd,
                              struct fm_reply *r)
{
    char name[32];
    lower_name(cmd->name, name, sizeof(name));
    fm_reply_cstr(r, name);
    fm_reply_array(r, 8);
    fm_reply_cstr(r, "summary");
    fm_reply_cstr(r, cmd->summary);
    fm_reply_cstr(r, "since");
    fm_reply_cstr(r, "0.1.0");
    fm_reply_cstr(r, "group");
    fm_reply_cstr(r, (cmd->flags & FM_CMD_ENGINE) ? "generic" : "server");
    fm_reply_cstr(r, "complexity");
    fm_reply_cstr(r, cmd->usage);
}

static void command_docs(const struct fm_args *a, struct fm_reply *r)
{
    fm_reply_array(r, 0);
    size_t mark = fm_reply_mark(r);
    size_t found = 0;
    for (size_t i = 0; i < FM_ARRAY_LEN(fm_command_defs); i++) {
        const struct fm_command_def *cmd = &fm_command_defs[i];
        bool wanted = a->argc == 2;
        for (size_t k = 2; k < a->argc && !wanted; k++)
            wanted = arg_is(a, k, cmd->name);
        if (wanted) {
            reply_command_doc(cmd, r);
            found++;
        }
    }
    fm_reply_patch_array(r, mark, 2 * found);
}

static void cmd_command(struct fm_client *c, const struct fm_args *a,
                        struct fm_reply *r)
{
    (void)c;
    size_t n = FM_ARRAY_LEN(fm_command_defs);
    if (a->argc == 1 || (arg_is(a, 1, "INFO") && a->argc == 2)) {
        fm_reply_array(r, n);
        for (size_t i = 0; i < n; i++)
            reply_command_info(&fm_command_defs[i], r);
    } else if (arg_is(a, 1, "COUNT") && a->argc == 2) {
        fm_reply_int(r, (int64_t)n);
    } else if (arg_is(a, 1, "LIST") && a->argc == 2) {
        fm_reply_array(r, n);
        for (size_t i = 0; i < n; i++) {
            char name[32];
            lower_name(fm_command_defs[i].name, name, sizeof(name));
            fm_reply_cstr(r, name);
        }
    } else if (arg_is(a, 1, "INFO")) {
        fm_reply_array(r, a->argc - 2);
        for (size_t i = 2; i < a->argc; i++) {
            const struct fm_command_def *cmd = fm_command_lookup(
                &c->srv->cmd_index, a->argv[i], a->argv_len[i]);
            if (cmd != NULL)
                reply_command_info(cmd, r);
            else
                fm_reply_nil(r);
        }
    } else if (arg_is(a, 1, "DOCS")) {
        command_docs(a, r);
    } else {
        char sub[80];
        fm_format_value(sub, sizeof(sub), a->argv[1], a->argv_len[1]);
        reply_errorf(r, FM_ERR_SYNTAX,
                     "unknown subcommand or wrong number of arguments for "
                     "'%s'. Try COMMAND HELP.",
                     sub);
    }
}

/* ---- transactions ------------------------------------------------------ */

static void cmd_multi(struct fm_client *c, const struct fm_args *a,
                      struct fm_reply *r)
{
    (void)a;
    if (c->flags & FM_CLIENT_MULTI) {
        fm_reply_error(r, FM_ERR_SYNTAX, "MULTI calls can not be nested");
        return;
    }
    c->flags |= FM_CLIENT_MULTI;
    fm_reply_status(r, "OK");
}

static void cmd_discard(struct fm_client *c, const struct fm_args *a,
                        struct fm_reply *r)
{
    (void)a;
    if (!(c->flags & FM_CLIENT_MULTI)) {
        fm_reply_error(r, FM_ERR_SYNTAX, "DISCARD without MULTI");
        return;
    }
    fm_client_discard_multi(c);
    fm_reply_status(r, "OK");
}

/* Counts the queued commands in their commandstats at EXEC. */
static void count_queued(struct fm_server *srv, const struct fm_client *c)
{
    for (size_t i = 0; i < c->n_multi; i++) {
        const struct fm_command_def *cmd = fm_command_lookup(
            &srv->cmd_index, c->multi[i].argv[0], c->multi[i].argv_len[0]);
        size_t slot = cmd != NULL ? (size_t)(cmd - fm_command_defs)
                                  : FM_ARRAY_LEN(fm_command_defs);
        srv->cmd_stats[slot].calls++;
    }
}

static void cmd_exec(struct fm_client *c, const struct fm_args *a,
                     struct fm_reply *r)
{
    (void)a;
    struct fm_server *srv = c->srv;
    struct fm_command *cmds = NULL;
    if (!(c->flags & FM_CLIENT_MULTI)) {
        fm_reply_error(r, FM_ERR_SYNTAX, "EXEC without MULTI");
        return;
    }
    if (c->flags & FM_CLIENT_DIRTY_EXEC) {
        fm_reply_error(r, FM_ERR_EXECABORT,
                       "Transaction discarded because of previous errors.");
        goto out;
    }
    if (c->n_multi == 0) {
        fm_reply_array(r, 0);
        goto out;
    }
    bool writes = false;
    for (size_t i = 0; i < c->n_multi && !writes; i++)
        writes = fm_engine_command_is_write(c->multi[i].argv[0],
                                            c->multi[i].argv_len[0]);
    if (writes && is_over_maxmemory(srv)) {
        fm_reply_error(r, FM_ERR_EXECABORT,
                       "Transaction discarded because of: OOM command not "
                       "allowed when used memory > 'maxmemory'");
        goto out;
    }
    cmds = fm_calloc(c->n_multi, sizeof(*cmds));
    if (cmds == NULL) {
        fm_reply_error(r, FM_ERR_NOMEM, "out of memory running EXEC");
        goto out;
    }
    for (size_t i = 0; i < c->n_multi; i++) {
        cmds[i].argc = c->multi[i].argc;
        cmds[i].argv = c->multi[i].argv;
        cmds[i].argv_len = c->multi[i].argv_len;
    }
    count_queued(srv, c);
    fm_engine_exec_multi(srv->engine, c->n_multi, cmds, r);
out:
    fm_free(cmds);
    fm_client_discard_multi(c);
}

/* ---- server commands --------------------------------------------------- */

static void cmd_dbsize(struct fm_client *c, const struct fm_args *a,
                       struct fm_reply *r)
{
    (void)a;
    fm_reply_int(r, (int64_t)fm_engine_row_count(c->srv->engine));
}

static void cmd_shutdown(struct fm_client *c, const struct fm_args *a,
                         struct fm_reply *r)
{
    bool nosave = false;
    for (size_t i = 1; i < a->argc; i++) {
        if (arg_is(a, i, "NOSAVE")) {
            nosave = true;
        } else if (arg_is(a, i, "SAVE") || arg_is(a, i, "NOW") ||
                   arg_is(a, i, "FORCE")) {
            continue;
        } else if (arg_is(a, i, "ABORT")) {
            fm_reply_error(r, FM_ERR_SYNTAX, "No shutdown in progress.");
            return;
        } else {
            fm_reply_error(r, FM_ERR_SYNTAX, "syntax error");
            return;
        }
    }
    fm_log_write(&c->srv->log, FM_LOG_WARNING,
                 "SHUTDOWN requested by client id=%llu %s",
                 (unsigned long long)c->id, c->addr);
    fm_server_schedule_shutdown(c->srv, nosave);
    /* As in Redis, a successful SHUTDOWN has no reply: the connection just
     * closes (client libraries such as redis-py take a reply as failure).
     * The reply stays empty, so nothing is encoded. */
    fm_client_close_after_reply(c);
}

static void cmd_help(struct fm_client *c, const struct fm_args *a,
                     struct fm_reply *r)
{
    (void)a;
    struct fm_buf *line = &c->srv->scratch;
    fm_reply_array(r, FM_ARRAY_LEN(fm_command_defs));
    for (size_t i = 0; i < FM_ARRAY_LEN(fm_command_defs); i++) {
        line->len = 0;
        if (fm_buf_printf(line, "%s -- %s", fm_command_defs[i].usage,
                          fm_command_defs[i].summary) != FM_OK ||
            fm_buf_push(line, 0) != FM_OK) {
            r->failed = true;
            return;
        }
        fm_reply_status(r, (const char *)line->data);
    }
}

static void cmd_save(struct fm_client *c, const struct fm_args *a,
                     struct fm_reply *r)
{
    struct fm_engine *e = c->srv->engine;
    struct fm_error err = {0};
    fm_status st;
    if (arg_is(a, 0, "LASTSAVE")) {
        struct fm_persist_stats ps;
        fm_engine_persist_stats(e, &ps);
        fm_reply_int(r, ps.last_save_time_s);
        return;
    }
    /* Both flush the WAL first: settle the turn's writes and the replies
     * that depend on them before, so that a failed flush there is not
     * mistaken for a quiet turn at the end of the loop. */
    fm_server_commit_turn(c->srv);
    if (arg_is(a, 0, "SAVE")) {
        st = fm_engine_save(e, &err);
        if (st == FM_OK)
            fm_reply_status(r, "OK");
    } else {
        if (a->argc > 2 || (a->argc == 2 && !arg_is(a, 1, "SCHEDULE"))) {
            fm_reply_error(r, FM_ERR_SYNTAX, "syntax error");
            return;
        }
        st = fm_engine_bgsave(e, &err);
        if (st == FM_OK)
            fm_reply_status(r, "Background saving started");
    }
    if (st != FM_OK) {
        fm_log_write(&c->srv->log, FM_LOG_WARNING, "%s failed: %s",
                     arg_is(a, 0, "SAVE") ? "SAVE" : "BGSAVE", err.msg);
        fm_reply_error(r, st,
                       err.msg[0] != '\0' ? err.msg : fm_status_message(st));
    }
}
