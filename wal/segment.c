/*
 * segment.c: the format of a log segment and the one record scanner.
 *
 * A log is a sequence of segment files in one directory. A segment is named
 * by the LSN of its first record as 16 lowercase hex digits plus ".wal"
 * (0000000000000001.wal), so that names sort in log order. It is a header
 * followed by records, back to back, with no padding and no trailer. The
 * file ends where the last record ends, except that under fsync always the
 * active segment is kept zero-filled ahead of its last record (see wal.c,
 * "Preallocation"): zeros where a record header should be, up to the end
 * of the file, are the clean end of the records, not damage. No record
 * can start with a zero byte (the magic's first byte is 'F').
 *
 * Segment header (n = schema length, all integers little-endian):
 *
 *   offset  size  field
 *   0       8     magic "FMWALSEG"
 *   8       4     format version: 2 (version 1 is still read, see below)
 *   12      4     n, the schema text length (at most FM_WAL_SCHEMA_MAX)
 *   16      8     LSN of the first record (equals the file name)
 *   24      8     creation time, microseconds since the Unix epoch
 *   32      n     schema text, opaque bytes from the engine
 *   32+n    8     XXH3-64 of bytes [0, 32+n)
 *
 * Record (records start at 40+n; m = payload length):
 *
 *   offset  size  field
 *   0       4     magic 0x32524d46 ("FMR2")
 *   4       4     m (at most FM_WAL_PAYLOAD_MAX)
 *   8       8     LSN
 *   16      4     unsynced distance: LSN minus the synced LSN, the highest
 *                 LSN an fdatasync had made durable when the record's group
 *                 was framed (FM_REC_UNSYNCED_UNKNOWN: at least that far)
 *   20      8     checksum = XXH3_64bits_withSeed(payload, m,
 *                                                 XXH3_64bits(bytes [0,20)))
 *   28      m     payload, opaque bytes from the engine
 *
 * Version 1 segments, written before the unsynced distance existed, have
 * 24-byte records: magic "FMR1", m, LSN, then the checksum seeded with
 * bytes [0,16). They are read as they are; the log never appends to one
 * (wal.c starts a new segment instead).
 *
 * The checksum covers every byte of the record except itself: the header
 * hash seeds the payload hash. A record is *good* when its magic matches,
 * m fits in the file, and the checksum matches. Records carry LSNs that
 * grow by exactly one, within a segment and across segments (the first LSN
 * of a segment is the last LSN of the previous one plus one). A segment is
 * created under a temporary name (.wal.tmp), its header written and fsynced
 * and then renamed, so a segment that exists always has a whole header;
 * the previous segment is fdatasynced before the new one is used, under
 * every policy, so only the last segment can end in a partial write.
 *
 * Recovery rule (SPEC section 4), applied by fm_wal_cursor_next. What a
 * crash can leave behind is decided by what had been made durable: bytes
 * that an fdatasync covered can only be damaged by the medium, bytes
 * written after the last fdatasync can be lost in any pattern, since the
 * kernel writes pages back in no promised order (a power cut during the
 * fdatasync of one group can keep its second page and lose its first). So
 * at the first bad byte position p, where the record with the expected LSN
 * L should start:
 *
 *   - Look for a good record with an acceptable LSN (>= L) at any later
 *     offset (a byte-by-byte resync, cheap because candidates must start
 *     with the magic). If there is none and this is the last segment,
 *     [p, end) is a torn tail: the caller cuts it and reports the byte
 *     count. In an earlier segment it is corruption.
 *   - If there are good records after p in the last segment, and none of
 *     them says that L was synced when it was framed (synced LSN < L for
 *     every one), the damage and all of them were written after the last
 *     fdatasync that completed: a torn group, cut from p like a torn tail,
 *     with the count of intact records dropped with it. Under always they
 *     were never acknowledged; under everysec and no they are within the
 *     loss the policy allows. Replaying records past a hole would apply
 *     transactions whose predecessors are gone.
 *   - If the next good record's LSN is at most one past covered_lsn, every
 *     record the region can have held is in the snapshot recovery loaded:
 *     the region is skipped and counted, damage or not, since nothing
 *     needs it (a group whose fdatasync failed, saved by the snapshot that
 *     SHUTDOWN writes then, and lost by a later OS crash).
 *   - Otherwise p is corruption: fail with FM_ERR_CORRUPT naming file and
 *     offset, or with force_recovery skip to the next good record and
 *     count the region. Version 1 records say nothing about syncs, so in a
 *     version 1 segment a bad region followed by good records is always
 *     treated as corruption.
 *
 * A good record with the wrong LSN is corruption (a write cannot tear into
 * a valid checksum); force_recovery accepts a forward jump and drops a
 * backward one.
 *
 * A torn tail followed by preallocated zeros is cut with them; the cursor
 * also reports the length up to its last nonzero byte for the log line.
 *
 * A bit flip inside the last record, or inside a region written after the
 * last fdatasync, looks exactly like a torn write and is cut as one: the
 * log can only promise that a damaged record is never loaded, not that it
 * can always tell damage from a crash.
 *
 * Not done here: no compression, no knowledge of what a payload means.
 */
