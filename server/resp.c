/*
 * resp.c: parsing requests and encoding replies (SPEC section 3).
 *
 * Requests come in two forms, chosen by the first byte of each request:
 *
 *   RESP2 (first byte '*'), what every Redis client library sends:
 *
 *     *<argc>\r\n  then argc times  $<len>\r\n<len bytes>\r\n
 *
 *   Inline, what a person types into telnet or nc: one line ended by "\n"
 *   (a "\r" before it is dropped), split into tokens on white space.
 *   "double quotes" take the escapes \" \\ \n \r \t \a \b and \xHH;
 *   'single quotes' are literal except for \'; a closing quote must be
 *   followed by white space or the end of the line. This is the grammar of
 *   Redis' sdssplitargs, so that what works in redis-cli works here.
 *
 * The parser never copies argument bytes. A RESP bulk argument is a
 * (offset, length) pair into the caller's buffer; an inline argument is
 * unescaped in place, which is safe because unescaping only ever shrinks
 * the text, so the write position never passes the read position.
 *
 * Split requests. A request may arrive in any number of pieces. The parser
 * keeps its position (state, pos, the arguments found so far) as offsets
 * from the request's first byte, and resumes from there when more bytes
 * arrive, so each byte is examined a bounded number of times: a RESP header
 * line of at most HEADER_MAX bytes may be rescanned, an inline line is
 * searched for its "\n" once, and a bulk body is not looked at until all of
 * it has arrived. Offsets rather than pointers let the caller move the
 * unparsed bytes between calls (compacting or growing its buffer).
 *
 * Limits (SPEC section 5) are checked before any memory is committed to
 * them: the '*' count against max_args before the argument arrays grow (and
 * they grow by doubling as arguments actually arrive, never to the announced
 * count at once), a bulk length against max_bulk_len as soon as its header
 * is read, an inline line against max_inline_len while its "\n" is still
 * missing. The query buffer limit is the caller's business.
 *
 * Errors are protocol errors (FM_ERR_SYNTAX) or limits (FM_ERR_LIMIT); the
 * message follows Redis' wording where Redis has one ("Protocol error:
 * unbalanced quotes in request"). The parser does not recover from them:
 * the stream is out of step, and the server closes the connection.
 *
 * Replies need no encoder: a struct fm_reply holds RESP2 bytes already
 * (engine/reply.c), which the server appends to the client's output.
 */
#include "server/resp.h"

#include <stdio.h>

enum {
    ST_START = 0,   /* at the first byte of a request */
    ST_MBULK = 1,   /* reading the "*<argc>" line */
    ST_BULKHDR = 2, /* reading a "$<len>" line */
    ST_BULK = 3,    /* waiting for a bulk body and its CRLF */
    ST_INLINE = 4,  /* searching for the end of an inline line */
};

/* "*" or "$", 19 digits, a sign and CRLF fit in this many bytes. */
#define HEADER_MAX 32

void fm_resp_parser_init(struct fm_resp_parser *p)
{
    memset(p, 0, sizeof(*p));
}

void fm_resp_parser_fini(struct fm_resp_parser *p)
{
    fm_free(p->arg_off);
    fm_free(p->arg_len);
    fm_free((void *)p->arg_ptr);
    memset(p, 0, sizeof(*p));
}

void fm_resp_parser_reset(struct fm_resp_parser *p)
{
    p->state = ST_START;
    p->pos = 0;
    p->n_expected = 0;
    p->bulk_len = 0;
    p->argc = 0;
}

bool fm_resp_parser_is_busy(const struct fm_resp_parser *p)
{
    return p->state != ST_START;
}

size_t fm_resp_parser_memory_bytes(const struct fm_resp_parser *p)
{
    return p->arg_cap * (2 * sizeof(size_t) + sizeof(uint8_t *));
}

