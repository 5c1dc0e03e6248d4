/*
 * server_int.h: the structs shared by the .c files of server/ (the server,
 * its clients, the command table). No other folder includes this.
 */
#ifndef FM_SERVER_SERVER_INT_H
#define FM_SERVER_SERVER_INT_H

#include "engine/base.h"
#include "engine/fermata.h"
#include "server/ae.h"
#include "server/config.h"
#include "server/log.h"
#include "server/resp.h"
#include "server/server.h"

/* Bytes read from a socket at a time. */
#define FM_READ_CHUNK (64 * 1024)

/* Fds kept free beyond maxclients: listener, pipes, signalfd, the WAL. */
#define FM_RESERVED_FDS 32

/* Samples averaged for instantaneous_ops_per_sec, one per cron tick. */
#define FM_OPS_SAMPLES 16

/* The cron runs this often. */
#define FM_CRON_MS 100

/* A client that has been idle this long gives its buffers back. */
#define FM_IDLE_SHRINK_US (2 * 1000 * 1000)

enum fm_client_flag {
    FM_CLIENT_AUTHED = 1 << 0,        /* AUTH passed, or none set at accept */
    FM_CLIENT_MULTI = 1 << 1,         /* between MULTI and EXEC/DISCARD */
    FM_CLIENT_DIRTY_EXEC = 1 << 2,    /* a command failed to queue */
    FM_CLIENT_CLOSE_AFTER = 1 << 3,   /* close once the output is written */
    FM_CLIENT_CLOSE_ASAP = 1 << 4,    /* close without writing more */
    FM_CLIENT_PENDING = 1 << 5,       /* on the server's pending list */
    FM_CLIENT_WRITE_HANDLER = 1 << 6, /* watched for writability */
};

/* One command queued by MULTI: a single allocation holding the argument
 * pointers, their lengths and the argument bytes. */
struct fm_queued_cmd {
    size_t argc;
    const uint8_t **argv;
    size_t *argv_len;
    size_t bytes; /* size of the allocation (argv points to its start) */
};

struct fm_client {
    struct fm_server *srv;
    int fd;
    uint64_t id;
    int flags;        /* enum fm_client_flag */
    char addr[64];    /* peer "ip:port" */
    char laddr[64];   /* local "ip:port" */
    char *name;       /* CLIENT SETNAME, or NULL */
    char *lib_name;   /* CLIENT SETINFO lib-name, or NULL */
    char *lib_ver;    /* CLIENT SETINFO lib-ver, or NULL */
    struct fm_buf in; /* bytes of a partial request, from its start */
    struct fm_resp_parser parser;
    struct fm_buf out;           /* encoded replies */
    size_t out_sent;             /* bytes of out already written */
    size_t out_ready;            /* bytes of out released for writing */
    struct fm_queued_cmd *multi; /* commands queued by MULTI */
    size_t n_multi;
    size_t multi_cap;
    size_t multi_bytes;   /* bytes held by the queued commands */
    int64_t created_us;   /* monotonic */
    int64_t last_io_us;   /* monotonic, last read or write */
    const char *last_cmd; /* name of the last command, for CLIENT LIST */
    /* Group commit (server.c): once any client has written in the current
     * loop turn, every command this client runs until the turn's WAL flush
     * may have seen those writes. turn_mark is where the reply of the first
     * such command starts in out and turn_n_replies counts the replies
     * from there, so that they can all be replaced by -READONLY when the
     * flush fails and the writes are rolled back. */
    bool turn_marked;
    bool turn_began_multi; /* MULTI succeeded after turn_mark */
    size_t turn_mark;
    size_t turn_n_replies;
    struct fm_client *prev; /* all clients */
    struct fm_client *next;
    struct fm_client *pending_prev; /* clients with output or to close */
    struct fm_client *pending_next;
};

/* A command's arguments as the parser or the MULTI queue hands them. */
struct fm_args {
    size_t argc;
    const uint8_t *const *argv;
    const size_t *argv_len;
};

typedef void (*fm_command_fn)(struct fm_client *c, const struct fm_args *a,
                              struct fm_reply *r);

enum fm_command_flag {
    FM_CMD_NOAUTH = 1 << 0,  /* allowed before AUTH */
    FM_CMD_NOQUEUE = 1 << 1, /* runs at once even inside MULTI */
    FM_CMD_ENGINE = 1 << 2,  /* executed by the engine */
};

struct fm_command_def {
    const char *name;    /* upper case */
    fm_command_fn fn;    /* NULL for engine commands */
    int arity;           /* n: exactly n arguments; -n: at least n */
    int flags;           /* enum fm_command_flag */
    const char *usage;   /* "PING [message]" */
    const char *summary; /* one line, for HELP and COMMAND DOCS */
};

/* Open-addressing hash of the command table by name: slot holds a table
 * index plus one (0 = empty), found by hashing the length and the first
 * and last letters, case folded. */
#define FM_COMMAND_INDEX_SLOTS 128

struct fm_command_index {
    uint8_t slot[FM_COMMAND_INDEX_SLOTS];
};

struct fm_command_stat {
    uint64_t calls;
    uint64_t usec;
    uint64_t failed;   /* replied with an error */
    uint64_t rejected; /* refused before running (arity, auth, OOM) */
};

