/*
 * txn.c: every change to a table, its constraints, and the undo log that
 * makes a command or a MULTI/EXEC batch all-or-nothing (SPEC section 2).
 *
 * A transaction is the undo log: one entry per row inserted, deleted or
 * replaced, in the order the changes were made. A command records
 * n_undo when it starts (its savepoint); if it fails, the entries past the
 * savepoint are undone in reverse order, which restores every record
 * pointer, index entry, row count and next_id exactly. MULTI/EXEC does the
 * same with the savepoint taken before its first command. Commit drops the
 * entries and frees the records that deletes and updates replaced; until
 * then those records stay alive, which is what lets undo be a pointer swap.
 *
 * Each committed transaction is fully described by its undo log read
 * forwards: the row id and the new record of each insert and update, and
 * the id of each delete. That is the redo record the write-ahead log will
 * store, so replay never re-derives ids, timestamps or cascades.
 *
 * Constraints are checked before anything changes wherever possible, so a
 * typical failure costs no undo at all:
 *   - type and text form: by the caller (query.c), which parses values;
 *   - NOT NULL and CHECK: fm_check_value, per column;
 *   - FOREIGN KEY on insert and update: the referenced id must have a row;
 *   - UNIQUE: by the index insert itself, which refuses an equal key;
 *   - ON DELETE: see below.
 *
 * Deletes and their ON DELETE actions follow SQLite with foreign_keys on,
 * so that the two agree on every schema (tests/test_differential.c): a row
 * is removed first, then the foreign keys that point at its table are
 * handled one at a time, the last declared first (SQLite's order); for each
 * of them the referencing rows are collected in id order, and RESTRICT
 * fails if there are any, SET NULL updates each, CASCADE deletes each and
 * handles that row's own references before going on to the next (depth
 * first). Removing the row before its actions is what makes references to
 * itself work: a row that references itself is not among its own
 * referencing rows, under any action, and a cycle (a -> b -> a) ends when
 * it comes back to a row already gone, which is skipped. The same holds for
 * a row reached twice (a user who follows themself).
 *
 * The cascade keeps its place in an explicit stack of frames (struct
 * cascade_frame in e->cascade, one per deleted row whose references are
 * being handled, the referencing ids in e->ids), not in C recursion, so
 * its depth is bounded by memory alone: 40 bytes and a row id per level,
 * and running out is FM_ERR_NOMEM, which undoes the whole command like any
 * other failure. A frame is dropped as soon as its last action starts, so
 * a chain (each row referenced by the next) needs one frame whatever its
 * length; only rows with referencing rows still waiting keep theirs. Every
 * row removed and every SET NULL is an undo entry in the order done, so
 * the redo record replays the cascade in that order (a parent's delete
 * before its children's; replay checks no foreign key).
 *
 * Undo must not fail. Removing index entries never allocates, nor does
 * putting a record pointer back or re-adding a hash index entry (its table
 * only grows past the size it had); re-adding a B+tree entry that was
 * removed in the same transaction may split a node, because removals merge
 * nodes and later inserts share slots with siblings. So the engine keeps a
 * reserve of FM_UNDO_POOL_NODES nodes (512 KiB) that only a rollback may
 * draw on when malloc fails (fm_btree_pool). After a rollback that used it
 * the reserve is refilled; while that is impossible, every write is refused
 * with an out-of-memory error, so that the next rollback finds it full
 * again. A re-add splits at most one node a level, and most split none, so
 * the reserve covers far more than one transaction needs in practice; a
 * rollback that still ran out would be the one case that stops the
 * process (FM_ASSERT): continuing would leave an index that disagrees with
 * its table.
 */
#include "engine/engine_int.h"

#include <stdio.h>

