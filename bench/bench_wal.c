/*
 * bench_wal.c: throughput and latency of the WAL and the snapshot writer.
 *
 * Usage: bench_wal [DIR] [SECONDS_PER_CASE]
 *
 * WAL: ~100-byte records appended in groups of 1, 16, 64 and 256 with one
 * fm_wal_flush per group (the server's group commit: one flush per
 * event-loop turn), under each fsync policy. Reports records/s, flushes/s
 * and p50/p99 flush latency; then, under always, the preallocated segment
 * (wal.c) against plain appends, alternating. Snapshot: 64 MiB of row-like text
 * in 4 KiB chunks; reports write and read MB/s (of uncompressed data) and the
 * compression ratio. DIR defaults to a fresh directory under the current
 * one (not /tmp, which may be tmpfs where fdatasync costs nothing).
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <dirent.h>

#include "engine/base.h"
#include "wal/snapshot.h"
#include "wal/wal.h"

static void remove_dir_files(const char *path)
{
    DIR *d = opendir(path);
    if (d == NULL)
        return;
    struct dirent *e;
    char p[1024];
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        snprintf(p, sizeof(p), "%s/%s", path, e->d_name);
        unlink(p);
    }
    closedir(d);
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

/*
 * A row-like record of about 100 bytes: repeated structure, varied names,
 * and a 22-character pseudo-random digest as real user rows have.
 */
