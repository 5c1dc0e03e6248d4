/*
 * wal.c: the write-ahead log handle: recovery, group commit, fsync policy,
 * rotation, sticky failures and truncation.
 *
 * The formats of segments and records, and the rule that tells a torn tail
 * from corruption, are in segment.c. This file is about what happens over
 * time.
 *
 * Directory layout:
 *
 *   LOCK                  flock(2)ed while a handle is open; holds the pid
 *   0000000000000001.wal  segments, named by their first LSN in hex
 *   00000000000a0c41.wal  the last one is the active segment
 *   *.wal.tmp             a segment being created; removed at open
 *
 * Open (recovery). Take the lock (a second open, even in the same process,
 * gets FM_ERR_LOCKED; a lock that outlived the process whose pid the LOCK
 * file names is waited for, see lock_dir), remove stale *.wal.tmp, then
 * read every segment in
 * name order and run the record scanner over it: the header must be sound,
 * carry the caller's schema (FM_ERR_SCHEMA otherwise) and the LSN of its
 * name; each segment must start where the previous one ended, except for a
 * gap that lies wholly below opts->start_lsn (covered by the snapshot the
 * engine loaded). A torn tail of the last segment is cut with ftruncate and
 * fdatasync and logged with its size. Appends then continue at the end of
 * the last segment, or at start_lsn in a fresh segment when the log ends
 * before the snapshot (possible after an OS crash under everysec: the
 * snapshot was fsynced, the log tail was not).
 *
 * Writing. fm_wal_append frames a record into an in-memory group (the
 * checksum is computed there, outside any lock). fm_wal_flush writes the
 * whole group with one pwrite loop at the end of the active segment and,
 * under always, one fdatasync: this is the group commit of SPEC section 4,
 * one write and one fsync per event-loop turn. If the active segment
 * already holds records and the group would take it past segment_size, the
 * segment is fdatasynced and a new one begun first, so a group never spans
 * two files and a segment may exceed segment_size by one group.
 *
 * Policies and what a crash can lose (records whose flush returned FM_OK):
 *   always    nothing: flush returns only after fdatasync succeeded.
 *   everysec  a background thread fdatasyncs the active segment about once
 *             a second if anything was written since. A process crash
 *             loses nothing (the data is in the page cache); an OS crash or
 *             power loss loses the records written since the last
 *             successful background fdatasync: about one second, more if
 *             that fdatasync is itself slow: up to everysec_max_lag_ms
 *             (2 s by default, as Redis). When the oldest write that is
 *             not yet durable is older than that (the background
 *             fdatasync is stuck on a slow disk), the flush fdatasyncs
 *             before it returns, as under always, so writes slow down to
 *             the disk instead of the loss window growing without bound.
 *   no        the log never calls fdatasync except at segment rotation and
 *             fm_wal_sync; an OS crash loses whatever the kernel had not
 *             written back (typically up to 30 s on Linux).
 * Rotation fdatasyncs the finished segment under every policy, so only the
 * last segment can have a torn tail.
 *
 * Sticky failure (SPEC section 4, STYLE section 4). When a write, fdatasync,
 * or segment creation fails, the handle records the call, errno text, file
 * and LSN range in reason and sets readonly; from then on every append and
 * flush returns FM_ERR_READONLY and no fsync is ever issued again, by
 * either thread. The failed group is never acknowledged; after a failed
 * write or a failed fdatasync under always, the file is ftruncated back to
 * where the group began (best effort) so that rolled-back transactions do
 * not reappear at the next start. Under everysec the failed background
 * fdatasync puts the range (durable_lsn, written_lsn] in the reason: those
 * records were acknowledged and may be lost.
 *
 * Threads. The handle belongs to one caller thread. Under everysec one
 * more thread exists; it never writes, it only dup()s the active fd and
 * fdatasyncs it. mu guards the fields shared with it (seg_fd changes,
 * written/durable LSNs, counters, the failure record); readonly is an
 * atomic so that append can test it without the mutex. The background
 * thread never calls the log callback: the caller's thread logs a failure
 * the next time it touches the handle.
 *
 * Preallocation. Under always, every group pays one fdatasync on the
 * reply path, and on ext4 an fdatasync after an append that grew the file
 * must also commit the new file size through the journal: two writes to
 * the device where an overwrite of blocks that already exist needs one.
 * FACTS.md measures ~4,900 overwrite fdatasyncs/s against ~3,200 appends;
 * on this machine 3,500-3,600 against 2,100-3,100 (the measurement is in
 * docs/benchmarks.md). So under always the flush keeps the active segment
 * written with real zeros (not fallocate: unwritten extents must still be
 * converted in the journal) FM_WAL_PREALLOC_STEP ahead of its last record,
 * capped at segment_size; the zeros go out with the group that needed
 * them, under the same fdatasync, so a step costs one slower fsync per
 * MiB of log instead of one journal commit per group. The record scanner
 * reads zeros after the last record as the clean end (segment.c). At
 * rotation the finished segment is cut back to its last record before its
 * final fdatasync, so only the active segment ever has a zero tail. The
 * other policies do not preallocate: their fdatasync is off the reply path
 * (everysec) or absent (no), and the zeros would double the bytes written.
 *
 * Not done: no O_DIRECT, no compression, no recycling of old segments, no
 * reading of a log that is being written by another process.
 */
#include "wal/wal.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "wal/wal_int.h"

#define LOCK_NAME "LOCK"
#define PATH_CAP  4096
/* How long an open waits for a lock whose taker has exited (lock_dir). */
#define LOCK_ORPHAN_WAIT_MS 10000

struct wal_segment {
    uint64_t first_lsn; /* from the name and the header */
    uint32_t version;   /* of its format; only FM_SEG_VERSION is appended */
    uint64_t size;      /* bytes of header and records */
    uint64_t file_len;  /* bytes in the file: size, then preallocated zeros */
    uint64_t n_records; /* valid records */
};

struct fm_wal {
    char *dir;
    uint8_t *schema;
    size_t schema_len;
    bool check_schema; /* false for fm_wal_fix_dir */
    uint64_t segment_size;
    uint64_t start_lsn;   /* gaps below it are covered by a snapshot */
    uint64_t covered_lsn; /* damage among records up to it is skipped */
    bool force;
    fm_log_fn log_fn;
    void *log_ctx;
    const struct fm_wal_io *io;
    enum fm_wal_fsync fsync;

    int lock_fd;
    struct wal_segment *segs; /* n_segs in LSN order; the last is active */
    size_t n_segs;
    size_t segs_cap;
    int seg_fd;            /* the active segment, open for writing */
    uint64_t seg_off;      /* its size: where the next group goes */
    uint64_t seg_alloc;    /* its file length: seg_off, then zeros */
    bool prealloc;         /* keep zeros ahead of seg_off under always */
    size_t seg_header_len; /* header bytes of a segment we create */

    uint64_t next_lsn;       /* LSN the next append gets */
    struct fm_buf pending;   /* framed records not yet written */
    uint64_t pending_first;  /* LSN of the first of them */
    uint64_t pending_synced; /* durable_lsn when the first was framed */
    size_t n_pending;
    bool reason_logged; /* the failure went to the log callback */
    bool lag_logged;    /* the current run of lagging flushes was logged */
    struct fm_wal_recovery recovery;

    pthread_mutex_t mu;  /* guards everything below */
    pthread_cond_t cond; /* wakes the background thread to stop */
    pthread_t thread;
    bool thread_running;
    bool thread_stop;
    uint64_t written_lsn;
    uint64_t durable_lsn;
    uint64_t bytes_written;
    uint64_t n_flushes;
    uint64_t n_fsyncs;
    uint64_t n_lag_syncs;
    int64_t last_fsync_us;
    int64_t dirty_since_us; /* monotonic: oldest write not durable; 0 none */
    int64_t max_lag_us;     /* everysec bound on dirty_since_us's age */
    uint64_t lost_first;
    uint64_t lost_last;
    char reason[FM_ERROR_MSG_CAP];
    atomic_bool readonly;
};

