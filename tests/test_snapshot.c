/*
 * test_snapshot.c: behaviours of the snapshot container (wal/snapshot.h).
 *
 * Chunks are a pure function of (seed, index) so that a reader can check
 * every byte without a copy. Damage is made by flipping bits or cutting
 * files, and faults are injected through struct fm_wal_io.
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <xxhash.h>

#include "engine/base.h"
#include "tests/tmpdir.h"
#include "wal/snapshot.h"

static char dir[64];
static const char schema_a[] = "table users (id integer, name string)";
static const char schema_b[] = "table users (id integer, email string)";

static void setup(void)
{
    fm_test_make_dir(dir, sizeof(dir), "fm_test_snap_");
}

static void teardown(void)
{
    fm_test_remove_dir(dir);
}

TestSuite(snapshot, .init = setup, .fini = teardown);

/* ---- Helpers ------------------------------------------------------------ */

/* Row-like text for even indexes, noise for odd ones. */
static void fill_chunk(uint8_t *p, size_t len, size_t index)
{
    uint64_t x = index * 0x9e3779b97f4a7c15ull + 1;
    if (index % 2 == 0) {
        static const char *words[] = {
            "users", "ann", "bob@example.com", "2026-11-25T04:07:32Z",
            "rock",  "42",  "playlist",        "track"};
        size_t o = 0;
        while (o < len) {
            x = x * 6364136223846793005ull + 1442695040888963407ull;
            const char *w = words[(x >> 33) % 8];
            size_t n = strlen(w);
            for (size_t i = 0; i < n && o < len; i++)
                p[o++] = (uint8_t)w[i];
            if (o < len)
                p[o++] = '|';
        }
        return;
    }
    for (size_t i = 0; i < len; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        p[i] = (uint8_t)x;
    }
}

static size_t const sizes[] = {0,    1,      1 << 20, 5,     300000,
                               0,    17,     4096,    65536, 2,
                               1000, 262144, 262140,  3,     100000};

static size_t size_of(size_t index)
{
    return index < FM_ARRAY_LEN(sizes) ? sizes[index] : index * 31 % 700;
}

static void snap_path(char *out, size_t cap, uint64_t lsn)
{
    snprintf(out, cap, "%s/%016" PRIx64 ".snap", dir, lsn);
}

/* Writes a snapshot at lsn with n_chunks chunks; returns its stats. */
static struct fm_snapshot_stats write_snapshot(uint64_t lsn, size_t n_chunks)
{
    struct fm_snapshot_writer *w = NULL;
    struct fm_error err = {0};
    fm_status st = fm_snapshot_writer_open(dir, lsn, (const uint8_t *)schema_a,
                                           strlen(schema_a), NULL, &w, &err);
    cr_assert_eq(st, FM_OK, "%s", err.msg);
    uint8_t *buf = malloc(1 << 20);
    for (size_t i = 0; i < n_chunks; i++) {
        size_t len = size_of(i);
        fill_chunk(buf, len, i);
        st = fm_snapshot_writer_add(w, buf, len, &err);
        cr_assert_eq(st, FM_OK, "%s", err.msg);
    }
    free(buf);
    struct fm_snapshot_stats stats;
    st = fm_snapshot_writer_commit(w, &stats, &err);
    cr_assert_eq(st, FM_OK, "%s", err.msg);
    return stats;
}

/* Reads the snapshot at path; returns the status and the chunks read. */
static fm_status read_snapshot(const char *path, const char *schema,
                               size_t *n_out, struct fm_error *err)
{
    struct fm_snapshot_reader *r = NULL;
    *n_out = 0;
    fm_status st = fm_snapshot_reader_open(
        path, (const uint8_t *)schema, schema ? strlen(schema) : 0, &r, err);
    if (st != FM_OK)
        return st;
    uint8_t *want = malloc(1 << 20);
    for (size_t i = 0;; i++) {
        const uint8_t *p;
        size_t len;
        bool end;
        st = fm_snapshot_reader_next(r, &p, &len, &end, err);
        if (st != FM_OK || end)
            break;
        cr_assert_eq(len, size_of(i), "chunk %zu: %zu bytes", i, len);
        fill_chunk(want, len, i);
        cr_assert(len == 0 || memcmp(p, want, len) == 0, "chunk %zu", i);
        (*n_out)++;
    }
    free(want);
    fm_snapshot_reader_close(r);
    return st;
}

