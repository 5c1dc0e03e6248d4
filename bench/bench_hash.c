/*
 * bench_hash.c: throughput and insert latency of the hash index.
 *
 * For 1M and 10M distinct 16-byte keys it reports inserts, hit and miss
 * finds and removes per second, then builds the index again timing every
 * insert on its own to show that incremental resizing leaves no stall: p50,
 * p99, p99.9 and the maximum, overall and for the inserts that ran while a
 * resize was migrating. For scale it also times one full rehash of the final
 * table (what a stop-the-world resize would cost) and reports bytes per
 * entry. The rows live in a flat array of keys, so every key comparison
 * costs the index a cache miss into the row store, as it would in the
 * engine. Output is plain text; nothing is judged (STYLE.md section 8).
 *
 * Usage: bench_hash [n ...]   (default: 1000000 10000000)
 */
#include "index/hash.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

enum { KEY_LEN = 16 };

/* The row store: row r's key is keys[r * KEY_LEN ..]. */
struct rows {
    uint8_t *keys;
    size_t n_rows;
};

static size_t rows_key_fn(void *ctx, uint64_t rowid, uint8_t *buf, size_t cap)
{
    const struct rows *rows = ctx;
    if (cap >= KEY_LEN)
        memcpy(buf, rows->keys + rowid * KEY_LEN, KEY_LEN);
    return KEY_LEN;
}

static uint64_t mix64(uint64_t z)
{
    z += 0x9e3779b97f4a7c15u;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
    return z ^ (z >> 31);
}

/* Key number v: distinct for distinct v, random-looking bytes. */
static void make_key(uint8_t *out, uint64_t v)
{
    fm_store_be64(out, mix64(v));
    fm_store_be64(out + 8, v);
}

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void die(const char *what, fm_status st)
{
    fprintf(stderr, "bench_hash: %s: %s\n", what, fm_status_message(st));
    exit(1);
}

static double mops(size_t n, int64_t ns)
{
    return (double)n / ((double)ns / 1e9) / 1e6;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a;
    uint32_t y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

/* Sorts lat[0..n) and prints its percentiles in microseconds. */
static void print_latency(const char *label, uint32_t *lat, size_t n)
{
    if (n == 0) {
        printf("  %-28s (none)\n", label);
        return;
    }
    qsort(lat, n, sizeof(*lat), cmp_u32);
    printf("  %-28s n=%-9zu p50 %.3f  p99 %.3f  p99.9 %.3f  max %.1f us\n",
           label, n, lat[n / 2] / 1e3, lat[n * 99 / 100] / 1e3,
           lat[n * 999 / 1000] / 1e3, lat[n - 1] / 1e3);
}

static void bench_throughput(struct rows *rows, size_t n)
{
    struct fm_hash *h;
    fm_status st = fm_hash_new(rows_key_fn, rows, true, &h);
    if (st != FM_OK)
        die("new", st);
    uint8_t key[KEY_LEN];

    int64_t t0 = now_ns();
    for (uint64_t r = 1; r <= n; r++) {
        st = fm_hash_insert(h, rows->keys + r * KEY_LEN, KEY_LEN, r);
        if (st != FM_OK)
            die("insert", st);
    }
    int64_t t1 = now_ns();
    size_t bytes = fm_hash_memory_bytes(h);

    /* Hits in a scattered order, so that neither table nor rows are hot. */
    uint64_t found = 0;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t r = 1 + mix64(i) % n;
        uint64_t rowid;
        found += fm_hash_find(h, rows->keys + r * KEY_LEN, KEY_LEN, &rowid);
    }
    int64_t t2 = now_ns();
    uint64_t missed = 0;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t rowid;
        make_key(key, n + 1 + i);
        missed += !fm_hash_find(h, key, KEY_LEN, &rowid);
    }
    int64_t t3 = now_ns();
    for (uint64_t r = 1; r <= n; r++) {
        if (!fm_hash_remove(h, rows->keys + r * KEY_LEN, KEY_LEN, r))
            die("remove", FM_ERR_NOTFOUND);
    }
    int64_t t4 = now_ns();
    if (found != n || missed != n || fm_hash_count(h) != 0)
        die("lookup results", FM_ERR_STATE);

    printf("  insert     %8.2f Mops/s  (%.1f ns/op, growing from empty)\n",
           mops(n, t1 - t0), (double)(t1 - t0) / (double)n);
    printf("  find hit   %8.2f Mops/s  (%.1f ns/op)\n", mops(n, t2 - t1),
           (double)(t2 - t1) / (double)n);
    printf("  find miss  %8.2f Mops/s  (%.1f ns/op)\n", mops(n, t3 - t2),
           (double)(t3 - t2) / (double)n);
    printf("  remove     %8.2f Mops/s  (%.1f ns/op)\n", mops(n, t4 - t3),
           (double)(t4 - t3) / (double)n);
    printf("  memory     %zu bytes, %.1f bytes/entry at %zu entries\n", bytes,
           (double)bytes / (double)n, n);
    fm_hash_free(h);

    st = fm_hash_new(rows_key_fn, rows, true, &h);
    if (st != FM_OK)
        die("new", st);
    t0 = now_ns();
    st = fm_hash_reserve(h, n);
    if (st != FM_OK)
        die("reserve", st);
    for (uint64_t r = 1; r <= n; r++) {
        st = fm_hash_insert(h, rows->keys + r * KEY_LEN, KEY_LEN, r);
        if (st != FM_OK)
            die("insert", st);
    }
    t1 = now_ns();
    printf("  insert     %8.2f Mops/s  (after fm_hash_reserve(n))\n",
           mops(n, t1 - t0));
    fm_hash_free(h);
}