const char *fm_wal_fsync_name(enum fm_wal_fsync policy)
{
    switch (policy) {
    case FM_WAL_FSYNC_ALWAYS:
        return "always";
    case FM_WAL_FSYNC_EVERYSEC:
        return "everysec";
    case FM_WAL_FSYNC_NO:
        return "no";
    }
    return "unknown";
}

fm_status fm_wal_fsync_parse(const char *name, enum fm_wal_fsync *policy_out)
{
    static const enum fm_wal_fsync all[] = {
        FM_WAL_FSYNC_ALWAYS, FM_WAL_FSYNC_EVERYSEC, FM_WAL_FSYNC_NO};
    for (size_t i = 0; i < FM_ARRAY_LEN(all); i++) {
        if (strcmp(name, fm_wal_fsync_name(all[i])) == 0) {
            *policy_out = all[i];
            return FM_OK;
        }
    }
    return FM_ERR_SYNTAX;
}

/* ---- Failure record ----------------------------------------------------- */

/* Records the first failure; mu must be held. Later failures are ignored. */
static void fail_locked(struct fm_wal *wal, uint64_t lost_first,
                        uint64_t lost_last, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 4, 5)))
#endif
    ;

static void fail_locked(struct fm_wal *wal, uint64_t lost_first,
                        uint64_t lost_last, const char *fmt, ...)
{
    if (atomic_load(&wal->readonly))
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(wal->reason, sizeof(wal->reason), fmt, ap);
    va_end(ap);
    wal->lost_first = lost_first;
    wal->lost_last = lost_last;
    atomic_store(&wal->readonly, true);
}

/* The status every refused call returns, with the reason; logs it once. */
static fm_status readonly_error(struct fm_wal *wal, struct fm_error *err)
{
    if (!wal->reason_logged) {
        wal->reason_logged = true;
        fm_wal_log(wal->log_fn, wal->log_ctx, FM_LOG_WARNING,
                   "wal is read-only: %s", wal->reason);
    }
    return fm_error_set(err, FM_ERR_READONLY, "wal is read-only: %s",
                        wal->reason);
}

bool fm_wal_is_readonly(const struct fm_wal *wal)
{
    /* C11 atomic_load takes a non-const pointer; the load writes nothing. */
    return atomic_load((atomic_bool *)&wal->readonly);
}

const char *fm_wal_readonly_reason(const struct fm_wal *wal)
{
    /* Written once before readonly is set, never again. */
    return fm_wal_is_readonly(wal) ? wal->reason : "";
}

/* ---- Segments ----------------------------------------------------------- */

static struct wal_segment *active_seg(struct fm_wal *wal)
{
    FM_ASSERT(wal->n_segs > 0);
    return &wal->segs[wal->n_segs - 1];
}

static fm_status segs_reserve(struct fm_wal *wal, size_t extra,
                              struct fm_error *err)
{
    if (wal->n_segs + extra <= wal->segs_cap)
        return FM_OK;
    size_t cap = wal->segs_cap < 16 ? 16 : wal->segs_cap * 2;
    while (cap < wal->n_segs + extra)
        cap *= 2;
    struct wal_segment *p = fm_realloc(wal->segs, cap * sizeof(*p));
    if (p == NULL)
        return fm_error_set(err, FM_ERR_NOMEM,
                            "out of memory for the wal segment list");
    wal->segs = p;
    wal->segs_cap = cap;
    return FM_OK;
}

static fm_status seg_path(const struct fm_wal *wal, uint64_t first_lsn,
                          char *out, struct fm_error *err)
{
    char name[FM_SEG_NAME_CAP];
    fm_wal_segment_name(name, first_lsn);
    return fm_wal_path_join(out, PATH_CAP, wal->dir, name, err);
}

/*
 * Creates the segment that starts at first_lsn: written under a temporary
 * name, fsynced, renamed, directory fsynced. *fd_out is open for writing.
 */
static fm_status create_segment(struct fm_wal *wal, uint64_t first_lsn,
                                int *fd_out, struct fm_error *err)
{
    const struct fm_wal_io *io = wal->io;
    char path[PATH_CAP];
    char tmp[PATH_CAP + 8];
    uint8_t *hdr = NULL;
    int fd = -1;
    fm_status st = seg_path(wal, first_lsn, path, err);
    if (st != FM_OK)
        return st;
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    hdr = fm_malloc(wal->seg_header_len);
    if (hdr == NULL)
        return fm_error_set(err, FM_ERR_NOMEM, "out of memory creating %s",
                            path);
    fm_wal_segment_header_encode(hdr, first_lsn, wal->schema, wal->schema_len,
                                 fm_now_us());
    fd = io->open(io->ctx, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        st = fm_error_set(err, FM_ERR_IO, "cannot create %s: %s", tmp,
                          strerror(errno));
        goto out;
    }
    size_t done;
    int e;
    if (fm_wal_write_all(io, fd, hdr, wal->seg_header_len, 0, &done, &e) != 0) {
        st = fm_error_set(err, FM_ERR_IO, "cannot write header of %s: %s", tmp,
                          strerror(e));
        goto out;
    }
    if (io->fsync(io->ctx, fd) != 0) {
        st = fm_error_set(err, FM_ERR_IO, "fsync of %s failed: %s", tmp,
                          strerror(errno));
        goto out;
    }
    if (io->rename(io->ctx, tmp, path) != 0) {
        st = fm_error_set(err, FM_ERR_IO, "cannot rename %s: %s", tmp,
                          strerror(errno));
        goto out;
    }
    st = fm_wal_fsync_dir(io, wal->dir, err);
out:
    if (st != FM_OK && fd >= 0) {
        io->close(io->ctx, fd);
        io->unlink(io->ctx, tmp);
        fd = -1;
    }
    fm_free(hdr);
    if (st == FM_OK)
        *fd_out = fd;
    return st;
}

/* Makes a new segment at first_lsn the active one. */
static fm_status start_segment(struct fm_wal *wal, uint64_t first_lsn,
                               struct fm_error *err)
{
    int fd;
    fm_status st = segs_reserve(wal, 1, err);
    if (st != FM_OK)
        return st;
    st = create_segment(wal, first_lsn, &fd, err);
    if (st != FM_OK)
        return st;
    pthread_mutex_lock(&wal->mu);
    int old = wal->seg_fd;
    wal->seg_fd = fd;
    pthread_mutex_unlock(&wal->mu);
    if (old >= 0)
        wal->io->close(wal->io->ctx, old);
    wal->segs[wal->n_segs++] =
        (struct wal_segment){.first_lsn = first_lsn,
                             .version = FM_SEG_VERSION,
                             .size = wal->seg_header_len,
                             .file_len = wal->seg_header_len,
                             .n_records = 0};
    wal->seg_off = wal->seg_header_len;
    wal->seg_alloc = wal->seg_header_len;
    return FM_OK;
}

/*
 * Records a successful fdatasync that covered every record up to target and
 * began at started_us (monotonic; 0 when no write can have come in since,
 * as on the caller's thread); mu must be held.
 */
static void synced_locked(struct fm_wal *wal, uint64_t target,
                          int64_t started_us)
{
    if (target > wal->durable_lsn)
        wal->durable_lsn = target;
    wal->n_fsyncs++;
    wal->last_fsync_us = fm_now_us();
    /* Writes after target came in after the fdatasync began. */
    if (wal->durable_lsn >= wal->written_lsn)
        wal->dirty_since_us = 0;
    else if (wal->dirty_since_us < started_us)
        wal->dirty_since_us = started_us;
}