static uint8_t *read_whole(const char *path, size_t *len_out)
{
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f, "open %s", path);
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *p = malloc((size_t)len + 1);
    cr_assert_eq(fread(p, 1, (size_t)len, f), (size_t)len);
    fclose(f);
    *len_out = (size_t)len;
    return p;
}

static void write_whole(const char *path, const uint8_t *p, size_t len)
{
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f);
    cr_assert_eq(fwrite(p, 1, len, f), len);
    fclose(f);
}

/* ---- Round trip --------------------------------------------------------- */

Test(snapshot, chunks_of_varied_sizes_round_trip_with_their_boundaries)
{
    size_t n = 200;
    struct fm_snapshot_stats stats = write_snapshot(77, n);
    cr_assert_eq(stats.lsn, 77);
    cr_assert_eq(stats.n_chunks, n);
    uint64_t raw = 0;
    for (size_t i = 0; i < n; i++)
        raw += size_of(i);
    cr_assert_eq(stats.raw_bytes, raw);
    cr_assert_gt(stats.n_blocks, 4);
    char path[512];
    snap_path(path, sizeof(path), 77);
    struct stat sb;
    cr_assert_eq(stat(path, &sb), 0);
    cr_assert_eq(stats.file_bytes, (uint64_t)sb.st_size);

    size_t got;
    struct fm_error err = {0};
    cr_assert_eq(read_snapshot(path, schema_a, &got, &err), FM_OK, "%s",
                 err.msg);
    cr_assert_eq(got, n);

    struct fm_snapshot_reader *r;
    cr_assert_eq(fm_snapshot_reader_open(path, NULL, 0, &r, &err), FM_OK);
    cr_assert_eq(fm_snapshot_reader_lsn(r), 77);
    fm_snapshot_reader_close(r);

    struct fm_snapshot_stats checked;
    int64_t bad;
    cr_assert_eq(fm_snapshot_check_file(path, NULL, 0, &checked, &bad, &err),
                 FM_OK);
    cr_assert_eq(bad, -1);
    cr_assert_eq(checked.n_chunks, n);
    cr_assert_eq(checked.raw_bytes, raw);
    cr_assert_eq(checked.n_blocks, stats.n_blocks);
}

Test(snapshot, empty_snapshot_round_trips)
{
    write_snapshot(1, 0);
    char path[512];
    snap_path(path, sizeof(path), 1);
    size_t got;
    struct fm_error err = {0};
    cr_assert_eq(read_snapshot(path, schema_a, &got, &err), FM_OK, "%s",
                 err.msg);
    cr_assert_eq(got, 0);
}

Test(snapshot, reading_starts_without_arithmetic_on_an_empty_stream)
{
    /* Found by tests/fuzz/fuzz_wal under clang's UBSan: the first
     * fm_snapshot_reader_next computed NULL + 0 on the stream that no
     * block had filled yet, which is undefined behaviour (gcc's UBSan
     * does not report it; a clang -fsanitize=undefined build fails here). */
    write_snapshot(1, 1);
    char path[512];
    snap_path(path, sizeof(path), 1);
    struct fm_snapshot_reader *r = NULL;
    struct fm_error err = {0};
    cr_assert_eq(fm_snapshot_reader_open(path, NULL, 0, &r, &err), FM_OK, "%s",
                 err.msg);
    const uint8_t *chunk;
    size_t len;
    bool end = true;
    cr_assert_eq(fm_snapshot_reader_next(r, &chunk, &len, &end, &err), FM_OK,
                 "%s", err.msg);
    cr_assert(!end);
    cr_assert_eq(len, 0);
    cr_assert_eq(fm_snapshot_reader_next(r, &chunk, &len, &end, &err), FM_OK,
                 "%s", err.msg);
    cr_assert(end);
    fm_snapshot_reader_close(r);
}

