/*
 * test_resp.c: the request parser as a pure function, and the reply encoder.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>

#include "server/resp.h"

static const struct fm_resp_limits limits = {
    .max_inline_len = 1024,
    .max_bulk_len = 4096,
    .max_args = 64,
};

/* A parsed request flattened for comparison: args joined with '|'. */
struct result {
    fm_status st;
    bool complete;
    size_t argc;
    size_t req_len;
    char joined[8192];
    size_t joined_len;
};

static void flatten(const struct fm_resp_request *req, struct result *r)
{
    r->argc = req->argc;
    r->req_len = req->req_len;
    r->joined_len = 0;
    for (size_t i = 0; i < req->argc; i++) {
        cr_assert(r->joined_len + req->argv_len[i] + 1 < sizeof(r->joined));
        memcpy(r->joined + r->joined_len, req->argv[i], req->argv_len[i]);
        r->joined_len += req->argv_len[i];
        r->joined[r->joined_len++] = '|';
    }
}

/* Parses text in one feed. */
static struct result parse_once(const char *text, size_t len,
                                const struct fm_resp_limits *lim)
{
    struct result r;
    memset(&r, 0, sizeof(r));
    uint8_t *buf = malloc(len + 1);
    memcpy(buf, text, len);
    struct fm_resp_parser p;
    fm_resp_parser_init(&p);
    struct fm_resp_request req;
    struct fm_error err = {0};
    r.st = fm_resp_parse_request(&p, lim, buf, len, &r.complete, &req, &err);
    if (r.st == FM_OK && r.complete)
        flatten(&req, &r);
    fm_resp_parser_fini(&p);
    free(buf);
    return r;
}

/*
 * Parses text fed as text[0..split) and then all of it. The second feed
 * passes a copy moved to another address, as a server that compacts or
 * grows its buffer between reads would.
 */
static struct result parse_split(const char *text, size_t len, size_t split,
                                 const struct fm_resp_limits *lim)
{
    struct result r;
    memset(&r, 0, sizeof(r));
    uint8_t *a = malloc(len + 1);
    memcpy(a, text, len);
    struct fm_resp_parser p;
    fm_resp_parser_init(&p);
    struct fm_resp_request req;
    struct fm_error err = {0};
    r.st = fm_resp_parse_request(&p, lim, a, split, &r.complete, &req, &err);
    if (r.st == FM_OK && !r.complete) {
        uint8_t *b = malloc(len + 1);
        memcpy(b, a, split);
        memcpy(b + split, text + split, len - split);
        r.st = fm_resp_parse_request(&p, lim, b, len, &r.complete, &req, &err);
        if (r.st == FM_OK && r.complete)
            flatten(&req, &r);
        free(b);
    } else if (r.st == FM_OK) {
        flatten(&req, &r);
    }
    fm_resp_parser_fini(&p);
    free(a);
    return r;
}

static void assert_same(const struct result *a, const struct result *b,
                        size_t split)
{
    cr_assert_eq(a->st, b->st, "status differs at split %zu", split);
    cr_assert_eq(a->complete, b->complete, "completeness at split %zu", split);
    cr_assert_eq(a->argc, b->argc, "argc differs at split %zu", split);
    cr_assert_eq(a->req_len, b->req_len, "req_len differs at split %zu", split);
    cr_assert_eq(a->joined_len, b->joined_len, "args differ at split %zu",
                 split);
    cr_assert(memcmp(a->joined, b->joined, a->joined_len) == 0,
              "args differ at split %zu", split);
}

static void check_every_split(const char *text, size_t len)
{
    struct result whole = parse_once(text, len, &limits);
    for (size_t split = 0; split <= len; split++) {
        struct result r = parse_split(text, len, split, &limits);
        assert_same(&whole, &r, split);
    }
}

static void expect_args(const char *text, size_t argc, const char *joined)
{
    struct result r = parse_once(text, strlen(text), &limits);
    cr_assert_eq(r.st, FM_OK, "status %s for %s", fm_status_name(r.st), text);
    cr_assert(r.complete, "incomplete: %s", text);
    cr_assert_eq(r.argc, argc, "argc %zu for %s", r.argc, text);
    cr_assert_eq(r.joined_len, strlen(joined));
    cr_assert(memcmp(r.joined, joined, r.joined_len) == 0,
              "got '%.*s' want '%s'", (int)r.joined_len, r.joined, joined);
}

