/*
 * test_wal.c: behaviours of the write-ahead log (wal/wal.h).
 *
 * Every test gets its own temporary directory. Records carry payloads that
 * are a pure function of their LSN, so any record read back can be checked
 * without keeping a copy. Faults are injected through struct fm_wal_io.
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <xxhash.h>

#include "engine/base.h"
#include "tests/tmpdir.h"
#include "wal/wal.h"

static char dir[64];
static const char schema_a[] = "table users (id integer, name string)";
static const char schema_b[] = "table users (id integer, email string)";

static void setup(void)
{
    fm_test_make_dir(dir, sizeof(dir), "fm_test_wal_");
}

static void teardown(void)
{
    fm_set_alloc_fail_hook(NULL, NULL);
    fm_test_remove_dir(dir);
}

TestSuite(wal, .init = setup, .fini = teardown);

/* ---- Helpers ------------------------------------------------------------ */

/* The payload of record lsn: 0 to 150 bytes of text derived from lsn. */
static size_t payload_of(uint64_t lsn, uint8_t *out)
{
    size_t len = (size_t)(lsn * 37 % 151);
    for (size_t i = 0; i < len; i++)
        out[i] = (uint8_t)('a' + (lsn + i * 7) % 26);
    return len;
}

static struct fm_wal_options base_opts(void)
{
    struct fm_wal_options o = {0};
    o.dir = dir;
    o.schema = (const uint8_t *)schema_a;
    o.schema_len = strlen(schema_a);
    o.fsync = FM_WAL_FSYNC_NO;
    o.segment_size = 4096;
    return o;
}

static struct fm_wal *open_ok(const struct fm_wal_options *o)
{
    struct fm_wal *wal = NULL;
    struct fm_error err = {0};
    fm_status st = fm_wal_open(o, &wal, &err);
    cr_assert_eq(st, FM_OK, "open: %s: %s", fm_status_name(st), err.msg);
    return wal;
}

/* Appends records until next_lsn passes last, flushing every group. */
static void append_range(struct fm_wal *wal, uint64_t first, uint64_t last,
                         size_t group)
{
    uint8_t buf[256];
    struct fm_error err = {0};
    for (uint64_t lsn = first; lsn <= last; lsn++) {
        uint64_t got;
        size_t len = payload_of(lsn, buf);
        fm_status st = fm_wal_append(wal, buf, len, &got, &err);
        cr_assert_eq(st, FM_OK, "append: %s", err.msg);
        cr_assert_eq(got, lsn);
        if ((lsn - first + 1) % group == 0 || lsn == last) {
            st = fm_wal_flush(wal, &err);
            cr_assert_eq(st, FM_OK, "flush: %s", err.msg);
        }
    }
}

/* Iterates after after_lsn and checks records first..last exactly. */
static void expect_records(struct fm_wal *wal, uint64_t after_lsn,
                           uint64_t first, uint64_t last)
{
    struct fm_wal_iter *it = NULL;
    struct fm_error err = {0};
    fm_status st = fm_wal_iter_open(wal, after_lsn, &it, &err);
    cr_assert_eq(st, FM_OK, "iter_open: %s", err.msg);
    uint8_t buf[256];
    uint64_t want = first;
    for (;;) {
        struct fm_wal_record rec;
        bool end;
        st = fm_wal_iter_next(it, &rec, &end, &err);
        cr_assert_eq(st, FM_OK, "iter_next: %s", err.msg);
        if (end)
            break;
        cr_assert_eq(rec.lsn, want,
                     "lsn %" PRIu64 " where %" PRIu64 " expected", rec.lsn,
                     want);
        size_t len = payload_of(rec.lsn, buf);
        cr_assert_eq(rec.len, len);
        cr_assert(memcmp(rec.payload, buf, len) == 0);
        want++;
    }
    cr_assert_eq(want, last + 1,
                 "iteration ended at %" PRIu64 ", want %" PRIu64, want - 1,
                 last);
    fm_wal_iter_close(it);
}

struct seg_list {
    uint64_t lsns[512];
    size_t n;
};

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void list_segments(struct seg_list *l)
{
    DIR *d = opendir(dir);
    cr_assert_not_null(d);
    struct dirent *e;
    l->n = 0;
    while ((e = readdir(d)) != NULL) {
        size_t len = strlen(e->d_name);
        if (len != 20 || strcmp(e->d_name + 16, ".wal") != 0)
            continue;
        cr_assert(l->n < 512);
        l->lsns[l->n++] = strtoull(e->d_name, NULL, 16);
    }
    closedir(d);
    qsort(l->lsns, l->n, sizeof(uint64_t), cmp_u64);
}

