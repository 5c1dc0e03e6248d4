/*
 * fuzz_config.c: libFuzzer target for the server's configuration
 * (server/config.h): the redis.conf-style file parser, command-line flags,
 * and CONFIG SET, which must be all-or-nothing.
 *
 * The first byte chooses what the rest of the input is:
 *
 *   0  a config file, loaded with fm_config_load_file into a default
 *      config. When it loads, every parameter is written back as a config
 *      file ("name value", values quoted with \xHH escapes) and loaded into
 *      another default config, which must format exactly as the first:
 *      what CONFIG GET shows can always be read back.
 *   1  command-line arguments, separated by NUL bytes, for
 *      fm_config_parse_args ("--config" is dropped, since it would read
 *      any file the input names); the same round trip when they parse.
 *   2  CONFIG SET requests: a pipeline of inline or RESP requests (the
 *      parser of server/resp.h), each "name value [name value ...]", run
 *      as "CONFIG SET ..." by the server's own handler (fm_cmd_config) on
 *      a server built once with no data directory. It must succeed exactly
 *      when setting every pair in turn on a copy of the configuration
 *      (fm_config_set, running) succeeds, and leave the configuration
 *      formatting exactly as that copy does; in particular a refused
 *      request changes no parameter (SPEC section 6, as Redis 7). Each
 *      value is also set, alone, into every parameter of a copy, running
 *      and not: a refused value must leave every parameter as it was, and
 *      an accepted one must format to text that sets the same value.
 *      The server's parameters are set back to their first values after
 *      each input.
 *   anything else: nothing (reserved).
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "server/config.h"
#include "server/resp.h"
#include "server/server.h"
#include "server/server_int.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

enum {
    MAX_PARAMS = 64,
    MAX_ARGV = 64, /* command-line arguments of one input */
};

/* Every parameter formatted, as CONFIG GET shows them. */
struct snapshot {
    struct fm_buf v[MAX_PARAMS];
};

static void snapshot_take(const struct fm_config *c, struct snapshot *s)
{
    FM_ASSERT(fm_config_count() <= MAX_PARAMS);
    for (size_t i = 0; i < fm_config_count(); i++) {
        s->v[i].len = 0;
        FM_ASSERT(fm_config_format(c, i, &s->v[i]) == FM_OK);
        FM_ASSERT(fm_buf_push(&s->v[i], 0) == FM_OK);
    }
}

static void snapshot_fini(struct snapshot *s)
{
    for (size_t i = 0; i < MAX_PARAMS; i++)
        fm_buf_fini(&s->v[i]);
}

static void expect_same(const struct snapshot *a, const struct snapshot *b,
                        const char *what)
{
    for (size_t i = 0; i < fm_config_count(); i++) {
        if (strcmp((const char *)a->v[i].data, (const char *)b->v[i].data) !=
            0) {
            fprintf(stderr, "%s: %s is '%s', want '%s'\n", what,
                    fm_config_name(i), (const char *)b->v[i].data,
                    (const char *)a->v[i].data);
            abort();
        }
    }
}

/* A file of the harness, rewritten for each input. */
static char file_path[64];
static int file_fd = -1;

static void write_file(const uint8_t *p, size_t len)
{
    if (file_fd < 0) {
        const char *tmp = getenv("TMPDIR");
        snprintf(file_path, sizeof(file_path), "%s/fm-fuzz-config-XXXXXX",
                 tmp != NULL && strlen(tmp) < 32 ? tmp : "/tmp");
        file_fd = mkstemp(file_path);
        FM_ASSERT(file_fd >= 0);
    }
    FM_ASSERT(ftruncate(file_fd, 0) == 0);
    FM_ASSERT(pwrite(file_fd, p, len, 0) == (ssize_t)len);
}

/* Writes c as a config file and loads it into a default config, which
 * must then format as c does. */
static void check_round_trip(const struct fm_config *c)
{
    struct snapshot want = {0};
    struct snapshot got = {0};
    struct fm_buf text = {0};
    struct fm_config back;
    struct fm_error err = {0};
    snapshot_take(c, &want);
    for (size_t i = 0; i < fm_config_count(); i++) {
        const char *name = fm_config_name(i);
        if (strcmp(name, "save") == 0 || strcmp(name, "appendonly") == 0)
            continue; /* read-only */
        FM_ASSERT(fm_buf_printf(&text, "%s \"", name) == FM_OK);
        for (const char *v = (const char *)want.v[i].data; *v != '\0'; v++)
            FM_ASSERT(fm_buf_printf(&text, "\\x%02x", (unsigned char)*v) ==
                      FM_OK);
        FM_ASSERT(fm_buf_printf(&text, "\"\n") == FM_OK);
    }
    write_file(text.data, text.len);
    FM_ASSERT(fm_config_init(&back) == FM_OK);
    fm_status st = fm_config_load_file(&back, file_path, &err);
    if (st != FM_OK) {
        fprintf(stderr, "written config does not load: %s\n", err.msg);
        abort();
    }
    snapshot_take(&back, &got);
    expect_same(&want, &got, "config read back");
    fm_config_fini(&back);
    fm_buf_fini(&text);
    snapshot_fini(&want);
    snapshot_fini(&got);
}

