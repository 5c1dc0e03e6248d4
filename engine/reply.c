/*
 * reply.c: the reply buffer that commands write their results into.
 *
 * A command's result is a short sequence of typed values (an integer, a
 * bulk string, an array of rows...). They are appended to one growable
 * buffer, which a connection reuses for every command, already encoded as
 * RESP2 (SPEC section 3): the server hands the bytes to the socket as they
 * are, and the shell and the tests read them back with a cursor. RESP2 is
 * typed and self-delimiting, so it serves as the engine's own format as
 * well as the wire's, and a reply costs one pass instead of a typed buffer
 * and a second pass that encodes it:
 *
 *   value    bytes
 *   NIL      "$-1" CRLF
 *   INT      ":" decimal CRLF
 *   BULK     "$" length CRLF, the bytes, CRLF
 *   STATUS   "+" text CRLF                 (CR and LF in text become spaces)
 *   ERROR    "-" CODE " " message CRLF     (the same)
 *   ARRAY    "*" count CRLF, then count values (arrays may nest)
 *
 * An array whose count is not known when it starts (FIND streams its rows)
 * is written with count 0 and patched at the end; a count with more digits
 * than the placeholder moves the array's body up once, which costs less
 * than the rows it moves took to write.
 *
 * Memory failure does not propagate as a status through every appender:
 * the reply is marked failed, further appends are ignored, and the reply
 * reads as a single OOM error (fm_reply_bytes, the cursor). A command that
 * produced a failed reply has not lost data, since replies are written
 * after the data change is decided.
 *
 * A reply may have a byte budget (limit, set by the caller: the server
 * gives each command what is left of its client's output buffer limit). An
 * append that takes the reply past it fails the reply the same way, with
 * over_limit set, and is taken back, so buf never holds more than limit
 * bytes; the scans that produce rows (query.c) stop as soon as the reply
 * has failed, so a result much larger than the budget costs about the
 * budget in memory and not the whole result. The check is one comparison
 * per append, made once the value is written, when its exact size is
 * known (a value's room is reserved from an upper bound): limit - 1 wraps
 * to SIZE_MAX when limit is 0, so "no limit" needs no second test. The
 * value that crosses the limit was written into reserved room first, so
 * the buffer may grow by one value past the limit, never more.
 *
 * The cursor reads an error's status back from its code word. Codes that
 * several statuses share ("ERR") read back as the first of them; the exact
 * status is what fm_engine_exec returns.
 */
#include "engine/fermata.h"

#include <stdio.h>
#include <string.h>

#include "engine/engine_int.h"

/* ":" or "*" or "$", 20 digits and a sign, CRLF. */
#define NUM_MAX FM_REPLY_NUM_MAX
_Static_assert(NUM_MAX >= 1 + 20 + 1 + 2, "room for a prefixed int64");

static const char oom_reply[] =
    "-OOM out of memory while building the reply\r\n";
static const char over_limit_reply[] =
    "-LIMIT the reply is larger than its limit\r\n";

void fm_reply_reset(struct fm_reply *r)
{
    r->buf.len = 0;
    r->failed = false;
    r->over_limit = false;
}

void fm_reply_fini(struct fm_reply *r)
{
    fm_buf_fini(&r->buf);
    r->limit = 0;
    r->failed = false;
    r->over_limit = false;
}

void fm_reply_fail_over_limit(struct fm_reply *r)
{
    r->failed = true;
    r->over_limit = true;
}

void fm_reply_advance_over(struct fm_reply *r, size_t n)
{
    r->buf.len -= n;
    fm_reply_fail_over_limit(r);
}

void fm_reply_truncate(struct fm_reply *r, size_t len)
{
    FM_ASSERT(len <= r->buf.len || r->failed);
    r->buf.len = len;
    r->failed = false;
    r->over_limit = false;
}

uint8_t *fm_reply_room(struct fm_reply *r, size_t need)
{
    if (r->failed)
        return NULL;
    if (r->buf.cap - r->buf.len < need &&
        fm_buf_reserve(&r->buf, need) != FM_OK) {
        r->failed = true;
        return NULL;
    }
    return r->buf.data + r->buf.len;
}

size_t fm_reply_put_num(uint8_t *p, char prefix, int64_t v)
{
    p[0] = (uint8_t)prefix;
    size_t n = 1 + fm_format_i64((char *)p + 1, v);
    p[n] = '\r';
    p[n + 1] = '\n';
    return n + 2;
}

