/*
 * wal_int.h: declarations shared by the .c files of wal/ and by nothing
 * else. The on-disk layouts themselves are explained in the essays of
 * segment.c (log segments) and snapshot.c (snapshots); this header fixes
 * their offsets so that the code and the essays cannot drift apart.
 */
#ifndef FM_WAL_INT_H
#define FM_WAL_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "engine/base.h"
#include "wal/wal.h"

/* ---- Segment header (see segment.c) ------------------------------------- */

#define FM_SEG_MAGIC     "FMWALSEG"
#define FM_SEG_MAGIC_LEN 8

enum {
    FM_SEG_VERSION = 2,         /* written; version 1 segments are still read */
    FM_SEG_VERSION_V1 = 1,      /* records without the unsynced distance */
    FM_SEG_OFF_MAGIC = 0,       /* 8 bytes "FMWALSEG" */
    FM_SEG_OFF_VERSION = 8,     /* le32 format version */
    FM_SEG_OFF_SCHEMA_LEN = 12, /* le32 schema text length n */
    FM_SEG_OFF_FIRST_LSN = 16,  /* le64 LSN of the first record */
    FM_SEG_OFF_CREATED = 24,    /* le64 creation time, us since epoch */
    FM_SEG_FIXED = 32,          /* schema text follows, then le64 XXH3 */
    FM_SEG_SUM_LEN = 8,
};

_Static_assert(FM_SEG_OFF_VERSION == FM_SEG_OFF_MAGIC + FM_SEG_MAGIC_LEN,
               "segment version follows the magic");
_Static_assert(FM_SEG_OFF_FIRST_LSN == FM_SEG_OFF_SCHEMA_LEN + 4,
               "segment first LSN follows the schema length");
_Static_assert(FM_SEG_FIXED == FM_SEG_OFF_CREATED + 8,
               "segment fixed header is 32 bytes");

/* ---- Record header (see segment.c) -------------------------------------- */

/*
 * Version 2 records (written now) add the unsynced distance, which tells
 * recovery whether damage can be a crash artifact; version 1 records (read
 * only, from segments of version 1) lack it. The checksum is always the
 * last 8 bytes of the header.
 */
enum {
    FM_REC_MAGIC_V1 = 0x31524d46, /* "FMR1" as le32 */
    FM_REC_MAGIC = 0x32524d46,    /* "FMR2" as le32 */
    FM_REC_OFF_MAGIC = 0,         /* le32 magic of the segment's version */
    FM_REC_OFF_LEN = 4,           /* le32 payload length n */
    FM_REC_OFF_LSN = 8,           /* le64 LSN */
    FM_REC_OFF_UNSYNCED = 16,     /* v2: le32 LSN minus the synced LSN */
    FM_REC_OFF_SUM = 20,          /* le64 checksum, see fm_wal_record_sum */
    FM_REC_HDR = 28,              /* payload follows */
    FM_REC_OFF_SUM_V1 = 16,
    FM_REC_HDR_V1 = 24,
};

_Static_assert(FM_REC_OFF_LSN == FM_REC_OFF_LEN + 4, "record LSN offset");
_Static_assert(FM_REC_OFF_UNSYNCED == FM_REC_OFF_LSN + 8, "unsynced offset");
_Static_assert(FM_REC_OFF_SUM == FM_REC_OFF_UNSYNCED + 4, "record sum offset");
_Static_assert(FM_REC_HDR == FM_REC_OFF_SUM + 8, "record header is 28 bytes");
_Static_assert(FM_REC_HDR_V1 == FM_REC_OFF_SUM_V1 + 8, "v1 header, 24 bytes");

/* An unsynced distance this large (or larger) says nothing. */
#define FM_REC_UNSYNCED_UNKNOWN UINT32_MAX

/* Segment file names: 16 lowercase hex digits, ".wal", NUL. */
#define FM_SEG_NAME_CAP 32

/* ---- File helpers (io.c) ------------------------------------------------ */

/* Joins dir and name into out; FM_ERR_LIMIT when it does not fit. */
fm_status fm_wal_path_join(char *out, size_t cap, const char *dir,
                           const char *name, struct fm_error *err);

/*
 * Writes p[0..len) at offset off with as many pwrite calls as it takes,
 * retrying EINTR and continuing after short writes. On failure returns -1
 * with the errno of the failing call in *errno_out (a write that returns 0
 * counts as EIO) and the bytes written before it in *done_out.
 */
int fm_wal_write_all(const struct fm_wal_io *io, int fd, const uint8_t *p,
                     size_t len, uint64_t off, size_t *done_out,
                     int *errno_out);

/*
 * Reads the whole file at path (at most max_len bytes, else FM_ERR_LIMIT)
 * into out, replacing its contents. FM_ERR_IO names the path. FM_ERR_NOMEM.
 */
fm_status fm_wal_read_file(const char *path, uint64_t max_len,
                           struct fm_buf *out, struct fm_error *err);

/* A whole file mapped read-only (fm_wal_map_file); data NULL when empty. */
struct fm_wal_image {
    const uint8_t *data;
    size_t len;
};

/*
 * Maps the whole file at path read-only, its pages populated at once: on
 * the virtual machines measured, read() into fresh memory paid a fault per
 * 4 KiB page (0.2 s for a 43 MB segment, against 0.025 s mapped). The file
 * must not shrink while mapped (SIGBUS): only for files of a directory
 * whose lock the caller holds. FM_ERR_IO names the path.
 */
