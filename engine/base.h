/*
 * base.h: what every layer of fermata stands on.
 *
 * The status type, the caller-owned error record, assertions that stay on in
 * release builds, little- and big-endian byte helpers, a growable byte buffer
 * and the allocation hook. This is the one engine header that index/ and
 * wal/ may include, so it includes nothing but the C library.
 */
#ifndef FM_BASE_H
#define FM_BASE_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/*
 * The status list: (name, protocol code, default message). FM_OK is 0.
 * fm_status_code() gives the upper-case word the server sends before the
 * message ("UNIQUE" in "-UNIQUE ..."), fm_status_message() the default text;
 * both are generated from this one list so that they cannot drift apart.
 */
#define FM_STATUS_MAP(X)                                                       \
    X(OK, "OK", "success")                                                     \
    X(ERR_SYNTAX, "ERR", "syntax error")                                       \
    X(ERR_NOTFOUND, "ERR", "not found")                                        \
    X(ERR_TYPE, "TYPE", "wrong type")                                          \
    X(ERR_NOTNULL, "NOTNULL", "null value in a not null column")               \
    X(ERR_UNIQUE, "UNIQUE", "duplicate key")                                   \
    X(ERR_FOREIGNKEY, "FOREIGNKEY", "foreign key violation")                   \
    X(ERR_CHECK, "CHECK", "check constraint violation")                        \
    X(ERR_EXECABORT, "EXECABORT", "transaction discarded")                     \
    X(ERR_NOAUTH, "NOAUTH", "authentication required")                         \
    X(ERR_WRONGPASS, "WRONGPASS", "invalid password")                          \
    X(ERR_OOM, "OOM", "command not allowed when used memory > maxmemory")      \
    X(ERR_LIMIT, "LIMIT", "request over a size limit")                         \
    X(ERR_READONLY, "READONLY", "the write-ahead log cannot be written")       \
    X(ERR_NOPROTO, "NOPROTO", "unsupported protocol version")                  \
    X(ERR_NOMEM, "OOM", "out of memory")                                       \
    X(ERR_IO, "ERR", "i/o error")                                              \
    X(ERR_CORRUPT, "ERR", "corrupt data")                                      \
    X(ERR_SCHEMA, "ERR", "schema mismatch")                                    \
    X(ERR_LOCKED, "ERR", "resource locked")                                    \
    X(ERR_STATE, "ERR", "invalid state")

typedef enum {
#define FM_STATUS_ENUM(name, code, msg) FM_##name,
    FM_STATUS_MAP(FM_STATUS_ENUM)
#undef FM_STATUS_ENUM
        FM_STATUS_COUNT_
} fm_status;

/* The protocol word of a status, e.g. "UNIQUE"; "ERR" for unknown values. */
const char *fm_status_code(fm_status st);

/* The default message of a status; never NULL. */
const char *fm_status_message(fm_status st);

/* The enum name without the FM_ prefix, e.g. "ERR_UNIQUE"; for tests. */
const char *fm_status_name(fm_status st);

/*
 * Detail of a failure, recorded at the failure site in storage the caller
 * owns. msg holds the text after the protocol code: it names the table,
 * column, value, file or offset at fault. Zero-filled means "no error".
 */
#define FM_ERROR_MSG_CAP 512
struct fm_error {
    fm_status st;               /* FM_OK when nothing failed */
    char msg[FM_ERROR_MSG_CAP]; /* NUL-terminated, lowercase, no period */
};

/*
 * Records st and a printf-style message in err (which may be NULL) and
 * returns st, so that a failure site can read "return fm_error_set(...)".
 * Long messages are cut at FM_ERROR_MSG_CAP - 1 bytes.
 */
