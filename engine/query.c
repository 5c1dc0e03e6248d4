/*
 * query.c: the command language of SPEC section 3 for data commands, and
 * the planner that picks an index for FIND, COUNT and DELETE ... WHERE.
 *
 * Commands arrive as argument vectors of byte strings, exactly as a RESP
 * client sends them; nothing here is NUL-terminated. Keywords and table and
 * column names are case-insensitive. Values are parsed by the type of the
 * column they are given for; "NULL" means NULL for integer and datetime
 * columns and is plain text for string columns, so that a user called
 * "NULL" is not lost (docs/commands.md).
 *
 * Planning. A WHERE clause is a conjunction of "col op value" terms. Every
 * term is re-checked on every candidate row, so an access path only has to
 * return a superset of the matches; that keeps the planner small:
 *
 *   id = v                  one slot lookup
 *   id range                a walk of the id map from lo to hi
 *   hash index              equality on all its columns
 *   B+tree index            equality on a prefix of its columns, then an
 *                           optional range on the next column
 *   full scan               the id map from the start
 *
 * Candidates are scored by how selective they can be (id lookup, then a
 * unique key, then the number of equality columns, then a range) and, at
 * equal score, by whether they deliver rows in the requested order. FIND
 * without ORDER BY returns rows in id order. If the path does not deliver the
 * order, matches are sorted: with a LIMIT, in a bounded binary heap of
 * offset + limit entries (top-k), else all of them. Ties in ORDER BY are
 * broken by id, in the direction of the sort. NULL sorts first ascending and
 * last descending, and compares false with every operator except "= NULL"
 * and "!= NULL", which mean IS NULL and IS NOT NULL.
 *
 * A reply may have a byte limit (fm_reply.limit; the server's output
 * buffer limit). FIND stops its scan as soon as its reply has failed, and
 * a FIND that sorts stops collecting rows as soon as their number alone,
 * at the smallest size a row can take, proves that the reply cannot fit
 * (sort_stop), so a result larger than the limit is never built, or
 * sorted, in full. A FIND of an EXEC batch whose reply has already failed
 * does not scan at all.
 *
 * Nothing here allocates per command once the engine is warm: keys, id lists
 * and sort entries live in scratch buffers of the engine.
 */
#include "engine/engine_int.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>

#define MAX_CONDS 32

enum op { OP_EQ, OP_NE, OP_LT, OP_LE, OP_GT, OP_GE };

static const char *const op_names[] = {"=", "!=", "<", "<=", ">", ">="};

struct cond {
    int col;
    enum op op;
    struct fm_value v;
};

struct query {
    struct fm_table *t;
    size_t n_conds;
    struct cond conds[MAX_CONDS];
    int order_col; /* -1: none given, which means id */
    bool desc;
    bool has_limit;
    uint64_t limit;
    uint64_t offset;
};

enum plan_kind { P_EMPTY, P_ID, P_ID_RANGE, P_HASH, P_BTREE };

struct plan {
    enum plan_kind kind;
    int ix;         /* P_HASH, P_BTREE */
    size_t n_eq;    /* leading index columns fixed by equality */
    int range_col;  /* column ranged after them, or -1 */
    bool ordered;   /* rows come in the requested order */
    bool reverse;   /* walk the path backwards */
    uint64_t id_lo; /* P_ID, P_ID_RANGE: inclusive bounds */
    uint64_t id_hi;
    bool has_lo; /* P_BTREE bounds, in e->key and e->key2 */
    bool lo_incl;
    bool has_hi;
    bool hi_incl;
};

/* ---- small helpers ------------------------------------------------------- */

/* Case-insensitive match of p against the upper-case keyword kw. */
static bool word_is(const uint8_t *p, size_t len, const char *kw)
{
    for (size_t i = 0; i < len; i++) {
        /* kw[i] is '\0' past its end, which no letter matches. */
        if ((p[i] & 0xdf) != (uint8_t)kw[i] || kw[i] == '\0')
            return false;
    }
    return kw[len] == '\0';
}

static fm_status err_syntax(struct fm_engine *e, const uint8_t *p, size_t len)
{
    char q[96];
    if (p == NULL)
        return fm_error_set(&e->err, FM_ERR_SYNTAX,
                            "syntax error: the command ends too early");
    fm_format_value(q, sizeof(q), p, len);
    return fm_error_set(&e->err, FM_ERR_SYNTAX, "syntax error near '%s'", q);
}

static fm_status find_table(struct fm_engine *e, const uint8_t *p, size_t len,
                            struct fm_table **out)
{
    int t = fm_schema_find_table(&e->schema, p, len);
    if (t < 0) {
        char q[96];
        fm_format_value(q, sizeof(q), p, len);
        return fm_error_set(&e->err, FM_ERR_SYNTAX, "unknown table '%s'", q);
    }
    *out = &e->tables[t];
    return FM_OK;
}

static fm_status find_column(struct fm_engine *e, const struct fm_table *t,
                             const uint8_t *p, size_t len, int *out)
{
    int c = fm_schema_find_column(t->def, p, len);
    if (c < 0) {
        char q[96];
        fm_format_value(q, sizeof(q), p, len);
        return fm_error_set(&e->err, FM_ERR_SYNTAX,
                            "unknown column '%s' in table %s", q, t->def->name);
    }
    *out = c;
    return FM_OK;
}

/* Parses the text of a value for column col of t into *v (borrowing p). */
static fm_status parse_value(struct fm_engine *e, const struct fm_table *t,
                             int col, const uint8_t *p, size_t len,
                             struct fm_value *v)
{
    const struct fm_column *c = &t->def->cols[col];
    memset(v, 0, sizeof(*v));
    if (c->type == FM_TYPE_STRING) {
        if (len > FM_STRING_MAX)
            return fm_error_set(&e->err, FM_ERR_LIMIT,
                                "%s.%s value is %zu bytes, over the limit of "
                                "%d",
                                t->def->name, c->name, len, FM_STRING_MAX);
        v->s = p;
        v->len = len;
        return FM_OK;
    }
    if (word_is(p, len, "NULL")) {
        v->is_null = true;
        return FM_OK;
    }
    bool ok = c->type == FM_TYPE_INTEGER ? fm_parse_int64(p, len, &v->i)
                                         : fm_parse_datetime(p, len, &v->i);
    if (ok)
        return FM_OK;
    char q[96];
    fm_format_value(q, sizeof(q), p, len);
    return fm_error_set(&e->err, FM_ERR_TYPE, "%s.%s expects %s, got '%s'",
                        t->def->name, c->name, fm_type_name(c->type), q);
}

static fm_status parse_id(struct fm_engine *e, const struct fm_table *t,
                          const uint8_t *p, size_t len, int64_t *out)
{
    if (fm_parse_int64(p, len, out))
        return FM_OK;
    char q[96];
    fm_format_value(q, sizeof(q), p, len);
    return fm_error_set(&e->err, FM_ERR_TYPE, "%s.id expects integer, got '%s'",
                        t->def->name, q);
}

static bool id_in_range(int64_t id)
{
    return id > 0 && (uint64_t)id < FM_ID_MAX;
}

/* Compares two non-NULL values of one type: <0, 0, >0. */
static int value_cmp(enum fm_type type, const struct fm_value *a,
                     const struct fm_value *b)
{
    if (type != FM_TYPE_STRING)
        return (a->i > b->i) - (a->i < b->i);
    size_t n = a->len < b->len ? a->len : b->len;
    int r = n ? memcmp(a->s, b->s, n) : 0;
    if (r != 0)
        return r;
    return (a->len > b->len) - (a->len < b->len);
}

static bool cond_holds(const struct fm_table *t, const struct cond *c,
                       const struct fm_row *row)
{
    const struct fm_value *v = &row->v[c->col];
    if (c->v.is_null) {
        if (c->op == OP_EQ)
            return v->is_null;
        return !v->is_null; /* OP_NE; others are refused by the parser */
    }
    if (v->is_null)
        return false;
    int r = value_cmp(t->def->cols[c->col].type, v, &c->v);
    switch (c->op) {
    case OP_EQ:
        return r == 0;
    case OP_NE:
        return r != 0;
    case OP_LT:
        return r < 0;
    case OP_LE:
        return r <= 0;
    case OP_GT:
        return r > 0;
    case OP_GE:
        return r >= 0;
    }
    return false;
}