fm_status fm_wal_map_file(const char *path, struct fm_wal_image *out,
                          struct fm_error *err);
void fm_wal_unmap_file(struct fm_wal_image *img);

/* fsync of a directory, so that created, renamed and removed names last. */
fm_status fm_wal_fsync_dir(const struct fm_wal_io *io, const char *dir,
                           struct fm_error *err);

/*
 * flock(LOCK_EX | LOCK_NB) on fd. Returns 0, or the errno (EWOULDBLOCK when
 * another open file description holds it).
 */
int fm_wal_flock_try(int fd);

/* Sends printf-style text to fn at level; does nothing when fn is NULL. */
void fm_wal_log(fm_log_fn fn, void *ctx, enum fm_log_level level,
                const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 4, 5)))
#endif
    ;

/*
 * Calls fn(ctx, name) for each entry of dir whose name ends with suffix and
 * starts with 16 hex digits followed directly by the suffix; *lsn is the
 * parsed number. Entries come in directory order. FM_ERR_IO.
 */
typedef fm_status (*fm_wal_dir_fn)(void *ctx, const char *name, uint64_t lsn);
fm_status fm_wal_list_dir(const char *dir, const char *suffix, fm_wal_dir_fn fn,
                          void *ctx, struct fm_error *err);

/* Sorts n LSNs ascending. */
void fm_wal_sort_lsns(uint64_t *lsns, size_t n);

/* ---- Segments and records (segment.c) ----------------------------------- */

/* Formats the name of the segment that starts at first_lsn. */
void fm_wal_segment_name(char out[FM_SEG_NAME_CAP], uint64_t first_lsn);

/* Bytes of a segment header carrying schema_len bytes of schema. */
size_t fm_wal_segment_header_len(size_t schema_len);

/* Encodes a complete segment header into out (fm_wal_segment_header_len). */
void fm_wal_segment_header_encode(uint8_t *out, uint64_t first_lsn,
                                  const uint8_t *schema, size_t schema_len,
                                  int64_t created_us);

/* A decoded segment header; schema points into the decoded bytes. */
struct fm_wal_segment_header {
    uint64_t first_lsn;
    const uint8_t *schema;
    size_t schema_len;
    size_t header_len;  /* records start here */
    uint32_t version;   /* FM_SEG_VERSION or FM_SEG_VERSION_V1 */
    size_t rec_hdr_len; /* FM_REC_HDR, or FM_REC_HDR_V1 in version 1 */
};

/*
 * Decodes and checks the header at the start of data[0..len) of file name.
 * FM_ERR_CORRUPT (bad magic, version, length or checksum; names file),
 * FM_ERR_SCHEMA when schema is not NULL and differs.
 */
fm_status fm_wal_segment_header_decode(const uint8_t *data, size_t len,
                                       const char *name, const uint8_t *schema,
                                       size_t schema_len,
                                       struct fm_wal_segment_header *out,
                                       struct fm_error *err);

/* Checksum of a record: the header bytes before the checksum (sum_off of
 * them) and the payload. */
uint64_t fm_wal_record_sum(const uint8_t *hdr, size_t sum_off,
                           const uint8_t *payload, size_t len);

/*
 * Writes the FM_REC_HDR-byte header of a record whose payload is already
 * known; synced_lsn is the highest LSN that an fdatasync had made durable
 * when the record's group was framed (0 when none).
 */
void fm_wal_record_header_encode(uint8_t *hdr, uint64_t lsn,
                                 uint64_t synced_lsn, const uint8_t *payload,
                                 size_t len);

/*
 * A pass over the records of one segment image. Set the inputs, then call
 * fm_wal_cursor_next until it reports the end. The same code serves
 * fm_wal_open, the iterator and fm_wal_check_dir, so that all three make
 * the same decisions about the same bytes.
 */
struct fm_wal_cursor {
    const char *name;    /* file name, for messages */
    const uint8_t *data; /* the whole segment file */
    size_t len;
    size_t rec_hdr;       /* record header length of the segment's version */
    size_t pos;           /* next record; start at the header length */
    uint64_t expect_lsn;  /* LSN the next record must carry */
    bool is_last;         /* a bad tail may be torn rather than corrupt */
    bool force;           /* skip bad regions instead of failing */
    uint64_t covered_lsn; /* records up to it are in a snapshot: damage
                             among them is skipped (0: none) */
    /* Outputs. */
    uint64_t n_records;
    uint64_t n_skipped;      /* bad regions skipped */
    uint64_t n_lsns_missing; /* LSNs jumped over after a skip */
    int64_t first_bad;       /* offset of the first bad byte; -1 if none */
    bool torn;               /* the segment ends in a torn record */
    size_t torn_len;         /* its bytes up to the last nonzero one */
    uint64_t n_torn_records; /* good records after the damage, cut with it */
    uint64_t n_covered;      /* bad regions skipped as covered_lsn allows */
    size_t covered_bytes;    /* bytes in them */
    size_t valid_end;        /* end of the last good record (or header) */
};

/*
 * Yields the next good record (payload borrowed from data) or sets *end_out.
 * At the end, c->torn tells whether [valid_end, len) is a torn tail; zeros
 * after the last record are the preallocated tail and end the records
 * without being torn.
 * FM_ERR_CORRUPT names file and offset.
 */
fm_status fm_wal_cursor_next(struct fm_wal_cursor *c,
                             struct fm_wal_record *rec_out, bool *end_out,
                             struct fm_error *err);

#endif /* FM_WAL_INT_H */
