/*
 * bench_engine.c: libfermata against SQLite :memory:, in one process and one
 * run, on a generated music data set with realistic skew.
 *
 * What it answers: issue 2's target, "at least 10x SQLite on every write and
 * point-read figure and below SQLite's bytes per row". Machines here are
 * noisy (up to 2x between runs, ../shared/FACTS.md), so both engines run in
 * the same process on the same generated data and the figure that matters is
 * the ratio fermata/SQLite, never an absolute rate.
 *
 * The data set (sizes are flags; defaults 1M users, 400k artists, 800k
 * albums, 10k genres, 1M tracks, 10M user_track_history rows):
 *
 *   users      username "adj_noun<id>", email from it, a 60-byte bcrypt-like
 *              password_digest and a 43-byte base64url session_token
 *   artists    names from HetRec artists.dat and TidyTuesday track_artist
 *   albums     titles from TidyTuesday track_album_name; year 70% 2010s
 *   genres     HetRec tags (deduplicated), then "tag #n" to reach the count
 *   tracks     titles from TidyTuesday track_name, song_url from a bijective
 *              hash of the id, album_id uniform (1.25 tracks per album, as
 *              in the real data), popularity from the real 0-100 histogram
 *   history    per-user row counts Zipf over a random user ranking (slope
 *              -0.69, the HetRec user-activity slope); each user's tracks
 *              drawn Zipf(1) over a random track ranking (the real curve
 *              bends from -0.78 to -1.42 around -1), without repeats;
 *              listen_count log-normal (ln mean 5.47, sd 1.53); rating NULL
 *              for 85%; rows inserted in shuffled order (arrivals interleave
 *              users) unless --order user
 *
 * When ../shared/data (or --data DIR) holds the gzip files they are read
 * with "gzip -dc" through popen; otherwise synthetic phrases of similar
 * length stand in. Everything is generated before any timing starts, and
 * both engines get exactly the same rows and the same operation sequences.
 *
 * What is timed, for each engine in turn (SQLite first, then closed, then
 * fermata, so that peak memory holds one engine at a time):
 *
 *   - inserts per table, in one transaction for SQLite (the commit is
 *     counted in the history load); fermata commits each command itself;
 *   - GET users/tracks by uniform random id, FIND users WHERE username =;
 *   - UPSERT user_track_history ... INCR listen_count 1: half re-listens of
 *     an existing (user, track) pair, half a Zipf track for the user of a
 *     random row (so mostly active users); SQLite runs INSERT ... ON
 *     CONFLICT DO UPDATE inside one transaction, without RETURNING (that
 *     favours SQLite: fermata's reply carries the id);
 *   - FIND user_track_history WHERE user_id = U ORDER BY listen_count DESC
 *     with LIMIT 50 and without, for users drawn by activity; rows/s.
 *
 * fermata is driven through fm_engine_exec with argv vectors built on the
 * stack (integers formatted by a small itoa, no malloc per operation) and
 * one reply reused with fm_reply_reset: parsing is part of what is measured.
 * SQLite uses prepared statements, binds, and reads every column of every
 * row it returns (fermata's reply copies every column too).
 *
 * Latency: every 8th operation is timed on its own with CLOCK_MONOTONIC
 * (the clock read, about 20 ns, is inside the figure); p50 and p99 come from
 * those samples. Throughput is the whole loop's wall time.
 *
 * Memory, per table: fermata's own accounting (fm_engine_table_stats,
 * row_bytes + index_bytes) and the malloc heap growth around the table's
 * load (mallinfo2, in-use plus mmapped); SQLite's sqlite3_memory_used()
 * growth around the same load, and the dbstat page bytes of the table and
 * its indexes. Divided by the table's rows.
 *
 * Progress goes to stderr, one line per phase with its CLOCK_MONOTONIC
 * start and end, so that "perf record -k CLOCK_MONOTONIC" of one run can be
 * cut per phase with "perf report --time start,end".
 *
 * Output is Markdown tables, ready for docs/benchmarks.md. Nothing is
 * judged here (STYLE.md section 8); the "target" column only says whether
 * issue 2's figure is met in this run.
 *
 * Usage: bench_engine [--small] [--users N] [--artists N] [--albums N]
 *        [--genres N] [--tracks N] [--history N] [--ops N] [--scans N]
 *        [--seed N] [--data DIR] [--only fermata|sqlite] [--order
 *        shuffled|user]
 */
#include <malloc.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include <sqlite3.h>

#include "engine/fermata.h"

enum {
    MAX_ARGS = 16,        /* the longest command is INSERT users: 10 */
    LAT_EVERY = 8,        /* every 8th operation is timed on its own */
    ARENA_CHUNK = 1 << 24 /* bytes per arena chunk */
};

/* The operations, in the order they run; the first six are the loads. */
enum op {
    OP_INSERT_USER,
    OP_INSERT_ARTIST,
    OP_INSERT_ALBUM,
    OP_INSERT_GENRE,
    OP_INSERT_TRACK,
    OP_INSERT_HISTORY,
    OP_GET_USER,
    OP_GET_TRACK,
    OP_FIND_USERNAME,
    OP_UPSERT,
    OP_SCAN50,
    OP_SCAN_ALL,
    N_OPS,
    N_TABLES = OP_INSERT_HISTORY + 1 /* tables loaded */
};

static const char *const table_names[N_TABLES] = {
    "users", "artists", "albums", "genres", "tracks", "user_track_history"};

static const char *const op_labels[N_OPS] = {
    "insert users",
    "insert artists",
    "insert albums",
    "insert genres",
    "insert tracks",
    "insert user_track_history",
    "GET users id",
    "GET tracks id",
    "FIND users WHERE username =",
    "UPSERT history INCR listen_count",
    "FIND history of a user ORDER BY listen_count DESC LIMIT 50",
    "FIND history of a user ORDER BY listen_count DESC",
};

/* What a figure counts per second. */
static const char *op_unit(enum op op)
{
    if (op < N_TABLES)
        return "rows/s";
    return op >= OP_SCAN50 ? "rows/s" : "ops/s";
}

/* A byte string borrowed from the data set's arena or corpora. */
struct sref {
    const char *p;
    size_t len;
};

struct user_row {
    struct sref username;
    struct sref email;
    struct sref digest; /* password_digest */
    struct sref token;  /* session_token */
};

struct album_row {
    struct sref title;
    int16_t year; /* 0: NULL */
};

struct track_row {
    struct sref title;
    struct sref url;
    uint32_t album_id;
    uint32_t genre_id;  /* 0: NULL */
    int16_t popularity; /* -1: NULL */
};

struct hist_row {
    uint32_t user_id;
    uint32_t track_id;
    uint32_t listen_count;
    int8_t rating; /* 2: NULL */
};

struct pair {
    uint32_t user_id;
    uint32_t track_id;
};

/* Chunks of text that never move once written. */
struct arena {
    char **chunks;
    size_t n_chunks;
    char *cur;
    size_t left;
};

/* A list of distinct strings to draw names from. */
struct corpus {
    struct sref *items;
    size_t n;
    size_t cap;
};

struct config {
    size_t n_rows[N_TABLES]; /* rows to load per table */
    size_t n_ops;            /* operations per point-operation figure */
    size_t n_scans;          /* queries per scan figure */
    uint64_t seed;
    const char *data_dir; /* NULL: look in ../shared/data and ../../ */
    bool run_fermata;
    bool run_sqlite;
    bool shuffle_history;
};

struct dataset {
    const struct config *cfg;
    struct arena arena;
    struct corpus titles;  /* track titles */
    struct corpus albums;  /* album titles */
    struct corpus artists; /* artist names */
    struct corpus tags;    /* genre names */
    bool real_data;        /* the corpora come from ../shared/data */
    struct user_row *users;
    struct sref *artist_rows;
    struct album_row *album_rows;
    struct sref *genre_rows;
    struct track_row *tracks;
    struct hist_row *history;
    uint32_t *get_users;  /* [n_ops] ids */
    uint32_t *get_tracks; /* [n_ops] ids */
    uint32_t *find_users; /* [n_ops] user ids whose username is looked up */
    struct pair *upserts; /* [n_ops] */
    uint32_t *scan_users; /* [n_scans] */
};

/* One timed phase. */
struct phase {
    int64_t start_ns; /* CLOCK_MONOTONIC, for perf --time slices */
    double secs;
    size_t n_ops;
    size_t n_rows; /* rows returned (reads) or written */
    double p50_us;
    double p99_us;
};

struct engine_result {
    bool ran;
    struct phase ph[N_OPS];
    double heap_bytes[N_TABLES];    /* growth during the table's load */
    double own_bytes[N_TABLES];     /* fermata accounting / SQLite dbstat */
    double index_bytes[N_TABLES];   /* the indexes' part of own_bytes */
    uint64_t rows[N_TABLES];        /* after the load */
    uint64_t history_after_upserts; /* user_track_history rows */
};