/* fdatasync of the active segment from the caller's thread. */
static fm_status sync_active(struct fm_wal *wal, const char *why,
                             struct fm_error *err)
{
    pthread_mutex_lock(&wal->mu);
    uint64_t target = wal->written_lsn;
    pthread_mutex_unlock(&wal->mu);
    if (wal->io->fdatasync(wal->io->ctx, wal->seg_fd) != 0) {
        int e = errno;
        char name[FM_SEG_NAME_CAP];
        fm_wal_segment_name(name, active_seg(wal)->first_lsn);
        pthread_mutex_lock(&wal->mu);
        uint64_t first = wal->durable_lsn + 1;
        fail_locked(wal, first, target,
                    "fdatasync of %s failed (%s): %s; records %" PRIu64
                    "..%" PRIu64 " may be lost",
                    name, why, strerror(e), first, target);
        pthread_mutex_unlock(&wal->mu);
        return readonly_error(wal, err);
    }
    pthread_mutex_lock(&wal->mu);
    synced_locked(wal, target, 0);
    pthread_mutex_unlock(&wal->mu);
    return FM_OK;
}

/* Closes the full active segment and begins one at first_lsn. */
static fm_status rotate(struct fm_wal *wal, uint64_t first_lsn,
                        uint64_t last_lsn, struct fm_error *err)
{
    /* Only the active segment may end in preallocated zeros. */
    if (wal->seg_alloc > wal->seg_off) {
        if (wal->io->ftruncate(wal->io->ctx, wal->seg_fd,
                               (off_t)wal->seg_off) != 0) {
            int e = errno;
            char name[FM_SEG_NAME_CAP];
            fm_wal_segment_name(name, active_seg(wal)->first_lsn);
            pthread_mutex_lock(&wal->mu);
            fail_locked(wal, first_lsn, last_lsn,
                        "cannot cut the preallocated tail of %s before "
                        "rotation: %s; records %" PRIu64 "..%" PRIu64
                        " were not written",
                        name, strerror(e), first_lsn, last_lsn);
            pthread_mutex_unlock(&wal->mu);
            return readonly_error(wal, err);
        }
        wal->seg_alloc = wal->seg_off;
        active_seg(wal)->file_len = wal->seg_off;
    }
    fm_status st = sync_active(wal, "before rotation", err);
    if (st != FM_OK)
        return st;
    struct fm_error detail = {0};
    st = start_segment(wal, first_lsn, &detail);
    if (st == FM_OK)
        return FM_OK;
    if (st == FM_ERR_NOMEM)
        return fm_error_set(err, st, "%s", detail.msg);
    pthread_mutex_lock(&wal->mu);
    fail_locked(wal, first_lsn, last_lsn,
                "cannot start a new wal segment: %s; records %" PRIu64
                "..%" PRIu64 " were not written",
                detail.msg, first_lsn, last_lsn);
    pthread_mutex_unlock(&wal->mu);
    return readonly_error(wal, err);
}

/* ---- Background fsync --------------------------------------------------- */

static void *sync_thread_main(void *arg)
{
    struct fm_wal *wal = arg;
    pthread_mutex_lock(&wal->mu);
    while (!wal->thread_stop) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_sec += 1;
        pthread_cond_timedwait(&wal->cond, &wal->mu, &ts);
        if (wal->thread_stop)
            break;
        if (atomic_load(&wal->readonly) || wal->written_lsn == wal->durable_lsn)
            continue;
        /*
         * A dup keeps the file open while the lock is released, even if
         * the caller rotates meanwhile; rotation syncs the old segment
         * itself, so syncing it again here is merely redundant.
         */
        uint64_t target = wal->written_lsn;
        int64_t started = fm_monotonic_us();
        int fd = dup(wal->seg_fd);
        pthread_mutex_unlock(&wal->mu);
        int rc = fd < 0 ? -1 : wal->io->fdatasync(wal->io->ctx, fd);
        int e = errno;
        if (fd >= 0)
            close(fd);
        pthread_mutex_lock(&wal->mu);
        if (rc == 0) {
            synced_locked(wal, target, started);
            continue;
        }
        uint64_t first = wal->durable_lsn + 1;
        fail_locked(wal, first, target,
                    "background fdatasync of the wal in %s failed: %s; "
                    "acknowledged records %" PRIu64 "..%" PRIu64 " may be lost",
                    wal->dir, strerror(e), first, target);
    }
    pthread_mutex_unlock(&wal->mu);
    return NULL;
}

static fm_status start_thread(struct fm_wal *wal, struct fm_error *err)
{
    FM_ASSERT(!wal->thread_running);
    wal->thread_stop = false;
    int rc = pthread_create(&wal->thread, NULL, sync_thread_main, wal);
    if (rc != 0)
        return fm_error_set(err, FM_ERR_IO,
                            "cannot start the wal fsync thread: %s",
                            strerror(rc));
    wal->thread_running = true;
    return FM_OK;
}

static void stop_thread(struct fm_wal *wal)
{
    if (!wal->thread_running)
        return;
    pthread_mutex_lock(&wal->mu);
    wal->thread_stop = true;
    pthread_cond_signal(&wal->cond);
    pthread_mutex_unlock(&wal->mu);
    pthread_join(wal->thread, NULL);
    wal->thread_running = false;
}

/* ---- Open and close ----------------------------------------------------- */

/* A handle with no files open yet. */
static fm_status wal_alloc(const char *dir, struct fm_wal **wal_out,
                           struct fm_error *err)
{
    struct fm_wal *wal = fm_calloc(1, sizeof(*wal));
    if (wal == NULL)
        goto fail_nomem;
    size_t dir_len = strlen(dir);
    wal->dir = fm_malloc(dir_len + 1);
    if (wal->dir == NULL)
        goto fail_free_wal;
    memcpy(wal->dir, dir, dir_len + 1);
    wal->lock_fd = -1;
    wal->seg_fd = -1;
    wal->io = fm_wal_io_default();
    wal->segment_size = FM_WAL_SEGMENT_SIZE_DEFAULT;
    wal->start_lsn = 1;
    wal->next_lsn = 1;
    atomic_init(&wal->readonly, false);
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&wal->cond, &attr);
    pthread_condattr_destroy(&attr);
    pthread_mutex_init(&wal->mu, NULL);
    *wal_out = wal;
    return FM_OK;

fail_free_wal:
    fm_free(wal);
fail_nomem:
    return fm_error_set(err, FM_ERR_NOMEM, "out of memory opening wal %s", dir);
}

static void wal_free(struct fm_wal *wal)
{
    stop_thread(wal);
    if (wal->seg_fd >= 0)
        wal->io->close(wal->io->ctx, wal->seg_fd);
    if (wal->lock_fd >= 0)
        close(wal->lock_fd);
    pthread_cond_destroy(&wal->cond);
    pthread_mutex_destroy(&wal->mu);
    fm_buf_fini(&wal->pending);
    fm_free(wal->segs);
    fm_free(wal->schema);
    fm_free(wal->dir);
    fm_free(wal);
}

/* True when the LOCK file's text names a pid that no process has. */
static bool holder_is_gone(const char *pid_text)
{
    char *end;
    long pid = strtol(pid_text, &end, 10);
    return end != pid_text && pid > 0 && kill((pid_t)pid, 0) != 0 &&
           errno == ESRCH;
}

/*
 * The lock is held, but the process that took it (the pid in the file) is
 * gone: what holds it is a process it forked, which inherited the lock, in
 * practice its background snapshot's child, which the engine makes die
 * with its parent. It may still be finishing a write to the directory, so
 * the open waits for it to let go (LOCK_ORPHAN_WAIT_MS at most) rather than
 * refuse or share the directory with it. Returns the last flock result.
 */
