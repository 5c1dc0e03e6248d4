/*
 * wal.h: the write-ahead log of fermata.
 *
 * A log is a directory of segment files (<16 hex digits of first LSN>.wal)
 * plus a LOCK file. Each record is one committed transaction: an opaque
 * payload the engine encoded, framed, numbered with an LSN that grows by one
 * per record, and checksummed with XXH3. The file formats, the recovery
 * rules and what each fsync policy promises are described at the top of
 * wal/wal.c and wal/segment.c and in docs/durability.md (SPEC section 4).
 *
 * Life of a handle: fm_wal_open (locks the directory, scans and validates
 * every segment, cuts a torn tail), then fm_wal_iter_* to replay the records
 * after the snapshot, then fm_wal_append + fm_wal_flush for every event-loop
 * turn, then fm_wal_sync and fm_wal_close at shutdown.
 *
 * A handle is used by one thread. Under FM_WAL_FSYNC_EVERYSEC it owns a
 * background thread of its own that only calls fdatasync; that is invisible
 * to the caller except through fm_wal_get_stats and the sticky failure.
 */
#ifndef FM_WAL_H
#define FM_WAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "engine/base.h"

struct fm_wal;
struct fm_wal_iter;

/* Default size at which the active segment is closed and a new one begun. */
#define FM_WAL_SEGMENT_SIZE_DEFAULT ((uint64_t)64 << 20)
/* Under everysec, how far acknowledged writes may run ahead of the last
 * completed fdatasync before a flush syncs itself (Redis waits after 2 s). */
#define FM_WAL_EVERYSEC_MAX_LAG_MS 2000
/* Zeros kept written ahead of the last record under fsync always. */
#define FM_WAL_PREALLOC_STEP ((uint64_t)1 << 20)

/* Largest payload one record may carry (the length field is 32 bits). */
#define FM_WAL_PAYLOAD_MAX ((size_t)1 << 30)

/* Largest schema text a segment header may carry. */
#define FM_WAL_SCHEMA_MAX ((size_t)1 << 20)

/* When written records are forced to stable storage (SPEC section 4). */
enum fm_wal_fsync {
    FM_WAL_FSYNC_ALWAYS,   /* every fm_wal_flush ends with one fdatasync */
    FM_WAL_FSYNC_EVERYSEC, /* a background thread fdatasyncs about 1/s */
    FM_WAL_FSYNC_NO,       /* never fsync explicitly; the OS decides */
};

/* "always", "everysec" or "no". */
const char *fm_wal_fsync_name(enum fm_wal_fsync policy);

/*
 * Parses "always", "everysec" or "no" (exact, lowercase) into *policy_out.
 * FM_ERR_SYNTAX for anything else.
 */
fm_status fm_wal_fsync_parse(const char *name, enum fm_wal_fsync *policy_out);

/*
 * The system calls the log and the snapshot writer make on files they
 * write. Each behaves like the call it is named for: it returns -1 and sets
 * errno on failure. Tests install their own table to inject ENOSPC, EIO and
 * short writes; everything else uses fm_wal_io_default(). Reads and
 * directory listings always use the C library directly. Under
 * FM_WAL_FSYNC_EVERYSEC fdatasync is also called from the background
 * thread, so a replacement must be thread-safe.
 */
struct fm_wal_io {
    void *ctx; /* passed to every call */
    int (*open)(void *ctx, const char *path, int flags, int mode);
    ssize_t (*pwrite)(void *ctx, int fd, const void *buf, size_t len,
                      off_t off);
    int (*fdatasync)(void *ctx, int fd);
    int (*fsync)(void *ctx, int fd);
    int (*ftruncate)(void *ctx, int fd, off_t len);
    int (*rename)(void *ctx, const char *from, const char *to);
    int (*unlink)(void *ctx, const char *path);
    int (*close)(void *ctx, int fd);
};

/* The real system calls. The table is static and never changes. */
const struct fm_wal_io *fm_wal_io_default(void);

