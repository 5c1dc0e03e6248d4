/*
 * hash.c: an open-addressing hash index from byte keys to row ids.
 *
 * The index answers "which rows have this key" for unique constraints and
 * equality lookups. It never stores keys (STYLE.md section 5): a slot is 8
 * bytes, eight to a cache line,
 *
 *     offset  size  field
 *          0     4  tag    low 32 bits of XXH3-64 of the encoded key
 *          4     4  rowid  the row; 0 marks an empty slot
 *
 * Row ids start at 1 in the engine and stay below 2^32 (FM_ID_MAX), so rowid
 * 0 is free to mean "empty" and a zero-filled allocation is an empty table
 * (calloc hands out lazily zeroed pages, so a fresh 4 GiB table costs nothing
 * until it is used). The tag is the whole hash as far as the table is
 * concerned: homes, lookups, backward shifts and migration all work from it,
 * so a table has at most 2^32 slots (32 GiB), and the bits of the tag above
 * the home bits are what tell apart keys with one home: 18 of them in a 16k
 * table, 5 in the 2^27 slots of 100M rows. A lookup meets some other key
 * with its tag with probability about n_entries / 2^32 (0.2% at 10M rows,
 * 2.3% at 100M), which costs one extra key fetch. Slots of 16 bytes (a
 * 64-bit hash and rowid) made that a non-event but doubled every table,
 * which kept a 10k-row table above SQLite's bytes per row (issue 2). Equal tags
 * are settled by asking fm_key_fn for the held row's key, written into a
 * scratch buffer the index owns, and comparing with memcmp. The scratch
 * buffer grows at insert time to the longest key ever inserted; since a held
 * row's key never changes while it is held, no held key can be longer, so
 * finds, iterators and removes never allocate, and a probe key longer than
 * the buffer is known to be absent without probing.
 *
 * Collisions are resolved by linear probing: an entry lives at its home slot
 * (tag & mask) or at the first free slot after it, wrapping at the end. The
 * one invariant is that no empty slot lies between an entry's home and its
 * position, so a lookup scans from the home to the first empty slot.
 * Removal uses backward-shift deletion instead of tombstones: the entries
 * after the hole are moved back into it whenever that keeps them reachable,
 * so a long-lived table with churn stays as short-probed as a fresh one, and
 * removal never allocates. A remove matches (tag, rowid) only: a row has one
 * key per index, and not calling fm_key_fn lets the engine remove the entry
 * after the row already holds its new key.
 *
 * Sizes are powers of two. The table grows at load 0.8: expected probes are
 * about 3 for a hit and 13 for a miss (Knuth), 24 and 104 bytes of
 * consecutive slots, fewer bytes than the 16-byte slots scanned at load 0.75
 * (40 and 136), so no lookup reads more than it used to. The load after
 * growing (0.4 to 0.8) costs 10 to 20 bytes per entry. 100M rows fit in 2^27
 * slots (1 GiB), and the resize to 2^28 peaks at 3 GiB with both tables
 * live. If the bigger table cannot be allocated, inserts continue into the
 * current one up to load 0.95 (miss probes grow to hundreds, but it keeps
 * working) and then fail with FM_ERR_NOMEM; each insert above 0.8 retries
 * the allocation. Finer growth steps (1.5x, with multiply-shift homes) would
 * cut the worst case to 13 bytes per entry but move every entry twice as
 * often; not done.
 *
 * Growth is incremental, after Redis's dict.c. Growing allocates a table of
 * twice the size and makes the current table the "old" one; inserts go to
 * the new table, and every insert and remove first migrates up to
 * FM_HASH_MIGRATE_SLOTS old slots, so no single operation rehashes a 10M
 * table. Lookups and the uniqueness check probe both tables. Finds do not
 * migrate: a lookup never writes, so iterators stay valid across finds and
 * read paths dirty no cache lines; a resize needs only n_old_slots / 128
 * writes to finish, and a table with no writes pays only the second probe.
 *
 * Migrating linear-probed slots in place needs care at the wrap-around. The
 * migration starts at mig_start, the slot just after an empty one, and walks
 * forward; the n_migrated slots from mig_start on are zeroed as they are
 * moved. Because the slot before mig_start is empty and the old table gets no
 * inserts, no probe chain crosses from the unmigrated part into the migrated
 * part. A chain whose home has been migrated continues, unbroken, at the
 * migration cursor mig_start + n_migrated, so a lookup whose home falls in
 * the migrated part starts there instead (probe_start). Backward shifts in
 * the old table only move entries within the unmigrated part, and the
 * standard shift test stays correct for such entries because their homes lie
 * behind the cursor. The old table is freed when its last entry leaves,
 * which is usually before the cursor has gone all the way round.
 *
 * Allocation failures leave the index unchanged: the scratch buffer and a new
 * table are allocated before anything is modified, and migration itself
 * never allocates. fm_hash_reserve() sizes the table for n entries in one
 * full rehash, for bulk loading and recovery.
 *
 * Deliberately not done: storing keys or key prefixes (the hash is the
 * prefix), shrinking after mass removal, iteration over the whole index,
 * and any locking; callers serialise access to one index.
 */