static void seg_path(char *out, size_t cap, uint64_t first_lsn)
{
    snprintf(out, cap, "%s/%016" PRIx64 ".wal", dir, first_lsn);
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

static uint64_t file_size(const char *path)
{
    struct stat sb;
    cr_assert_eq(stat(path, &sb), 0);
    return (uint64_t)sb.st_size;
}

/* A log callback that remembers warnings. */
struct log_capture {
    int n_warnings;
    char last[FM_ERROR_MSG_CAP];
};

static void capture_log(void *ctx, enum fm_log_level level, const char *msg)
{
    struct log_capture *c = ctx;
    if (level == FM_LOG_WARNING) {
        c->n_warnings++;
        snprintf(c->last, sizeof(c->last), "%s", msg);
    }
}

/* ---- Fake I/O ----------------------------------------------------------- */

struct fake_io {
    struct fm_wal_io io;
    atomic_int n_pwrite; /* calls so far */
    atomic_int n_fdatasync;
    int fail_pwrite_at; /* 1-based call to fail; 0 never */
    int pwrite_errno;
    bool short_then_fail;   /* the failing call first writes half */
    size_t max_chunk;       /* cap every pwrite at this many bytes; 0 no */
    int eintr_every;        /* every n-th pwrite returns EINTR; 0 never */
    int fail_fdatasync_at;  /* 1-based; 0 never */
    int fdatasync_delay_ms; /* every fdatasync sleeps this long first */
    int fail_open_at;       /* 1-based among opens after arming; 0 never */
    atomic_int n_open;
};

static int fake_open(void *ctx, const char *path, int flags, int mode)
{
    struct fake_io *f = ctx;
    int n = ++f->n_open;
    if (f->fail_open_at != 0 && n == f->fail_open_at) {
        errno = EMFILE;
        return -1;
    }
    return open(path, flags, (mode_t)mode);
}

static ssize_t fake_pwrite(void *ctx, int fd, const void *buf, size_t len,
                           off_t off)
{
    struct fake_io *f = ctx;
    int n = ++f->n_pwrite;
    if (f->eintr_every != 0 && n % f->eintr_every == 0) {
        errno = EINTR;
        return -1;
    }
    if (f->fail_pwrite_at != 0 && n == f->fail_pwrite_at) {
        if (f->short_then_fail && len > 1) {
            f->fail_pwrite_at++;
            return pwrite(fd, buf, len / 2, off);
        }
        errno = f->pwrite_errno;
        return -1;
    }
    if (f->max_chunk != 0 && len > f->max_chunk)
        len = f->max_chunk;
    return pwrite(fd, buf, len, off);
}

static int fake_fdatasync(void *ctx, int fd)
{
    struct fake_io *f = ctx;
    int n = ++f->n_fdatasync;
    if (f->fail_fdatasync_at != 0 && n >= f->fail_fdatasync_at) {
        errno = EIO;
        return -1;
    }
    if (f->fdatasync_delay_ms > 0) {
        struct timespec ts = {f->fdatasync_delay_ms / 1000,
                              (long)(f->fdatasync_delay_ms % 1000) * 1000000};
        nanosleep(&ts, NULL);
    }
    return fdatasync(fd);
}

static void fake_init(struct fake_io *f)
{
    memset(f, 0, sizeof(*f));
    f->io = *fm_wal_io_default();
    f->io.ctx = f;
    f->io.open = fake_open;
    f->io.pwrite = fake_pwrite;
    f->io.fdatasync = fake_fdatasync;
}

/* ---- Round trips -------------------------------------------------------- */

Test(wal, records_survive_reopen_across_segment_rotations)
{
    struct fm_wal_options o = base_opts();
    struct fm_wal *wal = open_ok(&o);
    append_range(wal, 1, 300, 1);
    append_range(wal, 301, 700, 16);
    struct fm_wal_stats stats;
    fm_wal_get_stats(wal, &stats);
    cr_assert_gt(stats.n_segments, 10, "only %zu segments", stats.n_segments);
    cr_assert_eq(stats.next_lsn, 701);
    cr_assert_eq(stats.written_lsn, 700);
    fm_wal_close(wal);

    wal = open_ok(&o);
    struct fm_wal_recovery rec;
    fm_wal_get_recovery(wal, &rec);
    cr_assert_eq(rec.n_records, 700);
    cr_assert_eq(rec.first_lsn, 1);
    cr_assert_eq(rec.last_lsn, 700);
    cr_assert_eq(rec.torn_bytes, 0);
    expect_records(wal, 0, 1, 700);
    append_range(wal, 701, 800, 7);
    fm_wal_close(wal);

    wal = open_ok(&o);
    expect_records(wal, 0, 1, 800);
    expect_records(wal, 555, 556, 800);
    expect_records(wal, 800, 801, 800);
    fm_wal_close(wal);
}

Test(wal, open_creates_a_missing_directory)
{
    char sub[128];
    snprintf(sub, sizeof(sub), "%s/new/", dir);
    struct fm_error err = {0};
    /* Its parent must exist: one level is created, as mkdir does. */
    cr_assert_eq(fm_wal_make_dir(sub, &err), FM_OK, "%s", err.msg);
    cr_assert_eq(fm_wal_make_dir(sub, &err), FM_OK, "%s", err.msg);
    struct stat sb;
    cr_assert_eq(stat(sub, &sb), 0);
    cr_assert(S_ISDIR(sb.st_mode));
    snprintf(sub, sizeof(sub), "%s/a/b", dir);
    cr_assert_eq(fm_wal_make_dir(sub, &err), FM_ERR_IO);
    snprintf(sub, sizeof(sub), "%s/log", dir);
    struct fm_wal_options o = base_opts();
    o.dir = sub;
    struct fm_wal *wal = open_ok(&o);
    append_range(wal, 1, 3, 1);
    fm_wal_close(wal);
    wal = open_ok(&o);
    expect_records(wal, 0, 1, 3);
    fm_wal_close(wal);
}

Test(wal, segment_names_are_their_first_lsn_and_lsns_are_continuous)
{
    struct fm_wal_options o = base_opts();
    struct fm_wal *wal = open_ok(&o);
    append_range(wal, 1, 400, 5);
    fm_wal_close(wal);
    struct seg_list l;
    list_segments(&l);
    cr_assert_gt(l.n, 3);
    cr_assert_eq(l.lsns[0], 1);
    /* Each segment must begin right after the previous one's last record:
     * opening and iterating each suffix checks this from the file side. */
    wal = open_ok(&o);
    for (size_t i = 1; i < l.n; i++)
        expect_records(wal, l.lsns[i] - 1, l.lsns[i], 400);
    fm_wal_close(wal);
}

Test(wal, empty_payloads_round_trip)
{
    struct fm_wal_options o = base_opts();
    struct fm_wal *wal = open_ok(&o);
    struct fm_error err = {0};
    uint64_t lsn;
    cr_assert_eq(fm_wal_append(wal, NULL, 0, &lsn, &err), FM_OK);
    cr_assert_eq(lsn, 1);
    cr_assert(fm_wal_has_pending(wal));
    cr_assert_eq(fm_wal_flush(wal, &err), FM_OK);
    cr_assert_not(fm_wal_has_pending(wal));
    fm_wal_close(wal);
    wal = open_ok(&o);
    struct fm_wal_iter *it;
    cr_assert_eq(fm_wal_iter_open(wal, 0, &it, &err), FM_OK);
    struct fm_wal_record r;
    bool end;
    cr_assert_eq(fm_wal_iter_next(it, &r, &end, &err), FM_OK);
    cr_assert_not(end);
    cr_assert_eq(r.lsn, 1);
    cr_assert_eq(r.len, 0);
    cr_assert_eq(fm_wal_iter_next(it, &r, &end, &err), FM_OK);
    cr_assert(end);
    fm_wal_iter_close(it);
    fm_wal_close(wal);
}

Test(wal, oversized_payload_is_refused_without_using_an_lsn)
{
    struct fm_wal_options o = base_opts();
    struct fm_wal *wal = open_ok(&o);
    struct fm_error err = {0};
    uint64_t lsn;
    uint8_t b = 0;
    cr_assert_eq(fm_wal_append(wal, &b, FM_WAL_PAYLOAD_MAX + 1, &lsn, &err),
                 FM_ERR_LIMIT);
    cr_assert_eq(fm_wal_append(wal, &b, 1, &lsn, &err), FM_OK);
    cr_assert_eq(lsn, 1);
    fm_wal_close(wal);
}

Test(wal, unflushed_records_are_not_written_at_close)
{
    struct fm_wal_options o = base_opts();
    struct fm_wal *wal = open_ok(&o);
    append_range(wal, 1, 10, 1);
    uint8_t buf[256];
    uint64_t lsn;
    size_t len = payload_of(11, buf);
    cr_assert_eq(fm_wal_append(wal, buf, len, &lsn, NULL), FM_OK);
    fm_wal_close(wal);
    wal = open_ok(&o);
    expect_records(wal, 0, 1, 10);
    fm_wal_close(wal);
}

/* ---- Torn tails and corruption ------------------------------------------ */

/*
 * Cuts the last segment at every byte of its last three records and checks
 * that recovery keeps exactly the complete ones and appends after them.
 * With zeros_after, the cut bytes become zeros up to the old length, as
 * when a torn group lay in a preallocated tail (fsync always).
 */
static void torn_tail_case(bool zeros_after)
{
    struct fm_wal_options o = base_opts();
    o.segment_size = 1 << 20;
    o.fsync = zeros_after ? FM_WAL_FSYNC_ALWAYS : FM_WAL_FSYNC_NO;
    struct fm_wal *wal = open_ok(&o);
    append_range(wal, 1, 17, 4);
    /* Record boundaries of the last three records. */
    uint64_t ends[4];
    for (int i = 0; i <= 3; i++) {
        if (i > 0)
            append_range(wal, 17 + (uint64_t)i, 17 + (uint64_t)i, 1);
        struct fm_wal_stats stats;
        fm_wal_get_stats(wal, &stats);
        ends[i] = stats.active_bytes;
    }
    fm_wal_close(wal);
    char path[512];
    seg_path(path, sizeof(path), 1);
    size_t len;
    uint8_t *orig = read_whole(path, &len);
    if (zeros_after)
        cr_assert_gt(len, ends[3]);
    else
        cr_assert_eq(len, ends[3]);
    uint8_t *img = malloc(len);
    for (uint64_t cut = ends[0]; cut < ends[3]; cut++) {
        size_t file_len = zeros_after ? len : (size_t)cut;
        memcpy(img, orig, (size_t)cut);
        memset(img + cut, 0, len - (size_t)cut);
        write_whole(path, img, file_len);
        int k = 0;
        while (k < 3 && ends[k + 1] <= cut)
            k++;
        struct log_capture logs = {0};
        o.log_fn = capture_log;
        o.log_ctx = &logs;
        wal = open_ok(&o);
        struct fm_wal_recovery rec;
        fm_wal_get_recovery(wal, &rec);
        uint64_t last = 17 + (uint64_t)k;
        cr_assert_eq(rec.last_lsn, last, "cut at %" PRIu64, cut);
        if (cut == ends[k]) {
            /* A cut at a boundary (zeros after it) is the clean end. */
            cr_assert_eq(rec.torn_bytes, 0);
            cr_assert_eq(logs.n_warnings, 0, "%s", logs.last);
        } else {
            cr_assert_eq(rec.torn_bytes, file_len - ends[k], "cut at %" PRIu64,
                         cut);
            cr_assert_eq(logs.n_warnings, 1);
            cr_assert(strstr(logs.last, "torn") != NULL, "%s", logs.last);
            char bytes[32];
            snprintf(bytes, sizeof(bytes), "%" PRIu64 " bytes",
                     (uint64_t)file_len - ends[k]);
            cr_assert(strstr(logs.last, bytes) != NULL, "%s", logs.last);
            cr_assert_eq(file_size(path), ends[k]);
        }
        expect_records(wal, 0, 1, last);
        /* Appends continue right after the last complete record. */
        append_range(wal, last + 1, last + 1, 1);
        fm_wal_close(wal);
        wal = open_ok(&o);
        expect_records(wal, 0, 1, last + 1);
        fm_wal_close(wal);
    }
    free(img);
    free(orig);
}

Test(wal, torn_tail_is_truncated)
{
    torn_tail_case(false);
}

/* A torn group in front of the preallocated zeros is cut like any torn
 * tail. */
Test(wal, torn_tail_before_zeros_is_truncated)
{
    torn_tail_case(true);
}

/* ---- Preallocation under fsync always ----------------------------------- */

/* True when p[0..n) is all zeros. */
static bool zeros_only(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] != 0)
            return false;
    return true;
}

