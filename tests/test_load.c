/*
 * test_load.c: fermata-load against the real server (SPEC section 6).
 *
 * Each test starts fermata-server on a free port with its own data
 * directory, writes an input file, runs the fermata-load binary on it and
 * then reads the imported rows back through the server with hiredis, so
 * what is checked is what a user gets: the CSV dialect (quoted delimiters,
 * doubled quotes, newlines inside quotes, CRLF, a last line without a
 * newline, empty fields), TSV, --columns and --map, --upsert, error
 * reports that name the input line, --skip-errors, a window larger than
 * the file, a 50,000-row load from stdin, usage errors, AUTH, and a server
 * that hangs up in the middle (a fake one, so the moment is certain).
 */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tests/server_proc.h"

#ifndef FM_LOAD_BIN
#error "FM_LOAD_BIN must name the fermata-load binary"
#endif

#define OUT_CAP 16384

static char root[256];
static char data_dir[300];
static char log_path[300];
static pid_t server_pid = -1;
static int port;
static redisContext *redis;

/* What one run of fermata-load did. */
struct run {
    int status;        /* exit status; -1 if it did not exit */
    char out[OUT_CAP]; /* its stdout */
    char err[OUT_CAP]; /* its stderr */
};

static void setup(void)
{
    snprintf(root, sizeof(root), "/tmp/fm_load_XXXXXX");
    cr_assert_not_null(mkdtemp(root));
    snprintf(data_dir, sizeof(data_dir), "%s/data", root);
    snprintf(log_path, sizeof(log_path), "%s/server.log", root);
    server_pid = -1;
    redis = NULL;
}

static void teardown(void)
{
    if (redis != NULL)
        redisFree(redis);
    if (server_pid > 0) {
        kill(server_pid, SIGKILL);
        waitpid(server_pid, NULL, 0);
    }
    char cmd[400];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", root);
    cr_assert_eq(system(cmd), 0);
}

TestSuite(load, .init = setup, .fini = teardown, .timeout = 120);

/* Starts the server with extra flags (NULL-terminated, may be NULL). */
static void start_server(const char *const *args)
{
    server_pid = fm_test_start_server(data_dir, log_path, args, NULL, &port);
    redis = redisConnect("127.0.0.1", port);
    cr_assert(redis != NULL && redis->err == 0, "connect: %s",
              redis ? redis->errstr : "null");
}

/* Writes len bytes to root/name; returns the path (static storage). */
static const char *write_input(const char *name, const char *bytes, size_t len)
{
    static char path[400];
    snprintf(path, sizeof(path), "%s/%s", root, name);
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f);
    cr_assert_eq(fwrite(bytes, 1, len, f), len);
    cr_assert_eq(fclose(f), 0);
    return path;
}

static const char *write_text(const char *name, const char *text)
{
    return write_input(name, text, strlen(text));
}

static void read_all(const char *path, char *out, size_t cap)
{
    FILE *f = fopen(path, "rb");
    size_t n = f != NULL ? fread(out, 1, cap - 1, f) : 0;
    out[n] = '\0';
    if (f != NULL)
        fclose(f);
}

/*
 * Runs fermata-load with "--port <port>" and then args (NULL-terminated),
 * stdin from stdin_path (NULL: /dev/null), port_override in place of the
 * server's port when it is not 0.
 */
