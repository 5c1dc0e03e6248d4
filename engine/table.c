/*
 * table.c: how a table keeps its rows in memory, and its indexes in step.
 *
 * A row is one variable-length record, not one allocation per field. Ids
 * are dense and never reused, so the id is not stored at all: it is the
 * position in a two-level table of pointers (pages of 512 slots, 4 KiB),
 * which makes GET by id two dependent loads and costs 8 bytes per id. A
 * deleted id leaves a NULL slot behind. Pages used to hold 4,096 slots; a
 * 10k-row table then paid for 12,288 ids and a one-row table for 32 KiB.
 * With 512 a table pays for at most 511 ids past its last one, and the top
 * level costs 8 bytes per 512 ids: 2 MiB at 100M rows, which falls out of
 * the L2 cache where the 256 KiB of 4,096-slot pages fitted, but the load of
 * the slot behind it misses the cache at that size either way.
 *
 * Record layout (all integers LEB128 varints, "zz" meaning zigzag-mapped):
 *
 *   field            size        meaning
 *   body_len         varint      bytes that follow this field
 *   null bitmap      ceil(u/8)   bit k set: user column k+1 is NULL
 *   created_at       zz varint   microseconds since the epoch
 *   updated_at       zz varint   minus created_at (usually 0: one byte)
 *   user columns     ...         for each non-NULL column in schema order:
 *                                integer, datetime: zz varint;
 *                                string: varint length, then the bytes
 *
 * where u is the number of user columns (all but id and the timestamps). A
 * user_track_history row (user 1234567, track 987654, 12 listens) takes
 * about 20 bytes. Reading a column decodes the columns before it; tables
 * have few columns, and a decode of a whole row is a few dozen instructions.
 *
 * Records come from a per-table slab allocator with 8-byte size classes up
 * to 512 bytes, carved from 64 KiB chunks, with a free list per class; this
 * avoids malloc's per-block header and 16-byte rounding. Chunks are taken
 * from anonymous mappings that the kernel populates when they are made
 * (fm_map_populated): a first touch of a fresh page costs 12-17 us on the
 * virtual machines measured, a third of the time of inserting a users row
 * and a fifth of a recovery, and populating a mapping in one call skips
 * the fault per page. A table's mappings grow with it, each a quarter of
 * what it has mapped so far, between one chunk and 4 MiB, so populated but
 * unused memory stays under a quarter of the table's records or 4 MiB,
 * and a small table maps chunk by chunk as before. Chunks are never
 * returned before the table is freed (nor were they with malloc). An UPDATE
 * writes a new record and keeps the old one until commit, so that rollback is a
 * pointer swap and the indexes can still read the old key while removing it.
 *
 * Indexes do not copy keys. fm_key_fn below decodes the held row and
 * encodes its key on demand; the B+tree calls it only when its cached 8-byte
 * key prefix cannot decide a comparison, the hash index only on equal
 * hashes. Index entries must therefore be removed while the record they
 * were made from is still in its slot.
 */
#include "engine/engine_int.h"

/* Hash index slots keep 32-bit row ids (index/hash.h). */
_Static_assert(FM_ID_MAX - 1 <= FM_HASH_ROWID_MAX,
               "every row id fits a hash index slot");

/* ---- slab ---------------------------------------------------------------- */

static size_t slab_class(size_t size)
{
    return (size + 7) / 8 - 1;
}