static void fuzz_file(const uint8_t *p, size_t len)
{
    struct fm_config c;
    struct fm_error err = {0};
    write_file(p, len);
    FM_ASSERT(fm_config_init(&c) == FM_OK);
    fm_status st = fm_config_load_file(&c, file_path, &err);
    if (st == FM_OK)
        check_round_trip(&c);
    else
        FM_ASSERT(err.msg[0] != '\0');
    fm_config_fini(&c);
}

static void fuzz_args(const uint8_t *p, size_t len)
{
    char *copy = malloc(len + 1);
    char *argv[MAX_ARGV];
    int argc = 0;
    FM_ASSERT(copy != NULL);
    memcpy(copy, p, len);
    copy[len] = '\0';
    argv[argc++] = "fermata-server";
    for (char *s = copy; s <= copy + len && argc < MAX_ARGV;
         s += strlen(s) + 1) {
        if (strcmp(s, "--config") != 0)
            argv[argc++] = s;
    }
    struct fm_config c;
    struct fm_error err = {0};
    FM_ASSERT(fm_config_init(&c) == FM_OK);
    if (fm_config_parse_args(&c, argc, argv, &err) == FM_OK)
        check_round_trip(&c);
    else
        FM_ASSERT(err.msg[0] != '\0');
    fm_config_fini(&c);
    free(copy);
}

/* ---- CONFIG SET ---------------------------------------------------------- */

static struct fm_server *srv;
static struct snapshot initial; /* srv's parameters at start */

static void start_server(void)
{
    struct fm_config cfg;
    struct fm_error err = {0};
    FM_ASSERT(fm_config_init(&cfg) == FM_OK);
    FM_ASSERT(fm_config_set_by_name(&cfg, "port", "0", false, &err) == FM_OK);
    FM_ASSERT(fm_config_set_by_name(&cfg, "dir", "", false, &err) == FM_OK);
    FM_ASSERT(fm_config_set_by_name(&cfg, "maxclients", "100", false, &err) ==
              FM_OK);
    FM_ASSERT(fm_config_set_by_name(&cfg, "logfile", "/dev/null", false,
                                    &err) == FM_OK);
    FM_ASSERT(fm_server_new(&cfg, &srv, &err) == FM_OK);
    snapshot_take(&srv->cfg, &initial);
}

/* A config equal to the server's (immutable parameters included). */
static void copy_config(struct fm_config *out)
{
    struct snapshot s = {0};
    snapshot_take(&srv->cfg, &s);
    FM_ASSERT(fm_config_init(out) == FM_OK);
    for (size_t i = 0; i < fm_config_count(); i++) {
        fm_status st =
            fm_config_set(out, i, (const char *)s.v[i].data, false, NULL);
        FM_ASSERT(st == FM_OK || st == FM_ERR_STATE); /* STATE: read-only */
    }
    snapshot_fini(&s);
}

/* The value as a C string, or false when it holds a NUL byte. */
static bool value_cstr(const uint8_t *p, size_t len, struct fm_buf *out)
{
    out->len = 0;
    if (memchr(p, '\0', len) != NULL)
        return false;
    FM_ASSERT(fm_buf_append(out, p, len) == FM_OK);
    FM_ASSERT(fm_buf_push(out, 0) == FM_OK);
    return true;
}

/* Sets value alone into each parameter of a copy of the server's config. */
static void check_each_parameter(const char *value)
{
    struct fm_config c;
    struct snapshot before = {0};
    struct snapshot after = {0};
    copy_config(&c);
    snapshot_take(&c, &before);
    for (size_t i = 0; i < fm_config_count(); i++) {
        for (int running = 0; running < 2; running++) {
            struct fm_error err = {0};
            fm_status st = fm_config_set(&c, i, value, running != 0, &err);
            snapshot_take(&c, &after);
            if (st != FM_OK) {
                FM_ASSERT(err.msg[0] != '\0');
                expect_same(&before, &after, "refused value");
                continue;
            }
            /* Accepted: only parameter i changed, and its text sets it
             * to the same value again. */
            struct fm_buf text = {0};
            FM_ASSERT(fm_buf_append(&text, after.v[i].data, after.v[i].len) ==
                      FM_OK);
            FM_ASSERT(fm_config_set(&c, i, (const char *)text.data,
                                    running != 0, &err) == FM_OK);
            fm_buf_fini(&text);
            struct snapshot again = {0};
            snapshot_take(&c, &again);
            expect_same(&after, &again, "value set from its own text");
            snapshot_fini(&again);
            fm_buf_fini(&before.v[i]);
            FM_ASSERT(fm_buf_append(&before.v[i], after.v[i].data,
                                    after.v[i].len) == FM_OK);
            expect_same(&before, &after, "other parameters");
        }
    }
    snapshot_fini(&before);
    snapshot_fini(&after);
    fm_config_fini(&c);
}

