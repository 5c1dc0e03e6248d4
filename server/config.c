/*
 * config.c: one table of parameters behind flags, config files and CONFIG.
 *
 * Every parameter is a row of the static table `params`: its name, its
 * type, where its value lives in struct fm_config, its bounds and its
 * default as text. The three ways of setting a parameter (a "--name value"
 * flag, a "name value" line of the --config file, CONFIG SET name value)
 * all go through fm_config_set, and CONFIG GET and the documentation read
 * the same table, so a parameter cannot be known to one of them and not to
 * the others (SPEC section 6).
 *
 * Types:
 *   INT    a decimal integer within [min, max]
 *   BYTES  like INT, with Redis' units: 1k = 1000, 1kb = 1024, m/mb, g/gb
 *   BOOL   yes/no (also true/false, on/off, 1/0)
 *   ENUM   one word of a fixed list, stored as its index
 *   STRING any text without NUL bytes
 *   CONST  a read-only answer for Redis tools that ask for Redis' own
 *          parameters: redis-benchmark reads "save" and "appendonly" at
 *          start and prints a warning when they are missing. They cannot be
 *          set, and they say what is true of fermata: no Redis RDB saving
 *          and no Redis AOF (durability is the WAL, see "fsync").
 *
 * Immutable parameters (port, bind, dir, schema, force-recovery and the
 * like) take effect at start-up only; CONFIG SET refuses them with
 * FM_ERR_STATE rather than accepting a value that would not be applied.
 *
 * Defaults follow Redis where Redis has the parameter (maxclients 10000,
 * timeout 0, tcp-backlog 511), and are sized for fermata elsewhere: a value
 * is at most 64 KiB (SPEC section 1), so a 1 MiB bulk is generous, and a
 * query buffer of 16 MiB holds any legal request.
 */
#include "server/config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <strings.h>

#include "server/resp.h"

enum param_type {
    P_INT,
    P_BYTES,
    P_BOOL,
    P_ENUM,
    P_STRING,
    P_CONST,
};

enum {
    F_IMMUTABLE = 1, /* start-up only */
};

struct param {
    const char *name;
    enum param_type type;
    size_t offset; /* of the value in struct fm_config; unused for CONST */
    int64_t min;
    int64_t max;
    const char *def;            /* default, as text */
    const char *const *choices; /* ENUM: NULL-terminated */
    int flags;
};

static const char *const loglevels[] = {"debug", "verbose", "notice", "warning",
                                        NULL};
static const char *const fsyncs[] = {"always", "everysec", "no", NULL};

#define OFF(field) offsetof(struct fm_config, field)
#define GB         ((int64_t)1 << 30)

static const struct param params[] = {
    {"port", P_INT, OFF(port), 0, 65535, "7878", NULL, F_IMMUTABLE},
    {"bind", P_STRING, OFF(bind), 0, 0, "127.0.0.1", NULL, F_IMMUTABLE},
    {"dir", P_STRING, OFF(dir), 0, 0, "./data", NULL, F_IMMUTABLE},
    {"requirepass", P_STRING, OFF(requirepass), 0, 0, "", NULL, 0},
    {"protected-mode", P_BOOL, OFF(protected_mode), 0, 1, "yes", NULL, 0},
    {"maxclients", P_INT, OFF(maxclients), 1, 1000000, "10000", NULL, 0},
    {"maxmemory", P_BYTES, OFF(maxmemory), 0, INT64_MAX, "0", NULL, 0},
    {"loglevel", P_ENUM, OFF(loglevel), 0, 0, "notice", loglevels, 0},
    {"logfile", P_STRING, OFF(logfile), 0, 0, "", NULL, F_IMMUTABLE},
    {"fsync", P_ENUM, OFF(fsync), 0, 0, "everysec", fsyncs, 0},
    {"snapshot-interval", P_INT, OFF(snapshot_interval), 1, INT32_MAX, "3600",
     NULL, 0},
    {"snapshot-wal-mb", P_INT, OFF(snapshot_wal_mb), 1, INT32_MAX, "64", NULL,
     0},
    {"snapshot-keep", P_INT, OFF(snapshot_keep), 1, 1000, "2", NULL, 0},
    {"force-recovery", P_BOOL, OFF(force_recovery), 0, 1, "no", NULL,
     F_IMMUTABLE},
    {"schema", P_STRING, OFF(schema), 0, 0, "", NULL, F_IMMUTABLE},
    {"max-inline-len", P_BYTES, OFF(max_inline_len), 16, GB, "64kb", NULL, 0},
    {"max-bulk-len", P_BYTES, OFF(max_bulk_len), 16, GB, "1mb", NULL, 0},
    {"max-args", P_INT, OFF(max_args), 1, 1 << 24, "4096", NULL, 0},
    {"client-query-buffer-limit", P_BYTES, OFF(client_query_buffer_limit), 1024,
     4 * GB, "16mb", NULL, 0},
    {"client-output-buffer-limit", P_BYTES, OFF(client_output_buffer_limit),
     1024, INT64_MAX, "64mb", NULL, 0},
    {"max-multi-commands", P_INT, OFF(max_multi_commands), 1, 1 << 24, "100000",
     NULL, 0},
    {"timeout", P_INT, OFF(timeout), 0, INT32_MAX, "0", NULL, 0},
    {"tcp-backlog", P_INT, OFF(tcp_backlog), 1, 65535, "511", NULL,
     F_IMMUTABLE},
    {"save", P_CONST, 0, 0, 0, "", NULL, F_IMMUTABLE},
    {"appendonly", P_CONST, 0, 0, 0, "no", NULL, F_IMMUTABLE},
};