/* A fresh chunk from the last mapping, or from a new one. */
static uint8_t *slab_new_chunk(struct fm_slab *s)
{
    if (s->n_maps == 0 || s->map_used == s->maps[s->n_maps - 1].bytes) {
        if (s->n_maps == s->maps_cap) {
            size_t cap = s->maps_cap ? s->maps_cap * 2 : 8;
            struct fm_slab_map *n = fm_realloc(s->maps, cap * sizeof(*n));
            if (n == NULL)
                return NULL;
            s->maps = n;
            s->maps_cap = cap;
        }
        size_t bytes =
            s->map_bytes / 4 / FM_SLAB_CHUNK_SIZE * FM_SLAB_CHUNK_SIZE;
        if (bytes < FM_SLAB_CHUNK_SIZE)
            bytes = FM_SLAB_CHUNK_SIZE;
        if (bytes > FM_SLAB_MAP_MAX)
            bytes = FM_SLAB_MAP_MAX;
        uint8_t *p = fm_map_populated(bytes, false);
        if (p == NULL)
            return NULL;
        s->maps[s->n_maps++] = (struct fm_slab_map){p, bytes};
        s->map_bytes += bytes;
        s->map_used = 0;
    }
    uint8_t *chunk = s->maps[s->n_maps - 1].p + s->map_used;
    s->map_used += FM_SLAB_CHUNK_SIZE;
    s->n_chunks++;
    return chunk;
}

static void *slab_alloc(struct fm_slab *s, size_t size)
{
    if (size > FM_SLAB_MAX) {
        void *p = fm_malloc(size);
        if (p != NULL) {
            s->large_bytes += size;
            s->used_bytes += size;
        }
        return p;
    }
    size_t c = slab_class(size);
    size_t csize = (c + 1) * 8;
    void *p = s->free_list[c];
    if (p != NULL) {
        memcpy(&s->free_list[c], p, sizeof(void *));
        s->used_bytes += csize;
        return p;
    }
    if (s->chunk == NULL || s->chunk_used + csize > FM_SLAB_CHUNK_SIZE) {
        uint8_t *chunk = slab_new_chunk(s);
        if (chunk == NULL)
            return NULL;
        /* The tail of the old chunk is too small for this class; give it
         * to the free list of the largest class it can hold. */
        if (s->chunk != NULL && s->chunk_used + 8 <= FM_SLAB_CHUNK_SIZE) {
            size_t rest = FM_SLAB_CHUNK_SIZE - s->chunk_used;
            size_t rc = rest / 8 - 1;
            void *tail = s->chunk + s->chunk_used;
            memcpy(tail, &s->free_list[rc], sizeof(void *));
            s->free_list[rc] = tail;
        }
        s->chunk = chunk;
        s->chunk_used = 0;
    }
    p = s->chunk + s->chunk_used;
    s->chunk_used += csize;
    s->used_bytes += csize;
    return p;
}

static void slab_free(struct fm_slab *s, void *p, size_t size)
{
    if (size > FM_SLAB_MAX) {
        s->large_bytes -= size;
        s->used_bytes -= size;
        fm_free(p);
        return;
    }
    size_t c = slab_class(size);
    memcpy(p, &s->free_list[c], sizeof(void *));
    s->free_list[c] = p;
    s->used_bytes -= (c + 1) * 8;
}

static void slab_fini(struct fm_slab *s)
{
    for (size_t i = 0; i < s->n_maps; i++)
        fm_unmap(s->maps[i].p, s->maps[i].bytes);
    fm_free(s->maps);
    memset(s, 0, sizeof(*s));
}

/* ---- records ------------------------------------------------------------- */

size_t fm_table_record_size(const uint8_t *rec)
{
    uint64_t body;
    size_t n = fm_varint_get(rec, FM_VARINT_MAX, &body);
    FM_ASSERT(n > 0);
    return n + (size_t)body;
}