static int wait_for_orphaned_lock(struct fm_wal *wal, int fd,
                                  const char *pid_text)
{
    fm_wal_log(wal->log_fn, wal->log_ctx, FM_LOG_WARNING,
               "the lock of %s is held by a process left behind by fermata "
               "pid %s, which has exited (its snapshot child?); waiting up "
               "to %d s for it to let go",
               wal->dir, pid_text, LOCK_ORPHAN_WAIT_MS / 1000);
    int e = EWOULDBLOCK;
    for (int i = 0; i < LOCK_ORPHAN_WAIT_MS / 10 && e == EWOULDBLOCK; i++) {
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
        e = fm_wal_flock_try(fd);
    }
    return e;
}

/* Creates the directory if needed and takes the LOCK file. */
static fm_status lock_dir(struct fm_wal *wal, struct fm_error *err)
{
    char path[PATH_CAP];
    fm_status st = fm_wal_make_dir(wal->dir, err);
    if (st != FM_OK)
        return st;
    st = fm_wal_path_join(path, sizeof(path), wal->dir, LOCK_NAME, err);
    if (st != FM_OK)
        return st;
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0)
        return fm_error_set(err, FM_ERR_IO, "cannot open lock file %s: %s",
                            path, strerror(errno));
    int e = fm_wal_flock_try(fd);
    char pid[32] = "unknown";
    bool orphaned = false;
    if (e == EWOULDBLOCK) {
        ssize_t n = pread(fd, pid, sizeof(pid) - 1, 0);
        if (n > 0)
            pid[n] = '\0';
        orphaned = holder_is_gone(pid);
        if (orphaned)
            e = wait_for_orphaned_lock(wal, fd, pid);
    }
    if (e == EWOULDBLOCK && orphaned) {
        close(fd);
        return fm_error_set(err, FM_ERR_LOCKED,
                            "data directory %s is locked by a process left "
                            "behind by fermata pid %s, which has exited (its "
                            "snapshot child?), and it did not let go of %s "
                            "within %d s",
                            wal->dir, pid, path, LOCK_ORPHAN_WAIT_MS / 1000);
    }
    if (e == EWOULDBLOCK) {
        close(fd);
        return fm_error_set(err, FM_ERR_LOCKED,
                            "data directory %s is in use by another fermata "
                            "(pid %s holds %s)",
                            wal->dir, pid, path);
    }
    if (e != 0) {
        close(fd);
        return fm_error_set(err, FM_ERR_IO, "cannot lock %s: %s", path,
                            strerror(e));
    }
    /* The pid is for the messages above and for telling a live holder from
     * an orphaned one; failing to write it only loses that. */
    char text[32];
    int len = snprintf(text, sizeof(text), "%ld", (long)getpid());
    if (ftruncate(fd, 0) == 0 && pwrite(fd, text, (size_t)len, 0) < 0)
        len = 0;
    wal->lock_fd = fd;
    return FM_OK;
}

struct lsn_list {
    uint64_t *lsns;
    size_t n;
    size_t cap;
};

static fm_status collect_lsn(void *ctx, const char *name, uint64_t lsn)
{
    (void)name;
    struct lsn_list *l = ctx;
    if (l->n == l->cap) {
        size_t cap = l->cap < 16 ? 16 : l->cap * 2;
        uint64_t *p = fm_realloc(l->lsns, cap * sizeof(*p));
        if (p == NULL)
            return FM_ERR_NOMEM;
        l->lsns = p;
        l->cap = cap;
    }
    l->lsns[l->n++] = lsn;
    return FM_OK;
}

/* Lists the segments of dir (suffix ".wal" or ".wal.tmp") in LSN order. */
static fm_status list_lsns(const char *dir, const char *suffix,
                           struct lsn_list *out, struct fm_error *err)
{
    fm_status st = fm_wal_list_dir(dir, suffix, collect_lsn, out, err);
    if (st == FM_ERR_NOMEM)
        fm_error_set(err, st, "out of memory listing %s", dir);
    if (st == FM_OK)
        fm_wal_sort_lsns(out->lsns, out->n);
    return st;
}

static fm_status remove_temp_segments(struct fm_wal *wal, struct fm_error *err)
{
    struct lsn_list tmps = {0};
    char name[FM_SEG_NAME_CAP + 4];
    char path[PATH_CAP];
    fm_status st = list_lsns(wal->dir, ".wal.tmp", &tmps, err);
    for (size_t i = 0; st == FM_OK && i < tmps.n; i++) {
        fm_wal_segment_name(name, tmps.lsns[i]);
        strcat(name, ".tmp");
        st = fm_wal_path_join(path, sizeof(path), wal->dir, name, err);
        if (st != FM_OK)
            break;
        if (wal->io->unlink(wal->io->ctx, path) != 0) {
            st = fm_error_set(err, FM_ERR_IO, "cannot remove %s: %s", path,
                              strerror(errno));
            break;
        }
        wal->recovery.n_temp_removed++;
        fm_wal_log(wal->log_fn, wal->log_ctx, FM_LOG_NOTICE,
                   "removed unfinished wal segment %s", path);
    }
    fm_free(tmps.lsns);
    return st;
}

/* Cuts the torn tail [valid_end, old_len) off the last segment. */
static fm_status cut_tail(struct fm_wal *wal, const char *path,
                          const struct fm_wal_cursor *c, uint64_t old_len,
                          struct fm_error *err)
{
    uint64_t valid_end = c->valid_end;
    uint64_t torn_len = c->torn_len;
    uint64_t last_lsn = c->expect_lsn - 1;
    const struct fm_wal_io *io = wal->io;
    int fd = io->open(io->ctx, path, O_WRONLY | O_CLOEXEC, 0);
    if (fd < 0)
        return fm_error_set(err, FM_ERR_IO, "cannot open %s: %s", path,
                            strerror(errno));
    fm_status st = FM_OK;
    if (io->ftruncate(io->ctx, fd, (off_t)valid_end) != 0 ||
        io->fdatasync(io->ctx, fd) != 0)
        st = fm_error_set(err, FM_ERR_IO, "cannot cut torn tail of %s: %s",
                          path, strerror(errno));
    io->close(io->ctx, fd);
    if (st != FM_OK)
        return st;
    wal->recovery.torn_bytes = old_len - valid_end;
    wal->recovery.torn_records = c->n_torn_records;
    /* A torn group followed by preallocated zeros: say which part of the
     * cut held data (trailing zeros of the record itself count as zeros). */
    char zeros[96] = "";
    if (old_len - valid_end > torn_len)
        snprintf(zeros, sizeof(zeros),
                 " (%" PRIu64 " of them data, the rest zeros)", torn_len);
    char group[192] = "";
    if (c->n_torn_records > 0)
        snprintf(group, sizeof(group),
                 "; %" PRIu64 " intact records after the damage were "
                 "written after the last fdatasync too and are cut with it",
                 c->n_torn_records);
    fm_wal_log(wal->log_fn, wal->log_ctx, FM_LOG_WARNING,
               "cut a torn %s of %" PRIu64 " bytes%s at offset %" PRIu64
               " off the end of %s (last good lsn %" PRIu64 ")%s",
               c->n_torn_records > 0 ? "group" : "record", old_len - valid_end,
               zeros, valid_end, path, last_lsn, group);
    return FM_OK;
}

