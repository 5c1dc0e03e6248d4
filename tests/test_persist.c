/*
 * test_persist.c: the engine with a data directory: redo records,
 * snapshots, recovery and the WAL's failure modes (SPEC section 4), through
 * the public API of engine/fermata.h.
 *
 * Every test works in its own temporary directory. "The same data" is
 * checked by dumping every table with FIND before and after a restart: the
 * row images carry ids and timestamps, so a recovered database must dump
 * byte for byte as the one that wrote it.
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "engine/fermata.h"
#include "wal/wal.h"

static char dir[256];
static struct fm_reply reply;

static void setup(void)
{
    snprintf(dir, sizeof(dir), "/tmp/fm_persist_XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
}

static void teardown(void)
{
    char cmd[512];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    cr_assert_eq(system(cmd), 0);
    fm_reply_fini(&reply);
}

TestSuite(persist, .init = setup, .fini = teardown);

static struct fm_engine_options options(enum fm_fsync_policy p)
{
    struct fm_engine_options o = {0};
    o.dir = dir;
    o.fsync = p;
    return o;
}

static struct fm_engine *open_db_with(const struct fm_engine_options *o)
{
    struct fm_engine *e = NULL;
    struct fm_error err = {0};
    fm_status st = fm_engine_new(o, &e, &err);
    cr_assert_eq(st, FM_OK, "open: %s %s", fm_status_name(st), err.msg);
    return e;
}

static struct fm_engine *open_db(void)
{
    struct fm_engine_options o = options(FM_FSYNC_ALWAYS);
    return open_db_with(&o);
}

static fm_status run(struct fm_engine *e, const char *cmd)
{
    static char copy[4096];
    const uint8_t *argv[64];
    size_t lens[64];
    size_t argc = 0;
    snprintf(copy, sizeof(copy), "%s", cmd);
    for (char *t = strtok(copy, " "); t != NULL; t = strtok(NULL, " ")) {
        argv[argc] = (const uint8_t *)t;
        lens[argc++] = strlen(t);
    }
    fm_reply_reset(&reply);
    return fm_engine_exec(e, argc, argv, lens, &reply);
}

static void ok(struct fm_engine *e, const char *cmd)
{
    fm_status st = run(e, cmd);
    cr_assert_eq(st, FM_OK, "%s: %s", cmd, fm_status_name(st));
}

static void flush(struct fm_engine *e)
{
    struct fm_error err = {0};
    cr_assert_eq(fm_engine_flush(e, &err), FM_OK, "%s", err.msg);
}

/* Every table, every row, as text (malloc'ed). */
static char *dump(struct fm_engine *e)
{
    size_t cap = 1 << 22;
    char *out = malloc(cap);
    size_t o = 0;
    for (size_t i = 0; i < fm_engine_table_count(e); i++) {
        struct fm_table_stats s;
        fm_engine_table_stats(e, i, &s);
        char cmd[128];
        snprintf(cmd, sizeof(cmd), "FIND %s", s.name);
        cr_assert_eq(run(e, cmd), FM_OK);
        o += (size_t)snprintf(out + o, cap - o, "%s next %llu:", s.name,
                              (unsigned long long)s.next_id);
        struct fm_reply_cursor c;
        struct fm_reply_value v;
        fm_reply_cursor_init(&c, &reply);
        while (fm_reply_next(&c, &v) && o < cap - 64) {
            if (v.type == FM_REPLY_INT)
                o +=
                    (size_t)snprintf(out + o, cap - o, " %lld", (long long)v.i);
            else if (v.type == FM_REPLY_BULK)
                o += (size_t)snprintf(out + o, cap - o, " %.*s", (int)v.len,
                                      (const char *)v.str);
            else if (v.type == FM_REPLY_NIL)
                o += (size_t)snprintf(out + o, cap - o, " nil");
            else if (v.type == FM_REPLY_ARRAY)
                o += (size_t)snprintf(out + o, cap - o, " [%zu]", v.n);
        }
        o += (size_t)snprintf(out + o, cap - o, "\n");
    }
    return out;
}

static void seed(struct fm_engine *e, int n)
{
    char cmd[512];
    ok(e, "INSERT genres name rock");
    ok(e, "INSERT albums title A year 1999");
    for (int i = 1; i <= n; i++) {
        snprintf(cmd, sizeof(cmd),
                 "INSERT users username u%d email e%d password_digest d "
                 "session_token s%d",
                 i, i, i % 7);
        ok(e, cmd);
        snprintf(cmd, sizeof(cmd),
                 "INSERT tracks title t%d song_url url%d album_id 1 "
                 "popularity %d genre_id 1",
                 i, i, i % 100);
        ok(e, cmd);
        snprintf(cmd, sizeof(cmd), "INSERT playlists title p%d user_id %d", i,
                 i);
        ok(e, cmd);
        snprintf(cmd, sizeof(cmd),
                 "INSERT playlist_tracks playlist_id %d track_id %d", i, i);
        ok(e, cmd);
    }
    for (int i = 1; i <= n; i++) {
        snprintf(cmd, sizeof(cmd),
                 "UPSERT user_track_history user_id %d track_id %d INCR "
                 "listen_count %d",
                 i, (i * 7) % n + 1, i);
        ok(e, cmd);
    }
}

