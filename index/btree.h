/*
 * btree.h: an in-memory B+tree from byte-comparable keys to row ids.
 *
 * Keys are compared with memcmp, a shorter key sorting first when one is a
 * prefix of the other. Entries are (key, rowid) pairs ordered by key, then by
 * rowid: a non-unique tree holds any number of entries with one key, in rowid
 * order; a unique tree refuses a second entry with an equal key. The tree
 * does not copy keys: it keeps a short fixed-size prefix of each key and asks
 * fm_key_fn for the rest when the prefix cannot decide a comparison.
 *
 * Iterators are plain structs (no allocation) and stay valid until the next
 * insert, remove or free on the tree.
 */
#ifndef FM_BTREE_H
#define FM_BTREE_H

#include "index/key.h"

struct fm_btree;

/* Row ids must be below this bound (2^48). */
#define FM_BTREE_ROWID_MAX ((uint64_t)1 << 48)

/* Creates an empty tree. key_fn/ctx fetch keys of held rows. FM_ERR_NOMEM. */
fm_status fm_btree_new(fm_key_fn key_fn, void *ctx, bool unique,
                       struct fm_btree **out);

/* Releases the tree; NULL does nothing. */
void fm_btree_free(struct fm_btree *t);

/*
 * A reserve of nodes for when malloc fails, which trees share (the engine
 * keeps one): while it is open, a node allocation that malloc refuses is
 * served from it. The engine opens it only to roll a transaction back,
 * which must not fail, although re-adding an index entry it removed may
 * split a node. Zero-filled is an empty closed pool.
 */
struct fm_btree_pool {
    void *free;  /* nodes, linked through their first word */
    size_t n;    /* nodes in free */
    bool open;   /* node allocations may draw on it */
    size_t used; /* nodes drawn since it was last filled */
};

/* Mallocs nodes into pool until it holds n. FM_ERR_NOMEM (it keeps what
 * it got). */
fm_status fm_btree_pool_fill(struct fm_btree_pool *pool, size_t n);

/* Frees every node of pool. */
void fm_btree_pool_fini(struct fm_btree_pool *pool);

/* Bytes the nodes in pool hold. */
size_t fm_btree_pool_bytes(const struct fm_btree_pool *pool);

/* Lets t draw on pool (NULL: none); pool must outlive t. */
void fm_btree_set_pool(struct fm_btree *t, struct fm_btree_pool *pool);

/*
 * Maps, populated at once, memory for the nodes of n_entries appended in
 * order (a bulk build), so that the build does not fault in a page at a
 * time (btree.c, "Node memory"). Does nothing if the tree already has such
 * a block. FM_ERR_NOMEM leaves the tree as it was; nodes then come from
 * malloc as usual.
 */
fm_status fm_btree_reserve(struct fm_btree *t, size_t n_entries);

/*
 * Adds the entry (key, rowid). key is the row's key, passed by the caller
 * (the row may not yet be visible to key_fn). FM_ERR_UNIQUE when the tree is
 * unique and holds an equal key, or already holds this very (key, rowid)
 * entry (the tree is unchanged); FM_ERR_NOMEM (the tree is unchanged).
 */
fm_status fm_btree_insert(struct fm_btree *t, const uint8_t *key,
                          size_t key_len, uint64_t rowid);

/*
 * Removes the entry (key, rowid); returns false if it was not there. Never
 * allocates and never fails: nodes that fall below half full are merged
 * with or refilled from a sibling.
 */
bool fm_btree_remove(struct fm_btree *t, const uint8_t *key, size_t key_len,
                     uint64_t rowid);

/* Finds the first entry whose key equals key; true and *rowid_out if any. */
bool fm_btree_find(struct fm_btree *t, const uint8_t *key, size_t key_len,
                   uint64_t *rowid_out);

/* Whether the tree holds the entry (key, rowid): one descent, however many
 * entries share the key. */
bool fm_btree_contains(struct fm_btree *t, const uint8_t *key, size_t key_len,
                       uint64_t rowid);

/* Number of entries. */
size_t fm_btree_count(const struct fm_btree *t);

/* Bytes of memory the tree holds (nodes and the tree itself). */
size_t fm_btree_memory_bytes(const struct fm_btree *t);

/*
 * Bulk build: with the tree empty, append entries in strictly increasing
 * (key, rowid) order; leaves are filled completely, with no search per
 * entry. (A non-empty tree also accepts entries above all it holds.)
 * FM_ERR_STATE when the order is broken (the tree keeps what came before),
 * FM_ERR_UNIQUE on equal keys in a unique tree, FM_ERR_NOMEM.
 */
fm_status fm_btree_append(struct fm_btree *t, const uint8_t *key,
                          size_t key_len, uint64_t rowid);

/* A bound of a range: NULL key means unbounded on that side. */
struct fm_btree_bound {
    const uint8_t *key; /* borrowed for the life of the iterator */
    size_t key_len;
    bool inclusive; /* >= / <= rather than > / < */
};

/* An iterator over a key range; contents are private to btree.c. */
struct fm_btree_iter {
    struct fm_btree *tree;
    void *leaf;   /* current leaf, NULL when done */
    int pos;      /* index of the next entry within leaf */
    bool reverse; /* iterate in descending order */
    bool started;
    struct fm_btree_bound lo;
    struct fm_btree_bound hi;
    void *stop_leaf; /* position just past the range, NULL at the end */
    int stop_pos;
};

/*
 * Positions it on the range [lo, hi] (each bound inclusive or not, or
 * unbounded) in ascending order, or descending when reverse. Keys equal to a
 * bound and longer keys having the bound as prefix compare as memcmp says:
 * the caller expresses "all keys with prefix P" as lo = P inclusive and
 * hi = the successor of P exclusive.
 */
void fm_btree_iter_init(struct fm_btree_iter *it, struct fm_btree *t,
                        const struct fm_btree_bound *lo,
                        const struct fm_btree_bound *hi, bool reverse);

/* Yields the next rowid of the range; false at the end. */
bool fm_btree_iter_next(struct fm_btree_iter *it, uint64_t *rowid_out);

/*
 * Verifies order, fill factors, parent separators, leaf links, cached key
 * prefixes and the entry count. FM_ERR_CORRUPT naming what is wrong in err.
 */
fm_status fm_btree_check(struct fm_btree *t, struct fm_error *err);

#endif /* FM_BTREE_H */