size_t fm_config_count(void)
{
    return FM_ARRAY_LEN(params);
}

const char *fm_config_name(size_t i)
{
    FM_ASSERT(i < FM_ARRAY_LEN(params));
    return params[i].name;
}

bool fm_config_find(const char *name, size_t name_len, size_t *index_out)
{
    for (size_t i = 0; i < FM_ARRAY_LEN(params); i++) {
        if (strlen(params[i].name) == name_len &&
            strncasecmp(params[i].name, name, name_len) == 0) {
            *index_out = i;
            return true;
        }
    }
    return false;
}

bool fm_config_is_mutable(size_t i)
{
    FM_ASSERT(i < FM_ARRAY_LEN(params));
    return !(params[i].flags & F_IMMUTABLE);
}

static int64_t *int_field(struct fm_config *c, const struct param *p)
{
    return (int64_t *)(void *)((char *)c + p->offset);
}

static const int64_t *int_field_c(const struct fm_config *c,
                                  const struct param *p)
{
    return (const int64_t *)(const void *)((const char *)c + p->offset);
}

/* Parses a decimal integer, with units when bytes is set. */
static bool parse_number(const char *s, bool bytes, int64_t *out)
{
    errno = 0;
    char *end;
    long long v = strtoll(s, &end, 10);
    if (end == s || errno != 0)
        return false;
    int64_t mul = 1;
    if (*end != '\0') {
        static const struct {
            const char *unit;
            int64_t mul;
        } units[] = {
            {"k", 1000},         {"kb", 1024},        {"m", 1000 * 1000},
            {"mb", 1024 * 1024}, {"g", 1000000000LL}, {"gb", (int64_t)1 << 30},
        };
        if (!bytes)
            return false;
        size_t u = 0;
        while (u < FM_ARRAY_LEN(units) && strcasecmp(end, units[u].unit) != 0)
            u++;
        if (u == FM_ARRAY_LEN(units))
            return false;
        mul = units[u].mul;
    }
    int64_t r;
    if (__builtin_mul_overflow((int64_t)v, mul, &r))
        return false;
    *out = r;
    return true;
}

static bool parse_bool(const char *s, bool *out)
{
    static const char *const yes[] = {"yes", "true", "on", "1"};
    static const char *const no[] = {"no", "false", "off", "0"};
    for (size_t i = 0; i < FM_ARRAY_LEN(yes); i++) {
        if (strcasecmp(s, yes[i]) == 0) {
            *out = true;
            return true;
        }
        if (strcasecmp(s, no[i]) == 0) {
            *out = false;
            return true;
        }
    }
    return false;
}

static fm_status set_string(char **field, const char *value)
{
    size_t len = strlen(value);
    char *copy = fm_malloc(len + 1);
    if (copy == NULL)
        return FM_ERR_NOMEM;
    memcpy(copy, value, len + 1);
    fm_free(*field);
    *field = copy;
    return FM_OK;
}

