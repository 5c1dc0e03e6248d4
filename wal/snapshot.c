/*
 * snapshot.c: the snapshot container: a header, LZ4 blocks, a trailer.
 *
 * The engine hands the writer opaque chunks. Each chunk is framed as a le32
 * length followed by its bytes, and the frames are concatenated into one
 * logical "chunk stream". The stream is cut into blocks of at most
 * BLOCK_RAW_MAX (256 KiB) bytes regardless of chunk boundaries (a 1 MiB
 * chunk spans five blocks, a thousand small ones share one); each block is
 * compressed on its own with LZ4 (LZ4_compress_default, the fast level) or
 * stored as is when LZ4 would not make it smaller. The reader decompresses
 * blocks in order and cuts the stream back into the same chunks. LZ4
 * blocks plus our own xxhash framing were chosen over the LZ4 frame format
 * so that every error can name the file offset of the damaged block and so
 * that chunk framing needs no streaming-decoder state.
 *
 * File layout (n = schema length, integers little-endian):
 *
 *   Header
 *   offset  size  field
 *   0       8     magic "FMSNAPSH"
 *   8       4     format version, 1
 *   12      4     n, schema text length (at most FM_WAL_SCHEMA_MAX)
 *   16      8     LSN: the snapshot holds every record up to and including it
 *   24      8     creation time, microseconds since the Unix epoch
 *   32      4     largest uncompressed block, BLOCK_RAW_MAX
 *   36      4     reserved, 0
 *   40      n     schema text
 *   40+n    8     XXH3-64 of bytes [0, 40+n)
 *
 *   Block, repeated (k = stored length)
 *   0       4     magic 0x31424d46 ("FMB1")
 *   4       4     uncompressed length (1 .. block max)
 *   8       4     k
 *   12      4     flags: 1 = LZ4 block, 0 = stored uncompressed
 *   16      8     XXH3_64bits_withSeed(stored bytes, k,
 *                     XXH3_64bits_withSeed(bytes [0,16), 16, block index))
 *   24      k     stored bytes
 *
 *   Trailer (the last 40 bytes of the file)
 *   0       4     magic 0x31544d46 ("FMT1")
 *   4       4     reserved, 0
 *   8       8     number of chunks
 *   16      8     number of blocks
 *   24      8     length of the chunk stream (uncompressed)
 *   32      8     XXH3-64 of bytes [0, 32)
 *
 * Validity: the header checksum matches; blocks follow back to back from
 * the end of the header to exactly the start of the trailer; each block's
 * checksum matches (the block index in the seed catches reordered,
 * repeated or missing blocks); each decompresses to exactly its stated
 * length; the stream ends on a chunk boundary; the trailer's checksum and
 * counts match what was read. Anything else is FM_ERR_CORRUPT naming the
 * file and the offset of the first bad structure. A file cut short loses
 * its trailer, which open already notices.
 *
 * The writer creates <lsn>.snap.tmp (flock'ed, so fm_snapshot_prune can
 * tell a live writer from a crashed one), writes blocks as they fill,
 * then the trailer, fsync, rename to <lsn>.snap, fsync of the directory.
 * It uses no threads, so it runs in a forked child. Its failures are
 * sticky: once a write fails the writer only reports it.
 *
 * Not done: no parallel compression, no random access to chunks, no
 * compression levels, no encryption.
 */
#include "wal/snapshot.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <lz4.h>
#include <xxhash.h>

#include "wal/wal_int.h"

#define SNAP_MAGIC     "FMSNAPSH"
#define SNAP_MAGIC_LEN 8
#define PATH_CAP       4096

enum {
    SNAP_VERSION = 1,
    BLOCK_RAW_MAX = 256 * 1024,
    HDR_OFF_VERSION = 8,
    HDR_OFF_SCHEMA_LEN = 12,
    HDR_OFF_LSN = 16,
    HDR_OFF_CREATED = 24,
    HDR_OFF_BLOCK_MAX = 32,
    HDR_OFF_RESERVED = 36,
    HDR_FIXED = 40,
    HDR_SUM_LEN = 8,
    BLK_MAGIC = 0x31424d46,
    BLK_OFF_RAW_LEN = 4,
    BLK_OFF_STORED_LEN = 8,
    BLK_OFF_FLAGS = 12,
    BLK_OFF_SUM = 16,
    BLK_HDR = 24,
    BLK_FLAG_LZ4 = 1,
    TRL_MAGIC = 0x31544d46,
    TRL_OFF_N_CHUNKS = 8,
    TRL_OFF_N_BLOCKS = 16,
    TRL_OFF_RAW_LEN = 24,
    TRL_OFF_SUM = 32,
    TRL_LEN = 40,
};

