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

#include <stdio.h>

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
    /* Not a walk over the equal keys: that is quadratic in a key shared by
     * many rows (a popular track, the NULLs of a foreign key). */
    return fm_btree_contains(ix->bt, kb->data, kb->len, row->id);
}

static fm_status check_row(struct fm_engine *e, struct fm_table *t,
                           const struct fm_row *row, struct fm_error *err)
{
    const struct fm_table_def *d = t->def;
    for (size_t c = 1; c < d->n_cols; c++) {
        const struct fm_value *v = &row->v[c];
        if (fm_check_value(e, t, c, v) != FM_OK)
            return fm_error_set(err, FM_ERR_CORRUPT, "%s id %llu: %s", d->name,
                                (unsigned long long)row->id, e->err.msg);
        int p = d->cols[c].fk_table;
        if (p < 0 || v->is_null)
            continue;
        if (v->i <= 0 || (uint64_t)v->i >= FM_ID_MAX ||
            fm_table_record(&e->tables[p], (uint64_t)v->i) == NULL)
            return fm_error_set(err, FM_ERR_CORRUPT,
                                "%s id %llu: %s.%s %lld references no row "
                                "of %s",
                                d->name, (unsigned long long)row->id, d->name,
                                d->cols[c].name, (long long)v->i,
                                e->tables[p].def->name);
    }
    for (size_t i = 0; i < t->n_indexes; i++) {
        if (!index_has_row(e, &t->indexes[i], row))
            return fm_error_set(
                err, FM_ERR_CORRUPT, "%s id %llu is missing from index %s",
                d->name, (unsigned long long)row->id, t->indexes[i].def->name);
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
        for (uint64_t i = 0; t->pages[p] != NULL && i < FM_ID_PAGE_SLOTS; i++) {
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
        return fm_error_set(
            err, FM_ERR_CORRUPT, "%s counts %llu rows but holds %llu", d->name,
            (unsigned long long)t->n_rows, (unsigned long long)n);
    for (size_t i = 0; i < t->n_indexes; i++) {
        struct fm_index *ix = &t->indexes[i];
        size_t count =
            ix->h != NULL ? fm_hash_count(ix->h) : fm_btree_count(ix->bt);
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

/* ---- fm_check_dir -------------------------------------------------------- */

struct dir_check {
    fm_check_fn fn;
    void *ctx;
    fm_status first_bad;
};

static void segment_report(void *ctx, const struct fm_wal_segment_report *r)
{
    struct dir_check *dc = ctx;
    struct fm_check_item it = {0};
    it.file = r->file;
    it.first_lsn = r->first_lsn;
    it.last_lsn = r->last_lsn;
    it.n_records = r->n_records;
    it.size_bytes = r->size_bytes;
    it.bad_offset = r->first_bad_offset;
    it.torn_bytes = r->torn_bytes;
    it.torn_records = r->torn_records;
    it.zero_bytes = r->zero_bytes;
    it.st = r->st;
    it.msg = r->msg;
    if (r->st != FM_OK && dc->first_bad == FM_OK)
        dc->first_bad = r->st;
    dc->fn(dc->ctx, &it);
}

/* Reads the table row counts from a snapshot's first chunk. */
static void snapshot_counts(const char *path, const struct fm_schema *schema,
                            uint64_t *rows, size_t *n_out)
{
    struct fm_snapshot_reader *r = NULL;
    struct fm_error err = {0};
    const uint8_t *p;
    size_t len;
    bool end;
    *n_out = 0;
    if (fm_snapshot_reader_open(path, NULL, 0, &r, &err) != FM_OK)
        return;
    if (fm_snapshot_reader_next(r, &p, &len, &end, &err) == FM_OK && !end &&
        len >= 8 && memcmp(p, "FMDB", 4) == 0) {
        const uint8_t *q = p + 8;
        const uint8_t *e = p + len;
        uint64_t n;
        size_t k = fm_varint_get(q, (size_t)(e - q), &n);
        if (k > 0 && n == schema->n_tables) {
            q += k;
            size_t i;
            for (i = 0; i < n; i++) {
                uint64_t next_id;
                size_t a = fm_varint_get(q, (size_t)(e - q), &next_id);
                if (a == 0)
                    break;
                q += a;
                size_t b = fm_varint_get(q, (size_t)(e - q), &rows[i]);
                if (b == 0)
                    break;
                q += b;
            }
            if (i == n)
                *n_out = (size_t)n;
        }
    }
    fm_snapshot_reader_close(r);
}

fm_status fm_check_dir(const char *dir, const char *schema_text,
                       size_t schema_len, bool fix, fm_check_fn fn, void *ctx,
                       struct fm_error *err)
{
    struct fm_schema schema = {0};
    struct fm_snapshot_list list = {0};
    struct dir_check dc = {fn, ctx, FM_OK};
    const char *names[FM_MAX_TABLES];
    uint64_t rows[FM_MAX_TABLES];
    uint64_t start_lsn = 0;
    if (schema_text == NULL) {
        schema_text = fm_schema_default_text;
        schema_len = strlen(schema_text);
    }
    fm_status st = fm_schema_parse(schema_text, schema_len, &schema, err);
    if (st != FM_OK)
        return st;
    for (size_t i = 0; i < schema.n_tables; i++)
        names[i] = schema.tables[i].name;
    if (fix) {
        uint64_t torn = 0;
        if ((st = fm_wal_fix_dir(dir, &torn, err)) != FM_OK)
            goto out;
    }
    if ((st = fm_snapshot_list_dir(dir, &list, err)) != FM_OK)
        goto out;
    for (size_t i = 0; i < list.n; i++) {
        char path[4096];
        struct fm_snapshot_stats ss = {0};
        struct fm_error serr = {0};
        struct fm_check_item it = {0};
        snprintf(path, sizeof(path), "%s/%s", dir, list.items[i].file);
        it.is_snapshot = true;
        it.file = list.items[i].file;
        it.st =
            fm_snapshot_check_file(path, (const uint8_t *)schema.text,
                                   schema.text_len, &ss, &it.bad_offset, &serr);
        it.msg = serr.msg;
        it.first_lsn = it.last_lsn = list.items[i].lsn;
        it.n_records = ss.n_chunks;
        it.raw_bytes = ss.raw_bytes;
        it.size_bytes = ss.file_bytes;
        if (it.st == FM_OK) {
            /* Recovery starts from the newest sound snapshot: the log
             * below it may have gaps (docs/durability.md). */
            if (list.items[i].lsn >= start_lsn)
                start_lsn = list.items[i].lsn + 1;
            snapshot_counts(path, &schema, rows, &it.n_tables);
            it.table_names = names;
            it.table_rows = rows;
        } else if (dc.first_bad == FM_OK) {
            dc.first_bad = it.st;
        }
        fn(ctx, &it);
    }
    st = fm_wal_check_dir(dir, (const uint8_t *)schema.text, schema.text_len,
                          start_lsn, segment_report, &dc, err);
    if (st == FM_OK && dc.first_bad != FM_OK)
        st = fm_error_set(err, dc.first_bad, "%s",
                          "damaged files were found (see above)");
out:
    fm_snapshot_list_fini(&list);
    fm_schema_fini(&schema);
    return st;
}
