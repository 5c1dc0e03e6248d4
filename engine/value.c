/*
 * value.c: parsing and formatting of column values, and the two binary
 * forms values take inside the engine.
 *
 * Text forms. Integers are decimal with an optional sign; leading zeros are
 * accepted because redis-benchmark's __rand_int__ produces 000000012345.
 * Datetimes are ISO-8601 in UTC with an optional fraction of one to six
 * digits; the output always carries six. Conversion between civil dates and
 * day numbers uses the proleptic Gregorian calendar (Howard Hinnant's
 * days_from_civil), so no libc time zone state is touched.
 *
 * Key encoding. Indexes compare keys with memcmp, so every value is encoded
 * so that byte order equals value order, and self-delimiting so that a
 * composite key is the plain concatenation of its columns and "all keys
 * whose first column is X" is a byte prefix:
 *
 *   NULL                      0x05
 *   integer v >= 0            0x80+n, then the n = 0..8 significant bytes
 *                             of v, big-endian (0 is the lone byte 0x80)
 *   integer v < 0             0x7f-n, then the n low bytes of v, where n
 *                             is the significant byte count of ~v
 *   string                    0x10, the bytes with 0x00 written as 0x00 0xff,
 *                             then the terminator 0x00 0x00
 *
 * Small integers, the common case for ids and counts, take 2 to 4 bytes,
 * which lets the B+tree's 8-byte key prefix hold a whole two-column key.
 *
 * Record encoding uses LEB128 varints; signed values are zigzag-mapped
 * first so that small negative numbers stay short.
 */
#include "engine/value.h"

#include <stdio.h>

bool fm_parse_int64(const uint8_t *p, size_t len, int64_t *out)
{
    size_t i = 0;
    bool neg = false;
    uint64_t v = 0;
    if (len > 0 && (p[0] == '-' || p[0] == '+')) {
        neg = p[0] == '-';
        i = 1;
    }
    if (i == len)
        return false;
    for (; i < len; i++) {
        if (p[i] < '0' || p[i] > '9')
            return false;
        uint64_t d = (uint64_t)(p[i] - '0');
        if (v > (UINT64_MAX - d) / 10)
            return false;
        v = v * 10 + d;
    }
    if (neg) {
        if (v > (uint64_t)INT64_MAX + 1)
            return false;
        *out = v == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)v;
    } else {
        if (v > (uint64_t)INT64_MAX)
            return false;
        *out = (int64_t)v;
    }
    return true;
}

static int64_t days_from_civil(int64_t y, int64_t m, int64_t d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static void civil_from_days(int64_t z, int64_t *y, int64_t *m, int64_t *d)
{
    z += 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    int64_t doe = z - era * 146097;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    int64_t mp = (5 * doy + 2) / 153;
    *d = doy - (153 * mp + 2) / 5 + 1;
    *m = mp < 10 ? mp + 3 : mp - 9;
    *y = yoe + era * 400 + (*m <= 2);
}

static bool digits(const uint8_t *p, size_t n, int64_t *out)
{
    int64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9')
            return false;
        v = v * 10 + (p[i] - '0');
    }
    *out = v;
    return true;
}