static fm_status undo_push(struct fm_engine *e, enum fm_undo_op op,
                           const struct fm_table *t, uint64_t id,
                           uint8_t *old_rec, uint8_t *new_rec,
                           uint64_t old_next_id)
{
    if (e->n_undo == e->undo_cap) {
        size_t cap = e->undo_cap ? e->undo_cap * 2 : 64;
        struct fm_undo *u = fm_realloc(e->undo, cap * sizeof(*u));
        if (u == NULL)
            return FM_ERR_NOMEM;
        e->undo = u;
        e->undo_cap = cap;
    }
    struct fm_undo *u = &e->undo[e->n_undo++];
    u->op = (uint8_t)op;
    u->table = (uint16_t)t->no;
    u->id = id;
    u->old_rec = old_rec;
    u->new_rec = new_rec;
    u->old_next_id = old_next_id;
    return FM_OK;
}

/* Makes sure undo_push cannot fail for the next n entries. */
static fm_status undo_reserve(struct fm_engine *e, size_t n)
{
    if (e->n_undo + n <= e->undo_cap)
        return FM_OK;
    size_t cap = e->undo_cap ? e->undo_cap : 64;
    while (cap < e->n_undo + n)
        cap *= 2;
    struct fm_undo *u = fm_realloc(e->undo, cap * sizeof(*u));
    if (u == NULL)
        return FM_ERR_NOMEM;
    e->undo = u;
    e->undo_cap = cap;
    return FM_OK;
}

void fm_txn_begin(struct fm_engine *e)
{
    FM_ASSERT(!e->in_txn);
    FM_ASSERT(e->wal != NULL || e->n_undo == 0);
    e->txn_start = e->n_undo;
    e->in_txn = true;
}

void fm_txn_release_group(struct fm_engine *e)
{
    FM_ASSERT(!e->in_txn);
    for (size_t i = 0; i < e->n_undo; i++) {
        struct fm_undo *u = &e->undo[i];
        if (u->old_rec != NULL)
            fm_table_free_record(&e->tables[u->table], u->old_rec);
    }
    e->n_undo = 0;
}

fm_status fm_txn_commit(struct fm_engine *e)
{
    FM_ASSERT(e->in_txn);
    fm_status st = FM_OK;
    if (e->wal != NULL && e->n_undo > e->txn_start) {
        st = fm_persist_log_txn(e, e->txn_start);
        if (st != FM_OK)
            fm_txn_rollback_to(e, e->txn_start);
    }
    e->last_wrote = e->n_undo > e->txn_start;
    e->in_txn = false;
    if (e->wal == NULL)
        fm_txn_release_group(e);
    return st;
}

static void undo_one(struct fm_engine *e, const struct fm_undo *u)
{
    struct fm_table *t = &e->tables[u->table];
    uint8_t *cur = fm_table_record(t, u->id);
    struct fm_row row;
    fm_status st;
    switch ((enum fm_undo_op)u->op) {
    case FM_UNDO_INSERT:
        FM_ASSERT(cur != NULL);
        fm_table_decode(t, u->id, cur, &row);
        fm_table_index_remove(t, &row, UINT32_MAX);
        st = fm_table_set_record(t, u->id, NULL);
        FM_ASSERT(st == FM_OK);
        fm_table_free_record(t, cur);
        t->n_rows--;
        t->next_id = u->old_next_id;
        break;
    case FM_UNDO_DELETE:
        FM_ASSERT(cur == NULL);
        st = fm_table_set_record(t, u->id, u->old_rec);
        FM_ASSERT(st == FM_OK);
        fm_table_decode(t, u->id, u->old_rec, &row);
        st = fm_table_index_add(t, &row, UINT32_MAX, NULL);
        FM_ASSERT(st == FM_OK);
        t->n_rows++;
        break;
    case FM_UNDO_UPDATE:
        FM_ASSERT(cur != NULL);
        fm_table_decode(t, u->id, cur, &row);
        fm_table_index_remove(t, &row, UINT32_MAX);
        st = fm_table_set_record(t, u->id, u->old_rec);
        FM_ASSERT(st == FM_OK);
        fm_table_free_record(t, cur);
        fm_table_decode(t, u->id, u->old_rec, &row);
        st = fm_table_index_add(t, &row, UINT32_MAX, NULL);
        FM_ASSERT(st == FM_OK);
        break;
    }
}

