/*
 * server_main.c: the fermata-server program.
 *
 *   fermata-server [--config FILE] [--name value ...]
 *
 * Every parameter of config.c is a flag of the same name (SPEC section 6):
 * the config file is read first, then the flags override it in order.
 * A bad value stops the start with a message naming the parameter and what
 * it accepts, and exit status 1; --help and --version exit 0.
 *
 * Start-up: parameters, then the engine with the built-in schema or
 * --schema FILE, then the listening socket; each step logs a line in
 * Redis' format, and a failure logs why and exits 1. SIGTERM and SIGINT
 * shut the server down cleanly (through a signalfd, see server.c); SIGPIPE
 * is ignored, so that a client that goes away surfaces as EPIPE from
 * write() rather than killing the process.
 */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "server/log.h"
#include "server/server.h"

static void usage(FILE *out)
{
    fprintf(out, "Usage: fermata-server [--config FILE] [--name value ...]\n"
                 "\n"
                 "Every parameter is a flag, a config-file key and a CONFIG "
                 "GET/SET name:\n");
    for (size_t i = 0; i < fm_config_count(); i++) {
        const char *name = fm_config_name(i);
        if (strcmp(name, "save") == 0 || strcmp(name, "appendonly") == 0)
            continue;
        fprintf(out, "  --%s\n", name);
    }
    fprintf(out, "\nSee docs/protocol.md for each parameter's meaning and "
                 "default.\n");
}

int main(int argc, char **argv)
{
    struct fm_config cfg;
    struct fm_error err = {0};
    struct fm_server *srv = NULL;
    struct fm_log log;
    int code = 1;
    fm_log_init(&log);
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            return 0;
        }
        if (strcmp(argv[i], "--version") == 0 || strcmp(argv[i], "-v") == 0) {
            printf("fermata-server v=%s\n", FM_SERVER_VERSION);
            return 0;
        }
    }
    if (fm_config_init(&cfg) != FM_OK) {
        fprintf(stderr, "fermata-server: out of memory\n");
        return 1;
    }
    if (fm_config_parse_args(&cfg, argc, argv, &err) != FM_OK) {
        fprintf(stderr, "fermata-server: %s\n", err.msg);
        fm_config_fini(&cfg);
        return 1;
    }
    log.level = (enum fm_log_level)cfg.loglevel;
    fm_log_write(&log, FM_LOG_NOTICE, "fermata is starting");
    fm_log_write(&log, FM_LOG_NOTICE,
                 "fermata version=%s, bits=%d, pid=%d, just started",
                 FM_SERVER_VERSION, (int)(sizeof(void *) * 8), (int)getpid());
    fm_log_write(&log, FM_LOG_NOTICE, "Configuration loaded%s%s",
                 cfg.config_file[0] != '\0' ? " from " : "", cfg.config_file);
    fm_log_write(&log, FM_LOG_NOTICE, "Schema: %s; data dir: %s; fsync: %s",
                 cfg.schema[0] != '\0' ? cfg.schema : "built-in default",
                 cfg.dir, fm_fsync_policy_name(fm_server_fsync_policy(&cfg)));
    if (cfg.dir[0] == '\0')
        fm_log_write(&log, FM_LOG_WARNING,
                     "No data directory (--dir \"\"): data is kept in memory "
                     "only and is lost at exit");
    if (fm_server_block_signals(&err) != FM_OK) {
        fm_log_write(&log, FM_LOG_WARNING, "Cannot start: %s", err.msg);
        goto out;
    }
    if (fm_server_new(&cfg, &srv, &err) != FM_OK) {
        fm_log_write(&log, FM_LOG_WARNING, "Cannot start: %s", err.msg);
        goto out;
    }
    if (fm_server_watch_signals(srv, &err) != FM_OK) {
        fm_log_write(&log, FM_LOG_WARNING, "Cannot start: %s", err.msg);
        goto out;
    }
    fm_log_write(&log, FM_LOG_NOTICE, "Server initialized, port=%d",
                 fm_server_port(srv));
    if (fm_server_run(srv, &err) != FM_OK) {
        fm_log_write(&log, FM_LOG_WARNING, "Stopped: %s", err.msg);
        goto out;
    }
    code = 0;
out:
    fm_server_free(srv);
    fm_config_fini(&cfg);
    fm_log_fini(&log);
    return code;
}