/*
 * Writes records 1..last in groups under fsync always into one segment of
 * segment_size, closes the log and returns the segment file's bytes (len
 * in *len, the end of its records in *records_end, its path in path).
 */
static uint8_t *always_segment(struct fm_wal_options *o, uint64_t segment_size,
                               uint64_t last, size_t group, char path[512],
                               size_t *len, uint64_t *records_end)
{
    *o = base_opts();
    o->segment_size = segment_size;
    o->fsync = FM_WAL_FSYNC_ALWAYS;
    struct fm_wal *wal = open_ok(o);
    append_range(wal, 1, last, group);
    struct fm_wal_stats stats;
    fm_wal_get_stats(wal, &stats);
    cr_assert_eq(stats.n_segments, 1);
    fm_wal_close(wal);
    *records_end = stats.active_bytes;
    seg_path(path, 512, 1);
    return read_whole(path, len);
}

Test(wal, always_keeps_zeros_ahead_and_reopens_cleanly)
{
    struct fm_wal_options o;
    char path[512];
    size_t len;
    uint64_t end;
    uint8_t *img = always_segment(&o, 4 << 20, 200, 7, path, &len, &end);
    /* The records, then at least half a step of zeros. */
    cr_assert_lt(end, len);
    cr_assert_geq(len - end, FM_WAL_PREALLOC_STEP / 2);
    cr_assert(zeros_only(img + end, len - end));
    free(img);

    /* The zeros are the clean end: nothing torn, nothing logged, and
     * appends go after the last record, not after the zeros. */
    struct log_capture logs = {0};
    o.log_fn = capture_log;
    o.log_ctx = &logs;
    struct fm_wal *wal = open_ok(&o);
    struct fm_wal_recovery rec;
    fm_wal_get_recovery(wal, &rec);
    cr_assert_eq(rec.torn_bytes, 0);
    cr_assert_eq(rec.last_lsn, 200);
    cr_assert_eq(logs.n_warnings, 0, "%s", logs.last);
    append_range(wal, 201, 260, 5);
    fm_wal_close(wal);
    cr_assert_eq(file_size(path), len, "the zeros were reused, not extended");
    wal = open_ok(&o);
    expect_records(wal, 0, 1, 260);
    fm_wal_close(wal);
}

Test(wal, no_prealloc_and_other_policies_end_files_at_the_last_record)
{
    enum fm_wal_fsync policies[] = {FM_WAL_FSYNC_ALWAYS, FM_WAL_FSYNC_EVERYSEC,
                                    FM_WAL_FSYNC_NO};
    for (size_t i = 0; i < 3; i++) {
        struct fm_wal_options o = base_opts();
        o.segment_size = 1 << 20;
        o.fsync = policies[i];
        o.no_prealloc = policies[i] == FM_WAL_FSYNC_ALWAYS;
        char sub[600];
        snprintf(sub, sizeof(sub), "%s/p%zu", dir, i);
        o.dir = sub;
        struct fm_wal *wal = open_ok(&o);
        append_range(wal, 1, 50, 3);
        struct fm_wal_stats stats;
        fm_wal_get_stats(wal, &stats);
        fm_wal_close(wal);
        char path[700];
        snprintf(path, sizeof(path), "%s/%016" PRIx64 ".wal", sub, (uint64_t)1);
        cr_assert_eq(file_size(path), stats.active_bytes, "policy %zu", i);
    }
}

Test(wal, rotation_cuts_the_zeros_off_the_finished_segment)
{
    struct fm_wal_options o = base_opts();
    o.segment_size = 64 << 10;
    o.fsync = FM_WAL_FSYNC_ALWAYS;
    struct fm_wal *wal = open_ok(&o);
    append_range(wal, 1, 2000, 10);
    fm_wal_close(wal);
    struct seg_list l;
    list_segments(&l);
    cr_assert_gt(l.n, 2);
    for (size_t i = 0; i + 1 < l.n; i++) {
        char path[512];
        seg_path(path, sizeof(path), l.lsns[i]);
        size_t len;
        uint8_t *img = read_whole(path, &len);
        /* Capped at segment_size plus one group, and no zeros at the end:
         * the last record's checksum ends the file. */
        cr_assert_leq(len, o.segment_size + 10 * 200);
        cr_assert_neq(img[len - 1] | img[len - 2] | img[len - 3], 0);
        free(img);
    }
    wal = open_ok(&o);
    expect_records(wal, 0, 1, 2000);
    fm_wal_close(wal);
}

/* A stray nonzero byte inside the zeros is damage after the last record:
 * never read as a record, cut as a torn tail. */
Test(wal, garbage_inside_the_zeros_is_cut)
{
    struct fm_wal_options o;
    char path[512];
    size_t len;
    uint64_t end;
    uint8_t *img = always_segment(&o, 1 << 20, 30, 3, path, &len, &end);
    size_t at = (size_t)end + 5000;
    cr_assert_lt(at, len);
    img[at] = 0x5a;
    write_whole(path, img, len);
    free(img);
    struct log_capture logs = {0};
    o.log_fn = capture_log;
    o.log_ctx = &logs;
    struct fm_wal *wal = open_ok(&o);
    struct fm_wal_recovery rec;
    fm_wal_get_recovery(wal, &rec);
    cr_assert_eq(rec.last_lsn, 30);
    cr_assert_eq(rec.torn_bytes, len - end);
    cr_assert(strstr(logs.last, "5001 of them data") != NULL, "%s", logs.last);
    expect_records(wal, 0, 1, 30);
    fm_wal_close(wal);
}