void fm_txn_rollback_to(struct fm_engine *e, size_t savepoint)
{
    FM_ASSERT(savepoint <= e->n_undo);
    e->undo_pool.open = true;
    while (e->n_undo > savepoint) {
        e->n_undo--;
        undo_one(e, &e->undo[e->n_undo]);
    }
    e->undo_pool.open = false;
    fm_txn_undo_pool_ready(e);
}

bool fm_txn_undo_pool_ready(struct fm_engine *e)
{
    if (e->undo_pool.used == 0 && !e->undo_pool_low)
        return true;
    e->undo_pool_low =
        fm_btree_pool_fill(&e->undo_pool, FM_UNDO_POOL_NODES) != FM_OK;
    return !e->undo_pool_low;
}

/* ---- constraint checks --------------------------------------------------- */

static void quote_value(const struct fm_table *t, size_t col,
                        const struct fm_value *v, char *out, size_t cap)
{
    if (v->is_null) {
        snprintf(out, cap, "NULL");
    } else if (t->def->cols[col].type == FM_TYPE_STRING) {
        char tmp[96];
        fm_format_value(tmp, sizeof(tmp), v->s, v->len);
        snprintf(out, cap, "'%s'", tmp);
    } else if (t->def->cols[col].type == FM_TYPE_DATETIME) {
        char tmp[FM_DATETIME_TEXT_CAP];
        fm_format_datetime(v->i, tmp);
        snprintf(out, cap, "'%s'", tmp);
    } else {
        snprintf(out, cap, "%lld", (long long)v->i);
    }
}

static bool literal_equals(enum fm_type type, const struct fm_literal *l,
                           const struct fm_value *v)
{
    if (type == FM_TYPE_STRING)
        return l->len == v->len && memcmp(l->str, v->s, v->len) == 0;
    return l->i == v->i;
}

fm_status fm_check_value(struct fm_engine *e, const struct fm_table *t,
                         size_t col, const struct fm_value *v)
{
    const struct fm_column *c = &t->def->cols[col];
    if (v->is_null) {
        if (!c->not_null)
            return FM_OK;
        return fm_error_set(&e->err, FM_ERR_NOTNULL, "%s.%s may not be null",
                            t->def->name, c->name);
    }
    if (c->check == NULL)
        return FM_OK;
    for (size_t i = 0; i < c->n_check; i++) {
        if (literal_equals(c->type, &c->check[i], v))
            return FM_OK;
    }
    char q[128];
    char list[256];
    size_t o = 0;
    list[0] = '\0';
    for (size_t i = 0; i < c->n_check && o < sizeof(list); i++) {
        const struct fm_literal *l = &c->check[i];
        if (c->type == FM_TYPE_STRING)
            o += (size_t)snprintf(list + o, sizeof(list) - o, "%s'%.*s'",
                                  i ? ", " : "", (int)l->len, l->str);
        else
            o += (size_t)snprintf(list + o, sizeof(list) - o, "%s%lld",
                                  i ? ", " : "", (long long)l->i);
    }
    quote_value(t, col, v, q, sizeof(q));
    return fm_error_set(&e->err, FM_ERR_CHECK, "%s.%s %s is not one of (%s)",
                        t->def->name, c->name, q, list);
}

static fm_status check_foreign_key(struct fm_engine *e,
                                   const struct fm_table *t, size_t col,
                                   const struct fm_value *v)
{
    const struct fm_column *c = &t->def->cols[col];
    if (c->fk_table < 0 || v->is_null)
        return FM_OK;
    const struct fm_table *parent = &e->tables[c->fk_table];
    if (v->i > 0 && (uint64_t)v->i < FM_ID_MAX &&
        fm_table_record(parent, (uint64_t)v->i) != NULL)
        return FM_OK;
    return fm_error_set(&e->err, FM_ERR_FOREIGNKEY,
                        "%s.%s %lld references no row of %s", t->def->name,
                        c->name, (long long)v->i, parent->def->name);
}

