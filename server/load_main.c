/*
 * load_main.c: fermata-load, bulk import of a CSV or TSV file into one table
 * over the protocol (SPEC section 6).
 *
 *   fermata-load [--host H] [--port P] [--password PW] --table T
 *                [--columns a,b,c] [--map csvcol=tablecol ...]
 *                [--upsert keycol,keycol] [--pipeline N] [--skip-errors]
 *                [--tsv | --delimiter C] [--quiet] FILE|-
 *
 * The input. RFC 4180 CSV: fields separated by the delimiter (',' unless
 * --delimiter or --tsv says otherwise), records ended by LF or CRLF, the
 * last one perhaps by the end of the file. A field that starts with '"' is
 * quoted: it runs to the next lone '"', a doubled '""' stands for one '"',
 * and delimiters, CR and LF inside it are data. A '"' inside an unquoted
 * field is an ordinary byte (real files hold 5'10" and the like); any byte
 * but a delimiter or line end after a closing quote makes the record bad.
 * --tsv turns quoting off: every byte but TAB, CR and LF is data, as in the
 * HetRec files. A UTF-8 byte-order mark at the start is skipped, and so are
 * empty lines. The first record names the columns unless --columns does.
 *
 * Fields and columns. Each input column maps to the table column of the
 * same name, or to the one --map names (--map a=b,c=d; --map a= drops
 * column a; an empty name in the header or in --columns drops it too). An
 * empty unquoted field leaves its column out of the command, so that it
 * takes its DEFAULT or NULL; a quoted empty field ("") is an empty string,
 * which is how PostgreSQL's COPY tells NULL from '' in CSV.
 *
 * The commands. Each record becomes one request, a RESP2 array of bulk
 * strings, binary-safe, never quoted or escaped:
 *
 *     INSERT T col val col val ...
 *     UPSERT T key val key val ... SET col val ...     (with --upsert)
 *
 * The pipeline. Requests are encoded into one output buffer and written
 * while replies are read, through one poll() loop on a non-blocking socket,
 * so neither side can stall the other. At most --pipeline requests (256 by
 * default) are unanswered at any time; a ring of that many entries holds,
 * for each, the input line it came from and where its bytes end in the
 * output stream. Replies come back in request order, so the reply at hand
 * always belongs to the oldest entry. Memory is bounded by the ring, the
 * output buffer (filled up to FLUSH_BYTES), one record (at most
 * MAX_RECORD_BYTES) and the reply buffer (MAX_REPLY_BYTES): the input is
 * streamed, never held.
 *
 * Errors. A reply of :id counts a row as loaded. An error reply, or a
 * record that is malformed (a field count that differs from the header's,
 * an unterminated quote, an empty upsert key), counts it as failed and is
 * printed with the line the record starts on; the first ERRORS_SHOWN are
 * printed, then only counted. Without --skip-errors the first failure stops
 * the load: no more requests are written, the replies of those already
 * written whole are still read and counted (pipelining means up to
 * --pipeline rows after the failing one may have been applied), and the
 * summary reports the rest as not sent. Fatal errors (a connection that
 * breaks, an input that cannot be read, a record over MAX_RECORD_BYTES,
 * which is most likely a quote that never closes) stop at once.
 *
 * Progress goes to stderr: a bar redrawn every PROGRESS_TTY_US when stderr
 * is a terminal, a plain line every PROGRESS_LOG_US otherwise, nothing
 * with --quiet. The summary goes to stdout.
 *
 * Exit status: 0 when every row loaded, 1 when any row failed or the load
 * stopped, 2 for usage errors (bad flags, a --map or --upsert column the
 * input lacks, a table column named twice).
 *
 * Not done: compressed input (pipe it through zcat), several tables per
 * run, MULTI batches (every row commits on its own, so a failed row never
 * undoes its neighbours), retrying after a disconnect.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include "engine/base.h"

#define READ_CHUNK       (64 * 1024)
#define MAX_RECORD_BYTES (4 * 1024 * 1024)
#define MAX_COLUMNS      1024
#define MAX_MAPS         256
#define MAX_PIPELINE     1000000
#define FLUSH_BYTES      (256 * 1024)
#define MAX_REPLY_BYTES  (1024 * 1024)
#define ERRORS_SHOWN     10
#define CONNECT_MS       10000
#define PROGRESS_TTY_US  100000
#define PROGRESS_LOG_US  5000000
#define MSG_CAP          512

enum exit_code {
    EXIT_OK = 0,
    EXIT_FAILED = 1,
    EXIT_USAGE = 2,
};

struct options {
    const char *host;
    const char *port;
    const char *password; /* NULL: no AUTH */
    const char *table;
    const char *columns; /* --columns list; NULL: the first record */
    const char *upsert;  /* --upsert key list; NULL: INSERT */
    const char *path;    /* "-" is stdin */
    const char *maps[MAX_MAPS];
    size_t n_maps;
    size_t pipeline; /* most requests unanswered at once */
    uint8_t delimiter;
    bool quoting; /* CSV quotes; off for TSV */
    bool skip_errors;
    bool quiet;
};

/* The streaming input: a chunk buffer over a file descriptor. */
struct reader {
    int fd;
    uint8_t *buf; /* READ_CHUNK bytes, of which pos..len are unread */
    size_t pos;
    size_t len;
    bool eof;
    bool at_start;       /* nothing read yet: a BOM may follow */
    int64_t line;        /* line number of the next byte, from 1 */
    uint64_t bytes_read; /* bytes taken from fd */
    int64_t total_bytes; /* size of a regular file; -1 unknown */
    uint8_t delimiter;
    bool quoting;      /* '"' starts a quoted field; off for TSV */
    char err[MSG_CAP]; /* why a read failed */
};

struct field {
    size_t off; /* into record.bytes */
    size_t len;
    bool quoted; /* written "..." in the input: never left out */
};

/* One record, reused for every row. */
struct record {
    struct fm_buf bytes; /* every field's bytes, one after another */
    struct field *fields;
    size_t n_fields; /* fields seen; only the first MAX_COLUMNS kept */
    size_t fields_cap;
    int64_t line;        /* the line the record starts on */
    char error[MSG_CAP]; /* "" when well-formed */
};

/* One input column and where it goes. */
struct column {
    char *name;  /* table column, owned; NULL drops the input column */
    bool is_key; /* an --upsert key */
};

/* A request written (or being written) whose reply has not come. */
struct pending {
    int64_t line;     /* input line; 0 for AUTH and the table check */
    uint64_t end_off; /* offset in the output stream just past it */
};

enum reply_kind {
    REPLY_STATUS,
    REPLY_ERROR,
    REPLY_INTEGER,
    REPLY_BULK,
    REPLY_NIL,
    REPLY_ARRAY,
};

/* A parsed reply; text borrows the reply buffer until the next recv. */
struct reply {
    enum reply_kind kind;
    int64_t integer;
    const char *text; /* status, error or bulk text; NULL otherwise */
    size_t text_len;
};

