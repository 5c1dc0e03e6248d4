/*
 * persist.c: what the engine writes to the write-ahead log and to
 * snapshots, and how it rebuilds itself from them (SPEC section 4).
 *
 * wal/ moves opaque bytes; this file decides what they mean.
 *
 * Redo records. Every committed transaction that changed something becomes
 * one WAL record, encoded from its undo log read forwards (txn.c). Row
 * images carry ids and timestamps as assigned, so replay re-derives
 * nothing, cascades included, and never re-checks a constraint:
 *
 *   field        size     meaning
 *   version      1        REDO_VERSION
 *   then, per change:
 *   kind         1        REDO_PUT (insert or replace) or REDO_DEL
 *   table        varint   table number in the schema
 *   id           varint   row id
 *   record       ...      REDO_PUT only: the row record exactly as stored
 *                         (table.c), self-delimited by its length prefix
 *
 * Snapshots. A snapshot is a stream of chunks in the wal/snapshot container:
 *
 *   chunk 0      "FMDB", version (4 bytes LE), varint n_tables, then per
 *                table: varint next_id, varint n_rows
 *   chunks 1..   varint table, then rows: varint id, record; rows of one
 *                table in id order, chunks of about 256 KiB
 *
 * Everything read back from disk is validated before use: record layouts
 * (fm_table_record_is_valid), ids, table numbers and counts; a violation is
 * FM_ERR_CORRUPT naming the file, never a crash.
 *
 * Recovery. Load the newest snapshot that reads back completely; a bad one
 * is logged and the previous one tried, with the WAL replayed from further
 * back. Rows are placed by id without touching any index, then every index
 * is built in bulk: B+trees from keys sorted once (fm_btree_append), hash
 * indexes presized (fm_hash_reserve). Then the WAL records after the
 * snapshot's LSN are applied one by one with ordinary index maintenance.
 *
 * Group commit and failure. fm_engine_flush writes the group. If it fails,
 * the whole group is rolled back in memory from the undo entries kept since
 * the last flush, and the engine turns read-only for good: nothing retries
 * an fsync that may have dropped data (PostgreSQL's 2018 lesson). Memory
 * then holds exactly the acknowledged writes and the WAL may not, so
 * shutdown still writes a snapshot, at the last LSN handed out, which
 * covers whatever the failure left in the WAL (shutdown_readonly).
 *
 * Background snapshots fork: the child writes the copy-on-write image of
 * every table while the parent goes on serving, and reports its sizes and
 * copied memory through a pipe before it exits. It dies with its parent
 * and closes what it inherited but must not hold (enter_child). The parent
 * flushes the WAL before forking, so the snapshot's LSN is the last LSN
 * written. After a snapshot commits, snapshots beyond snapshot.keep are deleted
 * and WAL segments older than the oldest kept snapshot go with them. After one
 * fails, the automatic triggers wait FM_SNAPSHOT_RETRY_DELAY_S from the
 * attempt (a lasting cause would fork a child every tick), and the log
 * warns once per run of failures (record_save_failure).
 */
#include "engine/engine_int.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

enum { REDO_VERSION = 1, REDO_PUT = 1, REDO_DEL = 2 };

#define SNAP_VERSION     1
#define SNAP_CHUNK_BYTES (256 * 1024)

/* What a snapshot child writes to its pipe before it exits: one write(),
 * under PIPE_BUF, so the parent reads all of it or nothing. */
struct child_report {
    uint64_t ok;
    uint64_t file_bytes;
    uint64_t raw_bytes;
    uint64_t cow_bytes;
    char msg[FM_ERROR_MSG_CAP]; /* why it failed; "" on success */
};

_Static_assert(sizeof(struct child_report) <= 4096,
               "a child's report must be one atomic pipe write");

static void note(struct fm_engine *e, enum fm_log_level level, const char *fmt,
                 ...) __attribute__((format(printf, 3, 4)));

