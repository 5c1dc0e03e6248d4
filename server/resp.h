/*
 * resp.h: the request parser (RESP2 arrays and inline lines) and the RESP2
 * reply encoder.
 *
 * The parser is a pure function over a byte buffer plus a small state that
 * lets a request split across any number of reads be resumed where it
 * stopped, so that a request of n bytes costs O(n) however it arrives.
 */
#ifndef FM_SERVER_RESP_H
#define FM_SERVER_RESP_H

#include "engine/base.h"
#include "engine/fermata.h"

/* The size limits of SPEC section 5 that the parser enforces. */
struct fm_resp_limits {
    size_t max_inline_len; /* bytes of one inline line, without its CRLF */
    size_t max_bulk_len;   /* bytes of one RESP bulk argument */
    size_t max_args;       /* arguments of one request, the name included */
};

/*
 * The state of one connection's parser. Zero-filled (or fm_resp_parser_init)
 * is a parser waiting for the first byte of a request. It remembers where
 * the request being read stands as offsets from the request's first byte, so
 * the caller may move the unparsed bytes (e.g. to the front of its buffer)
 * between calls as long as the request's first byte moves with them.
 */
struct fm_resp_parser {
    int state;         /* enum in resp.c: start, RESP header, bulk, inline */
    size_t pos;        /* offset of the next byte to look at */
    size_t n_expected; /* RESP: arguments announced by the '*' line */
    size_t bulk_len;   /* RESP: length of the bulk being read */
    size_t argc;       /* arguments complete so far */
    size_t arg_cap;    /* capacity of the three arrays below */
    size_t *arg_off;   /* offset of each argument from the request start */
    size_t *arg_len;   /* length of each argument */
    const uint8_t **arg_ptr; /* filled when the request is complete */
};

/* One complete request. Pointers are borrowed: argv and argv_len from the
 * parser, the argument bytes from the caller's buffer; both stay valid until
 * the next call on this parser or until the buffer changes. */
struct fm_resp_request {
    size_t argc; /* 0 for an empty line or "*0": nothing to execute */
    const uint8_t *const *argv;
    const size_t *argv_len;
    size_t req_len; /* bytes of the buffer this request took */
};

/* Prepares a parser (same as zero-filling it). */
void fm_resp_parser_init(struct fm_resp_parser *p);

/* Releases the parser's arrays; safe on a zero-filled parser. */
void fm_resp_parser_fini(struct fm_resp_parser *p);

/* Forgets a partly parsed request; keeps the arrays. */
void fm_resp_parser_reset(struct fm_resp_parser *p);

/* True when the parser is in the middle of a request. */
bool fm_resp_parser_is_busy(const struct fm_resp_parser *p);

/* Bytes of memory the parser holds, for INFO and maxmemory. */
size_t fm_resp_parser_memory_bytes(const struct fm_resp_parser *p);

/*
 * Parses the request that starts at req[0], of which avail bytes have
 * arrived. The request's type is chosen by its first byte: '*' is a RESP
 * array of bulk strings, anything else an inline line. Inline arguments
 * are unquoted and unescaped in place, which is why req is writable; RESP
 * arguments are not copied.
 *
 * Returns FM_OK with *complete_out false when more bytes are needed (call
 * again with the same req and a larger avail), or with *complete_out true
 * and *out filled when a request is complete; the parser is then ready for
 * the request that starts at req + out->req_len. Errors, with a message in
 * err that the server sends back before closing the connection:
 * FM_ERR_SYNTAX (a protocol error: bad header, unbalanced quotes),
 * FM_ERR_LIMIT (a line, bulk or argument count over lim), FM_ERR_NOMEM.
 * After an error the parser must be reset before further use.
 */
fm_status fm_resp_parse_request(struct fm_resp_parser *p,
                                const struct fm_resp_limits *lim, uint8_t *req,
                                size_t avail, bool *complete_out,
                                struct fm_resp_request *out,
                                struct fm_error *err);

/*
 * Appends r, which is RESP2 already (a failed reply as one OOM error), to
 * out. FM_ERR_NOMEM, out unchanged on failure.
 */
fm_status fm_resp_encode_reply(struct fm_buf *out, const struct fm_reply *r);

/* Appends "-CODE msg\r\n" for a status and a message (CR and LF in msg
 * become spaces). FM_ERR_NOMEM, out unchanged on failure. */
fm_status fm_resp_append_error(struct fm_buf *out, fm_status st,
                               const char *msg);

#endif /* FM_SERVER_RESP_H */
