/*
 * fuzz_wal.c: libFuzzer target for everything that reads a data directory:
 * WAL segments and snapshots through wal/wal.h and wal/snapshot.h, the
 * offline check (fm_check_dir), snapshot pruning and the engine's recovery
 * (fm_engine_new on the directory).
 *
 * The input becomes at most one segment and one snapshot in a fresh
 * directory. A 5-byte header says how each is made:
 *
 *   offset  size  field
 *   0       1     bits 0-1: the segment: 0 none, 1 raw, 2 framed,
 *                 3 payloads; bits 2-3: the snapshot: 0 none, 1 raw,
 *                 2 framed, 3 chunks; bit 4: leave checksums as they
 *                 are; bit 5: leave LSNs as they are; bit 6:
 *                 force_recovery; bit 7: name raw and framed files by
 *                 bytes 1 and 2 instead of the LSN in their header
 *   1       1     framed and payloads: the segment's first LSN, 1 + b
 *   2       1     framed and chunks: the snapshot's LSN, b
 *   3       2     le16: bytes of the rest that go to the snapshot (the
 *                 segment takes the others); all of it when only one
 *
 *   raw       the bytes are the whole file, named by the LSN at offset 16
 *   framed    a header with the default schema is written by the harness
 *             and the bytes are the records (segment) or the blocks and
 *             the trailer (snapshot)
 *
 *   payloads  the bytes are a list of (le16 length, bytes) that the real
 *   chunks    writers (fm_wal_append, fm_snapshot_writer_add) store:
 *             valid files whose contents the engine must decode safely
 *
 * In raw and framed files the checksums (and the LSNs and trailer counts)
 * that the formats of wal/segment.c and wal/snapshot.c define are then
 * fixed up wherever the framing can be followed, unless bit 4 (bit 5)
 * says not to, so that the fuzzer gets past them to the lengths, counts
 * and payloads behind them.
 *
 * Every reader must answer with a status, never crash, assert or hang.
 * Beyond that the harness checks what the APIs promise each other: a
 * snapshot passes fm_snapshot_check_file exactly when the reader gets to
 * its end; after fm_wal_fix_dir succeeds no torn tail is left; and an
 * engine that recovered, took a write and was closed recovers again with
 * the same rows.
 *
 * Not checked: that a recovered engine passes fm_engine_check. Recovery
 * trusts foreign keys and CHECK values in row images whose checksums
 * match (engine/persist.c), so a crafted file with valid checksums can
 * load rows that break them; the harness only runs commands on a
 * recovered engine whose check passes.
 */
#include <dirent.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <xxhash.h>

#include "engine/fermata.h"
#include "tests/fuzz/fuzz_tmp.h"
#include "wal/snapshot.h"
#include "wal/wal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

enum {
    PART_NONE = 0,
    PART_RAW = 1,
    PART_FRAMED = 2,
    PART_WRITER = 3,
    FLAG_KEEP_SUMS = 1 << 4,
    FLAG_KEEP_LSNS = 1 << 5,
    FLAG_FORCE = 1 << 6,
    FLAG_MISNAME = 1 << 7,
    HEADER_LEN = 5,
    /* wal/segment.c: version 2 records, and version 1 ones still read */
    SEG_FIXED = 32,
    SEG_VERSION = 2,
    REC_MAGIC = 0x32524d46,
    REC_HDR = 28,
    REC_OFF_SUM = 20,
    REC_MAGIC_V1 = 0x31524d46,
    REC_HDR_V1 = 24,
    REC_OFF_SUM_V1 = 16,
    /* wal/snapshot.c */
    SNAP_FIXED = 40,
    BLK_MAGIC = 0x31424d46,
    BLK_HDR = 24,
    BLK_OFF_SUM = 16,
    TRL_LEN = 40,
    TRL_OFF_SUM = 32,
};

struct input {
    uint8_t flags;
    uint64_t seg_lsn;
    uint64_t snap_lsn;
    const uint8_t *seg;
    size_t seg_len;
    const uint8_t *snap;
    size_t snap_len;
};

static char dir[128];
static const char *schema;
static size_t schema_len;
static volatile uint8_t sink; /* where bytes that were read are dropped */

/* ---- Files ------------------------------------------------------------- */

static void clear_dir(void)
{
    DIR *d = opendir(dir);
    FM_ASSERT(d != NULL);
    struct dirent *ent;
    char p[512];
    while ((ent = readdir(d)) != NULL) {
        if (strcmp(ent->d_name, ".") == 0 || strcmp(ent->d_name, "..") == 0)
            continue;
        snprintf(p, sizeof(p), "%s/%s", dir, ent->d_name);
        unlink(p);
    }
    closedir(d);
}