/* Runs CONFIG SET pairs through the server and through a model. */
static void check_config_set(const struct fm_resp_request *req)
{
    size_t argc = req->argc + 2;
    const uint8_t **argv = calloc(argc, sizeof(*argv));
    size_t *argv_len = calloc(argc, sizeof(*argv_len));
    FM_ASSERT(argv != NULL && argv_len != NULL);
    argv[0] = (const uint8_t *)"CONFIG";
    argv_len[0] = 6;
    argv[1] = (const uint8_t *)"SET";
    argv_len[1] = 3;
    for (size_t i = 0; i < req->argc; i++) {
        argv[i + 2] = req->argv[i];
        argv_len[i + 2] = req->argv_len[i];
    }
    /* The model: every pair set in turn on a copy. */
    struct fm_config model;
    struct fm_buf value = {0};
    copy_config(&model);
    bool ok = req->argc >= 2 && req->argc % 2 == 0;
    for (size_t i = 0; ok && i + 1 < req->argc; i += 2) {
        size_t k;
        ok = fm_config_find((const char *)req->argv[i], req->argv_len[i], &k) &&
             value_cstr(req->argv[i + 1], req->argv_len[i + 1], &value) &&
             fm_config_set(&model, k, (const char *)value.data, true, NULL) ==
                 FM_OK &&
             (size_t)model.maxclients <= srv->max_clients_at_start;
    }
    struct snapshot before = {0};
    struct snapshot want = {0};
    struct snapshot got = {0};
    snapshot_take(&srv->cfg, &before);
    snapshot_take(&model, &want);
    struct fm_client c;
    memset(&c, 0, sizeof(c));
    c.srv = srv;
    c.fd = -1;
    struct fm_reply r = {0};
    struct fm_args a = {argc, argv, argv_len};
    fm_cmd_config(&c, &a, &r);
    snapshot_take(&srv->cfg, &got);
    if (fm_reply_is_error(&r) == ok) {
        fprintf(stderr, "CONFIG SET replied %.*s, the model %s\n",
                (int)r.buf.len, (const char *)r.buf.data,
                ok ? "succeeded" : "failed");
        abort();
    }
    expect_same(ok ? &want : &before, &got, "CONFIG SET");
    for (size_t i = 1; i < req->argc; i += 2) {
        if (value_cstr(req->argv[i], req->argv_len[i], &value))
            check_each_parameter((const char *)value.data);
    }
    fm_reply_fini(&r);
    snapshot_fini(&before);
    snapshot_fini(&want);
    snapshot_fini(&got);
    fm_buf_fini(&value);
    fm_config_fini(&model);
    free(argv);
    free(argv_len);
}

/* Sets the server's parameters back to their values at start. */
static void restore_server(void)
{
    for (size_t i = 0; i < fm_config_count(); i++) {
        if (!fm_config_is_mutable(i))
            continue;
        FM_ASSERT(fm_config_set(&srv->cfg, i, (const char *)initial.v[i].data,
                                true, NULL) == FM_OK);
    }
}

static void fuzz_config_set(const uint8_t *p, size_t len)
{
    static const struct fm_resp_limits lim = {
        .max_inline_len = 8192, .max_bulk_len = 8192, .max_args = 64};
    if (srv == NULL)
        start_server();
    uint8_t *copy = malloc(len + 1);
    FM_ASSERT(copy != NULL);
    memcpy(copy, p, len);
    struct fm_resp_parser parser;
    fm_resp_parser_init(&parser);
    size_t off = 0;
    while (off < len) {
        struct fm_resp_request req;
        bool complete = false;
        if (fm_resp_parse_request(&parser, &lim, copy + off, len - off,
                                  &complete, &req, NULL) != FM_OK ||
            !complete)
            break;
        off += req.req_len;
        if (req.argc > 0)
            check_config_set(&req);
    }
    fm_resp_parser_fini(&parser);
    free(copy);
    restore_server();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    switch (data[0]) {
    case 0:
        fuzz_file(data + 1, size - 1);
        break;
    case 1:
        fuzz_args(data + 1, size - 1);
        break;
    case 2:
        fuzz_config_set(data + 1, size - 1);
        break;
    default:
        break;
    }
    return 0;
}