static fm_status set_enum(struct fm_config *c, const struct param *p,
                          const char *value, struct fm_error *err)
{
    for (int64_t k = 0; p->choices[k] != NULL; k++) {
        if (strcasecmp(value, p->choices[k]) == 0) {
            *int_field(c, p) = k;
            return FM_OK;
        }
    }
    char list[128] = "";
    size_t n = 0;
    for (size_t k = 0; p->choices[k] != NULL && n < sizeof(list); k++)
        n += (size_t)snprintf(list + n, sizeof(list) - n, "%s%s",
                              k > 0 ? ", " : "", p->choices[k]);
    return fm_error_set(err, FM_ERR_SYNTAX,
                        "invalid value '%s' for '%s': expected one of %s",
                        value, p->name, list);
}

fm_status fm_config_set(struct fm_config *c, size_t i, const char *value,
                        bool running, struct fm_error *err)
{
    FM_ASSERT(i < FM_ARRAY_LEN(params));
    const struct param *p = &params[i];
    if (p->type == P_CONST)
        return fm_error_set(err, FM_ERR_STATE,
                            "'%s' is a read-only parameter kept for Redis "
                            "tools",
                            p->name);
    if (running && (p->flags & F_IMMUTABLE))
        return fm_error_set(err, FM_ERR_STATE,
                            "'%s' can only be set at start-up", p->name);
    int64_t v;
    bool b;
    switch (p->type) {
    case P_INT:
    case P_BYTES:
        if (!parse_number(value, p->type == P_BYTES, &v) || v < p->min ||
            v > p->max)
            return fm_error_set(err, FM_ERR_SYNTAX,
                                "invalid value '%s' for '%s': expected %s "
                                "from %lld to %lld",
                                value, p->name,
                                p->type == P_BYTES ? "a size in bytes (units "
                                                     "k, kb, m, mb, g, gb)"
                                                   : "an integer",
                                (long long)p->min, (long long)p->max);
        *int_field(c, p) = v;
        return FM_OK;
    case P_BOOL:
        if (!parse_bool(value, &b))
            return fm_error_set(err, FM_ERR_SYNTAX,
                                "invalid value '%s' for '%s': expected yes "
                                "or no",
                                value, p->name);
        *(bool *)(void *)((char *)c + p->offset) = b;
        return FM_OK;
    case P_ENUM:
        return set_enum(c, p, value, err);
    case P_STRING:
        if (set_string((char **)(void *)((char *)c + p->offset), value) !=
            FM_OK)
            return fm_error_set(err, FM_ERR_NOMEM, "out of memory");
        return FM_OK;
    case P_CONST:
        break;
    }
    return FM_ERR_STATE;
}

fm_status fm_config_set_by_name(struct fm_config *c, const char *name,
                                const char *value, bool running,
                                struct fm_error *err)
{
    size_t i;
    if (!fm_config_find(name, strlen(name), &i))
        return fm_error_set(err, FM_ERR_NOTFOUND, "unknown parameter '%s'",
                            name);
    return fm_config_set(c, i, value, running, err);
}

fm_status fm_config_format(const struct fm_config *c, size_t i,
                           struct fm_buf *out)
{
    FM_ASSERT(i < FM_ARRAY_LEN(params));
    const struct param *p = &params[i];
    const char *field = (const char *)c + p->offset;
    switch (p->type) {
    case P_INT:
    case P_BYTES:
        return fm_buf_printf(out, "%lld", (long long)*int_field_c(c, p));
    case P_BOOL:
        return fm_buf_printf(out, "%s",
                             *(const bool *)(const void *)field ? "yes" : "no");
    case P_ENUM:
        return fm_buf_printf(out, "%s", p->choices[*int_field_c(c, p)]);
    case P_STRING:
        return fm_buf_printf(out, "%s", *(char *const *)(const void *)field);
    case P_CONST:
        return fm_buf_printf(out, "%s", p->def);
    }
    return FM_ERR_STATE;
}

fm_status fm_config_init(struct fm_config *c)
{
    memset(c, 0, sizeof(*c));
    for (size_t i = 0; i < FM_ARRAY_LEN(params); i++) {
        if (params[i].type == P_CONST)
            continue;
        fm_status st = fm_config_set(c, i, params[i].def, false, NULL);
        /* Defaults are constants of this file: only memory can fail. */
        FM_ASSERT(st == FM_OK || st == FM_ERR_NOMEM);
        if (st != FM_OK)
            return st;
    }
    return set_string(&c->config_file, "");
}

