/*
 * schema.c: the DDL parser and the built-in schema.
 *
 * The schema language is a small subset of SQL's CREATE TABLE, enough for
 * SPEC section 1 and for users who bring their own tables (docs/schema.md):
 *
 *   schema  := { "CREATE" "TABLE" name "(" element { "," element } ")" ";" }
 *   element := column | "UNIQUE" "(" names ")" | "INDEX" "(" names ")"
 *            | "FOREIGN" "KEY" "(" name ")" references
 *            | "CHECK" "(" name "IN" "(" literals ")" ")"
 *   column  := name type { "NOT" "NULL" | "NULL" | "DEFAULT" literal
 *            | "UNIQUE" | "INDEX" | references | "CHECK" "(" name "IN" ... }
 *   references := "REFERENCES" name [ "(" "id" ")" ]
 *                 [ "ON" "DELETE" ( "RESTRICT" | "CASCADE" | "SET" "NULL" ) ]
 *   type    := "integer" | "string" | "datetime"
 *   literal := [-]digits | 'text' ('' is a quote) | NULL
 *
 * Keywords are case-insensitive; names are snake_case, at most 63 bytes.
 * "--" starts a comment to the end of the line. Every table gets id,
 * created_at and updated_at implicitly; declaring them is an error.
 *
 * Index choice is made here, once: a single-column UNIQUE becomes a hash
 * index (equality only, O(1)); every other index, composite or not, is a
 * B+tree (prefix, range, order), which also keeps duplicate keys cheap. Every
 * foreign-key column gets a B+tree index unless an existing B+tree already
 * starts with that column (user_track_history's UNIQUE (user_id, track_id)
 * serves user_id), because RESTRICT, CASCADE and SET NULL must find the
 * referencing rows without a scan.
 *
 * Errors name the line and column of the offending token. The parser does
 * not allocate per token; it allocates the table array, CHECK lists, string
 * literals and the copy of the text.
 */
#include "engine/schema.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "engine/value.h"

const char fm_schema_default_text[] =
    "-- fermata default schema (SPEC section 1). Every table also has\n"
    "-- id integer (primary key), created_at and updated_at datetime.\n"
    "\n"
    "CREATE TABLE users (\n"
    "    username string NOT NULL UNIQUE,\n"
    "    email string NOT NULL UNIQUE,\n"
    "    password_digest string NOT NULL,\n"
    "    session_token string NOT NULL INDEX\n"
    ");\n"
    "\n"
    "CREATE TABLE artists (\n"
    "    name string NOT NULL\n"
    ");\n"
    "\n"
    "CREATE TABLE albums (\n"
    "    title string NOT NULL,\n"
    "    year integer NULL\n"
    ");\n"
    "\n"
    "CREATE TABLE genres (\n"
    "    name string NOT NULL UNIQUE\n"
    ");\n"
    "\n"
    "CREATE TABLE tracks (\n"
    "    title string NOT NULL,\n"
    "    song_url string NOT NULL UNIQUE,\n"
    "    album_id integer NOT NULL REFERENCES albums ON DELETE RESTRICT,\n"
    "    popularity integer NULL,\n"
    "    genre_id integer NULL REFERENCES genres ON DELETE SET NULL\n"
    ");\n"
    "\n"
    "CREATE TABLE playlists (\n"
    "    title string NOT NULL,\n"
    "    user_id integer NOT NULL REFERENCES users ON DELETE CASCADE\n"
    ");\n"
    "\n"
    "CREATE TABLE user_followers (\n"
    "    user_id integer NOT NULL REFERENCES users ON DELETE CASCADE,\n"
    "    follower_id integer NOT NULL REFERENCES users ON DELETE CASCADE,\n"
    "    UNIQUE (user_id, follower_id)\n"
    ");\n"
    "\n"
    "CREATE TABLE playlist_tracks (\n"
    "    playlist_id integer NOT NULL REFERENCES playlists ON DELETE "
    "CASCADE,\n"
    "    track_id integer NOT NULL REFERENCES tracks ON DELETE CASCADE\n"
    ");\n"
    "\n"
    "CREATE TABLE playlist_followers (\n"
    "    playlist_id integer NOT NULL REFERENCES playlists ON DELETE "
    "CASCADE,\n"
    "    follower_id integer NOT NULL REFERENCES users ON DELETE CASCADE,\n"
    "    UNIQUE (playlist_id, follower_id)\n"
    ");\n"
    "\n"
    "CREATE TABLE user_track_history (\n"
    "    user_id integer NOT NULL REFERENCES users ON DELETE CASCADE,\n"
    "    track_id integer NOT NULL REFERENCES tracks ON DELETE CASCADE,\n"
    "    listen_count integer NOT NULL DEFAULT 0,\n"
    "    rating integer NULL CHECK (rating IN (-1, 0, 1)),\n"
    "    UNIQUE (user_id, track_id)\n"
    ");\n";