static bool row_matches(const struct query *q, const struct fm_row *row)
{
    for (size_t i = 0; i < q->n_conds; i++) {
        if (!cond_holds(q->t, &q->conds[i], row))
            return false;
    }
    return true;
}

/* The most bytes put_value writes for a value that is not a string. */
#define VALUE_MAX (FM_REPLY_NUM_MAX + FM_DATETIME_TEXT_CAP + 2)

/* Writes v at o as a reply carries it (datetime as text); returns the
 * length, at most VALUE_MAX plus a string's length. */
static size_t put_value(struct fm_engine *e, uint8_t *o, enum fm_type type,
                        const struct fm_value *v)
{
    if (v->is_null) {
        memcpy(o, "$-1\r\n", 5);
        return 5;
    }
    if (type == FM_TYPE_INTEGER)
        return fm_reply_put_num(o, ':', v->i);
    if (type == FM_TYPE_DATETIME) {
        char text[FM_DATETIME_TEXT_CAP];
        size_t n = fm_format_datetime_cached(v->i, &e->dt_cache, text);
        return fm_reply_put_bulk(o, text, n);
    }
    return fm_reply_put_bulk(o, v->s, v->len);
}

void fm_reply_value(struct fm_engine *e, struct fm_reply *r, enum fm_type type,
                    const struct fm_value *v)
{
    size_t need = VALUE_MAX;
    if (!v->is_null && type == FM_TYPE_STRING)
        need += v->len;
    uint8_t *o = fm_reply_room(r, need);
    if (o != NULL)
        fm_reply_advance(r, put_value(e, o, type, v));
}

/*
 * A row in one pass: its size is bounded first (the names are fixed, the
 * strings' lengths known), so the reply grows at most once, and each
 * column's name is copied ready-encoded.
 */
static void reply_row(struct fm_engine *e, struct fm_reply *r,
                      const struct fm_table *t, const struct fm_row *row)
{
    const struct fm_table_def *d = t->def;
    size_t need = FM_REPLY_NUM_MAX + t->resp_name_off[d->n_cols];
    for (size_t c = 0; c < d->n_cols; c++) {
        need += VALUE_MAX;
        if (!row->v[c].is_null && d->cols[c].type == FM_TYPE_STRING)
            need += row->v[c].len;
    }
    uint8_t *p = fm_reply_room(r, need);
    if (p == NULL)
        return;
    uint8_t *o = p + fm_reply_put_num(p, '*', (int64_t)d->n_cols * 2);
    for (size_t c = 0; c < d->n_cols; c++) {
        size_t name_len = t->resp_name_off[c + 1] - t->resp_name_off[c];
        memcpy(o, t->resp_names + t->resp_name_off[c], name_len);
        o += name_len;
        o += put_value(e, o, d->cols[c].type, &row->v[c]);
    }
    fm_reply_advance(r, (size_t)(o - p));
}

/* ---- WHERE / ORDER BY / LIMIT
 * ------------------------------------------------ */

static bool parse_op(const uint8_t *p, size_t len, enum op *out)
{
    for (size_t i = 0; i < FM_ARRAY_LEN(op_names); i++) {
        if (len == strlen(op_names[i]) && memcmp(p, op_names[i], len) == 0) {
            *out = (enum op)i;
            return true;
        }
    }
    if (len == 2 && memcmp(p, "<>", 2) == 0) {
        *out = OP_NE;
        return true;
    }
    if (len == 2 && memcmp(p, "==", 2) == 0) {
        *out = OP_EQ;
        return true;
    }
    return false;
}

static fm_status parse_count(struct fm_engine *e, const uint8_t *p, size_t len,
                             const char *what, uint64_t *out)
{
    int64_t v;
    if (!fm_parse_int64(p, len, &v) || v < 0) {
        char q[96];
        fm_format_value(q, sizeof(q), p, len);
        return fm_error_set(&e->err, FM_ERR_SYNTAX,
                            "%s expects a non-negative integer, got '%s'", what,
                            q);
    }
    *out = (uint64_t)v;
    return FM_OK;
}

/*
 * Parses "[WHERE ...] [ORDER BY col [ASC|DESC]] [LIMIT n [OFFSET m]]" from
 * argv[i..argc). allow_order is false for COUNT and DELETE.
 */
static fm_status parse_clauses(struct fm_engine *e, struct query *q,
                               size_t argc, const uint8_t *const *argv,
                               const size_t *len, size_t i, bool allow_order)
{
    fm_status st;
    q->order_col = -1;
    if (i < argc && word_is(argv[i], len[i], "WHERE")) {
        i++;
        for (;;) {
            if (i + 3 > argc)
                return err_syntax(e, i < argc ? argv[i] : NULL,
                                  i < argc ? len[i] : 0);
            if (q->n_conds == MAX_CONDS)
                return fm_error_set(&e->err, FM_ERR_LIMIT,
                                    "WHERE has more than %d terms", MAX_CONDS);
            struct cond *c = &q->conds[q->n_conds];
            if ((st = find_column(e, q->t, argv[i], len[i], &c->col)) != FM_OK)
                return st;
            if (!parse_op(argv[i + 1], len[i + 1], &c->op))
                return fm_error_set(&e->err, FM_ERR_SYNTAX,
                                    "unknown operator '%.*s' (use = != < <= > "
                                    ">=)",
                                    (int)(len[i + 1] > 16 ? 16 : len[i + 1]),
                                    (const char *)argv[i + 1]);
            if ((st = parse_value(e, q->t, c->col, argv[i + 2], len[i + 2],
                                  &c->v)) != FM_OK)
                return st;
            if (c->v.is_null && c->op != OP_EQ && c->op != OP_NE)
                return fm_error_set(&e->err, FM_ERR_SYNTAX,
                                    "NULL can only be compared with = or !=");
            q->n_conds++;
            i += 3;
            if (i < argc && word_is(argv[i], len[i], "AND")) {
                i++;
                continue;
            }
            break;
        }
    }
    if (allow_order && i < argc && word_is(argv[i], len[i], "ORDER")) {
        if (i + 2 >= argc || !word_is(argv[i + 1], len[i + 1], "BY"))
            return err_syntax(e, i + 1 < argc ? argv[i + 1] : NULL,
                              i + 1 < argc ? len[i + 1] : 0);
        if ((st = find_column(e, q->t, argv[i + 2], len[i + 2],
                              &q->order_col)) != FM_OK)
            return st;
        i += 3;
        if (i < argc && word_is(argv[i], len[i], "ASC")) {
            i++;
        } else if (i < argc && word_is(argv[i], len[i], "DESC")) {
            q->desc = true;
            i++;
        }
    }
    if (allow_order && i < argc && word_is(argv[i], len[i], "LIMIT")) {
        if (i + 1 >= argc)
            return err_syntax(e, NULL, 0);
        if ((st = parse_count(e, argv[i + 1], len[i + 1], "LIMIT",
                              &q->limit)) != FM_OK)
            return st;
        q->has_limit = true;
        i += 2;
        if (i < argc && word_is(argv[i], len[i], "OFFSET")) {
            if (i + 1 >= argc)
                return err_syntax(e, NULL, 0);
            if ((st = parse_count(e, argv[i + 1], len[i + 1], "OFFSET",
                                  &q->offset)) != FM_OK)
                return st;
            i += 2;
        }
    }
    if (i < argc)
        return err_syntax(e, argv[i], len[i]);
    return FM_OK;
}

/* ---- planning
 * ------------------------------------------------------------------ */

/* The equality term on column col with a non-NULL value, or NULL. */
static const struct cond *eq_cond(const struct query *q, int col,
                                  bool allow_null)
{
    for (size_t i = 0; i < q->n_conds; i++) {
        const struct cond *c = &q->conds[i];
        if (c->col == col && c->op == OP_EQ && (allow_null || !c->v.is_null))
            return c;
    }
    return NULL;
}

