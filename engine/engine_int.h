/*
 * engine_int.h: structures shared by the .c files of engine/ and by no one
 * else. The public face of the engine is fermata.h.
 */
#ifndef FM_ENGINE_INT_H
#define FM_ENGINE_INT_H

#include "engine/fermata.h"
#include "engine/schema.h"
#include "engine/value.h"
#include "index/btree.h"
#include "index/hash.h"
#include "wal/snapshot.h"
#include "wal/wal.h"

#include <sys/types.h>

/*
 * Row ids map to records through a two-level table of pages of 512 slots
 * (4 KiB): small enough that a small table wastes little past its last id.
 */
#define FM_ID_PAGE_BITS  9
#define FM_ID_PAGE_SLOTS ((uint64_t)1 << FM_ID_PAGE_BITS)
#define FM_ID_MAX        ((uint64_t)1 << 32) /* ids are below this */

/*
 * Records live in size-classed slabs: classes of 8-byte steps up to
 * FM_SLAB_MAX bytes, carved out of 64 KiB chunks, with an intrusive free
 * list per class. Larger records come from fm_malloc.
 */
#define FM_SLAB_MAX        512
#define FM_SLAB_CLASSES    (FM_SLAB_MAX / 8)
#define FM_SLAB_CHUNK_SIZE (64 * 1024)
#define FM_SLAB_MAP_MAX    ((size_t)4 << 20) /* largest mapping of chunks */

/* Nodes (2 KiB each) kept for rollbacks that malloc fails (txn.c). */
#define FM_UNDO_POOL_NODES 256

/* A populated mapping that chunks are taken from (table.c). */
struct fm_slab_map {
    uint8_t *p;
    size_t bytes;
};

struct fm_slab {
    void *free_list[FM_SLAB_CLASSES]; /* per class: freed blocks, linked */
    uint8_t *chunk;                   /* the chunk being carved */
    size_t chunk_used;                /* bytes carved from it */
    size_t n_chunks;                  /* chunks handed out */
    struct fm_slab_map *maps;         /* every mapping, for release */
    size_t n_maps;
    size_t maps_cap;
    size_t map_bytes;   /* bytes mapped in all of them */
    size_t map_used;    /* bytes of the last one handed out as chunks */
    size_t large_bytes; /* bytes in records above FM_SLAB_MAX */
    size_t used_bytes;  /* bytes in live records (class-rounded) */
};

struct fm_table;

struct fm_index {
    const struct fm_index_def *def;
    struct fm_table *table;
    struct fm_btree *bt; /* exactly one of bt and h is set */
    struct fm_hash *h;
    size_t max_col; /* the highest column number in the key */
    /* Recovery only: sort scratch mapped ahead by the prepare thread. */
    void *build_scratch;
    size_t build_scratch_bytes;
};

struct fm_table {
    struct fm_engine *engine;
    const struct fm_table_def *def;
    size_t no;        /* table number in the schema */
    uint8_t ***pages; /* pages[id >> 9][id & 511] -> record */
    size_t n_pages;   /* length of pages[] */
    uint64_t next_id; /* id the next automatic insert gets */
    uint64_t n_rows;
    size_t n_user_cols; /* columns between id and created_at */
    size_t bitmap_len;  /* bytes of the record's null bitmap */
    struct fm_slab slab;
    size_t n_indexes;
    struct fm_index indexes[FM_MAX_INDEXES];
    /* Column c's name as a RESP bulk string, for replies that carry rows:
     * resp_names[resp_name_off[c] .. resp_name_off[c + 1]). */
    uint8_t *resp_names;
    uint16_t resp_name_off[FM_MAX_COLUMNS + 1];
};

/*
 * A decoded row: values borrow the record's bytes, so they stay valid while
 * the record is alive (until the transaction that replaced it commits).
 */
struct fm_row {
    uint64_t id;
    struct fm_value v[FM_MAX_COLUMNS];
};

enum fm_undo_op {
    FM_UNDO_INSERT = 1, /* the row was inserted; undo removes it */
    FM_UNDO_DELETE = 2, /* old_rec was deleted; undo puts it back */
    FM_UNDO_UPDATE = 3, /* old_rec was replaced; undo restores it */
};