/* Makes room for one more argument. */
static fm_status grow_args(struct fm_resp_parser *p, struct fm_error *err)
{
    if (p->argc < p->arg_cap)
        return FM_OK;
    size_t cap = p->arg_cap < 8 ? 8 : p->arg_cap * 2;
    size_t bytes;
    if (fm_mul_overflows(cap, sizeof(size_t), &bytes))
        return fm_error_set(err, FM_ERR_LIMIT, "too many arguments");
    size_t *off = fm_realloc(p->arg_off, cap * sizeof(size_t));
    if (off == NULL)
        goto fail_nomem;
    p->arg_off = off;
    size_t *len = fm_realloc(p->arg_len, cap * sizeof(size_t));
    if (len == NULL)
        goto fail_nomem;
    p->arg_len = len;
    const uint8_t **ptr =
        fm_realloc((void *)p->arg_ptr, cap * sizeof(uint8_t *));
    if (ptr == NULL)
        goto fail_nomem;
    p->arg_ptr = ptr;
    p->arg_cap = cap;
    return FM_OK;
fail_nomem:
    /* The arrays that did grow keep their contents; arg_cap still names
     * the size all three have, so nothing is lost. */
    return fm_error_set(err, FM_ERR_NOMEM, "out of memory reading a request");
}

static fm_status add_arg(struct fm_resp_parser *p, size_t off, size_t len,
                         struct fm_error *err)
{
    fm_status st = grow_args(p, err);
    if (st != FM_OK)
        return st;
    p->arg_off[p->argc] = off;
    p->arg_len[p->argc] = len;
    p->argc++;
    return FM_OK;
}

/* Hands out the complete request and readies the parser for the next. */
static void finish(struct fm_resp_parser *p, uint8_t *req, size_t req_len,
                   struct fm_resp_request *out)
{
    for (size_t i = 0; i < p->argc; i++)
        p->arg_ptr[i] = req + p->arg_off[i];
    out->argc = p->argc;
    out->argv = p->arg_ptr;
    out->argv_len = p->arg_len;
    out->req_len = req_len;
    fm_resp_parser_reset(p);
}

/*
 * Parses the decimal integer s[0..len), with an optional '-'. False for an
 * empty string, any other character or more than 18 digits, which keeps the
 * value well inside int64_t.
 */
static bool parse_int(const uint8_t *s, size_t len, int64_t *out)
{
    bool neg = false;
    if (len > 0 && s[0] == '-') {
        neg = true;
        s++;
        len--;
    }
    if (len == 0 || len > 18)
        return false;
    int64_t v = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        v = v * 10 + (s[i] - '0');
    }
    *out = neg ? -v : v;
    return true;
}

/*
 * Finds the header line that starts at req[p->pos] ("*3" or "$5", ended by
 * CRLF). Returns FM_OK with *found false when its end has not arrived, or
 * with *value_out the number after the prefix and p->pos past the CRLF.
 */
static fm_status read_header(struct fm_resp_parser *p, const uint8_t *req,
                             size_t avail, bool *found, int64_t *value_out,
                             struct fm_error *err)
{
    const uint8_t *start = req + p->pos;
    size_t have = avail - p->pos;
    size_t scan = have < HEADER_MAX ? have : HEADER_MAX;
    const uint8_t *cr = memchr(start, '\r', scan);
    *found = false;
    if (cr == NULL) {
        if (have >= HEADER_MAX)
            return fm_error_set(err, FM_ERR_SYNTAX,
                                "Protocol error: too big %s count string",
                                start[0] == '*' ? "mbulk" : "bulk");
        return FM_OK;
    }
    size_t line_len = (size_t)(cr - start);
    if (line_len + 1 >= have)
        return FM_OK; /* the LF has not arrived yet */
    if (cr[1] != '\n')
        return fm_error_set(err, FM_ERR_SYNTAX,
                            "Protocol error: expected CRLF after %s length",
                            start[0] == '*' ? "multibulk" : "bulk");
    if (!parse_int(start + 1, line_len - 1, value_out))
        return fm_error_set(err, FM_ERR_SYNTAX,
                            "Protocol error: invalid %s length",
                            start[0] == '*' ? "multibulk" : "bulk");
    p->pos += line_len + 2;
    *found = true;
    return FM_OK;
}