static bool has_range(const struct query *q, int col)
{
    for (size_t i = 0; i < q->n_conds; i++) {
        const struct cond *c = &q->conds[i];
        if (c->col == col && c->op >= OP_LT && !c->v.is_null)
            return true;
    }
    return false;
}

/* The tightest bound among range terms on col: lower (GT/GE) or upper. */
static const struct cond *range_bound(const struct query *q, int col,
                                      bool lower)
{
    const struct cond *best = NULL;
    enum fm_type type = q->t->def->cols[col].type;
    for (size_t i = 0; i < q->n_conds; i++) {
        const struct cond *c = &q->conds[i];
        if (c->col != col || c->v.is_null)
            continue;
        bool is_lower = c->op == OP_GT || c->op == OP_GE;
        bool is_upper = c->op == OP_LT || c->op == OP_LE;
        if ((lower && !is_lower) || (!lower && !is_upper))
            continue;
        if (best == NULL) {
            best = c;
            continue;
        }
        int r = value_cmp(type, &c->v, &best->v);
        if (lower ? (r > 0 || (r == 0 && c->op == OP_GT))
                  : (r < 0 || (r == 0 && c->op == OP_LT)))
            best = c;
    }
    return best;
}

struct candidate {
    struct plan p;
    int score;
};

static void consider(struct candidate *best, const struct plan *p, int score)
{
    if (score > best->score ||
        (score == best->score && p->ordered && !best->p.ordered)) {
        best->p = *p;
        best->score = score;
    }
}

/* The order the query wants, after equality terms are taken into account:
 * ORDER BY a column fixed by "= value" is ORDER BY id. */
static int effective_order_col(const struct query *q)
{
    if (q->order_col > 0 && eq_cond(q, q->order_col, true) != NULL)
        return FM_COL_ID;
    return q->order_col < 0 ? FM_COL_ID : q->order_col;
}

static void plan_btree(const struct query *q, int ix_no, struct candidate *best)
{
    const struct fm_index *ix = &q->t->indexes[ix_no];
    const struct fm_index_def *d = ix->def;
    int order = effective_order_col(q);
    struct plan p;
    memset(&p, 0, sizeof(p));
    p.kind = P_BTREE;
    p.ix = ix_no;
    p.range_col = -1;
    /* A unique index holds NULL keys with the row id appended, so an
     * equality on NULL cannot use it. */
    while (p.n_eq < d->n_cols && eq_cond(q, d->cols[p.n_eq], !d->unique))
        p.n_eq++;
    if (p.n_eq < d->n_cols && has_range(q, d->cols[p.n_eq]))
        p.range_col = d->cols[p.n_eq];
    bool full = p.n_eq == d->n_cols;
    if (full && order == FM_COL_ID)
        p.ordered = true;
    if (!full && d->cols[p.n_eq] == order && p.n_eq + 1 == d->n_cols)
        p.ordered = true;
    if (full && d->unique)
        p.ordered = true; /* at most one row */
    p.reverse = p.ordered && q->desc;
    int score = (int)p.n_eq * 10 + (p.range_col >= 0 ? 5 : 0);
    if (full && d->unique)
        score += 400;
    if (score == 0 && !p.ordered)
        return; /* no better than a scan */
    consider(best, &p, score);
}

static void plan_query(const struct query *q, struct plan *out)
{
    struct candidate best;
    memset(&best, 0, sizeof(best));
    int order = effective_order_col(q);
    /* The full scan in id order is always possible. */
    best.p.kind = P_ID_RANGE;
    best.p.id_lo = 1;
    best.p.id_hi = FM_ID_MAX - 1;
    best.p.ordered = order == FM_COL_ID;
    best.p.reverse = best.p.ordered && q->desc;
    best.p.range_col = -1;
    best.score = 0;
    const struct cond *ideq = eq_cond(q, FM_COL_ID, false);
    if (ideq != NULL) {
        struct plan p = best.p;
        p.kind = id_in_range(ideq->v.i) ? P_ID : P_EMPTY;
        p.id_lo = p.id_hi = (uint64_t)ideq->v.i;
        p.ordered = true;
        consider(&best, &p, 1000);
    } else if (has_range(q, FM_COL_ID)) {
        struct plan p = best.p;
        const struct cond *lo = range_bound(q, FM_COL_ID, true);
        const struct cond *hi = range_bound(q, FM_COL_ID, false);
        int64_t l = 1;
        int64_t h = (int64_t)FM_ID_MAX - 1;
        if (lo != NULL && lo->v.i >= l)
            l = lo->op == OP_GT ? (lo->v.i == INT64_MAX ? h + 1 : lo->v.i + 1)
                                : lo->v.i;
        /* Ids start at 1, so an upper bound below 1 matches nothing; the
         * test also keeps "id < INT64_MIN" from computing INT64_MIN - 1. */
        if (hi != NULL && hi->v.i < 1)
            h = 0;
        else if (hi != NULL && hi->v.i <= h)
            h = hi->op == OP_LT ? hi->v.i - 1 : hi->v.i;
        if (l > h) {
            p.kind = P_EMPTY;
        } else {
            p.id_lo = (uint64_t)l;
            p.id_hi = (uint64_t)h;
        }
        consider(&best, &p, 3);
    }
    for (size_t i = 0; i < q->t->n_indexes; i++) {
        const struct fm_index *ix = &q->t->indexes[i];
        if (ix->bt != NULL) {
            plan_btree(q, (int)i, &best);
            continue;
        }
        bool all = true;
        for (size_t k = 0; k < ix->def->n_cols; k++)
            all = all && eq_cond(q, ix->def->cols[k], !ix->def->unique);
        if (!all)
            continue;
        struct plan p;
        memset(&p, 0, sizeof(p));
        p.kind = P_HASH;
        p.ix = (int)i;
        p.n_eq = ix->def->n_cols;
        p.range_col = -1;
        p.ordered = ix->def->unique;
        consider(&best, &p, ix->def->unique ? 900 : 500);
    }
    *out = best.p;
}

/* Builds e->key: the values of the equality prefix of index ix. */
static fm_status build_prefix(struct fm_engine *e, const struct query *q,
                              const struct fm_index *ix, size_t n_eq,
                              struct fm_buf *b)
{
    b->len = 0;
    for (size_t k = 0; k < n_eq; k++) {
        int col = ix->def->cols[k];
        const struct cond *c = eq_cond(q, col, !ix->def->unique);
        FM_ASSERT(c != NULL);
        fm_status st = fm_key_append(b, q->t->def->cols[col].type, &c->v);
        if (st != FM_OK)
            return st;
    }
    (void)e;
    return FM_OK;
}

/*
 * Fills e->key (lower bound) and e->key2 (upper bound) for a B+tree plan,
 * as described in the file comment: prefix, then the range on the next
 * column, NULLs excluded from ranges.
 */
static fm_status build_bounds(struct fm_engine *e, const struct query *q,
                              struct plan *p)
{
    const struct fm_index *ix = &q->t->indexes[p->ix];
    struct fm_buf *lo = &e->key;
    struct fm_buf *hi = &e->key2;
    fm_status st;
    if ((st = build_prefix(e, q, ix, p->n_eq, lo)) != FM_OK)
        return st;
    hi->len = 0;
    if ((st = fm_buf_append(hi, lo->data, lo->len)) != FM_OK)
        return st;
    p->has_lo = lo->len > 0;
    p->lo_incl = true;
    p->has_hi = hi->len > 0;
    p->hi_incl = false;
    if (p->range_col < 0) {
        p->has_hi = p->has_hi && fm_key_successor(hi->data, &hi->len);
        return FM_OK;
    }
    enum fm_type type = q->t->def->cols[p->range_col].type;
    const struct cond *l = range_bound(q, p->range_col, true);
    const struct cond *h = range_bound(q, p->range_col, false);
    if (l != NULL) {
        if ((st = fm_key_append(lo, type, &l->v)) != FM_OK)
            return st;
        if (l->op == OP_GT && !fm_key_successor(lo->data, &lo->len)) {
            p->kind = P_EMPTY;
            return FM_OK;
        }
    } else if ((st = fm_buf_push(lo, 0x06)) != FM_OK) {
        /* 0x06 is above the NULL tag and below every value's tag. */
        return st;
    }
    p->has_lo = true;
    if (h != NULL) {
        if ((st = fm_key_append(hi, type, &h->v)) != FM_OK)
            return st;
        if (h->op == OP_LE)
            p->has_hi = fm_key_successor(hi->data, &hi->len);
        else
            p->has_hi = true;
    } else {
        p->has_hi = p->has_hi && fm_key_successor(hi->data, &hi->len);
    }
    return FM_OK;
}