Test(snapshot, a_header_claiming_huge_blocks_is_corrupt)
{
    /* Found by tests/fuzz/fuzz_wal with a malloc limit: the reader sized
     * its block buffer from the header's block size, so a tiny file with a
     * (re-checksummed) block size of 1 GiB made open allocate 1 GiB. */
    write_snapshot(1, 3);
    char path[512];
    snap_path(path, sizeof(path), 1);
    size_t len;
    uint8_t *f = read_whole(path, &len);
    size_t n = fm_load_le32(f + 12);
    fm_store_le32(f + 32, 1u << 30);
    fm_store_le64(f + 40 + n, XXH3_64bits(f, 40 + n));
    write_whole(path, f, len);
    free(f);
    struct fm_snapshot_reader *r = NULL;
    struct fm_error err = {0};
    cr_assert_eq(fm_snapshot_reader_open(path, NULL, 0, &r, &err),
                 FM_ERR_CORRUPT);
    cr_assert_not_null(strstr(err.msg, "bad block size"), "%s", err.msg);
    cr_assert_null(r);
}

Test(snapshot, row_like_text_is_compressed)
{
    struct fm_snapshot_writer *w;
    struct fm_error err = {0};
    cr_assert_eq(fm_snapshot_writer_open(dir, 5, NULL, 0, NULL, &w, &err),
                 FM_OK);
    uint8_t buf[4000];
    for (size_t i = 0; i < 500; i++) {
        fill_chunk(buf, sizeof(buf), 2 * i);
        cr_assert_eq(fm_snapshot_writer_add(w, buf, sizeof(buf), &err), FM_OK);
    }
    struct fm_snapshot_stats s;
    cr_assert_eq(fm_snapshot_writer_commit(w, &s, &err), FM_OK);
    cr_assert_lt(s.file_bytes * 2, s.raw_bytes, "%" PRIu64 " of %" PRIu64,
                 s.file_bytes, s.raw_bytes);
}

/* ---- Damage ------------------------------------------------------------- */

Test(snapshot, every_bit_flip_in_a_small_snapshot_is_detected)
{
    write_snapshot(9, 40); /* 40 chunks: many small, a few large */
    /* Rewrite a small one with only the small chunks for the exhaustive
     * pass; the large file gets random flips below. */
    struct fm_snapshot_writer *w;
    struct fm_error err = {0};
    cr_assert_eq(fm_snapshot_writer_open(dir, 3, (const uint8_t *)schema_a,
                                         strlen(schema_a), NULL, &w, &err),
                 FM_OK);
    uint8_t buf[800];
    for (size_t i = 15; i < 25; i++) {
        fill_chunk(buf, size_of(i), i);
        cr_assert_eq(fm_snapshot_writer_add(w, buf, size_of(i), &err), FM_OK);
    }
    cr_assert_eq(fm_snapshot_writer_commit(w, NULL, &err), FM_OK);
    char path[512];
    snap_path(path, sizeof(path), 3);
    size_t len;
    uint8_t *img = read_whole(path, &len);
    for (size_t off = 0; off < len; off++) {
        for (int bit = 0; bit < 8; bit += 3) {
            img[off] ^= (uint8_t)(1 << bit);
            write_whole(path, img, len);
            struct fm_snapshot_stats s;
            int64_t bad;
            fm_status st =
                fm_snapshot_check_file(path, (const uint8_t *)schema_a,
                                       strlen(schema_a), &s, &bad, &err);
            cr_assert_eq(st, FM_ERR_CORRUPT, "flip at %zu bit %d: %s", off, bit,
                         fm_status_name(st));
            cr_assert_geq(bad, 0);
            cr_assert(strstr(err.msg, path) != NULL, "%s", err.msg);
            img[off] ^= (uint8_t)(1 << bit);
        }
    }
    free(img);
}