/* Fills e->err for a UNIQUE failure of index ix with the row's values. */
static fm_status unique_error(struct fm_engine *e, struct fm_table *t, int ix,
                              const struct fm_row *row)
{
    const struct fm_index *x = &t->indexes[ix];
    char cols[256];
    char vals[512];
    size_t co = 0;
    size_t vo = 0;
    cols[0] = vals[0] = '\0';
    for (size_t k = 0; k < x->def->n_cols; k++) {
        int c = x->def->cols[k];
        char q[128];
        quote_value(t, (size_t)c, &row->v[c], q, sizeof(q));
        if (co < sizeof(cols))
            co += (size_t)snprintf(cols + co, sizeof(cols) - co, "%s%s",
                                   k ? ", " : "", t->def->cols[c].name);
        if (vo < sizeof(vals))
            vo += (size_t)snprintf(vals + vo, sizeof(vals) - vo, "%s%s",
                                   k ? ", " : "", q);
    }
    uint64_t other = 0;
    struct fm_buf *kb = &e->key;
    kb->len = 0;
    bool found = false;
    if (fm_index_key(x, row, kb) == FM_OK)
        found = x->h != NULL ? fm_hash_find(x->h, kb->data, kb->len, &other)
                             : fm_btree_find(x->bt, kb->data, kb->len, &other);
    if (x->def->n_cols == 1)
        return fm_error_set(
            &e->err, FM_ERR_UNIQUE, "%s.%s %s already exists%s%.0llu%s",
            t->def->name, cols, vals, found ? " (id " : "",
            found ? (unsigned long long)other : 0ULL, found ? ")" : "");
    return fm_error_set(
        &e->err, FM_ERR_UNIQUE, "%s (%s) (%s) already exists%s%.0llu%s",
        t->def->name, cols, vals, found ? " (id " : "",
        found ? (unsigned long long)other : 0ULL, found ? ")" : "");
}

static fm_status nomem(struct fm_engine *e)
{
    return fm_error_set(&e->err, FM_ERR_NOMEM, "out of memory");
}

/* NOT NULL, CHECK and FOREIGN KEY of the columns in mask (bit per column). */
static fm_status check_columns(struct fm_engine *e, const struct fm_table *t,
                               const struct fm_row *row, uint64_t mask)
{
    for (size_t c = 1; c < t->def->n_cols; c++) {
        if (!(mask & ((uint64_t)1 << c)))
            continue;
        fm_status st = fm_check_value(e, t, c, &row->v[c]);
        if (st == FM_OK)
            st = check_foreign_key(e, t, c, &row->v[c]);
        if (st != FM_OK)
            return st;
    }
    return FM_OK;
}

/* Encodes row into a new record of t, with room reserved in the undo log
 * for the change that will own it. */
static fm_status new_record(struct fm_engine *e, struct fm_table *t,
                            const struct fm_row *row, uint8_t **rec_out)
{
    if (undo_reserve(e, 1) != FM_OK || fm_table_encode_row(t, row) != FM_OK)
        return nomem(e);
    *rec_out = fm_table_alloc_record(t);
    return *rec_out != NULL ? FM_OK : nomem(e);
}

/* ---- insert -------------------------------------------------------------- */

fm_status fm_txn_insert(struct fm_engine *e, struct fm_table *t,
                        struct fm_row *row, uint64_t *id_out)
{
    FM_ASSERT(e->in_txn);
    const struct fm_table_def *d = t->def;
    fm_status st = check_columns(e, t, row, ~(uint64_t)1);
    if (st != FM_OK)
        return st;
    uint64_t id = row->id;
    uint64_t old_next = t->next_id;
    if (id == 0) {
        id = t->next_id;
        if (id >= FM_ID_MAX)
            return fm_error_set(&e->err, FM_ERR_LIMIT,
                                "table %s has used every id below %llu",
                                d->name, (unsigned long long)FM_ID_MAX);
    } else if (fm_table_record(t, id) != NULL) {
        return fm_error_set(&e->err, FM_ERR_UNIQUE, "%s.id %llu already exists",
                            d->name, (unsigned long long)id);
    }
    row->id = id;
    row->v[0].is_null = false;
    row->v[0].i = (int64_t)id;
    uint8_t *rec;
    if ((st = new_record(e, t, row, &rec)) != FM_OK)
        return st;
    if ((st = fm_table_set_record(t, id, rec)) != FM_OK) {
        fm_table_free_record(t, rec);
        return nomem(e);
    }
    /* Decode from the stored record so that index keys borrow bytes that
     * outlive the caller's argument buffers. */
    struct fm_row stored;
    fm_table_decode(t, id, rec, &stored);
    int bad = -1;
    if ((st = fm_table_index_add(t, &stored, UINT32_MAX, &bad)) != FM_OK) {
        fm_status sst = fm_table_set_record(t, id, NULL);
        FM_ASSERT(sst == FM_OK);
        fm_table_free_record(t, rec);
        if (st == FM_ERR_UNIQUE)
            return unique_error(e, t, bad, row);
        return nomem(e);
    }
    t->n_rows++;
    if (id >= t->next_id)
        t->next_id = id + 1;
    st = undo_push(e, FM_UNDO_INSERT, t, id, NULL, rec, old_next);
    FM_ASSERT(st == FM_OK);
    *id_out = id;
    return FM_OK;
}