static void write_file(const char *name, const uint8_t *p, size_t len)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    FM_ASSERT(fd >= 0);
    size_t done = 0;
    while (done < len) {
        ssize_t n = write(fd, p + done, len - done);
        FM_ASSERT(n > 0);
        done += (size_t)n;
    }
    close(fd);
}

/* The LSN a raw file's header claims, to name it by; 1 if too short. */
static uint64_t raw_lsn(const uint8_t *p, size_t len)
{
    return len >= 24 ? fm_load_le64(p + 16) : 1;
}

/* Splits p[0..len) into (le16 length, bytes) items; false at the end. */
static bool next_item(const uint8_t **p, const uint8_t *end,
                      const uint8_t **item, size_t *item_len)
{
    if (end - *p < 2)
        return false;
    size_t n = (size_t)(*p)[0] | (size_t)(*p)[1] << 8;
    *p += 2;
    if (n > (size_t)(end - *p))
        n = (size_t)(end - *p);
    *item = *p;
    *item_len = n;
    *p += n;
    return true;
}

/* ---- Segments ----------------------------------------------------------- */

/* Fixes the checksum and LSN of every record the framing can follow, in
 * a segment of the given version. */
static void fix_records(uint8_t *p, size_t len, uint32_t version, uint64_t lsn,
                        uint8_t flags)
{
    uint32_t magic = version == 1 ? REC_MAGIC_V1 : REC_MAGIC;
    size_t hdr = version == 1 ? REC_HDR_V1 : REC_HDR;
    size_t sum_off = version == 1 ? REC_OFF_SUM_V1 : REC_OFF_SUM;
    size_t off = 0;
    while (len - off >= hdr && fm_load_le32(p + off) == magic) {
        size_t m = fm_load_le32(p + off + 4);
        if (m > len - off - hdr)
            break;
        if (!(flags & FLAG_KEEP_LSNS))
            fm_store_le64(p + off + 8, lsn++);
        if (!(flags & FLAG_KEEP_SUMS)) {
            uint64_t seed = XXH3_64bits(p + off, sum_off);
            fm_store_le64(p + off + sum_off,
                          XXH3_64bits_withSeed(p + off + hdr, m, seed));
        }
        off += hdr + m;
    }
}

/* Fixes the header checksum of a segment file and then its records. */
static void fix_segment(uint8_t *f, size_t len, uint8_t flags)
{
    if (len < SEG_FIXED + 8)
        return;
    size_t n = fm_load_le32(f + 12);
    if (n > len - SEG_FIXED - 8)
        return;
    if (!(flags & FLAG_KEEP_SUMS))
        fm_store_le64(f + SEG_FIXED + n, XXH3_64bits(f, SEG_FIXED + n));
    fix_records(f + SEG_FIXED + n + 8, len - SEG_FIXED - n - 8,
                fm_load_le32(f + 8), fm_load_le64(f + 16), flags);
}

/* A raw segment, or records after a header with the default schema. */
static void write_segment(const struct input *in, bool framed)
{
    size_t hdr = framed ? SEG_FIXED + schema_len + 8 : 0;
    uint8_t *f = malloc(hdr + in->seg_len + 1);
    FM_ASSERT(f != NULL);
    if (framed) {
        memcpy(f, "FMWALSEG", 8);
        fm_store_le32(f + 8, SEG_VERSION);
        fm_store_le32(f + 12, (uint32_t)schema_len);
        fm_store_le64(f + 16, in->seg_lsn);
        fm_store_le64(f + 24, 0);
        memcpy(f + SEG_FIXED, schema, schema_len);
        fm_store_le64(f + SEG_FIXED + schema_len,
                      XXH3_64bits(f, SEG_FIXED + schema_len));
    }
    memcpy(f + hdr, in->seg, in->seg_len);
    fix_segment(f, hdr + in->seg_len, in->flags);
    char name[64];
    snprintf(name, sizeof(name), "%016" PRIx64 ".wal",
             (in->flags & FLAG_MISNAME) ? in->seg_lsn
                                        : raw_lsn(f, hdr + in->seg_len));
    write_file(name, f, hdr + in->seg_len);
    free(f);
}