/*
 * Walks the access path of plan p and calls visit for every row that
 * matches all terms, until visit returns false.
 */
typedef bool (*visit_fn)(struct fm_engine *e, const struct query *q,
                         const struct fm_row *row, void *ctx);

static fm_status run_plan(struct fm_engine *e, const struct query *q,
                          struct plan *p, visit_fn visit, void *ctx)
{
    struct fm_table *t = q->t;
    struct fm_row row;
    uint64_t id;
    if (p->kind == P_EMPTY)
        return FM_OK;
    if (p->kind == P_ID || p->kind == P_ID_RANGE) {
        uint64_t hi = p->id_hi < t->next_id ? p->id_hi : t->next_id - 1;
        if (p->id_lo > hi)
            return FM_OK;
        for (uint64_t k = 0; k <= hi - p->id_lo; k++) {
            id = p->reverse ? hi - k : p->id_lo + k;
            const uint8_t *rec = fm_table_record(t, id);
            if (rec == NULL)
                continue;
            fm_table_decode(t, id, rec, &row);
            if (row_matches(q, &row) && !visit(e, q, &row, ctx))
                break;
        }
        return FM_OK;
    }
    const struct fm_index *ix = &t->indexes[p->ix];
    if (p->kind == P_HASH) {
        struct fm_buf *kb = &e->key;
        fm_status st = build_prefix(e, q, ix, p->n_eq, kb);
        if (st != FM_OK)
            return st;
        struct fm_hash_iter it;
        fm_hash_iter_init(&it, ix->h, kb->data, kb->len);
        while (fm_hash_iter_next(&it, &id)) {
            fm_table_decode(t, id, fm_table_record(t, id), &row);
            if (row_matches(q, &row) && !visit(e, q, &row, ctx))
                break;
        }
        return FM_OK;
    }
    fm_status st = build_bounds(e, q, p);
    if (st != FM_OK)
        return st;
    if (p->kind == P_EMPTY)
        return FM_OK;
    struct fm_btree_bound lo = {e->key.data, e->key.len, p->lo_incl};
    struct fm_btree_bound hi = {e->key2.data, e->key2.len, p->hi_incl};
    struct fm_btree_iter it;
    fm_btree_iter_init(&it, ix->bt, p->has_lo ? &lo : NULL,
                       p->has_hi ? &hi : NULL, p->reverse);
    while (fm_btree_iter_next(&it, &id)) {
        fm_table_decode(t, id, fm_table_record(t, id), &row);
        if (row_matches(q, &row) && !visit(e, q, &row, ctx))
            break;
    }
    return FM_OK;
}

/* ---- sorting
 * ------------------------------------------------------------------- */

struct sort_entry {
    uint64_t id;
    const uint8_t *rec; /* the row's record, so output needs no lookup */
    int64_t i;
    const uint8_t *s;
    uint32_t len;
    bool is_null;
    bool is_string; /* the same in every entry of a sort; carried here */
    bool desc;      /* so that qsort's comparator needs no context */
};

struct sorter {
    bool is_string;
    bool desc;
    int col;
    size_t cap;    /* top-k bound, or SIZE_MAX for all */
    size_t stop_n; /* entries that surely overflow the reply (sort_stop) */
    size_t n;
    bool failed;
    bool over_limit; /* stopped at stop_n */
};

/* <0 when a comes before b in the requested order. */
static int entry_cmp(const struct sorter *s, const struct sort_entry *a,
                     const struct sort_entry *b)
{
    int r;
    if (a->is_null || b->is_null) {
        /* NULL sorts first, as in SQLite. */
        r = a->is_null && b->is_null ? 0 : (a->is_null ? -1 : 1);
    } else if (s->is_string) {
        uint32_t n = a->len < b->len ? a->len : b->len;
        r = n ? memcmp(a->s, b->s, n) : 0;
        if (r == 0)
            r = (a->len > b->len) - (a->len < b->len);
    } else {
        r = (a->i > b->i) - (a->i < b->i);
    }
    if (r == 0)
        r = (a->id > b->id) - (a->id < b->id);
    return s->desc ? -r : r;
}

static struct sort_entry *entries(struct fm_engine *e)
{
    return (struct sort_entry *)(void *)e->sort.data;
}

static void sift_down(const struct sorter *s, struct sort_entry *h, size_t n,
                      size_t i)
{
    /* A max-heap in the requested order: the root is the entry that would
     * be dropped first when a better one arrives. */
    for (;;) {
        size_t l = 2 * i + 1;
        size_t m = i;
        if (l < n && entry_cmp(s, &h[l], &h[m]) > 0)
            m = l;
        if (l + 1 < n && entry_cmp(s, &h[l + 1], &h[m]) > 0)
            m = l + 1;
        if (m == i)
            return;
        struct sort_entry tmp = h[i];
        h[i] = h[m];
        h[m] = tmp;
        i = m;
    }
}

static void sift_up(const struct sorter *s, struct sort_entry *h, size_t i)
{
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (entry_cmp(s, &h[i], &h[parent]) <= 0)
            return;
        struct sort_entry tmp = h[i];
        h[i] = h[parent];
        h[parent] = tmp;
        i = parent;
    }
}

static bool sort_visit(struct fm_engine *e, const struct query *q,
                       const struct fm_row *row, void *ctx)
{
    struct sorter *s = ctx;
    struct sort_entry en;
    const struct fm_value *v = &row->v[s->col];
    en.id = row->id;
    en.rec = fm_table_record(q->t, row->id);
    en.is_null = v->is_null;
    en.i = v->i;
    en.s = v->s;
    en.len = (uint32_t)v->len;
    en.is_string = s->is_string;
    en.desc = s->desc;
    if (s->n < s->cap) {
        if (fm_buf_append(&e->sort, &en, sizeof(en)) != FM_OK) {
            s->failed = true;
            return false;
        }
        s->n++;
        if (s->n == s->stop_n) {
            s->over_limit = true;
            return false;
        }
        if (s->cap != SIZE_MAX)
            sift_up(s, entries(e), s->n - 1);
        return true;
    }
    struct sort_entry *h = entries(e);
    if (s->cap > 0 && entry_cmp(s, &en, &h[0]) < 0) {
        h[0] = en;
        sift_down(s, h, s->n, 0);
    }
    return true;
}

static int qsort_cmp(const void *a, const void *b)
{
    const struct sort_entry *x = a;
    struct sorter s = {0};
    s.is_string = x->is_string;
    s.desc = x->desc;
    return entry_cmp(&s, a, b);
}

/* ---- FIND, COUNT, DELETE WHERE, EXPLAIN
 * ---------------------------------------- */

struct emit_ctx {
    struct fm_reply *reply;
    uint64_t skip;
    uint64_t left;
    uint64_t n;
};

static bool emit_visit(struct fm_engine *e, const struct query *q,
                       const struct fm_row *row, void *ctx)
{
    struct emit_ctx *x = ctx;
    if (x->skip > 0) {
        x->skip--;
        return true;
    }
    if (x->left == 0)
        return false;
    reply_row(e, x->reply, q->t, row);
    x->left--;
    x->n++;
    /* A failed reply takes nothing more: the scan stops with it. */
    return x->left > 0 && !x->reply->failed;
}

static fm_status nomem(struct fm_engine *e)
{
    return fm_error_set(&e->err, FM_ERR_NOMEM, "out of memory");
}

/*
 * The number of sort entries at which the reply is sure to pass its limit,
 * so that a sort stops collecting there instead of at the end of the scan:
 * every entry past OFFSET becomes a row of the reply (a top-k heap holds
 * OFFSET + LIMIT entries only once more rows have matched), and a row takes
 * at least its header, its column names and 4 bytes a value (":0" CRLF).
 * SIZE_MAX when the reply has no limit.
 */
