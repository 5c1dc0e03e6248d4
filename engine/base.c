/*
 * base.c: statuses, errors, assertions, allocation and byte buffers.
 *
 * Nothing here knows about tables, files or sockets. The status strings are
 * generated from FM_STATUS_MAP in base.h. The allocation functions are thin
 * wrappers over the C library with one addition: a test-only hook that can
 * make any allocation fail, which is how every FM_ERR_NOMEM path is tested.
 * That hook is the one mutable global of the project (STYLE.md section 5).
 */
/* MAP_ANONYMOUS and MAP_POPULATE are not in POSIX 2008. */
#define _DEFAULT_SOURCE
#include "engine/base.h"

#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>

static fm_alloc_fail_fn alloc_fail_fn;
static void *alloc_fail_ctx;

static const char *const status_codes[] = {
#define FM_STATUS_CODE(name, code, msg) code,
    FM_STATUS_MAP(FM_STATUS_CODE)
#undef FM_STATUS_CODE
};

static const char *const status_messages[] = {
#define FM_STATUS_MSG(name, code, msg) msg,
    FM_STATUS_MAP(FM_STATUS_MSG)
#undef FM_STATUS_MSG
};

static const char *const status_names[] = {
#define FM_STATUS_NAME(name, code, msg) #name,
    FM_STATUS_MAP(FM_STATUS_NAME)
#undef FM_STATUS_NAME
};

const char *fm_status_code(fm_status st)
{
    if ((unsigned)st >= FM_STATUS_COUNT_)
        return "ERR";
    return status_codes[st];
}

const char *fm_status_message(fm_status st)
{
    if ((unsigned)st >= FM_STATUS_COUNT_)
        return "unknown status";
    return status_messages[st];
}

const char *fm_status_name(fm_status st)
{
    if ((unsigned)st >= FM_STATUS_COUNT_)
        return "UNKNOWN";
    return status_names[st];
}

fm_status fm_error_set(struct fm_error *err, fm_status st, const char *fmt, ...)
{
    if (err == NULL)
        return st;
    err->st = st;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
    va_end(ap);
    if (n < 0)
        snprintf(err->msg, sizeof(err->msg), "%s", fm_status_message(st));
    return st;
}

void fm_error_clear(struct fm_error *err)
{
    if (err == NULL)
        return;
    err->st = FM_OK;
    err->msg[0] = '\0';
}

void fm_format_value(char *out, size_t cap, const uint8_t *p, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    if (cap == 0)
        return;
    for (size_t i = 0; i < len; i++) {
        uint8_t c = p[i];
        /* Room for the longest piece ("\xHH") plus "..." and the NUL. */
        if (o + 8 > cap || o >= 60) {
            if (o + 4 <= cap) {
                memcpy(out + o, "...", 3);
                o += 3;
            }
            break;
        }
        if (c >= 0x20 && c < 0x7f && c != '\\') {
            out[o++] = (char)c;
        } else {
            out[o++] = '\\';
            out[o++] = 'x';
            out[o++] = hex[c >> 4];
            out[o++] = hex[c & 15];
        }
    }
    out[o] = '\0';
}

const char fm_digit_pairs[201] = "00010203040506070809"
                                 "10111213141516171819"
                                 "20212223242526272829"
                                 "30313233343536373839"
                                 "40414243444546474849"
                                 "50515253545556575859"
                                 "60616263646566676869"
                                 "70717273747576777879"
                                 "80818283848586878889"
                                 "90919293949596979899";

size_t fm_format_i64(char *out, int64_t v)
{
    uint64_t u = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
    size_t k = 0;
    if (v < 0)
        out[k++] = '-';
    /* Count the digits first so that they are written in place, from the
     * last one back, with no copy. */
    size_t n = 1;
    for (uint64_t t = u; t >= 10; t /= 10)
        n++;
    char *p = out + k + n;
    while (u >= 100) {
        size_t i = (size_t)(u % 100) * 2;
        u /= 100;
        p -= 2;
        memcpy(p, fm_digit_pairs + i, 2);
    }
    if (u >= 10) {
        p -= 2;
        memcpy(p, fm_digit_pairs + u * 2, 2);
    } else {
        *--p = (char)('0' + u);
    }
    return k + n;
}