/* How the shared timing code drives one engine. */
struct driver {
    const char *name;
    size_t (*run)(void *ctx, enum op op, size_t i); /* rows touched */
    void (*begin)(void *ctx);
    void (*commit)(void *ctx);
    size_t (*mem_used)(void *ctx);
    void (*table_bytes)(void *ctx, double bytes_out[N_TABLES],
                        double index_bytes_out[N_TABLES],
                        uint64_t rows_out[N_TABLES]);
};

/* ---- small helpers ------------------------------------------------------ */

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int64_t wall_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void die(const char *what)
{
    fprintf(stderr, "bench_engine: %s\n", what);
    exit(1);
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n == 0 ? 1 : n);
    if (p == NULL)
        die("out of memory");
    return p;
}

static void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n == 0 ? 1 : n, size);
    if (p == NULL)
        die("out of memory");
    return p;
}

/* In-use heap bytes, small blocks and mmapped ones (glibc). */
static size_t heap_bytes(void)
{
    struct mallinfo2 mi = mallinfo2();
    return mi.uordblks + mi.hblkhd;
}

static uint64_t mix64(uint64_t z)
{
    z += 0x9e3779b97f4a7c15u;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
    return z ^ (z >> 31);
}

struct rng {
    uint64_t s;
};

static uint64_t rng_next(struct rng *r)
{
    r->s += 0x9e3779b97f4a7c15u;
    return mix64(r->s);
}

/* Uniform in [0, 1). */
static double rng_unit(struct rng *r)
{
    return (double)(rng_next(r) >> 11) * 0x1.0p-53;
}

static size_t rng_below(struct rng *r, size_t n)
{
    return (size_t)(rng_next(r) % n);
}