Test(snapshot, random_bit_flips_in_a_large_snapshot_are_detected)
{
    const char *seed_env = getenv("FM_TEST_SEED");
    unsigned seed =
        seed_env ? (unsigned)strtoul(seed_env, NULL, 10) : (unsigned)time(NULL);
    srand(seed);
    write_snapshot(9, 40);
    char path[512];
    snap_path(path, sizeof(path), 9);
    size_t len;
    uint8_t *img = read_whole(path, &len);
    for (int trial = 0; trial < 60; trial++) {
        size_t off = ((size_t)rand() << 16 ^ (size_t)rand()) % len;
        int bit = rand() % 8;
        img[off] ^= (uint8_t)(1 << bit);
        write_whole(path, img, len);
        size_t got;
        struct fm_error err = {0};
        fm_status st = read_snapshot(path, schema_a, &got, &err);
        cr_assert_eq(st, FM_ERR_CORRUPT, "seed %u: flip at %zu: %s", seed, off,
                     fm_status_name(st));
        cr_assert(strstr(err.msg, "offset") != NULL, "%s", err.msg);
        img[off] ^= (uint8_t)(1 << bit);
    }
    free(img);
}

Test(snapshot, truncated_or_extended_file_is_detected)
{
    write_snapshot(4, 12);
    char path[512];
    snap_path(path, sizeof(path), 4);
    size_t len;
    uint8_t *img = read_whole(path, &len);
    /* Every cut in the last 3000 bytes and at the start, then a stride. */
    for (size_t cut = 0; cut < len; cut++) {
        if (cut > 200 && cut + 3000 < len && cut % 997 != 0)
            continue;
        write_whole(path, img, cut);
        size_t got;
        struct fm_error err = {0};
        fm_status st = read_snapshot(path, schema_a, &got, &err);
        cr_assert_eq(st, FM_ERR_CORRUPT, "cut at %zu of %zu", cut, len);
    }
    uint8_t *longer = malloc(len + 8);
    memcpy(longer, img, len);
    memset(longer + len, 0, 8);
    write_whole(path, longer, len + 8);
    size_t got;
    struct fm_error err = {0};
    cr_assert_eq(read_snapshot(path, schema_a, &got, &err), FM_ERR_CORRUPT);
    free(longer);
    free(img);
}

Test(snapshot, snapshot_of_another_schema_is_refused)
{
    write_snapshot(8, 3);
    char path[512];
    snap_path(path, sizeof(path), 8);
    size_t got;
    struct fm_error err = {0};
    cr_assert_eq(read_snapshot(path, schema_b, &got, &err), FM_ERR_SCHEMA);
    cr_assert(strstr(err.msg, path) != NULL, "%s", err.msg);
}

/* ---- Temporary files, listing, pruning ---------------------------------- */

Test(snapshot, temporary_file_is_never_listed_and_abort_removes_it)
{
    struct fm_snapshot_writer *w;
    struct fm_error err = {0};
    cr_assert_eq(fm_snapshot_writer_open(dir, 12, NULL, 0, NULL, &w, &err),
                 FM_OK);
    cr_assert_eq(fm_snapshot_writer_add(w, (const uint8_t *)"row", 3, &err),
                 FM_OK);
    struct fm_snapshot_list l;
    cr_assert_eq(fm_snapshot_list_dir(dir, &l, &err), FM_OK);
    cr_assert_eq(l.n, 0);
    fm_snapshot_list_fini(&l);
    char tmp[512];
    snprintf(tmp, sizeof(tmp), "%s/%016x.snap.tmp", dir, 12);
    cr_assert_eq(access(tmp, F_OK), 0);
    /* A second writer for the same LSN is refused while the first lives. */
    struct fm_snapshot_writer *w2;
    cr_assert_eq(fm_snapshot_writer_open(dir, 12, NULL, 0, NULL, &w2, &err),
                 FM_ERR_LOCKED);
    cr_assert_eq(access(tmp, F_OK), 0);
    fm_snapshot_writer_abort(w);
    cr_assert_neq(access(tmp, F_OK), 0);
    cr_assert_eq(fm_snapshot_list_dir(dir, &l, &err), FM_OK);
    cr_assert_eq(l.n, 0);
    fm_snapshot_list_fini(&l);
}