/* Checks that a segment starting at first continues from expect. */
static fm_status check_continuity(struct fm_wal *wal, const char *path,
                                  uint64_t first, uint64_t *expect,
                                  struct fm_error *err)
{
    if (first == *expect)
        return FM_OK;
    /* A forward gap wholly covered by the loaded snapshot is legitimate. */
    if (first > *expect && first <= wal->start_lsn) {
        *expect = first;
        return FM_OK;
    }
    if (!wal->force)
        return fm_error_set(err, FM_ERR_CORRUPT,
                            "wal segment %s starts at lsn %" PRIu64
                            " but the previous segment ends at lsn %" PRIu64
                            " (at offset 0)",
                            path, first, *expect - 1);
    fm_wal_log(wal->log_fn, wal->log_ctx, FM_LOG_WARNING,
               "force recovery: wal segment %s starts at lsn %" PRIu64
               " where %" PRIu64 " was expected",
               path, first, *expect);
    wal->recovery.n_skipped++;
    if (first > *expect)
        wal->recovery.n_lsns_missing += first - *expect;
    *expect = first;
    return FM_OK;
}

/* Validates one segment image and records it in wal->segs. */
static fm_status scan_segment(struct fm_wal *wal, const char *path,
                              uint64_t name_lsn, const struct fm_wal_image *img,
                              bool is_last, uint64_t *expect,
                              struct fm_error *err)
{
    struct fm_wal_segment_header hdr;
    fm_status st = fm_wal_segment_header_decode(
        img->data, img->len, path, wal->check_schema ? wal->schema : NULL,
        wal->schema_len, &hdr, err);
    if (st != FM_OK)
        return st;
    if (hdr.first_lsn != name_lsn)
        return fm_error_set(err, FM_ERR_CORRUPT,
                            "wal segment %s says it starts at lsn %" PRIu64
                            " (at offset %d)",
                            path, hdr.first_lsn, FM_SEG_OFF_FIRST_LSN);
    if (*expect == 0)
        *expect = hdr.first_lsn;
    st = check_continuity(wal, path, hdr.first_lsn, expect, err);
    if (st != FM_OK)
        return st;
    struct fm_wal_cursor c = {.name = path,
                              .data = img->data,
                              .len = img->len,
                              .rec_hdr = hdr.rec_hdr_len,
                              .pos = hdr.header_len,
                              .expect_lsn = *expect,
                              .is_last = is_last,
                              .force = wal->force,
                              .covered_lsn = wal->covered_lsn,
                              .first_bad = -1};
    for (;;) {
        struct fm_wal_record rec;
        bool end;
        st = fm_wal_cursor_next(&c, &rec, &end, err);
        if (st != FM_OK)
            return st;
        if (end)
            break;
        if (wal->recovery.first_lsn == 0)
            wal->recovery.first_lsn = rec.lsn;
        wal->recovery.last_lsn = rec.lsn;
    }
    if (c.n_covered > 0)
        fm_wal_log(wal->log_fn, wal->log_ctx, FM_LOG_WARNING,
                   "skipped %" PRIu64 " damaged regions (%zu bytes) of %s "
                   "that only held records the snapshot at lsn %" PRIu64 " has",
                   c.n_covered, c.covered_bytes, path, wal->covered_lsn);
    if (c.torn) {
        st = cut_tail(wal, path, &c, img->len, err);
        if (st != FM_OK)
            return st;
    }
    wal->recovery.n_records += c.n_records;
    wal->recovery.n_skipped += c.n_skipped;
    wal->recovery.n_lsns_missing += c.n_lsns_missing;
    *expect = c.expect_lsn;
    wal->segs[wal->n_segs++] = (struct wal_segment){
        .first_lsn = hdr.first_lsn,
        .version = hdr.version,
        .size = c.valid_end,
        .file_len = c.torn ? c.valid_end : img->len,
        .n_records = c.n_records,
    };
    return FM_OK;
}

/* Reads every segment in order; sets next_lsn. */
static fm_status scan_dir(struct fm_wal *wal, struct fm_error *err)
{
    struct lsn_list segs = {0};
    struct fm_wal_image img = {0};
    char path[PATH_CAP];
    uint64_t expect = 0;
    fm_status st = remove_temp_segments(wal, err);
    if (st != FM_OK)
        goto out;
    st = list_lsns(wal->dir, ".wal", &segs, err);
    if (st != FM_OK)
        goto out;
    st = segs_reserve(wal, segs.n + 1, err);
    if (st != FM_OK)
        goto out;
    wal->recovery.n_segments = segs.n;
    for (size_t i = 0; i < segs.n; i++) {
        st = seg_path(wal, segs.lsns[i], path, err);
        if (st != FM_OK)
            goto out;
        fm_wal_unmap_file(&img);
        st = fm_wal_map_file(path, &img, err);
        if (st != FM_OK)
            goto out;
        st = scan_segment(wal, path, segs.lsns[i], &img, i + 1 == segs.n,
                          &expect, err);
        if (st != FM_OK)
            goto out;
    }
    wal->next_lsn = expect;
out:
    fm_wal_unmap_file(&img);
    fm_free(segs.lsns);
    return st;
}

/* Opens the active segment for appending, or starts one. */
static fm_status open_active(struct fm_wal *wal, struct fm_error *err)
{
    if (wal->n_segs == 0 || wal->next_lsn < wal->start_lsn) {
        if (wal->n_segs > 0)
            fm_wal_log(wal->log_fn, wal->log_ctx, FM_LOG_WARNING,
                       "the wal ends at lsn %" PRIu64
                       ", before the snapshot; new records start at lsn "
                       "%" PRIu64,
                       wal->next_lsn - 1, wal->start_lsn);
        wal->next_lsn = wal->start_lsn;
        return start_segment(wal, wal->start_lsn, err);
    }
    char path[PATH_CAP];
    fm_status st = seg_path(wal, active_seg(wal)->first_lsn, path, err);
    if (st != FM_OK)
        return st;
    wal->seg_fd = wal->io->open(wal->io->ctx, path, O_WRONLY | O_CLOEXEC, 0);
    if (wal->seg_fd < 0)
        return fm_error_set(err, FM_ERR_IO, "cannot open %s: %s", path,
                            strerror(errno));
    wal->seg_off = active_seg(wal)->size;
    wal->seg_alloc = active_seg(wal)->file_len;
    if (active_seg(wal)->version == FM_SEG_VERSION)
        return FM_OK;
    /*
     * An older format is read but never appended to: finish the segment
     * as rotation would (no zero tail, fdatasynced) and begin one in the
     * current format. An older segment without records is replaced by the
     * new one of the same name.
     */
    fm_wal_log(wal->log_fn, wal->log_ctx, FM_LOG_NOTICE,
               "%s has wal format version %u; new records go to a segment "
               "of version %d",
               path, (unsigned)active_seg(wal)->version, FM_SEG_VERSION);
    if ((wal->seg_alloc > wal->seg_off &&
         wal->io->ftruncate(wal->io->ctx, wal->seg_fd, (off_t)wal->seg_off) !=
             0) ||
        wal->io->fdatasync(wal->io->ctx, wal->seg_fd) != 0)
        return fm_error_set(err, FM_ERR_IO, "cannot finish %s: %s", path,
                            strerror(errno));
    active_seg(wal)->file_len = wal->seg_alloc = wal->seg_off;
    if (active_seg(wal)->n_records == 0)
        wal->n_segs--;
    return start_segment(wal, wal->next_lsn, err);
}

