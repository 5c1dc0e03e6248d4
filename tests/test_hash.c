/*
 * test_hash.c: behaviours of the hash index, through index/hash.h only.
 *
 * Each test owns a tiny row store (rowid -> key bytes) that the index reads
 * through fm_key_fn, and the randomised tests compare the index with a flat
 * array of (key, rowid) pairs. Seeds come from FM_TEST_SEED when it is set
 * and are printed in every failure message.
 */
#include "index/hash.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>

/* The row store: keys[rowid] is the key of a held row. */
struct store {
    uint8_t **keys;
    size_t *key_lens;
    size_t n_rows; /* row ids 1 .. n_rows - 1 are addressable */
    size_t n_key_calls;
};

static size_t store_key_fn(void *ctx, uint64_t rowid, uint8_t *buf, size_t cap)
{
    struct store *s = ctx;
    cr_assert(rowid > 0 && rowid < s->n_rows, "key_fn asked for row %llu",
              (unsigned long long)rowid);
    s->n_key_calls++;
    size_t len = s->key_lens[rowid];
    if (len <= cap && len > 0)
        memcpy(buf, s->keys[rowid], len);
    return len;
}

static void store_init(struct store *s, size_t n_rows)
{
    s->keys = calloc(n_rows, sizeof(*s->keys));
    s->key_lens = calloc(n_rows, sizeof(*s->key_lens));
    cr_assert(s->keys != NULL && s->key_lens != NULL);
    s->n_rows = n_rows;
    s->n_key_calls = 0;
}

static void store_set(struct store *s, uint64_t rowid, const uint8_t *key,
                      size_t key_len)
{
    cr_assert(rowid < s->n_rows);
    free(s->keys[rowid]);
    s->keys[rowid] = malloc(key_len + 1);
    cr_assert(s->keys[rowid] != NULL);
    if (key_len > 0)
        memcpy(s->keys[rowid], key, key_len);
    s->key_lens[rowid] = key_len;
}

static void store_fini(struct store *s)
{
    for (size_t i = 0; i < s->n_rows; i++)
        free(s->keys[i]);
    free(s->keys);
    free(s->key_lens);
}

static uint64_t test_seed(void)
{
    const char *env = getenv("FM_TEST_SEED");
    if (env != NULL && *env != '\0')
        return strtoull(env, NULL, 0);
    return (uint64_t)fm_monotonic_us() ^ 0x9e3779b97f4a7c15u;
}

static uint64_t rng_next(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15u);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
    return z ^ (z >> 31);
}

static size_t rng_below(uint64_t *state, size_t n)
{
    return (size_t)(rng_next(state) % n);
}

static void check_ok(struct fm_hash *h, uint64_t seed)
{
    struct fm_error err = {0};
    fm_status st = fm_hash_check(h, &err);
    cr_assert_eq(st, FM_OK, "seed=%llu: check: %s", (unsigned long long)seed,
                 err.msg);
}

/* Encodes a 64-bit number as a 16-byte key: the number twice, big-endian. */
static void key16(uint8_t *out, uint64_t v)
{
    fm_store_be64(out, v);
    fm_store_be64(out + 8, ~v);
}

/* Inserts rowid with a key made from v, recording it in the store. */
static fm_status put16(struct fm_hash *h, struct store *s, uint64_t rowid,
                       uint64_t v)
{
    uint8_t key[16];
    key16(key, v);
    store_set(s, rowid, key, sizeof(key));
    return fm_hash_insert(h, key, sizeof(key), rowid);
}

static bool find16(struct fm_hash *h, uint64_t v, uint64_t *rowid_out)
{
    uint8_t key[16];
    key16(key, v);
    return fm_hash_find(h, key, sizeof(key), rowid_out);
}

Test(hash, empty_index_finds_nothing)
{
    struct fm_hash *h;
    struct store s;
    store_init(&s, 2);
    cr_assert_eq(fm_hash_new(store_key_fn, &s, true, &h), FM_OK);
    uint64_t rowid = 77;
    cr_assert(!fm_hash_find(h, (const uint8_t *)"a", 1, &rowid));
    cr_assert(!fm_hash_find(h, NULL, 0, &rowid));
    cr_assert_eq(rowid, 77);
    cr_assert(!fm_hash_remove(h, (const uint8_t *)"a", 1, 1));
    struct fm_hash_iter it;
    fm_hash_iter_init(&it, h, (const uint8_t *)"a", 1);
    cr_assert(!fm_hash_iter_next(&it, &rowid));
    cr_assert_eq(fm_hash_count(h), 0);
    cr_assert_gt(fm_hash_memory_bytes(h), 0);
    check_ok(h, 0);
    fm_hash_free(h);
    fm_hash_free(NULL);
    store_fini(&s);
}

Test(hash, unique_insert_rejects_an_equal_key)
{
    struct fm_hash *h;
    struct store s;
    store_init(&s, 4);
    cr_assert_eq(fm_hash_new(store_key_fn, &s, true, &h), FM_OK);
    cr_assert_eq(put16(h, &s, 1, 42), FM_OK);
    cr_assert_eq(put16(h, &s, 2, 42), FM_ERR_UNIQUE);
    cr_assert_eq(put16(h, &s, 3, 43), FM_OK);
    cr_assert_eq(fm_hash_count(h), 2);
    uint64_t rowid = 0;
    cr_assert(find16(h, 42, &rowid));
    cr_assert_eq(rowid, 1);
    cr_assert(find16(h, 43, &rowid));
    cr_assert_eq(rowid, 3);
    check_ok(h, 0);
    fm_hash_free(h);
    store_fini(&s);
}