static void note(struct fm_engine *e, enum fm_log_level level, const char *fmt,
                 ...)
{
    if (e->log == NULL)
        return;
    char msg[FM_ERROR_MSG_CAP + 256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    e->log(e->log_ctx, level, msg);
}

const char *fm_fsync_policy_name(enum fm_fsync_policy p)
{
    switch (p) {
    case FM_FSYNC_ALWAYS:
        return "always";
    case FM_FSYNC_EVERYSEC:
        return "everysec";
    case FM_FSYNC_NO:
        return "no";
    }
    return "everysec";
}

bool fm_fsync_policy_parse(const char *name, enum fm_fsync_policy *out)
{
    static const enum fm_fsync_policy all[] = {FM_FSYNC_ALWAYS,
                                               FM_FSYNC_EVERYSEC, FM_FSYNC_NO};
    for (size_t i = 0; i < FM_ARRAY_LEN(all); i++) {
        if (strcmp(name, fm_fsync_policy_name(all[i])) == 0) {
            *out = all[i];
            return true;
        }
    }
    return false;
}

static enum fm_wal_fsync wal_policy(enum fm_fsync_policy p)
{
    switch (p) {
    case FM_FSYNC_ALWAYS:
        return FM_WAL_FSYNC_ALWAYS;
    case FM_FSYNC_NO:
        return FM_WAL_FSYNC_NO;
    case FM_FSYNC_EVERYSEC:
        break;
    }
    return FM_WAL_FSYNC_EVERYSEC;
}

static void go_readonly(struct fm_engine *e, const char *why)
{
    if (e->readonly)
        return;
    e->readonly = true;
    snprintf(e->readonly_reason, sizeof(e->readonly_reason), "%s", why);
    note(e, FM_LOG_WARNING,
         "the write-ahead log failed, refusing writes from now on: %s", why);
}

/* ---- redo records -------------------------------------------------------- */

static fm_status put_varint(struct fm_buf *b, uint64_t v)
{
    uint8_t tmp[FM_VARINT_MAX];
    return fm_buf_append(b, tmp, fm_varint_put(tmp, v));
}

fm_status fm_persist_log_txn(struct fm_engine *e, size_t from)
{
    struct fm_buf *b = &e->redo;
    fm_status st;
    b->len = 0;
    if ((st = fm_buf_push(b, REDO_VERSION)) != FM_OK)
        goto nomem;
    for (size_t i = from; i < e->n_undo; i++) {
        const struct fm_undo *u = &e->undo[i];
        bool put = u->op != FM_UNDO_DELETE;
        if ((st = fm_buf_push(b, put ? REDO_PUT : REDO_DEL)) != FM_OK ||
            (st = put_varint(b, u->table)) != FM_OK ||
            (st = put_varint(b, u->id)) != FM_OK)
            goto nomem;
        if (put &&
            (st = fm_buf_append(b, u->new_rec,
                                fm_table_record_size(u->new_rec))) != FM_OK)
            goto nomem;
    }
    uint64_t lsn;
    struct fm_error werr = {0};
    st = fm_wal_append(e->wal, b->data, b->len, &lsn, &werr);
    if (st == FM_ERR_READONLY) {
        go_readonly(e, werr.msg);
        return fm_error_set(&e->err, FM_ERR_READONLY,
                            "the write-ahead log cannot be written: %s",
                            werr.msg);
    }
    if (st != FM_OK)
        return fm_error_set(&e->err, st, "cannot log the write: %s", werr.msg);
    e->last_lsn = lsn;
    e->pstats.changes_since_save++;
    return FM_OK;
nomem:
    return fm_error_set(&e->err, FM_ERR_NOMEM,
                        "out of memory encoding the redo record");
}

/* Reads a varint at *p (below end) into *v; false when malformed. */
static bool take_varint(const uint8_t **p, const uint8_t *end, uint64_t *v)
{
    size_t n = fm_varint_get(*p, (size_t)(end - *p), v);
    if (n == 0)
        return false;
    *p += n;
    return true;
}

/* Reads a record at *p (below end) and checks it is one of t. */
static bool take_record(const struct fm_table *t, const uint8_t **p,
                        const uint8_t *end, const uint8_t **rec_out,
                        size_t *len_out)
{
    uint64_t body;
    size_t n = fm_varint_get(*p, (size_t)(end - *p), &body);
    if (n == 0 || body > (uint64_t)(end - *p) - n)
        return false;
    size_t len = n + (size_t)body;
    if (!fm_table_record_is_valid(t, *p, len))
        return false;
    *rec_out = *p;
    *len_out = len;
    *p += len;
    return true;
}

/* Stores a copy of rec as row id of t, replacing any row there, with index
 * maintenance. FM_ERR_CORRUPT when an index refuses it. */
static fm_status place_row(struct fm_table *t, uint64_t id, const uint8_t *rec,
                           size_t len, bool with_indexes)
{
    uint8_t *old = fm_table_record(t, id);
    struct fm_row row;
    if (old != NULL && with_indexes) {
        fm_table_decode(t, id, old, &row);
        if (fm_table_reserve_keys(t, &row) != FM_OK)
            return FM_ERR_NOMEM;
    }
    uint8_t *copy = fm_table_copy_record(t, rec, len);
    if (copy == NULL)
        return FM_ERR_NOMEM;
    if (old != NULL && with_indexes)
        fm_table_index_remove(t, &row, UINT32_MAX);
    if (fm_table_set_record(t, id, copy) != FM_OK) {
        fm_table_free_record(t, copy);
        return FM_ERR_NOMEM;
    }
    if (old != NULL)
        fm_table_free_record(t, old);
    else
        t->n_rows++;
    if (id >= t->next_id)
        t->next_id = id + 1;
    if (!with_indexes)
        return FM_OK;
    fm_table_decode(t, id, copy, &row);
    fm_status st = fm_table_index_add(t, &row, UINT32_MAX, NULL);
    return st == FM_ERR_UNIQUE ? FM_ERR_CORRUPT : st;
}

static fm_status remove_row(struct fm_table *t, uint64_t id)
{
    uint8_t *old = fm_table_record(t, id);
    if (old == NULL)
        return FM_ERR_CORRUPT;
    struct fm_row row;
    fm_table_decode(t, id, old, &row);
    if (fm_table_reserve_keys(t, &row) != FM_OK)
        return FM_ERR_NOMEM;
    fm_table_index_remove(t, &row, UINT32_MAX);
    fm_status st = fm_table_set_record(t, id, NULL);
    FM_ASSERT(st == FM_OK);
    fm_table_free_record(t, old);
    t->n_rows--;
    return FM_OK;
}

/* Applies one redo record. On failure the record may be half applied; the
 * caller stops recovery. */
static fm_status apply_redo(struct fm_engine *e, const uint8_t *p, size_t len,
                            const char **why)
{
    const uint8_t *end = p + len;
    *why = "bad version";
    if (len == 0 || *p++ != REDO_VERSION)
        return FM_ERR_CORRUPT;
    while (p < end) {
        uint8_t kind = *p++;
        uint64_t tno;
        uint64_t id;
        *why = "bad change header";
        if ((kind != REDO_PUT && kind != REDO_DEL) ||
            !take_varint(&p, end, &tno) || !take_varint(&p, end, &id) ||
            tno >= e->schema.n_tables || id == 0 || id >= FM_ID_MAX)
            return FM_ERR_CORRUPT;
        struct fm_table *t = &e->tables[tno];
        fm_status st;
        if (kind == REDO_DEL) {
            *why = "delete of a row that does not exist";
            st = remove_row(t, id);
        } else {
            const uint8_t *rec;
            size_t rec_len;
            *why = "malformed row image";
            if (!take_record(t, &p, end, &rec, &rec_len))
                return FM_ERR_CORRUPT;
            *why = "row image violates a unique index";
            st = place_row(t, id, rec, rec_len, true);
        }
        if (st != FM_OK)
            return st;
    }
    return FM_OK;
}

/* ---- snapshots: writing -------------------------------------------------- */

static fm_status emit_chunk(struct fm_snapshot_writer *w, struct fm_buf *b,
                            struct fm_error *err)
{
    fm_status st = fm_snapshot_writer_add(w, b->data, b->len, err);
    b->len = 0;
    return st;
}

static fm_status write_tables(struct fm_engine *e, struct fm_snapshot_writer *w,
                              struct fm_buf *b, struct fm_error *err)
{
    fm_status st = FM_OK;
    uint8_t hdr[8];
    memcpy(hdr, "FMDB", 4);
    fm_store_le32(hdr + 4, SNAP_VERSION);
    b->len = 0;
    if (fm_buf_append(b, hdr, sizeof(hdr)) != FM_OK ||
        put_varint(b, e->schema.n_tables) != FM_OK)
        return fm_error_set(err, FM_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < e->schema.n_tables; i++) {
        if (put_varint(b, e->tables[i].next_id) != FM_OK ||
            put_varint(b, e->tables[i].n_rows) != FM_OK)
            return fm_error_set(err, FM_ERR_NOMEM, "out of memory");
    }
    if ((st = emit_chunk(w, b, err)) != FM_OK)
        return st;
    for (size_t i = 0; i < e->schema.n_tables; i++) {
        const struct fm_table *t = &e->tables[i];
        for (uint64_t id = 1; id < t->next_id; id++) {
            const uint8_t *rec = fm_table_record(t, id);
            if (rec == NULL)
                continue;
            if (b->len == 0 && put_varint(b, i) != FM_OK)
                return fm_error_set(err, FM_ERR_NOMEM, "out of memory");
            if (put_varint(b, id) != FM_OK ||
                fm_buf_append(b, rec, fm_table_record_size(rec)) != FM_OK)
                return fm_error_set(err, FM_ERR_NOMEM, "out of memory");
            if (b->len >= SNAP_CHUNK_BYTES &&
                (st = emit_chunk(w, b, err)) != FM_OK)
                return st;
        }
        if (b->len > 0 && (st = emit_chunk(w, b, err)) != FM_OK)
            return st;
    }
    return FM_OK;
}

static fm_status write_snapshot(struct fm_engine *e, uint64_t lsn,
                                struct fm_snapshot_stats *stats,
                                struct fm_error *err)
{
    struct fm_snapshot_writer *w = NULL;
    struct fm_buf b = {0};
    fm_status st =
        fm_snapshot_writer_open(e->dir, lsn, (const uint8_t *)e->schema.text,
                                e->schema.text_len, NULL, &w, err);
    if (st != FM_OK)
        return st;
    st = write_tables(e, w, &b, err);
    fm_buf_fini(&b);
    if (st != FM_OK) {
        fm_snapshot_writer_abort(w);
        return st;
    }
    return fm_snapshot_writer_commit(w, stats, err);
}

/* After a snapshot at lsn: prune snapshots, then WAL segments that only
 * snapshots older than the oldest kept one would need. */
static void after_snapshot(struct fm_engine *e, uint64_t lsn)
{
    struct fm_error err = {0};
    size_t n_snaps = 0;
    size_t n_segs = 0;
    e->save_lsn = lsn;
    if (fm_snapshot_prune(e->dir, e->snap_cfg.keep, &n_snaps, &err) != FM_OK) {
        note(e, FM_LOG_WARNING, "snapshot pruning failed: %s", err.msg);
        return;
    }
    struct fm_snapshot_list list = {0};
    if (fm_snapshot_list_dir(e->dir, &list, &err) != FM_OK || list.n == 0) {
        fm_snapshot_list_fini(&list);
        return;
    }
    uint64_t oldest = list.items[list.n - 1].lsn;
    fm_snapshot_list_fini(&list);
    if (fm_wal_truncate_before(e->wal, oldest, &n_segs, &err) != FM_OK)
        note(e, FM_LOG_WARNING, "removing old WAL segments failed: %s",
             err.msg);
    if (n_snaps > 0 || n_segs > 0)
        note(e, FM_LOG_VERBOSE,
             "removed %zu old snapshot(s) and %zu WAL segment(s)", n_snaps,
             n_segs);
}

static uint64_t wal_bytes_written(struct fm_engine *e)
{
    struct fm_wal_stats ws;
    fm_wal_get_stats(e->wal, &ws);
    return ws.bytes_written;
}

/*
 * A snapshot attempt failed (SAVE, BGSAVE, or the child of either kind).
 * The automatic trigger then waits FM_SNAPSHOT_RETRY_DELAY_S from the
 * attempt (fm_engine_cron), and the log warns once per run of failures, or
 * again when the reason changes: a directory where the temporary file goes
 * fails every attempt the same way, and a line every 5 s would bury the
 * rest of the log.
 */
static void record_save_failure(struct fm_engine *e, const char *what,
                                const char *why)
{
    struct fm_persist_stats *ps = &e->pstats;
    bool same = ps->save_failures > 0 && strcmp(ps->last_save_error, why) == 0;
    ps->last_save_ok = false;
    ps->save_failures++;
    snprintf(ps->last_save_error, sizeof(ps->last_save_error), "%s", why);
    if (same)
        note(e, FM_LOG_VERBOSE, "%s failed again (%llu in a row): %s", what,
             (unsigned long long)ps->save_failures, why);
    else
        note(e, FM_LOG_WARNING,
             "%s failed: %s; automatic snapshots are retried every %d s "
             "until one succeeds",
             what, why, FM_SNAPSHOT_RETRY_DELAY_S);
}

static void record_save(struct fm_engine *e, uint64_t lsn, int64_t took_us,
                        uint64_t file_bytes, uint64_t raw_bytes,
                        uint64_t dirty_at_start)
{
    if (e->pstats.save_failures > 0)
        note(e, FM_LOG_NOTICE,
             "snapshots succeed again after %llu failed "
             "attempt(s)",
             (unsigned long long)e->pstats.save_failures);
    e->pstats.save_failures = 0;
    e->pstats.last_save_error[0] = '\0';
    e->pstats.last_save_ok = true;
    e->pstats.last_save_time_s = fm_now_us() / 1000000;
    e->pstats.last_save_lsn = lsn;
    e->pstats.last_save_duration_us = took_us;
    e->pstats.last_save_bytes = file_bytes;
    e->pstats.last_save_raw_bytes = raw_bytes;
    e->pstats.changes_since_save -= dirty_at_start;
    e->last_save_mono_us = fm_monotonic_us();
    after_snapshot(e, lsn);
}

fm_status fm_engine_save(struct fm_engine *e, struct fm_error *err)
{
    if (e->wal == NULL)
        return fm_error_set(err, FM_ERR_STATE,
                            "no data directory: nothing to save to");
    if (e->child_pid != 0)
        return fm_error_set(err, FM_ERR_STATE,
                            "a background snapshot is in progress");
    fm_status st = fm_engine_flush(e, err);
    if (st != FM_OK)
        return st;
    int64_t t0 = fm_monotonic_us();
    uint64_t dirty = e->pstats.changes_since_save;
    uint64_t at = wal_bytes_written(e);
    struct fm_snapshot_stats ss;
    e->last_save_try_us = t0;
    st = write_snapshot(e, e->last_lsn, &ss, err);
    if (st != FM_OK) {
        record_save_failure(e, "snapshot", err->msg);
        return st;
    }
    e->wal_bytes_at_save = at;
    record_save(e, e->last_lsn, fm_monotonic_us() - t0, ss.file_bytes,
                ss.raw_bytes, dirty);
    note(e, FM_LOG_NOTICE, "snapshot at lsn %llu saved: %llu bytes",
         (unsigned long long)e->last_lsn, (unsigned long long)ss.file_bytes);
    return FM_OK;
}

/* Private_Dirty of this process in bytes, from /proc; 0 if unknown. */
static uint64_t private_dirty_bytes(void)
{
    FILE *f = fopen("/proc/self/smaps_rollup", "r");
    if (f == NULL)
        return 0;
    char line[256];
    uint64_t total = 0;
    while (fgets(line, sizeof(line), f) != NULL) {
        unsigned long long kb;
        if (sscanf(line, "Private_Dirty: %llu kB", &kb) == 1)
            total += kb * 1024;
    }
    fclose(f);
    return total;
}

/*
 * The first steps of a snapshot child. It dies with the thread that forked
 * it (PR_SET_PDEATHSIG), checking afterwards that it is not already
 * orphaned: it shares the directory's lock and writes into the directory,
 * and one that outlived a killed server would keep a restart out, then
 * commit a snapshot of another incarnation into the restarted server's
 * directory (wal.c waits for such a lock rather than share it). Then the
 * embedding program closes what the child must not hold (a server's
 * sockets).
 */
static void enter_child(struct fm_engine *e, pid_t parent)
{
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != parent)
        _exit(1);
    if (e->atfork_child != NULL)
        e->atfork_child(e->atfork_ctx);
}