#include "wal/wal_int.h"

#include <inttypes.h>
#include <stdio.h>
#include <xxhash.h>

void fm_wal_segment_name(char out[FM_SEG_NAME_CAP], uint64_t first_lsn)
{
    snprintf(out, FM_SEG_NAME_CAP, "%016" PRIx64 ".wal", first_lsn);
}

size_t fm_wal_segment_header_len(size_t schema_len)
{
    return FM_SEG_FIXED + schema_len + FM_SEG_SUM_LEN;
}

void fm_wal_segment_header_encode(uint8_t *out, uint64_t first_lsn,
                                  const uint8_t *schema, size_t schema_len,
                                  int64_t created_us)
{
    FM_ASSERT(schema_len <= FM_WAL_SCHEMA_MAX);
    memcpy(out + FM_SEG_OFF_MAGIC, FM_SEG_MAGIC, FM_SEG_MAGIC_LEN);
    fm_store_le32(out + FM_SEG_OFF_VERSION, FM_SEG_VERSION);
    fm_store_le32(out + FM_SEG_OFF_SCHEMA_LEN, (uint32_t)schema_len);
    fm_store_le64(out + FM_SEG_OFF_FIRST_LSN, first_lsn);
    fm_store_le64(out + FM_SEG_OFF_CREATED, (uint64_t)created_us);
    if (schema_len > 0)
        memcpy(out + FM_SEG_FIXED, schema, schema_len);
    uint64_t sum = XXH3_64bits(out, FM_SEG_FIXED + schema_len);
    fm_store_le64(out + FM_SEG_FIXED + schema_len, sum);
}

fm_status fm_wal_segment_header_decode(const uint8_t *data, size_t len,
                                       const char *name, const uint8_t *schema,
                                       size_t schema_len,
                                       struct fm_wal_segment_header *out,
                                       struct fm_error *err)
{
    if (len < FM_SEG_FIXED + FM_SEG_SUM_LEN)
        return fm_error_set(err, FM_ERR_CORRUPT,
                            "wal segment header truncated in %s at offset 0 "
                            "(%zu bytes)",
                            name, len);
    if (memcmp(data + FM_SEG_OFF_MAGIC, FM_SEG_MAGIC, FM_SEG_MAGIC_LEN) != 0)
        return fm_error_set(err, FM_ERR_CORRUPT,
                            "bad wal segment magic in %s at offset 0", name);
    uint32_t version = fm_load_le32(data + FM_SEG_OFF_VERSION);
    if (version != FM_SEG_VERSION && version != FM_SEG_VERSION_V1)
        return fm_error_set(err, FM_ERR_CORRUPT,
                            "unsupported wal segment version %u in %s at "
                            "offset %d",
                            version, name, FM_SEG_OFF_VERSION);
    size_t n = fm_load_le32(data + FM_SEG_OFF_SCHEMA_LEN);
    if (n > FM_WAL_SCHEMA_MAX || fm_wal_segment_header_len(n) > len)
        return fm_error_set(err, FM_ERR_CORRUPT,
                            "bad schema length %zu in wal segment header of "
                            "%s at offset %d",
                            n, name, FM_SEG_OFF_SCHEMA_LEN);
    uint64_t sum = fm_load_le64(data + FM_SEG_FIXED + n);
    if (XXH3_64bits(data, FM_SEG_FIXED + n) != sum)
        return fm_error_set(err, FM_ERR_CORRUPT,
                            "wal segment header checksum mismatch in %s at "
                            "offset %zu",
                            name, (size_t)FM_SEG_FIXED + n);
    if (schema != NULL &&
        (n != schema_len || memcmp(data + FM_SEG_FIXED, schema, n) != 0))
        return fm_error_set(err, FM_ERR_SCHEMA,
                            "wal segment %s was written under another schema "
                            "(%zu bytes of schema text, expected %zu); start "
                            "with the schema it was written with",
                            name, n, schema_len);
    out->first_lsn = fm_load_le64(data + FM_SEG_OFF_FIRST_LSN);
    out->schema = data + FM_SEG_FIXED;
    out->schema_len = n;
    out->header_len = fm_wal_segment_header_len(n);
    out->version = version;
    out->rec_hdr_len =
        version == FM_SEG_VERSION_V1 ? FM_REC_HDR_V1 : (size_t)FM_REC_HDR;
    return FM_OK;
}

