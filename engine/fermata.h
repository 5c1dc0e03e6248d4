/*
 * fermata.h: libfermata, the engine for in-process use.
 *
 * This is the only engine header that server/ includes. An engine holds one
 * database: a schema and its tables, all in memory. Commands are argument
 * vectors of byte strings, exactly as a RESP client sends them
 * ("INSERT users username ann ..."), and their results are written into a
 * struct fm_reply, RESP2 bytes that the server sends as they are and the
 * shell reads back as text. The command language is SPEC section 3 and
 * docs/commands.md.
 *
 * An engine is single-threaded: one caller at a time.
 */
#ifndef FM_FERMATA_H
#define FM_FERMATA_H

#include "engine/base.h"

struct fm_engine;

/* ---- Replies ------------------------------------------------------------- */

enum fm_reply_type {
    FM_REPLY_NIL = 1,    /* RESP nil bulk */
    FM_REPLY_INT = 2,    /* RESP integer */
    FM_REPLY_BULK = 3,   /* RESP bulk string */
    FM_REPLY_STATUS = 4, /* RESP simple string, e.g. "OK" */
    FM_REPLY_ERROR = 5,  /* RESP error: code word from the status, message */
    FM_REPLY_ARRAY = 6,  /* RESP array of the next n values */
};

/*
 * A reply: a sequence of values, RESP2-encoded in buf (engine/reply.c).
 * Zero-filled is a valid empty reply with no limit; fm_reply_reset empties
 * it and keeps its memory and its limit, so a connection reuses one reply
 * for every command; fm_reply_fini frees it and clears the limit.
 *
 * limit is a byte budget the caller may set (the server sets what is left
 * of the client's output buffer limit before each command): the append
 * that would take buf past limit bytes is taken back and fails the reply
 * with over_limit set, and the engine's scans stop there (a FIND never
 * builds or sorts a result it cannot send). The command's outcome does not
 * change: FIND is a read, and the writes of a MULTI/EXEC batch are applied
 * or not exactly as without a limit (engine/engine.c).
 */
struct fm_reply {
    struct fm_buf buf; /* the values, as RESP2 bytes */
    size_t limit;      /* most bytes buf may hold; 0 for no limit */
    bool failed;       /* an append failed: the reply is one error */
    bool over_limit;   /* the failure was limit (else out of memory) */
};

void fm_reply_reset(struct fm_reply *r);
void fm_reply_fini(struct fm_reply *r);

/*
 * Appenders. They never fail: when memory runs out or limit would be
 * passed, the reply is marked failed, later appends do nothing, and
 * readers see one error instead (OOM, or LIMIT for over_limit).
 * An array header is followed by exactly n values (arrays may nest).
 */
void fm_reply_nil(struct fm_reply *r);
void fm_reply_int(struct fm_reply *r, int64_t v);
void fm_reply_bulk(struct fm_reply *r, const void *p, size_t len);
void fm_reply_cstr(struct fm_reply *r, const char *s); /* bulk from C text */
/* A simple string; CR and LF in s are sent as spaces. */
void fm_reply_status(struct fm_reply *r, const char *s);
void fm_reply_array(struct fm_reply *r, size_t n);
/* An error: "-CODE msg" where CODE is fm_status_code(st); an empty msg
 * sends fm_status_message(st). CR and LF in msg are sent as spaces. */
void fm_reply_error(struct fm_reply *r, fm_status st, const char *msg);
/* Appends every value of src to r. */
void fm_reply_append_all(struct fm_reply *r, const struct fm_reply *src);

/* Position of the array header just written, which must be a placeholder
 * of count 0 (fm_reply_array(r, 0)), for fm_reply_patch_array. */
size_t fm_reply_mark(const struct fm_reply *r);
/* Rewrites the count of the array header at mark (when n was not known). */
void fm_reply_patch_array(struct fm_reply *r, size_t mark, size_t n);

/* Whether the reply's first value is an error (a failed reply is one). */
bool fm_reply_is_error(const struct fm_reply *r);
/*
 * The reply as the RESP2 bytes to send: buf, or for a failed reply a
 * static OOM (or, over its limit, LIMIT) error. Borrowed until the next
 * change to r.
 */
void fm_reply_bytes(const struct fm_reply *r, const uint8_t **p_out,
                    size_t *len_out);

/* One value read back from a reply. Pointers are borrowed from the reply. */
struct fm_reply_value {
    enum fm_reply_type type;
    int64_t i;          /* INT */
    size_t n;           /* ARRAY element count */
    const uint8_t *str; /* BULK, STATUS, ERROR message (not NUL-terminated) */
    size_t len;
    fm_status st; /* ERROR: the first status with the code word sent */
};