static size_t sort_stop(const struct fm_reply *r, const struct fm_table *t,
                        uint64_t offset)
{
    if (r->limit == 0)
        return SIZE_MAX;
    const struct fm_table_def *d = t->def;
    size_t row_min = 4 + t->resp_name_off[d->n_cols] + 4 * d->n_cols;
    size_t room = r->limit > r->buf.len ? r->limit - r->buf.len : 0;
    size_t fit = room / row_min;
    if (offset >= SIZE_MAX - fit - 1)
        return SIZE_MAX;
    return (size_t)offset + fit + 1;
}

static fm_status exec_find(struct fm_engine *e, const struct query *q,
                           struct fm_reply *reply)
{
    /* A reply that failed before (an earlier FIND of an EXEC batch) takes
     * no rows: the scan would be for nothing. */
    if (reply->failed)
        return FM_OK;
    struct plan p;
    plan_query(q, &p);
    uint64_t limit = q->has_limit ? q->limit : UINT64_MAX;
    if (p.ordered) {
        struct emit_ctx x = {reply, q->offset, limit, 0};
        fm_reply_array(reply, 0);
        size_t mark = fm_reply_mark(reply);
        fm_status st = FM_OK;
        if (limit > 0)
            st = run_plan(e, q, &p, emit_visit, &x);
        if (st != FM_OK)
            return nomem(e);
        fm_reply_patch_array(reply, mark, x.n);
        return FM_OK;
    }
    struct sorter s;
    memset(&s, 0, sizeof(s));
    s.col = effective_order_col(q);
    s.is_string = q->t->def->cols[s.col].type == FM_TYPE_STRING;
    s.desc = q->desc;
    s.cap = SIZE_MAX;
    if (q->has_limit && q->limit <= SIZE_MAX / 2 &&
        q->offset <= SIZE_MAX / 2 - q->limit)
        s.cap = (size_t)(q->limit + q->offset);
    s.stop_n = sort_stop(reply, q->t, q->offset);
    e->sort.len = 0;
    if (s.cap > 0 && run_plan(e, q, &p, sort_visit, &s) != FM_OK)
        return nomem(e);
    if (s.over_limit) {
        fm_reply_fail_over_limit(reply);
        return FM_OK;
    }
    if (s.failed)
        return nomem(e);
    if (s.n > 1)
        qsort(entries(e), s.n, sizeof(struct sort_entry), qsort_cmp);
    size_t from = q->offset < s.n ? (size_t)q->offset : s.n;
    size_t to = s.n;
    if (q->has_limit && q->limit < to - from)
        to = from + (size_t)q->limit;
    fm_reply_array(reply, to - from);
    for (size_t i = from; i < to && !reply->failed; i++) {
        struct fm_row row;
        const struct sort_entry *en = &entries(e)[i];
        fm_table_decode(q->t, en->id, en->rec, &row);
        reply_row(e, reply, q->t, &row);
    }
    return FM_OK;
}

static bool count_visit(struct fm_engine *e, const struct query *q,
                        const struct fm_row *row, void *ctx)
{
    (void)e;
    (void)q;
    (void)row;
    (*(uint64_t *)ctx)++;
    return true;
}

static fm_status exec_count(struct fm_engine *e, const struct query *q,
                            struct fm_reply *reply)
{
    uint64_t n = 0;
    if (q->n_conds == 0) {
        n = q->t->n_rows;
    } else {
        struct plan p;
        plan_query(q, &p);
        p.reverse = false;
        if (run_plan(e, q, &p, count_visit, &n) != FM_OK)
            return nomem(e);
    }
    fm_reply_int(reply, (int64_t)n);
    return FM_OK;
}

static bool collect_visit(struct fm_engine *e, const struct query *q,
                          const struct fm_row *row, void *ctx)
{
    (void)q;
    if (fm_buf_append(&e->ids, &row->id, sizeof(row->id)) != FM_OK) {
        *(bool *)ctx = true;
        return false;
    }
    return true;
}

static int id_cmp(const void *a, const void *b)
{
    uint64_t x;
    uint64_t y;
    memcpy(&x, a, sizeof(x));
    memcpy(&y, b, sizeof(y));
    return (x > y) - (x < y);
}

static fm_status exec_delete_where(struct fm_engine *e, const struct query *q,
                                   struct fm_reply *reply)
{
    struct plan p;
    plan_query(q, &p);
    p.reverse = false;
    bool failed = false;
    e->ids.len = 0;
    if (run_plan(e, q, &p, collect_visit, &failed) != FM_OK || failed)
        return nomem(e);
    /* The ids are collected first: deleting while walking an index would
     * invalidate the iterator. Cascades push above them on e->ids. They
     * are deleted in id order whatever the access path, as SQLite does, so
     * that the two agree on which RESTRICT a cascade meets first. */
    size_t n_ids = e->ids.len / sizeof(uint64_t);
    if (n_ids > 1 && (p.kind == P_BTREE || p.kind == P_HASH))
        qsort(e->ids.data, n_ids, sizeof(uint64_t), id_cmp);
    uint64_t n = 0;
    for (size_t i = 0; i < n_ids; i++) {
        uint64_t id;
        memcpy(&id, e->ids.data + i * sizeof(uint64_t), sizeof(id));
        fm_status st = fm_txn_delete(e, q->t, id, &n);
        if (st != FM_OK)
            return st;
    }
    e->ids.len = 0;
    fm_reply_int(reply, (int64_t)n);
    return FM_OK;
}

static void describe_terms(const struct query *q, struct fm_buf *b)
{
    for (size_t i = 0; i < q->n_conds; i++) {
        const struct cond *c = &q->conds[i];
        const struct fm_column *col = &q->t->def->cols[c->col];
        fm_buf_printf(b, "%s%s %s ", i ? " AND " : "", col->name,
                      op_names[c->op]);
        if (c->v.is_null) {
            fm_buf_printf(b, "NULL");
        } else if (col->type == FM_TYPE_STRING) {
            char v[96];
            fm_format_value(v, sizeof(v), c->v.s, c->v.len);
            fm_buf_printf(b, "'%s'", v);
        } else if (col->type == FM_TYPE_DATETIME) {
            char v[FM_DATETIME_TEXT_CAP];
            fm_format_datetime(c->v.i, v);
            fm_buf_printf(b, "'%s'", v);
        } else {
            fm_buf_printf(b, "%lld", (long long)c->v.i);
        }
    }
}

static fm_status exec_explain(struct fm_engine *e, const struct query *q,
                              const char *verb, struct fm_reply *reply)
{
    struct plan p;
    plan_query(q, &p);
    struct fm_buf *b = &e->strs;
    const struct fm_table_def *d = q->t->def;
    b->len = 0;
    fm_buf_printf(b, "%s %s\n", verb, d->name);
    switch (p.kind) {
    case P_EMPTY:
        fm_buf_printf(b, "access: none (the terms cannot match)\n");
        break;
    case P_ID:
        fm_buf_printf(b, "access: id lookup (id = %llu)\n",
                      (unsigned long long)p.id_lo);
        break;
    case P_ID_RANGE:
        if (p.id_lo == 1 && p.id_hi == FM_ID_MAX - 1)
            fm_buf_printf(b, "access: full scan in id order%s\n",
                          p.reverse ? " (backwards)" : "");
        else
            fm_buf_printf(b, "access: id range scan %llu..%llu%s\n",
                          (unsigned long long)p.id_lo,
                          (unsigned long long)p.id_hi,
                          p.reverse ? " (backwards)" : "");
        break;
    case P_HASH:
    case P_BTREE: {
        const struct fm_index_def *x = q->t->indexes[p.ix].def;
        fm_buf_printf(b, "access: %s index %s (%s%s)",
                      p.kind == P_HASH ? "hash" : "btree", x->name,
                      x->unique ? "unique, " : "",
                      p.kind == P_HASH ? "lookup"
                      : p.reverse      ? "backwards"
                                       : "forwards");
        if (p.n_eq > 0) {
            fm_buf_printf(b, ", equality on");
            for (size_t k = 0; k < p.n_eq; k++)
                fm_buf_printf(b, "%s %s", k ? "," : "",
                              d->cols[x->cols[k]].name);
        }
        if (p.range_col >= 0)
            fm_buf_printf(b, ", range on %s", d->cols[p.range_col].name);
        if (p.n_eq == 0 && p.range_col < 0)
            fm_buf_printf(b, ", whole index for its order");
        fm_buf_printf(b, "\n");
        break;
    }
    }
    if (q->n_conds > 0) {
        fm_buf_printf(b, "filter: ");
        describe_terms(q, b);
        fm_buf_printf(b, "\n");
    }
    if (strcmp(verb, "FIND") == 0) {
        int oc = q->order_col < 0 ? FM_COL_ID : q->order_col;
        fm_buf_printf(b, "order: %s %s, ", d->cols[oc].name,
                      q->desc ? "desc" : "asc");
        if (p.ordered)
            fm_buf_printf(b, "delivered by the access path\n");
        else if (q->has_limit)
            fm_buf_printf(b, "top-k sort (k = %llu)\n",
                          (unsigned long long)(q->limit + q->offset));
        else
            fm_buf_printf(b, "sort of all matching rows\n");
        if (q->has_limit)
            fm_buf_printf(b, "limit: %llu offset %llu\n",
                          (unsigned long long)q->limit,
                          (unsigned long long)q->offset);
    }
    if (b->len > 0 && b->data[b->len - 1] == '\n')
        b->len--;
    fm_reply_bulk(reply, b->data, b->len);
    return FM_OK;
}