fm_status fm_table_encode_row(struct fm_table *t, const struct fm_row *row)
{
    struct fm_buf *b = &t->engine->rec;
    const struct fm_table_def *d = t->def;
    size_t ca = fm_col_created_at(d);
    /* Upper bound of the body, to reserve once. */
    size_t bound = t->bitmap_len + 2 * FM_VARINT_MAX;
    for (size_t c = 1; c < ca; c++) {
        size_t add = FM_VARINT_MAX;
        if (d->cols[c].type == FM_TYPE_STRING && !row->v[c].is_null)
            add += row->v[c].len;
        bound += add;
    }
    b->len = 0;
    fm_status st = fm_buf_reserve(b, bound + FM_VARINT_MAX);
    if (st != FM_OK)
        return st;
    /* The body is written after room for the longest length prefix, then
     * moved down once its length is known. */
    uint8_t *body = b->data + FM_VARINT_MAX;
    uint8_t *o = body;
    memset(o, 0, t->bitmap_len);
    o += t->bitmap_len;
    int64_t created = row->v[ca].i;
    o += fm_varint_put(o, fm_zigzag(created));
    o += fm_varint_put(o, fm_zigzag(row->v[ca + 1].i - created));
    for (size_t c = 1; c < ca; c++) {
        const struct fm_value *v = &row->v[c];
        if (v->is_null) {
            body[(c - 1) / 8] |= (uint8_t)(1u << ((c - 1) % 8));
            continue;
        }
        if (d->cols[c].type == FM_TYPE_STRING) {
            o += fm_varint_put(o, v->len);
            if (v->len > 0)
                memcpy(o, v->s, v->len);
            o += v->len;
        } else {
            o += fm_varint_put(o, fm_zigzag(v->i));
        }
    }
    size_t body_len = (size_t)(o - body);
    uint8_t pre[FM_VARINT_MAX];
    size_t pre_len = fm_varint_put(pre, body_len);
    memmove(b->data + pre_len, body, body_len);
    memcpy(b->data, pre, pre_len);
    b->len = pre_len + body_len;
    return FM_OK;
}

bool fm_table_record_is_valid(const struct fm_table *t, const uint8_t *rec,
                              size_t len)
{
    uint64_t body;
    size_t n = fm_varint_get(rec, len, &body);
    if (n == 0 || body != len - n || body < t->bitmap_len)
        return false;
    const uint8_t *p = rec + n;
    const uint8_t *end = rec + len;
    const uint8_t *bitmap = p;
    p += t->bitmap_len;
    uint64_t u;
    for (int i = 0; i < 2; i++) {
        size_t k = fm_varint_get(p, (size_t)(end - p), &u);
        if (k == 0)
            return false;
        p += k;
    }
    size_t ca = fm_col_created_at(t->def);
    for (size_t c = 1; c < ca; c++) {
        if (bitmap[(c - 1) / 8] & (1u << ((c - 1) % 8))) {
            if (t->def->cols[c].not_null)
                return false;
            continue;
        }
        size_t k = fm_varint_get(p, (size_t)(end - p), &u);
        if (k == 0)
            return false;
        p += k;
        if (t->def->cols[c].type == FM_TYPE_STRING) {
            if (u > FM_STRING_MAX || u > (uint64_t)(end - p))
                return false;
            p += u;
        }
    }
    /* Unused bits of the bitmap must be clear. */
    for (size_t c = ca; c <= t->bitmap_len * 8; c++) {
        if (c >= 1 && bitmap[(c - 1) / 8] & (1u << ((c - 1) % 8)))
            return false;
    }
    return p == end;
}

uint8_t *fm_table_copy_record(struct fm_table *t, const uint8_t *rec,
                              size_t len)
{
    uint8_t *p = slab_alloc(&t->slab, len);
    if (p != NULL)
        memcpy(p, rec, len);
    return p;
}

uint8_t *fm_table_alloc_record(struct fm_table *t)
{
    return fm_table_copy_record(t, t->engine->rec.data, t->engine->rec.len);
}

void fm_table_free_record(struct fm_table *t, uint8_t *rec)
{
    if (rec != NULL)
        slab_free(&t->slab, rec, fm_table_record_size(rec));
}