struct fm_undo {
    uint8_t op;
    uint16_t table;
    uint64_t id;
    uint8_t *old_rec;     /* DELETE, UPDATE: the record before */
    uint8_t *new_rec;     /* INSERT, UPDATE: the record written */
    uint64_t old_next_id; /* INSERT: the table's next_id before */
};

struct fm_engine {
    struct fm_schema schema;
    struct fm_table *tables; /* schema.n_tables */
    fm_log_fn log;
    void *log_ctx;
    /*
     * The undo log. Without a WAL it holds the open transaction and is
     * empty between commands. With one, entries of committed transactions
     * stay until fm_engine_flush makes them durable, so that a failed
     * flush can roll the whole group back (SPEC section 4).
     */
    struct fm_undo *undo;
    size_t n_undo;
    size_t undo_cap;
    size_t txn_start; /* first entry of the open transaction */
    bool in_txn;
    bool last_wrote; /* the last committed transaction changed rows */
    int64_t now_us;  /* the command's wall-clock time; 0 until first read */
    /* Durability; wal is NULL for a memory-only engine. */
    struct fm_wal *wal;
    char *dir;
    struct fm_buf redo; /* the redo record being encoded */
    enum fm_fsync_policy fsync;
    struct fm_snapshot_config snap_cfg;
    bool readonly;
    char readonly_reason[FM_ERROR_MSG_CAP];
    pid_t child_pid;        /* background snapshot, or 0 */
    int64_t child_start_us; /* monotonic */
    uint64_t child_lsn;
    int child_pipe;        /* read end of the child's report, or -1 */
    uint64_t child_dirty;  /* changes_since_save when it forked */
    uint64_t child_wal_at; /* WAL bytes written when it forked */
    uint64_t last_lsn;     /* LSN of the last record appended */
    int64_t load_rows_us;  /* recovery: placing the snapshot's rows */
    int64_t load_index_us; /* recovery: building the indexes */
    uint64_t save_lsn;     /* LSN of the newest snapshot */
    uint64_t wal_bytes_at_save;
    int64_t last_save_mono_us;
    int64_t last_save_try_us;  /* monotonic: the last snapshot attempt */
    fm_atfork_fn atfork_child; /* run first in a snapshot child, or NULL */
    void *atfork_ctx;
    struct fm_persist_stats pstats;
    /* Scratch reused by every command, so a warm engine does not allocate:
     * keys being built, row id lists, the record being encoded. */
    struct fm_buf key;
    struct fm_buf key2;
    struct fm_buf rec;
    struct fm_buf ids;     /* uint64_t row ids, a stack used by cascades */
    struct fm_buf cascade; /* the frames of a cascading delete (txn.c) */
    /* B+tree nodes that only a rollback may use when malloc fails (txn.c,
     * "Undo must not fail"); pool_low: it could not be refilled, and
     * writes are refused until it can. */
    struct fm_btree_pool undo_pool;
    bool undo_pool_low;
    struct fm_buf sort;                /* sort entries of FIND */
    struct fm_buf strs;                /* unescaped or formatted text */
    struct fm_datetime_cache dt_cache; /* for datetimes in replies */
    uint8_t *keyfn_buf; /* records encoded by the index key callback */
    size_t keyfn_cap;
    struct fm_error err;
};

/* ---- table.c: rows, records, indexes ------------------------------------- */

fm_status fm_table_init(struct fm_table *t, struct fm_engine *e, size_t no);
void fm_table_fini(struct fm_table *t);

/* The record of row id, or NULL when there is none. */
static inline uint8_t *fm_table_record(const struct fm_table *t, uint64_t id)
{
    uint64_t p = id >> FM_ID_PAGE_BITS;
    if (p >= t->n_pages || t->pages[p] == NULL)
        return NULL;
    return t->pages[p][id & (FM_ID_PAGE_SLOTS - 1)];
}

/* Sets the slot of id (allocating its page). FM_ERR_NOMEM. */
fm_status fm_table_set_record(struct fm_table *t, uint64_t id, uint8_t *rec);

