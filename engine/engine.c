/*
 * engine.c: the engine object, statement atomicity and MULTI/EXEC.
 *
 * An engine owns a parsed schema and one struct fm_table per table. Every
 * command runs inside a transaction: fm_engine_exec opens one, runs the
 * command, and commits it or rolls it back to its start, so a failed write
 * changes nothing even when it had already inserted rows or cascaded
 * through three tables (SPEC section 2). fm_engine_exec_multi runs a batch
 * in one transaction and rolls all of it back if any command fails, which
 * is stronger than Redis' EXEC.
 *
 * The reply of a failed command is only its error: whatever the command had
 * appended before it failed is cut off, so a reply never mixes a partial
 * result with an error.
 *
 * The converse does not hold: a reply that fails (out of memory, or past
 * the byte limit its caller gave it, fm_reply.limit) does not fail the
 * command, since a reply reports a change and does not decide it. A
 * MULTI/EXEC batch whose reply passes its limit halfway still runs every
 * command, and commits all of them or, if one fails, none, exactly as it
 * would have; its later FINDs only skip their scans. The caller learns
 * from the reply that the answer was lost (the server closes the client,
 * as for any output over the limit, and the client, as after any lost
 * connection, does not know the outcome). Rolling the batch back instead
 * would make whether data is written depend on how much output a client
 * had left unread.
 */
#include "engine/engine_int.h"

#include <stdio.h>

const char *fm_default_schema(void)
{
    return fm_schema_default_text;
}

fm_status fm_engine_new(const struct fm_engine_options *opts,
                        struct fm_engine **out, struct fm_error *err)
{
    const char *text = opts != NULL ? opts->schema_text : NULL;
    size_t len = text != NULL ? opts->schema_len : 0;
    if (text == NULL) {
        text = fm_schema_default_text;
        len = strlen(text);
    }
    struct fm_engine *e = fm_calloc(1, sizeof(*e));
    if (e == NULL)
        return fm_error_set(err, FM_ERR_NOMEM, "out of memory");
    e->child_pipe = -1;
    fm_status st = fm_schema_parse(text, len, &e->schema, err);
    if (st != FM_OK)
        goto fail;
    e->tables = fm_calloc(e->schema.n_tables, sizeof(struct fm_table));
    if (e->tables == NULL ||
        fm_btree_pool_fill(&e->undo_pool, FM_UNDO_POOL_NODES) != FM_OK) {
        st = fm_error_set(err, FM_ERR_NOMEM, "out of memory");
        goto fail;
    }
    for (size_t i = 0; i < e->schema.n_tables; i++) {
        if ((st = fm_table_init(&e->tables[i], e, i)) != FM_OK) {
            fm_error_set(err, st, "out of memory creating table %s",
                         e->schema.tables[i].name);
            goto fail;
        }
    }
    if (opts != NULL) {
        e->log = opts->log;
        e->log_ctx = opts->log_ctx;
    }
    if (opts != NULL && opts->dir != NULL &&
        (st = fm_persist_open(e, opts, err)) != FM_OK)
        goto fail;
    *out = e;
    return FM_OK;
fail:
    fm_engine_free(e);
    return st;
}

void fm_engine_free(struct fm_engine *e)
{
    if (e == NULL)
        return;
    if (e->in_txn) {
        fm_txn_rollback_to(e, e->txn_start);
        e->in_txn = false;
    }
    fm_persist_close(e);
    /* Unflushed writes are dropped with the memory, durable or not. */
    fm_txn_release_group(e);
    for (size_t i = 0; e->tables != NULL && i < e->schema.n_tables; i++)
        fm_table_fini(&e->tables[i]);
    fm_free(e->tables);
    fm_btree_pool_fini(&e->undo_pool);
    fm_schema_fini(&e->schema);
    fm_free(e->undo);
    fm_buf_fini(&e->key);
    fm_buf_fini(&e->key2);
    fm_buf_fini(&e->rec);
    fm_buf_fini(&e->ids);
    fm_buf_fini(&e->cascade);
    fm_buf_fini(&e->sort);
    fm_buf_fini(&e->strs);
    fm_buf_fini(&e->redo);
    fm_free(e);
}

/* Runs one command inside the open transaction; on failure undoes it and
 * leaves only its error in the reply. */
static fm_status exec_in_txn(struct fm_engine *e, size_t argc,
                             const uint8_t *const *argv, const size_t *len,
                             struct fm_reply *reply)
{
    size_t savepoint = e->n_undo;
    size_t reply_len = reply->buf.len;
    fm_status st = fm_query_exec(e, argc, argv, len, reply);
    if (st == FM_OK)
        return FM_OK;
    fm_txn_rollback_to(e, savepoint);
    fm_reply_truncate(reply, reply_len);
    fm_reply_error(reply, st,
                   e->err.st == st ? e->err.msg : fm_status_message(st));
    return st;
}

/* Replaces whatever the reply holds since mark with one error. */
static void reply_error_at(struct fm_engine *e, struct fm_reply *reply,
                           size_t len, fm_status st)
{
    fm_reply_truncate(reply, len);
    fm_reply_error(reply, st,
                   e->err.st == st ? e->err.msg : fm_status_message(st));
}