static void run_load_on(struct run *r, int load_port, const char *stdin_path,
                        const char *const *args)
{
    char out_path[400];
    char err_path[400];
    char port_text[16];
    snprintf(out_path, sizeof(out_path), "%s/load.out", root);
    snprintf(err_path, sizeof(err_path), "%s/load.err", root);
    snprintf(port_text, sizeof(port_text), "%d", load_port);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        const char *argv[64] = {FM_LOAD_BIN, "--port", port_text};
        size_t n = 3;
        for (size_t i = 0; args[i] != NULL && n < 63; i++)
            argv[n++] = args[i];
        argv[n] = NULL;
        int in = open(stdin_path ? stdin_path : "/dev/null", O_RDONLY);
        int out = open(out_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        int err = open(err_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        dup2(in, 0);
        dup2(out, 1);
        dup2(err, 2);
        execv(FM_LOAD_BIN, (char *const *)argv);
        _exit(127);
    }
    int status = 0;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    r->status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    read_all(out_path, r->out, sizeof(r->out));
    read_all(err_path, r->err, sizeof(r->err));
}

static void run_load(struct run *r, const char *const *args)
{
    run_load_on(r, port, NULL, args);
}

static long long command_int(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(redis, fmt, ap);
    va_end(ap);
    cr_assert_not_null(r, "%s", redis->errstr);
    cr_assert_eq(r->type, REDIS_REPLY_INTEGER, "reply %d %s", r->type,
                 r->type == REDIS_REPLY_ERROR ? r->str : "");
    long long v = r->integer;
    freeReplyObject(r);
    return v;
}

static long long count_rows(const char *table)
{
    return command_int("COUNT %s", table);
}

/*
 * The value of column col of row id: a copy in out (NUL-terminated, length
 * in *len_out); false when the value is NULL. Integers come as text.
 */
static bool row_value(const char *table, long long id, const char *col,
                      char *out, size_t cap, size_t *len_out)
{
    redisReply *r = redisCommand(redis, "GET %s %lld", table, id);
    cr_assert_not_null(r, "%s", redis->errstr);
    cr_assert_eq(r->type, REDIS_REPLY_ARRAY, "GET %s %lld: no row", table, id);
    bool found = false;
    bool not_null = false;
    for (size_t i = 0; i + 1 < r->elements && !found; i += 2) {
        if (strcmp(r->element[i]->str, col) != 0)
            continue;
        found = true;
        const redisReply *v = r->element[i + 1];
        if (v->type == REDIS_REPLY_INTEGER) {
            *len_out = (size_t)snprintf(out, cap, "%lld", v->integer);
            not_null = true;
        } else if (v->type == REDIS_REPLY_STRING) {
            cr_assert_lt(v->len, cap);
            memcpy(out, v->str, v->len);
            out[v->len] = '\0';
            *len_out = v->len;
            not_null = true;
        }
    }
    freeReplyObject(r);
    cr_assert(found, "no column %s in %s", col, table);
    return not_null;
}

static void expect_value(const char *table, long long id, const char *col,
                         const char *want)
{
    char got[4096];
    size_t len = 0;
    cr_assert(row_value(table, id, col, got, sizeof(got), &len),
              "%s %lld %s is NULL", table, id, col);
    cr_expect_eq(len, strlen(want), "%s %lld %s: want [%s] got [%s]", table, id,
                 col, want, got);
    cr_expect_str_eq(got, want, "%s %lld %s", table, id, col);
}

static int count_lines_with(const char *text, const char *needle)
{
    int n = 0;
    for (const char *p = strstr(text, needle); p; p = strstr(p + 1, needle))
        n++;
    return n;
}

Test(load, csv_quoting_edge_cases_are_kept_verbatim)
{
    start_server(NULL);
    /* CRLF line ends, a quoted comma, doubled quotes, LF and CRLF inside
     * quotes, a bare quote in an unquoted field, a NUL byte, a byte-order
     * mark, and a last line without a line end. */
    static const char csv[] = "\xEF\xBB\xBFname\r\n"
                              "\"Earth, Wind & Fire\"\r\n"
                              "\"The \"\"Band\"\"\"\r\n"
                              "\"two\nlines\"\r\n"
                              "\"crlf\r\ninside\"\r\n"
                              "5'10\" tall\r\n"
                              "\"nul\0byte\"\r\n"
                              "\r\n"
                              "last";
    const char *path = write_input("a.csv", csv, sizeof(csv) - 1);
    struct run r;
    run_load(&r, (const char *const[]){"--table", "artists", path, NULL});
    cr_assert_eq(r.status, 0, "%s", r.err);
    cr_expect(strstr(r.out, "7 rows ok, 0 failed") != NULL, "%s", r.out);
    cr_assert_eq(count_rows("artists"), 7);
    expect_value("artists", 1, "name", "Earth, Wind & Fire");
    expect_value("artists", 2, "name", "The \"Band\"");
    expect_value("artists", 3, "name", "two\nlines");
    expect_value("artists", 4, "name", "crlf\r\ninside");
    expect_value("artists", 5, "name", "5'10\" tall");
    char got[64];
    size_t len = 0;
    cr_assert(row_value("artists", 6, "name", got, sizeof(got), &len));
    cr_expect_eq(len, 8);
    cr_expect_eq(memcmp(got, "nul\0byte", 8), 0);
    expect_value("artists", 7, "name", "last");
}

Test(load, empty_field_leaves_the_column_out_and_quoted_empty_is_empty)
{
    start_server(NULL);
    const char *path = write_text("albums.csv", "title,year\n"
                                                "Kind of Blue,1959\n"
                                                "No Year,\n"
                                                "\"\",2001\n");
    struct run r;
    run_load(&r, (const char *const[]){"--table", "albums", path, NULL});
    cr_assert_eq(r.status, 0, "%s", r.err);
    expect_value("albums", 1, "year", "1959");
    char got[64];
    size_t len = 0;
    cr_expect_not(row_value("albums", 2, "year", got, sizeof(got), &len),
                  "an empty field must leave year NULL");
    expect_value("albums", 3, "title", "");
}

Test(load, tsv_with_crlf_takes_quotes_literally)
{
    start_server(NULL);
    const char *path = write_text("albums.tsv", "title\tyear\r\n"
                                                "\"Quoted\"\t1999\r\n"
                                                "a, b\t2000\r\n");
    struct run r;
    run_load(&r,
             (const char *const[]){"--tsv", "--table", "albums", path, NULL});
    cr_assert_eq(r.status, 0, "%s", r.err);
    cr_assert_eq(count_rows("albums"), 2);
    expect_value("albums", 1, "title", "\"Quoted\"");
    expect_value("albums", 1, "year", "1999");
    expect_value("albums", 2, "title", "a, b");
}

Test(load, delimiter_option_splits_on_that_byte)
{
    start_server(NULL);
    const char *path =
        write_text("albums.csv", "title;year\n\"a;b\";1970\nc,d;1971\n");
    struct run r;
    run_load(&r, (const char *const[]){"--delimiter", ";", "--table", "albums",
                                       path, NULL});
    cr_assert_eq(r.status, 0, "%s", r.err);
    expect_value("albums", 1, "title", "a;b");
    expect_value("albums", 2, "title", "c,d");
    expect_value("albums", 2, "year", "1971");
}

Test(load, map_renames_and_drops_columns)
{
    start_server(NULL);
    const char *path = write_text("a.csv", "album_name,released,junk\n"
                                           "Blue Train,1957,x\n");
    struct run r;
    run_load(&r, (const char *const[]){"--map", "album_name=title", "--map",
                                       "released=year,junk=", "--table",
                                       "albums", path, NULL});
    cr_assert_eq(r.status, 0, "%s", r.err);
    expect_value("albums", 1, "title", "Blue Train");
    expect_value("albums", 1, "year", "1957");
}

Test(load, columns_flag_reads_input_without_a_header)
{
    start_server(NULL);
    const char *path = write_text("a.csv", "10,Giant Steps,1960\n"
                                           "20,Mingus Ah Um,1959\n");
    struct run r;
    run_load(&r, (const char *const[]){"--columns", "id,title,year", "--table",
                                       "albums", path, NULL});
    cr_assert_eq(r.status, 0, "%s", r.err);
    cr_assert_eq(count_rows("albums"), 2);
    /* Explicit ids are kept, so references in other files line up. */
    expect_value("albums", 10, "title", "Giant Steps");
    expect_value("albums", 20, "year", "1959");
}

/* Two users, an album, a genre and two tracks for the history tests. */
static void make_catalogue(void)
{
    for (int i = 1; i <= 2; i++)
        command_int("INSERT users username u%d email u%d@x password_digest p "
                    "session_token t",
                    i, i);
    command_int("INSERT albums title A");
    command_int("INSERT tracks title T1 song_url u1 album_id 1");
    command_int("INSERT tracks title T2 song_url u2 album_id 1");
}

Test(load, upsert_updates_rows_in_place)
{
    start_server(NULL);
    make_catalogue();
    const char *const args[] = {"--upsert", "user_id,track_id",
                                "--table",  "user_track_history",
                                NULL,       NULL};
    const char *first = write_text("h1.csv", "user_id,track_id,listen_count\n"
                                             "1,1,5\n1,2,6\n2,1,7\n");
    const char *argv1[6];
    memcpy(argv1, args, sizeof(args));
    argv1[4] = first;
    struct run r;
    run_load(&r, argv1);
    cr_assert_eq(r.status, 0, "%s", r.err);
    cr_assert_eq(count_rows("user_track_history"), 3);
    const char *second =
        write_text("h2.csv", "track_id,user_id,listen_count,rating\n"
                             "1,1,50,1\n1,2,70,\n2,2,8,-1\n");
    argv1[4] = second;
    run_load(&r, argv1);
    cr_assert_eq(r.status, 0, "%s", r.err);
    cr_assert_eq(count_rows("user_track_history"), 4);
    expect_value("user_track_history", 1, "listen_count", "50");
    expect_value("user_track_history", 1, "rating", "1");
    expect_value("user_track_history", 2, "listen_count", "6");
    expect_value("user_track_history", 3, "listen_count", "70");
    expect_value("user_track_history", 4, "rating", "-1");
}

/* An album and a tracks file whose line 4 names a missing album. */
static const char *write_tracks_with_bad_line_4(void)
{
    command_int("INSERT albums title A");
    return write_text("tracks.csv", "title,song_url,album_id\n"
                                    "t1,u1,1\n"
                                    "t2,u2,1\n"
                                    "t3,u3,99\n"
                                    "t4,u4,1\n"
                                    "t5,u5,1\n");
}

Test(load, foreign_key_error_stops_the_load_and_names_the_line)
{
    start_server(NULL);
    const char *path = write_tracks_with_bad_line_4();
    struct run r;
    run_load(&r, (const char *const[]){"--pipeline", "1", "--table", "tracks",
                                       path, NULL});
    cr_assert_eq(r.status, 1, "%s", r.err);
    cr_expect(strstr(r.err, "line 4: FOREIGNKEY tracks.album_id 99") != NULL,
              "%s", r.err);
    cr_expect(strstr(r.out, "2 rows ok, 1 failed") != NULL, "%s", r.out);
    cr_expect_eq(count_rows("tracks"), 2);
}

Test(load, foreign_key_error_in_a_deep_pipeline_still_names_the_line)
{
    start_server(NULL);
    const char *path = write_tracks_with_bad_line_4();
    struct run r;
    run_load(&r, (const char *const[]){"--table", "tracks", path, NULL});
    cr_assert_eq(r.status, 1, "%s", r.err);
    cr_expect(strstr(r.err, "line 4: FOREIGNKEY") != NULL, "%s", r.err);
    cr_expect(strstr(r.err, "stopped at the first error") != NULL, "%s", r.err);
    /* Rows after the failing one were already in flight: each is either
     * loaded or reported as not sent, never lost without a word. */
    cr_expect_geq(count_rows("tracks"), 2);
}

Test(load, skip_errors_goes_on_and_counts_every_failure)
{
    start_server(NULL);
    command_int("INSERT albums title A");
    char csv[4096] = "title,song_url,album_id\n";
    for (int i = 0; i < 30; i++) {
        char line[64];
        snprintf(line, sizeof(line), "t%d,u%d,%d\n", i, i, i % 2 ? 1 : 42);
        strcat(csv, line);
    }
    const char *path = write_text("tracks.csv", csv);
    struct run r;
    run_load(&r, (const char *const[]){"--skip-errors", "--table", "tracks",
                                       path, NULL});
    cr_assert_eq(r.status, 1, "%s", r.err);
    cr_expect(strstr(r.out, "15 rows ok, 15 failed") != NULL, "%s", r.out);
    cr_expect_eq(count_lines_with(r.err, ": FOREIGNKEY"), 10, "%s", r.err);
    cr_expect(strstr(r.err, "line 2: FOREIGNKEY") != NULL, "%s", r.err);
    cr_expect(strstr(r.err, "5 more errors not shown") != NULL, "%s", r.err);
    cr_expect_eq(count_rows("tracks"), 15);
}

Test(load, malformed_records_are_reported_with_their_line)
{
    start_server(NULL);
    const char *path = write_text("albums.csv", "title,year\n"
                                                "ok,1\n"
                                                "\"multi\nline\",2,extra\n"
                                                "\"bad\"x,3\n"
                                                "fine,4\n"
                                                "\"never closed,5\n");
    struct run r;
    run_load(&r, (const char *const[]){"--skip-errors", "--table", "albums",
                                       path, NULL});
    cr_assert_eq(r.status, 1, "%s", r.err);
    cr_expect(strstr(r.err, "line 3: expected 2 fields, got 3") != NULL, "%s",
              r.err);
    cr_expect(strstr(r.err, "line 5: unexpected character after a closing "
                            "quote") != NULL,
              "%s", r.err);
    cr_expect(strstr(r.err, "line 7: unterminated quoted field") != NULL, "%s",
              r.err);
    cr_expect(strstr(r.out, "2 rows ok, 3 failed") != NULL, "%s", r.out);
    cr_expect_eq(count_rows("albums"), 2);
}

Test(load, malformed_record_without_skip_errors_loads_the_rows_before_it)
{
    start_server(NULL);
    const char *path = write_text("albums.csv", "title,year\n"
                                                "a,1\nb,2\nc,3,x\nd,4\n");
    struct run r;
    run_load(&r, (const char *const[]){"--table", "albums", path, NULL});
    cr_assert_eq(r.status, 1, "%s", r.err);
    cr_expect(strstr(r.err, "line 4: expected 2 fields") != NULL, "%s", r.err);
    cr_expect_eq(count_rows("albums"), 2);
}

Test(load, pipeline_window_larger_than_the_file_loads_every_row_in_order)
{
    start_server(NULL);
    char csv[8192] = "name\n";
    for (int i = 1; i <= 100; i++) {
        char line[32];
        snprintf(line, sizeof(line), "artist %d\n", i);
        strcat(csv, line);
    }
    const char *path = write_text("artists.csv", csv);
    struct run r;
    run_load(&r, (const char *const[]){"--pipeline", "100000", "--table",
                                       "artists", path, NULL});
    cr_assert_eq(r.status, 0, "%s", r.err);
    cr_assert_eq(count_rows("artists"), 100);
    expect_value("artists", 1, "name", "artist 1");
    expect_value("artists", 100, "name", "artist 100");
}

Test(load, fifty_thousand_rows_stream_from_stdin)
{
    start_server(NULL);
    char path[400];
    snprintf(path, sizeof(path), "%s/big.csv", root);
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f);
    fprintf(f, "title,year\n");
    for (int i = 1; i <= 50000; i++)
        fprintf(f, "\"album, no. %d\",%d\r\n", i, 1950 + i % 70);
    cr_assert_eq(fclose(f), 0);
    struct run r;
    run_load_on(&r, port, path,
                (const char *const[]){"--table", "albums", "-", NULL});
    cr_assert_eq(r.status, 0, "%s", r.err);
    cr_expect(strstr(r.out, "50000 rows ok, 0 failed") != NULL, "%s", r.out);
    cr_assert_eq(count_rows("albums"), 50000);
    cr_assert_eq(command_int("COUNT albums WHERE year = 1950"), 50000 / 70);
    expect_value("albums", 1, "title", "album, no. 1");
    expect_value("albums", 31337, "title", "album, no. 31337");
    expect_value("albums", 50000, "title", "album, no. 50000");
    expect_value("albums", 50000, "year", "1970");
}