enum tok_kind {
    TOK_END,
    TOK_WORD,   /* identifier or keyword */
    TOK_INT,    /* [-]digits */
    TOK_STRING, /* 'text' */
    TOK_PUNCT,  /* ( ) , ; */
};

struct token {
    enum tok_kind kind;
    const char *p; /* into the text; for strings, the raw quoted body */
    size_t len;
    size_t line;
    size_t col;
    size_t off;
};

struct parser {
    const char *text;
    size_t len;
    size_t pos;
    size_t line;
    size_t line_start;
    struct token tok; /* the current token */
    struct fm_schema *s;
    struct fm_error *err;
    /* Foreign-key targets are resolved after every table is known. */
    char fk_names[FM_MAX_TABLES][FM_MAX_COLUMNS][FM_NAME_CAP];
};

static fm_status fail(struct parser *ps, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static fm_status fail(struct parser *ps, const char *fmt, ...)
{
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    return fm_error_set(ps->err, FM_ERR_SYNTAX,
                        "schema line %zu column %zu: %s", ps->tok.line,
                        ps->tok.col, msg);
}

static void skip_space(struct parser *ps)
{
    while (ps->pos < ps->len) {
        char c = ps->text[ps->pos];
        if (c == '\n') {
            ps->line++;
            ps->pos++;
            ps->line_start = ps->pos;
        } else if (c == ' ' || c == '\t' || c == '\r') {
            ps->pos++;
        } else if (c == '-' && ps->pos + 1 < ps->len &&
                   ps->text[ps->pos + 1] == '-') {
            while (ps->pos < ps->len && ps->text[ps->pos] != '\n')
                ps->pos++;
        } else {
            break;
        }
    }
}

static fm_status next(struct parser *ps)
{
    skip_space(ps);
    struct token *t = &ps->tok;
    t->line = ps->line;
    t->col = ps->pos - ps->line_start + 1;
    t->off = ps->pos;
    t->p = ps->text + ps->pos;
    t->len = 0;
    if (ps->pos >= ps->len) {
        t->kind = TOK_END;
        return FM_OK;
    }
    char c = ps->text[ps->pos];
    if (isalpha((unsigned char)c) || c == '_') {
        while (ps->pos < ps->len &&
               (isalnum((unsigned char)ps->text[ps->pos]) ||
                ps->text[ps->pos] == '_'))
            ps->pos++;
        t->kind = TOK_WORD;
    } else if (isdigit((unsigned char)c) ||
               (c == '-' && ps->pos + 1 < ps->len &&
                isdigit((unsigned char)ps->text[ps->pos + 1]))) {
        ps->pos++;
        while (ps->pos < ps->len && isdigit((unsigned char)ps->text[ps->pos]))
            ps->pos++;
        t->kind = TOK_INT;
    } else if (c == '\'') {
        ps->pos++;
        for (;;) {
            if (ps->pos >= ps->len || ps->text[ps->pos] == '\n')
                return fail(ps, "%s", "unterminated string literal");
            if (ps->text[ps->pos] == '\'') {
                if (ps->pos + 1 < ps->len && ps->text[ps->pos + 1] == '\'') {
                    ps->pos += 2;
                    continue;
                }
                break;
            }
            ps->pos++;
        }
        ps->pos++;
        t->kind = TOK_STRING;
    } else if (c == '(' || c == ')' || c == ',' || c == ';') {
        ps->pos++;
        t->kind = TOK_PUNCT;
    } else {
        char what[8];
        snprintf(what, sizeof(what), "%c", c);
        return fail(ps, "unexpected character '%s'", what);
    }
    t->len = (size_t)(ps->text + ps->pos - t->p);
    return FM_OK;
}

static bool is_word(const struct parser *ps, const char *kw)
{
    size_t n = strlen(kw);
    if (ps->tok.kind != TOK_WORD || ps->tok.len != n)
        return false;
    for (size_t i = 0; i < n; i++) {
        if (tolower((unsigned char)ps->tok.p[i]) != kw[i])
            return false;
    }
    return true;
}

static bool is_punct(const struct parser *ps, char c)
{
    return ps->tok.kind == TOK_PUNCT && ps->tok.p[0] == c;
}

/* Describes the current token for an error message. */
static const char *tok_text(const struct parser *ps, char *buf, size_t cap)
{
    if (ps->tok.kind == TOK_END)
        return "end of text";
    size_t n = ps->tok.len < cap - 1 ? ps->tok.len : cap - 1;
    memcpy(buf, ps->tok.p, n);
    buf[n] = '\0';
    return buf;
}

static fm_status expect_word(struct parser *ps, const char *kw)
{
    char buf[64];
    char what[128];
    if (!is_word(ps, kw)) {
        snprintf(what, sizeof(what), "expected %s, found '%s'", kw,
                 tok_text(ps, buf, sizeof(buf)));
        return fail(ps, "%s", what);
    }
    return next(ps);
}

static fm_status expect_punct(struct parser *ps, char c)
{
    char buf[64];
    char what[128];
    if (!is_punct(ps, c)) {
        snprintf(what, sizeof(what), "expected '%c', found '%s'", c,
                 tok_text(ps, buf, sizeof(buf)));
        return fail(ps, "%s", what);
    }
    return next(ps);
}

static bool is_reserved(const struct parser *ps)
{
    static const char *const words[] = {
        "create", "table",   "not",      "null",    "default", "unique",
        "index",  "foreign", "key",      "check",   "in",      "references",
        "on",     "delete",  "restrict", "cascade", "set",
    };
    for (size_t i = 0; i < FM_ARRAY_LEN(words); i++) {
        if (is_word(ps, words[i]))
            return true;
    }
    return false;
}

/* Reads a name into out (lower-cased) and advances. */
static fm_status take_name(struct parser *ps, char *out, const char *what)
{
    char buf[64];
    char msg[160];
    if (ps->tok.kind != TOK_WORD || is_reserved(ps)) {
        snprintf(msg, sizeof(msg), "expected %s name, found '%s'", what,
                 tok_text(ps, buf, sizeof(buf)));
        return fail(ps, "%s", msg);
    }
    if (ps->tok.len >= FM_NAME_CAP)
        return fail(ps, "%s name is longer than 63 bytes", what);
    for (size_t i = 0; i < ps->tok.len; i++) {
        char c = (char)tolower((unsigned char)ps->tok.p[i]);
        out[i] = c;
    }
    out[ps->tok.len] = '\0';
    return next(ps);
}

static void literal_fini(struct fm_literal *l)
{
    fm_free(l->str);
    l->str = NULL;
}

/* Reads a literal into out and advances. On failure out owns nothing, so
 * that a caller that has not counted it yet leaks nothing. */
static fm_status take_literal(struct parser *ps, enum fm_type type,
                              struct fm_literal *out)
{
    memset(out, 0, sizeof(*out));
    if (is_word(ps, "null")) {
        out->is_null = true;
        return next(ps);
    }
    if (ps->tok.kind == TOK_INT && type == FM_TYPE_INTEGER) {
        if (!fm_parse_int64((const uint8_t *)ps->tok.p, ps->tok.len, &out->i))
            return fail(ps, "%s", "integer literal out of range");
        return next(ps);
    }
    if (ps->tok.kind != TOK_STRING || type == FM_TYPE_INTEGER)
        return fail(ps, "expected a literal of type %s", fm_type_name(type));
    /* Copy the body, turning '' into '. */
    size_t n = 0;
    char *s = fm_malloc(ps->tok.len);
    if (s == NULL)
        return fm_error_set(ps->err, FM_ERR_NOMEM, "out of memory");
    for (size_t i = 1; i + 1 < ps->tok.len; i++) {
        s[n++] = ps->tok.p[i];
        if (ps->tok.p[i] == '\'')
            i++;
    }
    if (type == FM_TYPE_DATETIME) {
        bool ok = fm_parse_datetime((const uint8_t *)s, n, &out->i);
        fm_free(s);
        if (!ok)
            return fail(ps, "%s", "bad datetime literal");
        return next(ps);
    }
    out->str = s;
    out->len = n;
    fm_status st = next(ps);
    if (st != FM_OK)
        literal_fini(out);
    return st;
}

static fm_status parse_type(struct parser *ps, enum fm_type *out)
{
    char buf[64];
    if (is_word(ps, "integer"))
        *out = FM_TYPE_INTEGER;
    else if (is_word(ps, "string"))
        *out = FM_TYPE_STRING;
    else if (is_word(ps, "datetime"))
        *out = FM_TYPE_DATETIME;
    else
        return fail(ps, "unknown column type '%s'",
                    tok_text(ps, buf, sizeof(buf)));
    return next(ps);
}

static int find_col(const struct fm_table_def *t, const char *name)
{
    for (size_t i = 0; i < t->n_cols; i++) {
        if (strcmp(t->cols[i].name, name) == 0)
            return (int)i;
    }
    return -1;
}

static fm_status add_index(struct parser *ps, struct fm_table_def *t,
                           const int *cols, size_t n, bool unique)
{
    if (t->n_indexes == FM_MAX_INDEXES)
        return fail(ps, "%s", "too many indexes in one table (at most 16)");
    struct fm_index_def *ix = &t->indexes[t->n_indexes++];
    memset(ix, 0, sizeof(*ix));
    ix->n_cols = n;
    ix->unique = unique;
    memcpy(ix->cols, cols, n * sizeof(int));
    /* Hash for single-column uniqueness: equality only, O(1). Everything
     * else is a B+tree, non-unique single columns included: many rows may
     * share one value (every logged-out user's empty session token), and
     * duplicates in a hash index share one probe run, which makes each
     * insert of the value O(duplicates); the B+tree orders them by id. */
    ix->hash = n == 1 && unique;
    /* Built in a local buffer: the names it copies live in *t too. */
    char name[sizeof(ix->name)];
    size_t o = (size_t)snprintf(name, sizeof(name), "%s", t->name);
    for (size_t i = 0; i < n && o < sizeof(name); i++)
        o += (size_t)snprintf(name + o, sizeof(name) - o, "_%s",
                              t->cols[cols[i]].name);
    if (o < sizeof(name))
        snprintf(name + o, sizeof(name) - o, "_%s", unique ? "key" : "idx");
    memcpy(ix->name, name, sizeof(name));
    return FM_OK;
}

static fm_status parse_name_list(struct parser *ps, struct fm_table_def *t,
                                 int *cols, size_t *n)
{
    fm_status st = expect_punct(ps, '(');
    *n = 0;
    while (st == FM_OK) {
        char name[FM_NAME_CAP];
        if ((st = take_name(ps, name, "column")) != FM_OK)
            return st;
        int c = find_col(t, name);
        if (c < 0)
            return fail(ps, "unknown column '%s'", name);
        if (*n == FM_INDEX_MAX_COLS)
            return fail(ps, "%s", "too many columns in one index (at most 8)");
        for (size_t i = 0; i < *n; i++) {
            if (cols[i] == c)
                return fail(ps, "column '%s' appears twice", name);
        }
        cols[(*n)++] = c;
        if (!is_punct(ps, ','))
            break;
        st = next(ps);
    }
    if (st != FM_OK)
        return st;
    return expect_punct(ps, ')');
}

static fm_status parse_references(struct parser *ps, size_t table_no,
                                  struct fm_column *col, size_t col_no)
{
    fm_status st = expect_word(ps, "references");
    if (st != FM_OK)
        return st;
    if (col->type != FM_TYPE_INTEGER)
        return fail(ps, "foreign key column '%s' must be integer", col->name);
    if (ps->fk_names[table_no][col_no][0] != '\0')
        return fail(ps, "column '%s' has two foreign keys", col->name);
    if ((st = take_name(ps, ps->fk_names[table_no][col_no], "table")) != FM_OK)
        return st;
    if (is_punct(ps, '(')) {
        if ((st = next(ps)) != FM_OK || (st = expect_word(ps, "id")) != FM_OK ||
            (st = expect_punct(ps, ')')) != FM_OK)
            return st;
    }
    col->fk_action = FM_FK_RESTRICT;
    if (!is_word(ps, "on"))
        return FM_OK;
    if ((st = next(ps)) != FM_OK || (st = expect_word(ps, "delete")) != FM_OK)
        return st;
    if (is_word(ps, "restrict")) {
        col->fk_action = FM_FK_RESTRICT;
    } else if (is_word(ps, "cascade")) {
        col->fk_action = FM_FK_CASCADE;
    } else if (is_word(ps, "set")) {
        if ((st = next(ps)) != FM_OK)
            return st;
        if (!is_word(ps, "null"))
            return fail(ps, "%s", "expected NULL after SET");
        col->fk_action = FM_FK_SET_NULL;
    } else {
        return fail(ps, "%s", "expected RESTRICT, CASCADE or SET NULL");
    }
    return next(ps);
}

/* CHECK ( col IN ( literal, ... ) ), with the CHECK keyword current. */
static fm_status parse_check(struct parser *ps, struct fm_table_def *t,
                             int only_col)
{
    fm_status st;
    char name[FM_NAME_CAP];
    if ((st = next(ps)) != FM_OK || (st = expect_punct(ps, '(')) != FM_OK ||
        (st = take_name(ps, name, "column")) != FM_OK)
        return st;
    int c = find_col(t, name);
    if (c < 0 || (only_col >= 0 && c != only_col))
        return fail(ps, "CHECK names column '%s', which it cannot constrain",
                    name);
    struct fm_column *col = &t->cols[c];
    if (col->check != NULL)
        return fail(ps, "column '%s' has two CHECK constraints", name);
    if ((st = expect_word(ps, "in")) != FM_OK ||
        (st = expect_punct(ps, '(')) != FM_OK)
        return st;
    col->check = fm_calloc(FM_MAX_CHECK_VALUES, sizeof(struct fm_literal));
    if (col->check == NULL)
        return fm_error_set(ps->err, FM_ERR_NOMEM, "out of memory");
    for (;;) {
        if (col->n_check == FM_MAX_CHECK_VALUES)
            return fail(ps, "%s", "too many CHECK values (at most 64)");
        struct fm_literal *lit = &col->check[col->n_check];
        if ((st = take_literal(ps, col->type, lit)) != FM_OK)
            return st;
        col->n_check++;
        if (lit->is_null)
            return fail(ps, "%s", "NULL cannot be a CHECK value");
        if (!is_punct(ps, ','))
            break;
        if ((st = next(ps)) != FM_OK)
            return st;
    }
    if ((st = expect_punct(ps, ')')) != FM_OK)
        return st;
    return expect_punct(ps, ')');
}

static fm_status add_implicit_column(struct fm_table_def *t, const char *name,
                                     enum fm_type type)
{
    struct fm_column *c = &t->cols[t->n_cols++];
    memset(c, 0, sizeof(*c));
    snprintf(c->name, sizeof(c->name), "%s", name);
    c->type = type;
    c->not_null = true;
    c->fk_table = -1;
    return FM_OK;
}

static fm_status parse_column(struct parser *ps, size_t table_no,
                              struct fm_table_def *t)
{
    char name[FM_NAME_CAP];
    struct token name_tok = ps->tok;
    fm_status st = take_name(ps, name, "column");
    if (st != FM_OK)
        return st;
    struct token after = ps->tok;
    ps->tok = name_tok; /* errors below point at the name */
    if (strcmp(name, "id") == 0 || strcmp(name, "created_at") == 0 ||
        strcmp(name, "updated_at") == 0)
        return fail(ps, "column '%s' is implicit in every table", name);
    if (find_col(t, name) >= 0)
        return fail(ps, "column '%s' is declared twice", name);
    if (t->n_cols + 2 >= FM_MAX_COLUMNS)
        return fail(ps, "%s", "too many columns (at most 61 per table)");
    ps->tok = after;
    size_t col_no = t->n_cols++;
    struct fm_column *col = &t->cols[col_no];
    memset(col, 0, sizeof(*col));
    memcpy(col->name, name, sizeof(name));
    col->fk_table = -1;
    if ((st = parse_type(ps, &col->type)) != FM_OK)
        return st;
    bool saw_null = false;
    for (;;) {
        int c = (int)col_no;
        if (is_word(ps, "not")) {
            if ((st = next(ps)) != FM_OK)
                return st;
            if (!is_word(ps, "null"))
                return fail(ps, "%s", "expected NULL after NOT");
            if (saw_null)
                return fail(ps, "%s", "column is declared NULL and NOT NULL");
            col->not_null = true;
            st = next(ps);
        } else if (is_word(ps, "null")) {
            if (col->not_null)
                return fail(ps, "%s", "column is declared NULL and NOT NULL");
            saw_null = true;
            st = next(ps);
        } else if (is_word(ps, "default")) {
            if (col->has_default)
                return fail(ps, "%s", "two DEFAULT clauses");
            if ((st = next(ps)) != FM_OK)
                return st;
            col->has_default = true;
            st = take_literal(ps, col->type, &col->def);
        } else if (is_word(ps, "unique")) {
            if ((st = next(ps)) == FM_OK)
                st = add_index(ps, t, &c, 1, true);
        } else if (is_word(ps, "index")) {
            if ((st = next(ps)) == FM_OK)
                st = add_index(ps, t, &c, 1, false);
        } else if (is_word(ps, "references")) {
            st = parse_references(ps, table_no, col, col_no);
        } else if (is_word(ps, "check")) {
            st = parse_check(ps, t, c);
        } else {
            return FM_OK;
        }
        if (st != FM_OK)
            return st;
    }
}

static fm_status parse_table_element(struct parser *ps, size_t table_no,
                                     struct fm_table_def *t)
{
    int cols[FM_INDEX_MAX_COLS];
    size_t n;
    fm_status st;
    if (is_word(ps, "unique") || is_word(ps, "index")) {
        bool unique = is_word(ps, "unique");
        if ((st = next(ps)) != FM_OK ||
            (st = parse_name_list(ps, t, cols, &n)) != FM_OK)
            return st;
        return add_index(ps, t, cols, n, unique);
    }
    if (is_word(ps, "foreign")) {
        if ((st = next(ps)) != FM_OK ||
            (st = expect_word(ps, "key")) != FM_OK ||
            (st = parse_name_list(ps, t, cols, &n)) != FM_OK)
            return st;
        if (n != 1)
            return fail(ps, "%s", "a foreign key has exactly one column");
        if (cols[0] == FM_COL_ID)
            return fail(ps, "%s", "id cannot be a foreign key");
        return parse_references(ps, table_no, &t->cols[cols[0]],
                                (size_t)cols[0]);
    }
    if (is_word(ps, "check"))
        return parse_check(ps, t, -1);
    return parse_column(ps, table_no, t);
}

static fm_status parse_table(struct parser *ps)
{
    struct fm_schema *s = ps->s;
    size_t start = ps->tok.off;
    fm_status st = expect_word(ps, "create");
    if (st != FM_OK || (st = expect_word(ps, "table")) != FM_OK)
        return st;
    if (s->n_tables == FM_MAX_TABLES)
        return fail(ps, "%s", "too many tables (at most 64)");
    size_t table_no = s->n_tables;
    struct fm_table_def *t = &s->tables[table_no];
    memset(t, 0, sizeof(*t));
    struct token name_tok = ps->tok;
    if ((st = take_name(ps, t->name, "table")) != FM_OK)
        return st;
    for (size_t i = 0; i < table_no; i++) {
        if (strcmp(s->tables[i].name, t->name) == 0) {
            ps->tok = name_tok; /* point the error at the name */
            return fail(ps, "table '%s' is declared twice", t->name);
        }
    }
    s->n_tables++;
    add_implicit_column(t, "id", FM_TYPE_INTEGER);
    if ((st = expect_punct(ps, '(')) != FM_OK)
        return st;
    for (;;) {
        /* Table elements may name columns declared before them only; the
         * implicit timestamps are appended after the last element. */
        if ((st = parse_table_element(ps, table_no, t)) != FM_OK)
            return st;
        if (!is_punct(ps, ','))
            break;
        if ((st = next(ps)) != FM_OK)
            return st;
        if (is_punct(ps, ')'))
            break; /* a trailing comma is forgiven */
    }
    if ((st = expect_punct(ps, ')')) != FM_OK)
        return st;
    add_implicit_column(t, "created_at", FM_TYPE_DATETIME);
    add_implicit_column(t, "updated_at", FM_TYPE_DATETIME);
    t->text_off = start;
    t->text_len = ps->tok.off - start + 1;
    return expect_punct(ps, ';');
}

/* True when an existing B+tree index of t starts with column c. */
static bool btree_starts_with(const struct fm_table_def *t, int c)
{
    for (size_t i = 0; i < t->n_indexes; i++) {
        if (!t->indexes[i].hash && t->indexes[i].cols[0] == c)
            return true;
    }
    return false;
}

static int index_starting_with(const struct fm_table_def *t, int c)
{
    for (size_t i = 0; i < t->n_indexes; i++) {
        if (!t->indexes[i].hash && t->indexes[i].cols[0] == c)
            return (int)i;
    }
    return -1;
}

/* Resolves REFERENCES names, adds implicit indexes and back-links. */
static fm_status resolve_foreign_keys(struct parser *ps)
{
    struct fm_schema *s = ps->s;
    for (size_t ti = 0; ti < s->n_tables; ti++) {
        struct fm_table_def *t = &s->tables[ti];
        for (size_t ci = 0; ci < t->n_cols; ci++) {
            const char *target = ps->fk_names[ti][ci];
            if (target[0] == '\0')
                continue;
            int r = -1;
            for (size_t k = 0; k < s->n_tables; k++) {
                if (strcmp(s->tables[k].name, target) == 0)
                    r = (int)k;
            }
            if (r < 0)
                return fm_error_set(ps->err, FM_ERR_SYNTAX,
                                    "schema: %s.%s references unknown table "
                                    "'%s'",
                                    t->name, t->cols[ci].name, target);
            struct fm_column *col = &t->cols[ci];
            col->fk_table = r;
            if (col->fk_action == FM_FK_SET_NULL && col->not_null)
                return fm_error_set(ps->err, FM_ERR_SYNTAX,
                                    "schema: %s.%s is NOT NULL but its foreign "
                                    "key says ON DELETE SET NULL",
                                    t->name, col->name);
            int c = (int)ci;
            if (!btree_starts_with(t, c)) {
                fm_status st = add_index(ps, t, &c, 1, false);
                if (st != FM_OK)
                    return st;
                struct fm_index_def *ix = &t->indexes[t->n_indexes - 1];
                ix->hash = false;
                ix->implicit = true;
            }
            struct fm_table_def *parent = &s->tables[r];
            if (parent->n_refs == FM_ARRAY_LEN(parent->refs))
                return fm_error_set(ps->err, FM_ERR_SYNTAX,
                                    "schema: too many foreign keys point at "
                                    "table '%s'",
                                    parent->name);
            struct fm_fk_ref *ref = &parent->refs[parent->n_refs++];
            ref->table = (int)ti;
            ref->column = c;
            ref->index = index_starting_with(t, c);
        }
    }
    return FM_OK;
}

/* Defaults and CHECK values must satisfy the column's own constraints. */
static fm_status validate(struct parser *ps)
{
    struct fm_schema *s = ps->s;
    for (size_t ti = 0; ti < s->n_tables; ti++) {
        struct fm_table_def *t = &s->tables[ti];
        for (size_t ci = 0; ci < t->n_cols; ci++) {
            struct fm_column *c = &t->cols[ci];
            if (!c->has_default)
                continue;
            if (c->def.is_null && c->not_null)
                return fm_error_set(ps->err, FM_ERR_SYNTAX,
                                    "schema: %s.%s is NOT NULL with DEFAULT "
                                    "NULL",
                                    t->name, c->name);
            if (c->type == FM_TYPE_STRING && c->def.len > FM_STRING_MAX)
                return fm_error_set(ps->err, FM_ERR_SYNTAX,
                                    "schema: default of %s.%s is too long",
                                    t->name, c->name);
        }
    }
    return FM_OK;
}

fm_status fm_schema_parse(const char *text, size_t len, struct fm_schema *out,
                          struct fm_error *err)
{
    struct fm_schema s;
    memset(&s, 0, sizeof(s));
    struct parser *ps = fm_calloc(1, sizeof(*ps));
    fm_status st = FM_ERR_NOMEM;
    if (ps == NULL)
        return fm_error_set(err, FM_ERR_NOMEM, "out of memory");
    s.text = fm_malloc(len + 1);
    s.tables = fm_calloc(FM_MAX_TABLES, sizeof(struct fm_table_def));
    if (s.text == NULL || s.tables == NULL) {
        fm_error_set(err, FM_ERR_NOMEM, "out of memory");
        goto fail;
    }
    memcpy(s.text, text, len);
    s.text[len] = '\0';
    s.text_len = len;
    if (memchr(text, '\0', len) != NULL) {
        st = fm_error_set(err, FM_ERR_SYNTAX, "schema: text contains a NUL");
        goto fail;
    }
    ps->text = s.text;
    ps->len = len;
    ps->line = 1;
    ps->s = &s;
    ps->err = err;
    if ((st = next(ps)) != FM_OK)
        goto fail;
    while (ps->tok.kind != TOK_END) {
        if ((st = parse_table(ps)) != FM_OK)
            goto fail;
    }
    if (s.n_tables == 0) {
        st = fm_error_set(err, FM_ERR_SYNTAX, "schema: no tables declared");
        goto fail;
    }
    if ((st = resolve_foreign_keys(ps)) != FM_OK ||
        (st = validate(ps)) != FM_OK)
        goto fail;
    for (size_t ti = 0; ti < s.n_tables; ti++) {
        struct fm_table_def *t = &s.tables[ti];
        t->name_len = strlen(t->name);
        for (size_t ci = 0; ci < t->n_cols; ci++)
            t->cols[ci].name_len = strlen(t->cols[ci].name);
    }
    fm_free(ps);
    *out = s;
    return FM_OK;
fail:
    fm_free(ps);
    fm_schema_fini(&s);
    return st;
}

void fm_schema_fini(struct fm_schema *s)
{
    for (size_t ti = 0; s->tables != NULL && ti < s->n_tables; ti++) {
        struct fm_table_def *t = &s->tables[ti];
        for (size_t ci = 0; ci < t->n_cols; ci++) {
            literal_fini(&t->cols[ci].def);
            for (size_t k = 0; k < t->cols[ci].n_check; k++)
                literal_fini(&t->cols[ci].check[k]);
            fm_free(t->cols[ci].check);
        }
    }
    /* A table that failed half-way may hold CHECK lists past n_tables. */
    if (s->tables != NULL && s->n_tables < FM_MAX_TABLES) {
        struct fm_table_def *t = &s->tables[s->n_tables];
        for (size_t ci = 0; ci < t->n_cols && ci < FM_MAX_COLUMNS; ci++) {
            literal_fini(&t->cols[ci].def);
            for (size_t k = 0; k < t->cols[ci].n_check; k++)
                literal_fini(&t->cols[ci].check[k]);
            fm_free(t->cols[ci].check);
        }
    }
    fm_free(s->tables);
    fm_free(s->text);
    memset(s, 0, sizeof(*s));
}

/* Names are stored in lower case and are usually sent that way: an exact
 * comparison first, case folding only when it fails. */
static bool name_equals(const char *stored, size_t stored_len,
                        const uint8_t *name, size_t len)
{
    if (stored_len != len)
        return false;
    if (memcmp(stored, name, len) == 0)
        return true;
    for (size_t k = 0; k < len; k++) {
        if (tolower(name[k]) != stored[k])
            return false;
    }
    return true;
}

int fm_schema_find_table(const struct fm_schema *s, const uint8_t *name,
                         size_t len)
{
    for (size_t i = 0; i < s->n_tables; i++) {
        if (name_equals(s->tables[i].name, s->tables[i].name_len, name, len))
            return (int)i;
    }
    return -1;
}

int fm_schema_find_column(const struct fm_table_def *t, const uint8_t *name,
                          size_t len)
{
    for (size_t i = 0; i < t->n_cols; i++) {
        if (name_equals(t->cols[i].name, t->cols[i].name_len, name, len))
            return (int)i;
    }
    return -1;
}

const char *fm_type_name(enum fm_type type)
{
    switch (type) {
    case FM_TYPE_INTEGER:
        return "integer";
    case FM_TYPE_STRING:
        return "string";
    case FM_TYPE_DATETIME:
        return "datetime";
    }
    return "unknown";
}
