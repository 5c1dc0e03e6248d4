/*
 * fuzz_schema.c: libFuzzer target for the DDL parser of engine/schema.h.
 *
 * The input is schema text, passed with its exact length and no NUL after
 * it, so that reading past the end is caught. A schema the parser accepts
 * must describe a usable database: its numbers (columns, indexes, foreign
 * keys, references) all point where they should, every name finds itself,
 * and an engine built on it takes an INSERT, UPDATE and DELETE on every
 * table with its consistency check passing after each.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/fermata.h"
#include "engine/schema.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_table(const struct fm_schema *s, size_t ti)
{
    const struct fm_table_def *t = &s->tables[ti];
    FM_ASSERT(t->name_len > 0 && t->name_len < FM_NAME_CAP);
    FM_ASSERT(strlen(t->name) == t->name_len);
    FM_ASSERT(fm_schema_find_table(s, (const uint8_t *)t->name, t->name_len) ==
              (int)ti);
    FM_ASSERT(t->n_cols >= 3 && t->n_cols <= FM_MAX_COLUMNS);
    FM_ASSERT(t->cols[FM_COL_ID].type == FM_TYPE_INTEGER);
    FM_ASSERT(t->cols[fm_col_created_at(t)].type == FM_TYPE_DATETIME);
    FM_ASSERT(t->cols[fm_col_updated_at(t)].type == FM_TYPE_DATETIME);
    FM_ASSERT(t->text_off <= s->text_len &&
              t->text_len <= s->text_len - t->text_off);
    for (size_t c = 0; c < t->n_cols; c++) {
        const struct fm_column *col = &t->cols[c];
        FM_ASSERT(strlen(col->name) == col->name_len);
        FM_ASSERT(fm_schema_find_column(t, (const uint8_t *)col->name,
                                        col->name_len) == (int)c);
        FM_ASSERT(col->fk_table >= -1 && col->fk_table < (int)s->n_tables);
        FM_ASSERT(col->n_check <= FM_MAX_CHECK_VALUES);
        if (col->fk_table >= 0)
            FM_ASSERT(col->type == FM_TYPE_INTEGER);
    }
    FM_ASSERT(t->n_indexes <= FM_MAX_INDEXES);
    for (size_t i = 0; i < t->n_indexes; i++) {
        const struct fm_index_def *ix = &t->indexes[i];
        FM_ASSERT(ix->n_cols >= 1 && ix->n_cols <= FM_INDEX_MAX_COLS);
        for (size_t k = 0; k < ix->n_cols; k++)
            FM_ASSERT(ix->cols[k] > 0 && ix->cols[k] < (int)t->n_cols);
    }
    FM_ASSERT(t->n_refs <= FM_ARRAY_LEN(t->refs));
    for (size_t r = 0; r < t->n_refs; r++) {
        const struct fm_fk_ref *ref = &t->refs[r];
        FM_ASSERT(ref->table >= 0 && ref->table < (int)s->n_tables);
        const struct fm_table_def *child = &s->tables[ref->table];
        FM_ASSERT(ref->column > 0 && ref->column < (int)child->n_cols);
        FM_ASSERT(child->cols[ref->column].fk_table == (int)ti);
        FM_ASSERT(ref->index >= 0 && ref->index < (int)child->n_indexes);
        FM_ASSERT(child->indexes[ref->index].cols[0] == ref->column);
    }
}

/* Runs one command given as words; returns its status. */
static fm_status run(struct fm_engine *e, struct fm_reply *reply,
                     const char *const *words, size_t n)
{
    const uint8_t *argv[2 * FM_MAX_COLUMNS + 4];
    size_t lens[2 * FM_MAX_COLUMNS + 4];
    FM_ASSERT(n <= FM_ARRAY_LEN(argv));
    for (size_t i = 0; i < n; i++) {
        argv[i] = (const uint8_t *)words[i];
        lens[i] = strlen(words[i]);
    }
    fm_reply_reset(reply);
    fm_status st = fm_engine_exec(e, n, argv, lens, reply);
    struct fm_error err = {0};
    if (fm_engine_check(e, &err) != FM_OK) {
        fprintf(stderr, "check failed after %s %s: %s\n", words[0], words[1],
                err.msg);
        abort();
    }
    return st;
}