/* The RESP form: runs the state machine as far as the bytes allow. */
static fm_status parse_resp(struct fm_resp_parser *p,
                            const struct fm_resp_limits *lim, uint8_t *req,
                            size_t avail, bool *complete,
                            struct fm_resp_request *out, struct fm_error *err)
{
    fm_status st;
    bool found;
    int64_t v;
    if (p->state == ST_MBULK) {
        st = read_header(p, req, avail, &found, &v, err);
        if (st != FM_OK || !found)
            return st;
        if (v <= 0) {
            /* "*0" and "*-1" carry no command; Redis skips them too. */
            finish(p, req, p->pos, out);
            *complete = true;
            return FM_OK;
        }
        if ((uint64_t)v > lim->max_args)
            return fm_error_set(err, FM_ERR_LIMIT,
                                "too many arguments in request: %lld "
                                "(max-args is %zu)",
                                (long long)v, lim->max_args);
        p->n_expected = (size_t)v;
        p->state = ST_BULKHDR;
    }
    while (p->argc < p->n_expected) {
        if (p->state == ST_BULKHDR) {
            if (p->pos >= avail)
                return FM_OK;
            if (req[p->pos] != '$') {
                char got[16];
                fm_format_value(got, sizeof(got), req + p->pos, 1);
                return fm_error_set(err, FM_ERR_SYNTAX,
                                    "Protocol error: expected '$', got '%s'",
                                    got);
            }
            st = read_header(p, req, avail, &found, &v, err);
            if (st != FM_OK || !found)
                return st;
            if (v < 0)
                return fm_error_set(err, FM_ERR_SYNTAX,
                                    "Protocol error: invalid bulk length");
            if ((uint64_t)v > lim->max_bulk_len)
                return fm_error_set(err, FM_ERR_LIMIT,
                                    "bulk argument of %lld bytes is over "
                                    "max-bulk-len %zu",
                                    (long long)v, lim->max_bulk_len);
            p->bulk_len = (size_t)v;
            p->state = ST_BULK;
        }
        /* pos <= avail always holds, and bulk_len is bounded by
         * max_bulk_len, so this sum cannot overflow in practice; check
         * anyway, since the limit is configurable. */
        size_t need;
        if (fm_add_overflows(p->pos, p->bulk_len, &need) ||
            fm_add_overflows(need, 2, &need))
            return fm_error_set(err, FM_ERR_LIMIT, "bulk length too large");
        if (avail < need)
            return FM_OK;
        if (req[need - 2] != '\r' || req[need - 1] != '\n')
            return fm_error_set(err, FM_ERR_SYNTAX,
                                "Protocol error: expected CRLF after bulk "
                                "argument");
        st = add_arg(p, p->pos, p->bulk_len, err);
        if (st != FM_OK)
            return st;
        p->pos = need;
        p->state = ST_BULKHDR;
    }
    finish(p, req, p->pos, out);
    *complete = true;
    return FM_OK;
}

static bool is_space(uint8_t c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' ||
           c == '\f';
}