/* Decodes the id, the timestamps and the user columns 1..last only. */
static void decode_upto(const struct fm_table *t, uint64_t id,
                        const uint8_t *rec, struct fm_row *row, size_t last)
{
    const struct fm_table_def *d = t->def;
    size_t ca = fm_col_created_at(d);
    uint64_t u = 0;
    size_t n = fm_varint_get(rec, FM_VARINT_MAX, &u);
    const uint8_t *p = rec + n;
    const uint8_t *bitmap = p;
    /* Records are written by this file only, so they are trusted here;
     * varint reads are still bounded by the longest encoding. */
    p += t->bitmap_len;
    row->id = id;
    row->v[0].is_null = false;
    row->v[0].i = (int64_t)id;
    p += fm_varint_get(p, FM_VARINT_MAX, &u);
    int64_t created = fm_unzigzag(u);
    p += fm_varint_get(p, FM_VARINT_MAX, &u);
    row->v[ca].is_null = false;
    row->v[ca].i = created;
    row->v[ca + 1].is_null = false;
    row->v[ca + 1].i = created + fm_unzigzag(u);
    size_t end = last + 1 < ca ? last + 1 : ca;
    for (size_t c = 1; c < end; c++) {
        struct fm_value *v = &row->v[c];
        if (bitmap[(c - 1) / 8] & (1u << ((c - 1) % 8))) {
            v->is_null = true;
            v->i = 0;
            v->s = NULL;
            v->len = 0;
            continue;
        }
        v->is_null = false;
        p += fm_varint_get(p, FM_VARINT_MAX, &u);
        if (d->cols[c].type == FM_TYPE_STRING) {
            v->len = (size_t)u;
            v->s = p;
            v->i = 0;
            p += u;
        } else {
            v->i = fm_unzigzag(u);
            v->s = NULL;
            v->len = 0;
        }
    }
}

void fm_table_decode(const struct fm_table *t, uint64_t id, const uint8_t *rec,
                     struct fm_row *row)
{
    decode_upto(t, id, rec, row, t->def->n_cols);
}

fm_status fm_table_set_record(struct fm_table *t, uint64_t id, uint8_t *rec)
{
    FM_ASSERT(id < FM_ID_MAX);
    uint64_t p = id >> FM_ID_PAGE_BITS;
    if (p >= t->n_pages) {
        size_t n = t->n_pages ? t->n_pages : 16;
        while (n <= p)
            n *= 2;
        uint8_t ***np = fm_realloc(t->pages, n * sizeof(*np));
        if (np == NULL)
            return FM_ERR_NOMEM;
        memset(np + t->n_pages, 0, (n - t->n_pages) * sizeof(*np));
        t->pages = np;
        t->n_pages = n;
    }
    if (t->pages[p] == NULL) {
        if (rec == NULL)
            return FM_OK;
        t->pages[p] = fm_calloc(FM_ID_PAGE_SLOTS, sizeof(uint8_t *));
        if (t->pages[p] == NULL)
            return FM_ERR_NOMEM;
    }
    t->pages[p][id & (FM_ID_PAGE_SLOTS - 1)] = rec;
    return FM_OK;
}

/* ---- index keys ---------------------------------------------------------- */

/*
 * Writes the key of ix for row into buf[0..cap) as far as it fits and
 * returns the full length, so one function serves the index callback (fixed
 * buffer) and fm_index_key (reserve, then write).
 */
static size_t key_write(const struct fm_index *ix, const struct fm_row *row,
                        uint8_t *buf, size_t cap)
{
    size_t o = 0;
    bool has_null = false;
    const struct fm_table_def *d = ix->table->def;
    for (size_t k = 0; k < ix->def->n_cols; k++) {
        int c = ix->def->cols[k];
        const struct fm_value *v = &row->v[c];
        uint8_t tmp[FM_KEY_INT_MAX];
        if (v->is_null) {
            has_null = true;
            if (o < cap)
                buf[o] = 0x05;
            o++;
        } else if (d->cols[c].type != FM_TYPE_STRING) {
            size_t n = fm_key_encode_int(v->i, tmp);
            for (size_t i = 0; i < n; i++, o++) {
                if (o < cap)
                    buf[o] = tmp[i];
            }
        } else {
            if (o < cap)
                buf[o] = 0x10;
            o++;
            for (size_t i = 0; i < v->len; i++) {
                if (o < cap)
                    buf[o] = v->s[i];
                o++;
                if (v->s[i] == 0) {
                    if (o < cap)
                        buf[o] = 0xff;
                    o++;
                }
            }
            for (int i = 0; i < 2; i++, o++) {
                if (o < cap)
                    buf[o] = 0;
            }
        }
    }
    /* SQL lets a UNIQUE column hold any number of NULLs: a unique key with
     * a NULL in it is made distinct by the row id, and the planner never
     * looks such keys up by equality. */
    if (ix->def->unique && has_null) {
        uint8_t tmp[FM_KEY_INT_MAX];
        size_t n = fm_key_encode_int((int64_t)row->id, tmp);
        for (size_t i = 0; i < n; i++, o++) {
            if (o < cap)
                buf[o] = tmp[i];
        }
    }
    return o;
}