#if defined(__linux__)
/* For madvise(MADV_DONTNEED), which POSIX lacks; see release_migrated(). */
#define _DEFAULT_SOURCE
#endif

#include "index/hash.h"

#include <unistd.h>
#if defined(__linux__)
#include <sys/mman.h>
#endif

#include <xxhash.h>

enum {
    MIN_SLOTS = 16,          /* the first table; a power of two */
    SCRATCH_MIN = 64,        /* initial key scratch buffer, bytes */
    RELEASE_BYTES = 1 << 16, /* migrated old memory released per madvise */
};

struct hash_slot {
    uint32_t tag;   /* low 32 bits of the key's XXH3-64 hash */
    uint32_t rowid; /* 0 when the slot is empty */
};

_Static_assert(sizeof(struct hash_slot) == 8, "a slot is 8 bytes");

/* The largest table: homes come from the 32 bits of a tag. */
#define MAX_SLOTS ((uint64_t)1 << 32)

struct hash_table {
    struct hash_slot *slots; /* n_slots slots; NULL when unallocated */
    size_t n_slots;          /* a power of two, or 0 */
    size_t mask;             /* n_slots - 1 */
    size_t n_entries;        /* occupied slots */
};

struct fm_hash {
    fm_key_fn key_fn;
    void *ctx;
    bool unique;
    struct hash_table cur; /* receives every insert */
    struct hash_table old; /* being drained into cur; slots NULL when not */
    size_t mig_start;      /* first old slot to migrate, after an empty one */
    size_t n_migrated;     /* old slots migrated, from mig_start on */
    size_t n_released;     /* of those, slots whose pages were released */
    size_t page_bytes;     /* the VM page size; 0 disables releasing */
    uint8_t *scratch;      /* keys fetched through key_fn land here */
    size_t scratch_cap;    /* at least the longest key ever inserted */
};

/* Entries a table takes before the index starts growing: load 0.8. */
static size_t grow_limit(size_t n_slots)
{
    return n_slots / 5 * 4;
}

/* Entries a table takes when growing failed: load 0.95, one slot free. */
static size_t hard_limit(size_t n_slots)
{
    size_t spare = n_slots / 20;
    if (n_slots == 0)
        return 0;
    return n_slots - (spare > 0 ? spare : 1);
}

static bool table_alloc(struct hash_table *t, size_t n_slots)
{
    struct hash_slot *slots = fm_calloc(n_slots, sizeof(*slots));
    if (slots == NULL)
        return false;
    t->slots = slots;
    t->n_slots = n_slots;
    t->mask = n_slots - 1;
    t->n_entries = 0;
    return true;
}