static void child_main(struct fm_engine *e, uint64_t lsn, int fd)
{
    struct fm_error err = {0};
    struct fm_snapshot_stats ss = {0};
    struct child_report rep = {0};
    rep.ok = write_snapshot(e, lsn, &ss, &err) == FM_OK;
    rep.file_bytes = ss.file_bytes;
    rep.raw_bytes = ss.raw_bytes;
    rep.cow_bytes = private_dirty_bytes();
    /* The parent logs the failure, once per run of them. */
    if (!rep.ok)
        snprintf(rep.msg, sizeof(rep.msg), "%s", err.msg);
    ssize_t n = write(fd, &rep, sizeof(rep));
    (void)n;
    _exit(rep.ok ? 0 : 1);
}

fm_status fm_engine_bgsave(struct fm_engine *e, struct fm_error *err)
{
    if (e->wal == NULL)
        return fm_error_set(err, FM_ERR_STATE,
                            "no data directory: nothing to save to");
    if (e->child_pid != 0)
        return fm_error_set(err, FM_ERR_STATE,
                            "a background snapshot is already in progress");
    fm_status st = fm_engine_flush(e, err);
    if (st != FM_OK)
        return st;
    int64_t t0 = fm_monotonic_us();
    e->last_save_try_us = t0;
    int fds[2];
    if (pipe(fds) != 0) {
        fm_error_set(err, FM_ERR_IO, "pipe: %s", strerror(errno));
        record_save_failure(e, "background snapshot", err->msg);
        return FM_ERR_IO;
    }
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        int e2 = errno;
        close(fds[0]);
        close(fds[1]);
        fm_error_set(err, FM_ERR_IO, "fork: %s", strerror(e2));
        record_save_failure(e, "background snapshot", err->msg);
        return FM_ERR_IO;
    }
    if (pid == 0) {
        close(fds[0]);
        enter_child(e, parent);
        child_main(e, e->last_lsn, fds[1]);
    }
    close(fds[1]);
    e->pstats.last_fork_us = fm_monotonic_us() - t0;
    e->child_pid = pid;
    e->child_start_us = t0;
    e->child_lsn = e->last_lsn;
    e->child_pipe = fds[0];
    e->child_dirty = e->pstats.changes_since_save;
    e->child_wal_at = wal_bytes_written(e);
    /* During a run of failures the retries are not news. */
    note(e, e->pstats.save_failures > 0 ? FM_LOG_VERBOSE : FM_LOG_NOTICE,
         "background snapshot started by pid %ld", (long)pid);
    return FM_OK;
}

/* Why a snapshot child failed, from its report or its exit status. */
static void child_failure(pid_t r, int status, int wait_errno,
                          struct child_report *rep, char *out, size_t cap)
{
    rep->msg[sizeof(rep->msg) - 1] = '\0';
    if (r > 0 && WIFSIGNALED(status))
        snprintf(out, cap, "the snapshot child was killed by signal %d",
                 WTERMSIG(status));
    else if (rep->msg[0] != '\0')
        snprintf(out, cap, "%s", rep->msg);
    else if (r > 0 && WIFEXITED(status))
        snprintf(out, cap, "the snapshot child exited with status %d",
                 WEXITSTATUS(status));
    else
        snprintf(out, cap, "the snapshot child was lost: %s",
                 strerror(wait_errno));
}