static int hex_value(uint8_t c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* The byte that the escape "\c" inside double quotes stands for. */
static uint8_t unescape_char(uint8_t c)
{
    switch (c) {
    case 'n':
        return '\n';
    case 'r':
        return '\r';
    case 't':
        return '\t';
    case 'b':
        return '\b';
    case 'a':
        return '\a';
    default:
        return c;
    }
}

/*
 * Reads one token starting at line[*i] (not white space) up to end, writing
 * its unquoted bytes at line[*w]. Advances *i past the token and *w past the
 * written bytes. False for unbalanced quotes.
 */
static bool split_token(uint8_t *line, size_t end, size_t *i, size_t *w)
{
    size_t r = *i;
    size_t o = *w;
    int quote = 0; /* 0, '"' or '\'' */
    for (;;) {
        if (r == end) {
            if (quote != 0)
                return false;
            break;
        }
        uint8_t c = line[r];
        if (quote == '"') {
            if (c == '\\' && r + 3 < end && line[r + 1] == 'x' &&
                hex_value(line[r + 2]) >= 0 && hex_value(line[r + 3]) >= 0) {
                line[o++] = (uint8_t)(hex_value(line[r + 2]) * 16 +
                                      hex_value(line[r + 3]));
                r += 4;
            } else if (c == '\\' && r + 1 < end) {
                line[o++] = unescape_char(line[r + 1]);
                r += 2;
            } else if (c == '"') {
                /* A closing quote must end the token. */
                if (r + 1 < end && !is_space(line[r + 1]))
                    return false;
                r++;
                break;
            } else {
                line[o++] = c;
                r++;
            }
        } else if (quote == '\'') {
            if (c == '\\' && r + 1 < end && line[r + 1] == '\'') {
                line[o++] = '\'';
                r += 2;
            } else if (c == '\'') {
                if (r + 1 < end && !is_space(line[r + 1]))
                    return false;
                r++;
                break;
            } else {
                line[o++] = c;
                r++;
            }
        } else if (is_space(c)) {
            break;
        } else if (c == '"' || c == '\'') {
            quote = c;
            r++;
        } else {
            line[o++] = c;
            r++;
        }
    }
    *i = r;
    *w = o;
    return true;
}

/* Splits the complete line req[0..end) into arguments, in place. */
static fm_status split_line(struct fm_resp_parser *p,
                            const struct fm_resp_limits *lim, uint8_t *req,
                            size_t end, struct fm_error *err)
{
    size_t i = 0;
    size_t w = 0;
    for (;;) {
        while (i < end && is_space(req[i]))
            i++;
        if (i == end)
            return FM_OK;
        if (p->argc >= lim->max_args)
            return fm_error_set(err, FM_ERR_LIMIT,
                                "too many arguments in request (max-args is "
                                "%zu)",
                                lim->max_args);
        /* Tokens are written contiguously from w, which never passes i. */
        size_t start = w;
        if (!split_token(req, end, &i, &w))
            return fm_error_set(err, FM_ERR_SYNTAX,
                                "Protocol error: unbalanced quotes in "
                                "request");
        fm_status st = add_arg(p, start, w - start, err);
        if (st != FM_OK)
            return st;
    }
}

static fm_status parse_inline(struct fm_resp_parser *p,
                              const struct fm_resp_limits *lim, uint8_t *req,
                              size_t avail, bool *complete,
                              struct fm_resp_request *out, struct fm_error *err)
{
    const uint8_t *nl = memchr(req + p->pos, '\n', avail - p->pos);
    if (nl == NULL) {
        p->pos = avail;
        /* The limit counts the line without its CRLF, and the CR may have
         * arrived without the LF: a line of exactly max_inline_len bytes
         * must not be refused because the read ended between the two. */
        if (avail > lim->max_inline_len &&
            (avail - 1 > lim->max_inline_len || req[avail - 1] != '\r'))
            goto fail_too_big;
        return FM_OK;
    }
    size_t req_len = (size_t)(nl - req) + 1;
    size_t end = req_len - 1;
    if (end > 0 && req[end - 1] == '\r')
        end--;
    if (end > lim->max_inline_len)
        goto fail_too_big;
    fm_status st = split_line(p, lim, req, end, err);
    if (st != FM_OK)
        return st;
    finish(p, req, req_len, out);
    *complete = true;
    return FM_OK;
fail_too_big:
    return fm_error_set(err, FM_ERR_LIMIT,
                        "inline request over max-inline-len %zu bytes",
                        lim->max_inline_len);
}

fm_status fm_resp_parse_request(struct fm_resp_parser *p,
                                const struct fm_resp_limits *lim, uint8_t *req,
                                size_t avail, bool *complete_out,
                                struct fm_resp_request *out,
                                struct fm_error *err)
{
    FM_ASSERT(p->pos <= avail || avail == 0);
    bool complete = false;
    fm_status st = FM_OK;
    if (avail == 0)
        goto out;
    if (p->state == ST_START) {
        p->argc = 0;
        p->pos = 0;
        p->state = req[0] == '*' ? ST_MBULK : ST_INLINE;
    }
    if (p->state == ST_INLINE)
        st = parse_inline(p, lim, req, avail, &complete, out, err);
    else
        st = parse_resp(p, lim, req, avail, &complete, out, err);
out:
    if (st == FM_OK)
        *complete_out = complete;
    return st;
}

/* ---- Encoding ---------------------------------------------------------- */

fm_status fm_resp_encode_reply(struct fm_buf *out, const struct fm_reply *r)
{
    const uint8_t *p;
    size_t len;
    fm_reply_bytes(r, &p, &len);
    return fm_buf_append(out, p, len) == FM_OK ? FM_OK : FM_ERR_NOMEM;
}

fm_status fm_resp_append_error(struct fm_buf *out, fm_status st,
                               const char *msg)
{
    /* A reply is its buffer and a flag: lend it out's buffer. */
    struct fm_reply r = {.buf = *out, .failed = false};
    fm_reply_error(&r, st, msg);
    if (r.failed) {
        r.buf.len = out->len;
        *out = r.buf;
        return FM_ERR_NOMEM;
    }
    *out = r.buf;
    return FM_OK;
}