/* Changes of every kind: updates, INCR, cascades, SET NULL, deletes. */
static void churn(struct fm_engine *e, int n)
{
    char cmd[256];
    for (int i = 1; i <= n; i += 3) {
        snprintf(cmd, sizeof(cmd), "UPDATE users %d email new%d", i, i);
        ok(e, cmd);
        snprintf(cmd, sizeof(cmd),
                 "UPSERT user_track_history user_id %d track_id %d INCR "
                 "listen_count 5 SET rating 1",
                 i, (i * 7) % n + 1);
        ok(e, cmd);
    }
    for (int i = 2; i <= n; i += 5) {
        snprintf(cmd, sizeof(cmd), "DELETE users %d", i);
        ok(e, cmd);
    }
    ok(e, "DELETE genres 1");
    cr_assert_eq(run(e, "INSERT genres name rock"), FM_OK);
    cr_assert_eq(run(e, "INSERT genres name rock"), FM_ERR_UNIQUE);
}

static void check(struct fm_engine *e)
{
    struct fm_error err = {0};
    cr_assert_eq(fm_engine_check(e, &err), FM_OK, "%s", err.msg);
}

/* Opens the directory with o, checks every invariant and that it dumps as
 * want (which it frees); returns the engine. */
static struct fm_engine *open_expecting(const struct fm_engine_options *o,
                                        char *want)
{
    struct fm_engine *e = open_db_with(o);
    check(e);
    char *got = dump(e);
    cr_assert_str_eq(want, got);
    free(want);
    free(got);
    return e;
}

static struct fm_engine *reopen_expecting(char *want)
{
    struct fm_engine_options o = options(FM_FSYNC_ALWAYS);
    return open_expecting(&o, want);
}

static void reopen_and_compare(struct fm_engine **e)
{
    check(*e);
    char *before = dump(*e);
    fm_engine_free(*e);
    *e = reopen_expecting(before);
}

Test(persist, flushed_writes_survive_a_restart_through_the_wal)
{
    struct fm_engine *e = open_db();
    seed(e, 50);
    churn(e, 50);
    flush(e);
    reopen_and_compare(&e);
    struct fm_persist_stats ps;
    fm_engine_persist_stats(e, &ps);
    cr_assert(ps.enabled);
    cr_assert_eq(ps.recovered_rows, 0);
    cr_assert_gt(ps.recovered_records, 250);
    ok(e, "INSERT artists name after_restart");
    cr_assert_eq(reply.buf.len > 0, true);
    fm_engine_free(e);
}

Test(persist, unflushed_writes_are_lost_and_nothing_else)
{
    struct fm_engine *e = open_db();
    seed(e, 10);
    flush(e);
    char *durable = dump(e);
    ok(e, "INSERT artists name never_flushed");
    fm_engine_free(e);
    e = reopen_expecting(durable);
    fm_engine_free(e);
}

/* Runs the cron until the background snapshot is over (30 s at most);
 * *ps gets the last figures. */
static void wait_bgsave(struct fm_engine *e, struct fm_persist_stats *ps)
{
    for (int i = 0; i < 3000; i++) {
        fm_engine_cron(e);
        fm_engine_persist_stats(e, ps);
        if (!ps->bgsave_in_progress)
            return;
        nanosleep(&(struct timespec){0, 10000000}, NULL);
    }
}

Test(persist, snapshot_plus_wal_recovers_the_same_state)
{
    struct fm_engine *e = open_db();
    struct fm_error err = {0};
    seed(e, 60);
    cr_assert_eq(fm_engine_save(e, &err), FM_OK, "%s", err.msg);
    churn(e, 60);
    flush(e);
    reopen_and_compare(&e);
    struct fm_persist_stats ps;
    fm_engine_persist_stats(e, &ps);
    cr_assert_gt(ps.recovered_rows, 300, "rows came from the snapshot");
    cr_assert_gt(ps.recovered_records, 20, "the churn came from the WAL");
    cr_assert_lt(ps.recovered_records, 100);
    /* Indexes built in bulk at load answer as before. */
    cr_assert_eq(run(e, "FIND users WHERE username = u1"), FM_OK);
    cr_assert_eq(run(e, "INSERT users username u1 email x password_digest d "
                        "session_token s"),
                 FM_ERR_UNIQUE);
    cr_assert_eq(run(e, "COUNT user_track_history WHERE user_id = 1"), FM_OK);
    fm_engine_free(e);
}

Test(persist, background_snapshot_in_a_child_is_loaded_at_restart)
{
    struct fm_engine *e = open_db();
    struct fm_error err = {0};
    seed(e, 40);
    cr_assert_eq(fm_engine_bgsave(e, &err), FM_OK, "%s", err.msg);
    cr_assert_eq(fm_engine_bgsave(e, &err), FM_ERR_STATE,
                 "one snapshot at a time");
    /* The parent keeps serving writes while the child works. */
    ok(e, "INSERT artists name during_bgsave");
    flush(e);
    struct fm_persist_stats ps;
    wait_bgsave(e, &ps);
    cr_assert(!ps.bgsave_in_progress, "the child finished");
    cr_assert(ps.last_save_ok);
    cr_assert_gt(ps.last_save_bytes, 0);
    cr_assert_gt(ps.last_save_raw_bytes, ps.last_save_bytes / 4);
    cr_assert_eq(ps.changes_since_save, 1, "the insert during the save");
    reopen_and_compare(&e);
    fm_engine_persist_stats(e, &ps);
    cr_assert_gt(ps.recovered_rows, 100);
    cr_assert_eq(ps.recovered_records, 1);
    fm_engine_free(e);
}