uint64_t fm_wal_record_sum(const uint8_t *hdr, size_t sum_off,
                           const uint8_t *payload, size_t len)
{
    uint64_t seed = XXH3_64bits(hdr, sum_off);
    return XXH3_64bits_withSeed(payload, len, seed);
}

void fm_wal_record_header_encode(uint8_t *hdr, uint64_t lsn,
                                 uint64_t synced_lsn, const uint8_t *payload,
                                 size_t len)
{
    FM_ASSERT(len <= FM_WAL_PAYLOAD_MAX);
    FM_ASSERT(synced_lsn < lsn);
    uint64_t unsynced = lsn - synced_lsn;
    if (unsynced > FM_REC_UNSYNCED_UNKNOWN)
        unsynced = FM_REC_UNSYNCED_UNKNOWN;
    fm_store_le32(hdr + FM_REC_OFF_MAGIC, FM_REC_MAGIC);
    fm_store_le32(hdr + FM_REC_OFF_LEN, (uint32_t)len);
    fm_store_le64(hdr + FM_REC_OFF_LSN, lsn);
    fm_store_le32(hdr + FM_REC_OFF_UNSYNCED, (uint32_t)unsynced);
    fm_store_le64(hdr + FM_REC_OFF_SUM,
                  fm_wal_record_sum(hdr, FM_REC_OFF_SUM, payload, len));
}

/* A good record's header fields. */
struct good_rec {
    uint64_t lsn;
    uint64_t synced_lsn; /* 0 when unknown (version 1, or too far back) */
    size_t len;          /* payload bytes */
};

/* True when a good record starts at p (avail bytes to the end of file). */
static bool record_is_good(const struct fm_wal_cursor *c, const uint8_t *p,
                           size_t avail, struct good_rec *out)
{
    bool v1 = c->rec_hdr == FM_REC_HDR_V1;
    uint32_t magic = v1 ? FM_REC_MAGIC_V1 : FM_REC_MAGIC;
    if (avail < c->rec_hdr || fm_load_le32(p) != magic)
        return false;
    size_t n = fm_load_le32(p + FM_REC_OFF_LEN);
    if (n > FM_WAL_PAYLOAD_MAX || n > avail - c->rec_hdr)
        return false;
    size_t sum_off = c->rec_hdr - 8;
    if (fm_wal_record_sum(p, sum_off, p + c->rec_hdr, n) !=
        fm_load_le64(p + sum_off))
        return false;
    out->lsn = fm_load_le64(p + FM_REC_OFF_LSN);
    out->len = n;
    out->synced_lsn = 0;
    if (!v1) {
        uint64_t d = fm_load_le32(p + FM_REC_OFF_UNSYNCED);
        if (d < FM_REC_UNSYNCED_UNKNOWN && d <= out->lsn)
            out->synced_lsn = out->lsn - d;
    }
    return true;
}

/* Finds the next good record at or after from whose LSN is acceptable. */
static bool resync(const struct fm_wal_cursor *c, size_t from, size_t *at_out,
                   struct good_rec *rec_out)
{
    const uint8_t first =
        (c->rec_hdr == FM_REC_HDR_V1 ? FM_REC_MAGIC_V1 : FM_REC_MAGIC) & 0xff;
    size_t q = from;
    while (q + c->rec_hdr <= c->len) {
        const uint8_t *hit = memchr(c->data + q, first, c->len - q);
        if (hit == NULL)
            return false;
        q = (size_t)(hit - c->data);
        if (record_is_good(c, hit, c->len - q, rec_out) &&
            rec_out->lsn >= c->expect_lsn) {
            *at_out = q;
            return true;
        }
        q++;
    }
    return false;
}

/*
 * Counts the good records from the one at q (found by resync) to the end of
 * the segment, and tells whether any of them was framed after the record
 * expected at c->pos had been made durable.
 */
static bool damage_was_synced(const struct fm_wal_cursor *c, size_t q,
                              struct good_rec rec, uint64_t *n_good_out)
{
    if (c->rec_hdr == FM_REC_HDR_V1)
        return true; /* version 1 cannot tell: the old rule, corruption */
    uint64_t n = 0;
    for (;;) {
        n++;
        if (rec.synced_lsn >= c->expect_lsn)
            return true;
        if (!resync(c, q + c->rec_hdr + rec.len, &q, &rec))
            break;
    }
    *n_good_out = n;
    return false;
}