static void expect_error(const char *text, size_t len, fm_status want)
{
    struct result r = parse_once(text, len, &limits);
    cr_assert_eq(r.st, want, "got %s want %s for %.40s", fm_status_name(r.st),
                 fm_status_name(want), text);
}

Test(resp, resp_array_is_parsed)
{
    expect_args("*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nvalue\r\n", 3,
                "SET|k|value|");
}

Test(resp, every_split_of_a_resp_request_gives_the_same_result)
{
    static const char req[] =
        "*4\r\n$6\r\nINSERT\r\n$7\r\nartists\r\n$4\r\nname\r\n$0\r\n\r\n";
    check_every_split(req, sizeof(req) - 1);
}

Test(resp, every_split_of_an_inline_request_gives_the_same_result)
{
    static const char req[] =
        "INSERT users username \"a\\x41\\\"b\" email 'x y' \r\n";
    check_every_split(req, sizeof(req) - 1);
}

Test(resp, every_split_of_an_error_gives_the_same_error)
{
    static const char bad1[] = "*2\r\n$3\r\nGET\r\n$-5\r\n";
    static const char bad2[] = "GET \"unbalanced\r\n";
    static const char bad3[] = "*2\r\n$3\r\nGETxx";
    check_every_split(bad1, sizeof(bad1) - 1);
    check_every_split(bad2, sizeof(bad2) - 1);
    check_every_split(bad3, sizeof(bad3) - 1);
}

Test(resp, truncated_request_needs_more_bytes)
{
    static const char req[] = "*2\r\n$4\r\nECHO\r\n$5\r\nhello\r\n";
    for (size_t len = 1; len < sizeof(req) - 1; len++) {
        struct result r = parse_once(req, len, &limits);
        cr_assert_eq(r.st, FM_OK, "len %zu", len);
        cr_assert(!r.complete, "complete at len %zu", len);
    }
}

Test(resp, bulk_arguments_are_binary_safe)
{
    static const char req[] = "*2\r\n$4\r\nECHO\r\n$6\r\na\r\n\0\nb\r\n";
    struct result r = parse_once(req, sizeof(req) - 1, &limits);
    cr_assert_eq(r.st, FM_OK);
    cr_assert(r.complete);
    cr_assert_eq(r.argc, 2);
    cr_assert_eq(r.joined_len, 12);
    cr_assert(memcmp(r.joined, "ECHO|a\r\n\0\nb|", 12) == 0);
    check_every_split(req, sizeof(req) - 1);
}

Test(resp, resp_arguments_point_into_the_buffer)
{
    uint8_t buf[] = "*1\r\n$4\r\nPING\r\n";
    struct fm_resp_parser p;
    fm_resp_parser_init(&p);
    struct fm_resp_request req;
    bool complete;
    cr_assert_eq(fm_resp_parse_request(&p, &limits, buf, sizeof(buf) - 1,
                                       &complete, &req, NULL),
                 FM_OK);
    cr_assert(complete);
    cr_assert_eq(req.argv[0], buf + 8);
    fm_resp_parser_fini(&p);
}

Test(resp, inline_tokens_split_on_spaces_and_tabs)
{
    expect_args("  PING \t hello   world\r\n", 3, "PING|hello|world|");
    expect_args("PING\n", 1, "PING|");
}

Test(resp, inline_double_quotes_take_escapes)
{
    expect_args("ECHO \"a b\\n\\r\\t\\\\\\\"\\x41\\x7a\"\r\n", 2,
                "ECHO|a b\n\r\t\\\"Az|");
    expect_args("ECHO \"\"\r\n", 2, "ECHO||");
    expect_args("ECHO \"\\xZZ\"\r\n", 2, "ECHO|xZZ|");
}