/*
 * Where the records of a WAL segment end: under fsync always the active
 * segment is followed by preallocated zeros (wal/wal.c), so the file's
 * length is not the end of the log. Walks the record headers of
 * wal/segment.c's format.
 */
static off_t wal_records_end(int fd)
{
    struct stat sb;
    cr_assert_eq(fstat(fd, &sb), 0);
    uint8_t *img = malloc((size_t)sb.st_size);
    cr_assert_not_null(img);
    cr_assert_eq(pread(fd, img, (size_t)sb.st_size, 0), sb.st_size);
    /* Records have 28-byte headers from format version 2 on, 24 before. */
    off_t hdr = fm_load_le32(img + 8) == 1 ? 24 : 28;
    off_t pos = 32 + (off_t)fm_load_le32(img + 12) + 8;
    while (pos + hdr <= sb.st_size && fm_load_le32(img + pos) != 0)
        pos += hdr + (off_t)fm_load_le32(img + pos + 4);
    free(img);
    return pos;
}

/* Flips a byte off_from_end bytes before the end of the data of path: the
 * end of its records for a WAL segment, of the file otherwise. */
static void flip_byte(const char *path, long off_from_end)
{
    int fd = open(path, O_RDWR);
    cr_assert_geq(fd, 0, "%s", path);
    struct stat sb;
    cr_assert_eq(fstat(fd, &sb), 0);
    size_t n = strlen(path);
    off_t end = n > 4 && strcmp(path + n - 4, ".wal") == 0 ? wal_records_end(fd)
                                                           : sb.st_size;
    off_t off = end - off_from_end;
    uint8_t b;
    cr_assert_eq(pread(fd, &b, 1, off), 1);
    b ^= 0x40;
    cr_assert_eq(pwrite(fd, &b, 1, off), 1);
    close(fd);
}

/* Path of the file in dir with the greatest name ending in suffix. */
static void newest(const char *suffix, char *out, size_t cap)
{
    DIR *d = opendir(dir);
    struct dirent *de;
    char best[256] = "";
    while ((de = readdir(d)) != NULL) {
        size_t n = strlen(de->d_name);
        size_t s = strlen(suffix);
        if (n > s && strcmp(de->d_name + n - s, suffix) == 0 &&
            strcmp(de->d_name, best) > 0)
            snprintf(best, sizeof(best), "%s", de->d_name);
    }
    closedir(d);
    cr_assert_neq(best[0], '\0', "no *%s in %s", suffix, dir);
    snprintf(out, cap, "%s/%s", dir, best);
}

Test(persist, a_bad_snapshot_falls_back_to_the_previous_one)
{
    struct fm_engine *e = open_db();
    struct fm_error err = {0};
    seed(e, 30);
    cr_assert_eq(fm_engine_save(e, &err), FM_OK, "%s", err.msg);
    churn(e, 30);
    cr_assert_eq(fm_engine_save(e, &err), FM_OK, "%s", err.msg);
    ok(e, "INSERT artists name after_second_save");
    flush(e);
    char *before = dump(e);
    fm_engine_free(e);
    char path[512];
    newest(".snap", path, sizeof(path));
    flip_byte(path, 100);
    e = reopen_expecting(before);
    struct fm_persist_stats ps;
    fm_engine_persist_stats(e, &ps);
    cr_assert_gt(ps.recovered_records, 10, "the longer WAL was replayed");
    fm_engine_free(e);
}

Test(persist, another_schema_is_refused_with_a_clear_error)
{
    struct fm_engine *e = open_db();
    seed(e, 3);
    flush(e);
    fm_engine_free(e);
    struct fm_engine_options o = options(FM_FSYNC_ALWAYS);
    const char *ddl = "CREATE TABLE other (x integer);";
    o.schema_text = ddl;
    o.schema_len = strlen(ddl);
    struct fm_error err = {0};
    cr_assert_eq(fm_engine_new(&o, &e, &err), FM_ERR_SCHEMA, "%s", err.msg);
    cr_assert_not_null(strstr(err.msg, ".wal"), "names the file: %s", err.msg);
}

Test(persist, a_second_engine_on_the_same_directory_is_refused)
{
    struct fm_engine *e = open_db();
    struct fm_engine *e2 = NULL;
    struct fm_engine_options o = options(FM_FSYNC_ALWAYS);
    struct fm_error err = {0};
    cr_assert_eq(fm_engine_new(&o, &e2, &err), FM_ERR_LOCKED, "%s", err.msg);
    fm_engine_free(e);
}

Test(persist, a_torn_last_record_is_cut_and_the_rest_recovered)
{
    struct fm_engine *e = open_db();
    seed(e, 5);
    flush(e);
    char *durable = dump(e);
    ok(e, "INSERT artists name torn");
    flush(e);
    fm_engine_free(e);
    char path[512];
    newest(".wal", path, sizeof(path));
    int fd = open(path, O_RDWR);
    cr_assert_geq(fd, 0, "%s", path);
    cr_assert_eq(ftruncate(fd, wal_records_end(fd) - 3), 0);
    close(fd);
    e = reopen_expecting(durable);
    fm_engine_free(e);
}