fm_status fm_wal_open(const struct fm_wal_options *opts,
                      struct fm_wal **wal_out, struct fm_error *err)
{
    FM_ASSERT(opts != NULL && opts->dir != NULL && wal_out != NULL);
    FM_ASSERT(opts->schema != NULL || opts->schema_len == 0);
    if (opts->schema_len > FM_WAL_SCHEMA_MAX)
        return fm_error_set(err, FM_ERR_LIMIT,
                            "schema text too long for the wal (%zu bytes)",
                            opts->schema_len);
    struct fm_wal *wal;
    fm_status st = wal_alloc(opts->dir, &wal, err);
    if (st != FM_OK)
        return st;
    wal->schema = fm_malloc(opts->schema_len);
    if (wal->schema == NULL) {
        st = fm_error_set(err, FM_ERR_NOMEM, "out of memory opening wal");
        goto fail;
    }
    if (opts->schema_len > 0)
        memcpy(wal->schema, opts->schema, opts->schema_len);
    wal->schema_len = opts->schema_len;
    wal->check_schema = true;
    wal->seg_header_len = fm_wal_segment_header_len(opts->schema_len);
    if (opts->segment_size != 0)
        wal->segment_size = opts->segment_size;
    wal->start_lsn = opts->start_lsn == 0 ? 1 : opts->start_lsn;
    wal->covered_lsn = wal->start_lsn - 1;
    wal->force = opts->force_recovery;
    wal->log_fn = opts->log_fn;
    wal->log_ctx = opts->log_ctx;
    if (opts->io != NULL)
        wal->io = opts->io;
    wal->fsync = opts->fsync;
    wal->prealloc = !opts->no_prealloc;
    wal->max_lag_us =
        (int64_t)(opts->everysec_max_lag_ms != 0 ? opts->everysec_max_lag_ms
                                                 : FM_WAL_EVERYSEC_MAX_LAG_MS) *
        1000;
    st = lock_dir(wal, err);
    if (st != FM_OK)
        goto fail;
    st = scan_dir(wal, err);
    if (st != FM_OK)
        goto fail;
    st = open_active(wal, err);
    if (st != FM_OK)
        goto fail;
    wal->written_lsn = wal->next_lsn - 1;
    wal->durable_lsn = wal->next_lsn - 1;
    if (wal->fsync == FM_WAL_FSYNC_EVERYSEC) {
        st = start_thread(wal, err);
        if (st != FM_OK)
            goto fail;
    }
    *wal_out = wal;
    return FM_OK;
fail:
    wal_free(wal);
    return st;
}

void fm_wal_close(struct fm_wal *wal)
{
    if (wal == NULL)
        return;
    wal_free(wal);
}

void fm_wal_get_recovery(const struct fm_wal *wal, struct fm_wal_recovery *out)
{
    *out = wal->recovery;
}

/* ---- Replay ------------------------------------------------------------- */

struct fm_wal_iter {
    struct fm_wal *wal;
    uint64_t after_lsn;
    size_t seg_i;            /* segment being read, or next to read */
    bool in_seg;             /* cur is positioned inside segs[seg_i] */
    struct fm_wal_image img; /* the segment's bytes, mapped */
    char path[PATH_CAP];
    struct fm_wal_cursor cur;
};

fm_status fm_wal_iter_open(struct fm_wal *wal, uint64_t after_lsn,
                           struct fm_wal_iter **it_out, struct fm_error *err)
{
    FM_ASSERT(wal->n_segs > 0);
    uint64_t first = wal->segs[0].first_lsn;
    if (first > after_lsn + 1 && !wal->force)
        return fm_error_set(err, FM_ERR_CORRUPT,
                            "the wal in %s begins at lsn %" PRIu64
                            " but records after lsn %" PRIu64
                            " are needed (at offset 0 of the first segment)",
                            wal->dir, first, after_lsn);
    struct fm_wal_iter *it = fm_calloc(1, sizeof(*it));
    if (it == NULL)
        return fm_error_set(err, FM_ERR_NOMEM, "out of memory reading the wal");
    it->wal = wal;
    it->after_lsn = after_lsn;
    /* Skip segments whose records are all at or below after_lsn. */
    while (it->seg_i + 1 < wal->n_segs &&
           wal->segs[it->seg_i + 1].first_lsn - 1 <= after_lsn)
        it->seg_i++;
    /* The segment reached may be covered whole as well (the snapshot was
     * taken at its end): fm_wal_open has verified its records already, so
     * it is not read again just to skip them. A segment's LSNs run without
     * gaps unless force_recovery skipped some, so its last LSN is
     * first_lsn + n_records - 1. */
    const struct wal_segment *seg = &wal->segs[it->seg_i];
    if (!wal->force && seg->first_lsn + seg->n_records <= after_lsn + 1)
        it->seg_i = wal->n_segs;
    *it_out = it;
    return FM_OK;
}

static fm_status iter_load(struct fm_wal_iter *it, struct fm_error *err)
{
    struct fm_wal *wal = it->wal;
    const struct wal_segment *seg = &wal->segs[it->seg_i];
    fm_status st = seg_path(wal, seg->first_lsn, it->path, err);
    if (st != FM_OK)
        return st;
    fm_wal_unmap_file(&it->img);
    st = fm_wal_map_file(it->path, &it->img, err);
    if (st != FM_OK)
        return st;
    if (it->img.len < seg->size)
        return fm_error_set(err, FM_ERR_IO,
                            "wal segment %s shrank to %zu bytes since it was "
                            "opened",
                            it->path, it->img.len);
    struct fm_wal_segment_header hdr;
    st = fm_wal_segment_header_decode(it->img.data, seg->size, it->path, NULL,
                                      0, &hdr, err);
    if (st != FM_OK)
        return st;
    it->cur = (struct fm_wal_cursor){.name = it->path,
                                     .data = it->img.data,
                                     .len = seg->size,
                                     .rec_hdr = hdr.rec_hdr_len,
                                     .pos = hdr.header_len,
                                     .expect_lsn = hdr.first_lsn,
                                     .is_last = false,
                                     .force = wal->force,
                                     .covered_lsn = wal->covered_lsn,
                                     .first_bad = -1};
    it->in_seg = true;
    return FM_OK;
}

fm_status fm_wal_iter_next(struct fm_wal_iter *it,
                           struct fm_wal_record *rec_out, bool *end_out,
                           struct fm_error *err)
{
    for (;;) {
        if (!it->in_seg) {
            if (it->seg_i >= it->wal->n_segs) {
                *end_out = true;
                return FM_OK;
            }
            fm_status st = iter_load(it, err);
            if (st != FM_OK)
                return st;
        }
        struct fm_wal_record rec;
        bool end;
        fm_status st = fm_wal_cursor_next(&it->cur, &rec, &end, err);
        if (st != FM_OK)
            return st;
        if (end) {
            it->in_seg = false;
            it->seg_i++;
            continue;
        }
        if (rec.lsn <= it->after_lsn)
            continue;
        *rec_out = rec;
        *end_out = false;
        return FM_OK;
    }
}

void fm_wal_iter_close(struct fm_wal_iter *it)
{
    if (it == NULL)
        return;
    fm_wal_unmap_file(&it->img);
    fm_free(it);
}

/* ---- Writing ------------------------------------------------------------ */

fm_status fm_wal_append(struct fm_wal *wal, const uint8_t *payload, size_t len,
                        uint64_t *lsn_out, struct fm_error *err)
{
    FM_ASSERT(payload != NULL || len == 0);
    if (atomic_load(&wal->readonly))
        return readonly_error(wal, err);
    if (len > FM_WAL_PAYLOAD_MAX)
        return fm_error_set(err, FM_ERR_LIMIT,
                            "wal record of %zu bytes is over the limit of "
                            "%zu",
                            len, FM_WAL_PAYLOAD_MAX);
    fm_status st = fm_buf_reserve(&wal->pending, FM_REC_HDR + len);
    if (st != FM_OK)
        return fm_error_set(err, FM_ERR_NOMEM,
                            "out of memory buffering a wal record");
    uint8_t *hdr = wal->pending.data + wal->pending.len;
    if (len > 0)
        memcpy(hdr + FM_REC_HDR, payload, len);
    uint64_t lsn = wal->next_lsn++;
    if (wal->n_pending++ == 0) {
        wal->pending_first = lsn;
        /* What was durable when the group began: every record of the
         * group carries it, so that recovery can tell a torn group from
         * damage to synced bytes (segment.c). Once a group is enough. */
        pthread_mutex_lock(&wal->mu);
        wal->pending_synced = wal->durable_lsn;
        pthread_mutex_unlock(&wal->mu);
    }
    fm_wal_record_header_encode(hdr, lsn, wal->pending_synced, hdr + FM_REC_HDR,
                                len);
    wal->pending.len += FM_REC_HDR + len;
    *lsn_out = lsn;
    return FM_OK;
}