/* ---- update -------------------------------------------------------------- */

/* Indexes whose key includes a column in changed_mask. */
static uint32_t indexes_touching(const struct fm_table *t, uint64_t changed)
{
    uint32_t mask = 0;
    for (size_t i = 0; i < t->n_indexes; i++) {
        const struct fm_index_def *d = t->indexes[i].def;
        for (size_t k = 0; k < d->n_cols; k++) {
            if (changed & ((uint64_t)1 << d->cols[k]))
                mask |= 1u << i;
        }
    }
    return mask;
}

fm_status fm_txn_update(struct fm_engine *e, struct fm_table *t,
                        struct fm_row *row, uint64_t changed_mask)
{
    FM_ASSERT(e->in_txn);
    FM_ASSERT(!(changed_mask & 1));
    uint64_t id = row->id;
    uint8_t *old = fm_table_record(t, id);
    FM_ASSERT(old != NULL);
    uint8_t *rec;
    fm_status st = check_columns(e, t, row, changed_mask);
    if (st != FM_OK || (st = new_record(e, t, row, &rec)) != FM_OK)
        return st;
    uint32_t mask = indexes_touching(t, changed_mask);
    if (mask == 0) {
        /* No index key changes (INCR listen_count): the new record just
         * takes the old one's slot. */
        st = fm_table_set_record(t, id, rec);
        FM_ASSERT(st == FM_OK); /* the page exists: the row is in it */
        st = undo_push(e, FM_UNDO_UPDATE, t, id, old, rec, 0);
        FM_ASSERT(st == FM_OK);
        return FM_OK;
    }
    struct fm_row old_row;
    struct fm_row new_row;
    fm_table_decode(t, id, old, &old_row);
    fm_table_decode(t, id, rec, &new_row);
    if (fm_table_reserve_keys(t, &old_row) != FM_OK) {
        fm_table_free_record(t, rec);
        return nomem(e);
    }
    /* Old entries go while the old record is in its slot (table.c). */
    fm_table_index_remove(t, &old_row, mask);
    st = fm_table_set_record(t, id, rec);
    FM_ASSERT(st == FM_OK); /* the page exists: the row is in it */
    int bad = -1;
    if ((st = fm_table_index_add(t, &new_row, mask, &bad)) != FM_OK) {
        st = st == FM_ERR_UNIQUE ? unique_error(e, t, bad, row) : nomem(e);
        fm_status sst = fm_table_set_record(t, id, old);
        FM_ASSERT(sst == FM_OK);
        fm_table_free_record(t, rec);
        sst = fm_table_index_add(t, &old_row, mask, NULL);
        FM_ASSERT(sst == FM_OK);
        return st;
    }
    st = undo_push(e, FM_UNDO_UPDATE, t, id, old, rec, 0);
    FM_ASSERT(st == FM_OK);
    return FM_OK;
}

/* ---- delete -------------------------------------------------------------- */

/*
 * A deleted row whose ON DELETE actions are being applied: one frame of the
 * cascade's explicit stack (e->cascade). The row is already gone. The
 * foreign keys that point at its table are taken last declared first,
 * refs[refs_left - 1] down to refs[0]; the one being handled is
 * refs[refs_left], and the ids of the rows that reference the deleted row
 * through it are e->ids[ids_base .. ids.len) while the frame is on top,
 * of which next is the next to handle.
 */