static double rng_normal(struct rng *r)
{
    double u1 = 1.0 - rng_unit(r);
    double u2 = rng_unit(r);
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

/* Rank in [1, n] with P(k) ~ 1/k: the inverse of the continuous CDF. */
static size_t zipf1(struct rng *r, size_t n)
{
    size_t k = (size_t)exp(rng_unit(r) * log((double)n + 1.0));
    return k < 1 ? 1 : (k > n ? n : k);
}

/* "1.23M", "151k" */
static void format_rate(char *out, size_t cap, double v)
{
    if (v >= 1e6)
        snprintf(out, cap, "%.2fM", v / 1e6);
    else if (v >= 1e5)
        snprintf(out, cap, "%.0fk", v / 1e3);
    else if (v >= 1e3)
        snprintf(out, cap, "%.1fk", v / 1e3);
    else
        snprintf(out, cap, "%.0f", v);
}

/* Random permutation of [0, n). */
static uint32_t *random_permutation(struct rng *r, size_t n)
{
    uint32_t *p = xmalloc(n * sizeof(*p));
    for (size_t i = 0; i < n; i++)
        p[i] = (uint32_t)i;
    for (size_t i = n; i > 1; i--) {
        size_t j = rng_below(r, i);
        uint32_t t = p[i - 1];
        p[i - 1] = p[j];
        p[j] = t;
    }
    return p;
}

/* ---- arena and corpora -------------------------------------------------- */

static char *arena_alloc(struct arena *a, size_t n)
{
    if (n > a->left) {
        size_t size = n > ARENA_CHUNK ? n : ARENA_CHUNK;
        a->chunks = realloc(a->chunks, (a->n_chunks + 1) * sizeof(char *));
        if (a->chunks == NULL)
            die("out of memory");
        a->cur = xmalloc(size);
        a->chunks[a->n_chunks++] = a->cur;
        a->left = size;
    }
    char *p = a->cur;
    a->cur += n;
    a->left -= n;
    return p;
}

static void arena_fini(struct arena *a)
{
    for (size_t i = 0; i < a->n_chunks; i++)
        free(a->chunks[i]);
    free(a->chunks);
    memset(a, 0, sizeof(*a));
}

/* Copies p[0..len) into the arena, NUL-terminated (SQLite binds need no
 * NUL, but it makes the strings easy to print). */
static struct sref arena_copy(struct arena *a, const char *p, size_t len)
{
    char *q = arena_alloc(a, len + 1);
    memcpy(q, p, len);
    q[len] = '\0';
    return (struct sref){q, len};
}

static void corpus_add(struct corpus *c, struct arena *a, const char *p,
                       size_t len)
{
    if (len == 0 || len > 400 || (len == 2 && memcmp(p, "NA", 2) == 0))
        return;
    if (c->n == c->cap) {
        c->cap = c->cap == 0 ? 1024 : c->cap * 2;
        c->items = realloc(c->items, c->cap * sizeof(*c->items));
        if (c->items == NULL)
            die("out of memory");
    }
    c->items[c->n++] = arena_copy(a, p, len);
}

static int cmp_sref(const void *x, const void *y)
{
    const struct sref *a = x;
    const struct sref *b = y;
    size_t n = a->len < b->len ? a->len : b->len;
    int c = memcmp(a->p, b->p, n);
    if (c != 0)
        return c;
    return (a->len > b->len) - (a->len < b->len);
}

/* Sorts and drops repeats (names that must be unique come from here). */
static void corpus_dedupe(struct corpus *c)
{
    if (c->n == 0)
        return;
    qsort(c->items, c->n, sizeof(*c->items), cmp_sref);
    size_t w = 1;
    for (size_t i = 1; i < c->n; i++)
        if (cmp_sref(&c->items[i], &c->items[w - 1]) != 0)
            c->items[w++] = c->items[i];
    c->n = w;
}

/* Shuffles so that cycling through the corpus does not walk it sorted. */
static void corpus_shuffle(struct corpus *c, struct rng *r)
{
    for (size_t i = c->n; i > 1; i--) {
        size_t j = rng_below(r, i);
        struct sref t = c->items[i - 1];
        c->items[i - 1] = c->items[j];
        c->items[j] = t;
    }
}

/* ---- reading ../shared/data --------------------------------------------- */

/* The whole decompressed file in a malloc'd buffer, or NULL. */
static char *read_gz(const char *dir, const char *name, size_t *len_out)
{
    char path[1024];
    char cmd[1200];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *probe = fopen(path, "rb");
    if (probe == NULL)
        return NULL;
    fclose(probe);
    snprintf(cmd, sizeof(cmd), "gzip -dc '%s'", path);
    FILE *f = popen(cmd, "r");
    if (f == NULL)
        return NULL;
    size_t cap = 1 << 20;
    size_t len = 0;
    char *buf = xmalloc(cap);
    size_t got;
    while ((got = fread(buf + len, 1, cap - len, f)) > 0) {
        len += got;
        if (len == cap) {
            cap *= 2;
            buf = realloc(buf, cap);
            if (buf == NULL)
                die("out of memory");
        }
    }
    if (pclose(f) != 0 || len == 0) {
        free(buf);
        return NULL;
    }
    *len_out = len;
    return buf;
}

/*
 * Splits the RFC 4180 record at *pos into fields (at most max are kept),
 * unescaping quoted fields in place; returns the field count, 0 at the end.
 */
static size_t csv_record(char *buf, size_t len, size_t *pos,
                         struct sref *fields, size_t max)
{
    size_t i = *pos;
    size_t n = 0;
    if (i >= len)
        return 0;
    for (;;) {
        char *start = buf + i;
        char *w = start;
        if (buf[i] == '"') {
            for (i++; i < len; i++) {
                if (buf[i] == '"' && (i + 1 >= len || buf[i + 1] != '"'))
                    break;
                if (buf[i] == '"')
                    i++;
                *w++ = buf[i];
            }
            i++;
        } else {
            while (i < len && buf[i] != ',' && buf[i] != '\n' && buf[i] != '\r')
                *w++ = buf[i++];
        }
        if (n < max)
            fields[n] = (struct sref){start, (size_t)(w - start)};
        n++;
        if (i < len && buf[i] == ',') {
            i++;
            continue;
        }
        while (i < len && (buf[i] == '\r' || buf[i] == '\n'))
            i++;
        *pos = i;
        return n;
    }
}

/* Adds column col of every line of a TAB file (header skipped). */
static void tsv_column(struct corpus *c, struct arena *a, const char *buf,
                       size_t len, size_t col)
{
    size_t i = 0;
    while (i < len && buf[i] != '\n')
        i++;
    while (i < len) {
        i++;
        size_t line_end = i;
        while (line_end < len && buf[line_end] != '\n')
            line_end++;
        size_t f = 0;
        size_t start = i;
        for (size_t k = i; k <= line_end; k++) {
            if (k < line_end && buf[k] != '\t')
                continue;
            size_t end = k;
            if (end > start && buf[end - 1] == '\r')
                end--;
            if (f++ == col)
                corpus_add(c, a, buf + start, end - start);
            start = k + 1;
        }
        i = line_end;
    }
}

/* Track titles, artists and album titles from TidyTuesday; false if absent.
 */
static bool load_tidytuesday(struct dataset *ds, const char *dir)
{
    size_t len;
    char *buf = read_gz(dir, "tidytuesday_spotify_songs.csv.gz", &len);
    if (buf == NULL)
        return false;
    size_t pos = 0;
    struct sref f[12];
    csv_record(buf, len, &pos, f, 12); /* header */
    size_t n;
    while ((n = csv_record(buf, len, &pos, f, 12)) > 0) {
        if (n < 11)
            continue;
        corpus_add(&ds->titles, &ds->arena, f[1].p, f[1].len);
        corpus_add(&ds->artists, &ds->arena, f[2].p, f[2].len);
        corpus_add(&ds->albums, &ds->arena, f[5].p, f[5].len);
        corpus_add(&ds->tags, &ds->arena, f[10].p, f[10].len);
    }
    free(buf);
    return ds->titles.n > 0;
}

static void load_hetrec(struct dataset *ds, const char *dir)
{
    size_t len;
    char *buf = read_gz(dir, "hetrec2011_lastfm2k_artists.dat.gz", &len);
    if (buf != NULL) {
        tsv_column(&ds->artists, &ds->arena, buf, len, 1);
        free(buf);
    }
    buf = read_gz(dir, "hetrec2011_lastfm2k_tags.dat.gz", &len);
    if (buf != NULL) {
        tsv_column(&ds->tags, &ds->arena, buf, len, 1);
        free(buf);
    }
}

/* A phrase of 1-6 made-up words, for when the real files are absent. */
static void synthetic_phrase(struct corpus *c, struct arena *a, struct rng *r)
{
    static const char *const syl[] = {
        "la",  "mo", "ri",  "ka", "dan", "sel", "tor", "vi", "ne", "por",
        "shi", "lu", "ber", "an", "go",  "mer", "tha", "ly", "ro", "wen"};
    char buf[128];
    size_t len = 0;
    size_t words = 1 + (size_t)fabs(rng_normal(r) * 2.0);
    for (size_t w = 0; w < words && w < 6; w++) {
        if (w > 0)
            buf[len++] = ' ';
        size_t n_syl = 1 + rng_below(r, 3);
        for (size_t s = 0; s < n_syl; s++) {
            const char *p = syl[rng_below(r, FM_ARRAY_LEN(syl))];
            size_t l = strlen(p);
            memcpy(buf + len, p, l);
            len += l;
        }
    }
    buf[0] = (char)(buf[0] - 'a' + 'A');
    corpus_add(c, a, buf, len);
}

static void load_corpora(struct dataset *ds, struct rng *r)
{
    static const char *const dirs[] = {"../shared/data", "../../shared/data",
                                       "/work/shared/data"};
    const struct config *cfg = ds->cfg;
    for (size_t i = 0; i < FM_ARRAY_LEN(dirs) && !ds->real_data; i++) {
        const char *dir = cfg->data_dir != NULL ? cfg->data_dir : dirs[i];
        if (load_tidytuesday(ds, dir)) {
            load_hetrec(ds, dir);
            ds->real_data = true;
            printf("real data: %s\n", dir);
        }
        if (cfg->data_dir != NULL)
            break;
    }
    struct corpus *all[] = {&ds->titles, &ds->albums, &ds->artists, &ds->tags};
    for (size_t k = 0; k < FM_ARRAY_LEN(all); k++) {
        while (all[k]->n < 2000)
            synthetic_phrase(all[k], &ds->arena, r);
        corpus_dedupe(all[k]);
        corpus_shuffle(all[k], r);
    }
}

/* ---- generating the rows ------------------------------------------------ */

/* n chars of alphabet chosen at random, NUL-terminated, into the arena. */
static struct sref random_text(struct arena *a, struct rng *r,
                               const char *prefix, const char *alphabet,
                               size_t n)
{
    size_t pre = strlen(prefix);
    size_t n_alpha = strlen(alphabet);
    char *q = arena_alloc(a, pre + n + 1);
    memcpy(q, prefix, pre);
    for (size_t i = 0; i < n; i++)
        q[pre + i] = alphabet[rng_below(r, n_alpha)];
    q[pre + n] = '\0';
    return (struct sref){q, pre + n};
}

static void gen_users(struct dataset *ds, struct rng *r)
{
    static const char *const adj[] = {"blue",   "lazy",   "happy",  "dark",
                                      "wild",   "quiet",  "neon",   "velvet",
                                      "lunar",  "funky",  "mellow", "sonic",
                                      "cosmic", "golden", "silent", "electric"};
    static const char *const noun[] = {"fox",    "tiger", "echo",  "rhythm",
                                       "groove", "wave",  "drum",  "piano",
                                       "raven",  "comet", "river", "storm",
                                       "pixel",  "vinyl", "bass",  "melody"};
    static const char *const domain[] = {
        "gmail.com",  "yahoo.com", "outlook.com", "proton.me",
        "icloud.com", "mail.ru",   "gmx.de",      "example.org"};
    static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstu"
                              "vwxyz0123456789-_";
    size_t n = ds->cfg->n_rows[OP_INSERT_USER];
    ds->users = xmalloc(n * sizeof(*ds->users));
    for (size_t i = 0; i < n; i++) {
        char buf[96];
        uint64_t h = mix64(i);
        int len = snprintf(buf, sizeof(buf), "%s_%s%zu", adj[h % 16],
                           noun[(h >> 8) % 16], i + 1);
        struct user_row *u = &ds->users[i];
        u->username = arena_copy(&ds->arena, buf, (size_t)len);
        len = snprintf(buf, sizeof(buf), "%s@%s", u->username.p,
                       domain[(h >> 16) % 8]);
        u->email = arena_copy(&ds->arena, buf, (size_t)len);
        u->digest = random_text(&ds->arena, r, "$2a$12$", b64, 53);
        u->token = random_text(&ds->arena, r, "", b64, 43);
    }
}

static void gen_catalogue(struct dataset *ds, struct rng *r)
{
    const struct config *cfg = ds->cfg;
    size_t n = cfg->n_rows[OP_INSERT_ARTIST];
    ds->artist_rows = xmalloc(n * sizeof(*ds->artist_rows));
    for (size_t i = 0; i < n; i++)
        ds->artist_rows[i] = ds->artists.items[i % ds->artists.n];
    n = cfg->n_rows[OP_INSERT_ALBUM];
    ds->album_rows = xmalloc(n * sizeof(*ds->album_rows));
    for (size_t i = 0; i < n; i++) {
        struct album_row *a = &ds->album_rows[i];
        a->title = ds->albums.items[i % ds->albums.n];
        double u = rng_unit(r);
        a->year = (int16_t)(u < 0.03   ? 0
                            : u < 0.73 ? 2010 + (int)rng_below(r, 11)
                                       : 1957 + (int)rng_below(r, 53));
    }
    n = cfg->n_rows[OP_INSERT_GENRE];
    ds->genre_rows = xmalloc(n * sizeof(*ds->genre_rows));
    for (size_t i = 0; i < n; i++) {
        struct sref t = ds->tags.items[i % ds->tags.n];
        if (i < ds->tags.n) {
            ds->genre_rows[i] = t;
            continue;
        }
        char buf[512];
        int len = snprintf(buf, sizeof(buf), "%s #%zu", t.p, i);
        ds->genre_rows[i] = arena_copy(&ds->arena, buf, (size_t)len);
    }
}

/* Spotify track_popularity by decade (0-9, ..., 90-99, 100), from the data
 * README. */
static int16_t random_popularity(struct rng *r)
{
    static const unsigned hist[] = {5000, 1802, 2301, 3861, 4412, 4563,
                                    3782, 2127, 452,  55,   1};
    size_t total = 28356;
    size_t x = rng_below(r, total);
    for (size_t d = 0; d < FM_ARRAY_LEN(hist); d++) {
        if (x < hist[d])
            return (int16_t)(d == 10 ? 100 : d * 10 + rng_below(r, 10));
        x -= hist[d];
    }
    return 42;
}

static void gen_tracks(struct dataset *ds, struct rng *r)
{
    static const char b62[] = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghij"
                              "klmnopqrstuvwxyz";
    const struct config *cfg = ds->cfg;
    size_t n = cfg->n_rows[OP_INSERT_TRACK];
    ds->tracks = xmalloc(n * sizeof(*ds->tracks));
    for (size_t i = 0; i < n; i++) {
        struct track_row *t = &ds->tracks[i];
        t->title = ds->titles.items[i % ds->titles.n];
        /* 22 base-62 digits: 11 of mix64(i), a bijection, then 11 more. */
        char url[64] = "https://open.spotify.com/track/";
        size_t len = strlen(url);
        uint64_t a = mix64(i);
        uint64_t b = mix64(i ^ 0x5bd1e995u);
        for (size_t k = 0; k < 11; k++, a /= 62)
            url[len++] = b62[a % 62];
        for (size_t k = 0; k < 11; k++, b /= 62)
            url[len++] = b62[b % 62];
        t->url = arena_copy(&ds->arena, url, len);
        t->album_id =
            (uint32_t)(1 + rng_below(r, cfg->n_rows[OP_INSERT_ALBUM]));
        t->genre_id =
            rng_unit(r) < 0.05
                ? 0
                : (uint32_t)(1 + rng_below(r, cfg->n_rows[OP_INSERT_GENRE]));
        t->popularity = rng_unit(r) < 0.02 ? -1 : random_popularity(r);
    }
}

/* Rows per user: Zipf with slope -0.69 over a random ranking of users,
 * scaled to n_history and capped at half the tracks. */
static uint32_t *history_per_user(const struct config *cfg, struct rng *r)
{
    size_t n_users = cfg->n_rows[OP_INSERT_USER];
    size_t n_hist = cfg->n_rows[OP_INSERT_HISTORY];
    size_t cap = cfg->n_rows[OP_INSERT_TRACK] / 2;
    uint32_t *rank = random_permutation(r, n_users);
    uint32_t *count = xcalloc(n_users, sizeof(*count));
    double total = 0;
    for (size_t k = 1; k <= n_users; k++)
        total += pow((double)k, -0.69);
    size_t sum = 0;
    for (size_t k = 1; k <= n_users; k++) {
        size_t c = (size_t)((double)n_hist * pow((double)k, -0.69) / total);
        c = c > cap ? cap : c;
        count[rank[k - 1]] = (uint32_t)c;
        sum += c;
    }
    while (sum < n_hist) {
        size_t u = rng_below(r, n_users);
        if (count[u] < cap) {
            count[u]++;
            sum++;
        }
    }
    free(rank);
    return count;
}

/* A track for one user that the user has not had yet (stamp[t] == user). */
static uint32_t fresh_track(const uint32_t *pop_rank, uint32_t *stamp,
                            uint32_t user, size_t n_tracks, struct rng *r)
{
    for (size_t tries = 0;; tries++) {
        uint32_t t = tries < 64 ? pop_rank[zipf1(r, n_tracks) - 1]
                                : (uint32_t)rng_below(r, n_tracks);
        if (stamp[t] != user) {
            stamp[t] = user;
            return t + 1;
        }
    }
}

static uint32_t random_listen_count(struct rng *r)
{
    double v = exp(5.47 + 1.53 * rng_normal(r));
    return v < 1 ? 1 : (v > 1e7 ? 10000000 : (uint32_t)v);
}

static int8_t random_rating(struct rng *r)
{
    double u = rng_unit(r);
    return (int8_t)(u < 0.85 ? 2 : u < 0.95 ? 1 : u < 0.98 ? 0 : -1);
}

static void gen_history(struct dataset *ds, struct rng *r,
                        const uint32_t *pop_rank)
{
    const struct config *cfg = ds->cfg;
    size_t n_users = cfg->n_rows[OP_INSERT_USER];
    size_t n_tracks = cfg->n_rows[OP_INSERT_TRACK];
    size_t n_hist = cfg->n_rows[OP_INSERT_HISTORY];
    uint32_t *count = history_per_user(cfg, r);
    uint32_t *stamp = xcalloc(n_tracks, sizeof(*stamp));
    ds->history = xmalloc(n_hist * sizeof(*ds->history));
    size_t k = 0;
    for (size_t u = 0; u < n_users; u++) {
        for (uint32_t j = 0; j < count[u]; j++) {
            struct hist_row *h = &ds->history[k++];
            h->user_id = (uint32_t)(u + 1);
            h->track_id =
                fresh_track(pop_rank, stamp, (uint32_t)(u + 1), n_tracks, r);
            h->listen_count = random_listen_count(r);
            h->rating = random_rating(r);
        }
    }
    FM_ASSERT(k == n_hist);
    for (size_t i = n_hist; cfg->shuffle_history && i > 1; i--) {
        size_t j = rng_below(r, i);
        struct hist_row t = ds->history[i - 1];
        ds->history[i - 1] = ds->history[j];
        ds->history[j] = t;
    }
    free(stamp);
    free(count);
}

static void gen_workloads(struct dataset *ds, struct rng *r,
                          const uint32_t *pop_rank)
{
    const struct config *cfg = ds->cfg;
    size_t n_users = cfg->n_rows[OP_INSERT_USER];
    size_t n_tracks = cfg->n_rows[OP_INSERT_TRACK];
    size_t n_hist = cfg->n_rows[OP_INSERT_HISTORY];
    ds->get_users = xmalloc(cfg->n_ops * sizeof(uint32_t));
    ds->get_tracks = xmalloc(cfg->n_ops * sizeof(uint32_t));
    ds->find_users = xmalloc(cfg->n_ops * sizeof(uint32_t));
    ds->upserts = xmalloc(cfg->n_ops * sizeof(struct pair));
    ds->scan_users = xmalloc(cfg->n_scans * sizeof(uint32_t));
    for (size_t i = 0; i < cfg->n_ops; i++) {
        ds->get_users[i] = (uint32_t)(1 + rng_below(r, n_users));
        ds->get_tracks[i] = (uint32_t)(1 + rng_below(r, n_tracks));
        ds->find_users[i] = (uint32_t)(1 + rng_below(r, n_users));
        const struct hist_row *h = &ds->history[rng_below(r, n_hist)];
        ds->upserts[i].user_id = h->user_id;
        ds->upserts[i].track_id = rng_unit(r) < 0.5
                                      ? h->track_id
                                      : pop_rank[zipf1(r, n_tracks) - 1] + 1;
    }
    for (size_t i = 0; i < cfg->n_scans; i++)
        ds->scan_users[i] = ds->history[rng_below(r, n_hist)].user_id;
}

static void dataset_build(struct dataset *ds, const struct config *cfg)
{
    struct rng r = {cfg->seed};
    memset(ds, 0, sizeof(*ds));
    ds->cfg = cfg;
    int64_t t0 = now_ns();
    load_corpora(ds, &r);
    gen_users(ds, &r);
    gen_catalogue(ds, &r);
    gen_tracks(ds, &r);
    uint32_t *pop_rank = random_permutation(&r, cfg->n_rows[OP_INSERT_TRACK]);
    gen_history(ds, &r, pop_rank);
    gen_workloads(ds, &r, pop_rank);
    free(pop_rank);
    printf("corpora: %zu titles, %zu albums, %zu artists, %zu tags (%s)\n",
           ds->titles.n, ds->albums.n, ds->artists.n, ds->tags.n,
           ds->real_data ? "real" : "synthetic");
    printf("generated in %.1f s\n\n", (double)(now_ns() - t0) / 1e9);
}

static void dataset_fini(struct dataset *ds)
{
    free(ds->users);
    free(ds->artist_rows);
    free(ds->album_rows);
    free(ds->genre_rows);
    free(ds->tracks);
    free(ds->history);
    free(ds->get_users);
    free(ds->get_tracks);
    free(ds->find_users);
    free(ds->upserts);
    free(ds->scan_users);
    free(ds->titles.items);
    free(ds->albums.items);
    free(ds->artists.items);
    free(ds->tags.items);
    arena_fini(&ds->arena);
}

/* ---- fermata ------------------------------------------------------------ */

struct fm_side {
    const struct dataset *ds;
    struct fm_engine *e;
    struct fm_reply reply;
};

/* One command's argument vector, on the stack. */
struct args {
    const uint8_t *argv[MAX_ARGS];
    size_t len[MAX_ARGS];
    size_t argc;
    char num[4][24]; /* formatted integers */
    size_t n_num;
};

static void arg_add(struct args *a, const char *p, size_t len)
{
    FM_ASSERT(a->argc < MAX_ARGS);
    a->argv[a->argc] = (const uint8_t *)p;
    a->len[a->argc++] = len;
}

#define ARG_LIT(a, s) arg_add((a), (s), sizeof(s) - 1)

static void arg_ref(struct args *a, struct sref s)
{
    arg_add(a, s.p, s.len);
}

static void arg_int(struct args *a, int64_t v)
{
    FM_ASSERT(a->n_num < FM_ARRAY_LEN(a->num));
    char *b = a->num[a->n_num++];
    arg_add(a, b, fm_format_i64(b, v));
}

static void fm_build_insert(const struct dataset *ds, enum op op, size_t i,
                            struct args *a)
{
    ARG_LIT(a, "INSERT");
    arg_add(a, table_names[op], strlen(table_names[op]));
    if (op == OP_INSERT_USER) {
        const struct user_row *u = &ds->users[i];
        ARG_LIT(a, "username");
        arg_ref(a, u->username);
        ARG_LIT(a, "email");
        arg_ref(a, u->email);
        ARG_LIT(a, "password_digest");
        arg_ref(a, u->digest);
        ARG_LIT(a, "session_token");
        arg_ref(a, u->token);
    } else if (op == OP_INSERT_ARTIST) {
        ARG_LIT(a, "name");
        arg_ref(a, ds->artist_rows[i]);
    } else if (op == OP_INSERT_ALBUM) {
        ARG_LIT(a, "title");
        arg_ref(a, ds->album_rows[i].title);
        if (ds->album_rows[i].year != 0) {
            ARG_LIT(a, "year");
            arg_int(a, ds->album_rows[i].year);
        }
    } else if (op == OP_INSERT_GENRE) {
        ARG_LIT(a, "name");
        arg_ref(a, ds->genre_rows[i]);
    }
}

static void fm_build_track(const struct track_row *t, struct args *a)
{
    ARG_LIT(a, "INSERT");
    ARG_LIT(a, "tracks");
    ARG_LIT(a, "title");
    arg_ref(a, t->title);
    ARG_LIT(a, "song_url");
    arg_ref(a, t->url);
    ARG_LIT(a, "album_id");
    arg_int(a, t->album_id);
    if (t->popularity >= 0) {
        ARG_LIT(a, "popularity");
        arg_int(a, t->popularity);
    }
    if (t->genre_id != 0) {
        ARG_LIT(a, "genre_id");
        arg_int(a, t->genre_id);
    }
}

static void fm_build_history(const struct hist_row *h, struct args *a)
{
    ARG_LIT(a, "INSERT");
    ARG_LIT(a, "user_track_history");
    ARG_LIT(a, "user_id");
    arg_int(a, h->user_id);
    ARG_LIT(a, "track_id");
    arg_int(a, h->track_id);
    ARG_LIT(a, "listen_count");
    arg_int(a, h->listen_count);
    if (h->rating != 2) {
        ARG_LIT(a, "rating");
        arg_int(a, h->rating);
    }
}

static void fm_build_read(const struct dataset *ds, enum op op, size_t i,
                          struct args *a)
{
    if (op == OP_GET_USER || op == OP_GET_TRACK) {
        ARG_LIT(a, "GET");
        if (op == OP_GET_USER)
            ARG_LIT(a, "users");
        else
            ARG_LIT(a, "tracks");
        arg_int(a, op == OP_GET_USER ? ds->get_users[i] : ds->get_tracks[i]);
    } else if (op == OP_FIND_USERNAME) {
        ARG_LIT(a, "FIND");
        ARG_LIT(a, "users");
        ARG_LIT(a, "WHERE");
        ARG_LIT(a, "username");
        ARG_LIT(a, "=");
        arg_ref(a, ds->users[ds->find_users[i] - 1].username);
    } else {
        ARG_LIT(a, "FIND");
        ARG_LIT(a, "user_track_history");
        ARG_LIT(a, "WHERE");
        ARG_LIT(a, "user_id");
        ARG_LIT(a, "=");
        arg_int(a, ds->scan_users[i]);
        ARG_LIT(a, "ORDER");
        ARG_LIT(a, "BY");
        ARG_LIT(a, "listen_count");
        ARG_LIT(a, "DESC");
        if (op == OP_SCAN50) {
            ARG_LIT(a, "LIMIT");
            ARG_LIT(a, "50");
        }
    }
}

static void fm_build(const struct dataset *ds, enum op op, size_t i,
                     struct args *a)
{
    if (op == OP_INSERT_TRACK) {
        fm_build_track(&ds->tracks[i], a);
    } else if (op == OP_INSERT_HISTORY) {
        fm_build_history(&ds->history[i], a);
    } else if (op < N_TABLES) {
        fm_build_insert(ds, op, i, a);
    } else if (op == OP_UPSERT) {
        ARG_LIT(a, "UPSERT");
        ARG_LIT(a, "user_track_history");
        ARG_LIT(a, "user_id");
        arg_int(a, ds->upserts[i].user_id);
        ARG_LIT(a, "track_id");
        arg_int(a, ds->upserts[i].track_id);
        ARG_LIT(a, "INCR");
        ARG_LIT(a, "listen_count");
        ARG_LIT(a, "1");
    } else {
        fm_build_read(ds, op, i, a);
    }
}

static void fm_fail(struct fm_side *s, enum op op, size_t i, fm_status st)
{
    struct fm_reply_cursor c;
    struct fm_reply_value v;
    fm_reply_cursor_init(&c, &s->reply);
    int len = 0;
    const char *msg = "";
    if (fm_reply_next(&c, &v) && v.type == FM_REPLY_ERROR) {
        len = (int)v.len;
        msg = (const char *)v.str;
    }
    fprintf(stderr, "bench_engine: fermata: %s #%zu: %s %.*s\n", op_labels[op],
            i, fm_status_code(st), len, msg);
    exit(1);
}

static size_t fm_side_run(void *ctx, enum op op, size_t i)
{
    struct fm_side *s = ctx;
    struct args a;
    a.argc = 0;
    a.n_num = 0;
    fm_build(s->ds, op, i, &a);
    fm_reply_reset(&s->reply);
    fm_status st = fm_engine_exec(s->e, a.argc, a.argv, a.len, &s->reply);
    if (st != FM_OK)
        fm_fail(s, op, i, st);
    if (op < N_TABLES || op == OP_UPSERT)
        return 1;
    /* Reads: GET gives one row array or nil, FIND an array of rows. */
    struct fm_reply_cursor c;
    struct fm_reply_value v;
    fm_reply_cursor_init(&c, &s->reply);
    if (!fm_reply_next(&c, &v) || v.type != FM_REPLY_ARRAY)
        return 0;
    return op == OP_GET_USER || op == OP_GET_TRACK ? 1 : v.n;
}

static void fm_side_nop(void *ctx)
{
    (void)ctx;
}

static size_t fm_side_mem(void *ctx)
{
    (void)ctx;
    return heap_bytes();
}

static void fm_side_table_bytes(void *ctx, double bytes_out[N_TABLES],
                                double index_bytes_out[N_TABLES],
                                uint64_t rows_out[N_TABLES])
{
    struct fm_side *s = ctx;
    for (size_t i = 0; i < fm_engine_table_count(s->e); i++) {
        struct fm_table_stats ts;
        fm_engine_table_stats(s->e, i, &ts);
        for (size_t t = 0; t < N_TABLES; t++) {
            if (strcmp(ts.name, table_names[t]) != 0)
                continue;
            bytes_out[t] = (double)(ts.row_bytes + ts.index_bytes);
            index_bytes_out[t] = (double)ts.index_bytes;
            rows_out[t] = ts.n_rows;
        }
    }
}

static const struct driver fm_driver = {"fermata",   fm_side_run,
                                        fm_side_nop, fm_side_nop,
                                        fm_side_mem, fm_side_table_bytes};

/* ---- SQLite ------------------------------------------------------------- */

/* SPEC section 1 in SQL: the same columns, constraints and indexes. */
static const char sq_schema[] =
    "PRAGMA foreign_keys = ON;"
    "CREATE TABLE users (id INTEGER PRIMARY KEY,"
    " username TEXT NOT NULL UNIQUE, email TEXT NOT NULL UNIQUE,"
    " password_digest TEXT NOT NULL, session_token TEXT NOT NULL,"
    " created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL);"
    "CREATE INDEX users_session_token ON users (session_token);"
    "CREATE TABLE artists (id INTEGER PRIMARY KEY, name TEXT NOT NULL,"
    " created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL);"
    "CREATE TABLE albums (id INTEGER PRIMARY KEY, title TEXT NOT NULL,"
    " year INTEGER,"
    " created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL);"
    "CREATE TABLE genres (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE,"
    " created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL);"
    "CREATE TABLE tracks (id INTEGER PRIMARY KEY, title TEXT NOT NULL,"
    " song_url TEXT NOT NULL UNIQUE,"
    " album_id INTEGER NOT NULL REFERENCES albums ON DELETE RESTRICT,"
    " popularity INTEGER,"
    " genre_id INTEGER REFERENCES genres ON DELETE SET NULL,"
    " created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL);"
    "CREATE INDEX tracks_album_id ON tracks (album_id);"
    "CREATE INDEX tracks_genre_id ON tracks (genre_id);"
    "CREATE TABLE playlists (id INTEGER PRIMARY KEY, title TEXT NOT NULL,"
    " user_id INTEGER NOT NULL REFERENCES users ON DELETE CASCADE,"
    " created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL);"
    "CREATE INDEX playlists_user_id ON playlists (user_id);"
    "CREATE TABLE user_followers (id INTEGER PRIMARY KEY,"
    " user_id INTEGER NOT NULL REFERENCES users ON DELETE CASCADE,"
    " follower_id INTEGER NOT NULL REFERENCES users ON DELETE CASCADE,"
    " created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL,"
    " UNIQUE (user_id, follower_id));"
    "CREATE INDEX user_followers_follower_id ON user_followers"
    " (follower_id);"
    "CREATE TABLE playlist_tracks (id INTEGER PRIMARY KEY,"
    " playlist_id INTEGER NOT NULL REFERENCES playlists ON DELETE CASCADE,"
    " track_id INTEGER NOT NULL REFERENCES tracks ON DELETE CASCADE,"
    " created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL);"
    "CREATE INDEX playlist_tracks_playlist_id ON playlist_tracks"
    " (playlist_id);"
    "CREATE INDEX playlist_tracks_track_id ON playlist_tracks (track_id);"
    "CREATE TABLE playlist_followers (id INTEGER PRIMARY KEY,"
    " playlist_id INTEGER NOT NULL REFERENCES playlists ON DELETE CASCADE,"
    " follower_id INTEGER NOT NULL REFERENCES users ON DELETE CASCADE,"
    " created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL,"
    " UNIQUE (playlist_id, follower_id));"
    "CREATE INDEX playlist_followers_follower_id ON playlist_followers"
    " (follower_id);"
    "CREATE TABLE user_track_history (id INTEGER PRIMARY KEY,"
    " user_id INTEGER NOT NULL REFERENCES users ON DELETE CASCADE,"
    " track_id INTEGER NOT NULL REFERENCES tracks ON DELETE CASCADE,"
    " listen_count INTEGER NOT NULL DEFAULT 0,"
    " rating INTEGER CHECK (rating IN (-1, 0, 1)),"
    " created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL,"
    " UNIQUE (user_id, track_id));"
    "CREATE INDEX user_track_history_track_id ON user_track_history"
    " (track_id);";

static const char *const sq_sql[N_OPS] = {
    "INSERT INTO users (username, email, password_digest, session_token,"
    " created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
    "INSERT INTO artists (name, created_at, updated_at) VALUES (?1, ?2, ?2)",
    "INSERT INTO albums (title, year, created_at, updated_at)"
    " VALUES (?1, ?2, ?3, ?3)",
    "INSERT INTO genres (name, created_at, updated_at) VALUES (?1, ?2, ?2)",
    "INSERT INTO tracks (title, song_url, album_id, popularity, genre_id,"
    " created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
    "INSERT INTO user_track_history (user_id, track_id, listen_count,"
    " rating, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
    "SELECT * FROM users WHERE id = ?1",
    "SELECT * FROM tracks WHERE id = ?1",
    "SELECT * FROM users WHERE username = ?1",
    "INSERT INTO user_track_history (user_id, track_id, listen_count,"
    " created_at, updated_at) VALUES (?1, ?2, 1, ?3, ?3)"
    " ON CONFLICT (user_id, track_id) DO UPDATE SET"
    " listen_count = listen_count + 1, updated_at = excluded.updated_at",
    "SELECT * FROM user_track_history WHERE user_id = ?1"
    " ORDER BY listen_count DESC LIMIT 50",
    "SELECT * FROM user_track_history WHERE user_id = ?1"
    " ORDER BY listen_count DESC",
};

struct sq_side {
    const struct dataset *ds;
    sqlite3 *db;
    sqlite3_stmt *stmt[N_OPS];
    uint64_t sink; /* folds every column read, so none is skipped */
};

static void sq_fail(const struct sq_side *s, const char *what)
{
    fprintf(stderr, "bench_engine: sqlite: %s: %s\n", what,
            sqlite3_errmsg(s->db));
    exit(1);
}

static void sq_exec(struct sq_side *s, const char *sql)
{
    if (sqlite3_exec(s->db, sql, NULL, NULL, NULL) != SQLITE_OK)
        sq_fail(s, sql);
}

static void sq_text(sqlite3_stmt *st, int k, struct sref v)
{
    sqlite3_bind_text(st, k, v.p, (int)v.len, SQLITE_STATIC);
}

static void sq_int_or_null(sqlite3_stmt *st, int k, int64_t v, bool is_null)
{
    if (is_null)
        sqlite3_bind_null(st, k);
    else
        sqlite3_bind_int64(st, k, v);
}

static void sq_bind_insert(const struct dataset *ds, enum op op, size_t i,
                           sqlite3_stmt *st)
{
    int64_t now = wall_us();
    if (op == OP_INSERT_USER) {
        const struct user_row *u = &ds->users[i];
        sq_text(st, 1, u->username);
        sq_text(st, 2, u->email);
        sq_text(st, 3, u->digest);
        sq_text(st, 4, u->token);
        sqlite3_bind_int64(st, 5, now);
    } else if (op == OP_INSERT_ARTIST || op == OP_INSERT_GENRE) {
        sq_text(st, 1,
                op == OP_INSERT_ARTIST ? ds->artist_rows[i]
                                       : ds->genre_rows[i]);
        sqlite3_bind_int64(st, 2, now);
    } else if (op == OP_INSERT_ALBUM) {
        const struct album_row *a = &ds->album_rows[i];
        sq_text(st, 1, a->title);
        sq_int_or_null(st, 2, a->year, a->year == 0);
        sqlite3_bind_int64(st, 3, now);
    } else if (op == OP_INSERT_TRACK) {
        const struct track_row *t = &ds->tracks[i];
        sq_text(st, 1, t->title);
        sq_text(st, 2, t->url);
        sqlite3_bind_int64(st, 3, t->album_id);
        sq_int_or_null(st, 4, t->popularity, t->popularity < 0);
        sq_int_or_null(st, 5, t->genre_id, t->genre_id == 0);
        sqlite3_bind_int64(st, 6, now);
    } else {
        const struct hist_row *h = &ds->history[i];
        sqlite3_bind_int64(st, 1, h->user_id);
        sqlite3_bind_int64(st, 2, h->track_id);
        sqlite3_bind_int64(st, 3, h->listen_count);
        sq_int_or_null(st, 4, h->rating, h->rating == 2);
        sqlite3_bind_int64(st, 5, now);
    }
}

static void sq_bind(const struct dataset *ds, enum op op, size_t i,
                    sqlite3_stmt *st)
{
    if (op < N_TABLES) {
        sq_bind_insert(ds, op, i, st);
    } else if (op == OP_GET_USER) {
        sqlite3_bind_int64(st, 1, ds->get_users[i]);
    } else if (op == OP_GET_TRACK) {
        sqlite3_bind_int64(st, 1, ds->get_tracks[i]);
    } else if (op == OP_FIND_USERNAME) {
        sq_text(st, 1, ds->users[ds->find_users[i] - 1].username);
    } else if (op == OP_UPSERT) {
        sqlite3_bind_int64(st, 1, ds->upserts[i].user_id);
        sqlite3_bind_int64(st, 2, ds->upserts[i].track_id);
        sqlite3_bind_int64(st, 3, wall_us());
    } else {
        sqlite3_bind_int64(st, 1, ds->scan_users[i]);
    }
}

/* Reads every column of the current row, as a client would. */
static uint64_t sq_consume_row(sqlite3_stmt *st)
{
    uint64_t h = 0;
    int n = sqlite3_column_count(st);
    for (int k = 0; k < n; k++) {
        switch (sqlite3_column_type(st, k)) {
        case SQLITE_INTEGER:
            h += (uint64_t)sqlite3_column_int64(st, k);
            break;
        case SQLITE_TEXT: {
            const unsigned char *p = sqlite3_column_text(st, k);
            h += (uint64_t)sqlite3_column_bytes(st, k) + (p != NULL ? *p : 0);
            break;
        }
        default:
            break;
        }
    }
    return h;
}

static size_t sq_side_run(void *ctx, enum op op, size_t i)
{
    struct sq_side *s = ctx;
    sqlite3_stmt *st = s->stmt[op];
    sq_bind(s->ds, op, i, st);
    size_t rows = 0;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        rows++;
        s->sink += sq_consume_row(st);
    }
    if (rc != SQLITE_DONE)
        sq_fail(s, op_labels[op]);
    sqlite3_reset(st);
    return op < N_TABLES || op == OP_UPSERT ? 1 : rows;
}