Test(persist, a_bad_record_before_good_ones_stops_recovery)
{
    struct fm_engine *e = open_db();
    seed(e, 5);
    flush(e);
    ok(e, "INSERT artists name a");
    flush(e);
    ok(e, "INSERT artists name b");
    flush(e);
    fm_engine_free(e);
    char path[512];
    newest(".wal", path, sizeof(path));
    flip_byte(path, 60);
    struct fm_engine_options o = options(FM_FSYNC_ALWAYS);
    struct fm_error err = {0};
    cr_assert_eq(fm_engine_new(&o, &e, &err), FM_ERR_CORRUPT, "%s", err.msg);
    cr_assert_not_null(strstr(err.msg, ".wal"), "%s", err.msg);
    o.force_recovery = true;
    cr_assert_eq(fm_engine_new(&o, &e, &err), FM_OK, "%s", err.msg);
    cr_assert_eq(run(e, "COUNT artists"), FM_OK);
    fm_engine_free(e);
}

static void count_item(void *ctx, const struct fm_check_item *it)
{
    (void)it;
    (*(int *)ctx)++;
}

/*
 * An OS crash under everysec can lose the log's tail while a later
 * snapshot survives; recovery then starts a new segment after the
 * snapshot. The gap that leaves between segments is covered by the
 * snapshot, and fermata-check must accept it as recovery does.
 */
Test(persist, check_dir_accepts_a_wal_gap_that_a_snapshot_covers)
{
    struct fm_engine_options o = options(FM_FSYNC_EVERYSEC);
    o.snapshot.keep = 2;
    struct fm_engine *e = open_db_with(&o);
    struct fm_error err = {0};
    char cmd[64];
    for (int i = 1; i <= 25; i++) {
        snprintf(cmd, sizeof(cmd), "INSERT artists name a%d", i);
        ok(e, cmd);
        flush(e);
        if (i == 20)
            cr_assert_eq(fm_engine_save(e, &err), FM_OK, "%s", err.msg);
    }
    cr_assert_eq(fm_engine_save(e, &err), FM_OK, "%s", err.msg);
    char *saved = dump(e);
    fm_engine_free(e);
    /* Lose the log after lsn 22 (records are 28 bytes of header each). */
    char path[512];
    newest(".wal", path, sizeof(path));
    int fd = open(path, O_RDWR);
    cr_assert_geq(fd, 0, "%s", path);
    off_t end = wal_records_end(fd);
    uint8_t *img = malloc((size_t)end);
    cr_assert_eq(pread(fd, img, (size_t)end, 0), end);
    off_t pos = 32 + (off_t)fm_load_le32(img + 12) + 8;
    while (pos < end && fm_load_le64(img + pos + 8) <= 22)
        pos += 28 + (off_t)fm_load_le32(img + pos + 4);
    cr_assert_eq(fm_load_le64(img + pos + 8), 23);
    cr_assert_eq(ftruncate(fd, pos), 0);
    free(img);
    close(fd);
    /* Recovery takes the snapshot at 25 and goes on at 26. */
    e = open_expecting(&o, saved);
    ok(e, "INSERT artists name after");
    flush(e);
    fm_engine_free(e);
    int n_items = 0;
    cr_assert_eq(fm_check_dir(dir, NULL, 0, false, count_item, &n_items, &err),
                 FM_OK, "%s", err.msg);
    cr_assert_geq(n_items, 4); /* two snapshots and two segments */
}

/* A WAL whose fdatasync fails from the n-th call on. */
struct faulty {
    int calls;
    int fail_from;
};

static int f_open(void *ctx, const char *path, int flags, int mode)
{
    (void)ctx;
    return open(path, flags, mode);
}
static ssize_t f_pwrite(void *ctx, int fd, const void *b, size_t n, off_t o)
{
    (void)ctx;
    return pwrite(fd, b, n, o);
}
static int f_fdatasync(void *ctx, int fd)
{
    struct faulty *f = ctx;
    if (++f->calls >= f->fail_from) {
        errno = EIO;
        return -1;
    }
    return fdatasync(fd);
}
static int f_fsync(void *ctx, int fd)
{
    (void)ctx;
    return fsync(fd);
}
static int f_ftruncate(void *ctx, int fd, off_t len)
{
    (void)ctx;
    return ftruncate(fd, len);
}
static int f_rename(void *ctx, const char *a, const char *b)
{
    (void)ctx;
    return rename(a, b);
}
static int f_unlink(void *ctx, const char *p)
{
    (void)ctx;
    return unlink(p);
}
static int f_close(void *ctx, int fd)
{
    (void)ctx;
    return close(fd);
}

/* The WAL's system calls through f, with pwrite as given. */
static struct fm_wal_io
faulty_io(struct faulty *f,
          ssize_t (*pwrite_fn)(void *, int, const void *, size_t, off_t))
{
    struct fm_wal_io io = {f,           f_open,   pwrite_fn,
                           f_fdatasync, f_fsync,  f_ftruncate,
                           f_rename,    f_unlink, f_close};
    return io;
}