/* Encodes row values (all columns but id) into e->rec. */
fm_status fm_table_encode_row(struct fm_table *t, const struct fm_row *row);

/* Copies e->rec into a new slab record. NULL when out of memory. */
uint8_t *fm_table_alloc_record(struct fm_table *t);
/* Copies the record rec[0..len) into a new slab record; NULL on NOMEM. */
uint8_t *fm_table_copy_record(struct fm_table *t, const uint8_t *rec,
                              size_t len);
void fm_table_free_record(struct fm_table *t, uint8_t *rec);

/* Decodes a record into row (row->id is set from id). */
void fm_table_decode(const struct fm_table *t, uint64_t id, const uint8_t *rec,
                     struct fm_row *row);

/*
 * Writes the encoded key of index ix for the stored record rec of row id
 * into buf[0..cap), decoding only the columns the key needs; returns the
 * key's full length, which may exceed cap (then buf holds its start).
 */
size_t fm_index_key_of_record(const struct fm_index *ix, uint64_t id,
                              const uint8_t *rec, uint8_t *buf, size_t cap);

/* Appends the encoded key of index ix for row values to b. FM_ERR_NOMEM. */
fm_status fm_index_key(const struct fm_index *ix, const struct fm_row *row,
                       struct fm_buf *b);

/*
 * Adds index entries for row to the indexes of t (all when mask is all
 * ones, else those with their bit set). On failure nothing was added;
 * FM_ERR_UNIQUE sets *bad_index_out to the index that refused.
 */
fm_status fm_table_index_add(struct fm_table *t, const struct fm_row *row,
                             uint32_t mask, int *bad_index_out);
/*
 * Makes e->key big enough for the longest index key of row, so that
 * removing its entries cannot fail. Call before changing anything.
 * FM_ERR_NOMEM.
 */
fm_status fm_table_reserve_keys(struct fm_table *t, const struct fm_row *row);

/* Removes index entries for row from the indexes in mask. Needs e->key
 * reserved for the row (fm_table_reserve_keys). */
void fm_table_index_remove(struct fm_table *t, const struct fm_row *row,
                           uint32_t mask);

/* Bytes used by the table's rows and id map, and by its indexes. */
size_t fm_table_row_bytes(const struct fm_table *t);
size_t fm_table_index_bytes(const struct fm_table *t);

/* ---- txn.c: writes, constraints, undo ------------------------------------ */

/* Starts a transaction; commands between begin and commit are atomic. */
void fm_txn_begin(struct fm_engine *e);
/*
 * Ends the transaction. Without a WAL the changes are permanent and the
 * replaced records are freed. With one, the changes are appended to the WAL
 * as one redo record and kept in the undo log until fm_engine_flush; if the
 * append fails the transaction is rolled back and that status returned
 * (FM_ERR_READONLY, FM_ERR_NOMEM) with detail in e->err.
 */
fm_status fm_txn_commit(struct fm_engine *e);
/* Drops the undo entries of the durable group and frees replaced records. */
void fm_txn_release_group(struct fm_engine *e);
/* Undoes every change back to savepoint (an n_undo value). */
void fm_txn_rollback_to(struct fm_engine *e, size_t savepoint);

/*
 * Inserts a row whose values are in row->v (row->id 0 for automatic).
 * Checks type-independent constraints: NOT NULL, CHECK, UNIQUE, FOREIGN
 * KEY. On success *id_out is the id. Detail in e->err.
 */
fm_status fm_txn_insert(struct fm_engine *e, struct fm_table *t,
                        struct fm_row *row, uint64_t *id_out);

/*
 * Replaces row id's values by row->v (the full new row). changed is the
 * bitmask of columns that differ (bit per column number, id excluded).
 */
fm_status fm_txn_update(struct fm_engine *e, struct fm_table *t,
                        struct fm_row *row, uint64_t changed_mask);

/* Deletes row id and applies ON DELETE actions; *n_out counts every row
 * removed, cascades included. */
