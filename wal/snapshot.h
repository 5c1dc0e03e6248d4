/*
 * snapshot.h: the snapshot container.
 *
 * A snapshot is one file, <16 hex digits of LSN>.snap, holding the schema
 * text and a sequence of opaque chunks that the engine wrote (row data in
 * whatever encoding the engine likes), LZ4-compressed in checksummed
 * blocks, with a trailer that counts what was written. The reader yields
 * exactly the chunks the writer added, in order, with the same boundaries.
 * The layout is in the essay of wal/snapshot.c and in docs/durability.md.
 *
 * Writing happens under a temporary name (<lsn>.snap.tmp) that the listing
 * never shows; commit fsyncs, renames and fsyncs the directory, so a
 * <lsn>.snap is either complete or absent. The writer uses no threads and
 * only plain system calls, so a forked child can run it (SPEC section 4).
 */
#ifndef FM_SNAPSHOT_H
#define FM_SNAPSHOT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "engine/base.h"
#include "wal/wal.h"

struct fm_snapshot_writer;
struct fm_snapshot_reader;

/* Largest chunk the container accepts. */
#define FM_SNAPSHOT_CHUNK_MAX ((size_t)1 << 30)

/* Name of the snapshot at lsn: 16 lowercase hex digits + ".snap". */
#define FM_SNAPSHOT_NAME_CAP 32
void fm_snapshot_name(char out[FM_SNAPSHOT_NAME_CAP], uint64_t lsn);

/* Sizes of a committed or checked snapshot. */
struct fm_snapshot_stats {
    uint64_t lsn;
    uint64_t n_chunks;
    uint64_t raw_bytes;  /* sum of the chunk lengths, uncompressed */
    uint64_t file_bytes; /* the file on disk, headers included */
    uint64_t n_blocks;   /* LZ4 blocks */
};

/* ---- Writing ------------------------------------------------------------ */

/*
 * Starts the snapshot of the state at lsn in dir: creates and locks
 * <lsn>.snap.tmp and writes the header with schema[0..schema_len). io may
 * be NULL (the real system calls); it must outlive the writer.
 * FM_ERR_LOCKED: another writer holds the same temporary file.
 * FM_ERR_IO (names the file), FM_ERR_LIMIT (schema over FM_WAL_SCHEMA_MAX),
 * FM_ERR_NOMEM. On success the caller owns *w_out and must end it with
 * fm_snapshot_writer_commit or fm_snapshot_writer_abort.
 */
fm_status fm_snapshot_writer_open(const char *dir, uint64_t lsn,
                                  const uint8_t *schema, size_t schema_len,
                                  const struct fm_wal_io *io,
                                  struct fm_snapshot_writer **w_out,
                                  struct fm_error *err);

/*
 * Adds one chunk p[0..len) (len may be 0); the bytes are copied or
 * compressed before the call returns. FM_ERR_LIMIT (len over
 * FM_SNAPSHOT_CHUNK_MAX), FM_ERR_IO, FM_ERR_NOMEM. After a failure the
 * writer is dead: further adds return the same status and commit fails.
 */
fm_status fm_snapshot_writer_add(struct fm_snapshot_writer *w, const uint8_t *p,
                                 size_t len, struct fm_error *err);

/*
 * Writes the last block and the trailer, fsyncs, renames the file to
 * <lsn>.snap and fsyncs the directory. Takes ownership of w and frees it
 * whatever happens; on failure the temporary file is removed. stats_out
 * (may be NULL) gets the sizes on success. FM_ERR_IO, FM_ERR_NOMEM, or the
 * status of an earlier failed add.
 */
fm_status fm_snapshot_writer_commit(struct fm_snapshot_writer *w,
                                    struct fm_snapshot_stats *stats_out,
                                    struct fm_error *err);

/* Removes the temporary file and frees w. NULL does nothing. */
void fm_snapshot_writer_abort(struct fm_snapshot_writer *w);

