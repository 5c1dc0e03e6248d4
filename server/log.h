/*
 * log.h: the server's log, in Redis' format:
 *
 *   12345:M 25 Nov 2026 06:11:24.123 * Ready to accept connections
 *
 * (pid, role M for the main process, time, a level mark: '.' debug,
 * '-' verbose, '*' notice, '#' warning, then the message).
 */
#ifndef FM_SERVER_LOG_H
#define FM_SERVER_LOG_H

#include <stdio.h>

#include "engine/base.h"

struct fm_log {
    enum fm_log_level level; /* lines below this level are dropped */
    FILE *file;              /* stderr, or the logfile (owned) */
    bool owns_file;
};

/* Logs to standard error at NOTICE. */
void fm_log_init(struct fm_log *log);

/*
 * Sends the log to path ("" for standard error). FM_ERR_IO with the reason
 * in err when the file cannot be opened for appending.
 */
fm_status fm_log_open(struct fm_log *log, const char *path,
                      struct fm_error *err);

/* Closes the log file, if any; the log goes back to standard error. */
void fm_log_fini(struct fm_log *log);

/* Writes one line when level is at least log->level. */
void fm_log_write(struct fm_log *log, enum fm_log_level level, const char *fmt,
                  ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

/* An fm_log_fn for library code (ctx is a struct fm_log). */
void fm_log_callback(void *ctx, enum fm_log_level level, const char *msg);

#endif /* FM_SERVER_LOG_H */
