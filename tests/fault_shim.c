/*
 * fault_shim.c: an LD_PRELOAD library that makes the WAL's system calls
 * fail on demand, for tests/test_fault.c.
 *
 * While the file named by FM_FAULT_TRIGGER exists, every call named by
 * FM_FAULT_CALL ("fdatasync" or "pwrite") fails with the errno named by
 * FM_FAULT_ERRNO ("EIO" or "ENOSPC"); the server under test cannot tell
 * this from a real disk failure. Only files whose path contains ".wal" are
 * affected, so logs and snapshots are left alone. Without the trigger file
 * every call goes straight to the C library.
 *
 * While the file named by FM_FAULT_STALL exists, every pwrite to a snapshot
 * being written (a path containing ".snap.tmp") waits until the file is
 * gone: a test holds a background snapshot's child in the middle of its
 * work, for as long as it needs, without a sleep of its own.
 */
#define _GNU_SOURCE /* RTLD_NEXT */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

int fdatasync(int fd);
ssize_t pwrite(int fd, const void *buf, size_t n, off_t off);
ssize_t pwrite64(int fd, const void *buf, size_t n, off_t off);

/* True when the path of fd contains part. */
static bool fd_path_has(int fd, const char *part)
{
    char link[64];
    char path[4096];
    snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof(path) - 1);
    if (n <= 0)
        return false;
    path[n] = '\0';
    return strstr(path, part) != NULL;
}

/* True when fd is a WAL segment and the fault is armed for call. */
static bool should_fail(const char *call, int fd)
{
    const char *trigger = getenv("FM_FAULT_TRIGGER");
    const char *which = getenv("FM_FAULT_CALL");
    if (trigger == NULL || which == NULL || strcmp(which, call) != 0 ||
        access(trigger, F_OK) != 0)
        return false;
    return fd_path_has(fd, ".wal");
}

/* Waits while FM_FAULT_STALL exists if fd is a snapshot being written. */
static void stall_snapshot_write(int fd)
{
    const char *stall = getenv("FM_FAULT_STALL");
    if (stall == NULL || access(stall, F_OK) != 0 ||
        !fd_path_has(fd, ".snap.tmp"))
        return;
    while (access(stall, F_OK) == 0) {
        struct timespec ts = {0, 5000000};
        nanosleep(&ts, NULL);
    }
}

static int fault_errno(void)
{
    const char *e = getenv("FM_FAULT_ERRNO");
    return e != NULL && strcmp(e, "ENOSPC") == 0 ? ENOSPC : EIO;
}

int fdatasync(int fd)
{
    static int (*real)(int);
    if (real == NULL)
        *(void **)&real = dlsym(RTLD_NEXT, "fdatasync");
    if (should_fail("fdatasync", fd)) {
        errno = fault_errno();
        return -1;
    }
    return real(fd);
}

static ssize_t do_pwrite(const char *sym, int fd, const void *buf, size_t n,
                         off_t off)
{
    ssize_t (*real)(int, const void *, size_t, off_t);
    *(void **)&real = dlsym(RTLD_NEXT, sym);
    stall_snapshot_write(fd);
    if (should_fail("pwrite", fd)) {
        errno = fault_errno();
        return -1;
    }
    return real(fd, buf, n, off);
}

ssize_t pwrite(int fd, const void *buf, size_t n, off_t off)
{
    return do_pwrite("pwrite", fd, buf, n, off);
}

ssize_t pwrite64(int fd, const void *buf, size_t n, off_t off)
{
    return do_pwrite("pwrite64", fd, buf, n, off);
}