size_t fm_reply_put_bulk(uint8_t *p, const void *s, size_t len)
{
    size_t n = fm_reply_put_num(p, '$', (int64_t)len);
    if (len > 0)
        memcpy(p + n, s, len);
    n += len;
    p[n] = '\r';
    p[n + 1] = '\n';
    return n + 2;
}

void fm_reply_nil(struct fm_reply *r)
{
    uint8_t *p = fm_reply_room(r, 5);
    if (p == NULL)
        return;
    memcpy(p, "$-1\r\n", 5);
    fm_reply_advance(r, 5);
}

void fm_reply_int(struct fm_reply *r, int64_t v)
{
    uint8_t *p = fm_reply_room(r, NUM_MAX);
    if (p != NULL)
        fm_reply_advance(r, fm_reply_put_num(p, ':', v));
}

void fm_reply_bulk(struct fm_reply *r, const void *s, size_t len)
{
    if (len > SIZE_MAX - 2 * NUM_MAX) {
        r->failed = true;
        return;
    }
    uint8_t *p = fm_reply_room(r, NUM_MAX + len + 2);
    if (p != NULL)
        fm_reply_advance(r, fm_reply_put_bulk(p, s, len));
}

void fm_reply_cstr(struct fm_reply *r, const char *s)
{
    fm_reply_bulk(r, s, strlen(s));
}

/* Appends prefix, then the pieces with CR and LF turned into spaces, CRLF. */
static void put_line(struct fm_reply *r, char prefix, const char *a,
                     size_t a_len, const char *b, size_t b_len)
{
    if (b_len > SIZE_MAX - a_len - 8) {
        r->failed = true;
        return;
    }
    uint8_t *p = fm_reply_room(r, 1 + a_len + b_len + 2);
    if (p == NULL)
        return;
    size_t n = 0;
    p[n++] = (uint8_t)prefix;
    memcpy(p + n, a, a_len);
    n += a_len;
    for (size_t i = 0; i < b_len; i++)
        p[n++] = (b[i] == '\r' || b[i] == '\n') ? ' ' : (uint8_t)b[i];
    p[n++] = '\r';
    p[n++] = '\n';
    fm_reply_advance(r, n);
}

void fm_reply_status(struct fm_reply *r, const char *s)
{
    put_line(r, '+', "", 0, s, strlen(s));
}

void fm_reply_error(struct fm_reply *r, fm_status st, const char *msg)
{
    FM_ASSERT(st != FM_OK);
    char code[32];
    size_t code_len =
        (size_t)snprintf(code, sizeof(code), "%s ", fm_status_code(st));
    FM_ASSERT(code_len < sizeof(code));
    if (msg == NULL || msg[0] == '\0')
        msg = fm_status_message(st);
    put_line(r, '-', code, code_len, msg, strlen(msg));
}

void fm_reply_array(struct fm_reply *r, size_t n)
{
    if (n > INT64_MAX) {
        r->failed = true;
        return;
    }
    uint8_t *p = fm_reply_room(r, NUM_MAX);
    if (p != NULL)
        fm_reply_advance(r, fm_reply_put_num(p, '*', (int64_t)n));
}

size_t fm_reply_mark(const struct fm_reply *r)
{
    if (r->failed)
        return 0;
    FM_ASSERT(r->buf.len >= 4 &&
              memcmp(r->buf.data + r->buf.len - 4, "*0\r\n", 4) == 0);
    return r->buf.len - 4;
}

void fm_reply_patch_array(struct fm_reply *r, size_t mark, size_t n)
{
    if (r->failed)
        return;
    FM_ASSERT(mark < r->buf.len && r->buf.data[mark] == '*');
    const uint8_t *crlf = memchr(r->buf.data + mark, '\n', r->buf.len - mark);
    FM_ASSERT(crlf != NULL);
    size_t old_len = (size_t)(crlf + 1 - (r->buf.data + mark));
    uint8_t head[NUM_MAX];
    size_t new_len = fm_reply_put_num(head, '*', (int64_t)n);
    if (new_len > old_len) {
        /* Only ever grows: the placeholder is the shortest header, 0. */
        if (fm_reply_room(r, new_len - old_len) == NULL)
            return;
        memmove(r->buf.data + mark + new_len, r->buf.data + mark + old_len,
                r->buf.len - mark - old_len);
        fm_reply_advance(r, new_len - old_len);
        if (r->failed)
            return; /* the longer count took it past its limit */
    }
    FM_ASSERT(new_len >= old_len);
    memcpy(r->buf.data + mark, head, new_len);
}