struct fm_reply_cursor {
    const uint8_t *p; /* the reply's bytes (fm_reply_bytes) */
    size_t len;
    size_t off; /* where the next value starts */
};

/* Starts reading r; valid until the next change to r. */
void fm_reply_cursor_init(struct fm_reply_cursor *c, const struct fm_reply *r);
/* Reads the next value in order (arrays are flattened: header, then items). */
bool fm_reply_next(struct fm_reply_cursor *c, struct fm_reply_value *out);

/* ---- Engine -------------------------------------------------------------- */

/* When the write-ahead log is forced to disk (SPEC section 4). */
enum fm_fsync_policy {
    FM_FSYNC_EVERYSEC = 0, /* the default: at most about 1 s may be lost */
    FM_FSYNC_ALWAYS = 1,   /* fdatasync before any reply of a flush */
    FM_FSYNC_NO = 2,       /* the OS decides */
};

/* "always", "everysec", "no"; parse returns false for anything else. */
const char *fm_fsync_policy_name(enum fm_fsync_policy p);
bool fm_fsync_policy_parse(const char *name, enum fm_fsync_policy *out);

/*
 * After a failed snapshot the automatic triggers wait this long from the
 * attempt before the next one, as Redis waits after a failed BGSAVE
 * (CONFIG_BGSAVE_RETRY_DELAY); SAVE and BGSAVE asked for run at once.
 */
#define FM_SNAPSHOT_RETRY_DELAY_S 5

/*
 * Called in a background snapshot's child right after fork(), before it
 * writes anything, so that the embedding program closes what the child
 * must not keep open (fm_engine_options.atfork_child).
 */
typedef void (*fm_atfork_fn)(void *ctx);

/* Snapshot triggers (SPEC section 4); zero values take the defaults. */
struct fm_snapshot_config {
    uint64_t interval_s; /* snapshot when this old and anything changed;
                            default 3600 */
    uint64_t wal_mb;     /* snapshot when the WAL since the last one passes
                            this; default 256 */
    uint64_t keep;       /* snapshots kept; default 2 */
};

struct fm_engine_options {
    const char *schema_text; /* DDL; NULL for the built-in default schema */
    size_t schema_len;
    fm_log_fn log; /* may be NULL */
    void *log_ctx;
    /*
     * Durability. With dir NULL the engine is memory only. Otherwise
     * fm_engine_new locks dir, recovers from its snapshots and WAL, and
     * every committed write is appended to the WAL; fm_engine_flush makes
     * the writes of a batch durable to the degree fsync promises.
     */
    const char *dir;
    enum fm_fsync_policy fsync;
    uint64_t wal_segment_bytes; /* 0: 64 MiB */
    bool force_recovery;        /* skip bad WAL records and say how many */
    struct fm_snapshot_config snapshot;
    const void *wal_io; /* tests only: a struct fm_wal_io (wal/wal.h) that
                           replaces the WAL's system calls; NULL for real */
    /*
     * May be NULL. A server closes its listening and client sockets here:
     * a child that kept them would keep a closed connection open until it
     * exits, and a listener alive after the server died. Only close() and
     * the like: the child runs on the parent's memory, copy-on-write.
     */
    fm_atfork_fn atfork_child;
    void *atfork_ctx;
};

/* The built-in default schema of SPEC section 1, NUL-terminated DDL. */
const char *fm_default_schema(void);

/*
 * Creates an engine with empty tables for the schema. FM_ERR_SYNTAX with line
 * and column in err for a bad schema; FM_ERR_NOMEM.
 */
fm_status fm_engine_new(const struct fm_engine_options *opts,
                        struct fm_engine **out, struct fm_error *err);

/*
 * Releases the engine and everything in it; NULL does nothing. With a data
 * directory, writes not yet flushed are discarded (call fm_engine_shutdown
 * for a clean stop).
 */
void fm_engine_free(struct fm_engine *e);

/* ---- Durability ---------------------------------------------------------- */

/*
 * Group commit: writes every WAL record appended since the last flush with
 * one write() and, under FM_FSYNC_ALWAYS, one fdatasync. Call it once per
 * batch (the server: once per event-loop turn, before sending any reply of
 * the turn). A no-op without a data directory or pending records.
 * FM_ERR_READONLY when the WAL cannot be written: every write since the last
 * successful flush has been rolled back in memory, their replies must not
 * be sent as successes, and every later write gets FM_ERR_READONLY (the
 * engine is read-only for good; err and fm_engine_readonly_reason say why).
 */
fm_status fm_engine_flush(struct fm_engine *e, struct fm_error *err);