static void table_release(struct hash_table *t)
{
    fm_free(t->slots);
    memset(t, 0, sizeof(*t));
}

static bool is_resizing(const struct fm_hash *h)
{
    return h->old.slots != NULL;
}

/* True when old-table slot pos has already been migrated (and zeroed). */
static bool is_migrated(const struct fm_hash *h, size_t pos)
{
    return ((pos - h->mig_start) & h->old.mask) < h->n_migrated;
}

/* Where a lookup for tag starts scanning t; see the essay on migration. */
static size_t probe_start(const struct fm_hash *h, const struct hash_table *t,
                          uint32_t tag)
{
    size_t home = (size_t)tag & t->mask;
    if (t == &h->old && is_migrated(h, home))
        return (h->mig_start + h->n_migrated) & t->mask;
    return home;
}

/* The part of a key's hash a slot keeps. */
static uint32_t hash_tag(uint64_t hash)
{
    return (uint32_t)hash;
}

/* Places an entry known not to be present at the end of its probe chain. */
static void table_put(struct hash_table *t, uint32_t tag, uint32_t rowid)
{
    FM_ASSERT(t->n_entries < t->n_slots);
    size_t pos = (size_t)tag & t->mask;
    while (t->slots[pos].rowid != 0)
        pos = (pos + 1) & t->mask;
    t->slots[pos].tag = tag;
    t->slots[pos].rowid = rowid;
    t->n_entries++;
}

/*
 * Empties slot i by backward shift: each later entry of the cluster moves
 * into the hole when its home is not in (hole, its position], which keeps
 * every entry reachable from its home without tombstones.
 */
static void table_erase(struct hash_table *t, size_t i)
{
    size_t j = i;
    for (;;) {
        j = (j + 1) & t->mask;
        const struct hash_slot *s = &t->slots[j];
        if (s->rowid == 0)
            break;
        size_t home = (size_t)s->tag & t->mask;
        if (((j - home) & t->mask) >= ((j - i) & t->mask)) {
            t->slots[i] = *s;
            i = j;
        }
    }
    t->slots[i].tag = 0;
    t->slots[i].rowid = 0;
    t->n_entries--;
}

/* Compares the key of a held row with key; key_len <= scratch_cap. */
static bool key_equals(struct fm_hash *h, uint64_t rowid, const uint8_t *key,
                       size_t key_len)
{
    FM_ASSERT(key_len <= h->scratch_cap);
    size_t len = h->key_fn(h->ctx, rowid, h->scratch, h->scratch_cap);
    if (len != key_len)
        return false;
    return len == 0 || memcmp(h->scratch, key, len) == 0;
}

static bool table_find_key(struct fm_hash *h, const struct hash_table *t,
                           uint32_t tag, const uint8_t *key, size_t key_len,
                           size_t *pos_out)
{
    size_t pos = probe_start(h, t, tag);
    for (; t->slots[pos].rowid != 0; pos = (pos + 1) & t->mask) {
        const struct hash_slot *s = &t->slots[pos];
        if (s->tag == tag && key_equals(h, s->rowid, key, key_len)) {
            *pos_out = pos;
            return true;
        }
    }
    return false;
}

static bool table_find_entry(const struct fm_hash *h,
                             const struct hash_table *t, uint32_t tag,
                             uint32_t rowid, size_t *pos_out)
{
    size_t pos = probe_start(h, t, tag);
    for (; t->slots[pos].rowid != 0; pos = (pos + 1) & t->mask) {
        if (t->slots[pos].tag == tag && t->slots[pos].rowid == rowid) {
            *pos_out = pos;
            return true;
        }
    }
    return false;
}

static void finish_resize(struct fm_hash *h)
{
    table_release(&h->old);
    h->mig_start = 0;
    h->n_migrated = 0;
    h->n_released = 0;
}