void fm_config_fini(struct fm_config *c)
{
    for (size_t i = 0; i < FM_ARRAY_LEN(params); i++) {
        if (params[i].type != P_STRING)
            continue;
        char **field = (char **)(void *)((char *)c + params[i].offset);
        fm_free(*field);
        *field = NULL;
    }
    fm_free(c->config_file);
    c->config_file = NULL;
}

/* Reads a whole file into buf. */
static fm_status read_file(const char *path, struct fm_buf *buf,
                           struct fm_error *err)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return fm_error_set(err, FM_ERR_IO, "cannot open config file '%s': %s",
                            path, strerror(errno));
    fm_status st = FM_OK;
    for (;;) {
        st = fm_buf_reserve(buf, 4096);
        if (st != FM_OK) {
            st = fm_error_set(err, FM_ERR_NOMEM, "out of memory");
            break;
        }
        size_t n = fread(buf->data + buf->len, 1, 4096, f);
        buf->len += n;
        if (n < 4096) {
            if (ferror(f))
                st = fm_error_set(err, FM_ERR_IO,
                                  "cannot read config file '%s'", path);
            break;
        }
    }
    fclose(f);
    return st;
}

/* Applies one line (without its newline) of a config file. */
static fm_status apply_line(struct fm_config *c, struct fm_resp_parser *parser,
                            struct fm_buf *line, const char *path,
                            size_t line_no, struct fm_error *err)
{
    static const struct fm_resp_limits lim = {
        .max_inline_len = SIZE_MAX, .max_bulk_len = 0, .max_args = 3};
    struct fm_resp_request req;
    bool complete = false;
    struct fm_error perr = {0};
    fm_status st = fm_buf_push(line, '\n');
    if (st != FM_OK)
        return fm_error_set(err, st, "out of memory");
    /* A line starting with '*' would be taken for RESP: such a line is not
     * a valid parameter name anyway, and reads as an error below. */
    if (line->data[0] == '*')
        goto fail_syntax;
    fm_resp_parser_reset(parser);
    st = fm_resp_parse_request(parser, &lim, line->data, line->len, &complete,
                               &req, &perr);
    if (st != FM_OK || !complete)
        goto fail_syntax;
    if (req.argc == 0)
        return FM_OK;
    if (req.argc != 2)
        goto fail_syntax;
    /* Arguments were unescaped in place; NUL-terminate them there. A NUL
     * inside either would cut it short: "port\0zz" would set port. */
    char name[64];
    char *value = (char *)(uintptr_t)req.argv[1];
    if (req.argv_len[0] >= sizeof(name) ||
        memchr(req.argv[0], '\0', req.argv_len[0]) != NULL ||
        memchr(value, '\0', req.argv_len[1]) != NULL)
        goto fail_syntax;
    memcpy(name, req.argv[0], req.argv_len[0]);
    name[req.argv_len[0]] = '\0';
    value[req.argv_len[1]] = '\0';
    struct fm_error e = {0};
    st = fm_config_set_by_name(c, name, value, false, &e);
    if (st != FM_OK)
        return fm_error_set(err, st, "%s:%zu: %s", path, line_no, e.msg);
    return FM_OK;
fail_syntax:
    return fm_error_set(err, FM_ERR_SYNTAX,
                        "%s:%zu: expected 'name value' (quote values that "
                        "hold spaces)",
                        path, line_no);
}

fm_status fm_config_load_file(struct fm_config *c, const char *path,
                              struct fm_error *err)
{
    struct fm_buf text = {0};
    struct fm_buf line = {0};
    struct fm_resp_parser parser;
    fm_resp_parser_init(&parser);
    fm_status st = read_file(path, &text, err);
    if (st != FM_OK)
        goto out;
    size_t line_no = 0;
    size_t i = 0;
    while (i < text.len) {
        size_t start = i;
        while (i < text.len && text.data[i] != '\n')
            i++;
        size_t end = i++;
        line_no++;
        while (start < end &&
               (text.data[start] == ' ' || text.data[start] == '\t'))
            start++;
        if (start == end || text.data[start] == '#')
            continue;
        line.len = 0;
        st = fm_buf_append(&line, text.data + start, end - start);
        if (st != FM_OK)
            goto out;
        st = apply_line(c, &parser, &line, path, line_no, err);
        if (st != FM_OK)
            goto out;
    }
    st = set_string(&c->config_file, path);
out:
    fm_resp_parser_fini(&parser);
    fm_buf_fini(&line);
    fm_buf_fini(&text);
    return st;
}