/* ---- Listing ------------------------------------------------------------ */

struct fm_snapshot_entry {
    uint64_t lsn;
    char file[FM_SNAPSHOT_NAME_CAP]; /* name inside the directory */
};

/* Snapshots of a directory, newest (highest LSN) first. */
struct fm_snapshot_list {
    struct fm_snapshot_entry *items;
    size_t n;
};

/*
 * Lists the *.snap files of dir, newest first, without opening them; the
 * engine tries each in turn until one loads (SPEC section 4: a bad snapshot
 * falls back to the previous one). Temporary files are never listed. The
 * caller owns *out (fm_snapshot_list_fini). FM_ERR_IO, FM_ERR_NOMEM.
 */
fm_status fm_snapshot_list_dir(const char *dir, struct fm_snapshot_list *out,
                               struct fm_error *err);

/* Releases the list. Safe on a zero-filled list. */
void fm_snapshot_list_fini(struct fm_snapshot_list *list);

/* ---- Reading ------------------------------------------------------------ */

/*
 * Opens the snapshot at path, checks its header (magic, version, checksum,
 * schema) and its trailer. schema NULL accepts any schema.
 * FM_ERR_SCHEMA: written under another schema (names the file).
 * FM_ERR_CORRUPT: damaged or truncated (names file and offset).
 * FM_ERR_IO, FM_ERR_NOMEM. The caller owns *r_out (fm_snapshot_reader_close).
 */
fm_status fm_snapshot_reader_open(const char *path, const uint8_t *schema,
                                  size_t schema_len,
                                  struct fm_snapshot_reader **r_out,
                                  struct fm_error *err);

/* The LSN the snapshot was taken at. */
uint64_t fm_snapshot_reader_lsn(const struct fm_snapshot_reader *r);

/*
 * Yields the next chunk into *chunk_out and *len_out and sets *end_out to
 * false, or sets *end_out to true after the last chunk, once the trailer's
 * counts have been checked. The chunk is borrowed and stays valid until the
 * next call or fm_snapshot_reader_close. Every block checksum is verified
 * before its chunks are yielded, but damage further on is only found when
 * the reader gets there: treat the loaded state as valid only once end is
 * reported. FM_ERR_CORRUPT (names file and offset), FM_ERR_IO, FM_ERR_NOMEM.
 */
fm_status fm_snapshot_reader_next(struct fm_snapshot_reader *r,
                                  const uint8_t **chunk_out, size_t *len_out,
                                  bool *end_out, struct fm_error *err);

/* Closes the file and frees r. NULL does nothing. */
void fm_snapshot_reader_close(struct fm_snapshot_reader *r);

/* ---- Checking and pruning ----------------------------------------------- */

/*
 * Reads the whole snapshot at path and verifies every checksum and the
 * trailer. stats_out gets what was found (on failure: what was read before
 * the damage). *bad_offset_out gets the offset of the first damage or -1.
 * schema NULL accepts any schema. Returns the status the reader gave:
 * FM_OK, FM_ERR_CORRUPT, FM_ERR_SCHEMA, FM_ERR_IO, FM_ERR_NOMEM.
 */
fm_status fm_snapshot_check_file(const char *path, const uint8_t *schema,
                                 size_t schema_len,
                                 struct fm_snapshot_stats *stats_out,
                                 int64_t *bad_offset_out, struct fm_error *err);

/*
 * Keeps the newest keep (at least 1) snapshots of dir that pass
 * fm_snapshot_check_file and deletes every snapshot older than the oldest
 * kept one, valid or not; damaged snapshots newer than it are left for
 * inspection. Also deletes *.snap.tmp files that no live writer holds
 * locked. *n_removed_out (may be NULL) counts the files deleted.
 * FM_ERR_IO, FM_ERR_NOMEM.
 */
fm_status fm_snapshot_prune(const char *dir, size_t keep, size_t *n_removed_out,
                            struct fm_error *err);

#endif /* FM_SNAPSHOT_H */