Test(load, usage_errors_exit_2)
{
    start_server(NULL);
    const char *path = write_text("a.csv", "title,year\nx,1\n");
    const char *const *cases[] = {
        (const char *const[]){path, NULL},
        (const char *const[]){"--table", "albums", NULL},
        (const char *const[]){"--table", "albums", "--pipeline", "0", path,
                              NULL},
        (const char *const[]){"--table", "albums", "--map", "nope=title", path,
                              NULL},
        (const char *const[]){"--table", "albums", "--map", "year=title", path,
                              NULL},
        (const char *const[]){"--table", "albums", "--upsert", "name", path,
                              NULL},
        (const char *const[]){"--table", "albums", "--frobnicate", path, NULL},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct run r;
        run_load(&r, cases[i]);
        cr_expect_eq(r.status, 2, "case %zu: status %d: %s", i, r.status,
                     r.err);
    }
    cr_expect_eq(count_rows("albums"), 0);
}

Test(load, unknown_table_stops_before_any_row)
{
    start_server(NULL);
    const char *path = write_text("a.csv", "name\nx\n");
    struct run r;
    run_load(&r, (const char *const[]){"--table", "bands", path, NULL});
    cr_assert_eq(r.status, 1);
    cr_expect(strstr(r.err, "cannot load table bands: ERR") != NULL, "%s",
              r.err);
}