Test(wal, bad_record_followed_by_good_ones_is_corrupt)
{
    struct fm_wal_options o = base_opts();
    o.segment_size = 1 << 20;
    struct fm_wal *wal = open_ok(&o);
    append_range(wal, 1, 4, 1);
    char path[512];
    seg_path(path, sizeof(path), 1);
    uint64_t off5 = file_size(path);
    append_range(wal, 5, 5, 1);
    /* Record 5 is made durable before 6..10 are framed: they say so, and
     * damage to it can then only be the medium's, not a crash's. */
    struct fm_error serr = {0};
    cr_assert_eq(fm_wal_sync(wal, &serr), FM_OK, "%s", serr.msg);
    append_range(wal, 6, 10, 1);
    fm_wal_close(wal);
    /* Damage the LSN field of record 5. */
    size_t len;
    uint8_t *img = read_whole(path, &len);
    img[off5 + 8] ^= 0x40;
    write_whole(path, img, len);
    free(img);

    struct fm_error err = {0};
    fm_status st = fm_wal_open(&o, &wal, &err);
    cr_assert_eq(st, FM_ERR_CORRUPT, "%s", fm_status_name(st));
    char want[64];
    snprintf(want, sizeof(want), "offset %" PRIu64, off5);
    cr_assert(strstr(err.msg, want) != NULL, "%s", err.msg);
    cr_assert(strstr(err.msg, "0000000000000001.wal") != NULL, "%s", err.msg);
    /* Nothing was changed on disk by the refused open. */
    cr_assert_eq(file_size(path), len);

    o.force_recovery = true;
    wal = open_ok(&o);
    struct fm_wal_recovery rec;
    fm_wal_get_recovery(wal, &rec);
    cr_assert_eq(rec.n_skipped, 1);
    cr_assert_eq(rec.n_lsns_missing, 1);
    cr_assert_eq(rec.n_records, 9);
    struct fm_wal_iter *it;
    cr_assert_eq(fm_wal_iter_open(wal, 0, &it, &err), FM_OK);
    uint64_t seen[16];
    size_t n = 0;
    for (;;) {
        struct fm_wal_record r;
        bool end;
        cr_assert_eq(fm_wal_iter_next(it, &r, &end, &err), FM_OK, "%s",
                     err.msg);
        if (end)
            break;
        seen[n++] = r.lsn;
    }
    fm_wal_iter_close(it);
    uint64_t want_lsns[] = {1, 2, 3, 4, 6, 7, 8, 9, 10};
    cr_assert_eq(n, 9);
    cr_assert(memcmp(seen, want_lsns, sizeof(want_lsns)) == 0);
    /* New records continue after the highest LSN. */
    uint64_t lsn;
    cr_assert_eq(fm_wal_append(wal, (const uint8_t *)"x", 1, &lsn, &err),
                 FM_OK);
    cr_assert_eq(lsn, 11);
    fm_wal_close(wal);
}

/*
 * Power lost during the fdatasync of a group can keep a later page of it
 * and lose an earlier one: damage followed by intact records of the same
 * unsynced group. That is a torn group, cut whole, not corruption; the
 * same damage once a later group proves it was synced is corruption.
 */
Test(wal, a_torn_group_is_cut_with_the_intact_records_after_it)
{
    for (int synced_after = 0; synced_after < 2; synced_after++) {
        teardown();
        setup();
        struct fm_wal_options o = base_opts();
        o.segment_size = 1 << 20;
        o.fsync = FM_WAL_FSYNC_ALWAYS;
        o.no_prealloc = true;
        struct fm_wal *wal = open_ok(&o);
        append_range(wal, 1, 4, 1);
        char path[512];
        seg_path(path, sizeof(path), 1);
        uint64_t off5 = file_size(path);
        append_range(wal, 5, 10, 6); /* one group: 5..10 */
        if (synced_after)
            append_range(wal, 11, 12, 2); /* framed once 5..10 were synced */
        fm_wal_close(wal);
        size_t len;
        uint8_t *img = read_whole(path, &len);
        /* The page holding record 5 never reached the disk. */
        memset(img + off5, 0, 20);
        write_whole(path, img, len);
        free(img);

        struct log_capture logs = {0};
        o.log_fn = capture_log;
        o.log_ctx = &logs;
        struct fm_error err = {0};
        fm_status st = fm_wal_open(&o, &wal, &err);
        if (synced_after) {
            cr_assert_eq(st, FM_ERR_CORRUPT, "%s", fm_status_name(st));
            cr_assert(strstr(err.msg, "followed by valid records") != NULL,
                      "%s", err.msg);
            cr_assert_eq(file_size(path), len);
            continue;
        }
        cr_assert_eq(st, FM_OK, "%s", err.msg);
        struct fm_wal_recovery rec;
        fm_wal_get_recovery(wal, &rec);
        cr_assert_eq(rec.last_lsn, 4);
        cr_assert_eq(rec.torn_records, 5);
        cr_assert_eq(rec.torn_bytes, len - off5);
        cr_assert_eq(file_size(path), off5);
        cr_assert(strstr(logs.last, "torn group") != NULL, "%s", logs.last);
        cr_assert(strstr(logs.last, "5 intact records") != NULL, "%s",
                  logs.last);
        expect_records(wal, 0, 1, 4);
        /* The log goes on from the cut. */
        append_range(wal, 5, 6, 1);
        fm_wal_close(wal);
        wal = open_ok(&o);
        expect_records(wal, 0, 1, 6);
        fm_wal_close(wal);
    }
}

/* Damage among records that a snapshot holds is nobody's loss: recovery
 * skips it (it needs only what follows the snapshot) and says so. */
Test(wal, damage_among_records_a_snapshot_covers_is_skipped)
{
    struct fm_wal_options o = base_opts();
    o.segment_size = 1 << 20;
    o.fsync = FM_WAL_FSYNC_ALWAYS;
    o.no_prealloc = true;
    struct fm_wal *wal = open_ok(&o);
    append_range(wal, 1, 4, 1);
    char path[512];
    seg_path(path, sizeof(path), 1);
    uint64_t off5 = file_size(path);
    append_range(wal, 5, 10, 1);
    fm_wal_close(wal);
    size_t len;
    uint8_t *img = read_whole(path, &len);
    memset(img + off5, 0, 30); /* record 5, synced before 6 was framed */
    write_whole(path, img, len);
    free(img);

    struct fm_error err = {0};
    o.start_lsn = 5; /* a snapshot at lsn 4 does not hold record 5 */
    cr_assert_eq(fm_wal_open(&o, &wal, &err), FM_ERR_CORRUPT, "%s", err.msg);
    struct log_capture logs = {0};
    o.log_fn = capture_log;
    o.log_ctx = &logs;
    o.start_lsn = 6; /* a snapshot at lsn 5 does */
    wal = open_ok(&o);
    struct fm_wal_recovery rec;
    fm_wal_get_recovery(wal, &rec);
    cr_assert_eq(rec.n_skipped, 0);
    cr_assert_eq(rec.last_lsn, 10);
    cr_assert(strstr(logs.last, "snapshot at lsn 5") != NULL, "%s", logs.last);
    expect_records(wal, 5, 6, 10);
    fm_wal_close(wal);
    cr_assert_eq(fm_wal_check_dir(dir, NULL, 0, 6, NULL, NULL, &err), FM_OK,
                 "%s", err.msg);
    cr_assert_eq(fm_wal_check_dir(dir, NULL, 0, 0, NULL, NULL, &err),
                 FM_ERR_CORRUPT);
}

/* Writes a version 1 segment (24-byte records without the unsynced
 * distance) holding lsns first..last, as an older build did. */