Test(resp, inline_single_quotes_are_literal)
{
    expect_args("ECHO 'a \"b\" \\n c' 'it\\'s'\r\n", 3,
                "ECHO|a \"b\" \\n c|it's|");
}

Test(resp, unbalanced_quotes_are_a_protocol_error)
{
    static const char *bad[] = {
        "ECHO \"abc\r\n",
        "ECHO 'abc\r\n",
        "ECHO \"abc\"def\r\n",
        "ECHO 'a'b\r\n",
    };
    for (size_t i = 0; i < FM_ARRAY_LEN(bad); i++)
        expect_error(bad[i], strlen(bad[i]), FM_ERR_SYNTAX);
    uint8_t buf[] = "ECHO \"abc\r\n";
    struct fm_resp_parser p;
    fm_resp_parser_init(&p);
    struct fm_resp_request req;
    struct fm_error err = {0};
    bool complete;
    cr_assert_eq(fm_resp_parse_request(&p, &limits, buf, sizeof(buf) - 1,
                                       &complete, &req, &err),
                 FM_ERR_SYNTAX);
    cr_assert_str_eq(err.msg, "Protocol error: unbalanced quotes in request");
    fm_resp_parser_fini(&p);
}

Test(resp, empty_lines_and_empty_arrays_are_empty_requests)
{
    expect_args("\r\n", 0, "");
    expect_args("   \n", 0, "");
    expect_args("*0\r\n", 0, "");
    expect_args("*-1\r\n", 0, "");
}

Test(resp, bad_lengths_are_protocol_errors)
{
    expect_error("*x\r\n", 4, FM_ERR_SYNTAX);
    expect_error("*1\r\n$-1\r\n", 9, FM_ERR_SYNTAX);
    expect_error("*1\r\n$-9999\r\n", 12, FM_ERR_SYNTAX);
    expect_error("*1\r\n$abc\r\n", 10, FM_ERR_SYNTAX);
    expect_error("*1\r\nPING\r\n", 10, FM_ERR_SYNTAX);
    expect_error("*1\r\n$4\r\nPINGxx", 14, FM_ERR_SYNTAX);
    expect_error("*1\n", 3, FM_OK); /* no CR yet: waits */
    expect_error("*1\rx", 4, FM_ERR_SYNTAX);
    expect_error("*11111111111111111111111111111111111", 36, FM_ERR_SYNTAX);
}

Test(resp, huge_bulk_length_is_a_limit_error)
{
    expect_error("*1\r\n$4097\r\n", 11, FM_ERR_LIMIT);
    expect_error("*1\r\n$999999999999999999\r\n", 26, FM_ERR_LIMIT);
    expect_error("*1\r\n$9999999999999999999999\r\n", 30, FM_ERR_SYNTAX);
}

Test(resp, too_many_arguments_is_a_limit_error)
{
    expect_error("*65\r\n", 5, FM_ERR_LIMIT);
    expect_error("*1000000000\r\n", 13, FM_ERR_LIMIT);
    char line[1024];
    size_t n = 0;
    for (int i = 0; i < 65; i++)
        n += (size_t)snprintf(line + n, sizeof(line) - n, "a ");
    line[n++] = '\n';
    expect_error(line, n, FM_ERR_LIMIT);
}

Test(resp, over_long_inline_line_is_a_limit_error)
{
    char *line = malloc(2000);
    memset(line, 'a', 2000);
    /* Without its newline, the line is refused once it passes the limit. */
    expect_error(line, 1024, FM_OK);
    expect_error(line, 1025, FM_ERR_LIMIT);
    line[1500] = '\n';
    expect_error(line, 1501, FM_ERR_LIMIT);
    free(line);
}

Test(resp, a_line_of_exactly_max_inline_len_is_accepted_however_it_is_cut)
{
    /* Found by tests/fuzz/fuzz_resp: a read that ended between the CR and
     * the LF made the line look one byte over the limit. */
    char line[1024 + 2];
    memset(line, 'a', 1024);
    line[1024] = '\r';
    line[1025] = '\n';
    struct result r = parse_once(line, sizeof(line), &limits);
    cr_assert_eq(r.st, FM_OK);
    cr_assert(r.complete);
    check_every_split(line, sizeof(line));
}