static void sq_side_begin(void *ctx)
{
    sq_exec(ctx, "BEGIN");
}

static void sq_side_commit(void *ctx)
{
    sq_exec(ctx, "COMMIT");
}

static size_t sq_side_mem(void *ctx)
{
    (void)ctx;
    return (size_t)sqlite3_memory_used();
}

/* dbstat: the pages of each table and of its indexes; rows by count(*). */
static void sq_side_table_bytes(void *ctx, double bytes_out[N_TABLES],
                                double index_bytes_out[N_TABLES],
                                uint64_t rows_out[N_TABLES])
{
    struct sq_side *s = ctx;
    for (size_t t = 0; t < N_TABLES; t++) {
        char sql[256];
        snprintf(sql, sizeof(sql), "SELECT count(*) FROM %s", table_names[t]);
        sqlite3_stmt *st;
        if (sqlite3_prepare_v2(s->db, sql, -1, &st, NULL) != SQLITE_OK)
            sq_fail(s, sql);
        if (sqlite3_step(st) == SQLITE_ROW)
            rows_out[t] = (uint64_t)sqlite3_column_int64(st, 0);
        sqlite3_finalize(st);
        snprintf(sql, sizeof(sql),
                 "SELECT sum(d.pgsize), sum(CASE WHEN m.type = 'index' THEN"
                 " d.pgsize ELSE 0 END) FROM dbstat AS d JOIN sqlite_schema"
                 " AS m ON d.name = m.name WHERE m.tbl_name = '%s'",
                 table_names[t]);
        bytes_out[t] = -1; /* dbstat missing from this SQLite build */
        if (sqlite3_prepare_v2(s->db, sql, -1, &st, NULL) != SQLITE_OK)
            continue;
        if (sqlite3_step(st) == SQLITE_ROW) {
            bytes_out[t] = (double)sqlite3_column_int64(st, 0);
            index_bytes_out[t] = (double)sqlite3_column_int64(st, 1);
        }
        sqlite3_finalize(st);
    }
}