/* Payloads through the real writer; the harness has the directory. */
static void write_payload_segment(const struct input *in)
{
    struct fm_wal_options o = {0};
    o.dir = dir;
    o.schema = (const uint8_t *)schema;
    o.schema_len = schema_len;
    o.fsync = FM_WAL_FSYNC_NO;
    o.start_lsn = in->seg_lsn;
    struct fm_wal *wal = NULL;
    struct fm_error err = {0};
    FM_ASSERT(fm_wal_open(&o, &wal, &err) == FM_OK);
    const uint8_t *p = in->seg;
    const uint8_t *end = in->seg + in->seg_len;
    const uint8_t *item;
    size_t n;
    while (next_item(&p, end, &item, &n)) {
        uint64_t lsn;
        FM_ASSERT(fm_wal_append(wal, item, n, &lsn, &err) == FM_OK);
    }
    FM_ASSERT(fm_wal_flush(wal, &err) == FM_OK);
    fm_wal_close(wal);
    char lock[512];
    snprintf(lock, sizeof(lock), "%s/LOCK", dir);
    unlink(lock);
}

/* ---- Snapshots ---------------------------------------------------------- */

/* Fixes block checksums, and the trailer's block count, stream length and
 * checksum, as far as the blocks can be followed. */
static void fix_blocks(uint8_t *p, size_t len, uint8_t flags)
{
    if (len < TRL_LEN || (flags & FLAG_KEEP_SUMS))
        return;
    size_t body = len - TRL_LEN;
    size_t off = 0;
    uint64_t index = 0;
    uint64_t raw = 0;
    while (body - off >= BLK_HDR && fm_load_le32(p + off) == BLK_MAGIC) {
        size_t k = fm_load_le32(p + off + 8);
        if (k > body - off - BLK_HDR)
            break;
        uint64_t seed = XXH3_64bits_withSeed(p + off, BLK_OFF_SUM, index);
        fm_store_le64(p + off + BLK_OFF_SUM,
                      XXH3_64bits_withSeed(p + off + BLK_HDR, k, seed));
        raw += fm_load_le32(p + off + 4);
        index++;
        off += BLK_HDR + k;
    }
    uint8_t *t = p + body;
    if (!(flags & FLAG_KEEP_LSNS)) {
        fm_store_le64(t + 16, index);
        fm_store_le64(t + 24, raw);
    }
    fm_store_le64(t + TRL_OFF_SUM, XXH3_64bits(t, TRL_OFF_SUM));
}

/* Fixes the header checksum of a snapshot file and then its blocks. */
static void fix_snapshot(uint8_t *f, size_t len, uint8_t flags)
{
    if (len < SNAP_FIXED + 8 + TRL_LEN)
        return;
    size_t n = fm_load_le32(f + 12);
    if (n > len - SNAP_FIXED - 8 - TRL_LEN)
        return;
    if (!(flags & FLAG_KEEP_SUMS))
        fm_store_le64(f + SNAP_FIXED + n, XXH3_64bits(f, SNAP_FIXED + n));
    fix_blocks(f + SNAP_FIXED + n + 8, len - SNAP_FIXED - n - 8, flags);
}

/* A raw snapshot, or blocks and trailer after a header with the default
 * schema. */
static void write_snapshot(const struct input *in, bool framed)
{
    size_t hdr = framed ? SNAP_FIXED + schema_len + 8 : 0;
    uint8_t *f = malloc(hdr + in->snap_len + 1);
    FM_ASSERT(f != NULL);
    if (framed) {
        memcpy(f, "FMSNAPSH", 8);
        fm_store_le32(f + 8, 1);
        fm_store_le32(f + 12, (uint32_t)schema_len);
        fm_store_le64(f + 16, in->snap_lsn);
        fm_store_le64(f + 24, 0);
        fm_store_le32(f + 32, 256 * 1024);
        fm_store_le32(f + 36, 0);
        memcpy(f + SNAP_FIXED, schema, schema_len);
        fm_store_le64(f + SNAP_FIXED + schema_len,
                      XXH3_64bits(f, SNAP_FIXED + schema_len));
    }
    memcpy(f + hdr, in->snap, in->snap_len);
    fix_snapshot(f, hdr + in->snap_len, in->flags);
    char name[FM_SNAPSHOT_NAME_CAP];
    fm_snapshot_name(name, (in->flags & FLAG_MISNAME)
                               ? in->snap_lsn
                               : raw_lsn(f, hdr + in->snap_len));
    write_file(name, f, hdr + in->snap_len);
    free(f);
}