/* FM_ERR_READONLY for a write once the WAL has failed (SPEC section 4). */
static fm_status refuse_write(struct fm_engine *e, const uint8_t *name,
                              size_t len)
{
    if ((!e->readonly && !e->undo_pool_low) ||
        !fm_engine_command_is_write(name, len))
        return FM_OK;
    if (e->readonly)
        return fm_error_set(&e->err, FM_ERR_READONLY,
                            "writes are refused because the write-ahead log "
                            "cannot be written: %s",
                            e->readonly_reason);
    if (fm_txn_undo_pool_ready(e))
        return FM_OK;
    return fm_error_set(&e->err, FM_ERR_NOMEM,
                        "out of memory: writes are refused until the memory "
                        "that keeps a rollback from failing can be reserved "
                        "again");
}

fm_status fm_engine_exec(struct fm_engine *e, size_t argc,
                         const uint8_t *const *argv, const size_t *argv_len,
                         struct fm_reply *reply)
{
    size_t reply_len = reply->buf.len;
    fm_error_clear(&e->err);
    e->last_wrote = false;
    fm_status st = argc > 0 ? refuse_write(e, argv[0], argv_len[0]) : FM_OK;
    if (st != FM_OK) {
        reply_error_at(e, reply, reply_len, st);
        return st;
    }
    fm_txn_begin(e);
    st = exec_in_txn(e, argc, argv, argv_len, reply);
    fm_status cst = fm_txn_commit(e);
    if (st == FM_OK && cst != FM_OK) {
        reply_error_at(e, reply, reply_len, cst);
        return cst;
    }
    return st;
}

fm_status fm_engine_exec_multi(struct fm_engine *e, size_t n_cmds,
                               const struct fm_command *cmds,
                               struct fm_reply *reply)
{
    size_t reply_len = reply->buf.len;
    fm_error_clear(&e->err);
    e->last_wrote = false;
    for (size_t i = 0; i < n_cmds; i++) {
        fm_status st = cmds[i].argc > 0 ? refuse_write(e, cmds[i].argv[0],
                                                       cmds[i].argv_len[0])
                                        : FM_OK;
        if (st != FM_OK) {
            reply_error_at(e, reply, reply_len, st);
            return st;
        }
    }
    fm_txn_begin(e);
    fm_reply_array(reply, n_cmds);
    for (size_t i = 0; i < n_cmds; i++) {
        fm_status st = fm_query_exec(e, cmds[i].argc, cmds[i].argv,
                                     cmds[i].argv_len, reply);
        if (st == FM_OK)
            continue;
        fm_txn_rollback_to(e, e->txn_start);
        fm_status cst = fm_txn_commit(e);
        FM_ASSERT(cst == FM_OK); /* nothing left to log */
        fm_reply_truncate(reply, reply_len);
        char msg[FM_ERROR_MSG_CAP + 96];
        snprintf(msg, sizeof(msg),
                 "transaction discarded: command %zu failed: %s %s", i + 1,
                 fm_status_code(st),
                 e->err.st == st ? e->err.msg : fm_status_message(st));
        fm_reply_error(reply, FM_ERR_EXECABORT, msg);
        return st;
    }
    fm_status cst = fm_txn_commit(e);
    if (cst != FM_OK) {
        reply_error_at(e, reply, reply_len, cst);
        return cst;
    }
    return FM_OK;
}

bool fm_engine_last_exec_wrote(const struct fm_engine *e)
{
    return e->last_wrote;
}

uint64_t fm_engine_row_count(const struct fm_engine *e)
{
    uint64_t n = 0;
    for (size_t i = 0; i < e->schema.n_tables; i++)
        n += e->tables[i].n_rows;
    return n;
}

size_t fm_engine_table_count(const struct fm_engine *e)
{
    return e->schema.n_tables;
}

void fm_engine_table_stats(const struct fm_engine *e, size_t i,
                           struct fm_table_stats *out)
{
    FM_ASSERT(i < e->schema.n_tables);
    const struct fm_table *t = &e->tables[i];
    out->name = t->def->name;
    out->n_rows = t->n_rows;
    out->next_id = t->next_id;
    out->row_bytes = fm_table_row_bytes(t);
    out->index_bytes = fm_table_index_bytes(t);
    out->n_indexes = t->n_indexes;
}

size_t fm_engine_memory_bytes(const struct fm_engine *e)
{
    size_t n = sizeof(*e) + e->undo_cap * sizeof(struct fm_undo) + e->key.cap +
               e->key2.cap + e->rec.cap + e->ids.cap + e->cascade.cap +
               e->sort.cap + e->strs.cap + fm_btree_pool_bytes(&e->undo_pool);
    for (size_t i = 0; i < e->schema.n_tables; i++)
        n += fm_table_row_bytes(&e->tables[i]) +
             fm_table_index_bytes(&e->tables[i]);
    return n;
}

const char *fm_engine_schema_text(const struct fm_engine *e, size_t *len_out)
{
    *len_out = e->schema.text_len;
    return e->schema.text;
}
