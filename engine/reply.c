/*
 * reply.c: the flat reply buffer that commands write their results into.
 *
 * A command's result is a short sequence of typed values (an integer, a
 * bulk string, an array of rows...). Rather than a tree of allocated nodes,
 * the values are appended to one growable buffer that a connection reuses
 * for every command, so a warm server does not allocate per reply. The
 * server walks it with a cursor to produce RESP; the shell prints it.
 *
 * Each value is a record aligned to 8 bytes:
 *
 *   offset  size  field
 *   0       1     type (enum fm_reply_type)
 *   1       1     status, for FM_REPLY_ERROR
 *   2       2     zero
 *   4       4     length of the payload (BULK, STATUS, ERROR), element
 *                 count (ARRAY) or zero
 *   8       ...   INT: 8-byte integer; BULK, STATUS, ERROR: the bytes,
 *                 zero-padded to a multiple of 8; nothing otherwise
 *
 * Memory failure does not propagate as a status through every appender:
 * the reply is marked failed, further appends are ignored, and a cursor over
 * a failed reply yields a single OOM error. A command that produced a
 * failed reply has not lost data, since replies are written after the data
 * change is decided.
 */
#include "engine/fermata.h"

#define HDR_SIZE 8

static size_t pad8(size_t n)
{
    return (n + 7) & ~(size_t)7;
}

void fm_reply_reset(struct fm_reply *r)
{
    r->buf.len = 0;
    r->n_values = 0;
    r->failed = false;
}

void fm_reply_fini(struct fm_reply *r)
{
    fm_buf_fini(&r->buf);
    r->n_values = 0;
    r->failed = false;
}

static uint8_t *reserve(struct fm_reply *r, size_t payload)
{
    if (r->failed)
        return NULL;
    size_t need = HDR_SIZE + pad8(payload);
    if (payload > UINT32_MAX || (r->buf.cap - r->buf.len < need &&
                                 fm_buf_reserve(&r->buf, need) != FM_OK)) {
        r->failed = true;
        return NULL;
    }
    uint8_t *p = r->buf.data + r->buf.len;
    /* The header's spare bytes and the payload's padding are zero; the
     * payload itself is written by the caller. */
    memset(p, 0, HDR_SIZE);
    if (need > HDR_SIZE)
        memset(p + need - 8, 0, 8);
    r->buf.len += need;
    r->n_values++;
    return p;
}

static void put_header(uint8_t *p, enum fm_reply_type type, fm_status st,
                       uint32_t len)
{
    p[0] = (uint8_t)type;
    p[1] = (uint8_t)st;
    fm_store_le32(p + 4, len);
}

void fm_reply_nil(struct fm_reply *r)
{
    uint8_t *p = reserve(r, 0);
    if (p != NULL)
        put_header(p, FM_REPLY_NIL, FM_OK, 0);
}

void fm_reply_int(struct fm_reply *r, int64_t v)
{
    uint8_t *p = reserve(r, 8);
    if (p == NULL)
        return;
    put_header(p, FM_REPLY_INT, FM_OK, 0);
    fm_store_le64(p + HDR_SIZE, (uint64_t)v);
}

static void put_bytes(struct fm_reply *r, enum fm_reply_type type, fm_status st,
                      const void *s, size_t len)
{
    uint8_t *p = reserve(r, len);
    if (p == NULL)
        return;
    put_header(p, type, st, (uint32_t)len);
    if (len > 0)
        memcpy(p + HDR_SIZE, s, len);
}

void fm_reply_bulk(struct fm_reply *r, const void *p, size_t len)
{
    put_bytes(r, FM_REPLY_BULK, FM_OK, p, len);
}

void fm_reply_cstr(struct fm_reply *r, const char *s)
{
    put_bytes(r, FM_REPLY_BULK, FM_OK, s, strlen(s));
}

void fm_reply_status(struct fm_reply *r, const char *s)
{
    put_bytes(r, FM_REPLY_STATUS, FM_OK, s, strlen(s));
}

void fm_reply_error(struct fm_reply *r, fm_status st, const char *msg)
{
    FM_ASSERT(st != FM_OK);
    put_bytes(r, FM_REPLY_ERROR, st, msg, strlen(msg));
}

void fm_reply_array(struct fm_reply *r, size_t n)
{
    uint8_t *p = reserve(r, 0);
    if (p == NULL)
        return;
    if (n > UINT32_MAX) {
        r->failed = true;
        return;
    }
    put_header(p, FM_REPLY_ARRAY, FM_OK, (uint32_t)n);
}

size_t fm_reply_mark(const struct fm_reply *r)
{
    FM_ASSERT(r->failed || r->buf.len >= HDR_SIZE);
    return r->failed ? 0 : r->buf.len - HDR_SIZE;
}

void fm_reply_patch_array(struct fm_reply *r, size_t mark, size_t n)
{
    if (r->failed)
        return;
    FM_ASSERT(mark + HDR_SIZE <= r->buf.len);
    FM_ASSERT(r->buf.data[mark] == FM_REPLY_ARRAY);
    if (n > UINT32_MAX) {
        r->failed = true;
        return;
    }
    fm_store_le32(r->buf.data + mark + 4, (uint32_t)n);
}

void fm_reply_append_all(struct fm_reply *r, const struct fm_reply *src)
{
    if (r->failed)
        return;
    if (src->failed) {
        r->failed = true;
        return;
    }
    if (fm_buf_append(&r->buf, src->buf.data, src->buf.len) != FM_OK) {
        r->failed = true;
        return;
    }
    r->n_values += src->n_values;
}

void fm_reply_cursor_init(struct fm_reply_cursor *c, const struct fm_reply *r)
{
    c->r = r;
    c->off = 0;
    c->oom_done = false;
}

bool fm_reply_next(struct fm_reply_cursor *c, struct fm_reply_value *out)
{
    static const char oom_msg[] = "out of memory while building the reply";
    memset(out, 0, sizeof(*out));
    if (c->r->failed) {
        if (c->oom_done)
            return false;
        c->oom_done = true;
        out->type = FM_REPLY_ERROR;
        out->st = FM_ERR_NOMEM;
        out->str = (const uint8_t *)oom_msg;
        out->len = sizeof(oom_msg) - 1;
        return true;
    }
    if (c->off >= c->r->buf.len)
        return false;
    const uint8_t *p = c->r->buf.data + c->off;
    uint32_t len = fm_load_le32(p + 4);
    out->type = (enum fm_reply_type)p[0];
    switch (out->type) {
    case FM_REPLY_NIL:
        c->off += HDR_SIZE;
        break;
    case FM_REPLY_INT:
        out->i = (int64_t)fm_load_le64(p + HDR_SIZE);
        c->off += HDR_SIZE + 8;
        break;
    case FM_REPLY_ERROR:
        out->st = (fm_status)p[1];
        /* fall through: an error carries its message like a bulk */
        __attribute__((fallthrough));
    case FM_REPLY_BULK:
    case FM_REPLY_STATUS:
        out->str = p + HDR_SIZE;
        out->len = len;
        c->off += HDR_SIZE + pad8(len);
        break;
    case FM_REPLY_ARRAY:
        out->n = len;
        c->off += HDR_SIZE;
        break;
    default:
        FM_ASSERT(!"corrupt reply buffer");
    }
    return true;
}