/* Collects the child if it has finished, and records how it went. */
static void reap_child(struct fm_engine *e)
{
    if (e->child_pid == 0)
        return;
    int status = 0;
    pid_t r = waitpid(e->child_pid, &status, WNOHANG);
    int wait_errno = errno;
    if (r == 0 || (r < 0 && wait_errno == EINTR))
        return;
    struct child_report rep = {0};
    if (e->child_pipe >= 0) {
        ssize_t n = read(e->child_pipe, &rep, sizeof(rep));
        if (n != (ssize_t)sizeof(rep))
            rep.ok = 0;
        close(e->child_pipe);
        e->child_pipe = -1;
    }
    bool ok = r > 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0 && rep.ok;
    int64_t took = fm_monotonic_us() - e->child_start_us;
    e->child_pid = 0;
    e->pstats.last_cow_bytes = (size_t)rep.cow_bytes;
    if (!ok) {
        char why[FM_ERROR_MSG_CAP];
        child_failure(r, status, wait_errno, &rep, why, sizeof(why));
        record_save_failure(e, "background snapshot", why);
        return;
    }
    e->wal_bytes_at_save = e->child_wal_at;
    record_save(e, e->child_lsn, took, rep.file_bytes, rep.raw_bytes,
                e->child_dirty);
    note(e, FM_LOG_NOTICE,
         "background snapshot at lsn %llu saved: %llu bytes, %llu ms, %llu "
         "KiB copied on write",
         (unsigned long long)e->child_lsn, (unsigned long long)rep.file_bytes,
         (unsigned long long)took / 1000,
         (unsigned long long)rep.cow_bytes / 1024);
}

/*
 * Under everysec the WAL's background thread can fail an fdatasync while
 * no write comes: the handle turns read-only, but it logs nothing from its
 * thread and the engine would learn it only at the next append. The cron
 * asks, so that the engine refuses writes, the log says why (with the
 * acknowledged LSNs that may be lost) and INFO shows it within a tick
 * (SPEC section 4).
 */
static void notice_wal_failure(struct fm_engine *e)
{
    if (!e->readonly && fm_wal_is_readonly(e->wal))
        go_readonly(e, fm_wal_readonly_reason(e->wal));
}

/*
 * Stops a running background snapshot for good (shutdown, close): kills
 * the child, reaps it and removes its temporary file, which no one else
 * can be writing (SAVE and BGSAVE refuse while a child runs, and the
 * directory lock keeps other processes out). A snapshot the child
 * committed just before is left: it is complete. Not a failed snapshot:
 * nothing is counted.
 */
static void abandon_child(struct fm_engine *e, const char *when)
{
    if (e->child_pid == 0)
        return;
    pid_t pid = e->child_pid;
    kill(pid, SIGKILL);
    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
        continue;
    e->child_pid = 0;
    if (e->child_pipe >= 0)
        close(e->child_pipe);
    e->child_pipe = -1;
    char name[FM_SNAPSHOT_NAME_CAP];
    char path[4096];
    fm_snapshot_name(name, e->child_lsn);
    snprintf(path, sizeof(path), "%s/%s.tmp", e->dir, name);
    bool removed = unlink(path) == 0;
    note(e, FM_LOG_NOTICE, "background snapshot by pid %ld abandoned %s%s",
         (long)pid, when, removed ? "; its temporary file was removed" : "");
}

void fm_engine_cron(struct fm_engine *e)
{
    if (e->wal == NULL)
        return;
    notice_wal_failure(e);
    reap_child(e);
    if (e->child_pid != 0 || e->readonly)
        return;
    /* After a failure, whatever the triggers say, as Redis does after a
     * failed BGSAVE (CONFIG_BGSAVE_RETRY_DELAY): a cause that lasts would
     * otherwise fork a child every tick. */
    if (!e->pstats.last_save_ok &&
        fm_monotonic_us() - e->last_save_try_us <
            (int64_t)FM_SNAPSHOT_RETRY_DELAY_S * 1000000)
        return;
    uint64_t since = wal_bytes_written(e) - e->wal_bytes_at_save;
    int64_t age_us = fm_monotonic_us() - e->last_save_mono_us;
    bool by_time = e->pstats.changes_since_save > 0 &&
                   age_us >= (int64_t)e->snap_cfg.interval_s * 1000000;
    bool by_size = since >= e->snap_cfg.wal_mb * 1024 * 1024;
    if (!by_time && !by_size)
        return;
    struct fm_error err = {0};
    /* A failure to start is logged and counted by fm_engine_bgsave. */
    (void)fm_engine_bgsave(e, &err);
}

/* ---- flush, shutdown, stats ---------------------------------------------- */

fm_status fm_engine_flush(struct fm_engine *e, struct fm_error *err)
{
    if (e->wal == NULL)
        return FM_OK;
    FM_ASSERT(!e->in_txn);
    if (!fm_wal_has_pending(e->wal)) {
        fm_txn_release_group(e);
        return FM_OK;
    }
    struct fm_error werr = {0};
    fm_status st = fm_wal_flush(e->wal, &werr);
    if (st == FM_OK) {
        fm_txn_release_group(e);
        return FM_OK;
    }
    /* The group is not durable: undo all of it (SPEC section 4). */
    fm_txn_rollback_to(e, 0);
    go_readonly(e, werr.msg);
    return fm_error_set(err, FM_ERR_READONLY,
                        "the write-ahead log cannot be written: %s", werr.msg);
}

bool fm_engine_has_pending(const struct fm_engine *e)
{
    return e->wal != NULL && fm_wal_has_pending(e->wal);
}

const char *fm_engine_readonly_reason(const struct fm_engine *e)
{
    if (e->readonly)
        return e->readonly_reason;
    /* Failed in the background since the last cron tick. */
    if (e->wal != NULL && fm_wal_is_readonly(e->wal))
        return fm_wal_readonly_reason(e->wal);
    return NULL;
}

/*
 * SHUTDOWN once the WAL is read-only. Memory then holds exactly the writes
 * that were acknowledged: a failed group was rolled back before any of its
 * replies went out. The WAL may not: under everysec the records since the
 * last good fdatasync may be lost to an OS crash, and a failed write whose
 * cut-back failed too can leave records of a rolled-back group on disk,
 * whole or torn. So the snapshot is written anyway (unless NOSAVE), at the
 * last LSN ever handed out (e->last_lsn, rolled-back LSNs included): the
 * restart loads it and replays only records above it, so any record left
 * on disk past the failure, rolled back or not, is covered and never
 * replayed; a torn one is cut as a torn tail; and if the log ends below
 * the snapshot, new records start after it in a fresh segment
 * (docs/durability.md, "Shutting down with a read-only WAL").
 */
static fm_status shutdown_readonly(struct fm_engine *e, bool nosave,
                                   struct fm_error *err)
{
    notice_wal_failure(e);
    const char *why = fm_engine_readonly_reason(e);
    FM_ASSERT(why != NULL);
    if (nosave) {
        note(e, FM_LOG_WARNING,
             "shutting down without a snapshot (NOSAVE) while the "
             "write-ahead log is read-only: %s",
             why);
        return fm_error_set(err, FM_ERR_READONLY,
                            "no snapshot (NOSAVE) and the write-ahead log is "
                            "read-only: %s",
                            why);
    }
    if (e->save_lsn == e->last_lsn)
        return FM_OK; /* the newest snapshot holds all of it already */
    note(e, FM_LOG_WARNING,
         "the write-ahead log is read-only (%s): writing a snapshot at lsn "
         "%llu so that the restart recovers every acknowledged write from it",
         why, (unsigned long long)e->last_lsn);
    return fm_engine_save(e, err);
}

fm_status fm_engine_shutdown(struct fm_engine *e, bool nosave,
                             struct fm_error *err)
{
    if (e->wal == NULL)
        return FM_OK;
    /* A child that is done is counted; one still writing is stopped, as
     * Redis does: NOSAVE wants no snapshot, and otherwise the one written
     * below is newer. Waiting would hold the exit for a whole snapshot. */
    reap_child(e);
    abandon_child(e, "at shutdown");
    fm_status st = fm_engine_flush(e, err);
    if (st == FM_OK)
        st = fm_wal_sync(e->wal, err);
    if (st == FM_ERR_READONLY)
        return shutdown_readonly(e, nosave, err);
    if (st == FM_OK && !nosave && e->pstats.changes_since_save > 0)
        st = fm_engine_save(e, err);
    return st;
}