static bool is_leap(int64_t y)
{
    return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

bool fm_parse_datetime(const uint8_t *p, size_t len, int64_t *out)
{
    static const int mdays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    int64_t y, mo, d, h, mi, s, frac = 0;
    /* "YYYY-MM-DDTHH:MM:SS" is 19 bytes, then [.f{1,6}] and "Z". */
    if (len < 20 || p[len - 1] != 'Z')
        return false;
    if (p[4] != '-' || p[7] != '-' || (p[10] != 'T' && p[10] != 't') ||
        p[13] != ':' || p[16] != ':')
        return false;
    if (!digits(p, 4, &y) || !digits(p + 5, 2, &mo) || !digits(p + 8, 2, &d) ||
        !digits(p + 11, 2, &h) || !digits(p + 14, 2, &mi) ||
        !digits(p + 17, 2, &s))
        return false;
    size_t rest = len - 20; /* bytes between the seconds and the Z */
    if (rest > 0) {
        if (rest < 2 || rest > 7 || p[19] != '.' ||
            !digits(p + 20, rest - 1, &frac))
            return false;
        for (size_t i = rest - 1; i < 6; i++)
            frac *= 10;
    }
    if (y < 1 || mo < 1 || mo > 12 || d < 1 || h > 23 || mi > 59 || s > 59)
        return false;
    int64_t dim = mdays[mo - 1] + (mo == 2 && is_leap(y));
    if (d > dim)
        return false;
    int64_t days = days_from_civil(y, mo, d);
    *out = ((days * 24 + h) * 60 + mi) * 60 * 1000000 + s * 1000000 + frac;
    return true;
}

/* Writes v (0 <= v < 10^n, n even) as exactly n decimal digits. */
static char *put_digits(char *o, int64_t v, int n)
{
    for (int i = n - 2; i >= 0; i -= 2) {
        memcpy(o + i, fm_digit_pairs + 2 * (v % 100), 2);
        v /= 100;
    }
    return o + n;
}

/* Splits us into whole days, seconds of the day and microseconds. */
static void split_time(int64_t us, int64_t *days, int64_t *sod, int64_t *frac)
{
    int64_t secs = us >= 0 ? us / 1000000 : -((-us + 999999) / 1000000);
    *frac = us - secs * 1000000;
    *days = secs >= 0 ? secs / 86400 : -((-secs + 86399) / 86400);
    *sod = secs - *days * 86400;
}

/* Writes "THH:MM:SS.ffffffZ" and a NUL at o; returns the end. */
static char *put_time(char *o, int64_t sod, int64_t frac)
{
    *o++ = 'T';
    o = put_digits(o, sod / 3600, 2);
    *o++ = ':';
    o = put_digits(o, sod / 60 % 60, 2);
    *o++ = ':';
    o = put_digits(o, sod % 60, 2);
    *o++ = '.';
    o = put_digits(o, frac, 6);
    *o++ = 'Z';
    *o = '\0';
    return o;
}

size_t fm_format_datetime_cached(int64_t us, struct fm_datetime_cache *c,
                                 char *out)
{
    int64_t days, sod, frac;
    split_time(us, &days, &sod, &frac);
    if (!c->valid || c->day != days) {
        char full[FM_DATETIME_TEXT_CAP];
        if (fm_format_datetime(us, full) != 27)
            return fm_format_datetime(us, out); /* a year outside 0..9999 */
        memcpy(c->text, full, 10);
        c->text[10] = '\0';
        c->day = days;
        c->valid = true;
    }
    memcpy(out, c->text, 10);
    return (size_t)(put_time(out + 10, sod, frac) - out);
}

size_t fm_format_datetime(int64_t us, char *out)
{
    int64_t days, sod, frac;
    int64_t y, m, d;
    split_time(us, &days, &sod, &frac);
    civil_from_days(days, &y, &m, &d);
    if (y < 0 || y > 9999) {
        /* Not from the parser (years 1 to 9999); printed as it is. */
        int n = snprintf(out, FM_DATETIME_TEXT_CAP,
                         "%lld-%02lld-%02lldT%02lld:%02lld:%02lld.%06lldZ",
                         (long long)y, (long long)m, (long long)d,
                         (long long)(sod / 3600), (long long)(sod / 60 % 60),
                         (long long)(sod % 60), (long long)frac);
        return n < 0 ? 0 : (size_t)n;
    }
    /* The hot path of every row reply: no printf. */
    char *o = put_digits(out, y, 4);
    *o++ = '-';
    o = put_digits(o, m, 2);
    *o++ = '-';
    o = put_digits(o, d, 2);
    return (size_t)(put_time(o, sod, frac) - out);
}

size_t fm_key_encode_int(int64_t v, uint8_t *out)
{
    uint64_t mag = v >= 0 ? (uint64_t)v : ~(uint64_t)v;
    size_t n = 0;
    while (n < 8 && (mag >> (8 * n)) != 0)
        n++;
    out[0] = v >= 0 ? (uint8_t)(0x80 + n) : (uint8_t)(0x7f - n);
    for (size_t i = 0; i < n; i++)
        out[1 + i] = (uint8_t)((uint64_t)v >> (8 * (n - 1 - i)));
    return n + 1;
}

fm_status fm_key_append(struct fm_buf *b, enum fm_type type,
                        const struct fm_value *v)
{
    uint8_t tmp[FM_KEY_INT_MAX];
    if (v->is_null)
        return fm_buf_push(b, 0x05);
    if (type != FM_TYPE_STRING)
        return fm_buf_append(b, tmp, fm_key_encode_int(v->i, tmp));
    /* Worst case every byte is a zero and doubles. */
    size_t need;
    if (fm_mul_overflows(v->len, 2, &need) || fm_add_overflows(need, 3, &need))
        return FM_ERR_LIMIT;
    fm_status st = fm_buf_reserve(b, need);
    if (st != FM_OK)
        return st;
    uint8_t *o = b->data + b->len;
    *o++ = 0x10;
    for (size_t i = 0; i < v->len; i++) {
        *o++ = v->s[i];
        if (v->s[i] == 0)
            *o++ = 0xff;
    }
    *o++ = 0;
    *o++ = 0;
    b->len = (size_t)(o - b->data);
    return FM_OK;
}

bool fm_key_successor(uint8_t *key, size_t *len)
{
    while (*len > 0 && key[*len - 1] == 0xff)
        (*len)--;
    if (*len == 0)
        return false;
    key[*len - 1]++;
    return true;
}