enum parse_result {
    PARSE_DONE,
    PARSE_MORE, /* the reply is not complete yet */
    PARSE_BAD,  /* not RESP2: the stream is out of step */
};

struct loader {
    struct options opt;
    struct reader in;
    struct record rec;
    struct column *cols;
    size_t n_cols;
    int fd; /* the connection */
    struct fm_buf out;
    size_t out_sent;    /* bytes of out already written */
    uint64_t enc_total; /* bytes ever put into out */
    uint64_t sent_total;
    struct pending *ring; /* opt.pipeline entries */
    size_t ring_head;
    size_t n_pending;
    struct fm_buf replies;
    size_t reply_pos; /* bytes of replies already parsed */
    bool input_done;
    bool stopping; /* a failure without --skip-errors: send no more */
    uint64_t n_ok;
    uint64_t n_failed;
    uint64_t n_unsent;
    int64_t last_line; /* line of the last request answered */
    int64_t start_us;
    int64_t progress_us; /* when progress was last shown */
    bool tty;
    char fatal[MSG_CAP]; /* "" unless the load broke off */
};

static void usage(FILE *f)
{
    fprintf(f,
            "usage: fermata-load [--host H] [--port P] [--password PW] "
            "--table T\n"
            "                    [--columns a,b,c] [--map csvcol=tablecol "
            "...]\n"
            "                    [--upsert keycol,keycol] [--pipeline N] "
            "[--skip-errors]\n"
            "                    [--tsv | --delimiter C] [--quiet] FILE|-\n");
}

static bool parse_size(const char *s, size_t max, size_t *out)
{
    char *end = NULL;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || s[0] == '-' || v == 0 ||
        v > max)
        return false;
    *out = (size_t)v;
    return true;
}

static bool parse_delimiter(const char *s, uint8_t *out)
{
    if (strcmp(s, "\\t") == 0 || strcmp(s, "tab") == 0) {
        *out = '\t';
        return true;
    }
    if (strlen(s) != 1 || s[0] == '"' || s[0] == '\r' || s[0] == '\n')
        return false;
    *out = (uint8_t)s[0];
    return true;
}

/* Takes one flag and its value from argv at *i; false on a bad flag. */
static bool parse_flag(struct options *o, int argc, char **argv, int *i)
{
    const char *f = argv[*i];
    const char *v = *i + 1 < argc ? argv[*i + 1] : NULL;
    if (strcmp(f, "--tsv") == 0) {
        o->delimiter = '\t';
        o->quoting = false;
        return true;
    }
    if (strcmp(f, "--skip-errors") == 0) {
        o->skip_errors = true;
        return true;
    }
    if (strcmp(f, "--quiet") == 0) {
        o->quiet = true;
        return true;
    }
    if (v == NULL)
        return false;
    (*i)++;
    if (strcmp(f, "--host") == 0)
        o->host = v;
    else if (strcmp(f, "--port") == 0)
        o->port = v;
    else if (strcmp(f, "--password") == 0)
        o->password = v;
    else if (strcmp(f, "--table") == 0)
        o->table = v;
    else if (strcmp(f, "--columns") == 0)
        o->columns = v;
    else if (strcmp(f, "--upsert") == 0)
        o->upsert = v;
    else if (strcmp(f, "--map") == 0 && o->n_maps < MAX_MAPS)
        o->maps[o->n_maps++] = v;
    else if (strcmp(f, "--pipeline") == 0)
        return parse_size(v, MAX_PIPELINE, &o->pipeline);
    else if (strcmp(f, "--delimiter") == 0)
        return parse_delimiter(v, &o->delimiter);
    else
        return false;
    return true;
}

/* Fills o from argv; prints why and returns false on a usage error. */
static bool parse_options(struct options *o, int argc, char **argv)
{
    memset(o, 0, sizeof(*o));
    o->host = "127.0.0.1";
    o->port = "7878";
    o->pipeline = 256;
    o->delimiter = ',';
    o->quoting = true;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            exit(EXIT_OK);
        }
        if (a[0] == '-' && a[1] != '\0') {
            if (!parse_flag(o, argc, argv, &i)) {
                fprintf(stderr, "fermata-load: bad option or value: %s\n", a);
                return false;
            }
        } else if (o->path == NULL) {
            o->path = a;
        } else {
            fprintf(stderr, "fermata-load: more than one input: %s\n", a);
            return false;
        }
    }
    if (o->table == NULL || o->path == NULL) {
        fprintf(stderr, "fermata-load: %s is required\n",
                o->table == NULL ? "--table" : "an input FILE or -");
        return false;
    }
    return true;
}

/* Input. */

static fm_status reader_open(struct reader *r, const char *path)
{
    memset(r, 0, sizeof(*r));
    r->fd = -1;
    r->line = 1;
    r->at_start = true;
    r->total_bytes = -1;
    r->buf = fm_malloc(READ_CHUNK);
    if (r->buf == NULL) {
        snprintf(r->err, sizeof(r->err), "out of memory");
        return FM_ERR_NOMEM;
    }
    if (strcmp(path, "-") == 0) {
        r->fd = STDIN_FILENO;
    } else {
        r->fd = open(path, O_RDONLY);
        if (r->fd < 0) {
            snprintf(r->err, sizeof(r->err), "cannot open %s: %s", path,
                     strerror(errno));
            return FM_ERR_IO;
        }
    }
    struct stat sb;
    if (fstat(r->fd, &sb) == 0 && S_ISREG(sb.st_mode))
        r->total_bytes = (int64_t)sb.st_size;
    return FM_OK;
}

static void reader_close(struct reader *r)
{
    if (r->fd > STDIN_FILENO)
        close(r->fd);
    fm_free(r->buf);
    r->fd = -1;
    r->buf = NULL;
}

/* Reads the next chunk once the buffer is used up. FM_ERR_IO. */
static fm_status reader_fill(struct reader *r)
{
    FM_ASSERT(r->pos == r->len);
    if (r->eof)
        return FM_OK;
    ssize_t n;
    do {
        n = read(r->fd, r->buf, READ_CHUNK);
    } while (n < 0 && errno == EINTR);
    if (n < 0) {
        snprintf(r->err, sizeof(r->err), "cannot read the input: %s",
                 strerror(errno));
        return FM_ERR_IO;
    }
    r->pos = 0;
    r->len = (size_t)n;
    r->eof = n == 0;
    r->bytes_read += (uint64_t)n;
    if (r->at_start && r->len > 0) {
        r->at_start = false;
        if (r->len >= 3 && memcmp(r->buf, "\xEF\xBB\xBF", 3) == 0)
            r->pos = 3;
    }
    return FM_OK;
}

/* The next byte without taking it; -1 at the end of the input. */
static int reader_peek(struct reader *r, fm_status *st)
{
    if (r->pos == r->len) {
        *st = reader_fill(r);
        if (*st != FM_OK || r->pos == r->len)
            return -1;
    }
    return r->buf[r->pos];
}

