/*
 * config.h: the server's parameters (SPEC section 6). Each has one name,
 * used alike as a command-line flag ("--port 7878"), a config-file key
 * ("port 7878") and a CONFIG GET/SET name.
 */
#ifndef FM_SERVER_CONFIG_H
#define FM_SERVER_CONFIG_H

#include "engine/base.h"

/* The values. Strings are owned by the config (NUL-terminated, never NULL
 * after fm_config_init). Sizes are bytes, durations seconds. */
struct fm_config {
    int64_t port;      /* 0: any free port, read back with fm_server_port */
    char *bind;        /* address to listen on */
    char *dir;         /* data directory; "" runs without a WAL */
    char *requirepass; /* "" for none */
    bool protected_mode;
    int64_t maxclients;
    int64_t maxmemory;         /* bytes; 0 for no limit */
    int64_t loglevel;          /* enum fm_log_level */
    char *logfile;             /* "" for standard error */
    int64_t fsync;             /* index into "always", "everysec", "no" */
    int64_t snapshot_interval; /* seconds */
    int64_t snapshot_wal_mb;
    int64_t snapshot_keep;
    bool force_recovery;
    char *schema; /* DDL file; "" for the built-in schema */
    int64_t max_inline_len;
    int64_t max_bulk_len;
    int64_t max_args;
    int64_t client_query_buffer_limit;  /* bytes of unparsed input */
    int64_t client_output_buffer_limit; /* bytes of unsent output */
    int64_t max_multi_commands;         /* commands queued by one MULTI */
    int64_t timeout; /* idle seconds before a client is closed; 0 never */
    int64_t tcp_backlog;
    char *config_file; /* the file loaded by --config, "" for none */
    /* Not a parameter: tests only, handed to the engine as
     * fm_engine_options.wal_io to inject WAL write failures. */
    const void *wal_io;
};

/* Fills c with the defaults. FM_ERR_NOMEM (c is then fini-safe). */
fm_status fm_config_init(struct fm_config *c);

/* Releases the strings; safe on a zero-filled config. */
void fm_config_fini(struct fm_config *c);

/* The number of parameters, and the name of parameter i (lowercase). */
size_t fm_config_count(void);
const char *fm_config_name(size_t i);

/* The index of the parameter called name (case-insensitive), or false. */
bool fm_config_find(const char *name, size_t name_len, size_t *index_out);

/* True when parameter i can be changed while the server runs. */
bool fm_config_is_mutable(size_t i);

/*
 * Sets parameter i from text. running: the server is up, so immutable
 * parameters are refused. FM_ERR_SYNTAX (bad value, with the accepted
 * values in err), FM_ERR_STATE (immutable or read-only parameter),
 * FM_ERR_NOMEM. c is unchanged on failure.
 */
fm_status fm_config_set(struct fm_config *c, size_t i, const char *value,
                        bool running, struct fm_error *err);

/* As fm_config_set, by name; FM_ERR_NOTFOUND for an unknown name. */
fm_status fm_config_set_by_name(struct fm_config *c, const char *name,
                                const char *value, bool running,
                                struct fm_error *err);

/* Appends the value of parameter i as CONFIG GET shows it. FM_ERR_NOMEM. */
fm_status fm_config_format(const struct fm_config *c, size_t i,
                           struct fm_buf *out);

/*
 * Reads a redis.conf-style file: one "name value" per line, '#' comments,
 * values quoted as in inline requests. Errors name the file and line.
 * FM_ERR_IO, FM_ERR_SYNTAX, FM_ERR_NOTFOUND, FM_ERR_NOMEM.
 */
fm_status fm_config_load_file(struct fm_config *c, const char *path,
                              struct fm_error *err);

/*
 * Applies command-line flags: "--config FILE" first, wherever it stands,
 * then every "--name value" in order (a boolean flag may omit its value).
 * argv[0] is the program name and is skipped.
 */
fm_status fm_config_parse_args(struct fm_config *c, int argc, char *const *argv,
                               struct fm_error *err);

/* Glob match (*, ?, [abc], [a-z], [^a], \x), ASCII case-insensitive, as in
 * CONFIG GET and Redis' stringmatch. */
bool fm_config_glob_match(const char *pattern, size_t pattern_len,
                          const char *s, size_t s_len);

#endif /* FM_SERVER_CONFIG_H */
