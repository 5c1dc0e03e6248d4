/*
 * check.c: fm_engine_check, the deep consistency check behind
 * `fermata-check --deep` and the crash tests.
 *
 * It re-derives every promise from the rows themselves, trusting nothing
 * the write path maintained: each row's record is well formed and obeys
 * NOT NULL and CHECK; each foreign key points at a row that exists; the
 * row count matches the rows present; every index holds exactly one entry
 * per row (the entry for the row's current key, found by a lookup, and the
 * index's own count equal to the table's); and each index passes its own
 * structural check. UNIQUE follows: a unique index cannot hold two equal
 * keys (its structural check verifies that), and it holds every row.
 *
 * The check reads only; it is O(rows x indexes x log n).
 */
#include "engine/engine_int.h"

static bool index_has_row(struct fm_engine *e, struct fm_index *ix,
                          const struct fm_row *row)
{
    struct fm_buf *kb = &e->key;
    kb->len = 0;
    if (fm_index_key(ix, row, kb) != FM_OK)
        return false;
    uint64_t id;
    if (ix->h != NULL) {
        struct fm_hash_iter it;
        fm_hash_iter_init(&it, ix->h, kb->data, kb->len);
        while (fm_hash_iter_next(&it, &id)) {
            if (id == row->id)
                return true;
        }
        return false;
    }
    struct fm_btree_bound b = {kb->data, kb->len, true};
    struct fm_btree_iter it;
    fm_btree_iter_init(&it, ix->bt, &b, &b, false);
    while (fm_btree_iter_next(&it, &id)) {
        if (id == row->id)
            return true;
    }
    return false;
}

static fm_status check_row(struct fm_engine *e, struct fm_table *t,
                           const struct fm_row *row, struct fm_error *err)
{
    const struct fm_table_def *d = t->def;
    for (size_t c = 1; c < d->n_cols; c++) {
        const struct fm_value *v = &row->v[c];
        if (fm_check_value(e, t, c, v) != FM_OK)
            return fm_error_set(err, FM_ERR_CORRUPT, "%s id %llu: %s",
                                d->name, (unsigned long long)row->id,
                                e->err.msg);
        int p = d->cols[c].fk_table;
        if (p < 0 || v->is_null)
            continue;
        if (v->i <= 0 || (uint64_t)v->i >= FM_ID_MAX ||
            fm_table_record(&e->tables[p], (uint64_t)v->i) == NULL)
            return fm_error_set(err, FM_ERR_CORRUPT,
                                "%s id %llu: %s.%s %lld references no row "
                                "of %s",
                                d->name, (unsigned long long)row->id,
                                d->name, d->cols[c].name, (long long)v->i,
                                e->tables[p].def->name);
    }
    for (size_t i = 0; i < t->n_indexes; i++) {
        if (!index_has_row(e, &t->indexes[i], row))
            return fm_error_set(err, FM_ERR_CORRUPT,
                                "%s id %llu is missing from index %s",
                                d->name, (unsigned long long)row->id,
                                t->indexes[i].def->name);
    }
    return FM_OK;
}

static fm_status check_table(struct fm_engine *e, struct fm_table *t,
                             struct fm_error *err)
{
    const struct fm_table_def *d = t->def;
    uint64_t n = 0;
    struct fm_row row;
    for (uint64_t id = 1; id < t->next_id; id++) {
        const uint8_t *rec = fm_table_record(t, id);
        if (rec == NULL)
            continue;
        n++;
        if (!fm_table_record_is_valid(t, rec, fm_table_record_size(rec)))
            return fm_error_set(err, FM_ERR_CORRUPT,
                                "%s id %llu has a malformed record", d->name,
                                (unsigned long long)id);
        fm_table_decode(t, id, rec, &row);
        fm_status st = check_row(e, t, &row, err);
        if (st != FM_OK)
            return st;
    }
    /* No row beyond next_id: ids are never handed out twice. */
    for (uint64_t p = t->next_id >> FM_ID_PAGE_BITS; p < t->n_pages; p++) {
        for (uint64_t i = 0; t->pages[p] != NULL && i < FM_ID_PAGE_SLOTS;
             i++) {
            uint64_t id = (p << FM_ID_PAGE_BITS) | i;
            if (id >= t->next_id && t->pages[p][i] != NULL)
                return fm_error_set(err, FM_ERR_CORRUPT,
                                    "%s has row %llu at or past next id "
                                    "%llu",
                                    d->name, (unsigned long long)id,
                                    (unsigned long long)t->next_id);
        }
    }
    if (n != t->n_rows)
        return fm_error_set(err, FM_ERR_CORRUPT,
                            "%s counts %llu rows but holds %llu", d->name,
                            (unsigned long long)t->n_rows,
                            (unsigned long long)n);
    for (size_t i = 0; i < t->n_indexes; i++) {
        struct fm_index *ix = &t->indexes[i];
        size_t count = ix->h != NULL ? fm_hash_count(ix->h)
                                     : fm_btree_count(ix->bt);
        if (count != n)
            return fm_error_set(err, FM_ERR_CORRUPT,
                                "index %s holds %zu entries for %llu rows",
                                ix->def->name, count, (unsigned long long)n);
        fm_status st = ix->h != NULL ? fm_hash_check(ix->h, err)
                                     : fm_btree_check(ix->bt, err);
        if (st != FM_OK)
            return st;
    }
    return FM_OK;
}

fm_status fm_engine_check(struct fm_engine *e, struct fm_error *err)
{
    for (size_t i = 0; i < e->schema.n_tables; i++) {
        fm_status st = check_table(e, &e->tables[i], err);
        if (st != FM_OK)
            return st;
    }
    return FM_OK;
}
