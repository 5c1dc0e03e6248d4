/*
 * shell_main.c: fermata-shell, the engine at a prompt, with no server.
 *
 * Reads commands from standard input, one per line, in the inline syntax of
 * the server (SPEC section 3: tokens split on spaces, "double quotes" with
 * escapes, 'single quotes' literal), runs them against an in-memory
 * database and prints the replies the way redis-cli does. MULTI, EXEC and
 * DISCARD queue commands and run them as one atomic transaction. Nothing is
 * persisted unless --dir names a data directory: then the shell recovers
 * it at start, flushes the WAL after every line (fsync always), takes a
 * snapshot on SAVE and at the end, exactly as the server would.
 *
 *   fermata-shell [--schema FILE] [--dir DIR]
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/fermata.h"
#include "server/resp.h"

#define LINE_MAX_BYTES (1024 * 1024)
#define QUEUE_MAX      1024

struct queued {
    uint8_t *line; /* owned copy; argv points into it */
    struct fm_command cmd;
    const uint8_t **argv;
    size_t *argv_len;
};

struct shell {
    struct fm_engine *engine;
    struct fm_reply reply;
    struct fm_resp_parser parser;
    bool in_multi;
    bool quit;
    size_t n_queued;
    struct queued queue[QUEUE_MAX];
};

static void print_quoted(const uint8_t *p, size_t len)
{
    putchar('"');
    for (size_t i = 0; i < len; i++) {
        uint8_t c = p[i];
        if (c == '"' || c == '\\')
            printf("\\%c", c);
        else if (c == '\n')
            printf("\\n");
        else if (c == '\r')
            printf("\\r");
        else if (c == '\t')
            printf("\\t");
        else if (c < 0x20 || c >= 0x7f)
            printf("\\x%02x", c);
        else
            putchar(c);
    }
    putchar('"');
}

/* Prints one value and, for arrays, its elements; returns false at the end
 * of the reply. indent is the column of the value. */
static bool print_value(struct fm_reply_cursor *c, int indent)
{
    struct fm_reply_value v;
    if (!fm_reply_next(c, &v))
        return false;
    switch (v.type) {
    case FM_REPLY_NIL:
        printf("(nil)\n");
        break;
    case FM_REPLY_INT:
        printf("(integer) %lld\n", (long long)v.i);
        break;
    case FM_REPLY_BULK:
        /* Multi-line text (SCHEMA, EXPLAIN) prints as it is. */
        if (memchr(v.str, '\n', v.len) != NULL)
            printf("%.*s\n", (int)v.len, (const char *)v.str);
        else {
            print_quoted(v.str, v.len);
            putchar('\n');
        }
        break;
    case FM_REPLY_STATUS:
        printf("%.*s\n", (int)v.len, (const char *)v.str);
        break;
    case FM_REPLY_ERROR:
        printf("(error) %s %.*s\n", fm_status_code(v.st), (int)v.len,
               (const char *)v.str);
        break;
    case FM_REPLY_ARRAY:
        if (v.n == 0) {
            printf("(empty array)\n");
            break;
        }
        for (size_t i = 0; i < v.n; i++) {
            int w = printf("%*s%zu) ", i == 0 ? 0 : indent, "", i + 1);
            print_value(c, w);
        }
        break;
    }
    return true;
}

static void print_reply(const struct fm_reply *r)
{
    struct fm_reply_cursor c;
    fm_reply_cursor_init(&c, r);
    while (print_value(&c, 0))
        ;
}

static bool is_word(const uint8_t *p, size_t len, const char *w)
{
    size_t n = strlen(w);
    if (len != n)
        return false;
    for (size_t i = 0; i < n; i++) {
        char a = (char)p[i];
        if (a >= 'a' && a <= 'z')
            a = (char)(a - 'a' + 'A');
        if (a != w[i])
            return false;
    }
    return true;
}

static void drop_queue(struct shell *sh)
{
    for (size_t i = 0; i < sh->n_queued; i++) {
        free(sh->queue[i].line);
        free(sh->queue[i].argv);
        free(sh->queue[i].argv_len);
    }
    sh->n_queued = 0;
    sh->in_multi = false;
}

/* Copies a parsed request so that it outlives the line buffer. */
static bool enqueue(struct shell *sh, const struct fm_resp_request *req)
{
    if (sh->n_queued == QUEUE_MAX)
        return false;
    struct queued *q = &sh->queue[sh->n_queued];
    size_t total = 0;
    for (size_t i = 0; i < req->argc; i++)
        total += req->argv_len[i];
    q->line = malloc(total + 1);
    q->argv = calloc(req->argc, sizeof(*q->argv));
    q->argv_len = calloc(req->argc, sizeof(*q->argv_len));
    if (q->line == NULL || q->argv == NULL || q->argv_len == NULL) {
        free(q->line);
        free(q->argv);
        free(q->argv_len);
        return false;
    }
    size_t o = 0;
    for (size_t i = 0; i < req->argc; i++) {
        memcpy(q->line + o, req->argv[i], req->argv_len[i]);
        q->argv[i] = q->line + o;
        q->argv_len[i] = req->argv_len[i];
        o += req->argv_len[i];
    }
    q->cmd.argc = req->argc;
    q->cmd.argv = q->argv;
    q->cmd.argv_len = q->argv_len;
    sh->n_queued++;
    return true;
}