fm_status fm_engine_set_fsync(struct fm_engine *e, enum fm_fsync_policy p,
                              struct fm_error *err)
{
    if (e->wal != NULL) {
        fm_status st = fm_wal_set_fsync(e->wal, wal_policy(p), err);
        if (st != FM_OK)
            return st;
    }
    e->fsync = p;
    return FM_OK;
}

void fm_engine_set_snapshot_config(struct fm_engine *e,
                                   const struct fm_snapshot_config *c)
{
    e->snap_cfg.interval_s = c->interval_s ? c->interval_s : 3600;
    e->snap_cfg.wal_mb = c->wal_mb ? c->wal_mb : 256;
    e->snap_cfg.keep = c->keep ? c->keep : 2;
}

void fm_engine_persist_stats(const struct fm_engine *e,
                             struct fm_persist_stats *out)
{
    *out = e->pstats;
    out->enabled = e->wal != NULL;
    out->fsync = e->fsync;
    const char *why = fm_engine_readonly_reason(e);
    out->readonly = why != NULL;
    snprintf(out->readonly_reason, sizeof(out->readonly_reason), "%s",
             why != NULL ? why : "");
    out->bgsave_in_progress = e->child_pid != 0;
    if (e->wal == NULL)
        return;
    struct fm_wal_stats ws;
    fm_wal_get_stats(e->wal, &ws);
    out->next_lsn = ws.next_lsn;
    out->durable_lsn = ws.durable_lsn;
    out->wal_bytes = ws.total_bytes;
    out->wal_segments = ws.n_segments;
    out->wal_fsyncs = ws.n_fsyncs;
    out->wal_lag_syncs = ws.n_lag_syncs;
    out->wal_since_snapshot_bytes = ws.bytes_written - e->wal_bytes_at_save;
}

/* ---- recovery
 * ------------------------------------------------------------------- */

struct key_entry {
    union {
        size_t off;         /* while keys are built: offset in the buffer */
        const uint8_t *key; /* once it stops moving: the key bytes */
    } k;
    uint32_t len;
    uint64_t id;
};

static int key_entry_cmp(const void *a, const void *b)
{
    const struct key_entry *x = a;
    const struct key_entry *y = b;
    size_t n = x->len < y->len ? x->len : y->len;
    int r = memcmp(x->k.key, y->k.key, n);
    if (r == 0)
        r = (x->len > y->len) - (x->len < y->len);
    if (r == 0)
        r = (x->id > y->id) - (x->id < y->id);
    return r;
}

/*
 * Keys of at most 8 bytes, the common case (ids, counts, pairs of small
 * ids), are sorted without comparisons: each is packed big-endian into a
 * uint64 and the entries go through a stable LSD radix sort, first on the
 * key length (when lengths differ), then 11 bits at a time from the least
 * significant, skipping digits that every key shares. Rows are visited in
 * id order, so stability leaves equal keys in id order, which is the
 * tree's order.
 */
struct short_key {
    uint64_t packed; /* the key's bytes, big-endian, zero-padded */
    uint64_t id_len; /* row id << 8 | key length */
};

/* Digits of 11 bits: six passes cover 64 bits where bytes would take
 * eight, and 2,048 buckets still keep the counts and the write fronts in
 * cache. */
#define RADIX_BITS 11
#define RADIX_MASK ((1u << RADIX_BITS) - 1)

static void radix_pass(const struct short_key *src, struct short_key *dst,
                       size_t n, int shift, bool by_len)
{
    size_t count[RADIX_MASK + 2] = {0};
    for (size_t i = 0; i < n; i++) {
        unsigned b = by_len ? (unsigned)(src[i].id_len & 0xff)
                            : (unsigned)(src[i].packed >> shift) & RADIX_MASK;
        count[b + 1]++;
    }
    for (size_t b = 1; b < RADIX_MASK + 2; b++)
        count[b] += count[b - 1];
    for (size_t i = 0; i < n; i++) {
        unsigned b = by_len ? (unsigned)(src[i].id_len & 0xff)
                            : (unsigned)(src[i].packed >> shift) & RADIX_MASK;
        dst[count[b]++] = src[i];
    }
}

/* Sorts v[0..n) with tmp[0..n) as scratch; the result ends in *out. */
static struct short_key *radix_sort(struct short_key *v, struct short_key *tmp,
                                    size_t n)
{
    uint64_t all_or = 0;
    uint64_t all_and = UINT64_MAX;
    uint64_t len_or = 0;
    uint64_t len_and = UINT64_MAX;
    for (size_t i = 0; i < n; i++) {
        all_or |= v[i].packed;
        all_and &= v[i].packed;
        len_or |= v[i].id_len;
        len_and &= v[i].id_len;
    }
    struct short_key *a = v;
    struct short_key *b = tmp;
    /* The pass on the length only when lengths differ (integer keys of
     * one width, the common case, have one length). */
    if (((len_or ^ len_and) & 0xff) != 0) {
        radix_pass(v, tmp, n, 0, true);
        a = tmp;
        b = v;
    }
    for (int shift = 0; shift < 64; shift += RADIX_BITS) {
        if (((all_or ^ all_and) >> shift & RADIX_MASK) == 0)
            continue; /* every key has the same digit here */
        radix_pass(a, b, n, shift, false);
        struct short_key *t = a;
        a = b;
        b = t;
    }
    return a;
}

static fm_status append_short_keys(struct fm_index *ix,
                                   const struct short_key *v, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint8_t key[8];
        fm_store_be64(key, v[i].packed);
        fm_status st =
            fm_btree_append(ix->bt, key, v[i].id_len & 0xff, v[i].id_len >> 8);
        if (st != FM_OK)
            return st == FM_ERR_NOMEM ? st : FM_ERR_CORRUPT;
    }
    return FM_OK;
}

/* The short-key path of build_btree; *done_out false when a key is longer
 * than 8 bytes and the general path must run instead. */
static fm_status build_short_keys(struct fm_table *t, struct fm_index *ix,
                                  struct short_key *v, size_t n,
                                  bool *done_out);

#define SCRATCH_MAP_BYTES ((size_t)16 << 20)
/* Trees of at least this many rows get their nodes from one block
 * (fm_btree_reserve, done by the prepare tasks); smaller ones use malloc. */
#define BLOCK_MIN_ROWS (SCRATCH_MAP_BYTES / 2048)

static fm_status build_btree_short(struct fm_table *t, struct fm_index *ix,
                                   struct fm_buf *ents, bool *done_out)
{
    size_t n = (size_t)t->n_rows;
    size_t bytes;
    *done_out = false;
    if (n == 0) {
        /* The tree stays empty, and there is no scratch to point into. */
        *done_out = true;
        return FM_OK;
    }
    if (fm_mul_overflows(n, 2 * sizeof(struct short_key), &bytes))
        return FM_ERR_NOMEM;
    /*
     * A big array is mapped with MAP_POPULATE: the kernel fills in all its
     * pages in one call, where first touches would fault them one 4 KiB
     * page at a time (12-17 us each on the virtual machines measured, a
     * quarter of a 10M-row recovery). Small ones reuse the worker's buffer.
     */
    void *mapped = NULL;
    if (ix->build_scratch != NULL && ix->build_scratch_bytes == bytes)
        mapped = ix->build_scratch; /* mapped ahead (prepare_worker) */
    else if (bytes >= SCRATCH_MAP_BYTES)
        mapped = fm_map_populated(bytes, true);
    ix->build_scratch = NULL;
    ents->len = 0;
    if (mapped == NULL && fm_buf_reserve(ents, bytes) != FM_OK)
        return FM_ERR_NOMEM;
    struct short_key *v =
        mapped != NULL ? mapped : (struct short_key *)(void *)ents->data;
    fm_status st = build_short_keys(t, ix, v, n, done_out);
    fm_unmap(mapped, bytes);
    return st;
}

/* Fills v (room for 2n entries) with the short keys of every row and
 * appends them sorted; *done_out false when a key is too long. */