/* How to open a log. Zero-filled plus dir and schema is a valid start. */
struct fm_wal_options {
    const char *dir;         /* the directory; created if missing */
    const uint8_t *schema;   /* schema text stored in every segment header */
    size_t schema_len;       /* at most FM_WAL_SCHEMA_MAX */
    enum fm_wal_fsync fsync; /* 0 is FM_WAL_FSYNC_ALWAYS */
    uint64_t segment_size;   /* bytes; 0 means FM_WAL_SEGMENT_SIZE_DEFAULT */
    /*
     * The LSN of the snapshot the engine loaded plus one (1 when there is
     * none; 0 is read as 1). Records below it are covered by that snapshot,
     * so the log may have a gap between segments below it, and if the log
     * ends before it, appends start at it in a fresh segment.
     */
    uint64_t start_lsn;
    bool force_recovery; /* skip and count bad records (SPEC 4) */
    bool no_prealloc;    /* no zero-filled tail under always (wal.c) */
    /* everysec: 0 means FM_WAL_EVERYSEC_MAX_LAG_MS (see wal.c) */
    uint32_t everysec_max_lag_ms;
    fm_log_fn log_fn; /* optional: recovery notes, failures */
    void *log_ctx;
    const struct fm_wal_io *io; /* NULL means fm_wal_io_default() */
};

/* What fm_wal_open found on disk. */
struct fm_wal_recovery {
    size_t n_segments;       /* segment files found */
    uint64_t n_records;      /* valid records found */
    uint64_t first_lsn;      /* first valid record; 0 if none */
    uint64_t last_lsn;       /* last valid record; 0 if none */
    uint64_t torn_bytes;     /* bytes cut from the end of the last segment */
    uint64_t torn_records;   /* intact records cut with them (a torn group) */
    uint64_t n_skipped;      /* bad regions skipped (force_recovery only) */
    uint64_t n_lsns_missing; /* LSNs absent because of skipped regions */
    size_t n_temp_removed;   /* stale *.wal.tmp files removed */
};

/*
 * Creates dir if it does not exist, and then fsyncs its parent so that the
 * new directory survives a power cut. FM_OK when it exists already;
 * FM_ERR_IO, FM_ERR_LIMIT.
 */
fm_status fm_wal_make_dir(const char *dir, struct fm_error *err);

/*
 * Opens the log in opts->dir, takes the directory lock, scans every segment
 * in LSN order and validates headers, records and LSN continuity. A torn
 * record at the very end of the last segment, or a torn group (damage
 * followed only by records written after the last fdatasync, segment.c),
 * is cut off (ftruncate) and reported through opts->log_fn; any other
 * damage stops the open unless
 * opts->force_recovery, which skips and counts bad regions. Appends continue
 * at the end of the last segment, or at opts->start_lsn in a new segment.
 * The options are copied; opts->io must outlive the handle.
 *
 * FM_ERR_LOCKED: another handle or process holds the directory. When the
 *   process the LOCK file names has exited, the holder is a process it
 *   left behind (a snapshot child): the open waits up to 10 s for it first.
 * FM_ERR_SCHEMA: a segment was written under another schema (names file).
 * FM_ERR_CORRUPT: a bad record followed by good ones, a bad header, an LSN
 *   gap, or a segment name that disagrees with its header (names file and
 *   offset).
 * FM_ERR_IO: a file or the directory could not be read, created or fixed.
 * FM_ERR_LIMIT: schema_len over FM_WAL_SCHEMA_MAX.
 * FM_ERR_NOMEM.
 * On success *wal_out owns the handle; release it with fm_wal_close.
 */
fm_status fm_wal_open(const struct fm_wal_options *opts,
                      struct fm_wal **wal_out, struct fm_error *err);

/*
 * Stops the background thread, closes the files and releases the lock and
 * the handle. Records appended but not flushed are discarded: call
 * fm_wal_sync first for a clean shutdown. NULL does nothing.
 */
void fm_wal_close(struct fm_wal *wal);

/* Copies what fm_wal_open found into *out. */
void fm_wal_get_recovery(const struct fm_wal *wal, struct fm_wal_recovery *out);

/* ---- Replay ------------------------------------------------------------- */

/* One record; payload is borrowed from the iterator (see fm_wal_iter_next). */
struct fm_wal_record {
    uint64_t lsn;
    const uint8_t *payload;
    size_t len;
};