/* ---- write commands
 * ------------------------------------------------------------ */

/* Fills row with the defaults of t: DEFAULT values, else NULL; timestamps
 * now. */
static void row_defaults(const struct fm_table *t, struct fm_row *row,
                         int64_t now)
{
    const struct fm_table_def *d = t->def;
    row->id = 0;
    for (size_t c = 0; c < d->n_cols; c++) {
        struct fm_value *v = &row->v[c];
        const struct fm_column *col = &d->cols[c];
        memset(v, 0, sizeof(*v));
        if (col->has_default && !col->def.is_null) {
            v->i = col->def.i;
            v->s = (const uint8_t *)col->def.str;
            v->len = col->def.len;
        } else {
            v->is_null = true;
        }
    }
    row->v[fm_col_created_at(d)] = (struct fm_value){false, now, NULL, 0};
    row->v[fm_col_updated_at(d)] = (struct fm_value){false, now, NULL, 0};
}

/*
 * Reads "col val" pairs from argv[i..end) into row; *given gets a bit per
 * column set. Refuses a column given twice; id only when allow_id.
 */
static fm_status parse_assignments(struct fm_engine *e, struct fm_table *t,
                                   const uint8_t *const *argv,
                                   const size_t *len, size_t i, size_t end,
                                   bool allow_id, struct fm_row *row,
                                   uint64_t *given)
{
    fm_status st;
    if ((end - i) % 2 != 0)
        return fm_error_set(&e->err, FM_ERR_SYNTAX,
                            "column '%.*s' has no value",
                            (int)(len[end - 1] > 64 ? 64 : len[end - 1]),
                            (const char *)argv[end - 1]);
    for (; i < end; i += 2) {
        int c = -1;
        if ((st = find_column(e, t, argv[i], len[i], &c)) != FM_OK)
            return st;
        if (*given & ((uint64_t)1 << c))
            return fm_error_set(&e->err, FM_ERR_SYNTAX,
                                "column %s is given twice",
                                t->def->cols[c].name);
        if (c == FM_COL_ID) {
            int64_t id;
            if (!allow_id)
                return fm_error_set(&e->err, FM_ERR_SYNTAX,
                                    "%s.id cannot be changed", t->def->name);
            if ((st = parse_id(e, t, argv[i + 1], len[i + 1], &id)) != FM_OK)
                return st;
            if (!id_in_range(id))
                return fm_error_set(&e->err, FM_ERR_LIMIT,
                                    "%s.id %lld is out of range (1 to %llu)",
                                    t->def->name, (long long)id,
                                    (unsigned long long)FM_ID_MAX - 1);
            row->id = (uint64_t)id;
        } else if ((st = parse_value(e, t, c, argv[i + 1], len[i + 1],
                                     &row->v[c])) != FM_OK) {
            return st;
        }
        *given |= (uint64_t)1 << c;
    }
    return FM_OK;
}

static fm_status exec_insert(struct fm_engine *e, struct fm_table *t,
                             size_t argc, const uint8_t *const *argv,
                             const size_t *len, struct fm_reply *reply)
{
    struct fm_row row;
    uint64_t given = 0;
    row_defaults(t, &row, fm_engine_now(e));
    fm_status st =
        parse_assignments(e, t, argv, len, 2, argc, true, &row, &given);
    if (st != FM_OK)
        return st;
    uint64_t id;
    if ((st = fm_txn_insert(e, t, &row, &id)) != FM_OK)
        return st;
    fm_reply_int(reply, (int64_t)id);
    return FM_OK;
}

static fm_status exec_get(struct fm_engine *e, struct fm_table *t,
                          const uint8_t *p, size_t len, struct fm_reply *reply)
{
    int64_t id;
    fm_status st = parse_id(e, t, p, len, &id);
    if (st != FM_OK)
        return st;
    const uint8_t *rec =
        id_in_range(id) ? fm_table_record(t, (uint64_t)id) : NULL;
    if (rec == NULL) {
        fm_reply_nil(reply);
        return FM_OK;
    }
    struct fm_row row;
    fm_table_decode(t, (uint64_t)id, rec, &row);
    reply_row(e, reply, t, &row);
    return FM_OK;
}

/* Copies the columns of t from src to dst (not the unused tail of v). */
static void copy_row(const struct fm_table *t, struct fm_row *dst,
                     const struct fm_row *src)
{
    dst->id = src->id;
    memcpy(dst->v, src->v, t->def->n_cols * sizeof(src->v[0]));
}

/* Loads row id of t into row; false when there is none. */
static bool load_row(struct fm_table *t, int64_t id, struct fm_row *row)
{
    const uint8_t *rec =
        id_in_range(id) ? fm_table_record(t, (uint64_t)id) : NULL;
    if (rec == NULL)
        return false;
    fm_table_decode(t, (uint64_t)id, rec, row);
    return true;
}

/* Bits of the columns whose value in a differs from b. */
static uint64_t changed_columns(const struct fm_table *t,
                                const struct fm_row *a, const struct fm_row *b)
{
    uint64_t m = 0;
    for (size_t c = 1; c < t->def->n_cols; c++) {
        const struct fm_value *x = &a->v[c];
        const struct fm_value *y = &b->v[c];
        bool same = x->is_null == y->is_null &&
                    (x->is_null || value_cmp(t->def->cols[c].type, x, y) == 0);
        if (!same)
            m |= (uint64_t)1 << c;
    }
    return m;
}

static fm_status update_row(struct fm_engine *e, struct fm_table *t,
                            const struct fm_row *old, struct fm_row *row,
                            uint64_t given)
{
    size_t ua = fm_col_updated_at(t->def);
    if (!(given & ((uint64_t)1 << ua)))
        row->v[ua] = (struct fm_value){false, fm_engine_now(e), NULL, 0};
    uint64_t changed = changed_columns(t, old, row);
    if (changed == 0)
        return FM_OK;
    return fm_txn_update(e, t, row, changed);
}

static fm_status exec_update(struct fm_engine *e, struct fm_table *t,
                             size_t argc, const uint8_t *const *argv,
                             const size_t *len, struct fm_reply *reply)
{
    int64_t id;
    fm_status st = parse_id(e, t, argv[2], len[2], &id);
    if (st != FM_OK)
        return st;
    if (argc < 5)
        return fm_error_set(&e->err, FM_ERR_SYNTAX,
                            "UPDATE needs at least one column and value");
    struct fm_row old;
    struct fm_row row;
    uint64_t given = 0;
    /* Values are parsed before the row is looked up, so a bad command is an
     * error whether or not the row exists. */
    row_defaults(t, &row, 0);
    if ((st = parse_assignments(e, t, argv, len, 3, argc, false, &row,
                                &given)) != FM_OK)
        return st;
    if (!load_row(t, id, &old)) {
        fm_reply_int(reply, 0);
        return FM_OK;
    }
    struct fm_row next;
    copy_row(t, &next, &old);
    for (size_t c = 1; c < t->def->n_cols; c++) {
        if (given & ((uint64_t)1 << c))
            next.v[c] = row.v[c];
    }
    if ((st = update_row(e, t, &old, &next, given)) != FM_OK)
        return st;
    fm_reply_int(reply, 1);
    return FM_OK;
}