/*
 * Gives the pages of old slots migrated since the last call back to the
 * kernel, RELEASE_BYTES at a time. Without this the free() that ends a
 * resize unmaps every resident page of the old table at once: about 15 ms
 * for a 128 MiB table here, and far more for the 2 GiB table of 100M rows.
 * Migrated slots are zero, which is what MADV_DONTNEED pages read back as, so
 * whole-table scans stay correct. Only whole pages strictly inside the
 * migrated range are released; the partial pages at its ends stay.
 */
static void release_migrated(struct fm_hash *h)
{
#if defined(__linux__)
    const size_t batch = RELEASE_BYTES / sizeof(struct hash_slot);
    const uintptr_t page_mask = (uintptr_t)h->page_bytes - 1;
    if (h->page_bytes == 0 || h->page_bytes > RELEASE_BYTES)
        return;
    while (h->n_released + batch <= h->n_migrated) {
        size_t from = (h->mig_start + h->n_released) & h->old.mask;
        size_t n = h->n_migrated - h->n_released;
        bool to_end = n >= h->old.n_slots - from;
        if (to_end)
            n = h->old.n_slots - from;
        uintptr_t lo = (uintptr_t)(h->old.slots + from);
        uintptr_t hi = (uintptr_t)(h->old.slots + from + n);
        uintptr_t lo_page = (lo + page_mask) & ~page_mask;
        uintptr_t hi_page = hi & ~page_mask;
        /* Best effort: pages that stay resident are freed with the table. */
        if (lo_page < hi_page)
            (void)madvise((void *)lo_page, hi_page - lo_page, MADV_DONTNEED);
        if (to_end)
            h->n_released += n;
        else if (hi_page > lo)
            h->n_released += (hi_page - lo) / sizeof(struct hash_slot);
        else
            break;
    }
#else
    (void)h;
#endif
}

/* Moves up to budget old slots into cur; frees the old table when empty. */
static void migrate_step(struct fm_hash *h, size_t budget)
{
    struct hash_table *old = &h->old;
    for (; budget > 0 && old->n_entries > 0; budget--) {
        FM_ASSERT(h->n_migrated < old->n_slots);
        size_t pos = (h->mig_start + h->n_migrated) & old->mask;
        struct hash_slot *s = &old->slots[pos];
        if (s->rowid != 0) {
            table_put(&h->cur, s->tag, s->rowid);
            s->tag = 0;
            s->rowid = 0;
            old->n_entries--;
        }
        h->n_migrated++;
    }
    if (old->n_entries == 0)
        finish_resize(h);
    else
        release_migrated(h);
}

/*
 * Makes the current table old and a fresh one of n_slots current. The
 * migration starts after the first empty old slot, which exists because no
 * table is ever filled past hard_limit().
 */
static fm_status start_resize(struct fm_hash *h, size_t n_slots)
{
    struct hash_table t;
    FM_ASSERT(!is_resizing(h));
    if (n_slots > MAX_SLOTS || n_slots > SIZE_MAX / 2 / sizeof(t.slots[0]) ||
        !table_alloc(&t, n_slots))
        return FM_ERR_NOMEM;
    if (h->cur.n_entries == 0) {
        table_release(&h->cur);
        h->cur = t;
        return FM_OK;
    }
    h->old = h->cur;
    h->cur = t;
    size_t empty = 0;
    while (h->old.slots[empty].rowid != 0)
        empty++;
    h->mig_start = (empty + 1) & h->old.mask;
    h->n_migrated = 0;
    h->n_released = 0;
    long page_bytes = sysconf(_SC_PAGESIZE);
    h->page_bytes = page_bytes > 0 ? (size_t)page_bytes : 0;
    return FM_OK;
}