Test(load, password_is_sent_with_auth)
{
    start_server((const char *const[]){"--requirepass", "s3cret", NULL});
    const char *path = write_text("a.csv", "name\nx\ny\n");
    struct run r;
    run_load(&r, (const char *const[]){"--table", "artists", path, NULL});
    cr_expect_eq(r.status, 1);
    cr_expect(strstr(r.err, "NOAUTH") != NULL, "%s", r.err);
    run_load(&r, (const char *const[]){"--password", "wrong", "--table",
                                       "artists", path, NULL});
    cr_expect_eq(r.status, 1);
    cr_expect(strstr(r.err, "AUTH failed: WRONGPASS") != NULL, "%s", r.err);
    run_load(&r, (const char *const[]){"--password", "s3cret", "--table",
                                       "artists", path, NULL});
    cr_assert_eq(r.status, 0, "%s", r.err);
    redisReply *a = redisCommand(redis, "AUTH s3cret");
    freeReplyObject(a);
    cr_expect_eq(count_rows("artists"), 2);
}

Test(load, connection_refused_is_a_clear_error)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sa_len = sizeof(sa);
    cr_assert_eq(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    cr_assert_eq(getsockname(fd, (struct sockaddr *)&sa, &sa_len), 0);
    close(fd); /* bound, then closed: nothing listens on that port */
    const char *path = write_text("a.csv", "name\nx\n");
    struct run r;
    run_load_on(&r, ntohs(sa.sin_port), NULL,
                (const char *const[]){"--table", "artists", path, NULL});
    cr_expect_eq(r.status, 1);
    cr_expect(strstr(r.err, "cannot connect to 127.0.0.1:") != NULL, "%s",
              r.err);
}