bool fm_wal_has_pending(const struct fm_wal *wal)
{
    return wal->n_pending > 0;
}

static void drop_pending(struct fm_wal *wal)
{
    wal->pending.len = 0;
    wal->n_pending = 0;
}

/* The group [first, last] failed at the call named what; undo and fail. */
static fm_status fail_group(struct fm_wal *wal, const char *what, int e,
                            uint64_t first, uint64_t last, struct fm_error *err)
{
    char name[FM_SEG_NAME_CAP];
    fm_wal_segment_name(name, active_seg(wal)->first_lsn);
    /*
     * Cut the file back to where the group began so that a group that was
     * never acknowledged cannot come back at the next start. Best effort:
     * the handle is read-only whatever happens here.
     */
    const char *undo = "";
    if (wal->io->ftruncate(wal->io->ctx, wal->seg_fd, (off_t)wal->seg_off) != 0)
        undo = " (and cutting it back failed)";
    else
        wal->seg_alloc = wal->seg_off;
    pthread_mutex_lock(&wal->mu);
    uint64_t lost_first = first;
    if (wal->fsync != FM_WAL_FSYNC_ALWAYS && wal->durable_lsn + 1 < first)
        lost_first = wal->durable_lsn + 1;
    fail_locked(wal, lost_first, last,
                "%s of %s/%s at offset %" PRIu64 " failed: %s; records "
                "%" PRIu64 "..%" PRIu64 " were not written%s; records from "
                "lsn %" PRIu64 " may be lost",
                what, wal->dir, name, wal->seg_off, strerror(e), first, last,
                undo, lost_first);
    pthread_mutex_unlock(&wal->mu);
    drop_pending(wal);
    return readonly_error(wal, err);
}

/*
 * Keeps the active segment written with zeros at least FM_WAL_PREALLOC_STEP
 * past end (capped at segment_size) so that the next groups overwrite
 * blocks that exist. Returns 0, or -1 with *e_out set.
 */
static int preallocate(struct fm_wal *wal, uint64_t end, int *e_out)
{
    static uint8_t zeros[64 << 10]; /* never written */
    if (wal->seg_alloc >= end + FM_WAL_PREALLOC_STEP / 2 ||
        wal->seg_alloc >= wal->segment_size)
        return 0;
    uint64_t target = (end + FM_WAL_PREALLOC_STEP + 4095) & ~(uint64_t)4095;
    if (target > wal->segment_size)
        target = wal->segment_size;
    while (wal->seg_alloc < target) {
        uint64_t n = target - wal->seg_alloc;
        if (n > sizeof(zeros))
            n = sizeof(zeros);
        size_t done;
        if (fm_wal_write_all(wal->io, wal->seg_fd, zeros, (size_t)n,
                             wal->seg_alloc, &done, e_out) != 0)
            return -1;
        wal->seg_alloc += n;
    }
    return 0;
}

/*
 * everysec: true when the oldest acknowledged write that is not yet durable
 * is older than max_lag_us, so this group must be synced before its replies
 * go out. Logs the first of each run of such flushes.
 */
static bool everysec_lagging(struct fm_wal *wal)
{
    pthread_mutex_lock(&wal->mu);
    int64_t since = wal->dirty_since_us;
    pthread_mutex_unlock(&wal->mu);
    int64_t age = since == 0 ? 0 : fm_monotonic_us() - since;
    if (since == 0 || age <= wal->max_lag_us) {
        wal->lag_logged = false;
        return false;
    }
    if (!wal->lag_logged)
        fm_wal_log(wal->log_fn, wal->log_ctx, FM_LOG_WARNING,
                   "the background fdatasync of the wal in %s is %.1f s "
                   "behind: writes wait for an fdatasync of their own until "
                   "it catches up (is the disk slow?)",
                   wal->dir, (double)age / 1e6);
    wal->lag_logged = true;
    return true;
}

fm_status fm_wal_flush(struct fm_wal *wal, struct fm_error *err)
{
    if (atomic_load(&wal->readonly)) {
        drop_pending(wal);
        return readonly_error(wal, err);
    }
    if (wal->n_pending == 0)
        return FM_OK;
    uint64_t first = wal->pending_first;
    uint64_t last = wal->next_lsn - 1;
    fm_status st;
    if (wal->seg_off > wal->seg_header_len &&
        wal->seg_off + wal->pending.len > wal->segment_size) {
        st = rotate(wal, first, last, err);
        if (st != FM_OK) {
            drop_pending(wal);
            return st;
        }
    }
    size_t done;
    int e;
    if (fm_wal_write_all(wal->io, wal->seg_fd, wal->pending.data,
                         wal->pending.len, wal->seg_off, &done, &e) != 0)
        return fail_group(wal, "write", e, first, last, err);
    uint64_t end = wal->seg_off + wal->pending.len;
    if (end > wal->seg_alloc)
        wal->seg_alloc = end;
    if (wal->prealloc && wal->fsync == FM_WAL_FSYNC_ALWAYS &&
        preallocate(wal, end, &e) != 0)
        return fail_group(wal, "write of preallocated zeros", e, first, last,
                          err);
    bool lagging = wal->fsync == FM_WAL_FSYNC_EVERYSEC && everysec_lagging(wal);
    bool sync = wal->fsync == FM_WAL_FSYNC_ALWAYS || lagging;
    if (sync && wal->io->fdatasync(wal->io->ctx, wal->seg_fd) != 0)
        return fail_group(wal, "fdatasync", errno, first, last, err);
    wal->seg_off += wal->pending.len;
    struct wal_segment *seg = active_seg(wal);
    seg->size = wal->seg_off;
    seg->file_len = wal->seg_alloc;
    seg->n_records += wal->n_pending;
    pthread_mutex_lock(&wal->mu);
    wal->written_lsn = last;
    wal->bytes_written += wal->pending.len;
    wal->n_flushes++;
    if (sync) {
        synced_locked(wal, last, 0);
        wal->n_lag_syncs += lagging;
    } else if (wal->dirty_since_us == 0) {
        wal->dirty_since_us = fm_monotonic_us();
    }
    pthread_mutex_unlock(&wal->mu);
    drop_pending(wal);
    return FM_OK;
}

fm_status fm_wal_sync(struct fm_wal *wal, struct fm_error *err)
{
    fm_status st = fm_wal_flush(wal, err);
    if (st != FM_OK)
        return st;
    return sync_active(wal, "on request", err);
}

fm_status fm_wal_set_fsync(struct fm_wal *wal, enum fm_wal_fsync policy,
                           struct fm_error *err)
{
    if (atomic_load(&wal->readonly))
        return readonly_error(wal, err);
    if (policy == wal->fsync)
        return FM_OK;
    if (policy == FM_WAL_FSYNC_EVERYSEC) {
        fm_status st = start_thread(wal, err);
        if (st != FM_OK)
            return st;
        wal->fsync = policy;
        return FM_OK;
    }
    enum fm_wal_fsync old = wal->fsync;
    wal->fsync = policy;
    if (old != FM_WAL_FSYNC_EVERYSEC)
        return FM_OK;
    stop_thread(wal);
    return sync_active(wal, "on leaving everysec", err);
}

/* ---- Truncation and stats ----------------------------------------------- */