fm_status fm_txn_delete(struct fm_engine *e, struct fm_table *t, uint64_t id,
                        uint64_t *n_out);

/* Checks a value against a column's NOT NULL and CHECK constraints. */
fm_status fm_check_value(struct fm_engine *e, const struct fm_table *t,
                         size_t col, const struct fm_value *v);

/* ---- persist.c: redo records, snapshots, recovery ------------------------ */

/* Appends the redo record of undo entries [from, n_undo) to the WAL. */
fm_status fm_persist_log_txn(struct fm_engine *e, size_t from);

/* Recovers the state of e->dir and opens the WAL; err names what failed. */
fm_status fm_persist_open(struct fm_engine *e,
                          const struct fm_engine_options *opts,
                          struct fm_error *err);

/* Stops a background snapshot, closes the WAL; for fm_engine_free. */
void fm_persist_close(struct fm_engine *e);

/* Checks that rec[0..len) is a well-formed record of t (from disk). */
bool fm_table_record_is_valid(const struct fm_table *t, const uint8_t *rec,
                              size_t len);

/* Size in bytes of a record, its length prefix included. */
size_t fm_table_record_size(const uint8_t *rec);

/* ---- query.c: the command language --------------------------------------- */

fm_status fm_query_exec(struct fm_engine *e, size_t argc,
                        const uint8_t *const *argv, const size_t *argv_len,
                        struct fm_reply *reply);

/*
 * The wall-clock time of the running command, for created_at and
 * updated_at: read once per command (clock_gettime is a few percent of a
 * small write on a paravirtualised guest, and an UPSERT needed it twice),
 * so every row a command touches, cascades included, gets the same time.
 */
static inline int64_t fm_engine_now(struct fm_engine *e)
{
    if (e->now_us == 0)
        e->now_us = fm_now_us();
    return e->now_us;
}

/*
 * Writing RESP straight into a reply (reply.c), for values built in one
 * pass: fm_reply_room returns room for need bytes at the reply's end (NULL
 * once the reply has failed), the caller writes there and adds what it
 * wrote with fm_reply_advance, which enforces the reply's limit. The put
 * functions write one value at p and return its length: a number with its
 * prefix (at most FM_REPLY_NUM_MAX bytes), a bulk string (FM_REPLY_NUM_MAX
 * + len + 2 at most).
 */
#define FM_REPLY_NUM_MAX 24
uint8_t *fm_reply_room(struct fm_reply *r, size_t need);
size_t fm_reply_put_num(uint8_t *p, char prefix, int64_t v);
size_t fm_reply_put_bulk(uint8_t *p, const void *s, size_t len);

/* The out-of-line half of fm_reply_advance: takes the n bytes back and
 * fails the reply as over its limit. */
void fm_reply_advance_over(struct fm_reply *r, size_t n);

/*
 * Adds n > 0 bytes just written at fm_reply_room's pointer to the reply,
 * unless they take it past r->limit: then they are taken back and the reply
 * fails as over its limit. One comparison: limit - 1 wraps to SIZE_MAX
 * when limit is 0 (no limit), and len - 1 cannot wrap since n > 0.
 */
static inline void fm_reply_advance(struct fm_reply *r, size_t n)
{
    r->buf.len += n;
    if (r->buf.len - 1 > r->limit - 1)
        fm_reply_advance_over(r, n);
}

/* Fails the reply as over its limit without an append (a FIND that knows
 * its rows cannot fit). */
void fm_reply_fail_over_limit(struct fm_reply *r);

/* Cuts the reply back to len bytes, a length it had, and clears a failure
 * (a failed command's partial result makes way for its error). */
void fm_reply_truncate(struct fm_reply *r, size_t len);

/*
 * Refills the rollback's node reserve if a rollback used it; false (and
 * writes are refused) while memory does not allow (txn.c).
 */
bool fm_txn_undo_pool_ready(struct fm_engine *e);

/* Appends the value in the form a reply carries (datetime as text). */
void fm_reply_value(struct fm_engine *e, struct fm_reply *r, enum fm_type type,
                    const struct fm_value *v);

#endif /* FM_ENGINE_INT_H */