static void bench_latency(struct rows *rows, size_t n)
{
    struct fm_hash *h;
    fm_status st = fm_hash_new(rows_key_fn, rows, true, &h);
    if (st != FM_OK)
        die("new", st);
    uint32_t *all = malloc(n * sizeof(*all));
    uint32_t *resizing = malloc(n * sizeof(*resizing));
    uint32_t *steady = malloc(n * sizeof(*steady));
    uint32_t *finishing = malloc(64 * sizeof(*finishing));
    if (all == NULL || resizing == NULL || steady == NULL || finishing == NULL)
        die("latency arrays", FM_ERR_NOMEM);
    size_t n_resizing = 0;
    size_t n_steady = 0;
    size_t n_finishing = 0;
    size_t n_resizes = 0;
    struct fm_hash_stats stats = {0};
    for (uint64_t r = 1; r <= n; r++) {
        bool was_resizing = stats.n_old_slots != 0;
        int64_t t0 = now_ns();
        st = fm_hash_insert(h, rows->keys + r * KEY_LEN, KEY_LEN, r);
        int64_t t1 = now_ns();
        if (st != FM_OK)
            die("insert", st);
        int64_t d = t1 - t0;
        uint32_t lat = d > UINT32_MAX ? UINT32_MAX : (uint32_t)d;
        all[r - 1] = lat;
        fm_hash_stats(h, &stats);
        if (stats.n_old_slots != 0) {
            n_resizes += !was_resizing;
            resizing[n_resizing++] = lat;
        } else if (was_resizing && n_finishing < 64) {
            /* This insert freed the drained old table. */
            finishing[n_finishing++] = lat;
        } else {
            steady[n_steady++] = lat;
        }
    }
    printf("  %zu resizes while inserting %zu keys; per-insert latency:\n",
           n_resizes, n);
    print_latency("all inserts", all, n);
    print_latency("inserts during a resize", resizing, n_resizing);
    print_latency("inserts ending a resize", finishing, n_finishing);
    print_latency("inserts with no resize", steady, n_steady);

    /* What one stop-the-world rehash of this table would cost. */
    fm_hash_stats(h, &stats);
    int64_t t0 = now_ns();
    st = fm_hash_reserve(h, stats.n_slots);
    int64_t t1 = now_ns();
    if (st != FM_OK)
        die("reserve", st);
    printf("  a full rehash of all %zu entries instead: %.1f ms\n", n,
           (double)(t1 - t0) / 1e6);
    free(all);
    free(resizing);
    free(steady);
    free(finishing);
    fm_hash_free(h);
}

int main(int argc, char **argv)
{
    size_t sizes[8] = {1000000, 10000000};
    size_t n_sizes = 2;
    if (argc > 1) {
        n_sizes = 0;
        for (int i = 1; i < argc && n_sizes < FM_ARRAY_LEN(sizes); i++)
            sizes[n_sizes++] = (size_t)strtoull(argv[i], NULL, 10);
    }
    for (size_t i = 0; i < n_sizes; i++) {
        size_t n = sizes[i];
        struct rows rows = {.n_rows = n + 1};
        rows.keys = malloc((n + 1) * KEY_LEN);
        if (rows.keys == NULL)
            die("row store", FM_ERR_NOMEM);
        for (uint64_t r = 1; r <= n; r++)
            make_key(rows.keys + r * KEY_LEN, r);
        printf("hash index, %zu keys of %d bytes, unique\n", n, KEY_LEN);
        bench_throughput(&rows, n);
        bench_latency(&rows, n);
        free(rows.keys);
    }
    return 0;
}
