/*
 * fuzz_engine.c: libFuzzer target for the command language of
 * engine/fermata.h, on the default schema or one the input gives.
 *
 * The input is a script: one command per line ("\n"), its arguments
 * separated by single spaces (two spaces make an empty argument; any other
 * byte, binary included, belongs to an argument). A few lines are not
 * commands but say how to run the next ones:
 *
 *   MULTI ... EXEC   the lines between run as one fm_engine_exec_multi
 *   !N               the N-th allocation (decimal) of the next command
 *                    fails, through the allocation hook of base.h
 *   @N               the reply of the next command may hold N bytes
 *                    (fm_reply.limit); a read must answer exactly as
 *                    without the limit when that fits, else with one
 *                    LIMIT error
 *   PERSIST          (leading lines only) the engine works on a data
 *   DDL text...      directory, so that writes go through the WAL; the
 *                    engine has the schema on the rest of the line
 *                    instead of the default one (inputs whose schema
 *                    does not parse are skipped: fuzz_schema has them)
 *   SAVE             a snapshot (fm_engine_save), when persistent
 *   REOPEN           flush, free, and recover the engine from its
 *                    directory, when persistent
 *
 * After every write, every failed command and the last command, the
 * engine's consistency check (fm_engine_check) must pass. Every reply is
 * read back in full with the cursor. A command that fails must leave every
 * table as it was (SPEC section 2): the harness reads all tables before
 * each write and after a failed one and compares. A recovered engine must
 * hold exactly what the engine before REOPEN held. A FIND that works is
 * run again against COUNT, ORDER BY ASC and DESC, LIMIT and OFFSET, which
 * must agree with it (check_find). Any difference aborts, and libFuzzer
 * keeps the input.
 *
 * The seeds (tests/fuzz/corpus/engine) and the dictionary (engine.dict)
 * start from real command, table and column names, so that the fuzzer gets
 * past the name lookups at once.
 */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/fermata.h"
#include "tests/fuzz/fuzz_tmp.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

enum {
    MAX_LINES = 64,  /* commands of one input; the rest is ignored */
    MAX_ARGS = 48,   /* arguments of one command; the rest is ignored */
    MAX_BATCH = 16,  /* commands of one MULTI */
    DIGEST_MAX = 64, /* rows per table read back for a digest */
};

/* One command, its arguments pointing into the input copy. */
struct cmd {
    const uint8_t *end; /* the end of the line */
    size_t argc;
    const uint8_t *argv[MAX_ARGS];
    size_t len[MAX_ARGS];
};

struct harness {
    struct fm_engine *e;
    struct fm_reply reply;
    struct fm_reply scratch; /* for digests, so reply is left alone */
    char dir[64];            /* data directory, "" when in memory */
    long fail_at;            /* allocation to fail; 0 none */
    size_t limit;            /* reply limit of the next command; 0 none */
    const char *ddl;         /* a custom schema, or NULL for the default */
    size_t ddl_len;
    bool opened; /* the engine opened once (the schema is good) */
    long n_allocs;
};

static bool fail_hook(void *ctx, size_t size)
{
    (void)size;
    struct harness *h = ctx;
    return ++h->n_allocs == h->fail_at;
}

static bool same_word(const struct cmd *c, const char *w)
{
    size_t n = strlen(w);
    return c->argc == 1 && c->len[0] == n && memcmp(c->argv[0], w, n) == 0;
}

/* Splits line[0..len) on single spaces. */
static void split(const uint8_t *line, size_t len, struct cmd *c)
{
    c->end = line + len;
    c->argc = 0;
    size_t start = 0;
    for (size_t i = 0; i <= len && c->argc < MAX_ARGS; i++) {
        if (i == len || line[i] == ' ') {
            c->argv[c->argc] = line + start;
            c->len[c->argc++] = i - start;
            start = i + 1;
        }
    }
}

/* FNV-1a, enough to compare two readings of the same tables. */
static uint64_t mix(uint64_t h, const void *p, size_t len)
{
    const uint8_t *b = p;
    for (size_t i = 0; i < len; i++)
        h = (h ^ b[i]) * 0x100000001b3ULL;
    return h;
}