static void write_v1_segment(uint64_t first, uint64_t last)
{
    size_t n = strlen(schema_a);
    uint8_t buf[8192];
    memcpy(buf, "FMWALSEG", 8);
    fm_store_le32(buf + 8, 1);
    fm_store_le32(buf + 12, (uint32_t)n);
    fm_store_le64(buf + 16, first);
    fm_store_le64(buf + 24, 0);
    memcpy(buf + 32, schema_a, n);
    fm_store_le64(buf + 32 + n, XXH3_64bits(buf, 32 + n));
    size_t off = 40 + n;
    for (uint64_t lsn = first; lsn <= last; lsn++) {
        uint8_t *r = buf + off;
        size_t len = payload_of(lsn, r + 24);
        fm_store_le32(r, 0x31524d46);
        fm_store_le32(r + 4, (uint32_t)len);
        fm_store_le64(r + 8, lsn);
        fm_store_le64(r + 16,
                      XXH3_64bits_withSeed(r + 24, len, XXH3_64bits(r, 16)));
        off += 24 + len;
        cr_assert_lt(off + 300, sizeof(buf));
    }
    char path[512];
    seg_path(path, sizeof(path), first);
    write_whole(path, buf, off);
}

Test(wal, version_1_segments_are_read_and_never_appended_to)
{
    write_v1_segment(1, 7);
    struct fm_wal_options o = base_opts();
    o.segment_size = 1 << 20;
    struct fm_wal *wal = open_ok(&o);
    expect_records(wal, 0, 1, 7);
    append_range(wal, 8, 9, 1);
    fm_wal_close(wal);
    struct seg_list l;
    list_segments(&l);
    cr_assert_eq(l.n, 2);
    cr_assert_eq(l.lsns[1], 8);
    wal = open_ok(&o);
    expect_records(wal, 0, 1, 9);
    fm_wal_close(wal);
    struct fm_error err = {0};
    cr_assert_eq(fm_wal_check_dir(dir, NULL, 0, 0, NULL, NULL, &err), FM_OK,
                 "%s", err.msg);

    /* In a version 1 segment damage followed by records is corruption:
     * its records cannot say what was synced. */
    teardown();
    setup();
    write_v1_segment(1, 7);
    char path[512];
    seg_path(path, sizeof(path), 1);
    size_t len;
    uint8_t *img = read_whole(path, &len);
    img[40 + strlen(schema_a) + 30] ^= 1; /* inside record 1 */
    write_whole(path, img, len);
    free(img);
    cr_assert_eq(fm_wal_open(&o, &wal, &err), FM_ERR_CORRUPT);
}

Test(wal, damaged_tail_of_an_earlier_segment_is_corrupt_not_torn)
{
    struct fm_wal_options o = base_opts();
    struct fm_wal *wal = open_ok(&o);
    append_range(wal, 1, 200, 3);
    fm_wal_close(wal);
    struct seg_list l;
    list_segments(&l);
    cr_assert_gt(l.n, 2);
    char path[512];
    seg_path(path, sizeof(path), l.lsns[0]);
    size_t len;
    uint8_t *img = read_whole(path, &len);
    /* Cut the first segment short by 5 bytes: a torn write there is
     * impossible, since rotation fsyncs the finished segment. */
    write_whole(path, img, len - 5);
    free(img);
    struct fm_error err = {0};
    cr_assert_eq(fm_wal_open(&o, &wal, &err), FM_ERR_CORRUPT);
    cr_assert(strstr(err.msg, "0000000000000001.wal") != NULL, "%s", err.msg);
}

Test(wal, missing_middle_segment_breaks_lsn_continuity)
{
    struct fm_wal_options o = base_opts();
    struct fm_wal *wal = open_ok(&o);
    append_range(wal, 1, 200, 3);
    fm_wal_close(wal);
    struct seg_list l;
    list_segments(&l);
    cr_assert_gt(l.n, 3);
    char path[512];
    seg_path(path, sizeof(path), l.lsns[1]);
    cr_assert_eq(unlink(path), 0);
    struct fm_error err = {0};
    cr_assert_eq(fm_wal_open(&o, &wal, &err), FM_ERR_CORRUPT);
    char name[32];
    snprintf(name, sizeof(name), "%016" PRIx64 ".wal", l.lsns[2]);
    cr_assert(strstr(err.msg, name) != NULL, "%s", err.msg);
    cr_assert(strstr(err.msg, "previous segment") != NULL, "%s", err.msg);

    o.force_recovery = true;
    wal = open_ok(&o);
    struct fm_wal_recovery rec;
    fm_wal_get_recovery(wal, &rec);
    cr_assert_eq(rec.n_skipped, 1);
    cr_assert_eq(rec.n_lsns_missing, l.lsns[2] - l.lsns[1]);
    cr_assert_eq(rec.last_lsn, 200);
    fm_wal_close(wal);
}

Test(wal, random_bit_flips_are_never_loaded)
{
    const char *seed_env = getenv("FM_TEST_SEED");
    unsigned seed =
        seed_env ? (unsigned)strtoul(seed_env, NULL, 10) : (unsigned)time(NULL);
    srand(seed);
    struct fm_wal_options o = base_opts();
    o.segment_size = 2048;
    struct fm_wal *wal = open_ok(&o);
    append_range(wal, 1, 60, 4);
    fm_wal_close(wal);
    struct seg_list l;
    list_segments(&l);
    cr_assert_gt(l.n, 1);

    for (int trial = 0; trial < 300; trial++) {
        size_t s = (size_t)rand() % l.n;
        char path[512];
        seg_path(path, sizeof(path), l.lsns[s]);
        size_t len;
        uint8_t *img = read_whole(path, &len);
        size_t off = (size_t)rand() % len;
        int bit = rand() % 8;
        img[off] ^= (uint8_t)(1 << bit);
        write_whole(path, img, len);

        struct fm_error err = {0};
        fm_status st = fm_wal_open(&o, &wal, &err);
        if (st == FM_OK) {
            /* Only a flip in the last record of the last segment can be
             * taken for a torn write; it must then be cut, not loaded. */
            struct fm_wal_recovery rec;
            fm_wal_get_recovery(wal, &rec);
            cr_assert_gt(rec.torn_bytes, 0,
                         "seed %u: flip at %s+%zu bit %d loaded silently", seed,
                         path, off, bit);
            cr_assert_eq(s, l.n - 1, "seed %u", seed);
            expect_records(wal, 0, 1, rec.last_lsn);
            cr_assert_lt(rec.last_lsn, 60);
            fm_wal_close(wal);
        } else {
            cr_assert_eq(st, FM_ERR_CORRUPT, "seed %u: %s: %s", seed,
                         fm_status_name(st), err.msg);
            cr_assert(strstr(err.msg, "offset") != NULL, "%s", err.msg);
        }
        img[off] ^= (uint8_t)(1 << bit);
        write_whole(path, img, len);
        free(img);
    }
}

/* ---- Schema and lock ---------------------------------------------------- */

Test(wal, segments_of_another_schema_are_refused)
{
    struct fm_wal_options o = base_opts();
    struct fm_wal *wal = open_ok(&o);
    append_range(wal, 1, 3, 1);
    fm_wal_close(wal);
    o.schema = (const uint8_t *)schema_b;
    o.schema_len = strlen(schema_b);
    struct fm_error err = {0};
    cr_assert_eq(fm_wal_open(&o, &wal, &err), FM_ERR_SCHEMA);
    cr_assert(strstr(err.msg, "0000000000000001.wal") != NULL, "%s", err.msg);
    cr_assert(strstr(err.msg, "schema") != NULL, "%s", err.msg);
}

