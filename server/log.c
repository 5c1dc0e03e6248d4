/*
 * log.c: log lines in Redis' format (see log.h).
 *
 * One line is formatted into a stack buffer and written with a single
 * fputs and fflush, so lines from the server and from library callbacks
 * never interleave within a line and a crash loses at most the line being
 * written. Lines longer than the buffer are cut; the log is for people,
 * and a cut line beats an allocation in a path that may be reporting
 * that memory ran out.
 *
 * What it does not do: syslog, log rotation (reopen on SIGHUP), colours.
 */
#include "server/log.h"

#include <errno.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define LINE_MAX_BYTES 1024

void fm_log_init(struct fm_log *log)
{
    log->level = FM_LOG_NOTICE;
    log->file = stderr;
    log->owns_file = false;
}

fm_status fm_log_open(struct fm_log *log, const char *path,
                      struct fm_error *err)
{
    if (path[0] == '\0')
        return FM_OK;
    FILE *f = fopen(path, "a");
    if (f == NULL)
        return fm_error_set(err, FM_ERR_IO, "cannot open log file '%s': %s",
                            path, strerror(errno));
    fm_log_fini(log);
    log->file = f;
    log->owns_file = true;
    return FM_OK;
}

void fm_log_fini(struct fm_log *log)
{
    if (log->owns_file && log->file != NULL)
        fclose(log->file);
    log->file = stderr;
    log->owns_file = false;
}

static void write_line(struct fm_log *log, enum fm_log_level level,
                       const char *msg)
{
    static const char marks[] = {'.', '-', '*', '#'};
    char line[LINE_MAX_BYTES];
    struct timeval tv;
    struct tm tm;
    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    char when[64];
    strftime(when, sizeof(when), "%d %b %Y %H:%M:%S", &tm);
    snprintf(line, sizeof(line), "%d:M %s.%03d %c %s\n", (int)getpid(), when,
             (int)(tv.tv_usec / 1000),
             marks[(unsigned)level < 4 ? level : FM_LOG_WARNING], msg);
    FILE *f = log->file != NULL ? log->file : stderr;
    fputs(line, f);
    fflush(f);
}

void fm_log_write(struct fm_log *log, enum fm_log_level level, const char *fmt,
                  ...)
{
    if (level < log->level)
        return;
    char msg[LINE_MAX_BYTES];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    write_line(log, level, msg);
}

void fm_log_callback(void *ctx, enum fm_log_level level, const char *msg)
{
    struct fm_log *log = ctx;
    if (level >= log->level)
        write_line(log, level, msg);
}
