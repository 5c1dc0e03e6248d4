/*
 * fermata.h: libfermata, the engine for in-process use.
 *
 * This is the only engine header that server/ includes. An engine holds one
 * database: a schema and its tables, all in memory. Commands are argument
 * vectors of byte strings, exactly as a RESP client sends them
 * ("INSERT users username ann ..."), and their results are written into a
 * struct fm_reply, a flat buffer of typed values that the server turns into
 * RESP and the shell into text. The command language is SPEC section 3 and
 * docs/commands.md.
 *
 * An engine is single-threaded: one caller at a time.
 */
#ifndef FM_FERMATA_H
#define FM_FERMATA_H

#include "engine/base.h"

struct fm_engine;

/* ---- Replies ------------------------------------------------------------ */

enum fm_reply_type {
    FM_REPLY_NIL = 1,    /* RESP nil bulk */
    FM_REPLY_INT = 2,    /* RESP integer */
    FM_REPLY_BULK = 3,   /* RESP bulk string */
    FM_REPLY_STATUS = 4, /* RESP simple string, e.g. "OK" */
    FM_REPLY_ERROR = 5,  /* RESP error: code word from the status, message */
    FM_REPLY_ARRAY = 6,  /* RESP array of the next n values */
};

/*
 * A reply: a sequence of values, each an 8-byte-aligned record in buf.
 * Zero-filled is a valid empty reply; fm_reply_reset empties it and keeps its
 * memory, so a connection reuses one reply for every command.
 */
struct fm_reply {
    struct fm_buf buf;
    size_t n_values; /* top-level values appended */
    bool failed;     /* an append ran out of memory: the reply is an error */
};

void fm_reply_reset(struct fm_reply *r);
void fm_reply_fini(struct fm_reply *r);

/*
 * Appenders. They never fail: when memory runs out the reply is marked
 * failed, later appends do nothing, and readers see one OOM error instead.
 * An array header is followed by exactly n values (arrays may nest).
 */
void fm_reply_nil(struct fm_reply *r);
void fm_reply_int(struct fm_reply *r, int64_t v);
void fm_reply_bulk(struct fm_reply *r, const void *p, size_t len);
void fm_reply_cstr(struct fm_reply *r, const char *s); /* bulk from C text */
void fm_reply_status(struct fm_reply *r, const char *s);
void fm_reply_array(struct fm_reply *r, size_t n);
/* An error: "-CODE msg" where CODE is fm_status_code(st). */
void fm_reply_error(struct fm_reply *r, fm_status st, const char *msg);
/* Appends every value of src to r. */
void fm_reply_append_all(struct fm_reply *r, const struct fm_reply *src);

/* Position of the array header written last, for fm_reply_patch_array. */
size_t fm_reply_mark(const struct fm_reply *r);
/* Rewrites the count of the array header at mark (when n was not known). */
void fm_reply_patch_array(struct fm_reply *r, size_t mark, size_t n);

/* One value read back from a reply. Pointers are borrowed from the reply. */
struct fm_reply_value {
    enum fm_reply_type type;
    int64_t i;          /* INT */
    size_t n;           /* ARRAY element count */
    const uint8_t *str; /* BULK, STATUS, ERROR message (not NUL-terminated) */
    size_t len;
    fm_status st; /* ERROR */
};

struct fm_reply_cursor {
    const struct fm_reply *r;
    size_t off;
    bool oom_done; /* for a failed reply: the OOM error was yielded */
};

void fm_reply_cursor_init(struct fm_reply_cursor *c, const struct fm_reply *r);
/* Reads the next value in order (arrays are flattened: header, then items). */
bool fm_reply_next(struct fm_reply_cursor *c, struct fm_reply_value *out);

/* ---- Engine ------------------------------------------------------------- */

struct fm_engine_options {
    const char *schema_text; /* DDL; NULL for the built-in default schema */
    size_t schema_len;
    fm_log_fn log; /* may be NULL */
    void *log_ctx;
};

/* The built-in default schema of SPEC section 1, NUL-terminated DDL. */
const char *fm_default_schema(void);

/*
 * Creates an engine with empty tables for the schema. FM_ERR_SYNTAX with line
 * and column in err for a bad schema; FM_ERR_NOMEM.
 */
fm_status fm_engine_new(const struct fm_engine_options *opts,
                        struct fm_engine **out, struct fm_error *err);

/* Releases the engine and everything in it; NULL does nothing. */
void fm_engine_free(struct fm_engine *e);

/*
 * Executes one command (argv[0] is its name, case-insensitive) and appends
 * its reply to reply: the result, or one error value whose code and message
 * name the table, column and value at fault. Returns the status of the
 * command; a failed write changed nothing (SPEC section 2).
 */
fm_status fm_engine_exec(struct fm_engine *e, size_t argc,
                         const uint8_t *const *argv, const size_t *argv_len,
                         struct fm_reply *reply);

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

#endif /* FM_FERMATA_H */