_Static_assert(HDR_OFF_VERSION == SNAP_MAGIC_LEN, "version follows magic");
_Static_assert(HDR_FIXED == HDR_OFF_RESERVED + 4, "fixed header is 40 bytes");
_Static_assert(BLK_HDR == BLK_OFF_SUM + 8, "block header is 24 bytes");
_Static_assert(TRL_LEN == TRL_OFF_SUM + 8, "trailer is 40 bytes");
_Static_assert(BLOCK_RAW_MAX <= LZ4_MAX_INPUT_SIZE, "block fits LZ4");

void fm_snapshot_name(char out[FM_SNAPSHOT_NAME_CAP], uint64_t lsn)
{
    snprintf(out, FM_SNAPSHOT_NAME_CAP, "%016" PRIx64 ".snap", lsn);
}

static uint64_t block_sum(const uint8_t *hdr, const uint8_t *stored, size_t len,
                          uint64_t index)
{
    uint64_t seed = XXH3_64bits_withSeed(hdr, BLK_OFF_SUM, index);
    return XXH3_64bits_withSeed(stored, len, seed);
}

/* ---- Writer ------------------------------------------------------------- */

struct fm_snapshot_writer {
    const struct fm_wal_io *io;
    char *dir;
    char tmp_path[PATH_CAP];
    char path[PATH_CAP];
    int fd;
    uint64_t off; /* file size so far */
    uint8_t *raw; /* the block being filled, BLOCK_RAW_MAX bytes */
    size_t raw_len;
    uint8_t *out; /* block header + compressed block */
    size_t out_cap;
    struct fm_snapshot_stats stats;
    uint64_t stream_len; /* chunk stream bytes, framing included */
    fm_status failed;    /* sticky; FM_OK while healthy */
    char failed_msg[FM_ERROR_MSG_CAP];
};

/* Makes the writer dead with st and message; returns st. */
static fm_status writer_fail(struct fm_snapshot_writer *w, fm_status st,
                             struct fm_error *err, const char *what, int e)
{
    w->failed = st;
    /* A path too long for the message is cut; the message stays useful. */
    if (snprintf(w->failed_msg, sizeof(w->failed_msg), "%s %s failed: %s", what,
                 w->tmp_path, strerror(e)) < 0)
        w->failed_msg[0] = '\0';
    return fm_error_set(err, st, "%s", w->failed_msg);
}

static fm_status writer_write(struct fm_snapshot_writer *w, const uint8_t *p,
                              size_t len, struct fm_error *err)
{
    size_t done;
    int e;
    if (fm_wal_write_all(w->io, w->fd, p, len, w->off, &done, &e) != 0)
        return writer_fail(w, FM_ERR_IO, err, "write of", e);
    w->off += len;
    return FM_OK;
}

/* Compresses and writes the block being filled, if it holds anything. */
static fm_status emit_block(struct fm_snapshot_writer *w, struct fm_error *err)
{
    if (w->raw_len == 0)
        return FM_OK;
    uint8_t *hdr = w->out;
    uint8_t *body = w->out + BLK_HDR;
    int n = LZ4_compress_default((const char *)w->raw, (char *)body,
                                 (int)w->raw_len, (int)(w->out_cap - BLK_HDR));
    uint32_t flags = BLK_FLAG_LZ4;
    size_t stored = (size_t)n;
    if (n <= 0 || (size_t)n >= w->raw_len) {
        /* Incompressible: storing it is smaller and faster to read. */
        memcpy(body, w->raw, w->raw_len);
        stored = w->raw_len;
        flags = 0;
    }
    fm_store_le32(hdr, BLK_MAGIC);
    fm_store_le32(hdr + BLK_OFF_RAW_LEN, (uint32_t)w->raw_len);
    fm_store_le32(hdr + BLK_OFF_STORED_LEN, (uint32_t)stored);
    fm_store_le32(hdr + BLK_OFF_FLAGS, flags);
    fm_store_le64(hdr + BLK_OFF_SUM,
                  block_sum(hdr, body, stored, w->stats.n_blocks));
    fm_status st = writer_write(w, w->out, BLK_HDR + stored, err);
    if (st != FM_OK)
        return st;
    w->stats.n_blocks++;
    w->raw_len = 0;
    return FM_OK;
}