Test(snapshot, listing_is_newest_first_so_a_bad_snapshot_falls_back)
{
    write_snapshot(5, 3);
    write_snapshot(100, 3);
    write_snapshot(30, 3);
    char path[512];
    snap_path(path, sizeof(path), 100);
    size_t len;
    uint8_t *img = read_whole(path, &len);
    img[len / 2] ^= 0x10;
    write_whole(path, img, len);
    free(img);

    struct fm_snapshot_list l;
    struct fm_error err = {0};
    cr_assert_eq(fm_snapshot_list_dir(dir, &l, &err), FM_OK);
    cr_assert_eq(l.n, 3);
    cr_assert_eq(l.items[0].lsn, 100);
    cr_assert_eq(l.items[1].lsn, 30);
    cr_assert_eq(l.items[2].lsn, 5);
    cr_assert_str_eq(l.items[1].file, "000000000000001e.snap");
    /* The engine's fallback: the first one that loads wins. */
    uint64_t loaded = 0;
    for (size_t i = 0; i < l.n && loaded == 0; i++) {
        snprintf(path, sizeof(path), "%s/%s", dir, l.items[i].file);
        size_t got;
        if (read_snapshot(path, schema_a, &got, &err) == FM_OK)
            loaded = l.items[i].lsn;
    }
    cr_assert_eq(loaded, 30);
    fm_snapshot_list_fini(&l);
}

Test(snapshot, prune_keeps_the_newest_valid_ones_and_removes_stale_temps)
{
    for (uint64_t lsn = 10; lsn <= 60; lsn += 10)
        write_snapshot(lsn, 2);
    /* Damage the newest: it does not count towards keep. */
    char path[512];
    snap_path(path, sizeof(path), 60);
    size_t len;
    uint8_t *img = read_whole(path, &len);
    img[len - 1] ^= 1;
    write_whole(path, img, len);
    free(img);
    /* A stale temp from a crashed writer, and a live one. */
    char stale[512];
    snprintf(stale, sizeof(stale), "%s/%016x.snap.tmp", dir, 55);
    write_whole(stale, (const uint8_t *)"junk", 4);
    struct fm_snapshot_writer *live;
    struct fm_error err = {0};
    cr_assert_eq(fm_snapshot_writer_open(dir, 70, NULL, 0, NULL, &live, &err),
                 FM_OK);

    size_t n_removed;
    cr_assert_eq(fm_snapshot_prune(dir, 2, &n_removed, &err), FM_OK, "%s",
                 err.msg);
    cr_assert_eq(n_removed, 4); /* 10, 20, 30 and the stale temp */
    struct fm_snapshot_list l;
    cr_assert_eq(fm_snapshot_list_dir(dir, &l, &err), FM_OK);
    cr_assert_eq(l.n, 3);
    cr_assert_eq(l.items[0].lsn, 60); /* damaged, left for inspection */
    cr_assert_eq(l.items[1].lsn, 50);
    cr_assert_eq(l.items[2].lsn, 40);
    fm_snapshot_list_fini(&l);
    cr_assert_neq(access(stale, F_OK), 0);
    cr_assert_eq(fm_snapshot_writer_commit(live, NULL, &err), FM_OK);
    cr_assert_eq(fm_snapshot_prune(dir, 1, &n_removed, &err), FM_OK);
    cr_assert_eq(fm_snapshot_list_dir(dir, &l, &err), FM_OK);
    cr_assert_eq(l.n, 1);
    cr_assert_eq(l.items[0].lsn, 70);
    fm_snapshot_list_fini(&l);
}

/* ---- Write failures ----------------------------------------------------- */

struct fake_io {
    struct fm_wal_io io;
    int n_pwrite;
    int fail_pwrite_at; /* 1-based; 0 never */
    bool fail_fsync;
};

static ssize_t fake_pwrite(void *ctx, int fd, const void *buf, size_t len,
                           off_t off)
{
    struct fake_io *f = ctx;
    if (++f->n_pwrite == f->fail_pwrite_at) {
        errno = ENOSPC;
        return -1;
    }
    /* Short writes everywhere else: the writer must complete them. */
    return pwrite(fd, buf, len > 1000 ? 1000 : len, off);
}