Test(wal, lock_file_stops_a_second_open)
{
    struct fm_wal_options o = base_opts();
    struct fm_wal *wal = open_ok(&o);
    struct fm_wal *second = NULL;
    struct fm_error err = {0};
    cr_assert_eq(fm_wal_open(&o, &second, &err), FM_ERR_LOCKED);
    cr_assert(strstr(err.msg, dir) != NULL, "%s", err.msg);
    cr_assert(strstr(err.msg, "LOCK") != NULL, "%s", err.msg);
    uint64_t torn;
    cr_assert_eq(fm_wal_fix_dir(dir, &torn, &err), FM_ERR_LOCKED);
    fm_wal_close(wal);
    wal = open_ok(&o);
    fm_wal_close(wal);
}

/* ---- Sticky failures ---------------------------------------------------- */

/* Appends lsn and flushes; returns the flush status. */
static fm_status append_flush(struct fm_wal *wal, uint64_t lsn,
                              struct fm_error *err)
{
    uint8_t buf[256];
    uint64_t got;
    size_t len = payload_of(lsn, buf);
    fm_status st = fm_wal_append(wal, buf, len, &got, err);
    if (st != FM_OK)
        return st;
    cr_assert_eq(got, lsn);
    return fm_wal_flush(wal, err);
}

static void check_refuses_writes(struct fm_wal *wal, uint64_t lsn)
{
    struct fm_error err = {0};
    uint64_t got;
    cr_assert(fm_wal_is_readonly(wal));
    cr_assert_neq(fm_wal_readonly_reason(wal)[0], '\0');
    cr_assert_eq(fm_wal_append(wal, (const uint8_t *)"x", 1, &got, &err),
                 FM_ERR_READONLY);
    cr_assert(strstr(err.msg, fm_wal_readonly_reason(wal)) != NULL);
    cr_assert_eq(fm_wal_flush(wal, &err), FM_ERR_READONLY);
    cr_assert_eq(fm_wal_sync(wal, &err), FM_ERR_READONLY);
    cr_assert_eq(append_flush(wal, lsn, &err), FM_ERR_READONLY);
    struct fm_wal_stats stats;
    fm_wal_get_stats(wal, &stats);
    cr_assert(stats.readonly);
    cr_assert_str_eq(stats.reason, fm_wal_readonly_reason(wal));
}

static void write_failure_case(int err_no, bool short_first)
{
    struct fake_io f;
    fake_init(&f);
    struct fm_wal_options o = base_opts();
    o.segment_size = 1 << 20;
    o.fsync = FM_WAL_FSYNC_ALWAYS;
    o.io = &f.io;
    struct fm_wal *wal = open_ok(&o);
    append_range(wal, 1, 5, 1);
    f.fail_pwrite_at = f.n_pwrite + 1;
    f.pwrite_errno = err_no;
    f.short_then_fail = short_first;
    struct fm_error err = {0};
    uint8_t buf[256];
    uint64_t got;
    for (uint64_t lsn = 6; lsn <= 8; lsn++)
        cr_assert_eq(fm_wal_append(wal, buf, payload_of(lsn, buf), &got, &err),
                     FM_OK);
    cr_assert_eq(fm_wal_flush(wal, &err), FM_ERR_READONLY);
    cr_assert(strstr(err.msg, strerror(err_no)) != NULL, "%s", err.msg);
    cr_assert(strstr(err.msg, "6..8") != NULL, "%s", err.msg);
    check_refuses_writes(wal, 9);
    struct fm_wal_stats stats;
    fm_wal_get_stats(wal, &stats);
    cr_assert_eq(stats.lost_first_lsn, 6);
    cr_assert_eq(stats.lost_last_lsn, 8);
    cr_assert_eq(stats.durable_lsn, 5);
    fm_wal_close(wal);
    /* The failed group was cut back: it never reappears. */
    o.io = NULL;
    wal = open_ok(&o);
    struct fm_wal_recovery rec;
    fm_wal_get_recovery(wal, &rec);
    cr_assert_eq(rec.torn_bytes, 0);
    expect_records(wal, 0, 1, 5);
    fm_wal_close(wal);
}

Test(wal, enospc_on_write_makes_log_readonly)
{
    write_failure_case(ENOSPC, false);
}

Test(wal, eio_on_write_makes_log_readonly)
{
    write_failure_case(EIO, false);
}

Test(wal, short_write_then_failure_makes_log_readonly_and_is_cut_back)
{
    write_failure_case(ENOSPC, true);
}

Test(wal, short_writes_and_eintr_are_completed)
{
    struct fake_io f;
    fake_init(&f);
    f.max_chunk = 7;
    f.eintr_every = 5;
    struct fm_wal_options o = base_opts();
    o.io = &f.io;
    struct fm_wal *wal = open_ok(&o);
    append_range(wal, 1, 100, 8);
    cr_assert_not(fm_wal_is_readonly(wal));
    fm_wal_close(wal);
    o.io = NULL;
    wal = open_ok(&o);
    expect_records(wal, 0, 1, 100);
    fm_wal_close(wal);
}

Test(wal, failed_fsync_makes_log_readonly)
{
    struct fake_io f;
    fake_init(&f);
    struct fm_wal_options o = base_opts();
    o.segment_size = 1 << 20;
    o.fsync = FM_WAL_FSYNC_ALWAYS;
    o.io = &f.io;
    struct fm_wal *wal = open_ok(&o);
    append_range(wal, 1, 5, 1);
    int before = f.n_fdatasync;
    f.fail_fdatasync_at = before + 1;
    struct fm_error err = {0};
    cr_assert_eq(append_flush(wal, 6, &err), FM_ERR_READONLY);
    cr_assert(strstr(err.msg, "fdatasync") != NULL, "%s", err.msg);
    cr_assert_eq(f.n_fdatasync, before + 1);
    check_refuses_writes(wal, 7);
    cr_assert_eq(fm_wal_set_fsync(wal, FM_WAL_FSYNC_NO, &err), FM_ERR_READONLY);
    /* Nothing ever retried the fsync. */
    cr_assert_eq(f.n_fdatasync, before + 1, "fdatasync called %d times",
                 f.n_fdatasync - before);
    struct fm_wal_stats stats;
    fm_wal_get_stats(wal, &stats);
    cr_assert_eq(stats.lost_first_lsn, 6);
    cr_assert_eq(stats.lost_last_lsn, 6);
    fm_wal_close(wal);
    cr_assert_eq(f.n_fdatasync, before + 1);
    o.io = NULL;
    wal = open_ok(&o);
    expect_records(wal, 0, 1, 5);
    fm_wal_close(wal);
}

Test(wal, failed_background_fsync_reports_the_range_that_may_be_lost)
{
    struct fake_io f;
    fake_init(&f);
    struct fm_wal_options o = base_opts();
    o.segment_size = 1 << 20;
    o.fsync = FM_WAL_FSYNC_EVERYSEC;
    o.io = &f.io;
    struct fm_wal *wal = open_ok(&o);
    f.fail_fdatasync_at = 1;
    append_range(wal, 1, 10, 2);
    /* The background thread runs about once a second. */
    int64_t deadline = fm_monotonic_us() + 5000000;
    while (!fm_wal_is_readonly(wal) && fm_monotonic_us() < deadline) {
        struct timespec ts = {0, 10000000};
        nanosleep(&ts, NULL);
    }
    cr_assert(fm_wal_is_readonly(wal));
    struct fm_wal_stats stats;
    fm_wal_get_stats(wal, &stats);
    cr_assert_eq(stats.lost_first_lsn, 1);
    cr_assert_eq(stats.lost_last_lsn, 10);
    cr_assert(strstr(stats.reason, "1..10") != NULL, "%s", stats.reason);
    check_refuses_writes(wal, 11);
    /* Give the thread more than one more period: it must not retry. */
    struct timespec ts = {1, 300000000};
    nanosleep(&ts, NULL);
    cr_assert_eq(f.n_fdatasync, 1);
    fm_wal_close(wal);
    cr_assert_eq(f.n_fdatasync, 1);
}