static int reader_next(struct reader *r, fm_status *st)
{
    int c = reader_peek(r, st);
    if (c >= 0) {
        r->pos++;
        if (c == '\n')
            r->line++;
    }
    return c;
}

/* Records. */

static void record_fail(struct record *rec, const char *msg)
{
    if (rec->error[0] == '\0')
        snprintf(rec->error, sizeof(rec->error), "%s", msg);
}

static fm_status record_add_byte(struct record *rec, int c)
{
    if (rec->bytes.len >= MAX_RECORD_BYTES)
        return FM_ERR_LIMIT;
    return fm_buf_push(&rec->bytes, (uint8_t)c);
}

static fm_status record_end_field(struct record *rec, size_t start, bool quoted)
{
    if (rec->n_fields == MAX_COLUMNS) {
        record_fail(rec, "more than 1024 fields");
    } else {
        if (rec->n_fields == rec->fields_cap) {
            size_t cap = rec->fields_cap ? rec->fields_cap * 2 : 16;
            struct field *f = fm_realloc(rec->fields, cap * sizeof(*f));
            if (f == NULL)
                return FM_ERR_NOMEM;
            rec->fields = f;
            rec->fields_cap = cap;
        }
        rec->fields[rec->n_fields] = (struct field){
            .off = start, .len = rec->bytes.len - start, .quoted = quoted};
    }
    rec->n_fields++;
    return FM_OK;
}

enum csv_state {
    CSV_FIELD_START,
    CSV_UNQUOTED,
    CSV_QUOTED,
    CSV_AFTER_QUOTE, /* just past the closing quote of a field */
};

/*
 * True when c ends the record: LF, or CR before LF or at the end of the
 * input (the LF is taken too). A CR elsewhere is data.
 */
static bool is_line_end(struct reader *r, int c, fm_status *st)
{
    if (c == '\n')
        return true;
    if (c != '\r')
        return false;
    int next = reader_peek(r, st);
    if (next == '\n')
        reader_next(r, st);
    return next == '\n' || next < 0;
}

/*
 * Feeds one byte of a record to the CSV state machine. *done_out is set
 * when the byte ended the record. FM_ERR_LIMIT, FM_ERR_NOMEM, FM_ERR_IO.
 */
static fm_status csv_step(struct reader *r, struct record *rec, int c,
                          enum csv_state *state, size_t *start, bool *done_out)
{
    fm_status st = FM_OK;
    bool quoted = *state == CSV_AFTER_QUOTE;
    switch (*state) {
    case CSV_FIELD_START:
        if (r->quoting && c == '"') {
            *state = CSV_QUOTED;
            return FM_OK;
        }
        *state = CSV_UNQUOTED;
        return csv_step(r, rec, c, state, start, done_out);
    case CSV_QUOTED:
        if (c != '"')
            return record_add_byte(rec, c);
        if (reader_peek(r, &st) == '"') {
            reader_next(r, &st);
            return st != FM_OK ? st : record_add_byte(rec, '"');
        }
        *state = CSV_AFTER_QUOTE;
        return st;
    case CSV_UNQUOTED:
    case CSV_AFTER_QUOTE:
        break;
    }
    if (c == r->delimiter || is_line_end(r, c, &st)) {
        if (st != FM_OK)
            return st;
        *done_out = c != r->delimiter;
        st = record_end_field(rec, *start, quoted);
        *start = rec->bytes.len;
        *state = CSV_FIELD_START;
        return st;
    }
    if (st != FM_OK)
        return st;
    if (*state == CSV_AFTER_QUOTE) {
        record_fail(rec, "unexpected character after a closing quote");
        *state = CSV_UNQUOTED;
    }
    return record_add_byte(rec, c);
}

/*
 * Reads the next record into rec, skipping empty lines. *got_out is false
 * at the end of the input. A malformed record comes back with rec->error
 * set. FM_ERR_IO (r->err says why), FM_ERR_LIMIT (a record over
 * MAX_RECORD_BYTES), FM_ERR_NOMEM.
 */
static fm_status read_record(struct reader *r, struct record *rec,
                             bool *got_out)
{
    for (;;) {
        rec->bytes.len = 0;
        rec->n_fields = 0;
        rec->error[0] = '\0';
        rec->line = r->line;
        enum csv_state state = CSV_FIELD_START;
        size_t start = 0;
        bool done = false;
        bool any = false;
        fm_status st = FM_OK;
        while (!done) {
            int c = reader_next(r, &st);
            if (st != FM_OK)
                return st;
            if (c < 0)
                break;
            any = true;
            st = csv_step(r, rec, c, &state, &start, &done);
            if (st != FM_OK)
                return st;
        }
        if (!any) {
            *got_out = false;
            return FM_OK;
        }
        if (!done) {
            /* The input ended inside the record, which RFC 4180 allows. */
            if (state == CSV_QUOTED)
                record_fail(rec, "unterminated quoted field");
            st = record_end_field(
                rec, start, state != CSV_UNQUOTED && state != CSV_FIELD_START);
            if (st != FM_OK)
                return st;
        }
        bool blank = rec->n_fields == 1 && rec->fields[0].len == 0 &&
                     !rec->fields[0].quoted;
        if (!blank) {
            *got_out = true;
            return FM_OK;
        }
    }
}

/* Bytes of the input the parser has taken. */
static uint64_t reader_consumed(const struct reader *r)
{
    return r->bytes_read - (uint64_t)(r->len - r->pos);
}

/* Column setup. */

/* The i-th comma-separated item of list; false past the last one. */
static bool list_item(const char *list, size_t i, const char **p_out,
                      size_t *len_out)
{
    const char *p = list;
    for (; i > 0; i--) {
        p = strchr(p, ',');
        if (p == NULL)
            return false;
        p++;
    }
    const char *end = strchr(p, ',');
    *p_out = p;
    *len_out = end != NULL ? (size_t)(end - p) : strlen(p);
    return true;
}

static bool name_eq(const char *a, size_t a_len, const char *b, size_t b_len)
{
    if (a_len != b_len)
        return false;
    for (size_t i = 0; i < a_len; i++) {
        char x = a[i] >= 'A' && a[i] <= 'Z' ? (char)(a[i] - 'A' + 'a') : a[i];
        char y = b[i] >= 'A' && b[i] <= 'Z' ? (char)(b[i] - 'A' + 'a') : b[i];
        if (x != y)
            return false;
    }
    return true;
}

/*
 * Finds the --map item for the input column name. *dst_out and *dst_len_out
 * get the table column (length 0: dropped). False when no item names it
 * (items without '=' are skipped here; check_maps rejects them).
 */
static bool find_map(const struct options *o, const char *name, size_t len,
                     const char **dst_out, size_t *dst_len_out)
{
    for (size_t m = 0; m < o->n_maps; m++) {
        const char *it;
        size_t it_len;
        for (size_t i = 0; list_item(o->maps[m], i, &it, &it_len); i++) {
            const char *eq = memchr(it, '=', it_len);
            if (eq == NULL || !name_eq(it, (size_t)(eq - it), name, len))
                continue;
            *dst_out = eq + 1;
            *dst_len_out = it_len - (size_t)(eq - it) - 1;
            return true;
        }
    }
    return false;
}