static fm_status integer_column(struct fm_engine *e, struct fm_table *t,
                                const uint8_t *p, size_t len, int *col_out)
{
    fm_status st = find_column(e, t, p, len, col_out);
    if (st != FM_OK)
        return st;
    if (*col_out == FM_COL_ID)
        return fm_error_set(&e->err, FM_ERR_SYNTAX, "%s.id cannot be changed",
                            t->def->name);
    if (t->def->cols[*col_out].type != FM_TYPE_INTEGER)
        return fm_error_set(&e->err, FM_ERR_TYPE,
                            "%s.%s is %s, INCR needs an integer column",
                            t->def->name, t->def->cols[*col_out].name,
                            fm_type_name(t->def->cols[*col_out].type));
    return FM_OK;
}

static fm_status parse_delta(struct fm_engine *e, const uint8_t *p, size_t len,
                             int64_t *out)
{
    if (fm_parse_int64(p, len, out))
        return FM_OK;
    char q[96];
    fm_format_value(q, sizeof(q), p, len);
    return fm_error_set(&e->err, FM_ERR_TYPE,
                        "increment expects integer, got '%s'", q);
}

/* v += delta, treating NULL as 0; FM_ERR_TYPE on overflow. */
static fm_status add_delta(struct fm_engine *e, const struct fm_table *t,
                           int col, struct fm_value *v, int64_t delta)
{
    int64_t base = v->is_null ? 0 : v->i;
    int64_t r;
    if (__builtin_add_overflow(base, delta, &r))
        return fm_error_set(&e->err, FM_ERR_TYPE,
                            "%s.%s would overflow: %lld + %lld", t->def->name,
                            t->def->cols[col].name, (long long)base,
                            (long long)delta);
    v->is_null = false;
    v->i = r;
    return FM_OK;
}

static fm_status exec_incr(struct fm_engine *e, struct fm_table *t, size_t argc,
                           const uint8_t *const *argv, const size_t *len,
                           struct fm_reply *reply)
{
    if (argc != 5)
        return fm_error_set(&e->err, FM_ERR_SYNTAX,
                            "usage: INCR table id column delta");
    int64_t id;
    int col;
    int64_t delta;
    fm_status st;
    if ((st = parse_id(e, t, argv[2], len[2], &id)) != FM_OK ||
        (st = integer_column(e, t, argv[3], len[3], &col)) != FM_OK ||
        (st = parse_delta(e, argv[4], len[4], &delta)) != FM_OK)
        return st;
    struct fm_row old;
    if (!load_row(t, id, &old)) {
        fm_reply_nil(reply);
        return FM_OK;
    }
    struct fm_row row;
    copy_row(t, &row, &old);
    if ((st = add_delta(e, t, col, &row.v[col], delta)) != FM_OK ||
        (st = update_row(e, t, &old, &row, 0)) != FM_OK)
        return st;
    fm_reply_int(reply, row.v[col].i);
    return FM_OK;
}

/* The unique index whose columns are exactly the set in mask, or -1. */
static int unique_index_for(const struct fm_table *t, uint64_t mask)
{
    for (size_t i = 0; i < t->n_indexes; i++) {
        const struct fm_index_def *d = t->indexes[i].def;
        if (!d->unique)
            continue;
        uint64_t m = 0;
        for (size_t k = 0; k < d->n_cols; k++)
            m |= (uint64_t)1 << d->cols[k];
        if (m == mask)
            return (int)i;
    }
    return -1;
}

static fm_status exec_upsert(struct fm_engine *e, struct fm_table *t,
                             size_t argc, const uint8_t *const *argv,
                             const size_t *len, struct fm_reply *reply)
{
    size_t i = 2;
    size_t key_end = i;
    while (key_end < argc && !word_is(argv[key_end], len[key_end], "SET") &&
           !word_is(argv[key_end], len[key_end], "INCR"))
        key_end++;
    if (key_end == i)
        return fm_error_set(&e->err, FM_ERR_SYNTAX,
                            "UPSERT needs key columns and values");
    struct fm_row row;
    uint64_t keys = 0;
    fm_status st;
    row_defaults(t, &row, fm_engine_now(e));
    if ((st = parse_assignments(e, t, argv, len, i, key_end, true, &row,
                                &keys)) != FM_OK)
        return st;
    uint64_t set = 0;
    uint64_t incr = 0;
    int64_t deltas[FM_MAX_COLUMNS];
    i = key_end;
    while (i < argc) {
        bool is_set = word_is(argv[i], len[i], "SET");
        if (!is_set && !word_is(argv[i], len[i], "INCR"))
            return err_syntax(e, argv[i], len[i]);
        size_t end = i + 1;
        while (end < argc && !word_is(argv[end], len[end], "SET") &&
               !word_is(argv[end], len[end], "INCR"))
            end++;
        if (end == i + 1)
            return err_syntax(e, argv[i], len[i]);
        if (is_set) {
            if ((st = parse_assignments(e, t, argv, len, i + 1, end, false,
                                        &row, &set)) != FM_OK)
                return st;
            if ((set & (keys | incr)) != 0)
                return fm_error_set(&e->err, FM_ERR_SYNTAX,
                                    "a column is both a key and SET or INCR");
        } else {
            if ((end - i - 1) % 2 != 0)
                return err_syntax(e, argv[end - 1], len[end - 1]);
            for (size_t k = i + 1; k < end; k += 2) {
                int col;
                if ((st = integer_column(e, t, argv[k], len[k], &col)) !=
                        FM_OK ||
                    (st = parse_delta(e, argv[k + 1], len[k + 1],
                                      &deltas[col])) != FM_OK)
                    return st;
                uint64_t bit = (uint64_t)1 << col;
                if ((keys | set | incr) & bit)
                    return fm_error_set(&e->err, FM_ERR_SYNTAX,
                                        "column %s is given twice",
                                        t->def->cols[col].name);
                incr |= bit;
            }
        }
        i = end;
    }
    uint64_t id_bit = 1;
    int ix = -1;
    uint64_t found_id = 0;
    bool found = false;
    if (keys == id_bit) {
        found = fm_table_record(t, row.id) != NULL;
        found_id = row.id;
    } else {
        ix = unique_index_for(t, keys & ~id_bit);
        if (ix < 0 || (keys & id_bit))
            return fm_error_set(&e->err, FM_ERR_SYNTAX,
                                "UPSERT key columns of %s must be exactly the "
                                "columns of a unique index",
                                t->def->name);
        const struct fm_index *x = &t->indexes[ix];
        bool has_null = false;
        for (size_t k = 0; k < x->def->n_cols; k++)
            has_null = has_null || row.v[x->def->cols[k]].is_null;
        if (!has_null) {
            struct fm_buf *kb = &e->key;
            kb->len = 0;
            row.id = 0;
            if (fm_index_key(x, &row, kb) != FM_OK)
                return nomem(e);
            found = x->h != NULL
                        ? fm_hash_find(x->h, kb->data, kb->len, &found_id)
                        : fm_btree_find(x->bt, kb->data, kb->len, &found_id);
        }
    }
    if (!found) {
        for (size_t c = 1; c < t->def->n_cols; c++) {
            if ((incr & ((uint64_t)1 << c)) &&
                (st = add_delta(e, t, (int)c, &row.v[c], deltas[c])) != FM_OK)
                return st;
        }
        uint64_t id;
        if ((st = fm_txn_insert(e, t, &row, &id)) != FM_OK)
            return st;
        fm_reply_int(reply, (int64_t)id);
        return FM_OK;
    }
    struct fm_row old;
    bool ok = load_row(t, (int64_t)found_id, &old);
    FM_ASSERT(ok);
    struct fm_row next;
    copy_row(t, &next, &old);
    for (size_t c = 1; c < t->def->n_cols; c++) {
        uint64_t bit = (uint64_t)1 << c;
        if (set & bit)
            next.v[c] = row.v[c];
        if ((incr & bit) &&
            (st = add_delta(e, t, (int)c, &next.v[c], deltas[c])) != FM_OK)
            return st;
    }
    if ((st = update_row(e, t, &old, &next, set)) != FM_OK)
        return st;
    fm_reply_int(reply, (int64_t)found_id);
    return FM_OK;
}