Test(wal, everysec_syncs_in_the_background)
{
    struct fm_wal_options o = base_opts();
    o.fsync = FM_WAL_FSYNC_EVERYSEC;
    struct fm_wal *wal = open_ok(&o);
    append_range(wal, 1, 20, 4);
    struct fm_wal_stats stats;
    int64_t deadline = fm_monotonic_us() + 5000000;
    do {
        struct timespec ts = {0, 10000000};
        nanosleep(&ts, NULL);
        fm_wal_get_stats(wal, &stats);
    } while (stats.durable_lsn < 20 && fm_monotonic_us() < deadline);
    cr_assert_eq(stats.durable_lsn, 20);
    cr_assert_gt(stats.last_fsync_us, 0);
    cr_assert_str_eq(fm_wal_fsync_name(stats.fsync), "everysec");
    struct fm_error err = {0};
    cr_assert_eq(fm_wal_set_fsync(wal, FM_WAL_FSYNC_ALWAYS, &err), FM_OK);
    append_range(wal, 21, 22, 1);
    fm_wal_get_stats(wal, &stats);
    cr_assert_eq(stats.durable_lsn, 22);
    cr_assert_eq(fm_wal_set_fsync(wal, FM_WAL_FSYNC_EVERYSEC, &err), FM_OK);
    fm_wal_close(wal);
}

Test(wal, failed_segment_creation_makes_log_readonly)
{
    struct fake_io f;
    fake_init(&f);
    struct fm_wal_options o = base_opts();
    o.segment_size = 512;
    o.io = &f.io;
    struct fm_wal *wal = open_ok(&o);
    f.fail_open_at = f.n_open + 1;
    struct fm_error err = {0};
    fm_status st = FM_OK;
    uint64_t lsn = 1;
    while (st == FM_OK && lsn < 100)
        st = append_flush(wal, lsn++, &err);
    cr_assert_eq(st, FM_ERR_READONLY, "%s", err.msg);
    cr_assert(strstr(err.msg, "segment") != NULL, "%s", err.msg);
    check_refuses_writes(wal, lsn);
    fm_wal_close(wal);
    o.io = NULL;
    wal = open_ok(&o);
    expect_records(wal, 0, 1, lsn - 2);
    fm_wal_close(wal);
}

/* ---- Truncation and snapshots ------------------------------------------- */

Test(wal, truncate_before_deletes_only_covered_segments)
{
    struct fm_wal_options o = base_opts();
    struct fm_wal *wal = open_ok(&o);
    append_range(wal, 1, 300, 4);
    struct seg_list l;
    list_segments(&l);
    cr_assert_gt(l.n, 5);
    struct fm_error err = {0};
    size_t n = 99;
    /* One LSN short of covering segment 2: only segments 0 and 1 go. */
    cr_assert_eq(fm_wal_truncate_before(wal, l.lsns[3] - 2, &n, &err), FM_OK);
    cr_assert_eq(n, 2);
    struct seg_list after;
    list_segments(&after);
    cr_assert_eq(after.n, l.n - 2);
    cr_assert_eq(after.lsns[0], l.lsns[2]);
    cr_assert_eq(fm_wal_truncate_before(wal, l.lsns[3] - 1, &n, &err), FM_OK);
    cr_assert_eq(n, 1);
    /* Everything covered: the active segment stays. */
    cr_assert_eq(fm_wal_truncate_before(wal, 1000, &n, &err), FM_OK);
    list_segments(&after);
    cr_assert_eq(after.n, 1);
    cr_assert_eq(after.lsns[0], l.lsns[l.n - 1]);
    struct fm_wal_stats stats;
    fm_wal_get_stats(wal, &stats);
    cr_assert_eq(stats.n_segments, 1);
    append_range(wal, 301, 310, 1);
    fm_wal_close(wal);

    o.start_lsn = 301;
    wal = open_ok(&o);
    expect_records(wal, 300, 301, 310);
    /* Records the snapshot does not cover are gone: say so. */
    struct fm_wal_iter *it;
    cr_assert_eq(fm_wal_iter_open(wal, 0, &it, &err), FM_ERR_CORRUPT);
    cr_assert(strstr(err.msg, "begins at lsn") != NULL, "%s", err.msg);
    fm_wal_close(wal);
}

Test(wal, log_ending_before_the_snapshot_continues_at_start_lsn)
{
    struct fm_wal_options o = base_opts();
    struct fm_wal *wal = open_ok(&o);
    append_range(wal, 1, 10, 1);
    fm_wal_close(wal);
    o.start_lsn = 21;
    wal = open_ok(&o);
    append_range(wal, 21, 25, 1);
    fm_wal_close(wal);
    /* The gap 11..20 is covered by the snapshot at 20. */
    wal = open_ok(&o);
    expect_records(wal, 20, 21, 25);
    fm_wal_close(wal);
    /* Without that snapshot the gap is corruption. */
    o.start_lsn = 1;
    struct fm_error err = {0};
    cr_assert_eq(fm_wal_open(&o, &wal, &err), FM_ERR_CORRUPT);
    cr_assert(strstr(err.msg, "0000000000000015.wal") != NULL, "%s", err.msg);
}

Test(wal, empty_directory_starts_at_start_lsn)
{
    struct fm_wal_options o = base_opts();
    o.start_lsn = 1000;
    struct fm_wal *wal = open_ok(&o);
    append_range(wal, 1000, 1010, 3);
    fm_wal_close(wal);
    wal = open_ok(&o);
    expect_records(wal, 999, 1000, 1010);
    fm_wal_close(wal);
}

Test(wal, stale_temporary_segments_are_removed_at_open)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/0000000000000009.wal.tmp", dir);
    write_whole(path, (const uint8_t *)"partial", 7);
    struct fm_wal_options o = base_opts();
    struct fm_wal *wal = open_ok(&o);
    struct fm_wal_recovery rec;
    fm_wal_get_recovery(wal, &rec);
    cr_assert_eq(rec.n_temp_removed, 1);
    cr_assert_neq(access(path, F_OK), 0);
    fm_wal_close(wal);
}

/* ---- Offline check and fix ---------------------------------------------- */

struct reports {
    struct fm_wal_segment_report r[64];
    size_t n;
};

static void collect_report(void *ctx, const struct fm_wal_segment_report *r)
{
    struct reports *rs = ctx;
    if (rs->n < 64)
        rs->r[rs->n++] = *r;
}