/* Reads every value of r with the cursor; returns their hash. */
static uint64_t read_reply(const struct fm_reply *r, uint64_t h)
{
    struct fm_reply_cursor cur;
    struct fm_reply_value v;
    fm_reply_cursor_init(&cur, r);
    while (fm_reply_next(&cur, &v)) {
        h = mix(h, &v.type, sizeof(v.type));
        switch (v.type) {
        case FM_REPLY_INT:
            h = mix(h, &v.i, sizeof(v.i));
            break;
        case FM_REPLY_ARRAY:
            h = mix(h, &v.n, sizeof(v.n));
            break;
        case FM_REPLY_BULK:
        case FM_REPLY_STATUS:
        case FM_REPLY_ERROR:
            h = mix(h, v.str, v.len);
            break;
        case FM_REPLY_NIL:
            break;
        }
    }
    return h;
}

/* A hash of every table's rows (the first DIGEST_MAX of each) and counts. */
static uint64_t digest(struct harness *h)
{
    uint64_t d = 0xcbf29ce484222325ULL;
    size_t n = fm_engine_table_count(h->e);
    for (size_t i = 0; i < n; i++) {
        struct fm_table_stats ts;
        fm_engine_table_stats(h->e, i, &ts);
        d = mix(d, &ts.n_rows, sizeof(ts.n_rows));
        const uint8_t *argv[4] = {
            (const uint8_t *)"FIND", (const uint8_t *)ts.name,
            (const uint8_t *)"LIMIT", (const uint8_t *)"64"};
        size_t lens[4] = {4, strlen(ts.name), 5, 2};
        fm_reply_reset(&h->scratch);
        FM_ASSERT(fm_engine_exec(h->e, 4, argv, lens, &h->scratch) == FM_OK);
        d = read_reply(&h->scratch, d);
    }
    return d;
}

static void check(struct harness *h, const char *when)
{
    struct fm_error err = {0};
    if (fm_engine_check(h->e, &err) != FM_OK) {
        fprintf(stderr, "engine check failed %s: %s\n", when, err.msg);
        abort();
    }
}

/*
 * The reply of a failed command is its error alone: EXECABORT for a batch,
 * or OOM when even the error could not be appended.
 */
static void check_error_reply(const struct fm_reply *r, fm_status st,
                              bool multi, bool limited)
{
    struct fm_reply_cursor cur;
    struct fm_reply_value v;
    fm_reply_cursor_init(&cur, r);
    FM_ASSERT(fm_reply_next(&cur, &v));
    FM_ASSERT(v.type == FM_REPLY_ERROR);
    const char *code = fm_status_code(v.st);
    FM_ASSERT(strcmp(code, fm_status_code(st)) == 0 ||
              strcmp(code, "OOM") == 0 ||
              (multi && strcmp(code, "EXECABORT") == 0) ||
              (limited && strcmp(code, "LIMIT") == 0));
    FM_ASSERT(!fm_reply_next(&cur, &v));
}

/* ---- FIND against itself ------------------------------------------------ */

enum {
    MAX_IDS = 512, /* rows of a FIND that check_find compares */
    NAME_CAP = 64, /* a column name and its NUL (FM_NAME_CAP, schema.h) */
};

/* The ids of a FIND reply, in order; false when it is not one or is long. */
static bool reply_ids(const struct fm_reply *r, uint64_t *ids, size_t *n_out)
{
    struct fm_reply_cursor cur;
    struct fm_reply_value v;
    fm_reply_cursor_init(&cur, r);
    if (!fm_reply_next(&cur, &v) || v.type != FM_REPLY_ARRAY || v.n > MAX_IDS)
        return false;
    size_t n = v.n;
    for (size_t i = 0; i < n; i++) {
        FM_ASSERT(fm_reply_next(&cur, &v) && v.type == FM_REPLY_ARRAY);
        size_t n_vals = v.n;
        FM_ASSERT(n_vals >= 2 && n_vals % 2 == 0);
        FM_ASSERT(fm_reply_next(&cur, &v) && v.type == FM_REPLY_BULK);
        FM_ASSERT(v.len == 2 && memcmp(v.str, "id", 2) == 0);
        FM_ASSERT(fm_reply_next(&cur, &v) && v.type == FM_REPLY_INT);
        ids[i] = (uint64_t)v.i;
        for (size_t k = 2; k < n_vals; k++)
            FM_ASSERT(fm_reply_next(&cur, &v));
    }
    FM_ASSERT(!fm_reply_next(&cur, &v));
    *n_out = n;
    return true;
}

/* The name of column pick % n of the first row of a FIND reply, where n
 * is the number of columns, into out (NAME_CAP bytes). */