static fm_status exec_delete(struct fm_engine *e, struct fm_table *t,
                             size_t argc, const uint8_t *const *argv,
                             const size_t *len, struct fm_reply *reply)
{
    if (argc >= 3 && word_is(argv[2], len[2], "WHERE")) {
        struct query q;
        memset(&q, 0, sizeof(q));
        q.t = t;
        fm_status st = parse_clauses(e, &q, argc, argv, len, 2, false);
        if (st != FM_OK)
            return st;
        return exec_delete_where(e, &q, reply);
    }
    if (argc != 3)
        return fm_error_set(
            &e->err, FM_ERR_SYNTAX,
            "usage: DELETE table id, or DELETE table WHERE ...");
    int64_t id;
    fm_status st = parse_id(e, t, argv[2], len[2], &id);
    if (st != FM_OK)
        return st;
    uint64_t n = 0;
    if (id_in_range(id) &&
        (st = fm_txn_delete(e, t, (uint64_t)id, &n)) != FM_OK)
        return st;
    fm_reply_int(reply, (int64_t)n);
    return FM_OK;
}

static fm_status exec_schema(struct fm_engine *e, size_t argc,
                             const uint8_t *const *argv, const size_t *len,
                             struct fm_reply *reply)
{
    if (argc == 1) {
        fm_reply_bulk(reply, e->schema.text, e->schema.text_len);
        return FM_OK;
    }
    if (argc != 2)
        return fm_error_set(&e->err, FM_ERR_SYNTAX, "usage: SCHEMA [table]");
    struct fm_table *t = NULL;
    fm_status st = find_table(e, argv[1], len[1], &t);
    if (st != FM_OK)
        return st;
    fm_reply_bulk(reply, e->schema.text + t->def->text_off, t->def->text_len);
    return FM_OK;
}

/* ---- dispatch
 * ------------------------------------------------------------------ */

enum cmd {
    C_INSERT,
    C_GET,
    C_FIND,
    C_COUNT,
    C_EXPLAIN,
    C_UPDATE,
    C_INCR,
    C_UPSERT,
    C_DELETE,
    C_TABLES,
    C_SCHEMA,
    C_DBSIZE,
};

static const struct {
    const char *name;
    size_t min_args; /* argc including the name */
    bool write;
} cmds[] = {
    [C_INSERT] = {"INSERT", 2, true},    [C_GET] = {"GET", 3, false},
    [C_FIND] = {"FIND", 2, false},       [C_COUNT] = {"COUNT", 2, false},
    [C_EXPLAIN] = {"EXPLAIN", 3, false}, [C_UPDATE] = {"UPDATE", 3, true},
    [C_INCR] = {"INCR", 2, true},        [C_UPSERT] = {"UPSERT", 2, true},
    [C_DELETE] = {"DELETE", 3, true},    [C_TABLES] = {"TABLES", 1, false},
    [C_SCHEMA] = {"SCHEMA", 1, false},   [C_DBSIZE] = {"DBSIZE", 1, false},
};

static int command_of(const uint8_t *name, size_t len)
{
    for (size_t i = 0; i < FM_ARRAY_LEN(cmds); i++) {
        if (word_is(name, len, cmds[i].name))
            return (int)i;
    }
    return -1;
}

bool fm_engine_has_command(const uint8_t *name, size_t len)
{
    return command_of(name, len) >= 0;
}

bool fm_engine_command_is_write(const uint8_t *name, size_t len)
{
    int c = command_of(name, len);
    return c >= 0 && cmds[c].write;
}

static fm_status exec_read_query(struct fm_engine *e, enum cmd c,
                                 struct fm_table *t, size_t argc,
                                 const uint8_t *const *argv, const size_t *len,
                                 struct fm_reply *reply, const char *verb)
{
    struct query q;
    memset(&q, 0, sizeof(q));
    q.t = t;
    fm_status st = parse_clauses(e, &q, argc, argv, len, 2, c != C_COUNT);
    if (st != FM_OK)
        return st;
    if (verb != NULL)
        return exec_explain(e, &q, verb, reply);
    return c == C_FIND ? exec_find(e, &q, reply) : exec_count(e, &q, reply);
}

static fm_status dispatch(struct fm_engine *e, size_t argc,
                          const uint8_t *const *argv, const size_t *len,
                          struct fm_reply *reply)
{
    int c = command_of(argv[0], len[0]);
    if (c < 0) {
        char q[96];
        fm_format_value(q, sizeof(q), argv[0], len[0]);
        return fm_error_set(&e->err, FM_ERR_SYNTAX, "unknown command '%s'", q);
    }
    if (argc < cmds[c].min_args)
        return fm_error_set(&e->err, FM_ERR_SYNTAX,
                            "wrong number of arguments for '%s' command",
                            cmds[c].name);
    switch ((enum cmd)c) {
    case C_TABLES:
        if (argc != 1)
            return err_syntax(e, argv[1], len[1]);
        fm_reply_array(reply, e->schema.n_tables);
        for (size_t i = 0; i < e->schema.n_tables; i++)
            fm_reply_cstr(reply, e->schema.tables[i].name);
        return FM_OK;
    case C_SCHEMA:
        return exec_schema(e, argc, argv, len, reply);
    case C_DBSIZE:
        if (argc != 1)
            return err_syntax(e, argv[1], len[1]);
        fm_reply_int(reply, (int64_t)fm_engine_row_count(e));
        return FM_OK;
    default:
        break;
    }
    size_t shift = 0;
    const char *verb = NULL;
    if (c == C_EXPLAIN) {
        int inner = command_of(argv[1], len[1]);
        if (inner != C_FIND && inner != C_COUNT && inner != C_DELETE)
            return fm_error_set(&e->err, FM_ERR_SYNTAX,
                                "EXPLAIN works on FIND, COUNT and DELETE ... "
                                "WHERE");
        verb = cmds[inner].name;
        c = inner == C_DELETE ? C_COUNT : inner;
        shift = 1;
        if (inner == C_DELETE &&
            (argc < 4 || !word_is(argv[3], len[3], "WHERE")))
            return fm_error_set(&e->err, FM_ERR_SYNTAX,
                                "EXPLAIN DELETE needs a WHERE clause");
    }
    struct fm_table *t = NULL;
    fm_status st = find_table(e, argv[1 + shift], len[1 + shift], &t);
    if (st != FM_OK)
        return st;
    switch ((enum cmd)c) {
    case C_INSERT:
        return exec_insert(e, t, argc, argv, len, reply);
    case C_GET:
        if (argc != 3)
            return err_syntax(e, argv[3], len[3]);
        return exec_get(e, t, argv[2], len[2], reply);
    case C_FIND:
    case C_COUNT:
        return exec_read_query(e, (enum cmd)c, t, argc - shift, argv + shift,
                               len + shift, reply, verb);
    case C_UPDATE:
        return exec_update(e, t, argc, argv, len, reply);
    case C_INCR:
        return exec_incr(e, t, argc, argv, len, reply);
    case C_UPSERT:
        return exec_upsert(e, t, argc, argv, len, reply);
    case C_DELETE:
        return exec_delete(e, t, argc, argv, len, reply);
    default:
        break;
    }
    FM_ASSERT(!"unreachable command");
    return FM_ERR_STATE;
}

fm_status fm_query_exec(struct fm_engine *e, size_t argc,
                        const uint8_t *const *argv, const size_t *argv_len,
                        struct fm_reply *reply)
{
    fm_error_clear(&e->err);
    e->now_us = 0;
    if (argc == 0)
        return fm_error_set(&e->err, FM_ERR_SYNTAX, "empty command");
    return dispatch(e, argc, argv, argv_len, reply);
}