static char *dup_name(const char *p, size_t len)
{
    char *s = fm_malloc(len + 1);
    if (s != NULL) {
        memcpy(s, p, len);
        s[len] = '\0';
    }
    return s;
}

/* Adds input column i, named p[0..len), applying --map. FM_ERR_NOMEM. */
static fm_status add_column(struct loader *ld, size_t i, const char *p,
                            size_t len)
{
    const char *dst = p;
    size_t dst_len = len;
    find_map(&ld->opt, p, len, &dst, &dst_len);
    ld->cols[i].is_key = false;
    ld->cols[i].name = NULL;
    if (dst_len == 0)
        return FM_OK;
    ld->cols[i].name = dup_name(dst, dst_len);
    return ld->cols[i].name != NULL ? FM_OK : FM_ERR_NOMEM;
}

/* Takes the column names from --columns or the first record. */
static fm_status read_column_names(struct loader *ld, bool *empty_out)
{
    const char *it;
    size_t it_len;
    size_t n = 0;
    if (ld->opt.columns != NULL) {
        while (list_item(ld->opt.columns, n, &it, &it_len))
            n++;
    } else {
        bool got = false;
        fm_status st = read_record(&ld->in, &ld->rec, &got);
        if (st != FM_OK || !got) {
            *empty_out = !got;
            return st;
        }
        n = ld->rec.n_fields;
        if (ld->rec.error[0] != '\0' || n > MAX_COLUMNS)
            return FM_ERR_SYNTAX;
    }
    ld->cols = fm_calloc(n, sizeof(*ld->cols));
    if (ld->cols == NULL)
        return FM_ERR_NOMEM;
    ld->n_cols = n;
    for (size_t i = 0; i < n; i++) {
        if (ld->opt.columns != NULL) {
            list_item(ld->opt.columns, i, &it, &it_len);
        } else {
            it = (const char *)ld->rec.bytes.data + ld->rec.fields[i].off;
            it_len = ld->rec.fields[i].len;
        }
        fm_status st = add_column(ld, i, it, it_len);
        if (st != FM_OK)
            return st;
    }
    return FM_OK;
}

/* True when some input column is named p[0..len) (before mapping). */
static bool has_input_column(const struct loader *ld, const char *p, size_t len)
{
    for (size_t i = 0; i < ld->n_cols; i++) {
        const char *it;
        size_t it_len;
        if (ld->opt.columns != NULL) {
            list_item(ld->opt.columns, i, &it, &it_len);
        } else {
            it = (const char *)ld->rec.bytes.data + ld->rec.fields[i].off;
            it_len = ld->rec.fields[i].len;
        }
        if (name_eq(it, it_len, p, len))
            return true;
    }
    return false;
}

/* Every --map item is a=b and names an input column; prints why not. */
static bool check_maps(const struct loader *ld)
{
    for (size_t m = 0; m < ld->opt.n_maps; m++) {
        const char *it;
        size_t it_len;
        for (size_t i = 0; list_item(ld->opt.maps[m], i, &it, &it_len); i++) {
            const char *eq = memchr(it, '=', it_len);
            if (eq == NULL || eq == it) {
                fprintf(stderr,
                        "fermata-load: --map expects csvcol=tablecol, "
                        "got '%.*s'\n",
                        (int)it_len, it);
                return false;
            }
            if (!has_input_column(ld, it, (size_t)(eq - it))) {
                fprintf(stderr,
                        "fermata-load: --map names no input column: "
                        "'%.*s'\n",
                        (int)(eq - it), it);
                return false;
            }
        }
    }
    return true;
}

/* No table column twice, every upsert key present; prints why not. */
static bool check_columns(struct loader *ld)
{
    size_t n_named = 0;
    for (size_t i = 0; i < ld->n_cols; i++) {
        const char *a = ld->cols[i].name;
        for (size_t j = 0; a != NULL && j < i; j++) {
            const char *b = ld->cols[j].name;
            if (b != NULL && name_eq(a, strlen(a), b, strlen(b))) {
                fprintf(stderr, "fermata-load: column '%s' given twice\n", a);
                return false;
            }
        }
        n_named += a != NULL;
    }
    if (n_named == 0) {
        fprintf(stderr, "fermata-load: no column to load\n");
        return false;
    }
    const char *k;
    size_t k_len;
    for (size_t i = 0;
         ld->opt.upsert && list_item(ld->opt.upsert, i, &k, &k_len); i++) {
        bool found = false;
        for (size_t j = 0; j < ld->n_cols && !found; j++) {
            const char *a = ld->cols[j].name;
            found = a != NULL && name_eq(a, strlen(a), k, k_len);
            if (found)
                ld->cols[j].is_key = true;
        }
        if (!found) {
            fprintf(stderr,
                    "fermata-load: --upsert key '%.*s' is not a loaded "
                    "column\n",
                    (int)k_len, k);
            return false;
        }
    }
    return true;
}

/* Requests. */

static fm_status append_bulk(struct fm_buf *b, const void *p, size_t len)
{
    char hdr[32];
    int n = snprintf(hdr, sizeof(hdr), "$%zu\r\n", len);
    fm_status st = fm_buf_append(b, hdr, (size_t)n);
    if (st == FM_OK)
        st = fm_buf_append(b, p, len);
    if (st == FM_OK)
        st = fm_buf_append(b, "\r\n", 2);
    return st;
}

static fm_status append_header(struct fm_buf *b, size_t argc)
{
    return fm_buf_printf(b, "*%zu\r\n", argc);
}

/* Appends each present field of the key (or non-key) columns as pairs. */
static fm_status append_pairs(struct loader *ld, bool keys)
{
    const struct record *rec = &ld->rec;
    struct fm_buf *b = &ld->out;
    fm_status st = FM_OK;
    for (size_t i = 0; i < ld->n_cols && st == FM_OK; i++) {
        const struct field *f = &rec->fields[i];
        const struct column *c = &ld->cols[i];
        if (c->name == NULL || c->is_key != keys || (f->len == 0 && !f->quoted))
            continue;
        st = append_bulk(b, c->name, strlen(c->name));
        if (st == FM_OK)
            st = append_bulk(b, rec->bytes.data + f->off, f->len);
    }
    return st;
}

/* Counts the present fields of key and of other columns; checks keys. */
static bool count_fields(struct loader *ld, size_t *n_keys_out,
                         size_t *n_rest_out)
{
    struct record *rec = &ld->rec;
    *n_keys_out = 0;
    *n_rest_out = 0;
    for (size_t i = 0; i < ld->n_cols; i++) {
        const struct field *f = &rec->fields[i];
        const struct column *c = &ld->cols[i];
        bool present = f->len > 0 || f->quoted;
        if (c->name == NULL)
            continue;
        if (c->is_key && !present) {
            char msg[MSG_CAP];
            snprintf(msg, sizeof(msg), "upsert key column %s is empty",
                     c->name);
            record_fail(rec, msg);
            return false;
        }
        if (present)
            *(c->is_key ? n_keys_out : n_rest_out) += 1;
    }
    return true;
}