fm_status fm_index_key(const struct fm_index *ix, const struct fm_row *row,
                       struct fm_buf *b)
{
    size_t need = key_write(ix, row, NULL, 0);
    fm_status st = fm_buf_reserve(b, need);
    if (st != FM_OK)
        return st;
    key_write(ix, row, b->data + b->len, need);
    b->len += need;
    return FM_OK;
}

size_t fm_index_key_of_record(const struct fm_index *ix, uint64_t id,
                              const uint8_t *rec, uint8_t *buf, size_t cap)
{
    struct fm_row row;
    /* Only the columns up to the index's last one: a hash probe of
     * users.username decodes one string, not the whole row. */
    decode_upto(ix->table, id, rec, &row, ix->max_col);
    return key_write(ix, &row, buf, cap);
}

static size_t index_key_fn(void *ctx, uint64_t rowid, uint8_t *buf, size_t cap)
{
    const struct fm_index *ix = ctx;
    const uint8_t *rec = fm_table_record(ix->table, rowid);
    FM_ASSERT(rec != NULL);
    return fm_index_key_of_record(ix, rowid, rec, buf, cap);
}

static fm_status index_insert(struct fm_index *ix, const uint8_t *key,
                              size_t len, uint64_t id)
{
    if (ix->h != NULL)
        return fm_hash_insert(ix->h, key, len, id);
    return fm_btree_insert(ix->bt, key, len, id);
}

static void index_remove(struct fm_index *ix, const uint8_t *key, size_t len,
                         uint64_t id)
{
    bool found = ix->h != NULL ? fm_hash_remove(ix->h, key, len, id)
                               : fm_btree_remove(ix->bt, key, len, id);
    FM_ASSERT(found);
}

fm_status fm_table_index_add(struct fm_table *t, const struct fm_row *row,
                             uint32_t mask, int *bad_index_out)
{
    struct fm_buf *kb = &t->engine->key;
    size_t i;
    fm_status st = FM_OK;
    for (i = 0; i < t->n_indexes; i++) {
        if (!(mask & (1u << i)))
            continue;
        kb->len = 0;
        if ((st = fm_index_key(&t->indexes[i], row, kb)) != FM_OK)
            break;
        if ((st = index_insert(&t->indexes[i], kb->data, kb->len, row->id)) !=
            FM_OK)
            break;
    }
    if (st == FM_OK)
        return FM_OK;
    if (bad_index_out != NULL)
        *bad_index_out = (int)i;
    /* Take back the entries added before the one that failed. Removal
     * needs no memory beyond the key buffer, which is already big enough
     * for keys of this row. */
    while (i-- > 0) {
        if (!(mask & (1u << i)))
            continue;
        kb->len = 0;
        fm_status kst = fm_index_key(&t->indexes[i], row, kb);
        FM_ASSERT(kst == FM_OK);
        index_remove(&t->indexes[i], kb->data, kb->len, row->id);
    }
    return st;
}

fm_status fm_table_reserve_keys(struct fm_table *t, const struct fm_row *row)
{
    size_t longest = 0;
    for (size_t i = 0; i < t->n_indexes; i++) {
        size_t n = key_write(&t->indexes[i], row, NULL, 0);
        if (n > longest)
            longest = n;
    }
    struct fm_buf *kb = &t->engine->key;
    kb->len = 0;
    return fm_buf_reserve(kb, longest);
}