struct fm_server {
    struct fm_config cfg;
    struct fm_log log;
    struct fm_engine *engine;
    struct fm_ae *ae;
    int listen_fd;
    int port;
    int wake_fd[2];            /* fm_server_request_stop writes to [1] */
    int signal_fd;             /* -1 unless fm_server_watch_signals */
    struct fm_client *clients; /* all clients, newest first */
    size_t n_clients;
    size_t max_clients_at_start; /* the event loop was sized for this */
    uint64_t next_client_id;
    struct fm_client *pending; /* clients with output to write or to close */
    struct fm_buf shared_in;   /* read buffer for clients with no partial */
    struct fm_reply reply;     /* the reply of the command being run */
    struct fm_buf scratch;     /* INFO and other text being built */
    int64_t start_us;          /* monotonic */
    int64_t start_wall_us;
    /* Statistics (INFO stats). */
    uint64_t total_connections;
    uint64_t rejected_connections;
    uint64_t total_commands;
    uint64_t total_errors;
    uint64_t net_input_bytes;
    uint64_t net_output_bytes;
    uint64_t output_limit_disconnections;
    uint64_t query_limit_disconnections;
    struct fm_command_stat *cmd_stats; /* one per table entry, plus one */
    uint64_t ops_samples[FM_OPS_SAMPLES];
    size_t ops_sample_idx;
    int64_t ops_last_us;
    uint64_t ops_last_commands;
    int64_t last_shrink_us;
    size_t client_mem_bytes; /* recomputed by the cron */
    bool shutdown_asap;
    bool shutdown_nosave;
    bool accept_paused; /* out of fds: the cron watches the listener again */
    /* A command changed data in this loop turn and the WAL has not been
     * flushed since: every command run from now until the flush gets its
     * client marked (struct fm_client, turn_mark). */
    bool turn_wrote;
    /* Monotonic time at which the command about to run is taken to start:
     * the time of the read that brought it, or the end of the command
     * before it in the same batch (commandstats usec). */
    int64_t cmd_clock_us;
    /* fm_command_lookup's hash of the command table, built at start-up. */
    struct fm_command_index cmd_index;
};

/* ---- network.c -------------------------------------------------------- */

/* Accepts connections on the listening socket (an fm_ae_file_fn). */
void fm_server_accept(struct fm_ae *ae, int fd, void *data, int mask);

/* Writes what can be written of every pending client and closes those
 * marked for closing; the group-commit point (SPEC section 4). */
void fm_server_flush_clients(struct fm_server *srv);

/* Closes a client now and frees it. */
void fm_client_free(struct fm_client *c);

/* Marks a client to be closed after its pending output is written. */
void fm_client_close_after_reply(struct fm_client *c);

/*
 * Ends the client's part in a group commit. With fail_msg NULL the turn's
 * WAL flush succeeded and the mark is dropped. Otherwise it failed and its
 * writes were rolled back: every reply from the client's mark on is replaced
 * by "-READONLY fail_msg" (as many replies as there were, so a pipelining
 * client stays in step), and a MULTI whose replies were replaced is undone
 * or doomed to -EXECABORT so that the client's view of it stays true.
 */
void fm_client_end_turn(struct fm_client *c, const char *fail_msg);

/* Bytes of memory held by a client (struct, buffers, MULTI queue). */
size_t fm_client_memory_bytes(const struct fm_client *c);

/* Encodes r onto the client's output and enforces the output limit. */
void fm_client_append_reply(struct fm_client *c, const struct fm_reply *r);

/* Gives an idle client's buffers back. */
void fm_client_shrink(struct fm_client *c);

/* ---- commands.c ------------------------------------------------------- */

/* The command table and its length. */
extern const struct fm_command_def fm_command_defs[];
size_t fm_command_count(void);

/* Fills idx with the hash of the command table (once, at start-up). */
void fm_command_index_init(struct fm_command_index *idx);

/* Looks up a command by name (case-insensitive) in idx; NULL when
 * unknown. */
const struct fm_command_def *
fm_command_lookup(const struct fm_command_index *idx, const uint8_t *name,
                  size_t len);

/* Runs one request of a client, appending its reply to the client's output
 * (MULTI queuing, AUTH, arity and maxmemory checks included). */
void fm_client_execute(struct fm_client *c, const struct fm_args *a);

/* Frees the commands queued by MULTI and leaves MULTI. */
void fm_client_discard_multi(struct fm_client *c);

/* Bytes used by the engine and the clients, for INFO and maxmemory. */
size_t fm_server_used_memory(const struct fm_server *srv);

/* ---- info.c ----------------------------------------------------------- */

/* INFO [section ...] */
void fm_cmd_info(struct fm_client *c, const struct fm_args *a,
                 struct fm_reply *r);

/* CONFIG GET/SET/RESETSTAT/HELP */
void fm_cmd_config(struct fm_client *c, const struct fm_args *a,
                   struct fm_reply *r);

/* ---- server.c --------------------------------------------------------- */

/*
 * The group commit of SPEC section 4: flushes the WAL records of the writes
 * made since the last call and ends the turn of every client marked since
 * (fm_client_end_turn). Runs before the replies of a loop turn are sent,
 * and before anything that flushes the WAL itself (SAVE, BGSAVE, the
 * cron's background snapshot), so that no flush goes by unaccounted.
 */
void fm_server_commit_turn(struct fm_server *srv);

/* Starts a shutdown at the end of this loop turn (SHUTDOWN, signals). */
void fm_server_schedule_shutdown(struct fm_server *srv, bool nosave);

#endif /* FM_SERVER_SERVER_INT_H */