Test(persist, a_failed_fsync_rolls_back_the_group_and_refuses_writes)
{
    struct faulty f = {0, 1000000};
    struct fm_wal_io io = faulty_io(&f, f_pwrite);
    struct fm_engine_options o = options(FM_FSYNC_ALWAYS);
    o.wal_io = &io;
    struct fm_engine *e = open_db_with(&o);
    seed(e, 5);
    flush(e);
    char *durable = dump(e);
    f.fail_from = f.calls + 1;
    ok(e, "INSERT artists name lost");
    ok(e, "UPDATE users 1 email lost@x");
    ok(e, "DELETE users 2");
    struct fm_error err = {0};
    cr_assert_eq(fm_engine_flush(e, &err), FM_ERR_READONLY);
    cr_assert_not_null(fm_engine_readonly_reason(e));
    char *now = dump(e);
    cr_assert_str_eq(durable, now, "the whole group was rolled back");
    cr_assert_eq(run(e, "INSERT artists name later"), FM_ERR_READONLY);
    cr_assert_eq(run(e, "COUNT users"), FM_OK, "reads go on");
    struct fm_persist_stats ps;
    fm_engine_persist_stats(e, &ps);
    cr_assert(ps.readonly);
    fm_engine_free(e);
    e = reopen_expecting(durable);
    free(now);
    fm_engine_free(e);
}

Test(persist, multi_is_one_record_and_replays_atomically)
{
    struct fm_engine *e = open_db();
    seed(e, 5);
    const uint8_t *a1[] = {(const uint8_t *)"INSERT",
                           (const uint8_t *)"artists", (const uint8_t *)"name",
                           (const uint8_t *)"m1"};
    const uint8_t *a2[] = {(const uint8_t *)"DELETE", (const uint8_t *)"users",
                           (const uint8_t *)"3"};
    size_t l1[] = {6, 7, 4, 2};
    size_t l2[] = {6, 5, 1};
    struct fm_command cmds[] = {{4, a1, l1}, {3, a2, l2}};
    fm_reply_reset(&reply);
    cr_assert_eq(fm_engine_exec_multi(e, 2, cmds, &reply), FM_OK);
    flush(e);
    reopen_and_compare(&e);
    fm_engine_free(e);
}

Test(persist, shutdown_saves_and_the_next_start_reads_only_the_snapshot)
{
    struct fm_engine *e = open_db();
    struct fm_error err = {0};
    seed(e, 20);
    char *before = dump(e);
    cr_assert_eq(fm_engine_shutdown(e, false, &err), FM_OK, "%s", err.msg);
    fm_engine_free(e);
    e = reopen_expecting(before);
    struct fm_persist_stats ps;
    fm_engine_persist_stats(e, &ps);
    cr_assert_eq(ps.recovered_records, 0);
    fm_engine_free(e);
}

Test(persist, a_snapshot_with_empty_tables_rebuilds_their_indexes)
{
    /* Found by tests/fuzz/fuzz_engine under clang's UBSan: the bulk build
     * of an empty table's B+tree computed NULL + 0 on scratch it never
     * allocated (gcc's UBSan does not report it; a clang
     * -fsanitize=undefined build fails here). */
    struct fm_engine *e = open_db();
    struct fm_error err = {0};
    ok(e, "INSERT albums title only");
    char *before = dump(e);
    cr_assert_eq(fm_engine_save(e, &err), FM_OK, "%s", err.msg);
    fm_engine_free(e);
    e = reopen_expecting(before);
    ok(e, "INSERT tracks title t song_url u album_id 1");
    cr_assert_eq(run(e, "COUNT tracks WHERE album_id = 1"), FM_OK);
    check(e);
    fm_engine_free(e);
}

Test(persist, memory_only_engine_has_no_persistence)
{
    struct fm_engine *e = NULL;
    struct fm_error err = {0};
    cr_assert_eq(fm_engine_new(NULL, &e, &err), FM_OK);
    cr_assert_eq(fm_engine_save(e, &err), FM_ERR_STATE);
    cr_assert_eq(fm_engine_flush(e, &err), FM_OK);
    struct fm_persist_stats ps;
    fm_engine_persist_stats(e, &ps);
    cr_assert(!ps.enabled);
    fm_engine_free(e);
}

Test(persist, snapshot_under_load_equals_the_state_at_its_lsn)
{
    struct fm_engine *e = open_db();
    struct fm_error err = {0};
    seed(e, 40);
    flush(e);
    char *at_fork = dump(e);
    cr_assert_eq(fm_engine_bgsave(e, &err), FM_OK, "%s", err.msg);
    /* The parent keeps changing rows the child is writing out. */
    churn(e, 40);
    for (int i = 0; i < 200; i++) {
        char cmd[128];
        snprintf(cmd, sizeof(cmd), "INSERT artists name load%d", i);
        ok(e, cmd);
        if (i % 10 == 0)
            flush(e);
    }
    flush(e);
    struct fm_persist_stats ps;
    wait_bgsave(e, &ps);
    cr_assert(ps.last_save_ok);
    char *live = dump(e);
    fm_engine_free(e);

    /* The snapshot alone, in a directory of its own, is the fork state. */
    char path[512];
    newest(".snap", path, sizeof(path));
    char solo[300];
    snprintf(solo, sizeof(solo), "%s/solo", dir);
    cr_assert_eq(mkdir(solo, 0755), 0);
    char cmd[1200];
    snprintf(cmd, sizeof(cmd), "cp '%s' '%s/'", path, solo);
    cr_assert_eq(system(cmd), 0);
    struct fm_engine_options o = options(FM_FSYNC_ALWAYS);
    o.dir = solo;
    e = open_db_with(&o);
    check(e);
    char *snap = dump(e);
    cr_assert_str_eq(at_fork, snap, "the snapshot is the state at its LSN");
    fm_engine_free(e);

    /* Snapshot plus WAL is the live state. */
    e = open_db();
    check(e);
    char *recovered = dump(e);
    cr_assert_str_eq(live, recovered);
    free(at_fork);
    free(live);
    free(snap);
    free(recovered);
    fm_engine_free(e);
}