/* True when writes were committed since the last flush. */
bool fm_engine_has_pending(const struct fm_engine *e);

/*
 * Why writes are refused, or NULL while the engine is writable. A WAL that
 * failed in the background (everysec fdatasync) counts at once, before a
 * write or fm_engine_cron notices it. Borrowed; lives as long as e.
 */
const char *fm_engine_readonly_reason(const struct fm_engine *e);

/*
 * Writes a snapshot now, in this process (SAVE). Flushes first.
 * FM_ERR_IO, FM_ERR_NOMEM, FM_ERR_STATE (no data directory, or a background
 * snapshot is running), FM_ERR_READONLY.
 */
fm_status fm_engine_save(struct fm_engine *e, struct fm_error *err);

/*
 * Starts a snapshot in a forked child (BGSAVE) and returns at once; the
 * parent keeps serving, and fm_engine_cron notices when the child ends.
 * The child runs opts.atfork_child first, and is killed (SIGKILL) when the
 * thread that called this exits: a snapshot child never outlives its
 * server, and keeps the directory locked while it runs. FM_ERR_STATE (no
 * data directory, or one is already running), FM_ERR_IO (fork failed).
 */
fm_status fm_engine_bgsave(struct fm_engine *e, struct fm_error *err);

/*
 * Periodic work, called about ten times a second: turns the engine
 * read-only when the WAL failed in the background (logging why and which
 * acknowledged LSNs may be lost), reaps a finished snapshot child (then
 * deletes covered WAL segments and old snapshots), and starts a background
 * snapshot when snapshot.interval_s or snapshot.wal_mb says so.
 */
void fm_engine_cron(struct fm_engine *e);

/*
 * Clean stop: stops a running background snapshot (its child is killed and
 * its temporary file removed), flushes and fsyncs the WAL, then snapshots
 * unless nosave. When the WAL is read-only the snapshot is written all the
 * same (unless nosave), at the last LSN handed out, so that a restart has
 * every acknowledged write (docs/durability.md); FM_OK when it was
 * written. Errors are reported (FM_ERR_READONLY with nosave and a
 * read-only WAL, the snapshot's FM_ERR_IO, ...) but the engine can still
 * be freed.
 */
fm_status fm_engine_shutdown(struct fm_engine *e, bool nosave,
                             struct fm_error *err);

/* Changes the fsync policy or the snapshot triggers at run time. */
fm_status fm_engine_set_fsync(struct fm_engine *e, enum fm_fsync_policy p,
                              struct fm_error *err);
void fm_engine_set_snapshot_config(struct fm_engine *e,
                                   const struct fm_snapshot_config *c);

/* Figures for INFO persistence. */
struct fm_persist_stats {
    bool enabled; /* a data directory is in use */
    enum fm_fsync_policy fsync;
    uint64_t next_lsn;    /* LSN the next write gets */
    uint64_t durable_lsn; /* last LSN known on disk */
    uint64_t wal_bytes;   /* bytes in WAL segments */
    uint64_t wal_segments;
    uint64_t wal_since_snapshot_bytes;
    uint64_t wal_fsyncs;    /* fdatasyncs of the WAL that succeeded */
    uint64_t wal_lag_syncs; /* everysec flushes that synced themselves */
    bool readonly;
    char readonly_reason[FM_ERROR_MSG_CAP];
    bool bgsave_in_progress;
    int64_t last_save_time_s; /* unix time of the last snapshot; 0 none */
    uint64_t last_save_lsn;
    int64_t last_save_duration_us;
    uint64_t last_save_bytes;     /* file size */
    uint64_t last_save_raw_bytes; /* before compression */
    int64_t last_fork_us;         /* time fork() took */
    size_t last_cow_bytes;        /* copy-on-write memory of the last child */
    bool last_save_ok;            /* the last snapshot attempt succeeded */
    uint64_t save_failures;       /* attempts failed in a row; 0 after one
                                     succeeds */
    char last_save_error[FM_ERROR_MSG_CAP]; /* why the last attempt failed;
                                               "" once one succeeds */
    uint64_t changes_since_save; /* committed writes since the last save */
    uint64_t recovered_rows;     /* loaded from the snapshot at start */
    uint64_t recovered_records;  /* WAL records replayed at start */
    uint64_t recovery_skipped;   /* damaged WAL regions skipped at start
                                    (force_recovery) */
    uint64_t recovery_lsns_lost; /* LSNs in them, as far as known */
    int64_t recovery_us;
};
void fm_engine_persist_stats(const struct fm_engine *e,
                             struct fm_persist_stats *out);

