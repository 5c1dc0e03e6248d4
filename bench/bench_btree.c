/*
 * bench_btree.c: throughput and latency of the B+tree with 8-byte keys.
 *
 * For 1M and 10M entries: random and sequential inserts, bulk append,
 * point finds (ops/s, and p50/p99 latency from per-call timing), range
 * scans, random removes, and bytes per entry as fm_btree_memory_bytes
 * reports them, with the share of that memory the 16-byte entries fill
 * (leaf headers and inner nodes keep it a little under 100%). Keys
 * are computed from row ids, so the key callback costs nothing and, with 8-byte
 * keys, is never called anyway. An optional argument overrides the sizes:
 * bench_btree 100000 2000000.
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "index/btree.h"

enum {
    ENTRY_BYTES = 16,
    N_FINDS = 2000000,
    N_RANGES = 20000,
    RANGE_ROWS = 1000,
};

/* A bijection on 64 bits (the splitmix64 finaliser): random-order keys. */
static uint64_t mix(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Row r has key mix(r) when ctx is non-NULL, else key r. */
static uint64_t key_of(const void *ctx, uint64_t rowid)
{
    return ctx != NULL ? mix(rowid) : rowid;
}

static size_t key_cb(void *ctx, uint64_t rowid, uint8_t *buf, size_t cap)
{
    if (cap >= 8)
        fm_store_be64(buf, key_of(ctx, rowid));
    return 8;
}

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static double per_sec(size_t n, int64_t ns)
{
    return ns > 0 ? (double)n * 1e9 / (double)ns : 0.0;
}

static struct fm_btree *new_tree(void *ctx)
{
    struct fm_btree *t;
    if (fm_btree_new(key_cb, ctx, true, &t) != FM_OK) {
        fprintf(stderr, "bench_btree: out of memory\n");
        exit(1);
    }
    return t;
}

static void must(fm_status st)
{
    if (st != FM_OK) {
        fprintf(stderr, "bench_btree: %s\n", fm_status_message(st));
        exit(1);
    }
}

/* Builds a tree of n rows with insert (or append); prints the rate. */
static struct fm_btree *build(const char *what, void *ctx, size_t n,
                              bool append)
{
    struct fm_btree *t = new_tree(ctx);
    int64_t t0 = now_ns();
    for (uint64_t r = 0; r < n; r++) {
        uint8_t k[8];
        fm_store_be64(k, key_of(ctx, r));
        must(append ? fm_btree_append(t, k, 8, r)
                    : fm_btree_insert(t, k, 8, r));
    }
    int64_t ns = now_ns() - t0;
    double per_entry = (double)fm_btree_memory_bytes(t) / (double)n;
    printf(
        "  %-22s %12.0f ops/s  %6.1f ns/op  %6.2f bytes/entry  %5.1f%% fill\n",
        what, per_sec(n, ns), (double)ns / (double)n, per_entry,
        100.0 * ENTRY_BYTES / per_entry);
    return t;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a;
    int64_t y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* Random point finds of present keys: throughput, then timed one by one. */
static void bench_finds(struct fm_btree *t, void *ctx, size_t n)
{
    uint64_t sink = 0;
    int64_t t0 = now_ns();
    for (size_t i = 0; i < N_FINDS; i++) {
        uint8_t k[8];
        uint64_t rowid = 0;
        fm_store_be64(k, key_of(ctx, mix(i + 1) % n));
        if (!fm_btree_find(t, k, 8, &rowid))
            must(FM_ERR_NOTFOUND);
        sink += rowid;
    }
    int64_t ns = now_ns() - t0;
    int64_t *lat = malloc(N_FINDS * sizeof(*lat));
    if (lat == NULL)
        must(FM_ERR_NOMEM);
    for (size_t i = 0; i < N_FINDS; i++) {
        uint8_t k[8];
        uint64_t rowid = 0;
        fm_store_be64(k, key_of(ctx, mix(i + 7) % n));
        int64_t a = now_ns();
        fm_btree_find(t, k, 8, &rowid);
        lat[i] = now_ns() - a;
        sink += rowid;
    }
    qsort(lat, N_FINDS, sizeof(*lat), cmp_i64);
    printf("  %-22s %12.0f ops/s  %6.1f ns/op  p50 %lld ns  p99 %lld ns"
           "  (sink %llu)\n",
           "find (random)", per_sec(N_FINDS, ns), (double)ns / N_FINDS,
           (long long)lat[N_FINDS / 2], (long long)lat[N_FINDS / 100 * 99],
           (unsigned long long)(sink & 1));
    free(lat);
}

/* Short ranges at random starts, then one full scan each way. */
static void bench_scans(struct fm_btree *t, size_t n)
{
    size_t rows = 0;
    uint64_t sink = 0;
    int64_t t0 = now_ns();
    for (size_t i = 0; i < N_RANGES; i++) {
        uint8_t lo_key[8];
        fm_store_be64(lo_key, mix(i) % n);
        struct fm_btree_bound lo = {lo_key, 8, true};
        struct fm_btree_iter it;
        fm_btree_iter_init(&it, t, &lo, NULL, false);
        uint64_t rowid;
        for (size_t j = 0; j < RANGE_ROWS && fm_btree_iter_next(&it, &rowid);
             j++) {
            sink += rowid;
            rows++;
        }
    }
    int64_t ns = now_ns() - t0;
    printf("  %-22s %12.0f rows/s  (%d ranges of %d)\n", "range scan",
           per_sec(rows, ns), N_RANGES, RANGE_ROWS);
    for (int reverse = 0; reverse < 2; reverse++) {
        struct fm_btree_iter it;
        uint64_t rowid;
        rows = 0;
        t0 = now_ns();
        fm_btree_iter_init(&it, t, NULL, NULL, reverse);
        while (fm_btree_iter_next(&it, &rowid)) {
            sink += rowid;
            rows++;
        }
        ns = now_ns() - t0;
        printf("  %-22s %12.0f rows/s  (sink %llu)\n",
               reverse ? "full scan (reverse)" : "full scan", per_sec(rows, ns),
               (unsigned long long)(sink & 1));
    }
}

/* Removes every other row in random order. */
static void bench_removes(struct fm_btree *t, void *ctx, size_t n)
{
    size_t n_removed = 0;
    int64_t t0 = now_ns();
    for (uint64_t r = 0; r < n; r += 2) {
        uint8_t k[8];
        fm_store_be64(k, key_of(ctx, r));
        n_removed += fm_btree_remove(t, k, 8, r);
    }
    int64_t ns = now_ns() - t0;
    printf("  %-22s %12.0f ops/s  %6.1f ns/op  %6.2f bytes/entry after\n",
           "remove (half)", per_sec(n_removed, ns),
           (double)ns / (double)n_removed,
           (double)fm_btree_memory_bytes(t) / (double)fm_btree_count(t));
}

static void bench_size(size_t n)
{
    static int random_ctx;
    printf("btree, %zu entries, 8-byte keys\n", n);
    struct fm_btree *t = build("insert (sequential)", NULL, n, false);
    fm_btree_free(t);
    t = build("append (bulk)", NULL, n, true);
    bench_scans(t, n);
    fm_btree_free(t);
    t = build("insert (random)", &random_ctx, n, false);
    bench_finds(t, &random_ctx, n);
    bench_removes(t, &random_ctx, n);
    fm_btree_free(t);
}

int main(int argc, char **argv)
{
    if (argc > 1) {
        for (int i = 1; i < argc; i++)
            bench_size((size_t)strtoull(argv[i], NULL, 10));
        return 0;
    }
    bench_size(1000000);
    bench_size(10000000);
    return 0;
}