static bool column_name(const struct fm_reply *r, size_t pick, char *out)
{
    struct fm_reply_cursor cur;
    struct fm_reply_value v;
    fm_reply_cursor_init(&cur, r);
    if (!fm_reply_next(&cur, &v) || v.n == 0 || !fm_reply_next(&cur, &v))
        return false;
    size_t k = pick % (v.n / 2);
    for (size_t i = 0; i < 2 * k; i++)
        FM_ASSERT(fm_reply_next(&cur, &v));
    FM_ASSERT(fm_reply_next(&cur, &v) && v.type == FM_REPLY_BULK);
    FM_ASSERT(v.len < NAME_CAP);
    memcpy(out, v.str, v.len);
    out[v.len] = '\0';
    return true;
}

/* Runs c's arguments plus extra ones into h->scratch; false on failure. */
static bool find_variant(struct harness *h, const struct cmd *c,
                         const char *const *extra, size_t n_extra,
                         uint64_t *ids, size_t *n_out)
{
    const uint8_t *argv[MAX_ARGS + 8];
    size_t lens[MAX_ARGS + 8];
    memcpy(argv, c->argv, c->argc * sizeof(argv[0]));
    memcpy(lens, c->len, c->argc * sizeof(lens[0]));
    for (size_t i = 0; i < n_extra; i++) {
        argv[c->argc + i] = (const uint8_t *)extra[i];
        lens[c->argc + i] = strlen(extra[i]);
    }
    fm_reply_reset(&h->scratch);
    fm_status st =
        fm_engine_exec(h->e, c->argc + n_extra, argv, lens, &h->scratch);
    return st == FM_OK && reply_ids(&h->scratch, ids, n_out);
}

static bool is_word_ci(const uint8_t *p, size_t len, const char *w)
{
    if (len != strlen(w))
        return false;
    for (size_t i = 0; i < len; i++) {
        uint8_t ch = p[i] >= 'a' && p[i] <= 'z' ? p[i] - 32 : p[i];
        if (ch != (uint8_t)w[i])
            return false;
    }
    return true;
}

static void find_mismatch(const char *what)
{
    fprintf(stderr, "FIND disagrees with itself: %s\n", what);
    abort();
}

/*
 * For a FIND without ORDER BY and LIMIT that succeeded: COUNT with the same
 * WHERE gives as many rows; ORDER BY a column DESC is exactly ASC reversed
 * (ties go by id in the direction of the sort), and holds the same rows;
 * LIMIT and OFFSET cut exactly the slice of the whole result, with ORDER
 * BY (a top-k heap, or the index order) and without.
 */
static void check_find(struct harness *h, const struct cmd *c)
{
    if (c->argc < 2 || !is_word_ci(c->argv[0], c->len[0], "FIND"))
        return;
    for (size_t i = 2; i < c->argc; i++) {
        if (is_word_ci(c->argv[i], c->len[i], "ORDER") ||
            is_word_ci(c->argv[i], c->len[i], "LIMIT") ||
            is_word_ci(c->argv[i], c->len[i], "OFFSET"))
            return;
    }
    static uint64_t all[MAX_IDS], asc[MAX_IDS], desc[MAX_IDS], part[MAX_IDS];
    size_t n_all, n_asc, n_desc, n_part;
    if (!find_variant(h, c, NULL, 0, all, &n_all))
        return;
    /* Each column in turn would be slow: one, chosen by the command and
     * named as the first row names it. */
    size_t pick = c->argc;
    for (size_t i = 0; i < c->argc; i++)
        pick += c->len[i];
    char col[NAME_CAP];
    if (n_all > 0 && !column_name(&h->scratch, pick, col))
        find_mismatch("a row without columns");
    struct cmd count = *c;
    count.argv[0] = (const uint8_t *)"COUNT";
    count.len[0] = 5;
    fm_reply_reset(&h->scratch);
    FM_ASSERT(fm_engine_exec(h->e, count.argc, count.argv, count.len,
                             &h->scratch) == FM_OK);
    struct fm_reply_cursor cur;
    struct fm_reply_value v;
    fm_reply_cursor_init(&cur, &h->scratch);
    FM_ASSERT(fm_reply_next(&cur, &v) && v.type == FM_REPLY_INT);
    if ((uint64_t)v.i != n_all)
        find_mismatch("COUNT");
    if (n_all == 0)
        return;
    const char *order_asc[] = {"ORDER", "BY", col, "ASC"};
    const char *order_desc[] = {"ORDER", "BY", col, "DESC"};
    if (!find_variant(h, c, order_asc, 4, asc, &n_asc) ||
        !find_variant(h, c, order_desc, 4, desc, &n_desc))
        find_mismatch("ORDER BY a column of the rows fails");
    if (n_asc != n_all || n_desc != n_all)
        find_mismatch("ORDER BY changes the row count");
    for (size_t i = 0; i < n_all; i++) {
        if (asc[i] != desc[n_all - 1 - i])
            find_mismatch("DESC is not ASC reversed");
    }
    char lim[24];
    char off[24];
    snprintf(lim, sizeof(lim), "%zu", 1 + pick % 3);
    snprintf(off, sizeof(off), "%zu", pick / 3 % (n_all + 1));
    size_t l = 1 + pick % 3;
    size_t o = pick / 3 % (n_all + 1);
    size_t want = o + l <= n_all ? l : n_all - o;
    const char *sliced[] = {"ORDER", "BY", col,      "ASC",
                            "LIMIT", lim,  "OFFSET", off};
    if (!find_variant(h, c, sliced, 8, part, &n_part) || n_part != want ||
        memcmp(part, asc + o, want * sizeof(part[0])) != 0)
        find_mismatch("ORDER BY with LIMIT and OFFSET is not the slice");
    if (!find_variant(h, c, sliced + 4, 4, part, &n_part) || n_part != want ||
        memcmp(part, all + o, want * sizeof(part[0])) != 0)
        find_mismatch("LIMIT and OFFSET are not the slice");
}