Test(persist, bulk_index_builds_handle_short_and_long_keys)
{
    /* (a, b) and (b, a) have keys of 1 to 5 bytes (the radix-sorted short
     * path, lengths mixed); (c) and (s, a) have longer keys (the general
     * path). */
    static const char ddl[] =
        "CREATE TABLE t (a integer NULL, b integer NOT NULL, c integer NULL,\n"
        "  s string NULL, INDEX (a, b), INDEX (c), INDEX (s, a),\n"
        "  UNIQUE (b, a));\n";
    struct fm_engine_options o = options(FM_FSYNC_NO);
    o.schema_text = ddl;
    o.schema_len = strlen(ddl);
    struct fm_engine *e = open_db_with(&o);
    uint64_t x = 12345;
    char cmd[256];
    for (int i = 0; i < 3000; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        long long c = (long long)(x >> 1) * (i % 2 ? 1 : -1);
        if (i % 11 == 0)
            snprintf(cmd, sizeof(cmd), "INSERT t b %d c %lld s k%llu", i, c,
                     (unsigned long long)(x % 100));
        else
            snprintf(cmd, sizeof(cmd), "INSERT t a %llu b %d c %lld s k%llu",
                     (unsigned long long)(x % 300), i, c,
                     (unsigned long long)(x % 100));
        ok(e, cmd);
    }
    struct fm_error err = {0};
    cr_assert_eq(fm_engine_save(e, &err), FM_OK, "%s", err.msg);
    char *before = dump(e);
    fm_engine_free(e);
    /* Every index holds every row, in order (fm_btree_check). */
    e = open_expecting(&o, before);
    struct fm_persist_stats ps;
    fm_engine_persist_stats(e, &ps);
    cr_assert_eq(ps.recovered_rows, 3000, "all rows came from the snapshot");
    fm_engine_free(e);
}

static void keep_notice(void *ctx, enum fm_log_level level, const char *msg)
{
    if (level == FM_LOG_NOTICE && strstr(msg, "recovered") != NULL)
        snprintf(ctx, FM_ERROR_MSG_CAP, "%s", msg);
}

/* The recovery line says where the time went, phase by phase. */
Test(persist, recovery_logs_its_phases)
{
    struct fm_engine *e = open_db();
    struct fm_error err = {0};
    seed(e, 5);
    cr_assert_eq(fm_engine_save(e, &err), FM_OK, "%s", err.msg);
    ok(e, "INSERT artists name after");
    flush(e);
    fm_engine_free(e);
    char line[FM_ERROR_MSG_CAP] = "";
    struct fm_engine_options o = options(FM_FSYNC_ALWAYS);
    o.log = keep_notice;
    o.log_ctx = line;
    e = open_db_with(&o);
    cr_assert(strstr(line, "and 1 WAL records") != NULL, "%s", line);
    cr_assert(strstr(line, "rows placed in") != NULL, "%s", line);
    cr_assert(strstr(line, "indexes built in") != NULL, "%s", line);
    cr_assert(strstr(line, "replayed in") != NULL, "%s", line);
    fm_engine_free(e);
}

/* The integer reply of cmd. */
static int64_t count_of(struct fm_engine *e, const char *cmd)
{
    ok(e, cmd);
    struct fm_reply_cursor c;
    struct fm_reply_value v;
    fm_reply_cursor_init(&c, &reply);
    cr_assert(fm_reply_next(&c, &v) && v.type == FM_REPLY_INT, "%s", cmd);
    return v.i;
}

/* The bulk build sorts keys of at most 8 bytes by radix, with a pass on the
 * key length only when lengths differ: short keys that are prefixes of each
 * other ("a", "ab", ...) must come back in memcmp order, and keys of one
 * length without that pass. */
Test(persist, short_keys_of_mixed_lengths_rebuild_in_order)
{
    for (int mixed = 0; mixed <= 1; mixed++) {
        /* The rows of the first round stay in the directory: the second
         * uses other letters. */
        const char *letters = mixed ? "abcdefghij" : "qrstuvwxyz";
        struct fm_engine *e = open_db();
        struct fm_error err = {0};
        char cmd[256];
        int base = (int)count_of(e, "COUNT users");
        for (int i = 1; i <= 300; i++) {
            int len = mixed ? 1 + (i * 7) % 8 : 5;
            snprintf(cmd, sizeof(cmd),
                     "INSERT users username u%d_%d email e%d_%d "
                     "password_digest d session_token %.*s",
                     mixed, i, mixed, i, len, letters + (i % 3));
            ok(e, cmd);
        }
        cr_assert_eq(fm_engine_save(e, &err), FM_OK, "%s", err.msg);
        fm_engine_free(e);
        e = open_db();
        check(e);
        cr_assert_eq(count_of(e, "COUNT users"), base + 300);
        /* Every token finds exactly the rows of this round that carry it. */
        for (int len = 1; len <= 8; len++) {
            for (int off = 0; off <= 2; off++) {
                int want = 0;
                for (int i = 1; i <= 300; i++)
                    want +=
                        (mixed ? 1 + (i * 7) % 8 : 5) == len && i % 3 == off;
                snprintf(cmd, sizeof(cmd),
                         "COUNT users WHERE session_token = %.*s", len,
                         letters + off);
                int64_t got = count_of(e, cmd);
                cr_assert_eq(got, want, "%s: %lld rows, want %d", cmd,
                             (long long)got, want);
            }
        }
        fm_engine_free(e);
    }
}

