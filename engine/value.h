/*
 * value.h: column values, their text forms, and byte-comparable key
 * encoding.
 *
 * Integers are int64; datetimes are int64 microseconds since the Unix epoch,
 * UTC, written as ISO-8601 "2026-11-25T04:07:32.123456Z" (SPEC 1); strings
 * are byte strings of at most FM_STRING_MAX bytes.
 */
#ifndef FM_VALUE_H
#define FM_VALUE_H

#include "engine/schema.h"

/* A value borrowed from a row, a request or a schema. */
struct fm_value {
    bool is_null;
    int64_t i;        /* integer or datetime */
    const uint8_t *s; /* string bytes, borrowed */
    size_t len;
};

/*
 * Parses a decimal integer: optional sign, digits (leading zeros allowed, as
 * redis-benchmark sends them). False on anything else or on overflow.
 */
bool fm_parse_int64(const uint8_t *p, size_t len, int64_t *out);

/*
 * Parses "YYYY-MM-DDTHH:MM:SS[.f{1,6}]Z" (years 0001 to 9999) into
 * microseconds since the epoch. False on anything else.
 */
bool fm_parse_datetime(const uint8_t *p, size_t len, int64_t *out);

/* Longest text fm_format_datetime writes, NUL included. */
#define FM_DATETIME_TEXT_CAP 32

/* Writes the ISO-8601 form with six fraction digits; returns its length. */
size_t fm_format_datetime(int64_t us, char *out);

/*
 * The same with a one-day cache owned by the caller: rows written on one day
 * share the date part, which is the expensive half of the conversion.
 * Zero-filled is an empty cache.
 */
struct fm_datetime_cache {
    int64_t day; /* days since the epoch of text */
    bool valid;
    char text[11]; /* "YYYY-MM-DD" and a NUL */
};
size_t fm_format_datetime_cached(int64_t us, struct fm_datetime_cache *c,
                                 char *out);

/*
 * Byte-comparable key encoding (docs/storage.md): memcmp order of encoded
 * keys equals the order of values, NULL first; encodings are
 * self-delimiting so a composite key is the concatenation of its columns.
 */
#define FM_KEY_INT_MAX 9 /* bytes of the longest integer encoding */

/* Appends the encoding of v for a column of this type. FM_ERR_NOMEM. */
fm_status fm_key_append(struct fm_buf *b, enum fm_type type,
                        const struct fm_value *v);

/* Writes the encoding of integer v to out (FM_KEY_INT_MAX bytes of room);
 * returns its length. */
size_t fm_key_encode_int(int64_t v, uint8_t *out);

/*
 * Replaces key[0..*len) with the smallest byte string greater than every
 * string that has it as a prefix. False when none exists (all 0xff).
 */
bool fm_key_successor(uint8_t *key, size_t *len);

/* Varints for row records: LEB128 of unsigned and zigzag of signed. */
#define FM_VARINT_MAX 10

/* Writes v as a varint to out (FM_VARINT_MAX bytes of room); its length. */
static inline size_t fm_varint_put(uint8_t *out, uint64_t v)
{
    size_t n = 0;
    while (v >= 0x80) {
        out[n++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    out[n++] = (uint8_t)v;
    return n;
}

/* Reads a varint from p[0..len); its length, 0 if truncated or over 10
 * bytes. Inline: row decoding calls it for every column. */
static inline size_t fm_varint_get(const uint8_t *p, size_t len, uint64_t *out)
{
    if (len > 0 && p[0] < 0x80) {
        *out = p[0];
        return 1;
    }
    uint64_t v = 0;
    for (size_t i = 0; i < len && i < FM_VARINT_MAX; i++) {
        v |= (uint64_t)(p[i] & 0x7f) << (7 * i);
        if ((p[i] & 0x80) == 0) {
            *out = v;
            return i + 1;
        }
    }
    return 0;
}
static inline uint64_t fm_zigzag(int64_t v)
{
    return ((uint64_t)v << 1) ^ (uint64_t)(v >> 63);
}
static inline int64_t fm_unzigzag(uint64_t u)
{
    return (int64_t)(u >> 1) ^ -(int64_t)(u & 1);
}

#endif /* FM_VALUE_H */