/*
 * A fake server that answers the table check, reads a little of the load
 * and hangs up: the loader must say so and exit 1.
 */
Test(load, server_that_hangs_up_mid_load_is_reported)
{
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sa_len = sizeof(sa);
    cr_assert_eq(bind(lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    cr_assert_eq(listen(lfd, 1), 0);
    cr_assert_eq(getsockname(lfd, (struct sockaddr *)&sa, &sa_len), 0);
    pid_t fake = fork();
    cr_assert_geq(fake, 0);
    if (fake == 0) {
        int c = accept(lfd, NULL, NULL);
        char buf[4096];
        ssize_t n = read(c, buf, sizeof(buf)); /* the SCHEMA request */
        (void)n;
        static const char ddl[] = "$3\r\nddl\r\n:1\r\n";
        /* One reply to the table check and one to the first row. */
        n = write(c, ddl, sizeof(ddl) - 1);
        n = read(c, buf, sizeof(buf));
        close(c);
        _exit(0);
    }
    close(lfd);
    static char csv[65536] = "name\n";
    for (size_t i = 0; i < 3000; i++)
        memcpy(csv + 5 + i * 12, "some artist\n", 12);
    const char *path = write_text("a.csv", csv);
    struct run r;
    run_load_on(&r, ntohs(sa.sin_port), NULL,
                (const char *const[]){"--table", "artists", path, NULL});
    waitpid(fake, NULL, 0);
    cr_expect_eq(r.status, 1, "%s", r.err);
    cr_expect(strstr(r.err, "the server closed the connection") != NULL, "%s",
              r.err);
}

/* Writes s a byte at a time, so that replies reach the loader in pieces. */
static void write_bytewise(int fd, const char *s)
{
    for (size_t i = 0; s[i] != '\0'; i++) {
        cr_assert_eq(write(fd, s + i, 1), 1);
        fm_test_pause_ms(1);
    }
}

/* Reads from fd until what has come holds n copies of word. */
static void read_until(int fd, const char *word, int n)
{
    static char seen[65536];
    size_t len = 0;
    while (len < sizeof(seen) - 1) {
        ssize_t got = read(fd, seen + len, sizeof(seen) - 1 - len);
        if (got <= 0)
            _exit(1);
        len += (size_t)got;
        seen[len] = '\0';
        if (count_lines_with(seen, word) >= n)
            return;
    }
}

Test(load, replies_split_across_reads_are_matched_to_their_lines)
{
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sa_len = sizeof(sa);
    cr_assert_eq(bind(lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    cr_assert_eq(listen(lfd, 1), 0);
    cr_assert_eq(getsockname(lfd, (struct sockaddr *)&sa, &sa_len), 0);
    pid_t fake = fork();
    cr_assert_geq(fake, 0);
    if (fake == 0) {
        int c = accept(lfd, NULL, NULL);
        read_until(c, "SCHEMA", 1);
        write_bytewise(c, "$3\r\nddl\r\n");
        read_until(c, "INSERT", 3);
        write_bytewise(c, ":1\r\n:2\r\n-FOREIGNKEY no such album\r\n");
        char buf[256];
        while (read(c, buf, sizeof(buf)) > 0)
            continue;
        close(c);
        _exit(0);
    }
    close(lfd);
    const char *path = write_text("a.csv", "title\na\nb\nc\n");
    struct run r;
    run_load_on(&r, ntohs(sa.sin_port), NULL,
                (const char *const[]){"--skip-errors", "--table", "albums",
                                      path, NULL});
    int status = 0;
    waitpid(fake, &status, 0);
    cr_expect_eq(status, 0, "the fake server failed");
    cr_expect_eq(r.status, 1, "%s", r.err);
    cr_expect(strstr(r.out, "2 rows ok, 1 failed") != NULL, "%s", r.out);
    cr_expect(strstr(r.err, "line 4: FOREIGNKEY no such album") != NULL, "%s",
              r.err);
}