/* A table big enough (over 8,192 rows) that recovery's prepare thread maps
 * its B+tree's node block while the rows are placed (persist.c, "While one
 * thread places..."): the rebuilt tree must be whole and ordered. */
Test(persist, big_table_rebuilds_through_the_prepare_thread)
{
    struct fm_engine *e = open_db();
    struct fm_error err = {0};
    char cmd[256];
    for (int i = 1; i <= 9000; i++) {
        snprintf(cmd, sizeof(cmd),
                 "INSERT users username big%d email big%d password_digest d "
                 "session_token t%d",
                 i, i, i % 97);
        ok(e, cmd);
    }
    cr_assert_eq(fm_engine_save(e, &err), FM_OK, "%s", err.msg);
    cr_assert_eq(count_of(e, "COUNT users WHERE session_token = t5"), 93);
    int64_t above = count_of(e, "COUNT users WHERE session_token > t90");
    cr_assert_eq(above, 6 * 92);
    char *before = dump(e);
    fm_engine_free(e);
    e = reopen_expecting(before);
    cr_assert_eq(count_of(e, "COUNT users WHERE session_token = t5"), 93);
    cr_assert_eq(count_of(e, "COUNT users WHERE session_token > t90"), above);
    fm_engine_free(e);
}

/*
 * A WAL whose next write reaches the file but reports EIO, and whose
 * cut-back then fails too: the rolled-back group stays on disk, whole.
 */
static volatile bool write_lands_but_fails;

static ssize_t g_pwrite(void *ctx, int fd, const void *b, size_t n, off_t o)
{
    (void)ctx;
    ssize_t done = pwrite(fd, b, n, o);
    if (done < 0 || !write_lands_but_fails)
        return done;
    write_lands_but_fails = false;
    errno = EIO;
    return -1;
}

static int g_ftruncate(void *ctx, int fd, off_t len)
{
    (void)ctx;
    (void)fd;
    (void)len;
    errno = EIO;
    return -1;
}

Test(persist, shutdown_of_a_readonly_engine_saves_and_skips_the_rolled_back)
{
    struct faulty f = {0, 1000000};
    struct fm_wal_io io = faulty_io(&f, g_pwrite);
    struct fm_engine_options o = options(FM_FSYNC_ALWAYS);
    o.wal_io = &io;
    struct fm_engine *e = open_db_with(&o);
    seed(e, 5);
    flush(e);
    char *durable = dump(e);
    write_lands_but_fails = true;
    io.ftruncate = g_ftruncate;
    ok(e, "INSERT artists name ghost");
    struct fm_error err = {0};
    cr_assert_eq(fm_engine_flush(e, &err), FM_ERR_READONLY);
    /* The WAL is read-only, yet the memory is the truth: a snapshot at
     * the last LSN handed out covers the ghost record left on disk. */
    cr_assert_eq(fm_engine_shutdown(e, false, &err), FM_OK, "%s", err.msg);
    fm_engine_free(e);
    e = reopen_expecting(durable);
    struct fm_persist_stats ps;
    fm_engine_persist_stats(e, &ps);
    cr_assert_eq(ps.recovered_records, 0, "the ghost was not replayed");
    /* New records follow the snapshot's LSN; each replays once. */
    ok(e, "INSERT artists name after");
    flush(e);
    fm_engine_free(e);
    e = open_db();
    cr_assert_eq(count_of(e, "COUNT artists WHERE name = after"), 1);
    cr_assert_eq(count_of(e, "COUNT artists WHERE name = ghost"), 0);
    fm_engine_persist_stats(e, &ps);
    cr_assert_eq(ps.recovered_records, 1);
    fm_engine_free(e);
}

/* Log lines of the engine, counted by kind. */
struct log_counts {
    int started;  /* background snapshots started */
    int failed;   /* failures reported, at any level */
    int warnings; /* failures reported as warnings */
};

static void count_lines(void *ctx, enum fm_log_level level, const char *msg)
{
    struct log_counts *lc = ctx;
    if (strstr(msg, "background snapshot started") != NULL)
        lc->started++;
    if (strstr(msg, "snapshot failed") != NULL) {
        lc->failed++;
        lc->warnings += level == FM_LOG_WARNING;
    }
}