static const struct driver sq_driver = {"SQLite",      sq_side_run,
                                        sq_side_begin, sq_side_commit,
                                        sq_side_mem,   sq_side_table_bytes};

static void sq_side_open(struct sq_side *s, const struct dataset *ds)
{
    memset(s, 0, sizeof(*s));
    s->ds = ds;
    if (sqlite3_open(":memory:", &s->db) != SQLITE_OK)
        sq_fail(s, "open :memory:");
    sq_exec(s, sq_schema);
    for (size_t op = 0; op < N_OPS; op++)
        if (sqlite3_prepare_v2(s->db, sq_sql[op], -1, &s->stmt[op], NULL) !=
            SQLITE_OK)
            sq_fail(s, sq_sql[op]);
}

static void sq_side_close(struct sq_side *s)
{
    for (size_t op = 0; op < N_OPS; op++)
        sqlite3_finalize(s->stmt[op]);
    sqlite3_close(s->db);
}

/* ---- timing ------------------------------------------------------------- */

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a;
    uint32_t y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

/* Runs op for i in [0, n), timing the loop and every LAT_EVERY-th op. */
static void run_phase(const struct driver *d, void *ctx, enum op op, size_t n,
                      uint32_t *lat, struct phase *out)
{
    size_t n_lat = 0;
    size_t rows = 0;
    int64_t t0 = now_ns();
    out->start_ns = t0;
    for (size_t i = 0; i < n; i++) {
        if (i % LAT_EVERY != 0) {
            rows += d->run(ctx, op, i);
            continue;
        }
        int64_t a = now_ns();
        rows += d->run(ctx, op, i);
        int64_t ns = now_ns() - a;
        lat[n_lat++] = ns > UINT32_MAX ? UINT32_MAX : (uint32_t)ns;
    }
    out->secs = (double)(now_ns() - t0) / 1e9;
    out->n_ops = n;
    out->n_rows = rows;
    qsort(lat, n_lat, sizeof(*lat), cmp_u32);
    out->p50_us = n_lat > 0 ? lat[n_lat / 2] / 1e3 : 0;
    out->p99_us = n_lat > 0 ? lat[n_lat * 99 / 100] / 1e3 : 0;
}