static fm_status build_short_keys(struct fm_table *t, struct fm_index *ix,
                                  struct short_key *v, size_t n, bool *done_out)
{
    size_t k = 0;
    for (uint64_t id = 1; id < t->next_id; id++) {
        const uint8_t *rec = fm_table_record(t, id);
        if (rec == NULL)
            continue;
        uint8_t key[8] = {0};
        size_t len = fm_index_key_of_record(ix, id, rec, key, sizeof(key));
        if (len > 8)
            return FM_OK; /* not done: use the general path */
        FM_ASSERT(k < n);
        v[k].packed = fm_load_be64(key);
        v[k].id_len = id << 8 | len;
        k++;
    }
    struct short_key *sorted = radix_sort(v, v + n, k);
    *done_out = true;
    return append_short_keys(ix, sorted, k);
}

/* Builds one B+tree from every row of its table: keys encoded once, sorted
 * once, appended in order. */
static fm_status build_btree(struct fm_table *t, struct fm_index *ix,
                             struct fm_buf *keys, struct fm_buf *ents)
{
    bool done;
    fm_status st = build_btree_short(t, ix, ents, &done);
    if (st != FM_OK || done)
        return st;
    keys->len = 0;
    ents->len = 0;
    for (uint64_t id = 1; id < t->next_id; id++) {
        const uint8_t *rec = fm_table_record(t, id);
        if (rec == NULL)
            continue;
        struct key_entry ke;
        ke.k.off = keys->len;
        ke.id = id;
        /* Written in place when it fits the spare room, else again after
         * making room for it. */
        if (fm_buf_reserve(keys, 64) != FM_OK)
            return FM_ERR_NOMEM;
        size_t room = keys->cap - keys->len;
        size_t len =
            fm_index_key_of_record(ix, id, rec, keys->data + keys->len, room);
        if (len > room) {
            if (fm_buf_reserve(keys, len) != FM_OK)
                return FM_ERR_NOMEM;
            fm_index_key_of_record(ix, id, rec, keys->data + keys->len, len);
        }
        keys->len += len;
        ke.len = (uint32_t)len;
        if (fm_buf_append(ents, &ke, sizeof(ke)) != FM_OK)
            return FM_ERR_NOMEM;
    }
    size_t n = ents->len / sizeof(struct key_entry);
    struct key_entry *v = (struct key_entry *)(void *)ents->data;
    for (size_t i = 0; i < n; i++)
        v[i].k.key = keys->data + v[i].k.off;
    if (n > 1)
        qsort(v, n, sizeof(*v), key_entry_cmp);
    for (size_t i = 0; i < n; i++) {
        st = fm_btree_append(ix->bt, v[i].k.key, v[i].len, v[i].id);
        if (st != FM_OK)
            return st == FM_ERR_NOMEM ? st : FM_ERR_CORRUPT;
    }
    return FM_OK;
}

static fm_status build_hash(struct fm_table *t, struct fm_index *ix,
                            struct fm_buf *key)
{
    struct fm_row row;
    if (fm_hash_reserve(ix->h, (size_t)t->n_rows) != FM_OK)
        return FM_ERR_NOMEM;
    for (uint64_t id = 1; id < t->next_id; id++) {
        const uint8_t *rec = fm_table_record(t, id);
        if (rec == NULL)
            continue;
        fm_table_decode(t, id, rec, &row);
        key->len = 0;
        if (fm_index_key(ix, &row, key) != FM_OK)
            return FM_ERR_NOMEM;
        fm_status st = fm_hash_insert(ix->h, key->data, key->len, id);
        if (st != FM_OK)
            return st == FM_ERR_NOMEM ? st : FM_ERR_CORRUPT;
    }
    return FM_OK;
}

/*
 * Index builds after a snapshot load run on two threads: every index is a
 * job, the largest tables' first, taken in turn by this thread and one
 * helper. A build reads rows (never written during recovery) and writes
 * only its own index, with scratch buffers of its own, so builds need no
 * locking beyond taking the next job. Two because the target machine has
 * two cores; if the thread cannot be started, this thread does it all.
 */
struct build_job {
    struct fm_table *table;
    struct fm_index *index;
};

struct build_queue {
    struct build_job jobs[FM_MAX_TABLES * FM_MAX_INDEXES];
    size_t n_jobs;
    size_t next;  /* next job to take, under mu */
    fm_status st; /* the first failure, under mu */
    pthread_mutex_t mu;
};

static void *build_worker(void *arg)
{
    struct build_queue *q = arg;
    struct fm_buf keys = {0};
    struct fm_buf ents = {0};
    struct fm_buf key = {0};
    for (;;) {
        pthread_mutex_lock(&q->mu);
        bool stop = q->next == q->n_jobs || q->st != FM_OK;
        struct build_job job = stop ? (struct build_job){0} : q->jobs[q->next];
        if (!stop)
            q->next++;
        pthread_mutex_unlock(&q->mu);
        if (stop)
            break;
        fm_status st = job.index->bt != NULL
                           ? build_btree(job.table, job.index, &keys, &ents)
                           : build_hash(job.table, job.index, &key);
        if (st != FM_OK) {
            pthread_mutex_lock(&q->mu);
            if (q->st == FM_OK)
                q->st = st;
            pthread_mutex_unlock(&q->mu);
        }
    }
    fm_buf_fini(&keys);
    fm_buf_fini(&ents);
    fm_buf_fini(&key);
    return NULL;
}

static int job_cmp(const void *a, const void *b)
{
    const struct build_job *x = a;
    const struct build_job *y = b;
    return (x->table->n_rows < y->table->n_rows) -
           (x->table->n_rows > y->table->n_rows);
}

static fm_status build_indexes(struct fm_engine *e)
{
    struct build_queue *q = fm_calloc(1, sizeof(*q));
    if (q == NULL)
        return FM_ERR_NOMEM;
    for (size_t i = 0; i < e->schema.n_tables; i++) {
        struct fm_table *t = &e->tables[i];
        for (size_t k = 0; k < t->n_indexes; k++)
            q->jobs[q->n_jobs++] = (struct build_job){t, &t->indexes[k]};
    }
    qsort(q->jobs, q->n_jobs, sizeof(q->jobs[0]), job_cmp);
    pthread_mutex_init(&q->mu, NULL);
    pthread_t helper;
    bool helped = pthread_create(&helper, NULL, build_worker, q) == 0;
    build_worker(q);
    if (helped)
        pthread_join(helper, NULL);
    pthread_mutex_destroy(&q->mu);
    fm_status st = q->st;
    fm_free(q);
    return st;
}

/* Empties every table, for a retry with an older snapshot. */
static fm_status reset_tables(struct fm_engine *e)
{
    for (size_t i = 0; i < e->schema.n_tables; i++) {
        fm_table_fini(&e->tables[i]);
        fm_status st = fm_table_init(&e->tables[i], e, i);
        if (st != FM_OK)
            return st;
    }
    return FM_OK;
}

/* Parses chunk 0 into the tables' next_id and the expected row counts. */
static bool read_header_chunk(struct fm_engine *e, const uint8_t *p, size_t len,
                              uint64_t *n_rows)
{
    const uint8_t *end = p + len;
    uint64_t n;
    if (len < 8 || memcmp(p, "FMDB", 4) != 0 ||
        fm_load_le32(p + 4) != SNAP_VERSION)
        return false;
    p += 8;
    if (!take_varint(&p, end, &n) || n != e->schema.n_tables)
        return false;
    for (size_t i = 0; i < n; i++) {
        uint64_t next_id;
        if (!take_varint(&p, end, &next_id) ||
            !take_varint(&p, end, &n_rows[i]) || next_id == 0 ||
            next_id > FM_ID_MAX || n_rows[i] >= next_id)
            return false;
        e->tables[i].next_id = next_id;
    }
    return p == end;
}