Test(wal, check_dir_reports_every_segment_and_fix_cuts_a_torn_tail)
{
    struct fm_wal_options o = base_opts();
    struct fm_wal *wal = open_ok(&o);
    append_range(wal, 1, 100, 3);
    fm_wal_close(wal);
    struct seg_list l;
    list_segments(&l);

    struct reports rs = {0};
    struct fm_error err = {0};
    cr_assert_eq(fm_wal_check_dir(dir, (const uint8_t *)schema_a,
                                  strlen(schema_a), 0, collect_report, &rs,
                                  &err),
                 FM_OK, "%s", err.msg);
    cr_assert_eq(rs.n, l.n);
    uint64_t total = 0;
    for (size_t i = 0; i < rs.n; i++) {
        cr_assert_eq(rs.r[i].first_lsn, l.lsns[i]);
        cr_assert_eq(rs.r[i].first_bad_offset, -1);
        total += rs.r[i].n_records;
    }
    cr_assert_eq(total, 100);
    cr_assert_eq(rs.r[rs.n - 1].last_lsn, 100);

    /* Tear the last record. */
    char path[512];
    seg_path(path, sizeof(path), l.lsns[l.n - 1]);
    size_t len;
    uint8_t *img = read_whole(path, &len);
    write_whole(path, img, len - 3);
    rs.n = 0;
    cr_assert_eq(fm_wal_check_dir(dir, NULL, 0, 0, collect_report, &rs, &err),
                 FM_OK);
    cr_assert_gt(rs.r[rs.n - 1].torn_bytes, 0);
    cr_assert_eq(rs.r[rs.n - 1].last_lsn, 99);
    uint64_t torn = 0;
    cr_assert_eq(fm_wal_fix_dir(dir, &torn, &err), FM_OK, "%s", err.msg);
    cr_assert_eq(torn, rs.r[rs.n - 1].torn_bytes);
    rs.n = 0;
    cr_assert_eq(fm_wal_check_dir(dir, NULL, 0, 0, collect_report, &rs, &err),
                 FM_OK);
    cr_assert_eq(rs.r[rs.n - 1].torn_bytes, 0);

    /* Damage in the middle of the first segment is reported by offset. */
    char first[512];
    seg_path(first, sizeof(first), l.lsns[0]);
    free(img);
    img = read_whole(first, &len);
    img[len / 2] ^= 1;
    write_whole(first, img, len);
    free(img);
    rs.n = 0;
    cr_assert_eq(fm_wal_check_dir(dir, NULL, 0, 0, collect_report, &rs, &err),
                 FM_ERR_CORRUPT);
    cr_assert_eq(rs.r[0].st, FM_ERR_CORRUPT);
    cr_assert_geq(rs.r[0].first_bad_offset, 0);
    cr_assert_leq(rs.r[0].first_bad_offset, (int64_t)len / 2);
    cr_assert(strstr(err.msg, "0000000000000001.wal") != NULL, "%s", err.msg);
    cr_assert_eq(fm_wal_fix_dir(dir, &torn, &err), FM_ERR_CORRUPT);
    /* Schema check in verification. */
    rs.n = 0;
    cr_assert_eq(fm_wal_check_dir(dir, (const uint8_t *)schema_b,
                                  strlen(schema_b), 0, collect_report, &rs,
                                  &err),
                 FM_ERR_SCHEMA);
}

/* ---- Allocation failure ------------------------------------------------- */

struct fail_nth {
    int n;
    int count;
};

static bool fail_nth_alloc(void *ctx, size_t size)
{
    (void)size;
    struct fail_nth *f = ctx;
    return f->count++ == f->n;
}

Test(wal, allocation_failure_at_each_step_is_reported_cleanly)
{
    struct fm_wal_options o = base_opts();
    struct fm_wal *wal = open_ok(&o);
    append_range(wal, 1, 50, 5);
    fm_wal_close(wal);
    for (int n = 0;; n++) {
        struct fail_nth f = {n, 0};
        wal = NULL;
        struct fm_error err = {0};
        fm_set_alloc_fail_hook(fail_nth_alloc, &f);
        fm_status st = fm_wal_open(&o, &wal, &err);
        struct fm_wal_iter *it = NULL;
        if (st == FM_OK)
            st = fm_wal_iter_open(wal, 0, &it, &err);
        for (bool end = false; st == FM_OK && !end;) {
            struct fm_wal_record r;
            st = fm_wal_iter_next(it, &r, &end, &err);
        }
        uint64_t lsn;
        if (st == FM_OK)
            st = fm_wal_append(wal, (const uint8_t *)"abc", 3, &lsn, &err);
        fm_set_alloc_fail_hook(NULL, NULL);
        fm_wal_iter_close(it);
        if (st == FM_OK) {
            /* Every injected failure must surface as FM_ERR_NOMEM. */
            cr_assert_leq(f.count, n, "failure %d was swallowed", n);
            fm_wal_close(wal);
            break;
        }
        cr_assert_eq(st, FM_ERR_NOMEM, "step %d: %s %s", n, fm_status_name(st),
                     err.msg);
        if (wal != NULL)
            fm_wal_close(wal);
        wal = NULL;
        cr_assert_lt(n, 1000);
    }
}

Test(wal, check_dir_tells_preallocated_zeros_from_a_torn_tail)
{
    struct fm_wal_options o;
    char path[512];
    size_t len;
    uint64_t end;
    free(always_segment(&o, 1 << 20, 40, 4, path, &len, &end));
    struct reports rs = {0};
    struct fm_error err = {0};
    cr_assert_eq(fm_wal_check_dir(dir, NULL, 0, 0, collect_report, &rs, &err),
                 FM_OK, "%s", err.msg);
    cr_assert_eq(rs.n, 1);
    cr_assert_eq(rs.r[0].st, FM_OK);
    cr_assert_eq(rs.r[0].last_lsn, 40);
    cr_assert_eq(rs.r[0].torn_bytes, 0);
    cr_assert_eq(rs.r[0].zero_bytes, len - end);
    cr_assert_eq(rs.r[0].size_bytes, len);
    uint64_t torn = 1;
    cr_assert_eq(fm_wal_fix_dir(dir, &torn, &err), FM_OK, "%s", err.msg);
    cr_assert_eq(torn, 0);
    cr_assert_eq(file_size(path), len, "fix leaves the zeros alone");
}

/*
 * everysec on a disk whose fdatasync takes 1.2 s: without a bound the
 * acknowledged writes run up to 2.2 s ahead of the disk (1 s period plus
 * the slow call). With everysec_max_lag_ms 300, a flush whose oldest
 * undurable write is older than that syncs itself before it returns.
 */
Test(wal, everysec_bounds_how_far_writes_run_ahead_of_a_slow_disk)
{
    struct fake_io f;
    fake_init(&f);
    f.fdatasync_delay_ms = 1200;
    struct fm_wal_options o = base_opts();
    o.segment_size = 1 << 20;
    o.fsync = FM_WAL_FSYNC_EVERYSEC;
    o.everysec_max_lag_ms = 300;
    o.io = &f.io;
    struct log_capture logs = {0};
    o.log_fn = capture_log;
    o.log_ctx = &logs;
    struct fm_wal *wal = open_ok(&o);
    /* ack_us[lsn]: when the flush of lsn returned (it was acknowledged). */
    static int64_t ack_us[400];
    int64_t worst = 0;
    uint64_t lsn = 1;
    int64_t end = fm_monotonic_us() + 3500000;
    while (fm_monotonic_us() < end && lsn < 400) {
        append_range(wal, lsn, lsn, 1);
        int64_t now = fm_monotonic_us();
        ack_us[lsn] = now;
        struct fm_wal_stats st;
        fm_wal_get_stats(wal, &st);
        /* The oldest acknowledged record that is not durable. */
        if (st.durable_lsn < lsn) {
            int64_t age = now - ack_us[st.durable_lsn + 1];
            if (age > worst)
                worst = age;
        }
        lsn++;
        struct timespec ts = {0, 20000000};
        nanosleep(&ts, NULL);
    }
    struct fm_wal_stats st;
    fm_wal_get_stats(wal, &st);
    cr_assert_gt(st.n_lag_syncs, 0);
    /* 300 ms, plus one 20 ms step, plus scheduling slack. */
    cr_assert_lt(worst, 600000, "writes ran %lld us ahead of the disk",
                 (long long)worst);
    cr_assert(strstr(logs.last, "behind") != NULL, "%s", logs.last);
    fm_wal_close(wal);
    o.io = NULL;
    o.log_fn = NULL;
    wal = open_ok(&o);
    expect_records(wal, 0, 1, lsn - 1);
    fm_wal_close(wal);
}