/* A progress line on stderr; the monotonic times let perf record -k
 * CLOCK_MONOTONIC be sliced per phase with perf report --time. */
static void report_phase(const struct driver *d, enum op op,
                         const struct phase *p)
{
    double start = (double)p->start_ns / 1e9;
    fprintf(stderr, "  %-8s %-58s %10.0f %-6s %6.2f s  [%.6f,%.6f]\n", d->name,
            op_labels[op],
            (double)(op >= OP_SCAN50 ? p->n_rows : p->n_ops) / p->secs,
            op_unit(op), p->secs, start, start + p->secs);
}
static void bench_one(const struct driver *d, void *ctx,
                      const struct config *cfg, uint32_t *lat,
                      struct engine_result *res)
{
    res->ran = true;
    d->begin(ctx);
    for (size_t t = 0; t < N_TABLES; t++) {
        size_t m0 = d->mem_used(ctx);
        run_phase(d, ctx, (enum op)t, cfg->n_rows[t], lat, &res->ph[t]);
        if (t == OP_INSERT_HISTORY) {
            int64_t c0 = now_ns();
            d->commit(ctx);
            res->ph[t].secs += (double)(now_ns() - c0) / 1e9;
        }
        res->heap_bytes[t] = (double)d->mem_used(ctx) - (double)m0;
        report_phase(d, (enum op)t, &res->ph[t]);
    }
    d->table_bytes(ctx, res->own_bytes, res->index_bytes, res->rows);
    for (size_t op = OP_GET_USER; op < N_OPS; op++) {
        size_t n = op >= OP_SCAN50 ? cfg->n_scans : cfg->n_ops;
        if (op == OP_UPSERT)
            d->begin(ctx);
        run_phase(d, ctx, (enum op)op, n, lat, &res->ph[op]);
        if (op == OP_UPSERT) {
            int64_t c0 = now_ns();
            d->commit(ctx);
            res->ph[op].secs += (double)(now_ns() - c0) / 1e9;
            double b[N_TABLES];
            double ib[N_TABLES];
            uint64_t rows[N_TABLES];
            d->table_bytes(ctx, b, ib, rows);
            res->history_after_upserts = rows[OP_INSERT_HISTORY];
        }
        report_phase(d, (enum op)op, &res->ph[op]);
    }
}