Test(hash, empty_key_is_a_key_like_any_other)
{
    struct fm_hash *h;
    struct store s;
    store_init(&s, 3);
    cr_assert_eq(fm_hash_new(store_key_fn, &s, true, &h), FM_OK);
    store_set(&s, 1, NULL, 0);
    cr_assert_eq(fm_hash_insert(h, NULL, 0, 1), FM_OK);
    store_set(&s, 2, NULL, 0);
    cr_assert_eq(fm_hash_insert(h, NULL, 0, 2), FM_ERR_UNIQUE);
    uint64_t rowid = 0;
    cr_assert(fm_hash_find(h, NULL, 0, &rowid));
    cr_assert_eq(rowid, 1);
    cr_assert(!fm_hash_find(h, (const uint8_t *)"", 1, &rowid));
    cr_assert(fm_hash_remove(h, NULL, 0, 1));
    cr_assert_eq(fm_hash_count(h), 0);
    fm_hash_free(h);
    store_fini(&s);
}

/* Collects the iterator's row ids, sorted, into out (cap entries). */
static size_t iter_collect(struct fm_hash *h, const uint8_t *key,
                           size_t key_len, uint64_t *out, size_t cap)
{
    struct fm_hash_iter it;
    uint64_t rowid;
    size_t n = 0;
    fm_hash_iter_init(&it, h, key, key_len);
    while (fm_hash_iter_next(&it, &rowid)) {
        cr_assert_lt(n, cap, "iterator yields too many rows");
        out[n++] = rowid;
    }
    for (size_t i = 1; i < n; i++) {
        for (size_t j = i; j > 0 && out[j - 1] > out[j]; j--) {
            uint64_t t = out[j];
            out[j] = out[j - 1];
            out[j - 1] = t;
        }
    }
    return n;
}

Test(hash, non_unique_iter_yields_every_row_with_the_key)
{
    struct fm_hash *h;
    struct store s;
    const uint8_t token[] = "session-token-shared";
    store_init(&s, 1100);
    cr_assert_eq(fm_hash_new(store_key_fn, &s, false, &h), FM_OK);
    /* Five users share the token; a thousand others have their own keys. */
    for (uint64_t r = 1; r <= 1005; r++) {
        if (r % 200 == 0) {
            store_set(&s, r, token, sizeof(token));
            cr_assert_eq(fm_hash_insert(h, token, sizeof(token), r), FM_OK);
        } else {
            cr_assert_eq(put16(h, &s, r, r), FM_OK);
        }
    }
    uint64_t got[16];
    size_t n = iter_collect(h, token, sizeof(token), got, 16);
    cr_assert_eq(n, 5);
    for (size_t i = 0; i < 5; i++)
        cr_assert_eq(got[i], 200 * (i + 1));
    cr_assert(fm_hash_remove(h, token, sizeof(token), 600));
    cr_assert(!fm_hash_remove(h, token, sizeof(token), 600));
    cr_assert(!fm_hash_remove(h, token, sizeof(token), 601));
    n = iter_collect(h, token, sizeof(token), got, 16);
    cr_assert_eq(n, 4);
    cr_assert_eq(got[0], 200);
    cr_assert_eq(got[1], 400);
    cr_assert_eq(got[2], 800);
    cr_assert_eq(got[3], 1000);
    cr_assert_eq(fm_hash_count(h), 1004);
    check_ok(h, 0);
    fm_hash_free(h);
    store_fini(&s);
}