/* True when p[0..n) is all zeros: the preallocated tail. */
static bool all_zero(const uint8_t *p, size_t n)
{
    return n == 0 || (p[0] == 0 && memcmp(p, p + 1, n - 1) == 0);
}

/* Length of p[0..n) up to and including its last nonzero byte. */
static size_t nonzero_len(const uint8_t *p, size_t n)
{
    while (n > 0 && p[n - 1] == 0)
        n--;
    return n;
}

static void note_bad(struct fm_wal_cursor *c)
{
    if (c->first_bad < 0)
        c->first_bad = (int64_t)c->pos;
}

/* A good record whose LSN is not the expected one. */
static fm_status wrong_lsn(struct fm_wal_cursor *c, uint64_t lsn, size_t n,
                           struct fm_error *err)
{
    note_bad(c);
    if (!c->force)
        return fm_error_set(err, FM_ERR_CORRUPT,
                            "wal record lsn %" PRIu64 " where %" PRIu64
                            " was expected in %s at offset %zu",
                            lsn, c->expect_lsn, c->name, c->pos);
    c->n_skipped++;
    if (lsn > c->expect_lsn) {
        c->n_lsns_missing += lsn - c->expect_lsn;
        c->expect_lsn = lsn;
    } else {
        c->pos += c->rec_hdr + n;
    }
    return FM_OK;
}

/* Ends the records at c->pos: [pos, len) is cut as torn. */
static void end_torn(struct fm_wal_cursor *c, bool *end_out)
{
    c->torn = true;
    c->torn_len = nonzero_len(c->data + c->pos, c->len - c->pos);
    c->valid_end = c->pos;
    *end_out = true;
}

/* Bytes at c->pos that are not a good record. */
static fm_status bad_bytes(struct fm_wal_cursor *c, bool *end_out,
                           struct fm_error *err)
{
    size_t next;
    struct good_rec rec;
    if (!resync(c, c->pos + 1, &next, &rec)) {
        if (c->is_last) {
            end_torn(c, end_out);
            return FM_OK;
        }
        note_bad(c);
        if (!c->force)
            return fm_error_set(err, FM_ERR_CORRUPT,
                                "bad wal record in %s at offset %zu (not the "
                                "last segment, so not a torn write)",
                                c->name, c->pos);
        c->n_skipped++;
        c->pos = c->len;
        return FM_OK;
    }
    /* Every LSN the region can have held is in a snapshot: no one needs
     * it, whatever damaged it (an fsync that failed before the snapshot
     * that saved its records, and a crash that then lost its pages). */
    if (c->covered_lsn > 0 && rec.lsn <= c->covered_lsn + 1) {
        c->n_covered++;
        c->covered_bytes += next - c->pos;
        c->expect_lsn = rec.lsn;
        c->pos = next;
        return FM_OK;
    }
    uint64_t n_good = 0;
    if (c->is_last && !damage_was_synced(c, next, rec, &n_good)) {
        c->n_torn_records = n_good;
        end_torn(c, end_out);
        return FM_OK;
    }
    note_bad(c);
    if (!c->force)
        return fm_error_set(err, FM_ERR_CORRUPT,
                            "bad wal record in %s at offset %zu followed by "
                            "valid records from offset %zu (use "
                            "--force-recovery to skip it)",
                            c->name, c->pos, next);
    /* One region, one skip: the LSNs it swallowed are counted here. */
    c->n_skipped++;
    c->n_lsns_missing += rec.lsn - c->expect_lsn;
    c->expect_lsn = rec.lsn;
    c->pos = next;
    return FM_OK;
}

fm_status fm_wal_cursor_next(struct fm_wal_cursor *c,
                             struct fm_wal_record *rec_out, bool *end_out,
                             struct fm_error *err)
{
    FM_ASSERT(c->pos <= c->len);
    *end_out = false;
    while (c->pos < c->len) {
        struct good_rec rec;
        fm_status st;
        if (!record_is_good(c, c->data + c->pos, c->len - c->pos, &rec)) {
            if (all_zero(c->data + c->pos, c->len - c->pos))
                break;
            st = bad_bytes(c, end_out, err);
            if (st != FM_OK || *end_out)
                return st;
            continue;
        }
        if (rec.lsn != c->expect_lsn) {
            st = wrong_lsn(c, rec.lsn, rec.len, err);
            if (st != FM_OK)
                return st;
            continue;
        }
        rec_out->lsn = rec.lsn;
        rec_out->payload = c->data + c->pos + c->rec_hdr;
        rec_out->len = rec.len;
        c->pos += c->rec_hdr + rec.len;
        c->expect_lsn++;
        c->n_records++;
        return FM_OK;
    }
    c->valid_end = c->pos;
    *end_out = true;
    return FM_OK;
}