/* Makes sure cur can take one more entry, growing or migrating as due. */
static fm_status make_room(struct fm_hash *h)
{
    if (is_resizing(h))
        migrate_step(h, FM_HASH_MIGRATE_SLOTS);
    /*
     * A resize finishes after n_old_slots / FM_HASH_MIGRATE_SLOTS writes, long
     * before cur (twice the old size) can pass its own grow limit, so a new
     * resize never has to start while one is running.
     */
    if (is_resizing(h) || h->cur.n_entries < grow_limit(h->cur.n_slots)) {
        FM_ASSERT(h->cur.n_entries < hard_limit(h->cur.n_slots));
        return FM_OK;
    }
    size_t n_slots = h->cur.n_slots == 0 ? MIN_SLOTS : h->cur.n_slots * 2;
    fm_status st = start_resize(h, n_slots);
    if (st == FM_OK) {
        if (is_resizing(h))
            migrate_step(h, FM_HASH_MIGRATE_SLOTS);
        return FM_OK;
    }
    if (h->cur.n_entries < hard_limit(h->cur.n_slots))
        return FM_OK;
    return st;
}

static fm_status reserve_scratch(struct fm_hash *h, size_t key_len)
{
    if (key_len <= h->scratch_cap)
        return FM_OK;
    size_t cap = h->scratch_cap;
    while (cap < key_len) {
        if (cap > SIZE_MAX / 2) {
            cap = key_len;
            break;
        }
        cap *= 2;
    }
    uint8_t *p = fm_malloc(cap);
    if (p == NULL)
        return FM_ERR_NOMEM;
    fm_free(h->scratch);
    h->scratch = p;
    h->scratch_cap = cap;
    return FM_OK;
}

/*
 * Debug builds re-check the O(1) resize bookkeeping after every change; the
 * full fm_hash_check() is O(n) and left to tests.
 */
static fm_status check_shape(const struct fm_hash *h, struct fm_error *err);

static void debug_check_shape(const struct fm_hash *h)
{
#ifdef FM_DEBUG_CHECKS
    FM_ASSERT(check_shape(h, NULL) == FM_OK);
#else
    (void)h;
#endif
}

fm_status fm_hash_new(fm_key_fn key_fn, void *ctx, bool unique,
                      struct fm_hash **out)
{
    FM_ASSERT(key_fn != NULL);
    FM_ASSERT(out != NULL);
    struct fm_hash *h = fm_calloc(1, sizeof(*h));
    if (h == NULL)
        return FM_ERR_NOMEM;
    h->scratch = fm_malloc(SCRATCH_MIN);
    if (h->scratch == NULL)
        goto fail_free_hash;
    h->scratch_cap = SCRATCH_MIN;
    h->key_fn = key_fn;
    h->ctx = ctx;
    h->unique = unique;
    *out = h;
    return FM_OK;

fail_free_hash:
    fm_free(h);
    return FM_ERR_NOMEM;
}

void fm_hash_free(struct fm_hash *h)
{
    if (h == NULL)
        return;
    fm_free(h->cur.slots);
    fm_free(h->old.slots);
    fm_free(h->scratch);
    fm_free(h);
}

uint64_t fm_hash_key(const uint8_t *key, size_t key_len)
{
    return XXH3_64bits(key, key_len);
}

/* True when some entry has this key, in either table. */
static bool contains_key(struct fm_hash *h, uint32_t tag, const uint8_t *key,
                         size_t key_len)
{
    size_t pos;
    if (h->cur.n_entries > 0 &&
        table_find_key(h, &h->cur, tag, key, key_len, &pos))
        return true;
    return is_resizing(h) &&
           table_find_key(h, &h->old, tag, key, key_len, &pos);
}

fm_status fm_hash_insert(struct fm_hash *h, const uint8_t *key, size_t key_len,
                         uint64_t rowid)
{
    FM_ASSERT(h != NULL);
    FM_ASSERT(key != NULL || key_len == 0);
    FM_ASSERT(rowid != 0 && rowid <= FM_HASH_ROWID_MAX);
    uint32_t tag = hash_tag(fm_hash_key(key, key_len));
    fm_status st = reserve_scratch(h, key_len);
    if (st != FM_OK)
        return st;
    if (h->unique && contains_key(h, tag, key, key_len))
        return FM_ERR_UNIQUE;
    st = make_room(h);
    if (st != FM_OK)
        return st;
    table_put(&h->cur, tag, (uint32_t)rowid);
    debug_check_shape(h);
    return FM_OK;
}