/* Appends bytes to the chunk stream, emitting blocks as they fill. */
static fm_status feed(struct fm_snapshot_writer *w, const uint8_t *p,
                      size_t len, struct fm_error *err)
{
    while (len > 0) {
        size_t n = BLOCK_RAW_MAX - w->raw_len;
        if (n > len)
            n = len;
        memcpy(w->raw + w->raw_len, p, n);
        w->raw_len += n;
        p += n;
        len -= n;
        w->stream_len += n;
        if (w->raw_len == BLOCK_RAW_MAX) {
            fm_status st = emit_block(w, err);
            if (st != FM_OK)
                return st;
        }
    }
    return FM_OK;
}

static void writer_free(struct fm_snapshot_writer *w)
{
    if (w->fd >= 0)
        w->io->close(w->io->ctx, w->fd);
    fm_free(w->raw);
    fm_free(w->out);
    fm_free(w->dir);
    fm_free(w);
}

/* Creates, locks and empties the temporary file. */
static fm_status writer_create(struct fm_snapshot_writer *w,
                               struct fm_error *err)
{
    const struct fm_wal_io *io = w->io;
    /* No O_TRUNC: a live writer's file must not be emptied before the
     * lock says whether it is live. */
    w->fd =
        io->open(io->ctx, w->tmp_path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    if (w->fd < 0)
        return fm_error_set(err, FM_ERR_IO, "cannot create %s: %s", w->tmp_path,
                            strerror(errno));
    int e = fm_wal_flock_try(w->fd);
    if (e == EWOULDBLOCK)
        return fm_error_set(err, FM_ERR_LOCKED,
                            "snapshot %s is being written by another writer",
                            w->tmp_path);
    if (e != 0)
        return fm_error_set(err, FM_ERR_IO, "cannot lock %s: %s", w->tmp_path,
                            strerror(e));
    if (io->ftruncate(io->ctx, w->fd, 0) != 0)
        return fm_error_set(err, FM_ERR_IO, "cannot empty %s: %s", w->tmp_path,
                            strerror(errno));
    return FM_OK;
}

static fm_status write_header(struct fm_snapshot_writer *w,
                              const uint8_t *schema, size_t schema_len,
                              struct fm_error *err)
{
    size_t len = HDR_FIXED + schema_len + HDR_SUM_LEN;
    uint8_t *h = fm_calloc(1, len);
    if (h == NULL)
        return fm_error_set(err, FM_ERR_NOMEM, "out of memory writing %s",
                            w->tmp_path);
    memcpy(h, SNAP_MAGIC, SNAP_MAGIC_LEN);
    fm_store_le32(h + HDR_OFF_VERSION, SNAP_VERSION);
    fm_store_le32(h + HDR_OFF_SCHEMA_LEN, (uint32_t)schema_len);
    fm_store_le64(h + HDR_OFF_LSN, w->stats.lsn);
    fm_store_le64(h + HDR_OFF_CREATED, (uint64_t)fm_now_us());
    fm_store_le32(h + HDR_OFF_BLOCK_MAX, BLOCK_RAW_MAX);
    if (schema_len > 0)
        memcpy(h + HDR_FIXED, schema, schema_len);
    fm_store_le64(h + HDR_FIXED + schema_len,
                  XXH3_64bits(h, HDR_FIXED + schema_len));
    fm_status st = writer_write(w, h, len, err);
    fm_free(h);
    return st;
}

fm_status fm_snapshot_writer_open(const char *dir, uint64_t lsn,
                                  const uint8_t *schema, size_t schema_len,
                                  const struct fm_wal_io *io,
                                  struct fm_snapshot_writer **w_out,
                                  struct fm_error *err)
{
    FM_ASSERT(dir != NULL && w_out != NULL);
    FM_ASSERT(schema != NULL || schema_len == 0);
    if (schema_len > FM_WAL_SCHEMA_MAX)
        return fm_error_set(err, FM_ERR_LIMIT,
                            "schema text too long for a snapshot (%zu bytes)",
                            schema_len);
    struct fm_snapshot_writer *w = fm_calloc(1, sizeof(*w));
    if (w == NULL)
        return fm_error_set(err, FM_ERR_NOMEM,
                            "out of memory starting a snapshot");
    w->fd = -1;
    w->io = io != NULL ? io : fm_wal_io_default();
    w->stats.lsn = lsn;
    w->out_cap = BLK_HDR + (size_t)LZ4_compressBound(BLOCK_RAW_MAX);
    w->raw = fm_malloc(BLOCK_RAW_MAX);
    w->out = fm_malloc(w->out_cap);
    size_t dir_len = strlen(dir);
    w->dir = fm_malloc(dir_len + 1);
    fm_status st;
    if (w->raw == NULL || w->out == NULL || w->dir == NULL) {
        st = fm_error_set(err, FM_ERR_NOMEM,
                          "out of memory starting a snapshot");
        goto fail;
    }
    memcpy(w->dir, dir, dir_len + 1);
    char name[FM_SNAPSHOT_NAME_CAP];
    fm_snapshot_name(name, lsn);
    st = fm_wal_path_join(w->path, sizeof(w->path), dir, name, err);
    if (st != FM_OK)
        goto fail;
    int n = snprintf(w->tmp_path, sizeof(w->tmp_path), "%s.tmp", w->path);
    if (n < 0 || (size_t)n >= sizeof(w->tmp_path)) {
        st = fm_error_set(err, FM_ERR_LIMIT, "path too long: %s", w->path);
        goto fail;
    }
    st = writer_create(w, err);
    if (st == FM_OK)
        st = write_header(w, schema, schema_len, err);
    if (st != FM_OK) {
        /* Never remove a file another live writer holds. */
        if (st != FM_ERR_LOCKED && w->fd >= 0)
            w->io->unlink(w->io->ctx, w->tmp_path);
        goto fail;
    }
    *w_out = w;
    return FM_OK;
fail:
    writer_free(w);
    return st;
}

fm_status fm_snapshot_writer_add(struct fm_snapshot_writer *w, const uint8_t *p,
                                 size_t len, struct fm_error *err)
{
    FM_ASSERT(p != NULL || len == 0);
    if (w->failed != FM_OK)
        return fm_error_set(err, w->failed, "%s", w->failed_msg);
    if (len > FM_SNAPSHOT_CHUNK_MAX)
        return fm_error_set(err, FM_ERR_LIMIT,
                            "snapshot chunk of %zu bytes is over the limit",
                            len);
    uint8_t frame[4];
    fm_store_le32(frame, (uint32_t)len);
    fm_status st = feed(w, frame, sizeof(frame), err);
    if (st == FM_OK)
        st = feed(w, p, len, err);
    if (st != FM_OK)
        return st;
    w->stats.n_chunks++;
    w->stats.raw_bytes += len;
    return FM_OK;
}

static fm_status write_trailer(struct fm_snapshot_writer *w,
                               struct fm_error *err)
{
    uint8_t t[TRL_LEN] = {0};
    fm_store_le32(t, TRL_MAGIC);
    fm_store_le64(t + TRL_OFF_N_CHUNKS, w->stats.n_chunks);
    fm_store_le64(t + TRL_OFF_N_BLOCKS, w->stats.n_blocks);
    fm_store_le64(t + TRL_OFF_RAW_LEN, w->stream_len);
    fm_store_le64(t + TRL_OFF_SUM, XXH3_64bits(t, TRL_OFF_SUM));
    return writer_write(w, t, sizeof(t), err);
}

fm_status fm_snapshot_writer_commit(struct fm_snapshot_writer *w,
                                    struct fm_snapshot_stats *stats_out,
                                    struct fm_error *err)
{
    const struct fm_wal_io *io = w->io;
    fm_status st = w->failed;
    if (st != FM_OK) {
        fm_error_set(err, st, "%s", w->failed_msg);
        goto fail;
    }
    st = emit_block(w, err);
    if (st == FM_OK)
        st = write_trailer(w, err);
    if (st != FM_OK)
        goto fail;
    if (io->fsync(io->ctx, w->fd) != 0) {
        st = writer_fail(w, FM_ERR_IO, err, "fsync of", errno);
        goto fail;
    }
    if (io->rename(io->ctx, w->tmp_path, w->path) != 0) {
        st = writer_fail(w, FM_ERR_IO, err, "rename of", errno);
        goto fail;
    }
    st = fm_wal_fsync_dir(io, w->dir, err);
    if (st != FM_OK) {
        /* The name may or may not last; a snapshot we cannot vouch for
         * must not be found at the next start. */
        io->unlink(io->ctx, w->path);
        writer_free(w);
        return st;
    }
    w->stats.file_bytes = w->off;
    if (stats_out != NULL)
        *stats_out = w->stats;
    writer_free(w);
    return FM_OK;
fail:
    io->unlink(io->ctx, w->tmp_path);
    writer_free(w);
    return st;
}

void fm_snapshot_writer_abort(struct fm_snapshot_writer *w)
{
    if (w == NULL)
        return;
    w->io->unlink(w->io->ctx, w->tmp_path);
    writer_free(w);
}

/* ---- Listing ------------------------------------------------------------ */

static fm_status list_add(void *ctx, const char *name, uint64_t lsn)
{
    struct fm_snapshot_list *l = ctx;
    /* Grow by one each time: directories hold a handful of snapshots. */
    struct fm_snapshot_entry *p = fm_realloc(l->items, (l->n + 1) * sizeof(*p));
    if (p == NULL)
        return FM_ERR_NOMEM;
    l->items = p;
    p[l->n].lsn = lsn;
    snprintf(p[l->n].file, sizeof(p[l->n].file), "%s", name);
    l->n++;
    return FM_OK;
}

static int cmp_newest_first(const void *a, const void *b)
{
    uint64_t x = ((const struct fm_snapshot_entry *)a)->lsn;
    uint64_t y = ((const struct fm_snapshot_entry *)b)->lsn;
    return x > y ? -1 : x < y;
}

fm_status fm_snapshot_list_dir(const char *dir, struct fm_snapshot_list *out,
                               struct fm_error *err)
{
    struct fm_snapshot_list l = {0};
    fm_status st = fm_wal_list_dir(dir, ".snap", list_add, &l, err);
    if (st == FM_ERR_NOMEM)
        fm_error_set(err, st, "out of memory listing %s", dir);
    if (st != FM_OK) {
        fm_snapshot_list_fini(&l);
        return st;
    }
    if (l.n > 1)
        qsort(l.items, l.n, sizeof(*l.items), cmp_newest_first);
    *out = l;
    return FM_OK;
}

void fm_snapshot_list_fini(struct fm_snapshot_list *list)
{
    fm_free(list->items);
    list->items = NULL;
    list->n = 0;
}

/* ---- Reader ------------------------------------------------------------- */

struct fm_snapshot_reader {
    char path[PATH_CAP];
    int fd;
    uint64_t lsn;
    uint64_t off;         /* next block header */
    uint64_t trailer_off; /* where blocks must end */
    uint64_t n_blocks;    /* blocks read */
    uint64_t n_chunks;    /* chunks yielded */
    uint64_t stream_len;  /* stream bytes decoded */
    uint64_t raw_bytes;   /* chunk bytes yielded */
    uint64_t t_chunks;    /* the trailer's counts */
    uint64_t t_blocks;
    uint64_t t_stream;
    uint32_t block_max;
    uint8_t *stored; /* a block as stored */
    size_t stored_cap;
    struct fm_buf stream; /* decoded, not yet consumed stream bytes */
    size_t stream_pos;    /* consumed prefix of stream */
    int64_t bad_offset;   /* first damage seen; -1 */
    bool done;
};

static fm_status corrupt(struct fm_snapshot_reader *r, uint64_t off,
                         struct fm_error *err, const char *what)
{
    if (r->bad_offset < 0)
        r->bad_offset = (int64_t)off;
    return fm_error_set(err, FM_ERR_CORRUPT,
                        "%s in snapshot %s at offset %" PRIu64, what, r->path,
                        off);
}

/* Reads exactly len bytes at off; a short file is corruption. */
static fm_status read_at(struct fm_snapshot_reader *r, uint8_t *p, size_t len,
                         uint64_t off, struct fm_error *err)
{
    size_t done = 0;
    while (done < len) {
        ssize_t n = pread(r->fd, p + done, len - done, (off_t)(off + done));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return fm_error_set(err, FM_ERR_IO, "cannot read %s: %s", r->path,
                                strerror(errno));
        if (n == 0)
            return corrupt(r, off + done, err, "unexpected end of file");
        done += (size_t)n;
    }
    return FM_OK;
}

static fm_status read_header(struct fm_snapshot_reader *r,
                             const uint8_t *schema, size_t schema_len,
                             uint64_t file_len, struct fm_error *err)
{
    uint8_t fixed[HDR_FIXED];
    if (file_len < HDR_FIXED + HDR_SUM_LEN + TRL_LEN)
        return corrupt(r, 0, err, "file too short");
    fm_status st = read_at(r, fixed, sizeof(fixed), 0, err);
    if (st != FM_OK)
        return st;
    if (memcmp(fixed, SNAP_MAGIC, SNAP_MAGIC_LEN) != 0)
        return corrupt(r, 0, err, "bad magic");
    if (fm_load_le32(fixed + HDR_OFF_VERSION) != SNAP_VERSION)
        return corrupt(r, HDR_OFF_VERSION, err, "unsupported version");
    size_t n = fm_load_le32(fixed + HDR_OFF_SCHEMA_LEN);
    uint64_t hdr_len = HDR_FIXED + (uint64_t)n + HDR_SUM_LEN;
    if (n > FM_WAL_SCHEMA_MAX || hdr_len + TRL_LEN > file_len)
        return corrupt(r, HDR_OFF_SCHEMA_LEN, err, "bad schema length");
    uint8_t *h = fm_malloc((size_t)hdr_len);
    if (h == NULL)
        return fm_error_set(err, FM_ERR_NOMEM, "out of memory reading %s",
                            r->path);
    st = read_at(r, h, (size_t)hdr_len, 0, err);
    if (st != FM_OK)
        goto out;
    if (XXH3_64bits(h, HDR_FIXED + n) != fm_load_le64(h + HDR_FIXED + n)) {
        st = corrupt(r, HDR_FIXED + n, err, "header checksum mismatch");
        goto out;
    }
    if (schema != NULL &&
        (n != schema_len || memcmp(h + HDR_FIXED, schema, n) != 0)) {
        st = fm_error_set(err, FM_ERR_SCHEMA,
                          "snapshot %s was written under another schema (%zu "
                          "bytes of schema text, expected %zu)",
                          r->path, n, schema_len);
        goto out;
    }
    r->lsn = fm_load_le64(h + HDR_OFF_LSN);
    r->block_max = fm_load_le32(h + HDR_OFF_BLOCK_MAX);
    r->off = hdr_len;
    /* The reader's buffers are sized from this field before any block is
     * read, so only what the writer writes is believed: a damaged header
     * with a valid checksum must not make a 100-byte file cost 2 GiB. */
    if (r->block_max == 0 || r->block_max > BLOCK_RAW_MAX)
        st = corrupt(r, HDR_OFF_BLOCK_MAX, err, "bad block size");
out:
    fm_free(h);
    return st;
}

static fm_status read_trailer(struct fm_snapshot_reader *r, uint64_t file_len,
                              struct fm_error *err)
{
    uint8_t t[TRL_LEN];
    uint64_t off = file_len - TRL_LEN;
    fm_status st = read_at(r, t, sizeof(t), off, err);
    if (st != FM_OK)
        return st;
    if (fm_load_le32(t) != TRL_MAGIC ||
        XXH3_64bits(t, TRL_OFF_SUM) != fm_load_le64(t + TRL_OFF_SUM))
        return corrupt(r, off, err,
                       "missing or damaged trailer (truncated file?)");
    r->trailer_off = off;
    r->t_chunks = fm_load_le64(t + TRL_OFF_N_CHUNKS);
    r->t_blocks = fm_load_le64(t + TRL_OFF_N_BLOCKS);
    r->t_stream = fm_load_le64(t + TRL_OFF_RAW_LEN);
    return FM_OK;
}

fm_status fm_snapshot_reader_open(const char *path, const uint8_t *schema,
                                  size_t schema_len,
                                  struct fm_snapshot_reader **r_out,
                                  struct fm_error *err)
{
    struct fm_snapshot_reader *r = fm_calloc(1, sizeof(*r));
    if (r == NULL)
        return fm_error_set(err, FM_ERR_NOMEM, "out of memory opening %s",
                            path);
    r->bad_offset = -1;
    snprintf(r->path, sizeof(r->path), "%s", path);
    fm_status st = FM_OK;
    r->fd = open(path, O_RDONLY | O_CLOEXEC);
    if (r->fd < 0) {
        st = fm_error_set(err, FM_ERR_IO, "cannot open %s: %s", path,
                          strerror(errno));
        goto fail;
    }
    struct stat sb;
    if (fstat(r->fd, &sb) != 0) {
        st = fm_error_set(err, FM_ERR_IO, "cannot stat %s: %s", path,
                          strerror(errno));
        goto fail;
    }
    st = read_header(r, schema, schema_len, (uint64_t)sb.st_size, err);
    if (st == FM_OK)
        st = read_trailer(r, (uint64_t)sb.st_size, err);
    if (st != FM_OK)
        goto fail;
    r->stored_cap = (size_t)LZ4_compressBound((int)r->block_max);
    r->stored = fm_malloc(r->stored_cap);
    if (r->stored == NULL) {
        st = fm_error_set(err, FM_ERR_NOMEM, "out of memory opening %s", path);
        goto fail;
    }
    *r_out = r;
    return FM_OK;
fail:
    fm_snapshot_reader_close(r);
    return st;
}

uint64_t fm_snapshot_reader_lsn(const struct fm_snapshot_reader *r)
{
    return r->lsn;
}

/* Reads, verifies and decodes the block at r->off onto the stream. */
static fm_status read_block(struct fm_snapshot_reader *r, struct fm_error *err)
{
    uint8_t hdr[BLK_HDR];
    uint64_t at = r->off;
    if (at + BLK_HDR > r->trailer_off)
        return corrupt(r, at, err, "block runs into the trailer");
    fm_status st = read_at(r, hdr, sizeof(hdr), at, err);
    if (st != FM_OK)
        return st;
    size_t raw_len = fm_load_le32(hdr + BLK_OFF_RAW_LEN);
    size_t stored = fm_load_le32(hdr + BLK_OFF_STORED_LEN);
    uint32_t flags = fm_load_le32(hdr + BLK_OFF_FLAGS);
    if (fm_load_le32(hdr) != BLK_MAGIC || raw_len == 0 ||
        raw_len > r->block_max || stored > r->stored_cap ||
        at + BLK_HDR + stored > r->trailer_off || (flags & ~1u) != 0)
        return corrupt(r, at, err, "bad block header");
    st = read_at(r, r->stored, stored, at + BLK_HDR, err);
    if (st != FM_OK)
        return st;
    if (block_sum(hdr, r->stored, stored, r->n_blocks) !=
        fm_load_le64(hdr + BLK_OFF_SUM))
        return corrupt(r, at, err, "block checksum mismatch");
    /* Drop the consumed prefix before growing: chunks yielded are dead. */
    size_t left = r->stream.len - r->stream_pos;
    if (left > 0)
        memmove(r->stream.data, r->stream.data + r->stream_pos, left);
    r->stream.len = left;
    r->stream_pos = 0;
    if (fm_buf_reserve(&r->stream, raw_len) != FM_OK)
        return fm_error_set(err, FM_ERR_NOMEM, "out of memory reading %s",
                            r->path);
    uint8_t *dst = r->stream.data + r->stream.len;
    if (flags & BLK_FLAG_LZ4) {
        int n = LZ4_decompress_safe((const char *)r->stored, (char *)dst,
                                    (int)stored, (int)raw_len);
        if (n < 0 || (size_t)n != raw_len)
            return corrupt(r, at, err, "block does not decompress");
    } else {
        if (stored != raw_len)
            return corrupt(r, at, err, "bad stored block length");
        memcpy(dst, r->stored, raw_len);
    }
    r->stream.len += raw_len;
    r->stream_len += raw_len;
    r->n_blocks++;
    r->off = at + BLK_HDR + stored;
    return FM_OK;
}

/* All blocks are read: the stream and the trailer must agree. */
static fm_status finish(struct fm_snapshot_reader *r, bool *end_out,
                        struct fm_error *err)
{
    if (r->stream.len != r->stream_pos)
        return corrupt(r, r->trailer_off, err,
                       "chunk stream ends inside a chunk");
    if (r->n_chunks != r->t_chunks || r->n_blocks != r->t_blocks ||
        r->stream_len != r->t_stream)
        return corrupt(r, r->trailer_off, err,
                       "trailer counts do not match the blocks");
    r->done = true;
    *end_out = true;
    return FM_OK;
}

fm_status fm_snapshot_reader_next(struct fm_snapshot_reader *r,
                                  const uint8_t **chunk_out, size_t *len_out,
                                  bool *end_out, struct fm_error *err)
{
    if (r->done) {
        *end_out = true;
        return FM_OK;
    }
    for (;;) {
        size_t avail = r->stream.len - r->stream_pos;
        if (avail >= 4) {
            /* Only now: before the first block the stream has no memory,
             * and NULL + 0 is undefined behaviour. */
            const uint8_t *p = r->stream.data + r->stream_pos;
            size_t n = fm_load_le32(p);
            if (n > FM_SNAPSHOT_CHUNK_MAX)
                return corrupt(r, r->off, err, "chunk length over the limit");
            if (avail - 4 >= n) {
                *chunk_out = p + 4;
                *len_out = n;
                *end_out = false;
                r->stream_pos += 4 + n;
                r->n_chunks++;
                r->raw_bytes += n;
                return FM_OK;
            }
        }
        if (r->off == r->trailer_off)
            return finish(r, end_out, err);
        fm_status st = read_block(r, err);
        if (st != FM_OK)
            return st;
    }
}

void fm_snapshot_reader_close(struct fm_snapshot_reader *r)
{
    if (r == NULL)
        return;
    if (r->fd >= 0)
        close(r->fd);
    fm_free(r->stored);
    fm_buf_fini(&r->stream);
    fm_free(r);
}

/* ---- Checking and pruning ----------------------------------------------- */

fm_status fm_snapshot_check_file(const char *path, const uint8_t *schema,
                                 size_t schema_len,
                                 struct fm_snapshot_stats *stats_out,
                                 int64_t *bad_offset_out, struct fm_error *err)
{
    struct fm_snapshot_reader *r = NULL;
    memset(stats_out, 0, sizeof(*stats_out));
    *bad_offset_out = -1;
    fm_status st = fm_snapshot_reader_open(path, schema, schema_len, &r, err);
    if (st != FM_OK) {
        if (st == FM_ERR_CORRUPT)
            *bad_offset_out = 0;
        return st;
    }
    for (;;) {
        const uint8_t *p;
        size_t len;
        bool end;
        st = fm_snapshot_reader_next(r, &p, &len, &end, err);
        if (st != FM_OK || end)
            break;
    }
    stats_out->lsn = r->lsn;
    stats_out->n_chunks = r->n_chunks;
    stats_out->raw_bytes = r->raw_bytes;
    stats_out->file_bytes = r->trailer_off + TRL_LEN;
    stats_out->n_blocks = r->n_blocks;
    *bad_offset_out = r->bad_offset;
    fm_snapshot_reader_close(r);
    return st;
}

static fm_status remove_file(const char *dir, const char *name,
                             size_t *n_removed, struct fm_error *err)
{
    char path[PATH_CAP];
    fm_status st = fm_wal_path_join(path, sizeof(path), dir, name, err);
    if (st != FM_OK)
        return st;
    if (unlink(path) != 0 && errno != ENOENT)
        return fm_error_set(err, FM_ERR_IO, "cannot remove %s: %s", path,
                            strerror(errno));
    (*n_removed)++;
    return FM_OK;
}

struct temp_ctx {
    const char *dir;
    size_t *n_removed;
    struct fm_error *err;
};

/* Removes one *.snap.tmp unless a live writer holds its lock. */
static fm_status remove_stale_temp(void *ctx, const char *name, uint64_t lsn)
{
    (void)lsn;
    struct temp_ctx *t = ctx;
    char path[PATH_CAP];
    fm_status st = fm_wal_path_join(path, sizeof(path), t->dir, name, t->err);
    if (st != FM_OK)
        return st;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return FM_OK; /* gone meanwhile */
    bool live = fm_wal_flock_try(fd) != 0;
    /* Unlink while holding the lock so a new writer cannot slip in. */
    if (!live)
        st = remove_file(t->dir, name, t->n_removed, t->err);
    close(fd);
    return st;
}

fm_status fm_snapshot_prune(const char *dir, size_t keep, size_t *n_removed_out,
                            struct fm_error *err)
{
    struct fm_snapshot_list list = {0};
    size_t n_removed = 0;
    size_t n_kept = 0;
    char path[PATH_CAP];
    if (keep == 0)
        keep = 1;
    fm_status st = fm_snapshot_list_dir(dir, &list, err);
    for (size_t i = 0; st == FM_OK && i < list.n; i++) {
        if (n_kept >= keep) {
            st = remove_file(dir, list.items[i].file, &n_removed, err);
            continue;
        }
        st = fm_wal_path_join(path, sizeof(path), dir, list.items[i].file, err);
        if (st != FM_OK)
            break;
        struct fm_snapshot_stats stats;
        int64_t bad;
        struct fm_error cerr = {0};
        fm_status cst =
            fm_snapshot_check_file(path, NULL, 0, &stats, &bad, &cerr);
        if (cst == FM_ERR_NOMEM || cst == FM_ERR_IO) {
            st = fm_error_set(err, cst, "%s", cerr.msg);
            break;
        }
        if (cst == FM_OK)
            n_kept++;
    }
    if (st == FM_OK) {
        struct temp_ctx t = {dir, &n_removed, err};
        st = fm_wal_list_dir(dir, ".snap.tmp", remove_stale_temp, &t, err);
    }
    if (st == FM_OK && n_removed > 0)
        st = fm_wal_fsync_dir(fm_wal_io_default(), dir, err);
    fm_snapshot_list_fini(&list);
    if (n_removed_out != NULL)
        *n_removed_out = n_removed;
    return st;
}