static bool read_rows_chunk(struct fm_engine *e, const uint8_t *p, size_t len,
                            fm_status *st)
{
    const uint8_t *end = p + len;
    uint64_t tno;
    uint64_t prev = 0;
    *st = FM_ERR_CORRUPT;
    if (!take_varint(&p, end, &tno) || tno >= e->schema.n_tables)
        return false;
    struct fm_table *t = &e->tables[tno];
    while (p < end) {
        uint64_t id;
        const uint8_t *rec;
        size_t rec_len;
        if (!take_varint(&p, end, &id) || id <= prev || id >= t->next_id ||
            fm_table_record(t, id) != NULL ||
            !take_record(t, &p, end, &rec, &rec_len))
            return false;
        prev = id;
        uint64_t keep_next = t->next_id;
        if ((*st = place_row(t, id, rec, rec_len, false)) != FM_OK)
            return false;
        t->next_id = keep_next;
    }
    *st = FM_OK;
    return true;
}

/*
 * While one thread places the snapshot's rows, the other core would idle
 * until the index builds begin. The prepare thread uses it to map, populate
 * and touch the memory those builds will write (the sort scratch of the two
 * biggest B+trees, the node block of every big one), sized from the row
 * counts of chunk 0: on the virtual machines measured the first write to a
 * fresh page costs microseconds even after MAP_POPULATE, and was 12% of a
 * restart in the first write to each new node alone. The tasks sit in a
 * queue; the placing thread takes what is left once its rows are placed.
 * Each task writes fields no other task or the placing thread touches (the
 * trees are empty and unused until the builds).
 */
struct prep_task {
    struct fm_index *ix;
    size_t n;     /* rows of its table */
    bool scratch; /* the sort scratch; else the node block */
};

struct prepare {
    struct fm_engine *e;
    struct prep_task tasks[2 + FM_MAX_TABLES * FM_MAX_INDEXES];
    size_t n_tasks;
    size_t next; /* under mu */
    pthread_mutex_t mu;
    pthread_t thread;
    bool started;
    bool running;
};

/* Plans the tasks for tables of n_rows[i] rows. */
static void prepare_plan(struct prepare *pr, const uint64_t *n_rows)
{
    struct fm_engine *e = pr->e;
    /* Sort scratch for the two biggest trees only, the ones the two build
     * workers take first: the others map theirs when they come to them,
     * so at most two are mapped at a time, as without this thread. */
    struct fm_index *chosen[2] = {NULL, NULL};
    for (int j = 0; j < 2; j++) {
        size_t best_n = 0;
        for (size_t i = 0; i < e->schema.n_tables; i++) {
            struct fm_table *t = &e->tables[i];
            for (size_t k = 0; k < t->n_indexes; k++) {
                struct fm_index *ix = &t->indexes[k];
                if (ix->bt != NULL && ix != chosen[0] && n_rows[i] > best_n) {
                    chosen[j] = ix;
                    best_n = (size_t)n_rows[i];
                }
            }
        }
        size_t bytes;
        if (chosen[j] == NULL ||
            fm_mul_overflows(best_n, 2 * sizeof(struct short_key), &bytes) ||
            bytes < SCRATCH_MAP_BYTES)
            break;
        pr->tasks[pr->n_tasks++] = (struct prep_task){chosen[j], best_n, true};
    }
    for (size_t i = 0; i < e->schema.n_tables; i++) {
        struct fm_table *t = &e->tables[i];
        for (size_t k = 0; k < t->n_indexes; k++) {
            if (t->indexes[k].bt != NULL && n_rows[i] >= BLOCK_MIN_ROWS)
                pr->tasks[pr->n_tasks++] = (struct prep_task){
                    &t->indexes[k], (size_t)n_rows[i], false};
        }
    }
}

/* Runs queued tasks until none is left. */
static void prepare_run(struct prepare *pr)
{
    for (;;) {
        pthread_mutex_lock(&pr->mu);
        struct prep_task *task =
            pr->next < pr->n_tasks ? &pr->tasks[pr->next++] : NULL;
        pthread_mutex_unlock(&pr->mu);
        if (task == NULL)
            return;
        if (!task->scratch) {
            (void)fm_btree_reserve(task->ix->bt, task->n);
            continue;
        }
        size_t bytes = task->n * 2 * sizeof(struct short_key);
        task->ix->build_scratch = fm_map_populated(bytes, true);
        task->ix->build_scratch_bytes = bytes;
    }
}

static void *prepare_worker(void *arg)
{
    prepare_run(arg);
    return NULL;
}

static void prepare_start(struct prepare *pr, const uint64_t *n_rows)
{
    prepare_plan(pr, n_rows);
    if (pr->n_tasks == 0)
        return;
    pthread_mutex_init(&pr->mu, NULL);
    pr->started = true;
    pr->running = pthread_create(&pr->thread, NULL, prepare_worker, pr) == 0;
}

/*
 * Runs what is left of the queue on this thread and waits for the prepare
 * thread; with release (the load failed or is over) it drops what is left
 * instead, and unmaps the scratch no build took.
 */
static void prepare_finish(struct prepare *pr, bool release)
{
    if (pr->started) {
        if (release) {
            pthread_mutex_lock(&pr->mu);
            pr->next = pr->n_tasks;
            pthread_mutex_unlock(&pr->mu);
        }
        prepare_run(pr);
        if (pr->running)
            pthread_join(pr->thread, NULL);
        pthread_mutex_destroy(&pr->mu);
    }
    pr->started = false;
    pr->running = false;
    struct fm_engine *e = pr->e;
    for (size_t i = 0; release && i < e->schema.n_tables; i++) {
        struct fm_table *t = &e->tables[i];
        for (size_t k = 0; k < t->n_indexes; k++) {
            fm_unmap(t->indexes[k].build_scratch,
                     t->indexes[k].build_scratch_bytes);
            t->indexes[k].build_scratch = NULL;
        }
    }
}

/* Loads one snapshot file into the (empty) tables; *lsn_out its LSN. */
static fm_status load_snapshot(struct fm_engine *e, const char *path,
                               uint64_t *lsn_out, struct fm_error *err)
{
    struct fm_snapshot_reader *r = NULL;
    uint64_t n_rows[FM_MAX_TABLES] = {0};
    struct prepare pr = {.e = e};
    fm_status st = fm_snapshot_reader_open(
        path, (const uint8_t *)e->schema.text, e->schema.text_len, &r, err);
    if (st != FM_OK)
        return st;
    bool first = true;
    int64_t t0 = fm_monotonic_us();
    for (;;) {
        const uint8_t *chunk;
        size_t len;
        bool end;
        if ((st = fm_snapshot_reader_next(r, &chunk, &len, &end, err)) != FM_OK)
            goto out;
        if (end)
            break;
        bool ok = first ? read_header_chunk(e, chunk, len, n_rows)
                        : read_rows_chunk(e, chunk, len, &st);
        if (first)
            st = ok ? FM_OK : FM_ERR_CORRUPT;
        if (first && ok)
            prepare_start(&pr, n_rows);
        first = false;
        if (!ok) {
            if (st == FM_ERR_CORRUPT)
                fm_error_set(err, st, "%s: malformed table data", path);
            else
                fm_error_set(err, st, "%s: out of memory loading", path);
            goto out;
        }
    }
    for (size_t i = 0; i < e->schema.n_tables; i++) {
        if (first || e->tables[i].n_rows != n_rows[i]) {
            st = fm_error_set(err, FM_ERR_CORRUPT,
                              "%s: table %s has %llu rows, the header says "
                              "%llu",
                              path, e->schema.tables[i].name,
                              (unsigned long long)e->tables[i].n_rows,
                              (unsigned long long)n_rows[i]);
            goto out;
        }
    }
    prepare_finish(&pr, false);
    int64_t t1 = fm_monotonic_us();
    e->load_rows_us = t1 - t0;
    st = build_indexes(e);
    e->load_index_us = fm_monotonic_us() - t1;
    if (st != FM_OK) {
        fm_error_set(err, st, "%s: %s while building indexes", path,
                     st == FM_ERR_NOMEM ? "out of memory"
                                        : "a unique key is duplicated");
        goto out;
    }
    *lsn_out = fm_snapshot_reader_lsn(r);
out:
    prepare_finish(&pr, true);
    fm_snapshot_reader_close(r);
    return st;
}