static void run_sqlite(const struct dataset *ds, uint32_t *lat,
                       struct engine_result *res)
{
    struct sq_side s;
    sq_side_open(&s, ds);
    bench_one(&sq_driver, &s, ds->cfg, lat, res);
    sq_side_close(&s);
}

static void run_fermata(const struct dataset *ds, uint32_t *lat,
                        struct engine_result *res)
{
    struct fm_side s;
    struct fm_error err = {0};
    memset(&s, 0, sizeof(s));
    s.ds = ds;
    if (fm_engine_new(NULL, &s.e, &err) != FM_OK)
        die(err.msg);
    bench_one(&fm_driver, &s, ds->cfg, lat, res);
    fm_engine_free(s.e);
    fm_reply_fini(&s.reply);
}

/* ---- report ------------------------------------------------------------- */

static double phase_rate(const struct phase *p, enum op op)
{
    return (double)(op >= OP_SCAN50 ? p->n_rows : p->n_ops) / p->secs;
}

/* "548k (1.2k queries/s)" */
static void format_scan(char *out, size_t cap, double rows_per_s,
                        const struct phase *p)
{
    char r[16];
    char qps[16];
    format_rate(r, sizeof(r), rows_per_s);
    format_rate(qps, sizeof(qps), (double)p->n_ops / p->secs);
    snprintf(out, cap, "%s (%s queries/s)", r, qps);
}

static void print_throughput(const struct engine_result *f,
                             const struct engine_result *q)
{
    printf("| figure | fermata | SQLite | fermata/SQLite | target 10x |\n");
    printf("|---|---:|---:|---:|---|\n");
    for (size_t op = 0; op < N_OPS; op++) {
        char a[48] = "-";
        char b[48] = "-";
        char ratio[32] = "-";
        const char *verdict = op >= OP_SCAN50 ? "(none)" : "-";
        double rf = f->ran ? phase_rate(&f->ph[op], (enum op)op) : 0;
        double rq = q->ran ? phase_rate(&q->ph[op], (enum op)op) : 0;
        if (f->ran)
            format_rate(a, sizeof(a), rf);
        if (q->ran)
            format_rate(b, sizeof(b), rq);
        if (op >= OP_SCAN50 && f->ran)
            format_scan(a, sizeof(a), rf, &f->ph[op]);
        if (op >= OP_SCAN50 && q->ran)
            format_scan(b, sizeof(b), rq, &q->ph[op]);
        if (f->ran && q->ran) {
            snprintf(ratio, sizeof(ratio), "%.1fx", rf / rq);
            if (op < OP_SCAN50)
                verdict = rf >= 10 * rq ? "met" : "**missed**";
        }
        printf("| %s (%s) | %s | %s | %s | %s |\n", op_labels[op],
               op_unit((enum op)op), a, b, ratio, verdict);
    }
    printf("\n");
}