bool fm_hash_remove(struct fm_hash *h, const uint8_t *key, size_t key_len,
                    uint64_t rowid)
{
    FM_ASSERT(h != NULL);
    FM_ASSERT(key != NULL || key_len == 0);
    if (fm_hash_count(h) == 0 || rowid == 0 || rowid > FM_HASH_ROWID_MAX)
        return false;
    uint32_t tag = hash_tag(fm_hash_key(key, key_len));
    uint32_t id = (uint32_t)rowid;
    size_t pos;
    if (h->cur.n_entries > 0 && table_find_entry(h, &h->cur, tag, id, &pos))
        table_erase(&h->cur, pos);
    else if (is_resizing(h) && table_find_entry(h, &h->old, tag, id, &pos))
        table_erase(&h->old, pos);
    else
        return false;
    if (is_resizing(h))
        migrate_step(h, FM_HASH_MIGRATE_SLOTS);
    debug_check_shape(h);
    return true;
}

bool fm_hash_find(struct fm_hash *h, const uint8_t *key, size_t key_len,
                  uint64_t *rowid_out)
{
    FM_ASSERT(h != NULL);
    FM_ASSERT(key != NULL || key_len == 0);
    if (fm_hash_count(h) == 0 || key_len > h->scratch_cap)
        return false;
    uint32_t tag = hash_tag(fm_hash_key(key, key_len));
    size_t pos;
    if (h->cur.n_entries > 0 &&
        table_find_key(h, &h->cur, tag, key, key_len, &pos)) {
        *rowid_out = h->cur.slots[pos].rowid;
        return true;
    }
    if (is_resizing(h) && table_find_key(h, &h->old, tag, key, key_len, &pos)) {
        *rowid_out = h->old.slots[pos].rowid;
        return true;
    }
    return false;
}

/* Moves every entry of src into dst, which has room for them all. */
static void rehash_into(struct hash_table *dst, const struct hash_table *src)
{
    for (size_t i = 0; i < src->n_slots; i++) {
        if (src->slots[i].rowid != 0)
            table_put(dst, src->slots[i].tag, src->slots[i].rowid);
    }
}

fm_status fm_hash_reserve(struct fm_hash *h, size_t n)
{
    FM_ASSERT(h != NULL);
    size_t n_slots = MIN_SLOTS;
    while (grow_limit(n_slots) < n) {
        if (n_slots >= MAX_SLOTS ||
            n_slots > SIZE_MAX / 4 / sizeof(struct hash_slot))
            return FM_ERR_NOMEM;
        n_slots *= 2;
    }
    if (n_slots <= h->cur.n_slots)
        return FM_OK;
    struct hash_table t;
    if (!table_alloc(&t, n_slots))
        return FM_ERR_NOMEM;
    /* Migrated old slots are zeroed, so whole-table scans see only the rest. */
    if (h->cur.slots != NULL)
        rehash_into(&t, &h->cur);
    if (is_resizing(h))
        rehash_into(&t, &h->old);
    table_release(&h->cur);
    finish_resize(h);
    h->cur = t;
    return FM_OK;
}

size_t fm_hash_count(const struct fm_hash *h)
{
    return h->cur.n_entries + h->old.n_entries;
}

size_t fm_hash_memory_bytes(const struct fm_hash *h)
{
    return sizeof(*h) + h->scratch_cap +
           (h->cur.n_slots + h->old.n_slots) * sizeof(struct hash_slot);
}