static void write_chunk_snapshot(const struct input *in)
{
    struct fm_snapshot_writer *w = NULL;
    struct fm_error err = {0};
    FM_ASSERT(fm_snapshot_writer_open(dir, in->snap_lsn,
                                      (const uint8_t *)schema, schema_len, NULL,
                                      &w, &err) == FM_OK);
    const uint8_t *p = in->snap;
    const uint8_t *end = in->snap + in->snap_len;
    const uint8_t *item;
    size_t n;
    while (next_item(&p, end, &item, &n))
        FM_ASSERT(fm_snapshot_writer_add(w, item, n, &err) == FM_OK);
    FM_ASSERT(fm_snapshot_writer_commit(w, NULL, &err) == FM_OK);
}

/* Makes the directory hold exactly what the input describes. */
static void make_files(const struct input *in)
{
    clear_dir();
    switch (in->flags & 3) {
    case PART_RAW:
    case PART_FRAMED:
        write_segment(in, (in->flags & 3) == PART_FRAMED);
        break;
    case PART_WRITER:
        write_payload_segment(in);
        break;
    }
    switch ((in->flags >> 2) & 3) {
    case PART_RAW:
    case PART_FRAMED:
        write_snapshot(in, ((in->flags >> 2) & 3) == PART_FRAMED);
        break;
    case PART_WRITER:
        write_chunk_snapshot(in);
        break;
    }
}

/* ---- The readers -------------------------------------------------------- */

static void ignore_report(void *ctx, const struct fm_wal_segment_report *r)
{
    (void)ctx;
    FM_ASSERT(r->st != FM_OK || r->msg[0] == '\0');
}

static void no_torn_tail(void *ctx, const struct fm_wal_segment_report *r)
{
    (void)ctx;
    if (r->torn_bytes != 0) {
        fprintf(stderr, "%s: torn tail of %" PRIu64 " bytes after a fix\n",
                r->file, r->torn_bytes);
        abort();
    }
}

static void ignore_item(void *ctx, const struct fm_check_item *it)
{
    (void)ctx;
    FM_ASSERT(it->msg != NULL);
}

/* Reads one snapshot both ways; they must agree. */
static void read_snapshot(const char *file)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/%s", dir, file);
    struct fm_snapshot_stats stats = {0};
    int64_t bad = 0;
    struct fm_error err = {0};
    fm_status checked =
        fm_snapshot_check_file(path, NULL, 0, &stats, &bad, &err);
    FM_ASSERT((checked == FM_OK) == (bad == -1));
    struct fm_snapshot_reader *r = NULL;
    fm_status st = fm_snapshot_reader_open(path, NULL, 0, &r, &err);
    uint64_t n_chunks = 0;
    while (st == FM_OK) {
        const uint8_t *chunk;
        size_t len;
        bool end;
        st = fm_snapshot_reader_next(r, &chunk, &len, &end, &err);
        if (st != FM_OK || end)
            break;
        if (len > 0)
            sink = chunk[0] ^ chunk[len - 1];
        n_chunks++;
    }
    fm_snapshot_reader_close(r);
    if ((st == FM_OK) != (checked == FM_OK) ||
        (st == FM_OK && n_chunks != stats.n_chunks)) {
        fprintf(stderr, "%s: the reader says %s, the check %s\n", file,
                fm_status_name(st), fm_status_name(checked));
        abort();
    }
}

static void read_snapshots(void)
{
    struct fm_snapshot_list list = {0};
    struct fm_error err = {0};
    if (fm_snapshot_list_dir(dir, &list, &err) != FM_OK)
        return;
    for (size_t i = 0; i < list.n; i++)
        read_snapshot(list.items[i].file);
    fm_snapshot_list_fini(&list);
}

static void read_wal(bool force)
{
    struct fm_wal_options o = {0};
    o.dir = dir;
    o.schema = (const uint8_t *)schema;
    o.schema_len = schema_len;
    o.fsync = FM_WAL_FSYNC_NO;
    o.force_recovery = force;
    struct fm_wal *wal = NULL;
    struct fm_error err = {0};
    if (fm_wal_open(&o, &wal, &err) != FM_OK)
        return;
    struct fm_wal_iter *it = NULL;
    if (fm_wal_iter_open(wal, 0, &it, &err) == FM_OK) {
        for (;;) {
            struct fm_wal_record rec;
            bool end;
            if (fm_wal_iter_next(it, &rec, &end, &err) != FM_OK || end)
                break;
            if (rec.len > 0)
                sink = rec.payload[0] ^ rec.payload[rec.len - 1];
        }
    }
    fm_wal_iter_close(it);
    fm_wal_close(wal);
}

