/*
 * server.h: fermata-server as a library, so that tests can run it on a
 * thread of their own and programs can embed it.
 */
#ifndef FM_SERVER_SERVER_H
#define FM_SERVER_SERVER_H

#include "engine/base.h"
#include "engine/fermata.h"
#include "server/config.h"

struct fm_server;

/* The server's version, as INFO and HELLO report it. */
#define FM_SERVER_VERSION "0.1.0"

/*
 * Creates a server: opens the log, reads the schema file (cfg->schema, or
 * the built-in schema), creates the engine and the event loop, and binds
 * the listening socket, so that fm_server_port is known when this returns.
 * Takes ownership of cfg's contents (cfg is zero-filled on return, success
 * or not). FM_ERR_IO (bind, listen, files), FM_ERR_SYNTAX (schema),
 * FM_ERR_NOMEM; the reason is in err.
 */
fm_status fm_server_new(struct fm_config *cfg, struct fm_server **out,
                        struct fm_error *err);

/* Closes every connection and releases everything; NULL does nothing. */
void fm_server_free(struct fm_server *srv);

/* The TCP port the server listens on (the assigned one when cfg port 0). */
int fm_server_port(const struct fm_server *srv);

/*
 * Blocks SIGTERM and SIGINT in the calling thread and ignores SIGPIPE. Call
 * it first, before fm_server_new: the engine may start threads (the WAL's
 * fsync thread), and they inherit the mask; a thread that did not block
 * the signals would take SIGTERM's default action and kill the process
 * without a clean shutdown. FM_ERR_IO.
 */
fm_status fm_server_block_signals(struct fm_error *err);

/*
 * Turns SIGTERM and SIGINT into a clean shutdown, through a signalfd the
 * event loop watches (after fm_server_block_signals). FM_ERR_IO.
 */
fm_status fm_server_watch_signals(struct fm_server *srv, struct fm_error *err);

/*
 * Serves clients until SHUTDOWN, a watched signal or fm_server_request_stop.
 * FM_OK after a clean shutdown; FM_ERR_IO when the event loop fails.
 */
fm_status fm_server_run(struct fm_server *srv, struct fm_error *err);

/*
 * Asks a running server to shut down as SHUTDOWN would. Safe from any
 * thread and from signal handlers (it writes one byte to a pipe).
 */
void fm_server_request_stop(struct fm_server *srv);

/* The snapshot triggers of the config, as the engine takes them. */
void fm_server_snapshot_config(const struct fm_config *cfg,
                               struct fm_snapshot_config *out);

/* The fsync policy of the config, as the engine takes it. */
enum fm_fsync_policy fm_server_fsync_policy(const struct fm_config *cfg);

#endif /* FM_SERVER_SERVER_H */