/*
 * Starts a pass over every valid record with an LSN above after_lsn, in LSN
 * order, over the segments found by fm_wal_open. Use it before the first
 * append. *it_out is owned by the caller; release it with fm_wal_iter_close.
 * FM_ERR_CORRUPT: the log starts after after_lsn + 1, so records the caller
 * needs are gone (unless force_recovery). FM_ERR_NOMEM.
 */
fm_status fm_wal_iter_open(struct fm_wal *wal, uint64_t after_lsn,
                           struct fm_wal_iter **it_out, struct fm_error *err);

/*
 * Yields the next record into *rec_out and sets *end_out to false, or sets
 * *end_out to true when the log is exhausted. rec_out->payload stays valid
 * until the next call or fm_wal_iter_close. With force_recovery, bad regions
 * are skipped exactly as fm_wal_open counted them.
 * FM_ERR_CORRUPT (names file and offset), FM_ERR_IO: the files changed
 * since fm_wal_open or cannot be read. FM_ERR_NOMEM.
 */
fm_status fm_wal_iter_next(struct fm_wal_iter *it,
                           struct fm_wal_record *rec_out, bool *end_out,
                           struct fm_error *err);

/* Releases the iterator. NULL does nothing. */
void fm_wal_iter_close(struct fm_wal_iter *it);

/* ---- Writing ------------------------------------------------------------ */

/*
 * Frames payload[0..len) as the next record and buffers it in memory; the
 * payload is copied. *lsn_out gets its LSN. Nothing reaches the file before
 * fm_wal_flush. FM_ERR_READONLY (sticky, err says why), FM_ERR_LIMIT (len
 * over FM_WAL_PAYLOAD_MAX), FM_ERR_NOMEM (nothing buffered, no LSN used).
 */
fm_status fm_wal_append(struct fm_wal *wal, const uint8_t *payload, size_t len,
                        uint64_t *lsn_out, struct fm_error *err);

/* True when records were appended and not yet flushed. */
bool fm_wal_has_pending(const struct fm_wal *wal);

/*
 * Group commit: writes every buffered record with one write() (rotating to
 * a new segment first if the active one is full) and, under
 * FM_WAL_FSYNC_ALWAYS, one fdatasync. Nothing buffered is a no-op.
 * FM_ERR_READONLY: this flush or an earlier write or fsync failed. The
 * group of this flush is then not durable: the caller rolls it back and
 * fails its clients. The handle stays read-only for good (nothing retries
 * an fsync); err and fm_wal_readonly_reason say why and which LSNs may be
 * lost. The buffered records are dropped either way.
 */
fm_status fm_wal_flush(struct fm_wal *wal, struct fm_error *err);

/*
 * fm_wal_flush, then one fdatasync whatever the policy: for SHUTDOWN and
 * before a snapshot is declared complete. FM_ERR_READONLY as for flush.
 */
fm_status fm_wal_sync(struct fm_wal *wal, struct fm_error *err);

/*
 * Changes the fsync policy (CONFIG SET fsync), starting or stopping the
 * background thread. Switching away from everysec first fdatasyncs what was
 * written. FM_ERR_IO: the thread could not be started (policy unchanged).
 * FM_ERR_READONLY.
 */
fm_status fm_wal_set_fsync(struct fm_wal *wal, enum fm_wal_fsync policy,
                           struct fm_error *err);

/* True once a write or fsync failed; appends and flushes are refused. */
bool fm_wal_is_readonly(const struct fm_wal *wal);

/*
 * Why the log is read-only: the failed call, errno text, file and the LSN
 * range that may be lost. "" while writable. Borrowed; once set it never
 * changes and lives as long as the handle.
 */
const char *fm_wal_readonly_reason(const struct fm_wal *wal);

/*
 * Deletes every segment whose records all have LSN <= lsn (covered by a
 * snapshot at lsn), except the active segment, then fsyncs the directory.
 * To keep fallback to an older snapshot possible, pass the LSN of the
 * oldest snapshot kept. *n_removed_out (may be NULL) gets the count.
 * FM_ERR_IO: an unlink failed (the segments before it are gone).
 */
