/*
 * test_btree.c: the B+tree against a sorted-array model.
 *
 * The test owns a row store (rowid -> key bytes) that the tree's key
 * callback reads. A row is "live" only while its entry is in the tree; the
 * callback fails the test when asked for any other row, which catches an
 * inner node still naming a removed entry. Randomised tests take their seed
 * from FM_TEST_SEED and print it in every failure message.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "index/btree.h"

#define MAX_ROWS 50000

struct row {
    uint8_t *key;
    size_t key_len;
    bool live; /* the entry is in the tree */
};

struct store {
    struct row rows[MAX_ROWS];
    size_t n_rows;
    size_t n_calls;
    bool bad_call; /* the tree asked for a row that is not in it */
    uint64_t bad_rowid;
};

/* The model: rowids sorted by (key, rowid), as the tree should hold them. */
struct model {
    uint64_t ids[MAX_ROWS];
    size_t n;
};

static struct store *store;
static struct model *model;
static uint64_t seed;
static uint64_t rng_state;

static uint64_t rng(void)
{
    /* splitmix64 */
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static size_t rng_below(size_t n)
{
    return n == 0 ? 0 : (size_t)(rng() % n);
}

static void seed_init(void)
{
    const char *s = getenv("FM_TEST_SEED");
    seed = s != NULL ? strtoull(s, NULL, 0) : 20261125;
    rng_state = seed;
}

static size_t key_cb(void *ctx, uint64_t rowid, uint8_t *buf, size_t cap)
{
    struct store *st = ctx;
    st->n_calls++;
    if (rowid >= st->n_rows || !st->rows[rowid].live) {
        st->bad_call = true;
        st->bad_rowid = rowid;
        return 0;
    }
    struct row *r = &st->rows[rowid];
    if (r->key_len <= cap && r->key_len > 0)
        memcpy(buf, r->key, r->key_len);
    return r->key_len;
}

static void setup(void)
{
    store = calloc(1, sizeof(*store));
    model = calloc(1, sizeof(*model));
    cr_assert(store != NULL && model != NULL);
    seed_init();
}

static void teardown(void)
{
    fm_set_alloc_fail_hook(NULL, NULL);
    for (size_t i = 0; i < store->n_rows; i++)
        free(store->rows[i].key);
    free(store);
    free(model);
}

TestSuite(btree, .init = setup, .fini = teardown);

static uint64_t add_row(const uint8_t *key, size_t key_len)
{
    cr_assert(store->n_rows < MAX_ROWS);
    struct row *r = &store->rows[store->n_rows];
    r->key = malloc(key_len + 1);
    cr_assert(r->key != NULL);
    if (key_len > 0)
        memcpy(r->key, key, key_len);
    r->key_len = key_len;
    r->live = false;
    return store->n_rows++;
}

static int cmp_keys(const uint8_t *a, size_t a_len, const uint8_t *b,
                    size_t b_len)
{
    size_t n = a_len < b_len ? a_len : b_len;
    int c = n > 0 ? memcmp(a, b, n) : 0;
    if (c != 0)
        return c;
    return (a_len > b_len) - (a_len < b_len);
}

static int cmp_row_key(uint64_t id, const uint8_t *key, size_t key_len)
{
    struct row *r = &store->rows[id];
    return cmp_keys(r->key, r->key_len, key, key_len);
}

/* Model position of the first entry >= (key, rowid); rank as in btree.c. */
static size_t model_lower(const uint8_t *key, size_t key_len, uint64_t rank)
{
    size_t lo = 0;
    size_t hi = model->n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        uint64_t id = model->ids[mid];
        int c = cmp_row_key(id, key, key_len);
        if (c == 0)
            c = (id + 1 > rank) - (id + 1 < rank);
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static void check_tree(struct fm_btree *t)
{
    struct fm_error err = {0};
    fm_status st = fm_btree_check(t, &err);
    cr_assert(st == FM_OK, "seed %llu: check failed: %s",
              (unsigned long long)seed, err.msg);
    cr_assert(!store->bad_call, "seed %llu: key asked for absent row %llu",
              (unsigned long long)seed, (unsigned long long)store->bad_rowid);
    cr_assert(fm_btree_count(t) == model->n, "seed %llu: count %zu vs %zu",
              (unsigned long long)seed, fm_btree_count(t), model->n);
}

/* Inserts row id into tree and model; returns the tree's status. */
static fm_status do_insert(struct fm_btree *t, bool unique, uint64_t id)
{
    struct row *r = &store->rows[id];
    size_t pos = model_lower(r->key, r->key_len, unique ? 0 : id + 1);
    bool clash = pos < model->n &&
                 (unique ? cmp_row_key(model->ids[pos], r->key, r->key_len) == 0
                         : model->ids[pos] == id);
    fm_status st = fm_btree_insert(t, r->key, r->key_len, id);
    cr_assert(st == (clash ? FM_ERR_UNIQUE : FM_OK),
              "seed %llu: insert of row %llu gave %s", (unsigned long long)seed,
              (unsigned long long)id, fm_status_name(st));
    if (st == FM_OK) {
        memmove(&model->ids[pos + 1], &model->ids[pos],
                (model->n - pos) * sizeof(model->ids[0]));
        model->ids[pos] = id;
        model->n++;
        r->live = true;
    }
    return st;
}

static void do_remove(struct fm_btree *t, uint64_t id)
{
    struct row *r = &store->rows[id];
    size_t pos = model_lower(r->key, r->key_len, id + 1);
    bool present = pos < model->n && model->ids[pos] == id;
    cr_assert(fm_btree_contains(t, r->key, r->key_len, id) == present,
              "seed %llu: contains of row %llu disagrees with the model",
              (unsigned long long)seed, (unsigned long long)id);
    bool removed = fm_btree_remove(t, r->key, r->key_len, id);
    cr_assert(removed == present, "seed %llu: remove of row %llu gave %d",
              (unsigned long long)seed, (unsigned long long)id, removed);
    if (removed) {
        memmove(&model->ids[pos], &model->ids[pos + 1],
                (model->n - pos - 1) * sizeof(model->ids[0]));
        model->n--;
        r->live = false;
    }
}

static void do_find(struct fm_btree *t, const uint8_t *key, size_t key_len)
{
    size_t pos = model_lower(key, key_len, 0);
    bool expect =
        pos < model->n && cmp_row_key(model->ids[pos], key, key_len) == 0;
    uint64_t rowid = UINT64_MAX;
    bool found = fm_btree_find(t, key, key_len, &rowid);
    cr_assert(found == expect, "seed %llu: find gave %d, model %d",
              (unsigned long long)seed, found, expect);
    if (found)
        cr_assert(rowid == model->ids[pos],
                  "seed %llu: find gave row %llu, model %llu",
                  (unsigned long long)seed, (unsigned long long)rowid,
                  (unsigned long long)model->ids[pos]);
}

/* Model range [first, past) for the bounds. */
static void model_range(const struct fm_btree_bound *lo,
                        const struct fm_btree_bound *hi, size_t *first,
                        size_t *past)
{
    *first = 0;
    *past = model->n;
    if (lo != NULL && lo->key != NULL)
        *first =
            model_lower(lo->key, lo->key_len, lo->inclusive ? 0 : UINT64_MAX);
    if (hi != NULL && hi->key != NULL)
        *past =
            model_lower(hi->key, hi->key_len, hi->inclusive ? UINT64_MAX : 0);
    if (*past < *first)
        *past = *first;
}

static void do_range(struct fm_btree *t, const struct fm_btree_bound *lo,
                     const struct fm_btree_bound *hi, bool reverse)
{
    size_t first;
    size_t past;
    model_range(lo, hi, &first, &past);
    struct fm_btree_iter it;
    fm_btree_iter_init(&it, t, lo, hi, reverse);
    size_t n = past - first;
    for (size_t i = 0; i < n; i++) {
        uint64_t rowid;
        size_t at = reverse ? past - 1 - i : first + i;
        cr_assert(fm_btree_iter_next(&it, &rowid),
                  "seed %llu: range ended after %zu of %zu rows",
                  (unsigned long long)seed, i, n);
        cr_assert(rowid == model->ids[at],
                  "seed %llu: range row %zu is %llu, model %llu",
                  (unsigned long long)seed, i, (unsigned long long)rowid,
                  (unsigned long long)model->ids[at]);
    }
    uint64_t extra;
    cr_assert(!fm_btree_iter_next(&it, &extra),
              "seed %llu: range has more than %zu rows",
              (unsigned long long)seed, n);
    cr_assert(!fm_btree_iter_next(&it, &extra));
}

/* Keys of 0-8 bytes over a tiny alphabet: many share a hint. */
static size_t gen_short_key(uint8_t *buf)
{
    static const uint8_t alphabet[] = {0x00, 0x01, 0x61, 0xff};
    size_t len = rng_below(9);
    for (size_t i = 0; i < len; i++)
        buf[i] = alphabet[rng_below(4)];
    return len;
}

/* Keys sharing one of two 8-10 byte prefixes, so hints tie and the
 * callback decides; now and then a short one to mix both paths. */
static size_t gen_long_key(uint8_t *buf)
{
    static const uint8_t prefixes[2][10] = {
        {'p', 'r', 'e', 'f', 'i', 'x', '0', '0', '0', '0'},
        {'p', 'r', 'e', 'f', 'i', 'x', '0', '0', 0x00, 0x00},
    };
    if (rng_below(10) == 0)
        return gen_short_key(buf);
    size_t plen = 8 + rng_below(3);
    memcpy(buf, prefixes[rng_below(2)], plen);
    size_t len = plen + rng_below(5);
    for (size_t i = plen; i < len; i++)
        buf[i] = (uint8_t)rng_below(3);
    return len;
}

static size_t gen_key(uint8_t *buf, bool long_keys)
{
    return long_keys ? gen_long_key(buf) : gen_short_key(buf);
}

static void random_bound(struct fm_btree_bound *b, uint8_t *buf, bool long_keys)
{
    if (rng_below(5) == 0) {
        b->key = NULL;
        b->key_len = 0;
        b->inclusive = false;
        return;
    }
    if (model->n > 0 && rng_below(2) == 0) {
        struct row *r = &store->rows[model->ids[rng_below(model->n)]];
        memcpy(buf, r->key, r->key_len);
        b->key_len = r->key_len;
    } else {
        b->key_len = gen_key(buf, long_keys);
    }
    b->key = buf;
    b->inclusive = rng_below(2) == 0;
}

/*
 * One random run: inserts, removes, finds and ranges against the model,
 * checking the whole tree after every mutation when check_each is set.
 */
/* Entries to reserve node memory for before a random run (0: none). */
static size_t random_reserve;

static void random_run(bool unique, bool long_keys, size_t n_ops,
                       bool check_each)
{
    struct fm_btree *t;
    cr_assert(fm_btree_new(key_cb, store, unique, &t) == FM_OK);
    if (random_reserve > 0)
        cr_assert(fm_btree_reserve(t, random_reserve) == FM_OK);
    uint8_t buf[32];
    uint8_t lo_buf[32];
    uint8_t hi_buf[32];
    for (size_t op = 0; op < n_ops; op++) {
        size_t dice = rng_below(100);
        /* Grow for the first half of the run, then shrink. */
        size_t insert_share = op < n_ops / 2 ? 60 : 25;
        if (dice < insert_share) {
            size_t len = gen_key(buf, long_keys);
            uint64_t id = add_row(buf, len);
            do_insert(t, unique, id);
        } else if (dice < 65) {
            uint64_t id;
            if (model->n > 0 && rng_below(8) != 0)
                id = model->ids[rng_below(model->n)];
            else
                id = rng_below(store->n_rows);
            do_remove(t, id);
        } else if (dice < 80) {
            size_t len = gen_key(buf, long_keys);
            do_find(t, buf, len);
        } else {
            struct fm_btree_bound lo;
            struct fm_btree_bound hi;
            random_bound(&lo, lo_buf, long_keys);
            random_bound(&hi, hi_buf, long_keys);
            do_range(t, &lo, &hi, rng_below(2) == 0);
            continue;
        }
        if (check_each || op % 1000 == 0)
            check_tree(t);
    }
    check_tree(t);
    do_range(t, NULL, NULL, false);
    do_range(t, NULL, NULL, true);
    /* Empty it completely: every remove must find its entry. */
    while (model->n > 0)
        do_remove(t, model->ids[rng_below(model->n)]);
    check_tree(t);
    fm_btree_free(t);
}

Test(btree, random_short_keys_unique_match_model)
{
    random_run(true, false, 6000, true);
}

Test(btree, random_short_keys_non_unique_match_model)
{
    random_run(false, false, 6000, true);
}

Test(btree, random_long_keys_unique_match_model)
{
    random_run(true, true, 5000, true);
}

Test(btree, random_long_keys_non_unique_match_model)
{
    random_run(false, true, 5000, true);
}

Test(btree, large_random_run_matches_model)
{
    random_run(false, false, 30000, false);
}

/* A block too small for the run: nodes from the block, from its free list
 * and from malloc live side by side and are freed each their own way. */
Test(btree, random_run_over_a_small_reserved_block_matches_model)
{
    random_reserve = 2000;
    random_run(false, false, 12000, true);
    random_run(true, true, 5000, true);
    random_reserve = 0;
}

static void be_key(uint8_t *buf, uint64_t v)
{
    fm_store_be64(buf, v);
}

Test(btree, split_keeps_keys_sorted)
{
    struct fm_btree *t;
    cr_assert(fm_btree_new(key_cb, store, true, &t) == FM_OK);
    /* Descending, then interleaved, so splits happen everywhere. */
    for (uint64_t i = 0; i < 3000; i++) {
        uint8_t k[8];
        be_key(k, (3000 - i) * 2);
        do_insert(t, true, add_row(k, 8));
    }
    for (uint64_t i = 0; i < 3000; i++) {
        uint8_t k[8];
        be_key(k, i * 2 + 1);
        do_insert(t, true, add_row(k, 8));
    }
    check_tree(t);
    do_range(t, NULL, NULL, false);
    do_range(t, NULL, NULL, true);
    fm_btree_free(t);
}

Test(btree, empty_tree_finds_and_iterates_nothing)
{
    struct fm_btree *t;
    cr_assert(fm_btree_new(key_cb, store, false, &t) == FM_OK);
    uint64_t rowid;
    cr_assert(!fm_btree_find(t, (const uint8_t *)"a", 1, &rowid));
    cr_assert(!fm_btree_find(t, NULL, 0, &rowid));
    cr_assert(!fm_btree_remove(t, (const uint8_t *)"a", 1, 0));
    cr_assert(fm_btree_count(t) == 0);
    struct fm_btree_iter it;
    fm_btree_iter_init(&it, t, NULL, NULL, false);
    cr_assert(!fm_btree_iter_next(&it, &rowid));
    fm_btree_iter_init(&it, t, NULL, NULL, true);
    cr_assert(!fm_btree_iter_next(&it, &rowid));
    check_tree(t);
    cr_assert(fm_btree_memory_bytes(t) > 0);
    fm_btree_free(t);
    fm_btree_free(NULL);
}

Test(btree, empty_key_sorts_first)
{
    struct fm_btree *t;
    cr_assert(fm_btree_new(key_cb, store, true, &t) == FM_OK);
    do_insert(t, true, add_row((const uint8_t *)"b", 1));
    do_insert(t, true, add_row((const uint8_t *)"", 0));
    do_insert(t, true, add_row((const uint8_t *)"\0", 1));
    cr_assert(do_insert(t, true, add_row((const uint8_t *)"", 0)) ==
              FM_ERR_UNIQUE);
    uint64_t rowid;
    cr_assert(fm_btree_find(t, NULL, 0, &rowid) && rowid == 1);
    check_tree(t);
    do_range(t, NULL, NULL, false);
    fm_btree_free(t);
}

Test(btree, zero_padding_does_not_confuse_equal_hints)
{
    struct fm_btree *t;
    cr_assert(fm_btree_new(key_cb, store, true, &t) == FM_OK);
    /* All of these have the hint "ab\0\0\0\0\0\0". */
    static const char *keys[] = {"ab",
                                 "ab\0",
                                 "ab\0\0\0\0\0\0",
                                 "ab\0\0\0\0\0\0\0",
                                 "ab\0\0\0\0\0\0\0\0",
                                 "ab\0\0\0\0\0\0\1"};
    static const size_t lens[] = {2, 3, 8, 9, 10, 9};
    for (size_t i = FM_ARRAY_LEN(keys); i-- > 0;)
        do_insert(t, true, add_row((const uint8_t *)keys[i], lens[i]));
    check_tree(t);
    for (size_t i = 0; i < FM_ARRAY_LEN(keys); i++) {
        uint64_t rowid;
        cr_assert(fm_btree_find(t, (const uint8_t *)keys[i], lens[i], &rowid));
        cr_assert(store->rows[rowid].key_len == lens[i]);
    }
    uint64_t rowid;
    struct fm_btree_iter it;
    fm_btree_iter_init(&it, t, NULL, NULL, false);
    for (size_t i = 0; i < FM_ARRAY_LEN(keys); i++) {
        cr_assert(fm_btree_iter_next(&it, &rowid));
        cr_assert(store->rows[rowid].key_len == lens[i] &&
                      memcmp(store->rows[rowid].key, keys[i], lens[i]) == 0,
                  "entry %zu out of order", i);
    }
    cr_assert(!fm_btree_find(t, (const uint8_t *)"ab\0\0", 4, &rowid));
    fm_btree_free(t);
}

Test(btree, reverse_iteration_yields_descending_order)
{
    struct fm_btree *t;
    cr_assert(fm_btree_new(key_cb, store, false, &t) == FM_OK);
    for (uint64_t i = 0; i < 1000; i++) {
        uint8_t k[2] = {(uint8_t)(i % 37), 0};
        do_insert(t, false, add_row(k, 2));
    }
    uint8_t lo_key[1] = {5};
    uint8_t hi_key[2] = {30, 0};
    struct fm_btree_bound lo = {lo_key, 1, true};
    struct fm_btree_bound hi = {hi_key, 2, false};
    do_range(t, &lo, &hi, true);
    do_range(t, &lo, &hi, false);
    do_range(t, NULL, &hi, true);
    do_range(t, &lo, NULL, true);
    do_range(t, NULL, NULL, true);
    /* An inverted range is empty both ways. */
    do_range(t, &hi, &lo, true);
    do_range(t, &hi, &lo, false);
    fm_btree_free(t);
}

Test(btree, prefix_range_selects_keys_with_prefix)
{
    struct fm_btree *t;
    cr_assert(fm_btree_new(key_cb, store, true, &t) == FM_OK);
    uint8_t k[13];
    for (uint64_t i = 0; i < 600; i++) {
        memcpy(k, "longprefix", 10);
        k[10] = (uint8_t)('a' + i % 3);
        k[11] = (uint8_t)(i / 3);
        k[12] = (uint8_t)(i * 7);
        do_insert(t, true, add_row(k, 13));
    }
    struct fm_btree_bound lo = {(const uint8_t *)"longprefixb", 11, true};
    struct fm_btree_bound hi = {(const uint8_t *)"longprefixc", 11, false};
    struct fm_btree_iter it;
    fm_btree_iter_init(&it, t, &lo, &hi, false);
    size_t n = 0;
    uint64_t rowid;
    while (fm_btree_iter_next(&it, &rowid)) {
        cr_assert(store->rows[rowid].key[10] == 'b');
        n++;
    }
    cr_assert(n == 200, "prefix range gave %zu rows", n);
    do_range(t, &lo, &hi, true);
    fm_btree_free(t);
}

Test(btree, remove_of_absent_entry_returns_false)
{
    struct fm_btree *t;
    cr_assert(fm_btree_new(key_cb, store, false, &t) == FM_OK);
    for (uint64_t i = 0; i < 500; i++) {
        uint8_t k[8];
        be_key(k, i / 2);
        do_insert(t, false, add_row(k, 8));
    }
    uint8_t k[8];
    be_key(k, 10);
    cr_assert(!fm_btree_remove(t, k, 8, 3));  /* key right, rowid wrong */
    cr_assert(!fm_btree_remove(t, k, 7, 20)); /* rowid right, key wrong */
    be_key(k, 100000);
    cr_assert(!fm_btree_remove(t, k, 8, 0));
    cr_assert(!fm_btree_remove(t, NULL, 0, 0));
    cr_assert(!fm_btree_remove(t, k, 8, FM_BTREE_ROWID_MAX));
    check_tree(t);
    fm_btree_free(t);
}

Test(btree, unique_violation_leaves_tree_unchanged)
{
    struct fm_btree *t;
    cr_assert(fm_btree_new(key_cb, store, true, &t) == FM_OK);
    for (uint64_t i = 0; i < 2000; i++) {
        uint8_t k[8];
        be_key(k, i * 3);
        do_insert(t, true, add_row(k, 8));
    }
    size_t mem = fm_btree_memory_bytes(t);
    for (uint64_t i = 0; i < 2000; i += 7) {
        uint8_t k[8];
        be_key(k, i * 3);
        cr_assert(do_insert(t, true, add_row(k, 8)) == FM_ERR_UNIQUE);
    }
    cr_assert(fm_btree_memory_bytes(t) == mem);
    check_tree(t);
    do_range(t, NULL, NULL, false);
    fm_btree_free(t);
}

Test(btree, non_unique_refuses_same_entry_twice)
{
    struct fm_btree *t;
    cr_assert(fm_btree_new(key_cb, store, false, &t) == FM_OK);
    uint64_t id = add_row((const uint8_t *)"k", 1);
    cr_assert(do_insert(t, false, id) == FM_OK);
    cr_assert(do_insert(t, false, id) == FM_ERR_UNIQUE);
    check_tree(t);
    fm_btree_free(t);
}

Test(btree, duplicates_are_found_in_rowid_order)
{
    struct fm_btree *t;
    cr_assert(fm_btree_new(key_cb, store, false, &t) == FM_OK);
    /* 1000 rows of one key, inserted in scrambled rowid order. */
    for (uint64_t i = 0; i < 1000; i++)
        add_row((const uint8_t *)"dup", 3);
    for (uint64_t i = 0; i < 1000; i++)
        do_insert(t, false, (i * 389) % 1000);
    uint64_t rowid;
    cr_assert(fm_btree_find(t, (const uint8_t *)"dup", 3, &rowid));
    cr_assert(rowid == 0);
    struct fm_btree_bound eq = {(const uint8_t *)"dup", 3, true};
    do_range(t, &eq, &eq, false);
    do_range(t, &eq, &eq, true);
    do_remove(t, 0);
    cr_assert(fm_btree_find(t, (const uint8_t *)"dup", 3, &rowid));
    cr_assert(rowid == 1);
    check_tree(t);
    fm_btree_free(t);
}

Test(btree, rowids_up_to_the_bound_are_kept)
{
    struct fm_btree *t;
    cr_assert(fm_btree_new(key_cb, store, false, &t) == FM_OK);
    /* Short keys never reach the callback, so large rowids are fine. */
    uint64_t big = FM_BTREE_ROWID_MAX - 1;
    cr_assert(fm_btree_insert(t, (const uint8_t *)"x", 1, big) == FM_OK);
    cr_assert(fm_btree_insert(t, (const uint8_t *)"x", 1, 0) == FM_OK);
    uint64_t rowid;
    struct fm_btree_iter it;
    fm_btree_iter_init(&it, t, NULL, NULL, true);
    cr_assert(fm_btree_iter_next(&it, &rowid) && rowid == big);
    cr_assert(fm_btree_iter_next(&it, &rowid) && rowid == 0);
    cr_assert(fm_btree_remove(t, (const uint8_t *)"x", 1, big));
    cr_assert(fm_btree_count(t) == 1);
    fm_btree_free(t);
}

Test(btree, very_long_keys_compare_through_the_callback)
{
    struct fm_btree *t;
    cr_assert(fm_btree_new(key_cb, store, true, &t) == FM_OK);
    size_t len = 200 * 1024;
    uint8_t *k = malloc(len);
    cr_assert(k != NULL);
    memset(k, 'z', len);
    for (uint64_t i = 0; i < 300; i++) {
        /* Keys differ only in their last two bytes and their length. */
        size_t klen = len - (i % 3);
        k[klen - 2] = (uint8_t)(i / 3);
        k[klen - 1] = (uint8_t)(i * 13);
        do_insert(t, true, add_row(k, klen));
    }
    check_tree(t);
    cr_assert(store->n_calls > 0);
    for (uint64_t i = 0; i < 300; i += 11) {
        uint64_t rowid;
        struct row *r = &store->rows[i];
        cr_assert(fm_btree_find(t, r->key, r->key_len, &rowid));
        cr_assert(rowid == i);
    }
    do_range(t, NULL, NULL, false);
    for (uint64_t i = 0; i < 300; i += 2)
        do_remove(t, i);
    check_tree(t);
    do_range(t, NULL, NULL, true);
    free(k);
    fm_btree_free(t);
}

Test(btree, ascending_inserts_fill_leaves)
{
    struct fm_btree *t;
    cr_assert(fm_btree_new(key_cb, store, true, &t) == FM_OK);
    size_t n = 20000;
    for (uint64_t i = 0; i < n; i++) {
        uint8_t k[8];
        be_key(k, i);
        do_insert(t, true, add_row(k, 8));
    }
    check_tree(t);
    double per_entry = (double)fm_btree_memory_bytes(t) / (double)n;
    cr_assert(per_entry < 17.0, "%.2f bytes per entry", per_entry);
    fm_btree_free(t);
}

static int cmp_ids(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a;
    uint64_t y = *(const uint64_t *)b;
    struct row *r = &store->rows[y];
    int c = cmp_row_key(x, r->key, r->key_len);
    if (c != 0)
        return c;
    return (x > y) - (x < y);
}

Test(btree, append_builds_full_leaves_in_order)
{
    struct fm_btree *t;
    cr_assert(fm_btree_new(key_cb, store, false, &t) == FM_OK);
    size_t n = 30000;
    for (uint64_t i = 0; i < n; i++) {
        uint8_t k[8];
        be_key(k, i / 3);
        /* Some keys of 7 bytes, which sort before their 8-byte kin. */
        add_row(k, i % 5 == 0 ? 8 : 7);
    }
    /* Rows sorted by (key, rowid) into the model, then appended. */
    for (uint64_t id = 0; id < n; id++)
        model->ids[model->n++] = id;
    qsort(model->ids, model->n, sizeof(model->ids[0]), cmp_ids);
    for (size_t i = 0; i < n; i++) {
        struct row *r = &store->rows[model->ids[i]];
        cr_assert(fm_btree_append(t, r->key, r->key_len, model->ids[i]) ==
                  FM_OK);
        r->live = true;
    }
    check_tree(t);
    double per_entry = (double)fm_btree_memory_bytes(t) / (double)n;
    cr_assert(per_entry < 17.0, "%.2f bytes per entry", per_entry);
    do_range(t, NULL, NULL, false);
    do_range(t, NULL, NULL, true);
    /* The appended tree takes ordinary inserts and removes. */
    for (size_t i = 0; i < 5000; i++)
        do_remove(t, model->ids[rng_below(model->n)]);
    check_tree(t);
    fm_btree_free(t);
}

Test(btree, append_out_of_order_is_refused)
{
    struct fm_btree *t;
    cr_assert(fm_btree_new(key_cb, store, true, &t) == FM_OK);
    uint8_t k[8];
    for (uint64_t i = 0; i < 300; i++) {
        be_key(k, i + 10);
        uint64_t id = add_row(k, 8);
        cr_assert(fm_btree_append(t, k, 8, id) == FM_OK);
        store->rows[id].live = true;
        model->ids[model->n++] = id;
    }
    be_key(k, 5);
    cr_assert(fm_btree_append(t, k, 8, 1000) == FM_ERR_STATE);
    be_key(k, 309);
    cr_assert(fm_btree_append(t, k, 8, 1000) == FM_ERR_UNIQUE);
    cr_assert(fm_btree_append(t, k, 7, 1000) == FM_ERR_STATE);
    check_tree(t);
    fm_btree_free(t);

    cr_assert(fm_btree_new(key_cb, store, false, &t) == FM_OK);
    cr_assert(fm_btree_append(t, k, 8, 7) == FM_OK);
    cr_assert(fm_btree_append(t, k, 8, 7) == FM_ERR_STATE);
    cr_assert(fm_btree_append(t, k, 8, 6) == FM_ERR_STATE);
    cr_assert(fm_btree_append(t, k, 8, 8) == FM_OK);
    cr_assert(fm_btree_count(t) == 2);
    fm_btree_free(t);
}

/* Fails the allocation numbered fail_at (0-based) from the reset. */
struct fail_plan {
    size_t n_seen;
    size_t fail_at;
    bool failed;
};

static bool fail_nth(void *ctx, size_t size)
{
    struct fail_plan *fp = ctx;
    (void)size;
    if (fp->n_seen++ == fp->fail_at) {
        fp->failed = true;
        return true;
    }
    return false;
}

static void check_same_as_model(struct fm_btree *t)
{
    check_tree(t);
    struct fm_btree_iter it;
    fm_btree_iter_init(&it, t, NULL, NULL, false);
    uint64_t rowid;
    for (size_t i = 0; i < model->n; i++) {
        cr_assert(fm_btree_iter_next(&it, &rowid));
        cr_assert(rowid == model->ids[i], "seed %llu: entry %zu changed",
                  (unsigned long long)seed, i);
    }
    cr_assert(!fm_btree_iter_next(&it, &rowid));
}

Test(btree, failed_allocation_leaves_tree_unchanged)
{
    struct fm_btree *t;
    struct fail_plan fp = {0, 0, false};
    fm_set_alloc_fail_hook(fail_nth, &fp);
    cr_assert(fm_btree_new(key_cb, store, false, &t) == FM_ERR_NOMEM);
    fm_set_alloc_fail_hook(NULL, NULL);
    cr_assert(fm_btree_new(key_cb, store, false, &t) == FM_OK);
    /* Enough entries for a three-level tree, with keys growing longer so
     * that the scratch buffer grows too. */
    size_t n = 12000;
    size_t n_failures = 0;
    for (size_t i = 0; i < n; i++) {
        uint8_t k[128];
        be_key(k, rng());
        size_t len = 8 + i / 200;
        memset(k + 8, 0x5a, len - 8);
        uint64_t id = add_row(k, len);
        for (size_t fail_at = 0;; fail_at++) {
            fp = (struct fail_plan){0, fail_at, false};
            fm_set_alloc_fail_hook(fail_nth, &fp);
            struct row *r = &store->rows[id];
            fm_status st = fm_btree_insert(t, r->key, r->key_len, id);
            fm_set_alloc_fail_hook(NULL, NULL);
            if (!fp.failed) {
                cr_assert(st == FM_OK);
                break;
            }
            cr_assert(st == FM_ERR_NOMEM, "seed %llu: got %s",
                      (unsigned long long)seed, fm_status_name(st));
            n_failures++;
            check_same_as_model(t);
        }
        size_t pos =
            model_lower(store->rows[id].key, store->rows[id].key_len, id + 1);
        memmove(&model->ids[pos + 1], &model->ids[pos],
                (model->n - pos) * sizeof(model->ids[0]));
        model->ids[pos] = id;
        model->n++;
        store->rows[id].live = true;
    }
    check_same_as_model(t);
    cr_assert(n_failures > 100, "only %zu failures injected", n_failures);
    /* Removes never allocate. */
    fp = (struct fail_plan){0, 0, false};
    fm_set_alloc_fail_hook(fail_nth, &fp);
    while (model->n > n / 2)
        do_remove(t, model->ids[rng_below(model->n)]);
    fm_set_alloc_fail_hook(NULL, NULL);
    cr_assert(!fp.failed);
    check_same_as_model(t);
    fm_btree_free(t);
}

Test(btree, failed_allocation_in_append_leaves_tree_unchanged)
{
    struct fm_btree *t;
    cr_assert(fm_btree_new(key_cb, store, true, &t) == FM_OK);
    struct fail_plan fp;
    for (uint64_t i = 0; i < 12000; i++) {
        uint8_t k[8];
        be_key(k, i);
        uint64_t id = add_row(k, 8);
        for (size_t fail_at = 0;; fail_at++) {
            fp = (struct fail_plan){0, fail_at, false};
            fm_set_alloc_fail_hook(fail_nth, &fp);
            fm_status st = fm_btree_append(t, k, 8, id);
            fm_set_alloc_fail_hook(NULL, NULL);
            if (!fp.failed) {
                cr_assert(st == FM_OK);
                break;
            }
            cr_assert(st == FM_ERR_NOMEM);
            cr_assert(fm_btree_count(t) == model->n);
            if (i % 64 == 0)
                check_same_as_model(t);
        }
        model->ids[model->n++] = id;
        store->rows[id].live = true;
    }
    check_same_as_model(t);
    fm_btree_free(t);
}

/*
 * Grows a tree past three levels and empties it again, in random order or
 * from the left, so that inner nodes split, borrow and merge.
 */
enum shrink_order {
    SHRINK_RANDOM,
    SHRINK_FROM_LEFT,
    SHRINK_FROM_MIDDLE,
};

static void deep_run(bool long_keys, enum shrink_order order)
{
    struct fm_btree *t;
    cr_assert(fm_btree_new(key_cb, store, false, &t) == FM_OK);
    size_t n = 25000;
    for (size_t i = 0; i < n; i++) {
        uint8_t k[16];
        memcpy(k, "deep-key", 8);
        be_key(long_keys ? k + 8 : k, rng() % 20000);
        do_insert(t, false, add_row(k, long_keys ? 16 : 8));
        if (i % 997 == 0)
            check_tree(t);
    }
    check_tree(t);
    do_range(t, NULL, NULL, true);
    for (size_t i = 0; model->n > 0; i++) {
        size_t at = rng_below(model->n);
        if (order == SHRINK_FROM_LEFT)
            at = rng_below(model->n < 50 ? model->n : 50);
        else if (order == SHRINK_FROM_MIDDLE)
            at = model->n / 2;
        do_remove(t, model->ids[at]);
        if (i % 997 == 0) {
            check_tree(t);
            struct fm_btree_bound lo = {NULL, 0, false};
            uint8_t lo_buf[32];
            random_bound(&lo, lo_buf, long_keys);
            do_range(t, &lo, NULL, rng_below(2) == 0);
        }
    }
    check_tree(t);
    cr_assert(fm_btree_memory_bytes(t) < 1024);
    fm_btree_free(t);
}

Test(btree, deep_tree_shrinks_in_random_order)
{
    deep_run(false, SHRINK_RANDOM);
}

Test(btree, deep_tree_shrinks_from_the_left)
{
    deep_run(false, SHRINK_FROM_LEFT);
}

Test(btree, deep_tree_shrinks_from_the_middle)
{
    deep_run(false, SHRINK_FROM_MIDDLE);
}

Test(btree, deep_tree_of_long_keys_shrinks)
{
    deep_run(true, SHRINK_RANDOM);
}

Test(btree, appended_tree_shrinks_from_the_right)
{
    struct fm_btree *t;
    cr_assert(fm_btree_new(key_cb, store, true, &t) == FM_OK);
    /* One entry more than two full levels hold: the last leaf and its
     * parent hold one entry each. */
    size_t n = 126 * 84 + 1;
    for (uint64_t i = 0; i < n; i++) {
        uint8_t k[8];
        be_key(k, i);
        uint64_t id = add_row(k, 8);
        cr_assert(fm_btree_append(t, k, 8, id) == FM_OK);
        store->rows[id].live = true;
        model->ids[model->n++] = id;
    }
    check_tree(t);
    double per_entry = (double)fm_btree_memory_bytes(t) / (double)n;
    cr_assert(per_entry < 17.0, "%.2f bytes per entry", per_entry);
    for (size_t i = 0; model->n > 0; i++) {
        do_remove(t, model->ids[model->n - 1]);
        if (i % 331 == 0 || model->n + 2 >= n)
            check_tree(t);
    }
    check_tree(t);
    fm_btree_free(t);
}

static size_t rowid_key_cb(void *ctx, uint64_t rowid, uint8_t *buf, size_t cap)
{
    (void)ctx;
    if (cap >= 8)
        be_key(buf, rowid);
    return 8;
}

Test(btree, underfull_inner_node_refills_from_left_sibling)
{
    struct fm_btree *t;
    cr_assert(fm_btree_new(rowid_key_cb, NULL, true, &t) == FM_OK);
    /* Full nodes over four levels: the first level-2 node has 84 full
     * children and a right neighbour, so its last child is not the last of
     * its level. */
    uint64_t per_inner = 126 * 84;
    uint64_t n = per_inner * 84 + 1;
    for (uint64_t i = 0; i < n; i++) {
        uint8_t k[8];
        be_key(k, i);
        cr_assert(fm_btree_append(t, k, 8, i) == FM_OK);
    }
    struct fm_error err = {0};
    cr_assert(fm_btree_check(t, &err) == FM_OK, "%s", err.msg);
    /* Empty most of that last child; it falls below half and takes
     * children from its left sibling. */
    uint64_t first = per_inner * 83;
    for (uint64_t i = first; i < first + per_inner * 3 / 4; i++) {
        uint8_t k[8];
        be_key(k, i);
        cr_assert(fm_btree_remove(t, k, 8, i));
    }
    cr_assert(fm_btree_check(t, &err) == FM_OK, "%s", err.msg);
    cr_assert(fm_btree_count(t) == n - per_inner * 3 / 4);
    fm_btree_free(t);
}

Test(btree, check_detects_a_key_changed_behind_its_back)
{
    struct fm_btree *t;
    cr_assert(fm_btree_new(key_cb, store, false, &t) == FM_OK);
    for (uint64_t i = 0; i < 300; i++) {
        uint8_t k[8];
        be_key(k, i * 2);
        do_insert(t, false, add_row(k, 8));
    }
    check_tree(t);
    /* The row changes its key while indexed: the hint no longer matches. */
    struct row *r = &store->rows[100];
    r->key[7] ^= 1;
    struct fm_error err = {0};
    cr_assert(fm_btree_check(t, &err) == FM_ERR_CORRUPT);
    cr_assert(strstr(err.msg, "row 100") != NULL, "message: %s", err.msg);
    fm_btree_free(t);
}

/*
 * Overflow into siblings and three-way splits. These trees key each row by
 * its rowid (rowid_key_cb), built by append from the even rowids 0, 2, ...,
 * so that every leaf is full and any odd rowid lands inside a chosen leaf.
 * Leaf i of such a tree holds rowids 252 * i to 252 * i + 250, and the
 * leaves under inner node j of level 1 are 84 * j to 84 * j + 83.
 */
enum {
    LEAF_ENTRIES = 126,
    INNER_CHILDREN = 84,
};

static struct fm_btree *even_tree(size_t n)
{
    struct fm_btree *t;
    cr_assert(fm_btree_new(rowid_key_cb, NULL, true, &t) == FM_OK);
    for (uint64_t i = 0; i < n; i++) {
        uint8_t k[8];
        be_key(k, 2 * i);
        cr_assert(fm_btree_append(t, k, 8, 2 * i) == FM_OK);
    }
    return t;
}

static fm_status insert_rowid(struct fm_btree *t, uint64_t rowid)
{
    uint8_t k[8];
    be_key(k, rowid);
    return fm_btree_insert(t, k, 8, rowid);
}

static bool remove_rowid(struct fm_btree *t, uint64_t rowid)
{
    uint8_t k[8];
    be_key(k, rowid);
    return fm_btree_remove(t, k, 8, rowid);
}

/* An odd rowid in the middle of leaf i of an even tree. */
static uint64_t inside_leaf(size_t i)
{
    return 2 * (LEAF_ENTRIES * i + LEAF_ENTRIES / 2) + 1;
}

/* Checks the tree and that it holds n rowids in increasing order. */
static void check_rowid_tree(struct fm_btree *t, size_t n)
{
    struct fm_error err = {0};
    cr_assert(fm_btree_check(t, &err) == FM_OK, "check failed: %s", err.msg);
    cr_assert(fm_btree_count(t) == n, "count %zu, expected %zu",
              fm_btree_count(t), n);
    struct fm_btree_iter it;
    fm_btree_iter_init(&it, t, NULL, NULL, false);
    uint64_t rowid;
    size_t seen = 0;
    uint64_t prev = 0;
    while (fm_btree_iter_next(&it, &rowid)) {
        cr_assert(seen == 0 || rowid > prev, "row %llu after %llu",
                  (unsigned long long)rowid, (unsigned long long)prev);
        prev = rowid;
        seen++;
    }
    cr_assert(seen == n, "iterated %zu of %zu rows", seen, n);
}

/* Bytes that one more leaf, and one more inner node, add to a tree. */
static size_t leaf_bytes(void)
{
    struct fm_btree *t = even_tree(0);
    size_t empty = fm_btree_memory_bytes(t);
    fm_btree_free(t);
    t = even_tree(1);
    size_t one_leaf = fm_btree_memory_bytes(t);
    fm_btree_free(t);
    return one_leaf - empty;
}

static size_t inner_bytes(void)
{
    struct fm_btree *t = even_tree(LEAF_ENTRIES);
    size_t one_leaf = fm_btree_memory_bytes(t);
    fm_btree_free(t);
    /* Two leaves under a root. */
    t = even_tree(LEAF_ENTRIES + 1);
    size_t with_root = fm_btree_memory_bytes(t);
    fm_btree_free(t);
    return with_root - one_leaf - leaf_bytes();
}

static bool fail_every(void *ctx, size_t size)
{
    (void)size;
    *(bool *)ctx = true;
    return true;
}

/* Inserts rowid while every allocation fails: it must need none. */
static void insert_without_allocating(struct fm_btree *t, uint64_t rowid)
{
    bool asked = false;
    fm_set_alloc_fail_hook(fail_every, &asked);
    fm_status st = insert_rowid(t, rowid);
    fm_set_alloc_fail_hook(NULL, NULL);
    cr_assert(st == FM_OK && !asked, "insert of %llu gave %s, allocated %d",
              (unsigned long long)rowid, fm_status_name(st), asked);
}

Test(btree, full_leaf_shifts_into_right_sibling_with_room)
{
    /* A full first leaf and a half-full last one. */
    size_t n = LEAF_ENTRIES + LEAF_ENTRIES / 2;
    struct fm_btree *t = even_tree(n);
    size_t mem = fm_btree_memory_bytes(t);
    insert_without_allocating(t, inside_leaf(0));
    /* The first leaf's last entries moved right, and so do their kin. */
    insert_without_allocating(t, 2 * (LEAF_ENTRIES - 1) + 1);
    cr_assert(fm_btree_memory_bytes(t) == mem);
    check_rowid_tree(t, n + 2);
    /* Both leaves now have room for the rest of what two leaves hold. */
    for (uint64_t i = 0; i < LEAF_ENTRIES / 2 - 2; i++) {
        insert_without_allocating(t, 4 * i + 1);
        check_rowid_tree(t, n + 3 + i);
    }
    fm_btree_free(t);
}

Test(btree, full_leaf_shifts_into_left_sibling_with_room)
{
    struct fm_btree *t = even_tree(2 * LEAF_ENTRIES);
    /* Make room in the first leaf, leaving it over half full. */
    for (uint64_t i = 0; i < 20; i++)
        cr_assert(remove_rowid(t, 2 * i));
    size_t n = 2 * LEAF_ENTRIES - 20;
    check_rowid_tree(t, n);
    size_t mem = fm_btree_memory_bytes(t);
    /* The last leaf is full, and the entry is not past its end. */
    insert_without_allocating(t, inside_leaf(1));
    /* Its smallest entry now lives in the first leaf. */
    insert_without_allocating(t, 2 * LEAF_ENTRIES + 1);
    cr_assert(fm_btree_memory_bytes(t) == mem);
    check_rowid_tree(t, n + 2);
    fm_btree_free(t);
}

/*
 * Two full leaves and one more entry become three leaves, each with room
 * for a third of a leaf more: n_more inserts into each need no node.
 */
static void check_three_way_leaf_split(size_t full_leaf)
{
    size_t n = 2 * LEAF_ENTRIES;
    struct fm_btree *t = even_tree(n);
    size_t mem = fm_btree_memory_bytes(t);
    cr_assert(insert_rowid(t, inside_leaf(full_leaf)) == FM_OK);
    cr_assert(fm_btree_memory_bytes(t) == mem + leaf_bytes());
    check_rowid_tree(t, n + 1);
    /* The leaves hold entries ranked [0, 84), [84, 168) and [168, 253). */
    size_t n_more = LEAF_ENTRIES / 3 - 1;
    static const size_t first_rank[] = {10, 94, 180};
    for (size_t leaf = 0; leaf < 3; leaf++) {
        for (size_t i = 0; i < n_more; i++) {
            uint64_t rowid = 2 * (first_rank[leaf] + i) + 1;
            if (rowid != inside_leaf(full_leaf))
                insert_without_allocating(t, rowid);
        }
    }
    cr_assert(fm_btree_memory_bytes(t) == mem + leaf_bytes());
    check_rowid_tree(t, fm_btree_count(t));
    fm_btree_free(t);
}

Test(btree, two_full_leaves_split_three_ways_with_right_sibling)
{
    check_three_way_leaf_split(0);
}

Test(btree, two_full_leaves_split_three_ways_with_left_sibling)
{
    /* The last leaf has no right sibling. */
    check_three_way_leaf_split(1);
}

Test(btree, full_inner_node_shifts_into_right_sibling)
{
    /* A full level-1 node and one with ten leaves, all leaves full. */
    size_t n = LEAF_ENTRIES * (INNER_CHILDREN + 10);
    struct fm_btree *t = even_tree(n);
    size_t mem = fm_btree_memory_bytes(t);
    /* A leaf split three ways gives the full inner node one more child. */
    cr_assert(insert_rowid(t, inside_leaf(40)) == FM_OK);
    cr_assert(fm_btree_memory_bytes(t) == mem + leaf_bytes(),
              "grew by %zu bytes", fm_btree_memory_bytes(t) - mem);
    check_rowid_tree(t, n + 1);
    fm_btree_free(t);
}

Test(btree, full_inner_node_shifts_into_left_sibling)
{
    /* Two full level-1 nodes; then the first loses a few leaves. */
    size_t n = LEAF_ENTRIES * INNER_CHILDREN * 2;
    struct fm_btree *t = even_tree(n);
    size_t mem = fm_btree_memory_bytes(t);
    size_t n_removed = 3 * LEAF_ENTRIES;
    for (uint64_t i = 0; i < n_removed; i++)
        cr_assert(remove_rowid(t, 2 * (LEAF_ENTRIES * 3 + i)));
    check_rowid_tree(t, n - n_removed);
    cr_assert(fm_btree_memory_bytes(t) + leaf_bytes() <= mem);
    mem = fm_btree_memory_bytes(t);
    /* A leaf under the second, last one splits three ways. */
    cr_assert(insert_rowid(t, inside_leaf(INNER_CHILDREN + 40)) == FM_OK);
    cr_assert(fm_btree_memory_bytes(t) == mem + leaf_bytes(),
              "grew by %zu bytes", fm_btree_memory_bytes(t) - mem);
    check_rowid_tree(t, n - n_removed + 1);
    fm_btree_free(t);
}

Test(btree, full_inner_nodes_split_three_ways)
{
    /* Three full level-1 nodes; the middle one overflows. */
    size_t n = LEAF_ENTRIES * INNER_CHILDREN * 3;
    struct fm_btree *t = even_tree(n);
    size_t mem = fm_btree_memory_bytes(t);
    cr_assert(insert_rowid(t, inside_leaf(INNER_CHILDREN + 40)) == FM_OK);
    cr_assert(fm_btree_memory_bytes(t) == mem + leaf_bytes() + inner_bytes(),
              "grew by %zu bytes", fm_btree_memory_bytes(t) - mem);
    check_rowid_tree(t, n + 1);
    /* The last one too, with its left sibling. */
    cr_assert(insert_rowid(t, inside_leaf(3 * INNER_CHILDREN - 40)) == FM_OK);
    check_rowid_tree(t, n + 2);
    fm_btree_free(t);
}

/*
 * Injects a failure at each allocation of one insert in turn, checking that
 * each failure leaves the tree as it was, then lets it succeed; returns the
 * number of allocations the insert made.
 */
static size_t insert_failing_each_allocation(struct fm_btree *t, uint64_t rowid)
{
    size_t n = fm_btree_count(t);
    size_t mem = fm_btree_memory_bytes(t);
    for (size_t fail_at = 0;; fail_at++) {
        struct fail_plan fp = {0, fail_at, false};
        fm_set_alloc_fail_hook(fail_nth, &fp);
        fm_status st = insert_rowid(t, rowid);
        fm_set_alloc_fail_hook(NULL, NULL);
        if (!fp.failed) {
            cr_assert(st == FM_OK);
            check_rowid_tree(t, n + 1);
            return fail_at;
        }
        cr_assert(st == FM_ERR_NOMEM);
        cr_assert(fm_btree_memory_bytes(t) == mem);
        check_rowid_tree(t, n);
        uint64_t found;
        uint8_t k[8];
        be_key(k, rowid);
        cr_assert(!fm_btree_find(t, k, 8, &found));
    }
}

Test(btree, failed_allocation_in_three_way_splits_leaves_tree_unchanged)
{
    /* A full root over full leaves: leaf, inner node and new root. */
    struct fm_btree *t = even_tree(LEAF_ENTRIES * INNER_CHILDREN);
    cr_assert(insert_failing_each_allocation(t, inside_leaf(40)) == 3);
    fm_btree_free(t);
    /* Three full level-1 nodes: a leaf and an inner node. */
    t = even_tree(LEAF_ENTRIES * INNER_CHILDREN * 3);
    cr_assert(insert_failing_each_allocation(
                  t, inside_leaf(INNER_CHILDREN + 40)) == 2);
    cr_assert(insert_failing_each_allocation(t, inside_leaf(20)) == 1);
    fm_btree_free(t);
}

/* Inserts the rowids below n in a scrambled order (n a power of two). */
static void insert_scrambled(struct fm_btree *t, uint64_t n, size_t check_to)
{
    for (uint64_t i = 0; i < n; i++) {
        uint64_t rowid = (i * 0x9e3779b97f4a7c15ull + seed) & (n - 1);
        cr_assert(insert_rowid(t, rowid) == FM_OK);
        if (i < check_to || i % 4099 == 0) {
            struct fm_error err = {0};
            cr_assert(fm_btree_check(t, &err) == FM_OK,
                      "seed %llu: check failed after %llu inserts: %s",
                      (unsigned long long)seed, (unsigned long long)i + 1,
                      err.msg);
        }
    }
}

Test(btree, random_inserts_fill_nodes_over_80_percent)
{
    struct fm_btree *t;
    cr_assert(fm_btree_new(rowid_key_cb, NULL, true, &t) == FM_OK);
    size_t n = (size_t)1 << 18;
    insert_scrambled(t, n, 2000);
    check_rowid_tree(t, n);
    /* An entry is 16 bytes; at 80% fill it costs 20. */
    double per_entry = (double)fm_btree_memory_bytes(t) / (double)n;
    cr_assert(per_entry <= 20.0, "seed %llu: %.2f bytes per entry",
              (unsigned long long)seed, per_entry);
    /* Removing half in random order keeps the tree sound. */
    for (uint64_t i = 0; i < n / 2; i++) {
        uint64_t rowid = (i * 0x2545f4914f6cdd1dull + seed) & (n - 1);
        cr_assert(remove_rowid(t, rowid));
    }
    check_rowid_tree(t, n / 2);
    fm_btree_free(t);
}

Test(btree, random_inserts_against_model_fill_nodes_over_80_percent)
{
    struct fm_btree *t;
    cr_assert(fm_btree_new(key_cb, store, false, &t) == FM_OK);
    size_t n = 40000;
    for (size_t i = 0; i < n; i++) {
        uint8_t k[16];
        be_key(k, rng());
        size_t len = 8 + rng_below(9);
        memset(k + 8, (int)rng_below(3), len - 8);
        do_insert(t, false, add_row(k, len));
        if (i < 3000 || i % 997 == 0)
            check_tree(t);
    }
    check_same_as_model(t);
    double per_entry = (double)fm_btree_memory_bytes(t) / (double)n;
    cr_assert(per_entry <= 20.5, "seed %llu: %.2f bytes per entry",
              (unsigned long long)seed, per_entry);
    fm_btree_free(t);
}

/* fm_btree_reserve: a bulk build from the block allocates nothing, nodes
 * freed later are reused, and a failed reserve changes nothing. */
Test(btree, reserved_block_holds_a_bulk_build_and_reuses_freed_nodes)
{
    struct fm_btree *t;
    cr_assert(fm_btree_new(rowid_key_cb, NULL, true, &t) == FM_OK);
    bool asked = false;
    fm_set_alloc_fail_hook(fail_every, &asked);
    cr_assert(fm_btree_reserve(t, 50000) == FM_ERR_NOMEM);
    fm_set_alloc_fail_hook(NULL, NULL);
    size_t empty = fm_btree_memory_bytes(t);
    cr_assert(fm_btree_reserve(t, 50000) == FM_OK);
    cr_assert_gt(fm_btree_memory_bytes(t), empty + 50000 * 16);
    uint8_t k[8];
    be_key(k, 0);
    cr_assert(fm_btree_append(t, k, 8, 0) == FM_OK); /* grows scratch */
    asked = false;
    fm_set_alloc_fail_hook(fail_every, &asked);
    for (uint64_t i = 1; i < 50000; i++) {
        be_key(k, 2 * i);
        fm_status st = fm_btree_append(t, k, 8, 2 * i);
        cr_assert(st == FM_OK, "append %llu: %s", (unsigned long long)i,
                  fm_status_name(st));
    }
    fm_set_alloc_fail_hook(NULL, NULL);
    cr_assert(!asked, "the bulk build allocated");
    check_rowid_tree(t, 50000);
    /* Removing most entries frees nodes into the block's free list. */
    for (uint64_t i = 0; i < 50000; i++)
        if (i % 10 != 0)
            cr_assert(remove_rowid(t, 2 * i));
    check_rowid_tree(t, 5000);
    /* Inserts that split nodes take freed slots, not malloc. */
    asked = false;
    fm_set_alloc_fail_hook(fail_every, &asked);
    for (uint64_t i = 0; i < 50000; i += 10)
        for (uint64_t j = 1; j <= 4; j++)
            cr_assert(insert_rowid(t, 2 * (i + j)) == FM_OK);
    fm_set_alloc_fail_hook(NULL, NULL);
    cr_assert(!asked, "inserts allocated with freed slots at hand");
    check_rowid_tree(t, 25000);
    fm_btree_free(t);
}
