/*
 * hash.h: an open-addressing hash index from byte keys to row ids.
 *
 * Each 8-byte slot holds 32 bits of the key's XXH3 hash and a 32-bit row id;
 * keys are not copied, and equal hashes are resolved by asking fm_key_fn for
 * the held row's key. A unique index refuses a second entry with an equal key;
 * a non-unique one keeps them all. The table grows incrementally, a few slots
 * moved per operation, so that no insert into a 10-million-row table stalls
 * for a whole rehash.
 */
#ifndef FM_HASH_H
#define FM_HASH_H

#include "index/key.h"

struct fm_hash;

/* Creates an empty index. FM_ERR_NOMEM. */
fm_status fm_hash_new(fm_key_fn key_fn, void *ctx, bool unique,
                      struct fm_hash **out);

/* Releases the index; NULL does nothing. */
void fm_hash_free(struct fm_hash *h);

/* XXH3-64 of the key, as the index computes it. */
uint64_t fm_hash_key(const uint8_t *key, size_t key_len);

/* Row ids an index can hold: 1 to FM_HASH_ROWID_MAX (a slot keeps 32 bits). */
#define FM_HASH_ROWID_MAX UINT32_MAX

/*
 * Adds (key, rowid). rowid must be in 1..FM_HASH_ROWID_MAX (0 marks an empty
 * slot) and the pair must not already be present. FM_ERR_UNIQUE when unique and
 * the key is present; FM_ERR_NOMEM. The index is unchanged on any failure.
 */
fm_status fm_hash_insert(struct fm_hash *h, const uint8_t *key, size_t key_len,
                         uint64_t rowid);

/*
 * Removes (key, rowid); false if it was not there. Never allocates. The
 * entry is matched on the key's hash and rowid without calling fm_key_fn,
 * so the row may already hold a different key.
 */
bool fm_hash_remove(struct fm_hash *h, const uint8_t *key, size_t key_len,
                    uint64_t rowid);

/* Finds a row with this key; true and *rowid_out if any. */
bool fm_hash_find(struct fm_hash *h, const uint8_t *key, size_t key_len,
                  uint64_t *rowid_out);

/* Ensures room for n entries in total without further growth. FM_ERR_NOMEM. */
fm_status fm_hash_reserve(struct fm_hash *h, size_t n);

/* Number of entries. */
size_t fm_hash_count(const struct fm_hash *h);

/* Bytes of memory the index holds. */
size_t fm_hash_memory_bytes(const struct fm_hash *h);

/* An iterator over all rows with one key (any order); private contents. */
struct fm_hash_iter {
    struct fm_hash *h;
    const uint8_t *key; /* borrowed for the life of the iterator */
    size_t key_len;
    uint32_t tag; /* the part of the key's hash that slots keep */
    size_t table; /* which of the two tables during a resize */
    size_t pos;   /* next slot to probe */
    bool done;
};

/* Positions it on the entries with this key. Valid until the next change. */
void fm_hash_iter_init(struct fm_hash_iter *it, struct fm_hash *h,
                       const uint8_t *key, size_t key_len);

/* Yields the next rowid with the key; false at the end. */
bool fm_hash_iter_next(struct fm_hash_iter *it, uint64_t *rowid_out);

/* Verifies probe invariants, counts and hashes. FM_ERR_CORRUPT in err. */
fm_status fm_hash_check(struct fm_hash *h, struct fm_error *err);

/* Old-table slots an insert or remove migrates at most during a resize. */
#define FM_HASH_MIGRATE_SLOTS 128

/* Table shape, for tests and benchmarks. */
struct fm_hash_stats {
    size_t n_entries;        /* same as fm_hash_count */
    size_t n_slots;          /* slots of the current table */
    size_t n_old_slots;      /* slots of the table being drained; 0 if none */
    size_t n_old_unmigrated; /* old slots migration has not visited yet */
    size_t n_old_entries;    /* entries still in the old table */
};

/* Fills *out with the current shape of the index. */
void fm_hash_stats(const struct fm_hash *h, struct fm_hash_stats *out);

#endif /* FM_HASH_H */