/*
 * Appends the request for the current record to ld->out. FM_ERR_SYNTAX
 * when the record cannot make one (rec.error says why); FM_ERR_NOMEM.
 */
static fm_status encode_row(struct loader *ld)
{
    struct record *rec = &ld->rec;
    size_t n_keys;
    size_t n_rest;
    if (rec->error[0] == '\0' && rec->n_fields != ld->n_cols) {
        char msg[MSG_CAP];
        snprintf(msg, sizeof(msg), "expected %zu fields, got %zu", ld->n_cols,
                 rec->n_fields);
        record_fail(rec, msg);
    }
    if (rec->error[0] != '\0' || !count_fields(ld, &n_keys, &n_rest))
        return FM_ERR_SYNTAX;
    bool upsert = ld->opt.upsert != NULL;
    size_t argc = 2 + 2 * n_keys + 2 * n_rest + (upsert && n_rest > 0);
    const char *cmd = upsert ? "UPSERT" : "INSERT";
    fm_status st = append_header(&ld->out, argc);
    if (st == FM_OK)
        st = append_bulk(&ld->out, cmd, strlen(cmd));
    if (st == FM_OK)
        st = append_bulk(&ld->out, ld->opt.table, strlen(ld->opt.table));
    if (st == FM_OK && upsert)
        st = append_pairs(ld, true);
    if (st == FM_OK && upsert && n_rest > 0)
        st = append_bulk(&ld->out, "SET", 3);
    if (st == FM_OK)
        st = append_pairs(ld, false);
    return st;
}

/* Replies. */

/* Parses a decimal int64 from p[0..len); false if it is not one. */
static bool parse_int64(const char *p, size_t len, int64_t *out)
{
    bool neg = len > 0 && p[0] == '-';
    size_t i = neg;
    uint64_t v = 0;
    if (i == len || len > 20)
        return false;
    for (; i < len; i++) {
        if (p[i] < '0' || p[i] > '9' || v > (UINT64_MAX - 9) / 10)
            return false;
        v = v * 10 + (uint64_t)(p[i] - '0');
    }
    if (v > (uint64_t)INT64_MAX + neg)
        return false;
    *out = neg ? (int64_t)(0 - v) : (int64_t)v;
    return true;
}

static enum parse_result parse_reply(const uint8_t *p, size_t len, int depth,
                                     struct reply *out, size_t *used_out);

/*
 * The body of a bulk string or an array of n elements at p[*used..len);
 * *used moves past it.
 */
static enum parse_result parse_body(const uint8_t *p, size_t len, int depth,
                                    int64_t n, struct reply *out, size_t *used)
{
    if (p[0] == '$') {
        size_t left = len - *used;
        if ((uint64_t)n > left || left - (size_t)n < 2)
            return PARSE_MORE;
        const uint8_t *end = p + *used + (size_t)n;
        if (end[0] != '\r' || end[1] != '\n')
            return PARSE_BAD;
        out->text = (const char *)p + *used;
        out->text_len = (size_t)n;
        *used += (size_t)n + 2;
        return PARSE_DONE;
    }
    for (int64_t i = 0; i < n; i++) {
        struct reply sub;
        size_t sub_used = 0;
        enum parse_result r =
            parse_reply(p + *used, len - *used, depth + 1, &sub, &sub_used);
        if (r != PARSE_DONE)
            return r;
        *used += sub_used;
    }
    return PARSE_DONE;
}

/*
 * Parses one RESP2 reply at p[0..len): PARSE_DONE with *out and *used_out,
 * PARSE_MORE when it is not all there, PARSE_BAD when it is not RESP2.
 * Arrays are parsed to find their end; out then holds only their length.
 */
static enum parse_result parse_reply(const uint8_t *p, size_t len, int depth,
                                     struct reply *out, size_t *used_out)
{
    const uint8_t *cr = len > 0 ? memchr(p, '\r', len) : NULL;
    if (cr == NULL || (size_t)(cr - p) + 1 >= len)
        return PARSE_MORE;
    if (cr[1] != '\n')
        return PARSE_BAD;
    const char *hdr = (const char *)p + 1;
    size_t hdr_len = (size_t)(cr - p) - 1;
    size_t used = (size_t)(cr - p) + 2;
    memset(out, 0, sizeof(*out));
    out->text = hdr;
    out->text_len = hdr_len;
    if (p[0] == '+' || p[0] == '-') {
        out->kind = p[0] == '+' ? REPLY_STATUS : REPLY_ERROR;
        *used_out = used;
        return PARSE_DONE;
    }
    if (p[0] != ':' && p[0] != '$' && p[0] != '*')
        return PARSE_BAD;
    out->text = NULL;
    out->text_len = 0;
    if (!parse_int64(hdr, hdr_len, &out->integer))
        return PARSE_BAD;
    out->kind = p[0] == ':'   ? REPLY_INTEGER
                : p[0] == '$' ? REPLY_BULK
                              : REPLY_ARRAY;
    if (p[0] != ':' && (out->integer < -1 || depth > 8))
        return PARSE_BAD;
    if (p[0] != ':' && out->integer == -1) {
        out->kind = REPLY_NIL;
    } else if (p[0] != ':') {
        enum parse_result r =
            parse_body(p, len, depth, out->integer, out, &used);
        if (r != PARSE_DONE)
            return r;
    }
    *used_out = used;
    return PARSE_DONE;
}

/* Failures and progress. */

static void set_fatal(struct loader *ld, const char *msg)
{
    if (ld->fatal[0] == '\0')
        snprintf(ld->fatal, sizeof(ld->fatal), "%s", msg);
}

/* Erases the progress bar so that a message can take its line. */
static void clear_bar(const struct loader *ld)
{
    if (ld->tty && !ld->opt.quiet && ld->progress_us != 0)
        fputs("\r\033[K", stderr);
}

/*
 * Writes no more requests: drops the unsent bytes, and counts the
 * requests not written whole as not sent (their replies will not come).
 */
static void stop_sending(struct loader *ld)
{
    ld->stopping = true;
    ld->out.len = ld->out_sent;
    while (ld->n_pending > 0) {
        size_t tail = (ld->ring_head + ld->n_pending - 1) % ld->opt.pipeline;
        if (ld->ring[tail].end_off <= ld->sent_total)
            break;
        ld->n_pending--;
        ld->n_unsent++;
    }
}

/*
 * Counts and shows a failed row. Without --skip-errors it stops the load:
 * after an error reply, requests not yet written are dropped (they come
 * after the failing row); after a malformed record (local), the requests
 * already encoded are all for earlier rows and still go out.
 */