struct cascade_frame {
    uint64_t id;      /* the deleted row */
    size_t table;     /* its table number */
    size_t refs_left; /* foreign keys not yet started */
    size_t ids_base;  /* its referencing rows' ids start here in e->ids */
    size_t next;      /* the next of those ids to handle */
};

static size_t ids_count(const struct fm_engine *e)
{
    return e->ids.len / sizeof(uint64_t);
}

static uint64_t ids_at(const struct fm_engine *e, size_t i)
{
    uint64_t v;
    memcpy(&v, e->ids.data + i * sizeof(uint64_t), sizeof(v));
    return v;
}

static struct cascade_frame *top_frame(struct fm_engine *e)
{
    FM_ASSERT(e->cascade.len >= sizeof(struct cascade_frame));
    return (struct cascade_frame *)(void *)(e->cascade.data + e->cascade.len -
                                            sizeof(struct cascade_frame));
}

/* Pushes the ids of rows of child table ref->table whose FK column equals
 * id onto e->ids, in id order (the index orders equal keys by id). */
static fm_status collect_children(struct fm_engine *e,
                                  const struct fm_fk_ref *ref, uint64_t id)
{
    struct fm_table *child = &e->tables[ref->table];
    struct fm_index *ix = &child->indexes[ref->index];
    uint8_t lo[FM_KEY_INT_MAX];
    uint8_t hi[FM_KEY_INT_MAX];
    size_t lo_len = fm_key_encode_int((int64_t)id, lo);
    size_t hi_len = lo_len;
    memcpy(hi, lo, lo_len);
    bool has_hi = fm_key_successor(hi, &hi_len);
    struct fm_btree_bound blo = {lo, lo_len, true};
    struct fm_btree_bound bhi = {hi, hi_len, false};
    struct fm_btree_iter it;
    FM_ASSERT(ix->bt != NULL);
    fm_btree_iter_init(&it, ix->bt, &blo, has_hi ? &bhi : NULL, false);
    uint64_t cid;
    while (fm_btree_iter_next(&it, &cid)) {
        if (fm_buf_append(&e->ids, &cid, sizeof(cid)) != FM_OK)
            return nomem(e);
    }
    return FM_OK;
}

static fm_status set_null(struct fm_engine *e, struct fm_table *child,
                          size_t col, uint64_t cid)
{
    const uint8_t *rec = fm_table_record(child, cid);
    if (rec == NULL)
        return FM_OK;
    struct fm_row row;
    fm_table_decode(child, cid, rec, &row);
    if (row.v[col].is_null)
        return FM_OK;
    row.v[col].is_null = true;
    row.v[fm_col_updated_at(child->def)].i = fm_engine_now(e);
    uint64_t mask = (uint64_t)1 << col;
    mask |= (uint64_t)1 << fm_col_updated_at(child->def);
    return fm_txn_update(e, child, &row, mask);
}

/*
 * Removes row id of t (its record rec) with its index entries and pushes
 * its frame, so that its ON DELETE actions run next. The undo entry is
 * recorded before the frame is pushed: if the push fails, the rollback
 * puts the row back.
 */
static fm_status remove_row(struct fm_engine *e, struct fm_table *t,
                            uint64_t id, uint8_t *rec, uint64_t *n)
{
    struct fm_row row;
    fm_table_decode(t, id, rec, &row);
    if (undo_reserve(e, 1) != FM_OK || fm_table_reserve_keys(t, &row) != FM_OK)
        return nomem(e);
    fm_table_index_remove(t, &row, UINT32_MAX);
    fm_status st = fm_table_set_record(t, id, NULL);
    FM_ASSERT(st == FM_OK);
    t->n_rows--;
    st = undo_push(e, FM_UNDO_DELETE, t, id, rec, NULL, 0);
    FM_ASSERT(st == FM_OK);
    (*n)++;
    if (t->def->n_refs == 0)
        return FM_OK; /* nothing can reference it: no frame needed */
    struct cascade_frame f = {id, t->no, t->def->n_refs, ids_count(e),
                              ids_count(e)};
    if (fm_buf_append(&e->cascade, &f, sizeof(f)) != FM_OK)
        return nomem(e);
    return FM_OK;
}