static void run_request(struct shell *sh, const struct fm_resp_request *req)
{
    const uint8_t *name = req->argv[0];
    size_t len = req->argv_len[0];
    fm_reply_reset(&sh->reply);
    if (is_word(name, len, "MULTI")) {
        if (sh->in_multi) {
            printf("(error) ERR MULTI calls can not be nested\n");
            return;
        }
        sh->in_multi = true;
        printf("OK\n");
        return;
    }
    if (is_word(name, len, "DISCARD") || is_word(name, len, "EXEC")) {
        if (!sh->in_multi) {
            printf("(error) ERR %s without MULTI\n",
                   is_word(name, len, "EXEC") ? "EXEC" : "DISCARD");
            return;
        }
        if (is_word(name, len, "EXEC")) {
            struct fm_command cmds[QUEUE_MAX];
            for (size_t i = 0; i < sh->n_queued; i++)
                cmds[i] = sh->queue[i].cmd;
            fm_engine_exec_multi(sh->engine, sh->n_queued, cmds, &sh->reply);
            print_reply(&sh->reply);
        } else {
            printf("OK\n");
        }
        drop_queue(sh);
        return;
    }
    if (sh->in_multi) {
        if (!fm_engine_has_command(name, len))
            printf("(error) ERR unknown command '%.*s'\n", (int)len,
                   (const char *)name);
        else if (!enqueue(sh, req))
            printf("(error) ERR the transaction queue is full\n");
        else
            printf("QUEUED\n");
        return;
    }
    if (is_word(name, len, "PING")) {
        printf("PONG\n");
        return;
    }
    if (is_word(name, len, "SAVE")) {
        struct fm_error err = {0};
        if (fm_engine_save(sh->engine, &err) == FM_OK)
            printf("OK\n");
        else
            printf("(error) ERR %s\n", err.msg);
        return;
    }
    fm_engine_exec(sh->engine, req->argc, req->argv, req->argv_len, &sh->reply);
    print_reply(&sh->reply);
}

/* Parses and runs one line (terminated by '\n' at line[len - 1]). */
static void run_line(struct shell *sh, uint8_t *line, size_t len)
{
    static const struct fm_resp_limits lim = {LINE_MAX_BYTES, LINE_MAX_BYTES,
                                              4096};
    bool complete = false;
    struct fm_resp_request req;
    struct fm_error err = {0};
    fm_resp_parser_reset(&sh->parser);
    fm_status st = fm_resp_parse_request(&sh->parser, &lim, line, len,
                                         &complete, &req, &err);
    if (st != FM_OK) {
        printf("(error) %s %s\n", fm_status_code(st), err.msg);
        return;
    }
    if (!complete || req.argc == 0)
        return;
    if (is_word(req.argv[0], req.argv_len[0], "QUIT") ||
        is_word(req.argv[0], req.argv_len[0], "EXIT"))
        sh->quit = true;
    else
        run_request(sh, &req);
}

static char *read_file(const char *path, size_t *len_out)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return NULL;
    size_t cap = 4096;
    size_t len = 0;
    char *buf = malloc(cap);
    while (buf != NULL) {
        size_t n = fread(buf + len, 1, cap - len, f);
        len += n;
        if (len < cap)
            break;
        char *nb = realloc(buf, cap * 2);
        if (nb == NULL) {
            free(buf);
            buf = NULL;
            break;
        }
        buf = nb;
        cap *= 2;
    }
    fclose(f);
    *len_out = len;
    return buf;
}

int main(int argc, char **argv)
{
    struct fm_engine_options opts = {0};
    char *schema = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--schema") == 0 && i + 1 < argc) {
            schema = read_file(argv[++i], &opts.schema_len);
            if (schema == NULL) {
                fprintf(stderr, "fermata-shell: cannot read %s: %s\n", argv[i],
                        strerror(errno));
                return 1;
            }
            opts.schema_text = schema;
        } else if (strcmp(argv[i], "--dir") == 0 && i + 1 < argc) {
            opts.dir = argv[++i];
            opts.fsync = FM_FSYNC_ALWAYS;
        } else {
            fprintf(stderr,
                    "usage: fermata-shell [--schema FILE] [--dir DIR]\n");
            return 2;
        }
    }
    static struct shell sh;
    struct fm_error err = {0};
    if (fm_engine_new(&opts, &sh.engine, &err) != FM_OK) {
        fprintf(stderr, "fermata-shell: %s\n", err.msg);
        return 1;
    }
    free(schema);
    bool tty = isatty(STDIN_FILENO);
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    if (tty)
        printf("fermata-shell: in-memory database, nothing is saved. "
               "Type TABLES, SCHEMA, or QUIT.\n");
    for (;;) {
        if (tty) {
            printf("fermata> ");
            fflush(stdout);
        }
        if (sh.quit || (n = getline(&line, &cap, stdin)) < 0)
            break;
        if (n == 0 || line[n - 1] != '\n') {
            /* The last line of a file may lack its newline. */
            char *nl = realloc(line, (size_t)n + 2);
            if (nl == NULL)
                break;
            line = nl;
            line[n++] = '\n';
            line[n] = '\0';
        }
        run_line(&sh, (uint8_t *)line, (size_t)n);
        if (fm_engine_flush(sh.engine, &err) != FM_OK)
            printf("(error) READONLY %s\n", err.msg);
        fm_engine_cron(sh.engine);
        fflush(stdout);
    }
    if (fm_engine_shutdown(sh.engine, false, &err) != FM_OK)
        fprintf(stderr, "fermata-shell: %s\n", err.msg);
    free(line);
    drop_queue(&sh);
    fm_resp_parser_fini(&sh.parser);
    fm_reply_fini(&sh.reply);
    fm_engine_free(sh.engine);
    return 0;
}