/* Loads the newest snapshot that reads back whole; *lsn_out 0 if none. */
static fm_status load_newest_snapshot(struct fm_engine *e, uint64_t *lsn_out,
                                      struct fm_error *err)
{
    struct fm_snapshot_list list = {0};
    fm_status st = fm_snapshot_list_dir(e->dir, &list, err);
    *lsn_out = 0;
    if (st != FM_OK)
        return st;
    for (size_t i = 0; i < list.n; i++) {
        char path[4096];
        snprintf(path, sizeof(path), "%s/%s", e->dir, list.items[i].file);
        struct fm_error lerr = {0};
        st = load_snapshot(e, path, lsn_out, &lerr);
        if (st == FM_OK)
            break;
        if (st == FM_ERR_SCHEMA || st == FM_ERR_NOMEM) {
            fm_error_set(err, st, "%s", lerr.msg);
            break;
        }
        note(e, FM_LOG_WARNING,
             "snapshot %s is unusable (%s); trying an "
             "older one",
             list.items[i].file, lerr.msg);
        if ((st = reset_tables(e)) != FM_OK) {
            fm_error_set(err, st, "out of memory");
            break;
        }
        st = FM_OK;
        *lsn_out = 0;
    }
    fm_snapshot_list_fini(&list);
    return st;
}

static void wal_log(void *ctx, enum fm_log_level level, const char *msg)
{
    struct fm_engine *e = ctx;
    if (e->log != NULL)
        e->log(e->log_ctx, level, msg);
}

static fm_status replay_wal(struct fm_engine *e, uint64_t after,
                            struct fm_error *err)
{
    struct fm_wal_iter *it = NULL;
    fm_status st = fm_wal_iter_open(e->wal, after, &it, err);
    if (st != FM_OK)
        return st;
    e->last_lsn = after;
    for (;;) {
        struct fm_wal_record rec;
        bool end;
        if ((st = fm_wal_iter_next(it, &rec, &end, err)) != FM_OK || end)
            break;
        const char *why = "";
        st = apply_redo(e, rec.payload, rec.len, &why);
        if (st != FM_OK) {
            fm_error_set(err, st,
                         "WAL record at lsn %llu cannot be applied: "
                         "%s",
                         (unsigned long long)rec.lsn,
                         st == FM_ERR_NOMEM ? "out of memory" : why);
            break;
        }
        e->last_lsn = rec.lsn;
        e->pstats.recovered_records++;
        e->wal_bytes_at_save -= rec.len; /* counts toward the next trigger */
    }
    fm_wal_iter_close(it);
    return st;
}

/*
 * After a forced recovery skipped records, rows may reference rows whose
 * inserts were lost. Those ids must never be handed out again, or a new
 * row would silently adopt the orphans (a new user 1 owning the lost user
 * 1's playlists): every table's next id moves past each id that references
 * it.
 */
static void reserve_referenced_ids(struct fm_engine *e)
{
    for (size_t ti = 0; ti < e->schema.n_tables; ti++) {
        struct fm_table *t = &e->tables[ti];
        const struct fm_table_def *d = t->def;
        bool has_fk = false;
        for (size_t c = 1; c < d->n_cols; c++)
            has_fk = has_fk || d->cols[c].fk_table >= 0;
        for (uint64_t id = 1; has_fk && id < t->next_id; id++) {
            const uint8_t *rec = fm_table_record(t, id);
            if (rec == NULL)
                continue;
            struct fm_row row;
            fm_table_decode(t, id, rec, &row);
            for (size_t c = 1; c < d->n_cols; c++) {
                const struct fm_value *v = &row.v[c];
                int p = d->cols[c].fk_table;
                if (p < 0 || v->is_null || v->i <= 0 ||
                    (uint64_t)v->i >= FM_ID_MAX - 1)
                    continue;
                struct fm_table *pt = &e->tables[p];
                if ((uint64_t)v->i >= pt->next_id)
                    pt->next_id = (uint64_t)v->i + 1;
            }
        }
    }
}

/* Says what a forced recovery skipped and whether the result holds. */
static void report_forced_recovery(struct fm_engine *e)
{
    struct fm_wal_recovery wr;
    fm_wal_get_recovery(e->wal, &wr);
    e->pstats.recovery_skipped = wr.n_skipped;
    e->pstats.recovery_lsns_lost = wr.n_lsns_missing;
    if (wr.n_skipped == 0)
        return;
    note(e, FM_LOG_WARNING,
         "force recovery skipped %llu damaged regions of the WAL in %s; "
         "%llu records after them were lost with them",
         (unsigned long long)wr.n_skipped, e->dir,
         (unsigned long long)wr.n_lsns_missing);
    reserve_referenced_ids(e);
    struct fm_error cerr = {0};
    if (fm_engine_check(e, &cerr) == FM_OK)
        note(e, FM_LOG_WARNING,
             "the data recovered past them passes every constraint check");
    else
        note(e, FM_LOG_WARNING,
             "the data recovered past them breaks a constraint (%s); ids of "
             "rows that were lost are not reused, and fermata-check --deep "
             "on a copy shows the first problem",
             cerr.msg);
}

fm_status fm_persist_open(struct fm_engine *e,
                          const struct fm_engine_options *opts,
                          struct fm_error *err)
{
    int64_t t0 = fm_monotonic_us();
    size_t n = strlen(opts->dir);
    e->dir = fm_malloc(n + 1);
    if (e->dir == NULL)
        return fm_error_set(err, FM_ERR_NOMEM, "out of memory");
    memcpy(e->dir, opts->dir, n + 1);
    e->fsync = opts->fsync;
    e->atfork_child = opts->atfork_child;
    e->atfork_ctx = opts->atfork_ctx;
    fm_engine_set_snapshot_config(e, &opts->snapshot);
    fm_status st = fm_wal_make_dir(e->dir, err);
    if (st != FM_OK)
        return st;
    uint64_t snap_lsn;
    st = load_newest_snapshot(e, &snap_lsn, err);
    if (st != FM_OK)
        return st;
    for (size_t i = 0; i < e->schema.n_tables; i++)
        e->pstats.recovered_rows += e->tables[i].n_rows;
    struct fm_wal_options wo = {0};
    wo.dir = e->dir;
    wo.schema = (const uint8_t *)e->schema.text;
    wo.schema_len = e->schema.text_len;
    wo.fsync = wal_policy(opts->fsync);
    wo.segment_size = opts->wal_segment_bytes;
    wo.start_lsn = snap_lsn + 1;
    wo.force_recovery = opts->force_recovery;
    wo.io = opts->wal_io;
    wo.log_fn = wal_log;
    wo.log_ctx = e;
    int64_t t_wal = fm_monotonic_us();
    if ((st = fm_wal_open(&wo, &e->wal, err)) != FM_OK)
        return st;
    int64_t t_replay = fm_monotonic_us();
    e->wal_bytes_at_save = 0;
    if ((st = replay_wal(e, snap_lsn, err)) != FM_OK)
        return st;
    report_forced_recovery(e);
    e->save_lsn = snap_lsn;
    e->pstats.last_save_lsn = snap_lsn;
    e->pstats.last_save_ok = true;
    e->pstats.changes_since_save = e->pstats.recovered_records;
    e->last_save_mono_us = fm_monotonic_us();
    int64_t t_end = fm_monotonic_us();
    e->pstats.recovery_us = t_end - t0;
    note(e, FM_LOG_NOTICE,
         "recovered %llu rows from the snapshot at lsn %llu and %llu WAL "
         "records in %.3f s (rows placed in %.3f s, indexes built in %.3f "
         "s, WAL opened in %.3f s and replayed in %.3f s)",
         (unsigned long long)e->pstats.recovered_rows,
         (unsigned long long)snap_lsn,
         (unsigned long long)e->pstats.recovered_records,
         (double)e->pstats.recovery_us / 1e6, (double)e->load_rows_us / 1e6,
         (double)e->load_index_us / 1e6, (double)(t_replay - t_wal) / 1e6,
         (double)(t_end - t_replay) / 1e6);
    return FM_OK;
}

void fm_persist_close(struct fm_engine *e)
{
    abandon_child(e, "as the engine closes");
    fm_wal_close(e->wal);
    e->wal = NULL;
    fm_free(e->dir);
    e->dir = NULL;
}