Test(resp, pipeline_of_many_requests_is_parsed_in_order)
{
    struct fm_buf b = {0};
    for (int i = 0; i < 1000; i++) {
        if (i % 2 == 0)
            fm_buf_printf(&b, "*2\r\n$4\r\nECHO\r\n$%d\r\n%d\r\n",
                          snprintf(NULL, 0, "%d", i), i);
        else
            fm_buf_printf(&b, "ECHO %d\r\n", i);
    }
    struct fm_resp_parser p;
    fm_resp_parser_init(&p);
    size_t off = 0;
    for (int i = 0; i < 1000; i++) {
        struct fm_resp_request req;
        bool complete;
        cr_assert_eq(fm_resp_parse_request(&p, &limits, b.data + off,
                                           b.len - off, &complete, &req, NULL),
                     FM_OK);
        cr_assert(complete);
        char want[16];
        int n = snprintf(want, sizeof(want), "%d", i);
        cr_assert_eq(req.argc, 2);
        cr_assert_eq(req.argv_len[1], (size_t)n);
        cr_assert(memcmp(req.argv[1], want, (size_t)n) == 0);
        off += req.req_len;
    }
    cr_assert_eq(off, b.len);
    fm_resp_parser_fini(&p);
    fm_buf_fini(&b);
}

Test(resp, byte_at_a_time_feeding_completes_once)
{
    static const char req[] = "*3\r\n$3\r\nGET\r\n$6\r\ntracks\r\n$2\r\n42\r\n";
    size_t len = sizeof(req) - 1;
    uint8_t buf[sizeof(req)];
    memcpy(buf, req, len);
    struct fm_resp_parser p;
    fm_resp_parser_init(&p);
    struct fm_resp_request out;
    bool complete = false;
    for (size_t n = 1; n <= len; n++) {
        cr_assert_eq(
            fm_resp_parse_request(&p, &limits, buf, n, &complete, &out, NULL),
            FM_OK);
        cr_assert_eq(complete, n == len, "at %zu", n);
    }
    cr_assert_eq(out.argc, 3);
    cr_assert_eq(out.req_len, len);
    fm_resp_parser_fini(&p);
}

Test(resp, garbage_never_crashes)
{
    srand(1);
    struct fm_resp_parser p;
    fm_resp_parser_init(&p);
    for (int round = 0; round < 2000; round++) {
        uint8_t buf[64];
        size_t len = (size_t)(rand() % 64) + 1;
        for (size_t i = 0; i < len; i++) {
            static const char alpha[] = "*$\r\n0123-9 \"'\\xa";
            buf[i] = (rand() % 3 == 0) ? (uint8_t)rand()
                                       : (uint8_t)alpha[rand() % 16];
        }
        size_t off = 0;
        while (off < len) {
            struct fm_resp_request out;
            bool complete;
            fm_status st = fm_resp_parse_request(
                &p, &limits, buf + off, len - off, &complete, &out, NULL);
            if (st != FM_OK || !complete)
                break;
            cr_assert(out.req_len > 0 && out.req_len <= len - off);
            off += out.req_len;
        }
        fm_resp_parser_reset(&p);
    }
    fm_resp_parser_fini(&p);
}

static void expect_encoding(const struct fm_reply *r, const char *want)
{
    struct fm_buf out = {0};
    cr_assert_eq(fm_resp_encode_reply(&out, r), FM_OK);
    cr_assert_eq(out.len, strlen(want), "got '%.*s'", (int)out.len,
                 (const char *)out.data);
    cr_assert(memcmp(out.data, want, out.len) == 0, "got '%.*s'", (int)out.len,
              (const char *)out.data);
    fm_buf_fini(&out);
}