void fm_hash_iter_init(struct fm_hash_iter *it, struct fm_hash *h,
                       const uint8_t *key, size_t key_len)
{
    FM_ASSERT(it != NULL && h != NULL);
    FM_ASSERT(key != NULL || key_len == 0);
    memset(it, 0, sizeof(*it));
    it->h = h;
    it->key = key;
    it->key_len = key_len;
    it->tag = hash_tag(fm_hash_key(key, key_len));
    if (fm_hash_count(h) == 0 || key_len > h->scratch_cap) {
        it->done = true;
        return;
    }
    /* Table 0 is the old table, scanned first during a resize; 1 is cur. */
    it->table = is_resizing(h) ? 0 : 1;
    it->pos = probe_start(h, it->table == 0 ? &h->old : &h->cur, it->tag);
}

bool fm_hash_iter_next(struct fm_hash_iter *it, uint64_t *rowid_out)
{
    struct fm_hash *h = it->h;
    while (!it->done) {
        const struct hash_table *t = it->table == 0 ? &h->old : &h->cur;
        const struct hash_slot *s = &t->slots[it->pos];
        if (s->rowid == 0) {
            if (it->table == 0 && h->cur.n_entries > 0) {
                it->table = 1;
                it->pos = probe_start(h, &h->cur, it->tag);
            } else {
                it->done = true;
            }
            continue;
        }
        it->pos = (it->pos + 1) & t->mask;
        if (s->tag == it->tag &&
            key_equals(h, s->rowid, it->key, it->key_len)) {
            *rowid_out = s->rowid;
            return true;
        }
    }
    return false;
}

void fm_hash_stats(const struct fm_hash *h, struct fm_hash_stats *out)
{
    out->n_entries = fm_hash_count(h);
    out->n_slots = h->cur.n_slots;
    out->n_old_slots = h->old.n_slots;
    out->n_old_unmigrated = h->old.n_slots - h->n_migrated;
    out->n_old_entries = h->old.n_entries;
}

/* The O(1) bookkeeping of both tables and of a running resize. */
static fm_status check_shape(const struct fm_hash *h, struct fm_error *err)
{
    const struct hash_table *cur = &h->cur;
    const struct hash_table *old = &h->old;
    if (cur->n_slots != 0 &&
        ((cur->n_slots & cur->mask) != 0 || cur->mask != cur->n_slots - 1 ||
         cur->slots == NULL))
        return fm_error_set(err, FM_ERR_CORRUPT, "bad table size %zu",
                            cur->n_slots);
    if (cur->n_entries > hard_limit(cur->n_slots))
        return fm_error_set(err, FM_ERR_CORRUPT,
                            "overfull table: %zu entries in %zu slots",
                            cur->n_entries, cur->n_slots);
    if (h->scratch == NULL || h->scratch_cap < SCRATCH_MIN)
        return fm_error_set(err, FM_ERR_CORRUPT, "missing scratch buffer");
    if (!is_resizing(h)) {
        if (old->n_slots != 0 || old->n_entries != 0 || h->n_migrated != 0 ||
            h->n_released != 0)
            return fm_error_set(err, FM_ERR_CORRUPT,
                                "stale resize state without an old table");
        return FM_OK;
    }
    if ((old->n_slots & old->mask) != 0 || old->mask != old->n_slots - 1 ||
        cur->n_slots <= old->n_slots)
        return fm_error_set(err, FM_ERR_CORRUPT,
                            "bad old table size %zu for new size %zu",
                            old->n_slots, cur->n_slots);
    if (old->n_entries == 0 || h->n_migrated >= old->n_slots ||
        h->mig_start >= old->n_slots || h->n_released > h->n_migrated)
        return fm_error_set(err, FM_ERR_CORRUPT,
                            "bad resize state: %zu old entries, %zu of %zu "
                            "slots migrated from %zu",
                            old->n_entries, h->n_migrated, old->n_slots,
                            h->mig_start);
    if (old->slots[(h->mig_start - 1) & old->mask].rowid != 0)
        return fm_error_set(err, FM_ERR_CORRUPT,
                            "old slot before migration start %zu is in use",
                            h->mig_start);
    return FM_OK;
}