static int fake_fsync(void *ctx, int fd)
{
    struct fake_io *f = ctx;
    if (f->fail_fsync) {
        errno = EIO;
        return -1;
    }
    return fsync(fd);
}

static void fake_init(struct fake_io *f)
{
    memset(f, 0, sizeof(*f));
    f->io = *fm_wal_io_default();
    f->io.ctx = f;
    f->io.pwrite = fake_pwrite;
    f->io.fsync = fake_fsync;
}

Test(snapshot, failed_write_fails_the_snapshot_and_leaves_nothing)
{
    for (int at = 1; at <= 6; at++) {
        struct fake_io f;
        fake_init(&f);
        f.fail_pwrite_at = at;
        struct fm_snapshot_writer *w = NULL;
        struct fm_error err = {0};
        fm_status st =
            fm_snapshot_writer_open(dir, 7, NULL, 0, &f.io, &w, &err);
        uint8_t *buf = malloc(300000);
        for (size_t i = 0; st == FM_OK && i < 6; i++) {
            fill_chunk(buf, 300000, i);
            st = fm_snapshot_writer_add(w, buf, 300000, &err);
        }
        free(buf);
        if (w != NULL) {
            /* A dead writer keeps failing, and commit reports it. */
            fm_status cst = fm_snapshot_writer_commit(w, NULL, &err);
            cr_assert_eq(cst, FM_ERR_IO, "at %d", at);
        } else {
            cr_assert_eq(st, FM_ERR_IO);
        }
        cr_assert(strstr(err.msg, strerror(ENOSPC)) != NULL, "%s", err.msg);
        struct fm_snapshot_list l;
        cr_assert_eq(fm_snapshot_list_dir(dir, &l, &err), FM_OK);
        cr_assert_eq(l.n, 0);
        fm_snapshot_list_fini(&l);
        char tmp[512];
        snprintf(tmp, sizeof(tmp), "%s/%016x.snap.tmp", dir, 7);
        cr_assert_neq(access(tmp, F_OK), 0);
    }
}

Test(snapshot, failed_fsync_fails_the_snapshot)
{
    struct fake_io f;
    fake_init(&f);
    f.fail_fsync = true;
    struct fm_snapshot_writer *w = NULL;
    struct fm_error err = {0};
    cr_assert_eq(fm_snapshot_writer_open(dir, 7, NULL, 0, &f.io, &w, &err),
                 FM_OK);
    cr_assert_eq(fm_snapshot_writer_add(w, (const uint8_t *)"abc", 3, &err),
                 FM_OK);
    cr_assert_eq(fm_snapshot_writer_commit(w, NULL, &err), FM_ERR_IO);
    struct fm_snapshot_list l;
    cr_assert_eq(fm_snapshot_list_dir(dir, &l, &err), FM_OK);
    cr_assert_eq(l.n, 0);
    fm_snapshot_list_fini(&l);
}

Test(snapshot, writer_works_in_a_forked_child)
{
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        struct fm_snapshot_writer *w;
        struct fm_error err = {0};
        if (fm_snapshot_writer_open(dir, 42, (const uint8_t *)schema_a,
                                    strlen(schema_a), NULL, &w, &err) != FM_OK)
            _exit(1);
        uint8_t buf[1000];
        for (size_t i = 15; i < 25; i++) {
            fill_chunk(buf, size_of(i), i);
            if (fm_snapshot_writer_add(w, buf, size_of(i), &err) != FM_OK)
                _exit(2);
        }
        _exit(fm_snapshot_writer_commit(w, NULL, &err) == FM_OK ? 0 : 3);
    }
    int status;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    struct fm_snapshot_list l;
    struct fm_error err = {0};
    cr_assert_eq(fm_snapshot_list_dir(dir, &l, &err), FM_OK);
    cr_assert_eq(l.n, 1);
    cr_assert_eq(l.items[0].lsn, 42);
    fm_snapshot_list_fini(&l);
}