fm_status fm_wal_truncate_before(struct fm_wal *wal, uint64_t lsn,
                                 size_t *n_removed_out, struct fm_error *err)
{
    size_t k = 0;
    fm_status st = FM_OK;
    char path[PATH_CAP];
    while (k + 1 < wal->n_segs && wal->segs[k + 1].first_lsn - 1 <= lsn) {
        st = seg_path(wal, wal->segs[k].first_lsn, path, err);
        if (st != FM_OK)
            break;
        if (wal->io->unlink(wal->io->ctx, path) != 0 && errno != ENOENT) {
            st = fm_error_set(err, FM_ERR_IO, "cannot remove %s: %s", path,
                              strerror(errno));
            break;
        }
        k++;
    }
    if (k > 0) {
        memmove(wal->segs, wal->segs + k,
                (wal->n_segs - k) * sizeof(*wal->segs));
        wal->n_segs -= k;
        fm_status dst =
            fm_wal_fsync_dir(wal->io, wal->dir, st == FM_OK ? err : NULL);
        if (st == FM_OK)
            st = dst;
    }
    if (n_removed_out != NULL)
        *n_removed_out = k;
    return st;
}

void fm_wal_get_stats(struct fm_wal *wal, struct fm_wal_stats *out)
{
    memset(out, 0, sizeof(*out));
    out->fsync = wal->fsync;
    out->next_lsn = wal->next_lsn;
    out->n_segments = wal->n_segs;
    for (size_t i = 0; i < wal->n_segs; i++)
        out->total_bytes += wal->segs[i].size;
    out->active_bytes = wal->n_segs > 0 ? active_seg(wal)->size : 0;
    out->segment_size = wal->segment_size;
    pthread_mutex_lock(&wal->mu);
    out->written_lsn = wal->written_lsn;
    out->durable_lsn = wal->durable_lsn;
    out->bytes_written = wal->bytes_written;
    out->n_flushes = wal->n_flushes;
    out->n_fsyncs = wal->n_fsyncs;
    out->n_lag_syncs = wal->n_lag_syncs;
    out->last_fsync_us = wal->last_fsync_us;
    out->readonly = atomic_load(&wal->readonly);
    if (out->readonly) {
        out->lost_first_lsn = wal->lost_first;
        out->lost_last_lsn = wal->lost_last;
        memcpy(out->reason, wal->reason, sizeof(out->reason));
    }
    pthread_mutex_unlock(&wal->mu);
}

/* ---- Offline check and fix ---------------------------------------------- */

/* Fills r for the segment whose bytes are img; returns r->st. */
static fm_status check_segment(const char *name, uint64_t name_lsn,
                               const struct fm_buf *img, bool is_last,
                               const uint8_t *schema, size_t schema_len,
                               uint64_t start_lsn, uint64_t *expect,
                               struct fm_wal_segment_report *r)
{
    struct fm_error e = {0};
    struct fm_wal_segment_header hdr;
    r->first_lsn = name_lsn;
    r->last_lsn = name_lsn - 1;
    r->st = fm_wal_segment_header_decode(img->data, img->len, name, schema,
                                         schema_len, &hdr, &e);
    if (r->st != FM_OK) {
        r->first_bad_offset = 0;
        goto out;
    }
    if (hdr.first_lsn != name_lsn) {
        r->first_bad_offset = FM_SEG_OFF_FIRST_LSN;
        r->st = fm_error_set(&e, FM_ERR_CORRUPT,
                             "%s says it starts at lsn %" PRIu64, name,
                             hdr.first_lsn);
        goto out;
    }
    /* A forward gap wholly covered by a snapshot is legitimate, as in
     * check_continuity. */
    bool covered = hdr.first_lsn > *expect && hdr.first_lsn <= start_lsn;
    if (*expect != 0 && hdr.first_lsn != *expect && !covered)
        r->st = fm_error_set(&e, FM_ERR_CORRUPT,
                             "%s starts at lsn %" PRIu64
                             " but the previous segment ends at lsn %" PRIu64,
                             name, hdr.first_lsn, *expect - 1);
    struct fm_wal_cursor c = {.name = name,
                              .data = img->data,
                              .len = img->len,
                              .rec_hdr = hdr.rec_hdr_len,
                              .pos = hdr.header_len,
                              .expect_lsn = hdr.first_lsn,
                              .is_last = is_last,
                              .force = true,
                              .covered_lsn = start_lsn > 0 ? start_lsn - 1 : 0,
                              .first_bad = -1};
    for (;;) {
        struct fm_wal_record rec;
        bool end;
        /* With force set the cursor never fails. */
        fm_status cst = fm_wal_cursor_next(&c, &rec, &end, &e);
        FM_ASSERT(cst == FM_OK);
        if (end)
            break;
        r->last_lsn = rec.lsn;
    }
    r->n_records = c.n_records;
    r->n_skipped = c.n_skipped;
    r->first_bad_offset = c.first_bad;
    if (c.torn) {
        r->torn_bytes = img->len - c.valid_end;
        r->torn_records = c.n_torn_records;
    } else
        r->zero_bytes = img->len - c.valid_end;
    if (c.n_skipped > 0 && r->st == FM_OK)
        r->st = fm_error_set(&e, FM_ERR_CORRUPT,
                             "%s has %" PRIu64 " bad regions, the first at "
                             "offset %" PRId64,
                             name, c.n_skipped, c.first_bad);
    *expect = c.expect_lsn;
out:
    if (r->st != FM_OK)
        snprintf(r->msg, sizeof(r->msg), "%s", e.msg);
    return r->st;
}

fm_status fm_wal_check_dir(const char *dir, const uint8_t *schema,
                           size_t schema_len, uint64_t start_lsn,
                           fm_wal_report_fn fn, void *ctx, struct fm_error *err)
{
    struct lsn_list segs = {0};
    struct fm_buf img = {0};
    char path[PATH_CAP];
    fm_status worst = FM_OK;
    uint64_t expect = 0;
    fm_status st = list_lsns(dir, ".wal", &segs, err);
    for (size_t i = 0; st == FM_OK && i < segs.n; i++) {
        struct fm_wal_segment_report r = {0};
        fm_wal_segment_name(r.file, segs.lsns[i]);
        st = fm_wal_path_join(path, sizeof(path), dir, r.file, err);
        if (st != FM_OK)
            break;
        struct fm_error rerr = {0};
        r.first_bad_offset = -1;
        r.st = fm_wal_read_file(path, SIZE_MAX, &img, &rerr);
        if (r.st == FM_ERR_NOMEM) {
            st = fm_error_set(err, r.st, "%s", rerr.msg);
            break;
        }
        if (r.st != FM_OK)
            snprintf(r.msg, sizeof(r.msg), "%s", rerr.msg);
        else
            r.size_bytes = img.len;
        if (r.st == FM_OK)
            check_segment(r.file, segs.lsns[i], &img, i + 1 == segs.n, schema,
                          schema_len, start_lsn, &expect, &r);
        if (r.st != FM_OK && worst == FM_OK) {
            worst = fm_error_set(err, r.st, "%s", r.msg);
        }
        if (fn != NULL)
            fn(ctx, &r);
    }
    fm_buf_fini(&img);
    fm_free(segs.lsns);
    return st != FM_OK ? st : worst;
}

fm_status fm_wal_fix_dir(const char *dir, uint64_t *torn_bytes_out,
                         struct fm_error *err)
{
    struct fm_wal *wal;
    fm_status st = wal_alloc(dir, &wal, err);
    if (st != FM_OK)
        return st;
    /* Gaps between segments are the snapshot's business, not fix's. */
    wal->start_lsn = UINT64_MAX;
    st = lock_dir(wal, err);
    if (st == FM_OK)
        st = scan_dir(wal, err);
    if (st == FM_OK)
        *torn_bytes_out = wal->recovery.torn_bytes;
    wal_free(wal);
    return st;
}