/*
 * Checks one occupied slot: nothing empty or migrated between where lookups
 * start and the slot, the hash matches the row's key, and a lookup by that
 * key meets the entry exactly once (and no other entry, when unique). key_buf
 * holds scratch_cap bytes.
 */
static fm_status check_entry(struct fm_hash *h, const struct hash_table *t,
                             size_t pos, uint8_t *key_buf, struct fm_error *err)
{
    const char *name = t == &h->old ? "old" : "current";
    uint32_t tag = t->slots[pos].tag;
    uint64_t rowid = t->slots[pos].rowid;
    if (t == &h->old && is_migrated(h, pos))
        return fm_error_set(err, FM_ERR_CORRUPT,
                            "migrated old slot %zu holds row %llu", pos,
                            (unsigned long long)rowid);
    for (size_t p = probe_start(h, t, tag); p != pos; p = (p + 1) & t->mask) {
        if (t->slots[p].rowid == 0)
            return fm_error_set(err, FM_ERR_CORRUPT,
                                "row %llu in %s slot %zu is unreachable: "
                                "slot %zu before it is empty",
                                (unsigned long long)rowid, name, pos, p);
    }
    size_t len = h->key_fn(h->ctx, rowid, key_buf, h->scratch_cap);
    if (len > h->scratch_cap)
        return fm_error_set(err, FM_ERR_CORRUPT,
                            "row %llu has a key of %zu bytes, longer than "
                            "any inserted",
                            (unsigned long long)rowid, len);
    if (hash_tag(fm_hash_key(key_buf, len)) != tag)
        return fm_error_set(err, FM_ERR_CORRUPT,
                            "row %llu in %s slot %zu has a stale hash",
                            (unsigned long long)rowid, name, pos);
    struct fm_hash_iter it;
    uint64_t other;
    size_t n_same_key = 0;
    size_t n_same_entry = 0;
    fm_hash_iter_init(&it, h, key_buf, len);
    while (fm_hash_iter_next(&it, &other)) {
        n_same_key++;
        n_same_entry += other == rowid;
    }
    if (n_same_entry != 1)
        return fm_error_set(err, FM_ERR_CORRUPT,
                            "lookup meets row %llu %zu times",
                            (unsigned long long)rowid, n_same_entry);
    if (h->unique && n_same_key != 1)
        return fm_error_set(err, FM_ERR_CORRUPT,
                            "unique index holds %zu rows with the key of "
                            "row %llu",
                            n_same_key, (unsigned long long)rowid);
    return FM_OK;
}

static fm_status check_table(struct fm_hash *h, const struct hash_table *t,
                             uint8_t *key_buf, struct fm_error *err)
{
    size_t n_used = 0;
    for (size_t pos = 0; pos < t->n_slots; pos++) {
        if (t->slots[pos].rowid == 0)
            continue;
        n_used++;
        fm_status st = check_entry(h, t, pos, key_buf, err);
        if (st != FM_OK)
            return st;
    }
    if (n_used != t->n_entries)
        return fm_error_set(err, FM_ERR_CORRUPT,
                            "table counts %zu entries but holds %zu",
                            t->n_entries, n_used);
    return FM_OK;
}

fm_status fm_hash_check(struct fm_hash *h, struct fm_error *err)
{
    FM_ASSERT(h != NULL);
    fm_status st = check_shape(h, err);
    if (st != FM_OK)
        return st;
    /* A copy of each key, since lookups reuse the scratch buffer. */
    uint8_t *key_buf = fm_malloc(h->scratch_cap);
    if (key_buf == NULL)
        return fm_error_set(err, FM_ERR_NOMEM, "out of memory in check");
    st = check_table(h, &h->cur, key_buf, err);
    if (st == FM_OK && is_resizing(h))
        st = check_table(h, &h->old, key_buf, err);
    fm_free(key_buf);
    return st;
}
