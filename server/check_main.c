/*
 * check_main.c: fermata-check, the offline verifier of a data directory
 * (SPEC sections 4 and 6).
 *
 *   fermata-check [--fix] [--deep] [--schema FILE] DIR
 *
 * Without options it reads every snapshot and WAL segment, verifies every
 * checksum, the LSN continuity and the schema, prints LSN ranges and the
 * row counts of each snapshot, and changes nothing. --fix cuts a torn WAL
 * tail (as a server start would). --deep then loads the directory the way
 * the server does (snapshot, then WAL) and verifies every unique, not-null,
 * check and foreign-key invariant and every index (fm_engine_check); it
 * takes the directory lock, so it refuses to run beside a live server.
 *
 * Exit status: 0 when everything is sound, 1 when something is damaged or
 * an invariant is broken, 2 for usage errors.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/fermata.h"

static void print_item(void *ctx, const struct fm_check_item *it)
{
    (void)ctx;
    if (it->is_snapshot) {
        printf("snapshot %s: lsn %" PRIu64 ", %" PRIu64 " bytes (%" PRIu64
               " uncompressed), %s\n",
               it->file, it->first_lsn, it->size_bytes, it->raw_bytes,
               it->st == FM_OK ? "ok" : "DAMAGED");
        for (size_t i = 0; i < it->n_tables; i++)
            printf("  %-20s %" PRIu64 " rows\n", it->table_names[i],
                   it->table_rows[i]);
    } else {
        printf("segment %s: lsn %" PRIu64 "..%" PRIu64 ", %" PRIu64
               " records, %" PRIu64 " bytes, %s\n",
               it->file, it->first_lsn, it->last_lsn, it->n_records,
               it->size_bytes, it->st == FM_OK ? "ok" : "DAMAGED");
        if (it->torn_bytes > 0 && it->torn_records > 0)
            printf("  torn group of %" PRIu64 " bytes, %" PRIu64
                   " intact records after the damage written after the last "
                   "fdatasync (--fix cuts it)\n",
                   it->torn_bytes, it->torn_records);
        else if (it->torn_bytes > 0)
            printf("  torn tail of %" PRIu64 " bytes (--fix cuts it)\n",
                   it->torn_bytes);
        if (it->zero_bytes > 0)
            printf("  %" PRIu64 " bytes of records, then %" PRIu64
                   " bytes preallocated (zeros, fsync always)\n",
                   it->size_bytes - it->zero_bytes, it->zero_bytes);
    }
    if (it->st != FM_OK)
        printf("  %s: %s (first bad byte at offset %" PRId64 ")\n",
               fm_status_code(it->st), it->msg, it->bad_offset);
}

static char *read_file(const char *path, size_t *len_out)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return NULL;
    char *buf = NULL;
    size_t len = 0;
    size_t cap = 0;
    for (;;) {
        if (len == cap) {
            cap = cap ? cap * 2 : 4096;
            char *nb = realloc(buf, cap);
            if (nb == NULL)
                break;
            buf = nb;
        }
        size_t n = fread(buf + len, 1, cap - len, f);
        if (n == 0)
            break;
        len += n;
    }
    fclose(f);
    *len_out = len;
    return buf;
}

static void log_line(void *ctx, enum fm_log_level level, const char *msg)
{
    (void)ctx;
    if (level >= FM_LOG_NOTICE)
        printf("  %s\n", msg);
}

static int deep_check(const char *dir, const char *schema, size_t len)
{
    struct fm_engine_options o = {0};
    struct fm_engine *e = NULL;
    struct fm_error err = {0};
    o.dir = dir;
    o.schema_text = schema;
    o.schema_len = len;
    o.log = log_line;
    printf("deep check: loading %s\n", dir);
    fm_status st = fm_engine_new(&o, &e, &err);
    if (st != FM_OK) {
        printf("deep check: cannot load: %s %s\n", fm_status_code(st), err.msg);
        return 1;
    }
    for (size_t i = 0; i < fm_engine_table_count(e); i++) {
        struct fm_table_stats s;
        fm_engine_table_stats(e, i, &s);
        printf("  %-20s %" PRIu64 " rows, next id %" PRIu64 "\n", s.name,
               s.n_rows, s.next_id);
    }
    st = fm_engine_check(e, &err);
    if (st != FM_OK)
        printf("deep check: FAILED: %s\n", err.msg);
    else
        printf("deep check: every row, index, unique and foreign key is "
               "consistent\n");
    fm_engine_free(e);
    return st == FM_OK ? 0 : 1;
}

int main(int argc, char **argv)
{
    bool fix = false;
    bool deep = false;
    const char *dir = NULL;
    char *schema = NULL;
    size_t schema_len = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--fix") == 0) {
            fix = true;
        } else if (strcmp(argv[i], "--deep") == 0) {
            deep = true;
        } else if (strcmp(argv[i], "--schema") == 0 && i + 1 < argc) {
            schema = read_file(argv[++i], &schema_len);
            if (schema == NULL) {
                fprintf(stderr, "fermata-check: cannot read %s: %s\n", argv[i],
                        strerror(errno));
                return 2;
            }
        } else if (argv[i][0] != '-' && dir == NULL) {
            dir = argv[i];
        } else {
            dir = NULL;
            break;
        }
    }
    if (dir == NULL) {
        fprintf(stderr,
                "usage: fermata-check [--fix] [--deep] [--schema FILE] DIR\n");
        free(schema);
        return 2;
    }
    struct fm_error err = {0};
    fm_status st =
        fm_check_dir(dir, schema, schema_len, fix, print_item, NULL, &err);
    int rc = 0;
    if (st != FM_OK) {
        printf("check: %s %s\n", fm_status_code(st), err.msg);
        rc = 1;
    } else {
        printf("check: every snapshot and WAL segment is sound\n");
    }
    if (deep && deep_check(dir, schema, schema_len) != 0)
        rc = 1;
    free(schema);
    return rc;
}