Test(resp, replies_encode_as_resp2)
{
    struct fm_reply r = {0};
    fm_reply_int(&r, -42);
    fm_reply_int(&r, INT64_MIN);
    fm_reply_bulk(&r, "a\r\nb", 4);
    fm_reply_nil(&r);
    fm_reply_status(&r, "OK");
    fm_reply_array(&r, 2);
    fm_reply_cstr(&r, "");
    fm_reply_int(&r, 7);
    fm_reply_error(&r, FM_ERR_UNIQUE, "users.email 'x' exists\r\nbad");
    expect_encoding(&r, ":-42\r\n:-9223372036854775808\r\n$4\r\na\r\nb\r\n"
                        "$-1\r\n+OK\r\n*2\r\n$0\r\n\r\n:7\r\n"
                        "-UNIQUE users.email 'x' exists  bad\r\n");
    fm_reply_fini(&r);
}

Test(resp, error_without_message_uses_the_default)
{
    struct fm_reply r = {0};
    fm_reply_error(&r, FM_ERR_NOAUTH, "");
    expect_encoding(&r, "-NOAUTH authentication required\r\n");
    fm_reply_fini(&r);
    struct fm_buf out = {0};
    cr_assert_eq(fm_resp_append_error(&out, FM_ERR_LIMIT, "too big"), FM_OK);
    cr_assert_eq(out.len, 16);
    cr_assert(memcmp(out.data, "-LIMIT too big\r\n", 16) == 0);
    fm_buf_fini(&out);
}

/* Fails the allocation numbered fail_at (0-based) and counts them all. */
struct alloc_plan {
    size_t n;
    size_t fail_at;
};

static bool fail_nth(void *ctx, size_t size)
{
    (void)size;
    struct alloc_plan *plan = ctx;
    return plan->n++ == plan->fail_at;
}

Test(resp, allocation_failure_at_each_step_is_reported_cleanly)
{
    static const char text[] =
        "*20\r\n$4\r\nECHO\r\n$1\r\na\r\n$1\r\na\r\n$1\r\na\r\n$1\r\na\r\n"
        "$1\r\na\r\n$1\r\na\r\n$1\r\na\r\n$1\r\na\r\n$1\r\na\r\n$1\r\na\r\n"
        "$1\r\na\r\n$1\r\na\r\n$1\r\na\r\n$1\r\na\r\n$1\r\na\r\n$1\r\na\r\n"
        "$1\r\na\r\n$1\r\na\r\n$1\r\na\r\n";
    bool succeeded = false;
    for (size_t fail_at = 0; !succeeded && fail_at < 64; fail_at++) {
        uint8_t buf[sizeof(text)];
        memcpy(buf, text, sizeof(text));
        struct alloc_plan plan = {0, fail_at};
        struct fm_resp_parser p;
        fm_resp_parser_init(&p);
        struct fm_resp_request req;
        struct fm_error err = {0};
        bool complete = false;
        fm_set_alloc_fail_hook(fail_nth, &plan);
        fm_status st = fm_resp_parse_request(&p, &limits, buf, sizeof(text) - 1,
                                             &complete, &req, &err);
        fm_set_alloc_fail_hook(NULL, NULL);
        if (st == FM_OK) {
            cr_assert(complete);
            cr_assert_eq(req.argc, 20);
            succeeded = true;
        } else {
            cr_assert_eq(st, FM_ERR_NOMEM, "%s", fm_status_name(st));
        }
        fm_resp_parser_fini(&p);
    }
    cr_assert(succeeded);

    struct fm_reply r = {0};
    fm_reply_array(&r, 2);
    fm_reply_cstr(&r, "a long enough bulk string to need a second block");
    fm_reply_int(&r, 1);
    succeeded = false;
    for (size_t fail_at = 0; !succeeded && fail_at < 16; fail_at++) {
        struct fm_buf out = {0};
        struct alloc_plan plan = {0, fail_at};
        fm_set_alloc_fail_hook(fail_nth, &plan);
        fm_status st = fm_resp_encode_reply(&out, &r);
        fm_set_alloc_fail_hook(NULL, NULL);
        if (st == FM_OK)
            succeeded = true;
        else
            cr_assert_eq(st, FM_ERR_NOMEM);
        cr_assert(st == FM_OK || out.len == 0);
        fm_buf_fini(&out);
    }
    cr_assert(succeeded);
    fm_reply_fini(&r);
}