static void row_failed(struct loader *ld, int64_t line, bool local,
                       const char *msg, size_t msg_len)
{
    ld->n_failed++;
    if (ld->n_failed <= ERRORS_SHOWN) {
        clear_bar(ld);
        fprintf(stderr, "fermata-load: line %" PRId64 ": %.*s\n", line,
                (int)(msg_len > 400 ? 400 : msg_len), msg);
    }
    if (ld->opt.skip_errors)
        return;
    if (local)
        ld->stopping = true;
    else
        stop_sending(ld);
}

static void format_mb(char *out, size_t cap, const struct loader *ld)
{
    double read_mb = (double)reader_consumed(&ld->in) / 1e6;
    if (ld->in.total_bytes >= 0)
        snprintf(out, cap, "%.1f/%.1f MB", read_mb,
                 (double)ld->in.total_bytes / 1e6);
    else
        snprintf(out, cap, "%.1f MB", read_mb);
}

/* Redraws the bar (tty) or prints a line (otherwise) when it is time. */
static void show_progress(struct loader *ld, bool final)
{
    int64_t now = fm_monotonic_us();
    int64_t every = ld->tty ? PROGRESS_TTY_US : PROGRESS_LOG_US;
    if (ld->opt.quiet || (final && !ld->tty))
        return;
    if (!final &&
        now - (ld->progress_us ? ld->progress_us : ld->start_us) < every)
        return;
    ld->progress_us = now;
    double secs = (double)(now - ld->start_us) / 1e6;
    double rate = secs > 0 ? (double)ld->n_ok / secs : 0;
    char mb[64];
    format_mb(mb, sizeof(mb), ld);
    uint64_t rows = ld->n_ok + ld->n_failed;
    if (!ld->tty) {
        fprintf(stderr, "fermata-load: %" PRIu64 " rows, %.0f rows/s, %s\n",
                rows, rate, mb);
        return;
    }
    char bar[32] = "";
    if (ld->in.total_bytes > 0) {
        uint64_t done = reader_consumed(&ld->in);
        size_t fill = (size_t)(done * 20 / (uint64_t)ld->in.total_bytes);
        for (size_t i = 0; i < 20; i++)
            bar[i] = i < fill ? '#' : '.';
        bar[20] = '\0';
        fprintf(stderr, "\r[%s] %3d%% ", bar,
                (int)(done * 100 / (uint64_t)ld->in.total_bytes));
    } else {
        fputs("\r", stderr);
    }
    fprintf(stderr,
            "%" PRIu64 " rows  %.0f rows/s  %s  %" PRIu64 " failed\033[K%s",
            rows, rate, mb, ld->n_failed, final ? "\n" : "");
}

/* The connection. */

/* Waits for events on the connection; 0 when the timeout passed. */
static int wait_fd(struct loader *ld, short events, int timeout_ms,
                   short *revents_out)
{
    struct pollfd p = {.fd = ld->fd, .events = events, .revents = 0};
    int n = poll(&p, 1, timeout_ms);
    if (n < 0 && errno != EINTR) {
        char msg[MSG_CAP];
        snprintf(msg, sizeof(msg), "poll failed: %s", strerror(errno));
        set_fatal(ld, msg);
        return -1;
    }
    *revents_out = n > 0 ? p.revents : 0;
    return n > 0 ? n : 0;
}

/* Connects one address without blocking past CONNECT_MS; errno on -1. */
static int connect_addr(struct loader *ld, const struct addrinfo *a)
{
    ld->fd = socket(a->ai_family, a->ai_socktype, a->ai_protocol);
    if (ld->fd < 0)
        return -1;
    int flags = fcntl(ld->fd, F_GETFL);
    if (flags < 0 || fcntl(ld->fd, F_SETFL, flags | O_NONBLOCK) < 0)
        return -1;
    if (connect(ld->fd, a->ai_addr, a->ai_addrlen) == 0)
        return 0;
    /* EINTR leaves the connection going on asynchronously, as EINPROGRESS
     * does; either way its outcome comes with POLLOUT. */
    if (errno != EINPROGRESS && errno != EINTR)
        return -1;
    short rev = 0;
    int n;
    int64_t deadline = fm_monotonic_us() + (int64_t)CONNECT_MS * 1000;
    do {
        int left_ms = (int)((deadline - fm_monotonic_us()) / 1000);
        n = wait_fd(ld, POLLOUT, left_ms > 0 ? left_ms : 0, &rev);
    } while (n == 0 && fm_monotonic_us() < deadline);
    if (n <= 0) {
        errno = ETIMEDOUT;
        return -1;
    }
    int err = 0;
    socklen_t err_len = sizeof(err);
    if (getsockopt(ld->fd, SOL_SOCKET, SO_ERROR, &err, &err_len) < 0)
        return -1;
    errno = err;
    return err == 0 ? 0 : -1;
}