Test(persist, a_failed_background_snapshot_is_retried_only_after_a_delay)
{
    struct log_counts lc = {0};
    struct fm_engine_options o = options(FM_FSYNC_NO);
    o.snapshot.wal_mb = 1;
    o.log = count_lines;
    o.log_ctx = &lc;
    struct fm_engine *e = open_db_with(&o);
    struct fm_persist_stats ps;
    char cmd[512];
    /* Over 1 MiB of WAL: the size trigger holds at every cron tick. */
    for (int i = 0;; i++) {
        snprintf(cmd, sizeof(cmd), "INSERT artists name %0400d", i);
        ok(e, cmd);
        flush(e);
        fm_engine_persist_stats(e, &ps);
        if (ps.wal_since_snapshot_bytes > (1 << 20))
            break;
    }
    /* A directory where the snapshot's temporary file goes: every
     * attempt fails (the reviewer's reproduction). */
    char tmp[512];
    snprintf(tmp, sizeof(tmp), "%s/%016llx.snap.tmp", dir,
             (unsigned long long)ps.next_lsn - 1);
    cr_assert_eq(mkdir(tmp, 0755), 0);
    fm_engine_cron(e);
    cr_assert_eq(lc.started, 1);
    for (int i = 0; i < 1000 && lc.failed == 0; i++) {
        nanosleep(&(struct timespec){0, 10000000}, NULL);
        fm_engine_cron(e);
    }
    cr_assert_eq(lc.failed, 1);
    /* The trigger still holds; the next attempt waits for the delay
     * (FM_SNAPSHOT_RETRY_DELAY_S), not for the next tick. */
    for (int i = 0; i < 30; i++) {
        nanosleep(&(struct timespec){0, 10000000}, NULL);
        fm_engine_cron(e);
    }
    fm_engine_persist_stats(e, &ps);
    cr_assert_eq(lc.started, 1, "%d background snapshots started", lc.started);
    cr_assert(!ps.bgsave_in_progress);
    cr_assert(!ps.last_save_ok);
    cr_assert_eq(ps.save_failures, 1);
    cr_assert_not_null(strstr(ps.last_save_error, ".snap.tmp"), "%s",
                       ps.last_save_error);
    /* BGSAVE asked for runs at once; failing again, it is the same
     * episode, and the log warned once. */
    struct fm_error err = {0};
    cr_assert_eq(fm_engine_bgsave(e, &err), FM_OK, "%s", err.msg);
    wait_bgsave(e, &ps);
    cr_assert_eq(ps.save_failures, 2);
    cr_assert_eq(lc.failed, 2);
    cr_assert_eq(lc.warnings, 1);
    /* Once the obstacle is gone a snapshot succeeds and ends the episode. */
    cr_assert_eq(rmdir(tmp), 0);
    cr_assert_eq(fm_engine_bgsave(e, &err), FM_OK, "%s", err.msg);
    wait_bgsave(e, &ps);
    cr_assert(ps.last_save_ok);
    cr_assert_eq(ps.save_failures, 0);
    cr_assert_str_eq(ps.last_save_error, "");
    fm_engine_free(e);
}

Test(persist, a_lock_left_to_the_child_of_an_exited_engine_is_waited_for)
{
    /* A process opens the directory, forks a child that inherits the lock
     * (as a snapshot child does) and lives on for a while, and exits. */
    pid_t taker = fork();
    cr_assert_geq(taker, 0);
    if (taker == 0) {
        struct fm_engine_options o = options(FM_FSYNC_ALWAYS);
        struct fm_engine *e = NULL;
        struct fm_error err = {0};
        if (fm_engine_new(&o, &e, &err) != FM_OK)
            _exit(2);
        if (fork() == 0) {
            nanosleep(&(struct timespec){0, 500000000}, NULL);
            _exit(0);
        }
        _exit(0);
    }
    int status;
    cr_assert_eq(waitpid(taker, &status, 0), taker);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    /* The pid in LOCK is gone: the open waits for the child to let go
     * instead of refusing. */
    struct fm_engine *e = open_db();
    fm_engine_free(e);
}

/*
 * --force-recovery past a damaged insert leaves rows that reference the
 * lost row. Recovery says what it skipped and never hands the lost id out
 * again, so no new row adopts the orphans.
 */
Test(persist, force_recovery_reports_the_skip_and_reuses_no_lost_id)
{
    struct fm_engine *e = open_db();
    ok(e, "INSERT users username u1 email e1 password_digest d "
          "session_token s1");
    flush(e);
    ok(e, "INSERT playlists title p user_id 1");
    flush(e);
    fm_engine_free(e);
    /* Damage the users insert, the first record of the first segment. */
    char path[512];
    newest(".wal", path, sizeof(path));
    int fd = open(path, O_RDWR);
    cr_assert_geq(fd, 0, "%s", path);
    uint8_t hdr[16];
    cr_assert_eq(pread(fd, hdr, sizeof(hdr), 0), (ssize_t)sizeof(hdr));
    off_t at = 40 + (off_t)fm_load_le32(hdr + 12) + 30;
    uint8_t b;
    cr_assert_eq(pread(fd, &b, 1, at), 1);
    b ^= 0x40;
    cr_assert_eq(pwrite(fd, &b, 1, at), 1);
    close(fd);

    struct fm_engine_options o = options(FM_FSYNC_ALWAYS);
    struct fm_error err = {0};
    cr_assert_eq(fm_engine_new(&o, &e, &err), FM_ERR_CORRUPT, "%s", err.msg);
    o.force_recovery = true;
    cr_assert_eq(fm_engine_new(&o, &e, &err), FM_OK, "%s", err.msg);
    struct fm_persist_stats ps;
    fm_engine_persist_stats(e, &ps);
    cr_assert_eq(ps.recovery_skipped, 1);
    cr_assert_eq(ps.recovery_lsns_lost, 1);
    cr_assert_eq(count_of(e, "COUNT users"), 0);
    cr_assert_eq(count_of(e, "COUNT playlists"), 1);
    /* A new user does not take the lost user's id 1. */
    cr_assert_eq(count_of(e, "INSERT users username u2 email e2 "
                             "password_digest d session_token s2"),
                 2);
    cr_assert_eq(count_of(e, "DELETE users 2"), 1);
    cr_assert_eq(count_of(e, "COUNT playlists"), 1);
    fm_engine_free(e);
}