void fm_assert_fail(const char *expr, const char *file, int line)
{
    fprintf(stderr, "fermata: assertion failed: %s (%s:%d)\n", expr, file,
            line);
    abort();
}

void fm_set_alloc_fail_hook(fm_alloc_fail_fn fn, void *ctx)
{
    alloc_fail_fn = fn;
    alloc_fail_ctx = ctx;
}

static bool alloc_should_fail(size_t size)
{
    return alloc_fail_fn != NULL && alloc_fail_fn(alloc_fail_ctx, size);
}

void *fm_malloc(size_t size)
{
    if (alloc_should_fail(size))
        return NULL;
    return malloc(size == 0 ? 1 : size);
}

void *fm_calloc(size_t n, size_t size)
{
    size_t total;
    if (fm_mul_overflows(n, size, &total) || alloc_should_fail(total))
        return NULL;
    return calloc(n == 0 ? 1 : n, size == 0 ? 1 : size);
}

void *fm_realloc(void *p, size_t size)
{
    if (alloc_should_fail(size))
        return NULL;
    return realloc(p, size == 0 ? 1 : size);
}

void fm_free(void *p)
{
    free(p);
}

void *fm_map_populated(size_t size, bool touch)
{
    if (size == 0 || alloc_should_fail(size))
        return NULL;
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
    /* On a paravirtualised guest the first access from user space still
     * costs microseconds per page in the hypervisor after the kernel has
     * populated it; paying it here lets the caller choose the thread. */
    volatile uint8_t *b = p;
    for (size_t off = 0; touch && off < size; off += 4096)
        b[off] = 0;
    return p;
}

void fm_unmap(void *p, size_t size)
{
    if (p != NULL)
        munmap(p, size);
}

fm_status fm_buf_reserve(struct fm_buf *b, size_t extra)
{
    size_t need;
    if (fm_add_overflows(b->len, extra, &need))
        return FM_ERR_LIMIT;
    if (need <= b->cap)
        return FM_OK;
    size_t cap = b->cap < 64 ? 64 : b->cap;
    while (cap < need) {
        if (cap > SIZE_MAX / 2) {
            cap = need;
            break;
        }
        cap *= 2;
    }
    uint8_t *p = fm_realloc(b->data, cap);
    if (p == NULL)
        return FM_ERR_NOMEM;
    b->data = p;
    b->cap = cap;
    return FM_OK;
}

fm_status fm_buf_append(struct fm_buf *b, const void *p, size_t len)
{
    fm_status st = fm_buf_reserve(b, len);
    if (st != FM_OK)
        return st;
    if (len > 0)
        memcpy(b->data + b->len, p, len);
    b->len += len;
    return FM_OK;
}

fm_status fm_buf_push(struct fm_buf *b, uint8_t byte)
{
    if (b->len == b->cap) {
        fm_status st = fm_buf_reserve(b, 1);
        if (st != FM_OK)
            return st;
    }
    b->data[b->len++] = byte;
    return FM_OK;
}

fm_status fm_buf_printf(struct fm_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    va_list ap2;
    va_copy(ap2, ap);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    fm_status st = FM_OK;
    if (n < 0) {
        st = FM_ERR_SYNTAX;
        goto out;
    }
    st = fm_buf_reserve(b, (size_t)n + 1);
    if (st != FM_OK)
        goto out;
    vsnprintf((char *)b->data + b->len, (size_t)n + 1, fmt, ap2);
    b->len += (size_t)n;
out:
    va_end(ap2);
    return st;
}

void fm_buf_fini(struct fm_buf *b)
{
    fm_free(b->data);
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
}

int64_t fm_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int64_t fm_monotonic_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}