fm_status fm_wal_truncate_before(struct fm_wal *wal, uint64_t lsn,
                                 size_t *n_removed_out, struct fm_error *err);

/* Figures for INFO persistence. */
struct fm_wal_stats {
    enum fm_wal_fsync fsync;
    uint64_t next_lsn;       /* LSN the next append gets */
    uint64_t written_lsn;    /* last LSN handed to write(); 0 if none */
    uint64_t durable_lsn;    /* last LSN known fdatasynced; 0 if none */
    uint64_t bytes_written;  /* record bytes written since open */
    uint64_t n_flushes;      /* flushes that wrote something */
    uint64_t n_fsyncs;       /* fdatasync calls that succeeded */
    uint64_t n_lag_syncs;    /* everysec: flushes that synced themselves */
    size_t n_segments;       /* segment files, the active one included */
    uint64_t total_bytes;    /* bytes in all segment files */
    uint64_t active_bytes;   /* bytes in the active segment */
    uint64_t segment_size;   /* rotation threshold in bytes */
    int64_t last_fsync_us;   /* wall clock of the last fdatasync; 0 never */
    bool readonly;           /* see fm_wal_readonly_reason */
    uint64_t lost_first_lsn; /* LSNs that may be lost; 0 and 0 if none */
    uint64_t lost_last_lsn;
    char reason[FM_ERROR_MSG_CAP]; /* copy of fm_wal_readonly_reason */
};

/* Fills *out. Takes the handle's mutex briefly. */
void fm_wal_get_stats(struct fm_wal *wal, struct fm_wal_stats *out);

/* ---- Offline verification (fermata-check) -------------------------------- */

/* What one segment holds, as fm_wal_check_dir found it. */
struct fm_wal_segment_report {
    char file[32];              /* file name inside the directory */
    uint64_t first_lsn;         /* from the header */
    uint64_t last_lsn;          /* last valid record; first_lsn - 1 if none */
    uint64_t n_records;         /* valid records */
    uint64_t size_bytes;        /* file size */
    int64_t first_bad_offset;   /* first damaged byte; -1 if none */
    uint64_t torn_bytes;        /* a torn tail that fm_wal_fix_dir would cut */
    uint64_t torn_records;      /* intact records in it (a torn group) */
    uint64_t zero_bytes;        /* preallocated zeros after the records */
    uint64_t n_skipped;         /* bad regions after which records were found */
    fm_status st;               /* FM_OK, FM_ERR_CORRUPT, FM_ERR_SCHEMA, ... */
    char msg[FM_ERROR_MSG_CAP]; /* what is wrong; "" when st is FM_OK */
};

/* Called once per segment, in LSN order. r is borrowed for the call. */
typedef void (*fm_wal_report_fn)(void *ctx,
                                 const struct fm_wal_segment_report *r);

/*
 * Reads every segment in dir without locking or changing anything and
 * reports each through fn. With schema NULL any schema is accepted. A torn
 * tail is reported but is not an error. A gap between segments is accepted
 * when it lies wholly below start_lsn (covered by a snapshot, as
 * fm_wal_options.start_lsn; 0 for none). Returns FM_OK when every segment is
 * sound, else the first problem: FM_ERR_CORRUPT, FM_ERR_SCHEMA, FM_ERR_IO
 * (directory or file unreadable), FM_ERR_NOMEM.
 */
fm_status fm_wal_check_dir(const char *dir, const uint8_t *schema,
                           size_t schema_len, uint64_t start_lsn,
                           fm_wal_report_fn fn, void *ctx,
                           struct fm_error *err);

/*
 * Takes the directory lock and cuts a torn tail off the last segment, as
 * fm_wal_open would, without checking the schema. *torn_bytes_out gets the
 * number of bytes cut (0 if none). FM_ERR_LOCKED (a server is running),
 * FM_ERR_CORRUPT (damage that is not a torn tail is left alone), FM_ERR_IO,
 * FM_ERR_NOMEM.
 */
fm_status fm_wal_fix_dir(const char *dir, uint64_t *torn_bytes_out,
                         struct fm_error *err);

#endif /* FM_WAL_H */