Test(hash, remove_keeps_probe_chains_reachable)
{
    uint64_t seed = test_seed();
    uint64_t rng = seed;
    enum { N = 3000 };
    struct fm_hash *h;
    struct store s;
    store_init(&s, N + 1);
    cr_assert_eq(fm_hash_new(store_key_fn, &s, true, &h), FM_OK);
    uint64_t order[N];
    for (uint64_t r = 1; r <= N; r++) {
        cr_assert_eq(put16(h, &s, r, r * 7919), FM_OK);
        order[r - 1] = r;
    }
    for (size_t i = N - 1; i > 0; i--) {
        size_t j = rng_below(&rng, i + 1);
        uint64_t t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
    /* Remove two thirds, checking the probe invariant after each removal. */
    for (size_t i = 0; i < N / 3 * 2; i++) {
        uint8_t key[16];
        key16(key, order[i] * 7919);
        cr_assert(fm_hash_remove(h, key, 16, order[i]), "seed=%llu",
                  (unsigned long long)seed);
        if (i % 8 == 0)
            check_ok(h, seed);
    }
    for (size_t i = 0; i < N; i++) {
        uint64_t rowid = 0;
        bool found = find16(h, order[i] * 7919, &rowid);
        cr_assert_eq(found, i >= N / 3 * 2, "seed=%llu row %llu",
                     (unsigned long long)seed, (unsigned long long)order[i]);
        if (found)
            cr_assert_eq(rowid, order[i]);
    }
    check_ok(h, seed);
    fm_hash_free(h);
    store_fini(&s);
}

/* The flat-array model: entry i is (keys of row rowids[i]). */
struct model {
    uint64_t *rowids;
    size_t n;
};

static bool model_has_key(const struct model *m, const struct store *s,
                          const uint8_t *key, size_t key_len)
{
    for (size_t i = 0; i < m->n; i++) {
        uint64_t r = m->rowids[i];
        if (s->key_lens[r] == key_len &&
            (key_len == 0 || memcmp(s->keys[r], key, key_len) == 0))
            return true;
    }
    return false;
}

/* Row ids in the model with this key, sorted, into out; returns the count. */
static size_t model_rows(const struct model *m, const struct store *s,
                         const uint8_t *key, size_t key_len, uint64_t *out)
{
    size_t n = 0;
    for (size_t i = 0; i < m->n; i++) {
        uint64_t r = m->rowids[i];
        if (s->key_lens[r] == key_len &&
            (key_len == 0 || memcmp(s->keys[r], key, key_len) == 0))
            out[n++] = r;
    }
    for (size_t i = 1; i < n; i++) {
        for (size_t j = i; j > 0 && out[j - 1] > out[j]; j--) {
            uint64_t t = out[j];
            out[j] = out[j - 1];
            out[j - 1] = t;
        }
    }
    return n;
}

/*
 * A random key from a small pool so that duplicates and misses are common:
 * the pool has long shared prefixes and lengths from 0 to 300.
 */
static size_t random_key(uint64_t *rng, uint8_t *out, size_t pool)
{
    uint64_t v = rng_below(rng, pool);
    size_t len = (size_t)(v * 37 % 301);
    memset(out, 'p', len);
    if (len >= 8)
        fm_store_be64(out + len - 8, v);
    else if (len > 0)
        out[len - 1] = (uint8_t)v;
    return len;
}

static void random_ops(bool unique, size_t n_ops, size_t pool,
                       size_t check_every)
{
    uint64_t seed = test_seed();
    uint64_t rng = seed;
    struct fm_hash *h;
    struct store s;
    struct model m = {0};
    uint64_t next_rowid = 1;
    store_init(&s, n_ops + 2);
    m.rowids = calloc(n_ops + 1, sizeof(*m.rowids));
    uint64_t *want = calloc(n_ops + 1, sizeof(*want));
    uint64_t *got = calloc(n_ops + 1, sizeof(*got));
    cr_assert(m.rowids != NULL && want != NULL && got != NULL);
    cr_assert_eq(fm_hash_new(store_key_fn, &s, unique, &h), FM_OK);
    size_t n_resizes = 0;
    size_t last_slots = 0;
    for (size_t op = 0; op < n_ops; op++) {
        uint8_t key[301];
        size_t key_len = random_key(&rng, key, pool);
        unsigned dice = (unsigned)rng_below(&rng, 10);
        if (dice < 5) {
            uint64_t r = next_rowid++;
            store_set(&s, r, key, key_len);
            fm_status st = fm_hash_insert(h, key, key_len, r);
            bool dup = unique && model_has_key(&m, &s, key, key_len);
            cr_assert_eq(st, dup ? FM_ERR_UNIQUE : FM_OK,
                         "seed=%llu op %zu: insert gave %s",
                         (unsigned long long)seed, op, fm_status_name(st));
            if (st == FM_OK)
                m.rowids[m.n++] = r;
        } else if (dice < 8 && m.n > 0) {
            size_t i = rng_below(&rng, m.n);
            uint64_t r = m.rowids[i];
            cr_assert(fm_hash_remove(h, s.keys[r], s.key_lens[r], r),
                      "seed=%llu op %zu: remove of row %llu failed",
                      (unsigned long long)seed, op, (unsigned long long)r);
            cr_assert(!fm_hash_remove(h, s.keys[r], s.key_lens[r], r));
            m.rowids[i] = m.rowids[--m.n];
        } else {
            size_t n_want = model_rows(&m, &s, key, key_len, want);
            size_t n_got = iter_collect(h, key, key_len, got, n_ops + 1);
            cr_assert_eq(n_got, n_want, "seed=%llu op %zu: %zu rows, want %zu",
                         (unsigned long long)seed, op, n_got, n_want);
            for (size_t i = 0; i < n_want; i++)
                cr_assert_eq(got[i], want[i], "seed=%llu op %zu",
                             (unsigned long long)seed, op);
            uint64_t rowid = 0;
            bool found = fm_hash_find(h, key, key_len, &rowid);
            cr_assert_eq(found, n_want > 0, "seed=%llu op %zu",
                         (unsigned long long)seed, op);
        }
        cr_assert_eq(fm_hash_count(h), m.n, "seed=%llu op %zu",
                     (unsigned long long)seed, op);
        struct fm_hash_stats stats;
        fm_hash_stats(h, &stats);
        if (stats.n_slots != last_slots)
            n_resizes++;
        last_slots = stats.n_slots;
        if (op % check_every == 0)
            check_ok(h, seed);
    }
    check_ok(h, seed);
    cr_assert_geq(n_resizes, 4, "only %zu resizes", n_resizes);
    fm_hash_free(h);
    store_fini(&s);
    free(m.rowids);
    free(want);
    free(got);
}

Test(hash, unique_random_ops_match_a_flat_array_model)
{
    random_ops(true, 6000, 4000, 1);
}

Test(hash, non_unique_random_ops_match_a_flat_array_model)
{
    random_ops(false, 6000, 1500, 1);
}

Test(hash, long_random_runs_match_the_model_across_resizes)
{
    random_ops(true, 40000, 30000, 997);
    random_ops(false, 40000, 8000, 997);
}

Test(hash, keys_sharing_long_prefixes_of_every_length_stay_distinct)
{
    enum { MAX_LEN = 300 };
    struct fm_hash *h;
    struct store s;
    uint8_t key[MAX_LEN + 1];
    store_init(&s, 3 * (MAX_LEN + 1) + 1);
    cr_assert_eq(fm_hash_new(store_key_fn, &s, true, &h), FM_OK);
    /*
     * For each length: all 'x', then 'x' with the last byte changed, then
     * with the first byte changed; "xxx" and "xxxx" differ only in length.
     */
    uint64_t r = 1;
    for (size_t len = 0; len <= MAX_LEN; len++) {
        memset(key, 'x', len);
        store_set(&s, r, key, len);
        cr_assert_eq(fm_hash_insert(h, key, len, r++), FM_OK, "len %zu", len);
        if (len == 0)
            continue;
        key[len - 1] = 'y';
        store_set(&s, r, key, len);
        cr_assert_eq(fm_hash_insert(h, key, len, r++), FM_OK, "len %zu", len);
        key[len - 1] = 'x';
        key[0] = 'z';
        store_set(&s, r, key, len);
        fm_status st = fm_hash_insert(h, key, len, r++);
        /* At length 1, "z" differs from "y" and "x", so it is new too. */
        cr_assert_eq(st, FM_OK, "len %zu", len);
    }
    check_ok(h, 0);
    for (size_t len = 0; len <= MAX_LEN; len++) {
        uint64_t rowid = 0;
        memset(key, 'x', len);
        cr_assert(fm_hash_find(h, key, len, &rowid), "len %zu", len);
        cr_assert_eq(s.key_lens[rowid], len);
        cr_assert_eq(fm_hash_insert(h, key, len, r), FM_ERR_UNIQUE);
    }
    memset(key, 'x', MAX_LEN + 1);
    uint64_t rowid;
    cr_assert(!fm_hash_find(h, key, MAX_LEN + 1, &rowid));
    key[0] = 'q';
    cr_assert(!fm_hash_find(h, key, 10, &rowid));
    fm_hash_free(h);
    store_fini(&s);
}

/* Fails the allocation numbered fail_at (0-based), or every one if all. */
struct alloc_fail {
    size_t n_seen;
    size_t fail_at;
    bool all;
    bool fired;
};

static bool alloc_fail_hook(void *ctx, size_t size)
{
    struct alloc_fail *f = ctx;
    (void)size;
    if (f->all || f->n_seen++ == f->fail_at) {
        f->fired = true;
        return true;
    }
    return false;
}

/* All of rows 1..n_rows that model[] marks present are found, others not. */
static void expect_contents(struct fm_hash *h, struct store *s,
                            const bool *present, size_t n_rows)
{
    size_t n_present = 0;
    for (uint64_t r = 1; r < n_rows; r++) {
        if (s->key_lens[r] == 0 && !present[r])
            continue;
        uint64_t rowid = 0;
        bool found = fm_hash_find(h, s->keys[r], s->key_lens[r], &rowid);
        cr_assert_eq(found, present[r], "row %llu", (unsigned long long)r);
        if (found)
            cr_assert_eq(rowid, r);
        n_present += present[r];
    }
    cr_assert_eq(fm_hash_count(h), n_present);
}

Test(hash, allocation_failure_at_each_allocation_leaves_index_unchanged)
{
    enum { N = 700 };
    bool clean_run = false;
    for (size_t fail_at = 0; !clean_run; fail_at++) {
        struct alloc_fail f = {.fail_at = fail_at};
        struct store s;
        bool present[N + 1] = {false};
        struct fm_hash *h = NULL;
        store_init(&s, N + 1);
        fm_set_alloc_fail_hook(alloc_fail_hook, &f);
        fm_status st = fm_hash_new(store_key_fn, &s, true, &h);
        if (st != FM_OK) {
            cr_assert_eq(st, FM_ERR_NOMEM);
            st = fm_hash_new(store_key_fn, &s, true, &h);
            cr_assert_eq(st, FM_OK);
        }
        /* Growing keys force scratch growth; 700 entries force 6 resizes. */
        for (uint64_t r = 1; r <= N; r++) {
            uint8_t key[200];
            size_t len = 16 + (size_t)(r % 7 == 0 ? r % 180 : 0);
            memset(key, 'k', len);
            key16(key, r);
            store_set(&s, r, key, len);
            size_t n_before = fm_hash_count(h);
            st = fm_hash_insert(h, key, len, r);
            if (st == FM_ERR_NOMEM) {
                cr_assert_eq(fm_hash_count(h), n_before);
                check_ok(h, fail_at);
                expect_contents(h, &s, present, N + 1);
                st = fm_hash_insert(h, key, len, r);
            }
            cr_assert_eq(st, FM_OK, "fail_at %zu row %llu: %s", fail_at,
                         (unsigned long long)r, fm_status_name(st));
            present[r] = true;
        }
        st = fm_hash_reserve(h, 5000);
        if (st == FM_ERR_NOMEM) {
            expect_contents(h, &s, present, N + 1);
            st = fm_hash_reserve(h, 5000);
        }
        cr_assert_eq(st, FM_OK);
        fm_set_alloc_fail_hook(NULL, NULL);
        check_ok(h, fail_at);
        expect_contents(h, &s, present, N + 1);
        clean_run = !f.fired;
        fm_hash_free(h);
        store_fini(&s);
    }
}

Test(hash, insert_without_memory_fills_to_high_load_then_fails_cleanly)
{
    enum { N = 2000 };
    struct store s;
    struct fm_hash *h;
    store_init(&s, N + 1);
    cr_assert_eq(fm_hash_new(store_key_fn, &s, false, &h), FM_OK);
    for (uint64_t r = 1; r <= 100; r++)
        cr_assert_eq(put16(h, &s, r, r), FM_OK);
    /* Let any running resize finish, then refuse every allocation. */
    struct fm_hash_stats stats;
    for (uint64_t r = 1; r <= 100; r++) {
        fm_hash_stats(h, &stats);
        if (stats.n_old_slots == 0)
            break;
        cr_assert(fm_hash_remove(h, s.keys[r], 16, r));
        cr_assert_eq(fm_hash_insert(h, s.keys[r], 16, r), FM_OK);
    }
    fm_hash_stats(h, &stats);
    cr_assert_eq(stats.n_old_slots, 0);
    struct alloc_fail f = {.all = true};
    fm_set_alloc_fail_hook(alloc_fail_hook, &f);
    uint64_t r = 101;
    fm_status st;
    while ((st = put16(h, &s, r, r)) == FM_OK)
        r++;
    cr_assert_eq(st, FM_ERR_NOMEM);
    size_t n = fm_hash_count(h);
    cr_assert_eq(n, r - 1);
    /* The table ran past load 0.8 towards 0.95 instead of failing early. */
    cr_assert_gt(n * 100, stats.n_slots * 90, "%zu in %zu slots", n,
                 stats.n_slots);
    cr_assert_lt(n, stats.n_slots);
    uint64_t rowid;
    cr_assert(!find16(h, r, &rowid));
    /* Finds, iterators and removes need no memory. */
    cr_assert(find16(h, 5, &rowid));
    cr_assert(fm_hash_remove(h, s.keys[5], 16, 5));
    cr_assert_eq(put16(h, &s, 5, 5), FM_OK);
    fm_set_alloc_fail_hook(NULL, NULL);
    check_ok(h, 0);
    cr_assert_eq(put16(h, &s, r, r), FM_OK);
    fm_hash_stats(h, &stats);
    cr_assert_gt(stats.n_slots, stats.n_old_slots);
    check_ok(h, 0);
    fm_hash_free(h);
    store_fini(&s);
}

/* Old slots that one operation migrated, from the stats around it. */
static size_t n_migrated_by(const struct fm_hash_stats *before,
                            const struct fm_hash_stats *after)
{
    if (after->n_old_slots == 0)
        return 0;
    size_t from = before->n_old_slots == after->n_old_slots
                      ? before->n_old_unmigrated
                      : after->n_old_slots;
    return from - after->n_old_unmigrated;
}

Test(hash, resize_moves_a_bounded_number_of_slots_per_operation)
{
    enum { N = 250000 };
    struct store s;
    struct fm_hash *h;
    store_init(&s, N + 1);
    cr_assert_eq(fm_hash_new(store_key_fn, &s, true, &h), FM_OK);
    struct fm_hash_stats before;
    struct fm_hash_stats after;
    size_t n_resize_ops = 0;
    size_t biggest_old = 0;
    for (uint64_t r = 1; r <= N; r++) {
        fm_hash_stats(h, &before);
        cr_assert_eq(put16(h, &s, r, r), FM_OK);
        fm_hash_stats(h, &after);
        cr_assert_leq(n_migrated_by(&before, &after), FM_HASH_MIGRATE_SLOTS,
                      "insert of row %llu", (unsigned long long)r);
        if (after.n_old_slots == 0)
            continue;
        n_resize_ops++;
        if (after.n_old_slots > biggest_old)
            biggest_old = after.n_old_slots;
        /* Removes migrate too, and just as boundedly. */
        if (r % 3 == 0) {
            before = after;
            cr_assert(fm_hash_remove(h, s.keys[r - 1], 16, r - 1));
            fm_hash_stats(h, &after);
            cr_assert_leq(n_migrated_by(&before, &after),
                          FM_HASH_MIGRATE_SLOTS);
            cr_assert_eq(put16(h, &s, r - 1, r - 1), FM_OK);
        }
    }
    /* The last resize, of 2^18 old slots, was spread over many inserts. */
    cr_assert_eq(biggest_old, (size_t)1 << 18);
    cr_assert_geq(n_resize_ops,
                  ((size_t)1 << 18) / (2 * FM_HASH_MIGRATE_SLOTS));
    fm_hash_free(h);
    store_fini(&s);
}

Test(hash, lookups_see_both_tables_during_a_resize)
{
    enum { N = 50000 };
    struct store s;
    struct fm_hash *h;
    store_init(&s, N + 2);
    cr_assert_eq(fm_hash_new(store_key_fn, &s, true, &h), FM_OK);
    struct fm_hash_stats stats;
    uint64_t r = 1;
    /* Insert until a resize of a sizeable table is half done. */
    for (;; r++) {
        cr_assert_lt(r, N);
        cr_assert_eq(put16(h, &s, r, r), FM_OK);
        fm_hash_stats(h, &stats);
        if (stats.n_old_slots >= 16384 &&
            stats.n_old_unmigrated < stats.n_old_slots / 2)
            break;
    }
    cr_assert_gt(stats.n_old_entries, 0);
    check_ok(h, 0);
    cr_assert_geq(fm_hash_memory_bytes(h),
                  (stats.n_slots + stats.n_old_slots) * 8);
    for (uint64_t i = 1; i <= r; i++) {
        uint64_t rowid = 0;
        cr_assert(find16(h, i, &rowid), "row %llu", (unsigned long long)i);
        cr_assert_eq(rowid, i);
        /* Uniqueness is enforced against entries in either table. */
        if (i % 97 == 0) {
            uint8_t key[16];
            key16(key, i);
            store_set(&s, r + 1, key, 16);
            cr_assert_eq(fm_hash_insert(h, key, 16, r + 1), FM_ERR_UNIQUE);
        }
    }
    cr_assert(!find16(h, r + 1, &(uint64_t){0}));
    fm_hash_stats(h, &stats);
    cr_assert_gt(stats.n_old_entries, 0, "lookups must not migrate");
    check_ok(h, 0);
    fm_hash_free(h);
    store_fini(&s);
}

Test(hash, reserve_presizes_so_inserts_never_resize)
{
    enum { N = 100000 };
    struct store s;
    struct fm_hash *h;
    store_init(&s, N + 1);
    cr_assert_eq(fm_hash_new(store_key_fn, &s, true, &h), FM_OK);
    for (uint64_t r = 1; r <= 1000; r++)
        cr_assert_eq(put16(h, &s, r, r), FM_OK);
    cr_assert_eq(fm_hash_reserve(h, N), FM_OK);
    struct fm_hash_stats stats;
    fm_hash_stats(h, &stats);
    size_t n_slots = stats.n_slots;
    cr_assert_eq(stats.n_old_slots, 0);
    /* The smallest table that takes N entries at load 0.8. */
    cr_assert_geq(n_slots / 5 * 4, N);
    cr_assert_lt(n_slots / 2 / 5 * 4, N);
    check_ok(h, 0);
    for (uint64_t r = 1001; r <= N; r++) {
        cr_assert_eq(put16(h, &s, r, r), FM_OK);
        fm_hash_stats(h, &stats);
        cr_assert_eq(stats.n_slots, n_slots);
        cr_assert_eq(stats.n_old_slots, 0);
    }
    cr_assert_eq(fm_hash_reserve(h, 10), FM_OK);
    fm_hash_stats(h, &stats);
    cr_assert_eq(stats.n_slots, n_slots);
    check_ok(h, 0);
    fm_hash_free(h);
    store_fini(&s);
}

Test(hash, reserve_during_a_resize_completes_it)
{
    struct store s;
    struct fm_hash *h;
    store_init(&s, 20001);
    cr_assert_eq(fm_hash_new(store_key_fn, &s, false, &h), FM_OK);
    struct fm_hash_stats stats;
    uint64_t r = 1;
    do {
        cr_assert_lt(r, 20000);
        cr_assert_eq(put16(h, &s, r, r % 1000), FM_OK);
        r++;
        fm_hash_stats(h, &stats);
    } while (stats.n_old_slots < 4096);
    cr_assert_eq(fm_hash_reserve(h, 3 * stats.n_slots), FM_OK);
    fm_hash_stats(h, &stats);
    cr_assert_eq(stats.n_old_slots, 0);
    cr_assert_eq(stats.n_entries, r - 1);
    check_ok(h, 0);
    uint64_t got[64];
    uint8_t key[16];
    key16(key, 7);
    cr_assert_eq(iter_collect(h, key, 16, got, 64), (r - 1 - 7) / 1000 + 1);
    fm_hash_free(h);
    store_fini(&s);
}

Test(hash, churn_at_a_steady_size_does_not_grow_the_table)
{
    uint64_t seed = test_seed();
    uint64_t rng = seed;
    enum { LIVE = 3000, OPS = 200000 };
    struct store s;
    struct fm_hash *h;
    uint64_t live[LIVE];
    store_init(&s, LIVE + OPS + 1);
    cr_assert_eq(fm_hash_new(store_key_fn, &s, true, &h), FM_OK);
    for (uint64_t r = 1; r <= LIVE; r++) {
        cr_assert_eq(put16(h, &s, r, rng_next(&rng)), FM_OK);
        live[r - 1] = r;
    }
    struct fm_hash_stats before;
    struct fm_hash_stats after;
    for (uint64_t r = 1; r <= 2 * FM_HASH_MIGRATE_SLOTS; r++) {
        cr_assert(fm_hash_remove(h, s.keys[live[0]], 16, live[0]));
        cr_assert_eq(fm_hash_insert(h, s.keys[live[0]], 16, live[0]), FM_OK);
    }
    fm_hash_stats(h, &before);
    cr_assert_eq(before.n_old_slots, 0);
    for (uint64_t r = LIVE + 1; r <= LIVE + OPS; r++) {
        size_t i = rng_below(&rng, LIVE);
        uint64_t old = live[i];
        cr_assert(fm_hash_remove(h, s.keys[old], 16, old), "seed=%llu",
                  (unsigned long long)seed);
        cr_assert_eq(put16(h, &s, r, rng_next(&rng)), FM_OK);
        live[i] = r;
    }
    fm_hash_stats(h, &after);
    cr_assert_eq(after.n_slots, before.n_slots);
    cr_assert_eq(after.n_entries, LIVE);
    check_ok(h, seed);
    for (size_t i = 0; i < LIVE; i++) {
        uint64_t rowid = 0;
        cr_assert(fm_hash_find(h, s.keys[live[i]], 16, &rowid));
        cr_assert_eq(rowid, live[i]);
    }
    fm_hash_free(h);
    store_fini(&s);
}

Test(hash, remove_matches_hash_and_rowid_without_reading_the_row)
{
    struct store s;
    struct fm_hash *h;
    store_init(&s, 3);
    cr_assert_eq(fm_hash_new(store_key_fn, &s, true, &h), FM_OK);
    cr_assert_eq(put16(h, &s, 1, 10), FM_OK);
    cr_assert_eq(put16(h, &s, 2, 20), FM_OK);
    /* The row already holds its new key when its old entry is removed. */
    uint8_t old_key[16];
    key16(old_key, 10);
    uint8_t new_key[16];
    key16(new_key, 11);
    store_set(&s, 1, new_key, 16);
    s.n_key_calls = 0;
    cr_assert(!fm_hash_remove(h, old_key, 16, 2));
    cr_assert(fm_hash_remove(h, old_key, 16, 1));
    cr_assert_eq(s.n_key_calls, 0);
    cr_assert_eq(fm_hash_insert(h, new_key, 16, 1), FM_OK);
    check_ok(h, 0);
    fm_hash_free(h);
    store_fini(&s);
}

Test(hash, check_reports_a_row_whose_key_changed_under_the_index)
{
    struct store s;
    struct fm_hash *h;
    store_init(&s, 40);
    cr_assert_eq(fm_hash_new(store_key_fn, &s, false, &h), FM_OK);
    for (uint64_t r = 1; r < 40; r++)
        cr_assert_eq(put16(h, &s, r, r), FM_OK);
    check_ok(h, 0);
    uint8_t key[16];
    key16(key, 1000);
    store_set(&s, 17, key, 16);
    struct fm_error err = {0};
    cr_assert_eq(fm_hash_check(h, &err), FM_ERR_CORRUPT);
    cr_assert(strstr(err.msg, "row 17") != NULL, "%s", err.msg);
    fm_hash_free(h);
    store_fini(&s);
}

Test(hash, ten_thousand_keys_take_under_fourteen_bytes_each)
{
    enum { N = 10000 };
    struct store s;
    struct fm_hash *h;
    store_init(&s, N + 1);
    cr_assert_eq(fm_hash_new(store_key_fn, &s, true, &h), FM_OK);
    for (uint64_t r = 1; r <= N; r++)
        cr_assert_eq(put16(h, &s, r, r), FM_OK);
    /* 16,384 slots of 8 bytes: 13.1 bytes per key, where 16-byte slots
     * took 26.2 (issue 2: a 10k-row table must cost less than SQLite). */
    size_t bytes = fm_hash_memory_bytes(h);
    cr_assert_lt(bytes, (size_t)14 * N, "%zu bytes for %d keys", bytes, N);
    check_ok(h, 0);
    fm_hash_free(h);
    store_fini(&s);
}

struct tagged {
    uint32_t tag;
    uint64_t v;
};

static int tagged_cmp(const void *a, const void *b)
{
    const struct tagged *x = a;
    const struct tagged *y = b;
    if (x->tag != y->tag)
        return x->tag < y->tag ? -1 : 1;
    return x->v < y->v ? -1 : x->v > y->v;
}

/*
 * Finds two numbers whose key16 keys share the 32 hash bits a slot keeps
 * (the low half of fm_hash_key), by the birthday bound: 2^18 keys hold about
 * 8 such pairs.
 */
static void find_tag_collision(uint64_t *a_out, uint64_t *b_out)
{
    enum { N = 1 << 18 };
    struct tagged *t = malloc(N * sizeof(*t));
    cr_assert(t != NULL);
    for (uint64_t v = 0; v < N; v++) {
        uint8_t key[16];
        key16(key, v);
        t[v].tag = (uint32_t)fm_hash_key(key, sizeof(key));
        t[v].v = v;
    }
    qsort(t, N, sizeof(*t), tagged_cmp);
    bool found = false;
    for (size_t i = 1; i < N && !found; i++) {
        if (t[i].tag == t[i - 1].tag) {
            *a_out = t[i - 1].v;
            *b_out = t[i].v;
            found = true;
        }
    }
    free(t);
    cr_assert(found, "no two of 2^18 keys share a tag");
}

Test(hash, keys_whose_kept_hash_bits_collide_stay_distinct)
{
    uint64_t a;
    uint64_t b;
    find_tag_collision(&a, &b);
    for (int unique = 0; unique < 2; unique++) {
        struct store s;
        struct fm_hash *h;
        store_init(&s, 200);
        cr_assert_eq(fm_hash_new(store_key_fn, &s, unique, &h), FM_OK);
        /* Other keys around them, so that both sit in a real cluster. */
        for (uint64_t r = 3; r < 200; r++)
            cr_assert_eq(put16(h, &s, r, 1000000 + r), FM_OK);
        cr_assert_eq(put16(h, &s, 1, a), FM_OK);
        cr_assert_eq(put16(h, &s, 2, b), FM_OK, "an equal tag is no key");
        uint64_t rowid = 0;
        cr_assert(find16(h, a, &rowid));
        cr_assert_eq(rowid, 1);
        cr_assert(find16(h, b, &rowid));
        cr_assert_eq(rowid, 2);
        uint8_t key[16];
        key16(key, b);
        uint64_t got[4];
        cr_assert_eq(iter_collect(h, key, sizeof(key), got, 4), 1);
        cr_assert_eq(got[0], 2);
        check_ok(h, 0);
        key16(key, a);
        cr_assert(fm_hash_remove(h, key, sizeof(key), 1));
        cr_assert(!find16(h, a, &rowid));
        cr_assert(find16(h, b, &rowid));
        cr_assert_eq(rowid, 2);
        check_ok(h, 0);
        fm_hash_free(h);
        store_fini(&s);
    }
}

/* A row store where every row's key is its id, big-endian. */
static size_t id_key_fn(void *ctx, uint64_t rowid, uint8_t *buf, size_t cap)
{
    (void)ctx;
    if (cap >= 8)
        fm_store_be64(buf, rowid);
    return 8;
}

Test(hash, row_ids_up_to_the_maximum_round_trip)
{
    const uint64_t ids[] = {
        1,          2,          0x7fffffff,       0x80000000,
        0xfffffffe, 0xffff0001, FM_HASH_ROWID_MAX};
    enum { N_IDS = sizeof(ids) / sizeof(ids[0]) };
    struct fm_hash *h;
    cr_assert_eq(fm_hash_new(id_key_fn, NULL, true, &h), FM_OK);
    uint8_t key[8];
    for (size_t i = 0; i < N_IDS; i++) {
        fm_store_be64(key, ids[i]);
        cr_assert_eq(fm_hash_insert(h, key, sizeof(key), ids[i]), FM_OK);
    }
    check_ok(h, 0);
    for (size_t i = 0; i < N_IDS; i++) {
        uint64_t rowid = 0;
        fm_store_be64(key, ids[i]);
        cr_assert(fm_hash_find(h, key, sizeof(key), &rowid));
        cr_assert_eq(rowid, ids[i], "row %llx came back as %llx",
                     (unsigned long long)ids[i], (unsigned long long)rowid);
    }
    /* A row id no slot can hold is never there. */
    fm_store_be64(key, 1);
    cr_assert(!fm_hash_remove(h, key, sizeof(key), (uint64_t)1 << 32 | 1));
    for (size_t i = 0; i < N_IDS; i++) {
        fm_store_be64(key, ids[i]);
        cr_assert(fm_hash_remove(h, key, sizeof(key), ids[i]));
    }
    cr_assert_eq(fm_hash_count(h), 0);
    fm_hash_free(h);
}

/* Live rows of the churn test: rowid r has key16(r) while alive[r]. */
struct churn {
    struct store s;
    struct fm_hash *h;
    bool *alive;
    uint64_t *live; /* the alive row ids, in no order */
    size_t n_live;
    uint64_t next_rowid;
    uint64_t rng;
    uint64_t seed;
};

static void churn_insert(struct churn *c)
{
    uint64_t r = c->next_rowid++;
    cr_assert_eq(put16(c->h, &c->s, r, r), FM_OK, "seed=%llu",
                 (unsigned long long)c->seed);
    c->alive[r] = true;
    c->live[c->n_live++] = r;
}

/*
 * One random remove, insert or find, checked against the live set; inserts
 * only while fewer than max_live rows are alive.
 */
static void churn_step(struct churn *c, size_t max_live)
{
    unsigned dice = (unsigned)rng_below(&c->rng, 3);
    if (dice == 1 && c->n_live >= max_live)
        dice = 0;
    if (dice == 0 && c->n_live > 0) {
        size_t i = rng_below(&c->rng, c->n_live);
        uint64_t r = c->live[i];
        cr_assert(fm_hash_remove(c->h, c->s.keys[r], 16, r), "seed=%llu",
                  (unsigned long long)c->seed);
        c->alive[r] = false;
        c->live[i] = c->live[--c->n_live];
    } else if (dice == 1) {
        churn_insert(c);
    } else {
        uint64_t v = 1 + rng_below(&c->rng, (size_t)c->next_rowid);
        uint64_t rowid = 0;
        bool found = find16(c->h, v, &rowid);
        cr_assert_eq(found, v < c->next_rowid && c->alive[v],
                     "seed=%llu: row %llu", (unsigned long long)c->seed,
                     (unsigned long long)v);
        if (found)
            cr_assert_eq(rowid, v);
    }
    cr_assert_eq(fm_hash_count(c->h), c->n_live);
}

Test(hash, tables_fill_to_load_0_8_and_stay_correct_there_and_in_resize)
{
    enum { N_ROWS = 80000, SLOTS = 16384, FULL = SLOTS / 5 * 4 };
    struct churn c = {0};
    c.seed = test_seed();
    c.rng = c.seed;
    c.next_rowid = 1;
    store_init(&c.s, N_ROWS);
    c.alive = calloc(N_ROWS, sizeof(*c.alive));
    c.live = calloc(N_ROWS, sizeof(*c.live));
    cr_assert(c.alive != NULL && c.live != NULL);
    cr_assert_eq(fm_hash_new(store_key_fn, &c.s, true, &c.h), FM_OK);
    struct fm_hash_stats stats;
    /* A table of SLOTS takes FULL entries (load 0.8) without growing. */
    while (c.n_live < FULL)
        churn_insert(&c);
    fm_hash_stats(c.h, &stats);
    cr_assert_eq(stats.n_slots, SLOTS, "%zu entries made %zu slots", c.n_live,
                 stats.n_slots);
    cr_assert_eq(stats.n_old_slots, 0);
    /* Churn at that load: long clusters, no growth, every answer right. */
    for (size_t op = 0; op < 20000; op++) {
        churn_step(&c, FULL);
        if (op % 2000 == 0)
            check_ok(c.h, c.seed);
    }
    fm_hash_stats(c.h, &stats);
    cr_assert_eq(stats.n_slots, SLOTS);
    check_ok(c.h, c.seed);
    /* One more row starts a resize; churn on until it has finished. */
    while (c.n_live < FULL + 1)
        churn_insert(&c);
    fm_hash_stats(c.h, &stats);
    cr_assert_eq(stats.n_old_slots, SLOTS, "seed=%llu",
                 (unsigned long long)c.seed);
    size_t n_ops = 0;
    while (stats.n_old_slots != 0) {
        churn_step(&c, FULL + 64);
        if (++n_ops % 16 == 0)
            check_ok(c.h, c.seed);
        cr_assert_lt(n_ops, 10000, "the resize never finishes");
        fm_hash_stats(c.h, &stats);
    }
    check_ok(c.h, c.seed);
    for (size_t i = 0; i < c.n_live; i++) {
        uint64_t rowid = 0;
        cr_assert(find16(c.h, c.live[i], &rowid));
        cr_assert_eq(rowid, c.live[i]);
    }
    fm_hash_free(c.h);
    store_fini(&c.s);
    free(c.alive);
    free(c.live);
}