void fm_reply_append_all(struct fm_reply *r, const struct fm_reply *src)
{
    if (r->failed)
        return;
    if (src->failed) {
        r->failed = true;
        r->over_limit = src->over_limit;
        return;
    }
    if (src->buf.len == 0)
        return; /* fm_reply_advance needs a length above 0 */
    uint8_t *p = fm_reply_room(r, src->buf.len);
    if (p == NULL)
        return;
    memcpy(p, src->buf.data, src->buf.len);
    fm_reply_advance(r, src->buf.len);
}

bool fm_reply_is_error(const struct fm_reply *r)
{
    return r->failed || (r->buf.len > 0 && r->buf.data[0] == '-');
}

void fm_reply_bytes(const struct fm_reply *r, const uint8_t **p_out,
                    size_t *len_out)
{
    if (r->over_limit) {
        *p_out = (const uint8_t *)over_limit_reply;
        *len_out = sizeof(over_limit_reply) - 1;
    } else if (r->failed) {
        *p_out = (const uint8_t *)oom_reply;
        *len_out = sizeof(oom_reply) - 1;
    } else {
        *p_out = r->buf.data;
        *len_out = r->buf.len;
    }
}

void fm_reply_cursor_init(struct fm_reply_cursor *c, const struct fm_reply *r)
{
    fm_reply_bytes(r, &c->p, &c->len);
    c->off = 0;
}

/* The status whose code word is code[0..len). */
static fm_status status_of_code(const uint8_t *code, size_t len)
{
    for (int st = 1; st < FM_STATUS_COUNT_; st++) {
        const char *w = fm_status_code((fm_status)st);
        if (strlen(w) == len && memcmp(w, code, len) == 0)
            return (fm_status)st;
    }
    return FM_ERR_SYNTAX;
}

/* Parses the decimal in p[0..len), which this file wrote. */
static int64_t parse_num(const uint8_t *p, size_t len)
{
    bool neg = len > 0 && p[0] == '-';
    uint64_t u = 0;
    for (size_t i = neg; i < len; i++) {
        FM_ASSERT(p[i] >= '0' && p[i] <= '9');
        u = u * 10 + (uint64_t)(p[i] - '0');
    }
    return neg ? (int64_t)(0 - u) : (int64_t)u;
}

bool fm_reply_next(struct fm_reply_cursor *c, struct fm_reply_value *out)
{
    memset(out, 0, sizeof(*out));
    if (c->off >= c->len)
        return false;
    const uint8_t *p = c->p + c->off;
    const uint8_t *cr = memchr(p, '\r', c->len - c->off);
    FM_ASSERT(cr != NULL && cr + 1 < c->p + c->len && cr[1] == '\n');
    size_t line = (size_t)(cr - p);
    c->off += line + 2;
    switch (p[0]) {
    case ':':
        out->type = FM_REPLY_INT;
        out->i = parse_num(p + 1, line - 1);
        break;
    case '*':
        out->type = FM_REPLY_ARRAY;
        out->n = (size_t)parse_num(p + 1, line - 1);
        break;
    case '+':
        out->type = FM_REPLY_STATUS;
        out->str = p + 1;
        out->len = line - 1;
        break;
    case '-': {
        const uint8_t *sp = memchr(p + 1, ' ', line - 1);
        size_t code_len = sp != NULL ? (size_t)(sp - (p + 1)) : line - 1;
        out->type = FM_REPLY_ERROR;
        out->st = status_of_code(p + 1, code_len);
        out->str = sp != NULL ? sp + 1 : p + line;
        out->len = sp != NULL ? (size_t)(cr - (sp + 1)) : 0;
        break;
    }
    case '$': {
        int64_t n = parse_num(p + 1, line - 1);
        if (n < 0) {
            out->type = FM_REPLY_NIL;
            break;
        }
        FM_ASSERT((uint64_t)n <= c->len - c->off - 2);
        out->type = FM_REPLY_BULK;
        out->str = c->p + c->off;
        out->len = (size_t)n;
        c->off += (size_t)n + 2;
        break;
    }
    default:
        FM_ASSERT(!"corrupt reply buffer");
    }
    return true;
}