static bool is_flag(const char *s)
{
    return s[0] == '-' && s[1] == '-' && s[2] != '\0';
}

fm_status fm_config_parse_args(struct fm_config *c, int argc, char *const *argv,
                               struct fm_error *err)
{
    fm_status st;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--config") != 0)
            continue;
        if (i + 1 >= argc)
            return fm_error_set(err, FM_ERR_SYNTAX,
                                "--config needs a file name");
        st = fm_config_load_file(c, argv[i + 1], err);
        if (st != FM_OK)
            return st;
    }
    for (int i = 1; i < argc; i++) {
        if (!is_flag(argv[i]))
            return fm_error_set(err, FM_ERR_SYNTAX,
                                "unexpected argument '%s' (flags are "
                                "--name value)",
                                argv[i]);
        const char *name = argv[i] + 2;
        if (strcmp(name, "config") == 0) {
            i++;
            continue;
        }
        size_t k;
        if (!fm_config_find(name, strlen(name), &k))
            return fm_error_set(err, FM_ERR_NOTFOUND,
                                "unknown flag '%s' (see --help)", argv[i]);
        const char *value;
        if (params[k].type == P_BOOL &&
            (i + 1 >= argc || is_flag(argv[i + 1]))) {
            value = "yes";
        } else if (i + 1 >= argc) {
            return fm_error_set(err, FM_ERR_SYNTAX, "%s needs a value",
                                argv[i]);
        } else {
            value = argv[++i];
        }
        st = fm_config_set(c, k, value, false, err);
        if (st != FM_OK)
            return st;
    }
    return FM_OK;
}

static int lower(int ch)
{
    return (ch >= 'A' && ch <= 'Z') ? ch - 'A' + 'a' : ch;
}

/* Matches a [...] class at pattern[*pi] against ch; advances *pi past it. */
static bool match_class(const char *pat, size_t plen, size_t *pi, int ch)
{
    size_t i = *pi + 1;
    bool negate = false;
    bool match = false;
    if (i < plen && pat[i] == '^') {
        negate = true;
        i++;
    }
    for (; i < plen && pat[i] != ']'; i++) {
        if (pat[i] == '\\' && i + 1 < plen) {
            i++;
            if (lower(pat[i]) == ch)
                match = true;
        } else if (i + 2 < plen && pat[i + 1] == '-' && pat[i + 2] != ']') {
            int lo = lower(pat[i]);
            int hi = lower(pat[i + 2]);
            if (lo > hi) {
                int t = lo;
                lo = hi;
                hi = t;
            }
            if (ch >= lo && ch <= hi)
                match = true;
            i += 2;
        } else if (lower(pat[i]) == ch) {
            match = true;
        }
    }
    *pi = i; /* at the ']' or the end */
    return negate ? !match : match;
}

bool fm_config_glob_match(const char *pattern, size_t pattern_len,
                          const char *s, size_t s_len)
{
    /* Iterative matching with one backtrack point for the last '*': linear
     * enough for parameter names, and never recursive on hostile input. */
    size_t pi = 0;
    size_t si = 0;
    size_t star_p = SIZE_MAX;
    size_t star_s = 0;
    while (si < s_len) {
        int ch = lower((unsigned char)s[si]);
        if (pi < pattern_len && pattern[pi] == '*') {
            star_p = pi++;
            star_s = si;
            continue;
        }
        if (pi < pattern_len) {
            size_t next = pi;
            bool ok;
            if (pattern[pi] == '?') {
                ok = true;
            } else if (pattern[pi] == '[') {
                ok = match_class(pattern, pattern_len, &next, ch);
            } else if (pattern[pi] == '\\' && pi + 1 < pattern_len) {
                next++;
                ok = lower((unsigned char)pattern[next]) == ch;
            } else {
                ok = lower((unsigned char)pattern[pi]) == ch;
            }
            if (ok) {
                pi = next + 1;
                si++;
                continue;
            }
        }
        if (star_p == SIZE_MAX)
            return false;
        pi = star_p + 1;
        si = ++star_s;
    }
    while (pi < pattern_len && pattern[pi] == '*')
        pi++;
    return pi == pattern_len;
}