/*
 * Moves the top frame on to its next foreign key: collects the rows that
 * reference its row through it, which for RESTRICT is the error.
 */
static fm_status start_next_ref(struct fm_engine *e, struct cascade_frame *f)
{
    const struct fm_table *t = &e->tables[f->table];
    FM_ASSERT(f->refs_left > 0);
    const struct fm_fk_ref *ref = &t->def->refs[--f->refs_left];
    e->ids.len = f->ids_base * sizeof(uint64_t);
    f->next = f->ids_base;
    fm_status st = collect_children(e, ref, f->id);
    if (st != FM_OK || ids_count(e) == f->ids_base)
        return st;
    const struct fm_table *child = &e->tables[ref->table];
    const struct fm_column *col = &child->def->cols[ref->column];
    if (col->fk_action != FM_FK_RESTRICT)
        return FM_OK;
    return fm_error_set(
        &e->err, FM_ERR_FOREIGNKEY, "%s %llu is referenced by %s.%s (id %llu)",
        t->def->name, (unsigned long long)f->id, child->def->name, col->name,
        (unsigned long long)ids_at(e, f->ids_base));
}

/*
 * Applies the ON DELETE actions of every frame above base, depth first:
 * a row removed by CASCADE has its own actions applied before the next
 * referencing row is handled, as SQLite's action triggers do. The stack is
 * in memory the engine owns, so a cascade through a chain of any length is
 * bounded by memory (FM_ERR_NOMEM), never by the C stack.
 */
static fm_status run_cascade(struct fm_engine *e, size_t base, uint64_t *n)
{
    while (e->cascade.len > base) {
        struct cascade_frame *f = top_frame(e);
        if (f->next < ids_count(e)) {
            const struct fm_table *t = &e->tables[f->table];
            const struct fm_fk_ref *ref = &t->def->refs[f->refs_left];
            struct fm_table *child = &e->tables[ref->table];
            uint64_t cid = ids_at(e, f->next++);
            if (f->next == ids_count(e) && f->refs_left == 0) {
                /* Its last action: the frame goes before the child's
                 * comes, so that a chain needs one frame, not one a row. */
                e->ids.len = f->ids_base * sizeof(uint64_t);
                e->cascade.len -= sizeof(*f);
            }
            /* f is not used past this point: a push may move the stack. */
            fm_status st;
            uint8_t *rec = fm_table_record(child, cid);
            if (child->def->cols[ref->column].fk_action == FM_FK_SET_NULL)
                st = set_null(e, child, (size_t)ref->column, cid);
            else if (rec != NULL) /* else removed by the cascade already */
                st = remove_row(e, child, cid, rec, n);
            else
                st = FM_OK;
            if (st != FM_OK)
                return st;
        } else if (f->refs_left > 0) {
            fm_status st = start_next_ref(e, f);
            if (st != FM_OK)
                return st;
        } else {
            e->ids.len = f->ids_base * sizeof(uint64_t);
            e->cascade.len -= sizeof(*f);
        }
    }
    return FM_OK;
}

fm_status fm_txn_delete(struct fm_engine *e, struct fm_table *t, uint64_t id,
                        uint64_t *n_out)
{
    FM_ASSERT(e->in_txn);
    uint8_t *rec = fm_table_record(t, id);
    if (rec == NULL)
        return FM_OK; /* none, or removed by an earlier cascade */
    /* The caller may hold ids of its own in e->ids (DELETE ... WHERE):
     * the cascade works above them and gives the buffer back as it was. */
    size_t ids_len = e->ids.len;
    size_t base = e->cascade.len;
    uint64_t n = 0;
    fm_status st = remove_row(e, t, id, rec, &n);
    if (st == FM_OK)
        st = run_cascade(e, base, &n);
    e->ids.len = ids_len;
    e->cascade.len = base;
    if (st != FM_OK)
        return st;
    *n_out += n;
    return FM_OK;
}
