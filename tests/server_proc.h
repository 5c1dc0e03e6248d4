/*
 * server_proc.h: start the real fermata-server for a test and learn its
 * port, shared by the tests that drive the binary (test_crash.c,
 * test_fault.c). Header-only so each test stays one executable.
 *
 * The server runs with --port 0 and the test reads the port back from the
 * "Ready to accept connections" line of its log, so tests never collide on
 * a fixed port. Waiting is a bounded poll, not a sleep. The server is
 * killed when the test's process ends, however it ends.
 */
#ifndef FM_TESTS_SERVER_PROC_H
#define FM_TESTS_SERVER_PROC_H

#include <criterion/criterion.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef FM_SERVER_BIN
#error "FM_SERVER_BIN must name the fermata-server binary"
#endif

static inline void fm_test_pause_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/*
 * Starts fermata-server on dir with the extra arguments (NULL-terminated
 * list, may be NULL) and the extra environment entries ("NAME=value",
 * NULL-terminated, may be NULL), its output in log_path. Returns the pid;
 * *port_out gets the port. Fails the test if the server does not come up
 * within 12 s.
 */
static inline pid_t fm_test_start_server(const char *dir, const char *log_path,
                                         const char *const *args,
                                         char *const *env, int *port_out)
{
    unlink(log_path);
    pid_t parent = getpid();
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        /* A test that fails an assertion exits without stopping its
         * server: the kernel does it, so no server outlives its test. */
        if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != parent)
            _exit(127);
        const char *argv[32] = {FM_SERVER_BIN, "--port", "0", "--dir", dir};
        size_t n = 5;
        for (size_t i = 0; args != NULL && args[i] != NULL && n < 31; i++)
            argv[n++] = args[i];
        argv[n] = NULL;
        for (size_t i = 0; env != NULL && env[i] != NULL; i++) {
            char *eq = strchr(env[i], '=');
            if (eq != NULL) {
                *eq = '\0';
                setenv(env[i], eq + 1, 1);
            }
        }
        int fd = open(log_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        dup2(fd, 1);
        dup2(fd, 2);
        execv(FM_SERVER_BIN, (char *const *)argv);
        _exit(127);
    }
    for (int i = 0; i < 600; i++) {
        FILE *f = fopen(log_path, "r");
        char line[512];
        while (f != NULL && fgets(line, sizeof(line), f) != NULL) {
            const char *p = strstr(line, "Ready to accept connections tcp");
            const char *colon = p != NULL ? strrchr(line, ':') : NULL;
            if (colon != NULL) {
                *port_out = atoi(colon + 1);
                fclose(f);
                return pid;
            }
        }
        if (f != NULL)
            fclose(f);
        int status;
        if (waitpid(pid, &status, WNOHANG) == pid)
            cr_assert_fail("the server exited at start; see %s", log_path);
        fm_test_pause_ms(20);
    }
    kill(pid, SIGKILL);
    cr_assert_fail("the server did not start; see %s", log_path);
    return -1;
}

#endif /* FM_TESTS_SERVER_PROC_H */
