/*
 * fuzz_resp.c: libFuzzer target for the request parser of server/resp.h.
 *
 * The input is a pipeline of requests as a client would send it, preceded
 * by a few bytes that choose the limits and where the stream is cut:
 *
 *   offset  size  field
 *   0       1     bit 0: small limits (the next 3 bytes); bits 1-3: the
 *                 number of cuts, 0-7
 *   1       3     small limits only: max_inline_len, max_bulk_len and
 *                 max_args, each one byte
 *   ...     k     one byte per cut: where it falls, as a fraction of the
 *                 stream (b * len / 255)
 *   ...           the stream
 *
 * The stream is parsed twice: once with all of it in the buffer, as a
 * server does with a pipeline that arrived in one read, and once fed in
 * the pieces between the cuts, with the unparsed bytes moved to a new
 * buffer after every read, as network.c compacts its input. Both runs
 * write a transcript (each request's arguments, then the final status and
 * the bytes left over) and the two transcripts must be equal: how a
 * stream is cut into reads may never change what it means. Every complete
 * request is also checked against the limits, and its arguments are
 * encoded as a RESP reply and parsed back, which must give them again.
 *
 * Not covered: the reply encoder's handling of every value type (the
 * round trip only writes arrays of bulk strings).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/resp.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The server's defaults (server/config.c). */
static const struct fm_resp_limits default_limits = {
    .max_inline_len = 64 * 1024,
    .max_bulk_len = 1024 * 1024,
    .max_args = 4096,
};

/* A transcript of one run: what a client would see executed. */
struct transcript {
    struct fm_buf b;
};

static void put_u64(struct transcript *t, uint64_t v)
{
    uint8_t tmp[8];
    fm_store_le64(tmp, v);
    FM_ASSERT(fm_buf_append(&t->b, tmp, sizeof(tmp)) == FM_OK);
}

static void put_bytes(struct transcript *t, const uint8_t *p, size_t len)
{
    put_u64(t, len);
    FM_ASSERT(fm_buf_append(&t->b, p, len) == FM_OK);
}

/* Arguments are encoded as a reply and parsed back as a request. */
static void check_round_trip(const struct fm_resp_request *req)
{
    struct fm_reply r = {0};
    struct fm_buf enc = {0};
    fm_reply_array(&r, req->argc);
    for (size_t i = 0; i < req->argc; i++)
        fm_reply_bulk(&r, req->argv[i], req->argv_len[i]);
    FM_ASSERT(fm_resp_encode_reply(&enc, &r) == FM_OK);
    struct fm_resp_limits lim = {SIZE_MAX, SIZE_MAX, SIZE_MAX};
    struct fm_resp_parser p;
    fm_resp_parser_init(&p);
    struct fm_resp_request back;
    bool complete = false;
    fm_status st = fm_resp_parse_request(&p, &lim, enc.data, enc.len, &complete,
                                         &back, NULL);
    FM_ASSERT(st == FM_OK && complete);
    FM_ASSERT(back.req_len == enc.len);
    FM_ASSERT(back.argc == req->argc);
    for (size_t i = 0; i < req->argc; i++) {
        FM_ASSERT(back.argv_len[i] == req->argv_len[i]);
        FM_ASSERT(memcmp(back.argv[i], req->argv[i], req->argv_len[i]) == 0);
    }
    fm_resp_parser_fini(&p);
    fm_buf_fini(&enc);
    fm_reply_fini(&r);
}

/*
 * Checks one complete request that starts at req[0] and records it.
 * is_resp is whether req[0] was '*' before the parse: an inline request
 * is unescaped in place, so its first byte may be '*' afterwards.
 */
static void take_request(struct transcript *t, const uint8_t *req, size_t avail,
                         bool is_resp, const struct fm_resp_limits *lim,
                         const struct fm_resp_request *out)
{
    FM_ASSERT(out->req_len > 0 && out->req_len <= avail);
    FM_ASSERT(out->argc <= lim->max_args);
    put_u64(t, out->argc);
    for (size_t i = 0; i < out->argc; i++) {
        const uint8_t *a = out->argv[i];
        FM_ASSERT(a >= req && a + out->argv_len[i] <= req + out->req_len);
        if (is_resp)
            FM_ASSERT(out->argv_len[i] <= lim->max_bulk_len);
        else
            FM_ASSERT(out->argv_len[i] <= lim->max_inline_len);
        put_bytes(t, a, out->argv_len[i]);
    }
    check_round_trip(out);
}