/*
 * A read whose reply had limit bytes: the same command without a limit
 * must give the same status, and a reply that fits must be the one the
 * limited command gave; one that does not must have failed it as over the
 * limit.
 */
static void check_limited(struct harness *h, const struct cmd *c, fm_status st,
                          size_t limit)
{
    fm_reply_reset(&h->scratch);
    fm_status free_st =
        fm_engine_exec(h->e, c->argc, c->argv, c->len, &h->scratch);
    const struct fm_buf *a = &h->reply.buf;
    const struct fm_buf *b = &h->scratch.buf;
    bool fits = b->len <= limit;
    if (free_st != st ||
        (fits && (h->reply.failed || a->len != b->len ||
                  memcmp(a->data, b->data, a->len) != 0)) ||
        (!fits && !(h->reply.failed && h->reply.over_limit))) {
        fprintf(stderr, "a reply limit of %zu changed the answer\n", limit);
        abort();
    }
}

/* Runs one command or one batch, with the allocation hook if armed. */
static void run(struct harness *h, const struct cmd *cmds, size_t n, bool multi)
{
    bool writes = multi;
    for (size_t i = 0; i < n && !writes; i++)
        writes = cmds[i].argc > 0 &&
                 fm_engine_command_is_write(cmds[i].argv[0], cmds[i].len[0]);
    uint64_t before = writes ? digest(h) : 0;
    fm_reply_reset(&h->reply);
    size_t limit = h->limit;
    bool hooked = h->fail_at > 0;
    h->reply.limit = limit;
    h->limit = 0;
    h->n_allocs = 0;
    if (hooked)
        fm_set_alloc_fail_hook(fail_hook, h);
    fm_status st;
    if (multi) {
        struct fm_command batch[MAX_BATCH];
        for (size_t i = 0; i < n; i++)
            batch[i] =
                (struct fm_command){cmds[i].argc, cmds[i].argv, cmds[i].len};
        st = fm_engine_exec_multi(h->e, n, batch, &h->reply);
    } else {
        st = fm_engine_exec(h->e, cmds[0].argc, cmds[0].argv, cmds[0].len,
                            &h->reply);
    }
    fm_set_alloc_fail_hook(NULL, NULL);
    h->fail_at = 0;
    h->reply.limit = 0;
    read_reply(&h->reply, 0);
    if (limit > 0 && !hooked && !writes)
        check_limited(h, &cmds[0], st, limit);
    /* Reads change nothing; the final check covers them too. */
    if (writes || st != FM_OK)
        check(h, "after a command");
    if (st == FM_OK && !multi)
        check_find(h, &cmds[0]);
    if (st == FM_OK)
        return;
    check_error_reply(&h->reply, st, multi, limit > 0);
    if (writes && digest(h) != before) {
        fprintf(stderr, "a failed command (%s) changed the tables\n",
                fm_status_name(st));
        abort();
    }
}

static void remove_dir(const char *path)
{
    DIR *d = opendir(path);
    if (d == NULL)
        return;
    struct dirent *ent;
    char p[512];
    while ((ent = readdir(d)) != NULL) {
        if (strcmp(ent->d_name, ".") == 0 || strcmp(ent->d_name, "..") == 0)
            continue;
        snprintf(p, sizeof(p), "%s/%s", path, ent->d_name);
        unlink(p);
    }
    closedir(d);
    rmdir(path);
}