/* A value of the column's type that passes its CHECK if it has one. */
static const char *value_for(const struct fm_column *col, char *buf, size_t cap)
{
    if (col->n_check > 0 && !col->check[0].is_null) {
        if (col->type == FM_TYPE_INTEGER) {
            snprintf(buf, cap, "%lld", (long long)col->check[0].i);
            return buf;
        }
        if (col->type == FM_TYPE_STRING && col->check[0].len < cap &&
            memchr(col->check[0].str, '\0', col->check[0].len) == NULL) {
            memcpy(buf, col->check[0].str, col->check[0].len);
            buf[col->check[0].len] = '\0';
            return buf;
        }
    }
    switch (col->type) {
    case FM_TYPE_INTEGER:
        return "1";
    case FM_TYPE_STRING:
        return "x";
    case FM_TYPE_DATETIME:
        return "2026-01-01T00:00:00Z";
    }
    return "1";
}

/* INSERT, UPDATE and DELETE on every table of the schema. */
static void exercise(const char *text, size_t len, const struct fm_schema *s)
{
    struct fm_engine_options opts = {0};
    opts.schema_text = text;
    opts.schema_len = len;
    struct fm_engine *e = NULL;
    struct fm_error err = {0};
    if (fm_engine_new(&opts, &e, &err) != FM_OK) {
        fprintf(stderr, "a schema that parses makes no engine: %s\n", err.msg);
        abort();
    }
    struct fm_reply reply = {0};
    static char vals[FM_MAX_COLUMNS][80];
    const char *words[2 * FM_MAX_COLUMNS + 4];
    /* Twice, so that foreign keys to tables declared later find rows. */
    for (int pass = 0; pass < 2; pass++) {
        for (size_t ti = 0; ti < s->n_tables; ti++) {
            const struct fm_table_def *t = &s->tables[ti];
            size_t n = 0;
            words[n++] = "INSERT";
            words[n++] = t->name;
            for (size_t c = 1; c + 2 < t->n_cols; c++) {
                words[n++] = t->cols[c].name;
                words[n++] = value_for(&t->cols[c], vals[c], sizeof(vals[c]));
            }
            run(e, &reply, words, n);
        }
    }
    for (size_t ti = 0; ti < s->n_tables; ti++) {
        const struct fm_table_def *t = &s->tables[ti];
        size_t n = 0;
        words[n++] = "UPDATE";
        words[n++] = t->name;
        words[n++] = "1";
        for (size_t c = 1; c + 2 < t->n_cols; c++) {
            words[n++] = t->cols[c].name;
            words[n++] = value_for(&t->cols[c], vals[c], sizeof(vals[c]));
        }
        run(e, &reply, words, n);
        const char *find[] = {"FIND", t->name};
        run(e, &reply, find, 2);
    }
    for (size_t ti = 0; ti < s->n_tables; ti++) {
        const char *del[] = {"DELETE", s->tables[ti].name, "1"};
        run(e, &reply, del, 3);
    }
    fm_reply_fini(&reply);
    fm_engine_free(e);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = malloc(size > 0 ? size : 1);
    FM_ASSERT(text != NULL);
    if (size > 0)
        memcpy(text, data, size);
    struct fm_schema s;
    memset(&s, 0, sizeof(s));
    struct fm_error err = {0};
    fm_status st = fm_schema_parse(text, size, &s, &err);
    if (st != FM_OK) {
        FM_ASSERT(err.st == st && err.msg[0] != '\0');
        free(text);
        return 0;
    }
    FM_ASSERT(s.n_tables <= FM_MAX_TABLES);
    FM_ASSERT(s.text_len == size && memcmp(s.text, text, size) == 0);
    for (size_t ti = 0; ti < s.n_tables; ti++)
        check_table(&s, ti);
    exercise(text, size, &s);
    fm_schema_fini(&s);
    free(text);
    return 0;
}