static void print_latency(const struct engine_result *f,
                          const struct engine_result *q)
{
    printf("| latency, us (1 op in %d timed) | fermata p50 | fermata p99 |"
           " SQLite p50 | SQLite p99 | p50 SQLite/fermata |\n",
           LAT_EVERY);
    printf("|---|---:|---:|---:|---:|---:|\n");
    for (size_t op = 0; op < N_OPS; op++) {
        const struct phase *a = &f->ph[op];
        const struct phase *b = &q->ph[op];
        printf("| %s | %.2f | %.2f | %.2f | %.2f | ", op_labels[op],
               f->ran ? a->p50_us : 0, f->ran ? a->p99_us : 0,
               q->ran ? b->p50_us : 0, q->ran ? b->p99_us : 0);
        if (f->ran && q->ran && a->p50_us > 0)
            printf("%.1fx |\n", b->p50_us / a->p50_us);
        else
            printf("- |\n");
    }
    printf("\n");
}

/* One "total (rows + indexes)" cell, in bytes per row. */
static void print_split(double total, double index, double n)
{
    printf("%.1f (%.1f + %.1f) | ", total / n, (total - index) / n, index / n);
}

static void print_memory(const struct engine_result *f,
                         const struct engine_result *q)
{
    printf("| bytes per row | rows | fermata accounted (rows + indexes) |"
           " fermata heap | SQLite memory_used |"
           " SQLite dbstat pages (table + indexes) |"
           " fermata/SQLite (accounted/memory_used) | below SQLite |\n");
    printf("|---|---:|---:|---:|---:|---:|---:|---|\n");
    for (size_t t = 0; t < N_TABLES; t++) {
        uint64_t rows = f->ran ? f->rows[t] : q->rows[t];
        double n = rows > 0 ? (double)rows : 1;
        double fa = f->own_bytes[t] / n;
        double qm = q->heap_bytes[t] / n;
        printf("| %s | %llu | ", table_names[t], (unsigned long long)rows);
        print_split(f->own_bytes[t], f->index_bytes[t], n);
        printf("%.1f | %.1f | ", f->heap_bytes[t] / n, qm);
        if (q->ran && q->own_bytes[t] >= 0)
            print_split(q->own_bytes[t], q->index_bytes[t], n);
        else
            printf("- | ");
        if (f->ran && q->ran)
            printf("%.2f | %s |\n", fa / qm, fa < qm ? "met" : "**missed**");
        else
            printf("- | - |\n");
    }
    printf("\n");
}

/* The two engines saw the same data: row counts must agree. */
static void print_checks(const struct engine_result *f,
                         const struct engine_result *q)
{
    if (!f->ran || !q->ran)
        return;
    bool same = f->history_after_upserts == q->history_after_upserts;
    for (size_t op = OP_GET_USER; op < N_OPS; op++)
        if (op != OP_UPSERT && f->ph[op].n_rows != q->ph[op].n_rows)
            same = false;
    for (size_t t = 0; t < N_TABLES; t++)
        if (f->rows[t] != q->rows[t])
            same = false;
    printf("check: rows loaded, rows returned by every read and history rows "
           "after the upserts (%llu) %s between the engines\n\n",
           (unsigned long long)f->history_after_upserts,
           same ? "agree" : "DO NOT AGREE");
}

/* ---- main --------------------------------------------------------------- */

static void config_default(struct config *cfg, bool small)
{
    static const size_t full[N_TABLES] = {1000000, 400000,  800000,
                                          10000,   1000000, 10000000};
    for (size_t t = 0; t < N_TABLES; t++)
        cfg->n_rows[t] = small ? full[t] / 10 : full[t];
    cfg->n_ops = small ? 100000 : 500000;
    cfg->n_scans = small ? 1000 : 4000;
    cfg->seed = 42;
    cfg->data_dir = NULL;
    cfg->run_fermata = true;
    cfg->run_sqlite = true;
    cfg->shuffle_history = true;
}

static void usage(void)
{
    fprintf(stderr,
            "usage: bench_engine [--small] [--users N] [--artists N] "
            "[--albums N] [--genres N] [--tracks N] [--history N] [--ops N] "
            "[--scans N] [--seed N] [--data DIR] [--only fermata|sqlite] "
            "[--order shuffled|user]\n");
    exit(2);
}

static void parse_args(int argc, char **argv, struct config *cfg)
{
    static const char *const size_flags[N_TABLES] = {"--users",  "--artists",
                                                     "--albums", "--genres",
                                                     "--tracks", "--history"};
    bool small = false;
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "--small") == 0)
            small = true;
    config_default(cfg, small);
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i];
        if (strcmp(f, "--small") == 0)
            continue;
        if (i + 1 >= argc)
            usage();
        const char *v = argv[++i];
        size_t n = (size_t)strtoull(v, NULL, 10);
        bool known = false;
        for (size_t t = 0; t < N_TABLES; t++) {
            if (strcmp(f, size_flags[t]) == 0) {
                cfg->n_rows[t] = n;
                known = true;
            }
        }
        if (known)
            continue;
        if (strcmp(f, "--ops") == 0)
            cfg->n_ops = n;
        else if (strcmp(f, "--scans") == 0)
            cfg->n_scans = n;
        else if (strcmp(f, "--seed") == 0)
            cfg->seed = n;
        else if (strcmp(f, "--data") == 0)
            cfg->data_dir = v;
        else if (strcmp(f, "--only") == 0 && strcmp(v, "fermata") == 0)
            cfg->run_sqlite = false;
        else if (strcmp(f, "--only") == 0 && strcmp(v, "sqlite") == 0)
            cfg->run_fermata = false;
        else if (strcmp(f, "--order") == 0)
            cfg->shuffle_history = strcmp(v, "user") != 0;
        else
            usage();
    }
}

static void check_config(const struct config *cfg)
{
    for (size_t t = 0; t < N_TABLES; t++)
        if (cfg->n_rows[t] == 0 || cfg->n_rows[t] > UINT32_MAX)
            die("every table needs between 1 and 2^32-1 rows");
    if ((double)cfg->n_rows[OP_INSERT_HISTORY] >
        (double)cfg->n_rows[OP_INSERT_USER] *
            (double)(cfg->n_rows[OP_INSERT_TRACK] / 2))
        die("--history is more than users x tracks/2");
    if (cfg->n_ops == 0 || cfg->n_scans == 0)
        die("--ops and --scans must be positive");
}

int main(int argc, char **argv)
{
    struct config cfg;
    parse_args(argc, argv, &cfg);
    check_config(&cfg);
    printf("bench_engine: users %zu, artists %zu, albums %zu, genres %zu, "
           "tracks %zu, history %zu (%s), ops %zu, scans %zu, seed %llu; "
           "SQLite %s\n",
           cfg.n_rows[0], cfg.n_rows[1], cfg.n_rows[2], cfg.n_rows[3],
           cfg.n_rows[4], cfg.n_rows[5],
           cfg.shuffle_history ? "shuffled" : "by user", cfg.n_ops, cfg.n_scans,
           (unsigned long long)cfg.seed, sqlite3_libversion());
    struct dataset ds;
    dataset_build(&ds, &cfg);
    fflush(stdout);
    size_t max_n = cfg.n_ops > cfg.n_scans ? cfg.n_ops : cfg.n_scans;
    for (size_t t = 0; t < N_TABLES; t++)
        max_n = cfg.n_rows[t] > max_n ? cfg.n_rows[t] : max_n;
    uint32_t *lat = xmalloc((max_n / LAT_EVERY + 1) * sizeof(*lat));
    struct engine_result fres;
    struct engine_result qres;
    memset(&fres, 0, sizeof(fres));
    memset(&qres, 0, sizeof(qres));
    if (cfg.run_sqlite)
        run_sqlite(&ds, lat, &qres);
    if (cfg.run_fermata)
        run_fermata(&ds, lat, &fres);
    print_throughput(&fres, &qres);
    print_latency(&fres, &qres);
    print_memory(&fres, &qres);
    print_checks(&fres, &qres);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("peak RSS %.2f GiB (data set and one engine at a time)\n",
           (double)ru.ru_maxrss / (1024.0 * 1024.0));
    free(lat);
    dataset_fini(&ds);
    return 0;
}