/* Opens the engine; false only for a custom schema that does not parse. */
static bool open_engine(struct harness *h)
{
    struct fm_engine_options opts = {0};
    opts.schema_text = h->ddl;
    opts.schema_len = h->ddl_len;
    opts.fsync = FM_FSYNC_NO;
    opts.dir = h->dir[0] != '\0' ? h->dir : NULL;
    struct fm_error err = {0};
    fm_status st = fm_engine_new(&opts, &h->e, &err);
    if (st == FM_ERR_SYNTAX && h->ddl != NULL && !h->opened)
        return false;
    if (st != FM_OK) {
        fprintf(stderr, "engine does not open: %s\n", err.msg);
        abort();
    }
    h->opened = true;
    return true;
}

static void flush(struct harness *h)
{
    struct fm_error err = {0};
    if (h->dir[0] != '\0' && fm_engine_flush(h->e, &err) != FM_OK) {
        fprintf(stderr, "flush failed: %s\n", err.msg);
        abort();
    }
}

/* Recovers the engine from its directory; it must come back the same. */
static void reopen(struct harness *h)
{
    flush(h);
    uint64_t before = digest(h);
    uint64_t rows = fm_engine_row_count(h->e);
    fm_engine_free(h->e);
    h->e = NULL;
    (void)open_engine(h); /* the schema opened once: failing aborts */
    check(h, "after recovery");
    if (digest(h) != before || fm_engine_row_count(h->e) != rows) {
        fprintf(stderr, "the recovered engine differs\n");
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t *copy = malloc(size + 1);
    FM_ASSERT(copy != NULL);
    memcpy(copy, data, size);
    copy[size] = '\0'; /* ends the number of a last "!N" or "@N" */
    struct harness h;
    memset(&h, 0, sizeof(h));
    static struct cmd cmds[MAX_LINES];
    size_t n_cmds = 0;
    size_t start = 0;
    for (size_t i = 0; i <= size && n_cmds < MAX_LINES; i++) {
        if (i == size || copy[i] == '\n') {
            split(copy + start, i - start, &cmds[n_cmds++]);
            start = i + 1;
        }
    }
    size_t first = 0;
    for (; first < n_cmds; first++) {
        const struct cmd *c = &cmds[first];
        if (same_word(c, "PERSIST") && h.dir[0] == '\0') {
            snprintf(h.dir, sizeof(h.dir), "%s/fm_fuzz_XXXXXX",
                     fm_fuzz_tmp_root());
            FM_ASSERT(mkdtemp(h.dir) != NULL);
        } else if (h.ddl == NULL && c->argc > 1 && c->len[0] == 3 &&
                   memcmp(c->argv[0], "DDL", 3) == 0) {
            h.ddl = (const char *)c->argv[1];
            h.ddl_len = (size_t)(c->end - c->argv[1]);
        } else {
            break;
        }
    }
    if (!open_engine(&h))
        goto out;
    for (size_t i = first; i < n_cmds; i++) {
        const struct cmd *c = &cmds[i];
        if (c->argc == 1 && c->len[0] > 1 && c->argv[0][0] == '!') {
            h.fail_at = strtol((const char *)c->argv[0] + 1, NULL, 10);
            continue;
        }
        if (c->argc == 1 && c->len[0] > 1 && c->argv[0][0] == '@') {
            h.limit = strtoul((const char *)c->argv[0] + 1, NULL, 10);
            continue;
        }
        if (same_word(c, "SAVE") && h.dir[0] != '\0') {
            struct fm_error err = {0};
            fm_status st = fm_engine_save(h.e, &err);
            FM_ASSERT(st == FM_OK);
            continue;
        }
        if (same_word(c, "REOPEN") && h.dir[0] != '\0') {
            reopen(&h);
            continue;
        }
        if (same_word(c, "MULTI")) {
            size_t j = i + 1;
            while (j < n_cmds && j - i - 1 < MAX_BATCH &&
                   !same_word(&cmds[j], "EXEC"))
                j++;
            run(&h, &cmds[i + 1], j - i - 1, true);
            i = j;
            continue;
        }
        if (c->argc > 0)
            run(&h, c, 1, false);
        flush(&h);
    }
    if (h.dir[0] != '\0')
        reopen(&h);
    check(&h, "at the end");
out:
    fm_engine_free(h.e);
    fm_reply_fini(&h.reply);
    fm_reply_fini(&h.scratch);
    if (h.dir[0] != '\0')
        remove_dir(h.dir);
    free(copy);
    return 0;
}