static size_t make_row(uint8_t *out, uint64_t i)
{
    static const char b64[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789./";
    char digest[23];
    uint64_t x = i * 0x9e3779b97f4a7c15ull + 1;
    for (int k = 0; k < 22; k++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        digest[k] = b64[x & 63];
    }
    digest[22] = '\0';
    int n = snprintf((char *)out, 160,
                     "users|%" PRIu64 "|user%" PRIu64 "|u%" PRIu64
                     "@example.com|$2b$12$%s|2026-11-%02" PRIu64
                     "T04:07:32.%06" PRIu64 "Z",
                     i, x % 1000003, (x >> 20) % 1000003, digest, i % 28 + 1,
                     (x >> 40) % 1000000);
    return (size_t)n;
}

/* Runs one case; returns flushes per second. */
static double bench_wal_case(const char *dir, enum fm_wal_fsync policy,
                             size_t group, bool prealloc, double seconds)
{
    remove_dir_files(dir);
    struct fm_wal_options o = {0};
    o.dir = dir;
    o.schema = (const uint8_t *)"bench schema";
    o.schema_len = 12;
    o.fsync = policy;
    o.no_prealloc = !prealloc;
    struct fm_wal *wal;
    struct fm_error err = {0};
    if (fm_wal_open(&o, &wal, &err) != FM_OK) {
        printf("open failed: %s\n", err.msg);
        exit(1);
    }
    size_t cap = 1 << 20;
    int64_t *lat = malloc(cap * sizeof(*lat));
    size_t n_flush = 0;
    uint64_t n_rec = 0;
    uint8_t row[160];
    int64_t start = fm_monotonic_us();
    int64_t end = start + (int64_t)(seconds * 1e6);
    while (fm_monotonic_us() < end && n_flush < cap) {
        for (size_t i = 0; i < group; i++) {
            uint64_t lsn;
            size_t len = make_row(row, n_rec++);
            if (fm_wal_append(wal, row, len, &lsn, &err) != FM_OK) {
                printf("append failed: %s\n", err.msg);
                exit(1);
            }
        }
        int64_t t0 = fm_monotonic_us();
        if (fm_wal_flush(wal, &err) != FM_OK) {
            printf("flush failed: %s\n", err.msg);
            exit(1);
        }
        lat[n_flush++] = fm_monotonic_us() - t0;
    }
    double elapsed = (double)(fm_monotonic_us() - start) / 1e6;
    qsort(lat, n_flush, sizeof(*lat), cmp_i64);
    struct fm_wal_stats st;
    fm_wal_get_stats(wal, &st);
    double flushes = (double)n_flush / elapsed;
    printf("wal fsync=%-8s%-11s group=%-4zu %10.0f rec/s %9.0f flush/s  "
           "flush p50 %6" PRId64 " us  p99 %6" PRId64 " us  (%" PRIu64
           " fsyncs, %zu segments)\n",
           fm_wal_fsync_name(policy),
           policy == FM_WAL_FSYNC_ALWAYS && !prealloc ? " no-prealloc" : "",
           group, (double)n_rec / elapsed, flushes, lat[n_flush / 2],
           lat[n_flush * 99 / 100], st.n_fsyncs, st.n_segments);
    free(lat);
    fm_wal_close(wal);
    return flushes;
}

static void bench_snapshot(const char *dir)
{
    remove_dir_files(dir);
    const size_t total = (size_t)64 << 20;
    const size_t chunk_cap = 4096;
    uint8_t *chunk = malloc(chunk_cap + 160);
    struct fm_snapshot_writer *w;
    struct fm_error err = {0};
    int64_t t0 = fm_monotonic_us();
    if (fm_snapshot_writer_open(dir, 1, NULL, 0, NULL, &w, &err) != FM_OK) {
        printf("snapshot open failed: %s\n", err.msg);
        exit(1);
    }
    uint64_t row = 0;
    for (size_t done = 0; done < total;) {
        size_t len = 0;
        while (len < chunk_cap)
            len += make_row(chunk + len, row++);
        if (fm_snapshot_writer_add(w, chunk, len, &err) != FM_OK) {
            printf("snapshot add failed: %s\n", err.msg);
            exit(1);
        }
        done += len;
    }
    struct fm_snapshot_stats s;
    if (fm_snapshot_writer_commit(w, &s, &err) != FM_OK) {
        printf("snapshot commit failed: %s\n", err.msg);
        exit(1);
    }
    double wsec = (double)(fm_monotonic_us() - t0) / 1e6;
    char path[1024];
    char name[FM_SNAPSHOT_NAME_CAP];
    fm_snapshot_name(name, 1);
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    t0 = fm_monotonic_us();
    struct fm_snapshot_stats c;
    int64_t bad;
    if (fm_snapshot_check_file(path, NULL, 0, &c, &bad, &err) != FM_OK) {
        printf("snapshot check failed: %s\n", err.msg);
        exit(1);
    }
    double rsec = (double)(fm_monotonic_us() - t0) / 1e6;
    double mb = (double)s.raw_bytes / (1 << 20);
    printf("snapshot %.0f MiB of rows (%" PRIu64 " rows): write %.0f MB/s "
           "(fsync included), read+verify %.0f MB/s, ratio %.2f "
           "(%" PRIu64 " -> %" PRIu64 " bytes)\n",
           mb, row, mb / wsec, mb / rsec,
           (double)s.raw_bytes / (double)s.file_bytes, s.raw_bytes,
           s.file_bytes);
    free(chunk);
}

int main(int argc, char **argv)
{
    char dir[512];
    if (argc > 1) {
        snprintf(dir, sizeof(dir), "%s", argv[1]);
        mkdir(dir, 0755);
    } else {
        snprintf(dir, sizeof(dir), "bench-wal-XXXXXX");
        if (mkdtemp(dir) == NULL) {
            perror("mkdtemp");
            return 1;
        }
    }
    double seconds = argc > 2 ? atof(argv[2]) : 1.0;
    static const enum fm_wal_fsync policies[] = {
        FM_WAL_FSYNC_ALWAYS, FM_WAL_FSYNC_EVERYSEC, FM_WAL_FSYNC_NO};
    static const size_t groups[] = {1, 16, 64, 256};
    for (size_t p = 0; p < FM_ARRAY_LEN(policies); p++)
        for (size_t g = 0; g < FM_ARRAY_LEN(groups); g++)
            bench_wal_case(dir, policies[p], groups[g], true, seconds);
    /*
     * Preallocation against appending under always, alternating so that
     * both see the same disk (it drifts between runs): three rounds each,
     * the ratio of the summed flush rates.
     */
    for (size_t g = 0; g < 2; g++) {
        double with = 0, without = 0;
        for (int round = 0; round < 3; round++) {
            with += bench_wal_case(dir, FM_WAL_FSYNC_ALWAYS, groups[g], true,
                                   seconds);
            without += bench_wal_case(dir, FM_WAL_FSYNC_ALWAYS, groups[g],
                                      false, seconds);
        }
        printf("wal fsync=always group=%-4zu preallocated/appending: "
               "%.2fx flushes/s\n",
               groups[g], with / without);
    }
    bench_snapshot(dir);
    remove_dir_files(dir);
    rmdir(dir);
    return 0;
}