fm_status fm_error_set(struct fm_error *err, fm_status st, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

/* Resets err to "no error". err may be NULL. */
void fm_error_clear(struct fm_error *err);

/*
 * Writes a printable form of the bytes p[0..len) into out (cap bytes,
 * always NUL-terminated), with non-printable bytes as \xHH and the text cut
 * with "..." past about 60 characters. For error messages that quote values.
 */
void fm_format_value(char *out, size_t cap, const uint8_t *p, size_t len);

/* Writes v in decimal to out (room for 21 bytes, no NUL); returns the
 * length. For hot paths where snprintf's parsing of a format would show. */
size_t fm_format_i64(char *out, int64_t v);

/* "00", "01", ... "99": decimal printing two digits a step halves the
 * divisions (fm_format_i64, datetimes). */
extern const char fm_digit_pairs[201];

/*
 * Assertions: invariants that only a bug can break. They stay on in release
 * builds; never assert on input, disk bytes or allocation results.
 */
#if defined(__GNUC__)
__attribute__((noreturn))
#endif
void fm_assert_fail(const char *expr, const char *file, int line);

#define FM_ASSERT(cond)                                                        \
    ((cond) ? (void)0 : fm_assert_fail(#cond, __FILE__, __LINE__))

#define FM_CONTAINER_OF(ptr, type, member)                                     \
    ((type *)(void *)((char *)(ptr)-offsetof(type, member)))

#define FM_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/*
 * Allocation. Every allocation in fermata goes through these, so that tests
 * can make the n-th allocation fail and check that each error path returns
 * FM_ERR_NOMEM cleanly. fm_realloc keeps the old block when it fails.
 */
void *fm_malloc(size_t size);
void *fm_calloc(size_t n, size_t size);
void *fm_realloc(void *p, size_t size);
void fm_free(void *p);

/*
 * Anonymous memory whose pages the kernel fills in at once (MAP_POPULATE),
 * for big blocks about to be written: on the virtual machines measured a
 * first touch costs 12-17 us per 4 KiB page, and populating in one call
 * skips the fault per page. With touch, every page is also written once
 * before the call returns (see base.c), so the whole cost lands in the
 * calling thread, which suits a helper thread; without, the remaining cost
 * is spread over the first writes, which suits a latency-bound caller.
 * NULL on failure (the failure hook applies). Release with fm_unmap and
 * the same size.
 */
void *fm_map_populated(size_t size, bool touch);
void fm_unmap(void *p, size_t size);

/*
 * The allocation-failure hook: when set, it is asked before every
 * allocation and a true answer makes that allocation fail. It is the one
 * mutable global in fermata; tests set it, the server never does.
 */
typedef bool (*fm_alloc_fail_fn)(void *ctx, size_t size);
void fm_set_alloc_fail_hook(fm_alloc_fail_fn fn, void *ctx);

/* True when a * b would overflow size_t; otherwise *out = a * b. */
static inline bool fm_mul_overflows(size_t a, size_t b, size_t *out)
{
    return __builtin_mul_overflow(a, b, out);
}

/* True when a + b would overflow size_t; otherwise *out = a + b. */
static inline bool fm_add_overflows(size_t a, size_t b, size_t *out)
{
    return __builtin_add_overflow(a, b, out);
}

/* Byte order. On-disk and on-wire integers are little-endian. */
static inline uint32_t fm_load_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
           (uint32_t)p[3] << 24;
}

static inline uint64_t fm_load_le64(const uint8_t *p)
{
    return (uint64_t)fm_load_le32(p) | (uint64_t)fm_load_le32(p + 4) << 32;
}

static inline void fm_store_le32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

static inline void fm_store_le64(uint8_t *p, uint64_t v)
{
    fm_store_le32(p, (uint32_t)v);
    fm_store_le32(p + 4, (uint32_t)(v >> 32));
}

/* Big-endian, for byte-comparable index keys. */
static inline uint64_t fm_load_be64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return v;
}

static inline void fm_store_be64(uint8_t *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--) {
        p[i] = (uint8_t)v;
        v >>= 8;
    }
}

/*
 * A growable byte buffer. Zero-filled is a valid empty buffer; fm_buf_fini
 * releases it. data is NULL until the first reserve.
 */
struct fm_buf {
    uint8_t *data; /* cap bytes, of which len are in use */
    size_t len;
    size_t cap;
};

/* Makes room for at least extra more bytes. FM_ERR_NOMEM, FM_ERR_LIMIT on
 * size overflow; the buffer is unchanged on failure. */
fm_status fm_buf_reserve(struct fm_buf *b, size_t extra);

/* Appends p[0..len). FM_ERR_NOMEM. */
fm_status fm_buf_append(struct fm_buf *b, const void *p, size_t len);

/* Appends one byte. FM_ERR_NOMEM. */
fm_status fm_buf_push(struct fm_buf *b, uint8_t byte);

/* Appends printf-style text (no NUL). FM_ERR_NOMEM. */
fm_status fm_buf_printf(struct fm_buf *b, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* Releases the memory and zero-fills b. */
void fm_buf_fini(struct fm_buf *b);

/* Current wall-clock time in microseconds since the Unix epoch, UTC. */
int64_t fm_now_us(void);

/* Monotonic time in microseconds, for durations. */
int64_t fm_monotonic_us(void);

/*
 * The optional log callback that library code reports through; the caller
 * installs it. level is one of the FM_LOG_ values.
 */
enum fm_log_level {
    FM_LOG_DEBUG,
    FM_LOG_VERBOSE,
    FM_LOG_NOTICE,
    FM_LOG_WARNING,
};
typedef void (*fm_log_fn)(void *ctx, enum fm_log_level level, const char *msg);

#endif /* FM_BASE_H */