void fm_table_index_remove(struct fm_table *t, const struct fm_row *row,
                           uint32_t mask)
{
    struct fm_buf *kb = &t->engine->key;
    for (size_t i = 0; i < t->n_indexes; i++) {
        if (!(mask & (1u << i)))
            continue;
        kb->len = 0;
        /* Callers reserve the room first (fm_table_reserve_keys), or the
         * keys were added through this buffer, so this cannot fail. */
        fm_status st = fm_index_key(&t->indexes[i], row, kb);
        FM_ASSERT(st == FM_OK);
        index_remove(&t->indexes[i], kb->data, kb->len, row->id);
    }
}

/* ---- lifecycle and accounting -------------------------------------------- */

fm_status fm_table_init(struct fm_table *t, struct fm_engine *e, size_t no)
{
    memset(t, 0, sizeof(*t));
    t->engine = e;
    t->no = no;
    t->def = &e->schema.tables[no];
    t->next_id = 1;
    t->n_user_cols = t->def->n_cols - 3;
    t->bitmap_len = (t->n_user_cols + 7) / 8;
    /* "$" len CRLF name CRLF: at most 8 + FM_NAME_CAP bytes a column. */
    t->resp_names = fm_malloc(t->def->n_cols * (8 + FM_NAME_CAP));
    if (t->resp_names == NULL)
        return FM_ERR_NOMEM;
    for (size_t c = 0; c < t->def->n_cols; c++) {
        const struct fm_column *col = &t->def->cols[c];
        size_t at = t->resp_name_off[c];
        at += fm_reply_put_bulk(t->resp_names + at, col->name, col->name_len);
        t->resp_name_off[c + 1] = (uint16_t)at;
    }
    for (size_t i = 0; i < t->def->n_indexes; i++) {
        struct fm_index *ix = &t->indexes[i];
        ix->def = &t->def->indexes[i];
        ix->table = t;
        ix->max_col = 0;
        for (size_t k = 0; k < ix->def->n_cols; k++) {
            if ((size_t)ix->def->cols[k] > ix->max_col)
                ix->max_col = (size_t)ix->def->cols[k];
        }
        fm_status st =
            ix->def->hash
                ? fm_hash_new(index_key_fn, ix, ix->def->unique, &ix->h)
                : fm_btree_new(index_key_fn, ix, ix->def->unique, &ix->bt);
        if (st != FM_OK) {
            fm_table_fini(t);
            return st;
        }
        if (ix->bt != NULL)
            fm_btree_set_pool(ix->bt, &e->undo_pool);
        t->n_indexes++;
    }
    return FM_OK;
}

void fm_table_fini(struct fm_table *t)
{
    for (size_t i = 0; i < t->n_indexes; i++) {
        fm_hash_free(t->indexes[i].h);
        fm_btree_free(t->indexes[i].bt);
    }
    for (size_t p = 0; p < t->n_pages; p++) {
        /* Slab records go with their chunks; large ones one by one. */
        for (size_t i = 0; t->pages[p] != NULL && i < FM_ID_PAGE_SLOTS; i++) {
            uint8_t *rec = t->pages[p][i];
            if (rec != NULL && fm_table_record_size(rec) > FM_SLAB_MAX)
                fm_free(rec);
        }
        fm_free(t->pages[p]);
    }
    fm_free(t->pages);
    fm_free(t->resp_names);
    slab_fini(&t->slab);
    memset(t, 0, sizeof(*t));
}

size_t fm_table_row_bytes(const struct fm_table *t)
{
    size_t n = sizeof(*t) + t->n_pages * sizeof(uint8_t **);
    for (size_t p = 0; p < t->n_pages; p++) {
        if (t->pages[p] != NULL)
            n += FM_ID_PAGE_SLOTS * sizeof(uint8_t *);
    }
    n += t->slab.map_bytes + t->slab.large_bytes;
    n += t->slab.maps_cap * sizeof(struct fm_slab_map);
    return n;
}

size_t fm_table_index_bytes(const struct fm_table *t)
{
    size_t n = 0;
    for (size_t i = 0; i < t->n_indexes; i++) {
        if (t->indexes[i].h != NULL)
            n += fm_hash_memory_bytes(t->indexes[i].h);
        else
            n += fm_btree_memory_bytes(t->indexes[i].bt);
    }
    return n;
}
