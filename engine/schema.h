/*
 * schema.h: tables, columns, constraints and indexes, parsed from DDL text.
 *
 * A schema is immutable once parsed. Every table has the implicit columns
 * id (column 0), created_at and updated_at (the last two columns); the DDL
 * declares the rest. docs/schema.md describes the language.
 */
#ifndef FM_SCHEMA_H
#define FM_SCHEMA_H

#include "engine/base.h"

#define FM_NAME_CAP         64 /* identifier bytes, NUL included */
#define FM_MAX_COLUMNS      64 /* per table, implicit columns included */
#define FM_MAX_TABLES       64
#define FM_MAX_INDEXES      16 /* per table */
#define FM_INDEX_MAX_COLS   8
#define FM_MAX_CHECK_VALUES 64
#define FM_STRING_MAX       65536 /* bytes in one string value (SPEC 1) */

enum fm_type {
    FM_TYPE_INTEGER = 1,
    FM_TYPE_STRING = 2,
    FM_TYPE_DATETIME = 3,
};

enum fm_fk_action {
    FM_FK_RESTRICT = 0,
    FM_FK_CASCADE = 1,
    FM_FK_SET_NULL = 2,
};

/* A literal in the schema (DEFAULT, CHECK ... IN). */
struct fm_literal {
    bool is_null;
    int64_t i; /* integer and datetime */
    char *str; /* string bytes, owned by the schema */
    size_t len;
};

struct fm_column {
    char name[FM_NAME_CAP];
    size_t name_len;
    enum fm_type type;
    bool not_null;
    bool has_default;
    struct fm_literal def;
    int fk_table; /* referenced table, or -1 */
    enum fm_fk_action fk_action;
    struct fm_literal *check; /* CHECK col IN (...) values, owned */
    size_t n_check;
};

struct fm_index_def {
    char name[FM_NAME_CAP * 2];
    size_t n_cols;
    int cols[FM_INDEX_MAX_COLS];
    bool unique;
    bool hash;     /* hash index; otherwise a B+tree */
    bool implicit; /* created for a foreign key */
};

/* A foreign key that points at a table, seen from the referenced side. */
struct fm_fk_ref {
    int table;  /* the referencing (child) table */
    int column; /* its foreign-key column */
    int index;  /* an index of the child whose first column is that column */
};

struct fm_table_def {
    char name[FM_NAME_CAP];
    size_t name_len;
    size_t n_cols;
    struct fm_column cols[FM_MAX_COLUMNS];
    size_t n_indexes;
    struct fm_index_def indexes[FM_MAX_INDEXES];
    size_t n_refs; /* foreign keys of other tables pointing here */
    struct fm_fk_ref refs[FM_MAX_TABLES * 4];
    size_t text_off; /* the CREATE TABLE statement within the schema text */
    size_t text_len;
};

struct fm_schema {
    char *text; /* the DDL, NUL-terminated, owned */
    size_t text_len;
    size_t n_tables;
    struct fm_table_def *tables; /* n_tables, owned */
};

/* Column numbers of the implicit columns. */
#define FM_COL_ID 0
static inline size_t fm_col_created_at(const struct fm_table_def *t)
{
    return t->n_cols - 2;
}
static inline size_t fm_col_updated_at(const struct fm_table_def *t)
{
    return t->n_cols - 1;
}

/* The built-in schema of SPEC section 1. */
extern const char fm_schema_default_text[];

/*
 * Parses DDL text into *out. FM_ERR_SYNTAX with "schema line L column C:
 * ..." in err for any error; FM_ERR_NOMEM. On failure *out is untouched.
 */
fm_status fm_schema_parse(const char *text, size_t len, struct fm_schema *out,
                          struct fm_error *err);

/* Releases what fm_schema_parse allocated; safe on a zero-filled schema. */
void fm_schema_fini(struct fm_schema *s);

/* Table number by name, or -1. */
int fm_schema_find_table(const struct fm_schema *s, const uint8_t *name,
                         size_t len);

/* Column number by name within a table, or -1. */
int fm_schema_find_column(const struct fm_table_def *t, const uint8_t *name,
                          size_t len);

/* "integer", "string" or "datetime". */
const char *fm_type_name(enum fm_type type);

#endif /* FM_SCHEMA_H */