static fm_status connect_server(struct loader *ld)
{
    struct addrinfo hints = {0};
    struct addrinfo *list = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    char msg[MSG_CAP];
    int rc = getaddrinfo(ld->opt.host, ld->opt.port, &hints, &list);
    if (rc != 0) {
        snprintf(msg, sizeof(msg), "cannot resolve %s:%s: %s", ld->opt.host,
                 ld->opt.port, gai_strerror(rc));
        set_fatal(ld, msg);
        return FM_ERR_IO;
    }
    int err = 0;
    for (struct addrinfo *a = list; a != NULL; a = a->ai_next) {
        if (connect_addr(ld, a) == 0)
            break;
        err = errno;
        if (ld->fd >= 0)
            close(ld->fd);
        ld->fd = -1;
    }
    freeaddrinfo(list);
    if (ld->fd < 0) {
        snprintf(msg, sizeof(msg), "cannot connect to %s:%s: %s", ld->opt.host,
                 ld->opt.port, strerror(err));
        set_fatal(ld, msg);
        return FM_ERR_IO;
    }
    int one = 1;
    setsockopt(ld->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    return FM_OK;
}

static void disconnected(struct loader *ld, const char *why)
{
    char msg[MSG_CAP];
    if (ld->n_pending > 0)
        snprintf(msg, sizeof(msg),
                 "%s, with %zu rows unanswered (from line %" PRId64 ")", why,
                 ld->n_pending, ld->ring[ld->ring_head].line);
    else
        snprintf(msg, sizeof(msg), "%s", why);
    set_fatal(ld, msg);
}

/* Writes what the socket takes of the output buffer. FM_ERR_IO. */
static fm_status flush_out(struct loader *ld)
{
    while (ld->out_sent < ld->out.len) {
        ssize_t n = send(ld->fd, ld->out.data + ld->out_sent,
                         ld->out.len - ld->out_sent, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        if (n < 0) {
            char msg[MSG_CAP];
            snprintf(msg, sizeof(msg), "the server closed the connection (%s)",
                     strerror(errno));
            disconnected(ld, msg);
            return FM_ERR_IO;
        }
        ld->out_sent += (size_t)n;
        ld->sent_total += (uint64_t)n;
    }
    if (ld->out_sent == ld->out.len) {
        ld->out.len = 0;
        ld->out_sent = 0;
    }
    return FM_OK;
}

/*
 * Reads what has arrived into the reply buffer. *eof_out is set when the
 * server has closed the connection. FM_ERR_IO, FM_ERR_LIMIT (a reply over
 * MAX_REPLY_BYTES), FM_ERR_NOMEM.
 */
static fm_status recv_replies(struct loader *ld, bool *eof_out)
{
    struct fm_buf *b = &ld->replies;
    if (ld->reply_pos > 0) {
        memmove(b->data, b->data + ld->reply_pos, b->len - ld->reply_pos);
        b->len -= ld->reply_pos;
        ld->reply_pos = 0;
    }
    *eof_out = false;
    if (b->len >= MAX_REPLY_BYTES) {
        set_fatal(ld, "a reply over 1 MiB from the server");
        return FM_ERR_LIMIT;
    }
    if (fm_buf_reserve(b, READ_CHUNK) != FM_OK)
        return FM_ERR_NOMEM;
    ssize_t n;
    do {
        n = recv(ld->fd, b->data + b->len, b->cap - b->len, 0);
    } while (n < 0 && errno == EINTR);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
        return FM_OK;
    if (n < 0 && errno != ECONNRESET) {
        char msg[MSG_CAP];
        snprintf(msg, sizeof(msg), "cannot read from the server: %s",
                 strerror(errno));
        disconnected(ld, msg);
        return FM_ERR_IO;
    }
    *eof_out = n <= 0;
    b->len += n > 0 ? (size_t)n : 0;
    return FM_OK;
}

/* Counts one reply against the oldest unanswered request. */
static void take_reply(struct loader *ld, const struct reply *r)
{
    if (ld->n_pending == 0) {
        /* A protocol error about a request cut short by stop_sending. */
        char msg[MSG_CAP];
        snprintf(msg, sizeof(msg), "unexpected reply from the server: %.*s",
                 r->text != NULL ? (int)(r->text_len > 300 ? 300 : r->text_len)
                                 : 0,
                 r->text != NULL ? r->text : "");
        set_fatal(ld, msg);
        return;
    }
    int64_t line = ld->ring[ld->ring_head].line;
    ld->ring_head = (ld->ring_head + 1) % ld->opt.pipeline;
    ld->n_pending--;
    ld->last_line = line;
    if (r->kind == REPLY_INTEGER)
        ld->n_ok++;
    else if (r->kind == REPLY_ERROR)
        row_failed(ld, line, false, r->text, r->text_len);
    else
        row_failed(ld, line, false, "unexpected reply from the server", 32);
}

/* Counts every whole reply in the buffer. FM_ERR_CORRUPT. */
static fm_status take_replies(struct loader *ld)
{
    while (ld->fatal[0] == '\0') {
        struct reply r;
        size_t used = 0;
        enum parse_result pr =
            parse_reply(ld->replies.data + ld->reply_pos,
                        ld->replies.len - ld->reply_pos, 0, &r, &used);
        if (pr == PARSE_MORE)
            return FM_OK;
        if (pr == PARSE_BAD) {
            set_fatal(ld, "the server sent something that is not RESP2");
            return FM_ERR_CORRUPT;
        }
        ld->reply_pos += used;
        take_reply(ld, &r);
    }
    return FM_ERR_STATE;
}

/* Reads and counts replies; a closed connection is fatal. */
static fm_status on_readable(struct loader *ld)
{
    bool eof = false;
    fm_status st = recv_replies(ld, &eof);
    if (st == FM_OK)
        st = take_replies(ld);
    if (st == FM_OK && eof) {
        disconnected(ld, "the server closed the connection");
        st = FM_ERR_IO;
    }
    return st;
}

/* The load. */

/*
 * Reads records and encodes requests until the window is full, enough
 * bytes wait to be written, or the input ends. FM_ERR_IO, FM_ERR_LIMIT,
 * FM_ERR_NOMEM (fatal; ld->fatal says why).
 */
static fm_status fill_pipeline(struct loader *ld)
{
    while (!ld->input_done && !ld->stopping &&
           ld->n_pending < ld->opt.pipeline &&
           ld->out.len - ld->out_sent < FLUSH_BYTES) {
        bool got = false;
        char msg[MSG_CAP];
        fm_status st = read_record(&ld->in, &ld->rec, &got);
        if (st == FM_ERR_LIMIT) {
            snprintf(msg, sizeof(msg),
                     "line %" PRId64 ": record over %d bytes (a quote that "
                     "never closes?)",
                     ld->rec.line, MAX_RECORD_BYTES);
        } else if (st != FM_OK) {
            snprintf(msg, sizeof(msg), "%s",
                     st == FM_ERR_IO ? ld->in.err : "out of memory");
        }
        if (st != FM_OK) {
            set_fatal(ld, msg);
            return st;
        }
        if (!got) {
            ld->input_done = true;
            break;
        }
        size_t len_before = ld->out.len;
        st = encode_row(ld);
        if (st == FM_ERR_SYNTAX) {
            ld->out.len = len_before;
            row_failed(ld, ld->rec.line, true, ld->rec.error,
                       strlen(ld->rec.error));
            continue;
        }
        if (st != FM_OK) {
            set_fatal(ld, "out of memory");
            return st;
        }
        ld->enc_total += ld->out.len - len_before;
        size_t slot = (ld->ring_head + ld->n_pending) % ld->opt.pipeline;
        ld->ring[slot] = (struct pending){ld->rec.line, ld->enc_total};
        ld->n_pending++;
    }
    return FM_OK;
}

/* Streams the input to the server until it is all answered. */
static fm_status run_load(struct loader *ld)
{
    for (;;) {
        fm_status st = fill_pipeline(ld);
        if (st != FM_OK)
            return st;
        bool unsent = ld->out_sent < ld->out.len;
        if (ld->n_pending == 0 && !unsent && (ld->input_done || ld->stopping))
            return FM_OK;
        short rev = 0;
        int timeout_ms = ld->opt.quiet ? -1 : ld->tty ? 100 : 1000;
        int n = wait_fd(ld, (short)(POLLIN | (unsent ? POLLOUT : 0)),
                        timeout_ms, &rev);
        if (n < 0)
            return FM_ERR_IO;
        if ((rev & POLLOUT) != 0 && (st = flush_out(ld)) != FM_OK)
            return st;
        if ((rev & (POLLIN | POLLHUP | POLLERR)) != 0 &&
            (st = on_readable(ld)) != FM_OK)
            return st;
        if (ld->fatal[0] != '\0')
            return FM_ERR_STATE;
        show_progress(ld, false);
    }
}

/*
 * Sends one request outside the load (AUTH, the table check) and waits
 * for its reply; text_out gets the reply's text. FM_ERR_IO and the like
 * (ld->fatal says why).
 */
static fm_status round_trip(struct loader *ld, const char *const *argv,
                            size_t argc, struct reply *r, char *text_out,
                            size_t text_cap)
{
    FM_ASSERT(ld->out.len == 0 && ld->n_pending == 0);
    fm_status st = append_header(&ld->out, argc);
    for (size_t i = 0; i < argc && st == FM_OK; i++)
        st = append_bulk(&ld->out, argv[i], strlen(argv[i]));
    while (st == FM_OK) {
        size_t used = 0;
        enum parse_result pr =
            parse_reply(ld->replies.data + ld->reply_pos,
                        ld->replies.len - ld->reply_pos, 0, r, &used);
        if (pr == PARSE_DONE) {
            snprintf(text_out, text_cap, "%.*s",
                     r->text != NULL ? (int)r->text_len : 0,
                     r->text != NULL ? r->text : "");
            ld->reply_pos += used;
            return FM_OK;
        }
        if (pr == PARSE_BAD) {
            set_fatal(ld, "the server sent something that is not RESP2");
            return FM_ERR_CORRUPT;
        }
        bool unsent = ld->out_sent < ld->out.len;
        short rev = 0;
        if (wait_fd(ld, (short)(POLLIN | (unsent ? POLLOUT : 0)), -1, &rev) < 0)
            return FM_ERR_IO;
        if ((rev & POLLOUT) != 0)
            st = flush_out(ld);
        bool eof = false;
        if (st == FM_OK && (rev & (POLLIN | POLLHUP | POLLERR)) != 0)
            st = recv_replies(ld, &eof);
        if (st == FM_OK && eof) {
            disconnected(ld, "the server closed the connection");
            st = FM_ERR_IO;
        }
    }
    if (st == FM_ERR_NOMEM)
        set_fatal(ld, "out of memory");
    return st;
}

/* AUTH when asked to, then a check that the table exists. */
static fm_status greet_server(struct loader *ld)
{
    struct reply r;
    char text[MSG_CAP];
    char msg[MSG_CAP + 64];
    fm_status st;
    if (ld->opt.password != NULL) {
        const char *auth[] = {"AUTH", ld->opt.password};
        st = round_trip(ld, auth, 2, &r, text, sizeof(text));
        if (st != FM_OK)
            return st;
        if (r.kind != REPLY_STATUS) {
            snprintf(msg, sizeof(msg), "AUTH failed: %s", text);
            set_fatal(ld, msg);
            return FM_ERR_WRONGPASS;
        }
    }
    /* SCHEMA answers an unknown table with an error, so a wrong --table
     * stops the load here rather than failing every row. */
    const char *schema[] = {"SCHEMA", ld->opt.table};
    st = round_trip(ld, schema, 2, &r, text, sizeof(text));
    if (st != FM_OK)
        return st;
    if (r.kind == REPLY_ERROR) {
        snprintf(msg, sizeof(msg), "cannot load table %s: %s", ld->opt.table,
                 text);
        set_fatal(ld, msg);
        return FM_ERR_NOTFOUND;
    }
    return FM_OK;
}

static void print_summary(struct loader *ld)
{
    double secs = (double)(fm_monotonic_us() - ld->start_us) / 1e6;
    double rate = secs > 0 ? (double)ld->n_ok / secs : 0;
    show_progress(ld, true);
    if (ld->n_failed > ERRORS_SHOWN)
        fprintf(stderr, "fermata-load: %" PRIu64 " more errors not shown\n",
                ld->n_failed - ERRORS_SHOWN);
    if (ld->fatal[0] != '\0')
        fprintf(stderr, "fermata-load: %s\n", ld->fatal);
    else if (ld->stopping)
        fprintf(stderr,
                "fermata-load: stopped at the first error; --skip-errors "
                "goes on past failed rows\n");
    printf("fermata-load: %s: %" PRIu64 " rows ok, %" PRIu64
           " failed, %.3f s, %.0f rows/s",
           ld->opt.table, ld->n_ok, ld->n_failed, secs, rate);
    if (ld->n_unsent > 0 || ld->n_pending > 0)
        printf(", %" PRIu64 " not sent or unanswered",
               ld->n_unsent + ld->n_pending);
    printf("\n");
    fflush(stdout);
}

static void loader_fini(struct loader *ld)
{
    if (ld->fd >= 0)
        close(ld->fd);
    reader_close(&ld->in);
    for (size_t i = 0; i < ld->n_cols; i++)
        fm_free(ld->cols[i].name);
    fm_free(ld->cols);
    fm_free(ld->rec.fields);
    fm_buf_fini(&ld->rec.bytes);
    fm_buf_fini(&ld->out);
    fm_buf_fini(&ld->replies);
    fm_free(ld->ring);
}

/* Opens the input and sets up the columns: an exit code, or -1 to go on. */
static int prepare(struct loader *ld)
{
    if (reader_open(&ld->in, ld->opt.path) != FM_OK) {
        fprintf(stderr, "fermata-load: %s\n",
                ld->in.err[0] ? ld->in.err : "out of memory");
        return EXIT_FAILED;
    }
    ld->in.delimiter = ld->opt.delimiter;
    ld->in.quoting = ld->opt.quoting;
    bool empty = false;
    fm_status st = read_column_names(ld, &empty);
    if (st == FM_OK && empty) {
        fprintf(stderr, "fermata-load: the input is empty\n");
        return EXIT_OK;
    }
    if (st == FM_ERR_SYNTAX) {
        fprintf(stderr, "fermata-load: line 1: bad header: %s\n",
                ld->rec.error[0] ? ld->rec.error : "too many columns");
        return EXIT_FAILED;
    }
    if (st != FM_OK) {
        fprintf(stderr, "fermata-load: %s\n",
                st == FM_ERR_IO ? ld->in.err : "cannot read the header");
        return EXIT_FAILED;
    }
    if (!check_maps(ld) || !check_columns(ld))
        return EXIT_USAGE;
    ld->ring = fm_calloc(ld->opt.pipeline, sizeof(*ld->ring));
    if (ld->ring == NULL || fm_buf_reserve(&ld->replies, READ_CHUNK) != FM_OK) {
        fprintf(stderr, "fermata-load: out of memory\n");
        return EXIT_FAILED;
    }
    return -1;
}

int main(int argc, char **argv)
{
    struct loader ld;
    memset(&ld, 0, sizeof(ld));
    ld.fd = -1;
    ld.in.fd = -1;
    if (!parse_options(&ld.opt, argc, argv)) {
        usage(stderr);
        return EXIT_USAGE;
    }
    int rc = prepare(&ld);
    if (rc >= 0) {
        loader_fini(&ld);
        return rc;
    }
    ld.tty = isatty(STDERR_FILENO) == 1;
    ld.start_us = fm_monotonic_us();
    fm_status st = connect_server(&ld);
    if (st == FM_OK)
        st = greet_server(&ld);
    if (st == FM_OK)
        st = run_load(&ld);
    print_summary(&ld);
    rc =
        st == FM_OK && ld.n_failed == 0 && !ld.stopping ? EXIT_OK : EXIT_FAILED;
    loader_fini(&ld);
    return rc;
}