/* Records how a run ended: its status and what it had not parsed. */
static void take_end(struct transcript *t, fm_status st,
                     const struct fm_error *err, size_t left)
{
    put_u64(t, (uint64_t)st);
    if (st != FM_OK)
        FM_ASSERT(err->st == st && err->msg[0] != '\0');
    else
        put_u64(t, left);
}

/* The whole stream in one buffer. */
static void run_whole(const uint8_t *stream, size_t len,
                      const struct fm_resp_limits *lim, struct transcript *t)
{
    uint8_t *buf = malloc(len + 1);
    FM_ASSERT(buf != NULL);
    memcpy(buf, stream, len);
    struct fm_resp_parser p;
    fm_resp_parser_init(&p);
    size_t off = 0;
    fm_status st = FM_OK;
    struct fm_error err = {0};
    while (off < len) {
        struct fm_resp_request out;
        bool complete = false;
        bool is_resp = buf[off] == '*';
        st = fm_resp_parse_request(&p, lim, buf + off, len - off, &complete,
                                   &out, &err);
        if (st != FM_OK || !complete)
            break;
        FM_ASSERT(!fm_resp_parser_is_busy(&p));
        take_request(t, buf + off, len - off, is_resp, lim, &out);
        off += out.req_len;
    }
    take_end(t, st, &err, len - off);
    fm_resp_parser_fini(&p);
    free(buf);
}

/*
 * The stream in pieces ending at cuts[0..n_cuts) and then at len. After
 * each read the unparsed bytes move to a fresh buffer, so a parser that
 * kept a pointer instead of an offset reads freed memory.
 */
static void run_split(const uint8_t *stream, size_t len, const size_t *cuts,
                      size_t n_cuts, const struct fm_resp_limits *lim,
                      struct transcript *t)
{
    struct fm_resp_parser p;
    fm_resp_parser_init(&p);
    uint8_t *buf = malloc(1);
    FM_ASSERT(buf != NULL);
    size_t have = 0;  /* bytes of the stream received so far */
    size_t start = 0; /* stream offset of buf[0] */
    fm_status st = FM_OK;
    struct fm_error err = {0};
    for (size_t k = 0; k <= n_cuts && st == FM_OK; k++) {
        size_t upto = k < n_cuts ? cuts[k] : len;
        if (upto <= have)
            continue;
        uint8_t *nb = malloc(upto - start + 1);
        FM_ASSERT(nb != NULL);
        memcpy(nb, buf, have - start);
        memcpy(nb + (have - start), stream + have, upto - have);
        free(buf);
        buf = nb;
        have = upto;
        size_t off = 0;
        while (start + off < have) {
            struct fm_resp_request out;
            bool complete = false;
            size_t avail = have - start - off;
            bool is_resp = buf[off] == '*';
            st = fm_resp_parse_request(&p, lim, buf + off, avail, &complete,
                                       &out, &err);
            if (st != FM_OK || !complete)
                break;
            take_request(t, buf + off, avail, is_resp, lim, &out);
            off += out.req_len;
        }
        /* Compact: the unparsed request moves to the front. */
        memmove(buf, buf + off, have - start - off);
        start += off;
    }
    take_end(t, st, &err, have - start);
    fm_resp_parser_fini(&p);
    free(buf);
}

static int cmp_size(const void *a, const void *b)
{
    size_t x = *(const size_t *)a;
    size_t y = *(const size_t *)b;
    return (x > y) - (x < y);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint8_t flags = data[0];
    size_t pos = 1;
    struct fm_resp_limits lim = default_limits;
    if (flags & 1) {
        if (size < pos + 3)
            return 0;
        lim.max_inline_len = data[pos];
        lim.max_bulk_len = data[pos + 1];
        lim.max_args = data[pos + 2] % 16;
        pos += 3;
    }
    size_t n_cuts = (flags >> 1) & 7;
    if (size < pos + n_cuts)
        return 0;
    const uint8_t *cut_bytes = data + pos;
    pos += n_cuts;
    const uint8_t *stream = data + pos;
    size_t len = size - pos;
    size_t cuts[8];
    for (size_t i = 0; i < n_cuts; i++)
        cuts[i] = (size_t)cut_bytes[i] * len / 255;
    qsort(cuts, n_cuts, sizeof(cuts[0]), cmp_size);

    struct transcript whole = {0};
    struct transcript split = {0};
    run_whole(stream, len, &lim, &whole);
    run_split(stream, len, cuts, n_cuts, &lim, &split);
    if (whole.b.len != split.b.len ||
        memcmp(whole.b.data, split.b.data, whole.b.len) != 0) {
        fprintf(stderr, "the stream means something else when cut\n");
        abort();
    }
    fm_buf_fini(&whole.b);
    fm_buf_fini(&split.b);
    return 0;
}