/* ---- Recovery ----------------------------------------------------------- */

static bool open_engine(bool force, struct fm_engine **out,
                        struct fm_error *err)
{
    struct fm_engine_options o = {0};
    o.dir = dir;
    o.fsync = FM_FSYNC_NO;
    o.force_recovery = force;
    fm_status st = fm_engine_new(&o, out, err);
    if (st != FM_OK)
        FM_ASSERT(err->st == st && err->msg[0] != '\0');
    return st == FM_OK;
}

static fm_status exec(struct fm_engine *e, const char *a, const char *b,
                      const char *c, const char *d)
{
    const uint8_t *argv[4] = {(const uint8_t *)a, (const uint8_t *)b,
                              (const uint8_t *)c, (const uint8_t *)d};
    size_t lens[4] = {strlen(a), strlen(b), c ? strlen(c) : 0,
                      d ? strlen(d) : 0};
    struct fm_reply reply = {0};
    fm_status st = fm_engine_exec(e, c == NULL ? 2 : 4, argv, lens, &reply);
    fm_reply_fini(&reply);
    return st;
}

/*
 * Recovers an engine from the directory. When that works and the data is
 * consistent, a write is made durable and a second recovery must find the
 * same rows.
 */
static void recover(bool force)
{
    struct fm_engine *e = NULL;
    struct fm_error err = {0};
    if (!open_engine(force, &e, &err))
        return;
    if (fm_engine_check(e, &err) != FM_OK) {
        fm_engine_free(e);
        return;
    }
    (void)exec(e, "COUNT", "users", NULL, NULL);
    (void)exec(e, "INSERT", "artists", "name", "fuzz");
    if (fm_engine_flush(e, &err) != FM_OK) {
        fprintf(stderr, "a recovered log takes no write: %s\n", err.msg);
        abort();
    }
    uint64_t rows = fm_engine_row_count(e);
    fm_engine_free(e);
    if (!open_engine(force, &e, &err)) {
        fprintf(stderr, "a directory that recovered once does not: %s\n",
                err.msg);
        abort();
    }
    if (fm_engine_row_count(e) != rows || fm_engine_check(e, &err) != FM_OK) {
        fprintf(stderr, "the second recovery differs: %s\n", err.msg);
        abort();
    }
    fm_engine_free(e);
}

/* ---- Entry -------------------------------------------------------------- */

/* A directory per input, removed after it: libFuzzer may end the process
 * with _Exit, which would leave a directory made once behind. */
static void make_dir(void)
{
    snprintf(dir, sizeof(dir), "%s/fm_fuzz_wal_XXXXXX", fm_fuzz_tmp_root());
    FM_ASSERT(mkdtemp(dir) != NULL);
    schema = fm_default_schema();
    schema_len = strlen(schema);
}

static void remove_dir(void)
{
    clear_dir();
    rmdir(dir);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < HEADER_LEN)
        return 0;
    make_dir();
    struct input in = {0};
    in.flags = data[0];
    in.seg_lsn = 1 + (uint64_t)data[1];
    in.snap_lsn = data[2];
    size_t snap_part = (size_t)data[3] | (size_t)data[4] << 8;
    const uint8_t *rest = data + HEADER_LEN;
    size_t rest_len = size - HEADER_LEN;
    bool has_seg = (in.flags & 3) != PART_NONE;
    bool has_snap = ((in.flags >> 2) & 3) != PART_NONE;
    if (!has_seg)
        snap_part = rest_len;
    else if (!has_snap)
        snap_part = 0;
    else if (snap_part > rest_len)
        snap_part = rest_len;
    in.snap = rest;
    in.snap_len = snap_part;
    in.seg = rest + snap_part;
    in.seg_len = rest_len - snap_part;
    bool force = (in.flags & FLAG_FORCE) != 0;
    struct fm_error err = {0};

    make_files(&in);
    (void)fm_wal_check_dir(dir, NULL, 0, 0, ignore_report, NULL, &err);
    read_snapshots();
    (void)fm_check_dir(dir, NULL, 0, false, ignore_item, NULL, &err);
    read_wal(force);

    make_files(&in);
    recover(force);

    make_files(&in);
    uint64_t torn = 0;
    if (fm_wal_fix_dir(dir, &torn, &err) == FM_OK)
        (void)fm_wal_check_dir(dir, NULL, 0, 0, no_torn_tail, NULL, &err);
    size_t n_removed = 0;
    (void)fm_snapshot_prune(dir, 1, &n_removed, &err);
    remove_dir();
    return 0;
}