/*
 * Verifies every invariant the engine promises: row counts, each index
 * holding exactly the rows of its table, UNIQUE, NOT NULL, CHECK and every
 * foreign key. FM_ERR_CORRUPT with the first violation in err.
 */
fm_status fm_engine_check(struct fm_engine *e, struct fm_error *err);

/*
 * Executes one command (argv[0] is its name, case-insensitive) and appends
 * its reply to reply: the result, or one error value whose code and message
 * name the table, column and value at fault. Returns the status of the
 * command; a failed write changed nothing (SPEC section 2).
 */
fm_status fm_engine_exec(struct fm_engine *e, size_t argc,
                         const uint8_t *const *argv, const size_t *argv_len,
                         struct fm_reply *reply);

/*
 * True when the last fm_engine_exec or fm_engine_exec_multi changed data
 * (and so appended a WAL record that the next fm_engine_flush must make
 * durable); false for reads, failures and writes that matched nothing.
 */
bool fm_engine_last_exec_wrote(const struct fm_engine *e);

/* One command of a transaction. */
struct fm_command {
    size_t argc;
    const uint8_t *const *argv;
    const size_t *argv_len;
};

/*
 * Executes commands as one atomic transaction (MULTI/EXEC): on success
 * appends an array of their replies; if any fails, undoes all of them and
 * appends one EXECABORT error naming the position (1-based) and the error of
 * the first failing command, whose status is returned.
 */
fm_status fm_engine_exec_multi(struct fm_engine *e, size_t n_cmds,
                               const struct fm_command *cmds,
                               struct fm_reply *reply);

/* True when the engine knows this command name (case-insensitive). */
bool fm_engine_has_command(const uint8_t *name, size_t len);

/* True when the named command may change data (for -OOM and -READONLY). */
bool fm_engine_command_is_write(const uint8_t *name, size_t len);

/* Rows in all tables together (DBSIZE). */
uint64_t fm_engine_row_count(const struct fm_engine *e);

/* Per-table figures for INFO memory and keyspace. */
struct fm_table_stats {
    const char *name; /* borrowed from the engine */
    uint64_t n_rows;
    uint64_t next_id;   /* the id the next insert gets */
    size_t row_bytes;   /* row storage and the id map */
    size_t index_bytes; /* all indexes of the table */
    size_t n_indexes;
};

size_t fm_engine_table_count(const struct fm_engine *e);
/* Fills *out for table i (0 <= i < fm_engine_table_count). */
void fm_engine_table_stats(const struct fm_engine *e, size_t i,
                           struct fm_table_stats *out);

/* Total bytes held by the engine's tables and indexes. */
size_t fm_engine_memory_bytes(const struct fm_engine *e);

/* The schema text the engine was created with (borrowed). */
const char *fm_engine_schema_text(const struct fm_engine *e, size_t *len_out);

/* ---- Offline verification (fermata-check) -------------------------------- */

/* What one file of a data directory holds. */
struct fm_check_item {
    bool is_snapshot;      /* else a WAL segment */
    const char *file;      /* name inside the directory */
    uint64_t first_lsn;    /* segment: first record; snapshot: its LSN */
    uint64_t last_lsn;     /* segment: last valid record */
    uint64_t n_records;    /* segment: valid records; snapshot: chunks */
    uint64_t size_bytes;   /* the file */
    uint64_t raw_bytes;    /* snapshot: uncompressed */
    int64_t bad_offset;    /* first damaged byte, or -1 */
    uint64_t torn_bytes;   /* segment: a torn tail (cut by --fix) */
    uint64_t torn_records; /* segment: intact records in it (a torn group) */
    uint64_t zero_bytes;   /* segment: preallocated zeros after the records */
    fm_status st;          /* FM_OK or what is wrong */
    const char *msg;       /* "" when st is FM_OK */
    size_t n_tables;       /* snapshot: per-table row counts follow */
    const char *const *table_names;
    const uint64_t *table_rows;
};

typedef void (*fm_check_fn)(void *ctx, const struct fm_check_item *item);

/*
 * Verifies every snapshot and WAL segment of dir without loading it and
 * without changing anything (unless fix), reporting each file through fn:
 * snapshots newest first, then segments in LSN order. schema_text NULL
 * means the built-in default schema. With fix, a torn WAL tail is cut (this
 * takes the directory lock: FM_ERR_LOCKED while a server runs). Returns
 * FM_OK when everything is sound, else the first problem's status.
 */
fm_status fm_check_dir(const char *dir, const char *schema_text,
                       size_t schema_len, bool fix, fm_check_fn fn, void *ctx,
                       struct fm_error *err);

#endif /* FM_FERMATA_H */
