/*
 * io.c: the file plumbing under the log and the snapshot container.
 *
 * Every call that changes a file on the write path goes through a
 * struct fm_wal_io, a table of function pointers that defaults to the real
 * system calls, so that tests can make any of them fail with ENOSPC or EIO
 * or write short. This file holds that default table and the few helpers
 * both wal.c and snapshot.c need: a pwrite loop that survives EINTR and
 * short writes, a whole-file reader, a directory fsync, a non-blocking
 * flock, a directory lister for "<16 hex digits><suffix>" names and the log
 * callback wrapper.
 *
 * Invariants and choices:
 * - errno is read right after the failing call and handed back as a value;
 *   it never crosses a module boundary (STYLE section 4).
 * - A pwrite that returns 0 for a non-empty buffer is turned into EIO
 *   rather than retried forever.
 * - Nothing here retries a failed fsync: the caller decides, and the log
 *   decides never to (SPEC section 4).
 * - The lock is flock(2), not fcntl(F_SETLK): flock locks belong to an open
 *   file description, so a second open in the same process is refused too,
 *   which is what the tests and an embedded engine need. flock is not in
 *   POSIX; wal/CMakeLists.txt defines _DEFAULT_SOURCE for it.
 *
 * Reads (recovery, verification, snapshot loading) use the C library
 * directly: fault injection is about the write path.
 */
#include "wal/wal_int.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static int real_open(void *ctx, const char *path, int flags, int mode)
{
    (void)ctx;
    return open(path, flags, (mode_t)mode);
}

static ssize_t real_pwrite(void *ctx, int fd, const void *buf, size_t len,
                           off_t off)
{
    (void)ctx;
    return pwrite(fd, buf, len, off);
}

static int real_fdatasync(void *ctx, int fd)
{
    (void)ctx;
    return fdatasync(fd);
}

static int real_fsync(void *ctx, int fd)
{
    (void)ctx;
    return fsync(fd);
}

static int real_ftruncate(void *ctx, int fd, off_t len)
{
    (void)ctx;
    return ftruncate(fd, len);
}

static int real_rename(void *ctx, const char *from, const char *to)
{
    (void)ctx;
    return rename(from, to);
}

static int real_unlink(void *ctx, const char *path)
{
    (void)ctx;
    return unlink(path);
}

static int real_close(void *ctx, int fd)
{
    (void)ctx;
    return close(fd);
}

static const struct fm_wal_io real_io = {
    .ctx = NULL,
    .open = real_open,
    .pwrite = real_pwrite,
    .fdatasync = real_fdatasync,
    .fsync = real_fsync,
    .ftruncate = real_ftruncate,
    .rename = real_rename,
    .unlink = real_unlink,
    .close = real_close,
};

const struct fm_wal_io *fm_wal_io_default(void)
{
    return &real_io;
}

fm_status fm_wal_path_join(char *out, size_t cap, const char *dir,
                           const char *name, struct fm_error *err)
{
    int n = snprintf(out, cap, "%s/%s", dir, name);
    if (n < 0 || (size_t)n >= cap)
        return fm_error_set(err, FM_ERR_LIMIT, "path too long: %s/%s", dir,
                            name);
    return FM_OK;
}

int fm_wal_write_all(const struct fm_wal_io *io, int fd, const uint8_t *p,
                     size_t len, uint64_t off, size_t *done_out, int *errno_out)
{
    size_t done = 0;
    while (done < len) {
        ssize_t n =
            io->pwrite(io->ctx, fd, p + done, len - done, (off_t)(off + done));
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            *errno_out = n < 0 ? errno : EIO;
            *done_out = done;
            return -1;
        }
        done += (size_t)n;
    }
    *done_out = done;
    return 0;
}

fm_status fm_wal_read_file(const char *path, uint64_t max_len,
                           struct fm_buf *out, struct fm_error *err)
{
    fm_status st = FM_OK;
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return fm_error_set(err, FM_ERR_IO, "cannot open %s: %s", path,
                            strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        st = fm_error_set(err, FM_ERR_IO, "cannot stat %s: %s", path,
                          strerror(errno));
        goto out;
    }
    if ((uint64_t)sb.st_size > max_len) {
        st = fm_error_set(err, FM_ERR_LIMIT, "file too large: %s (%lld bytes)",
                          path, (long long)sb.st_size);
        goto out;
    }
    out->len = 0;
    st = fm_buf_reserve(out, (size_t)sb.st_size);
    if (st != FM_OK) {
        fm_error_set(err, st, "out of memory reading %s", path);
        goto out;
    }
    for (;;) {
        if (out->len == out->cap) {
            /* The file grew since fstat; keep reading. */
            st = fm_buf_reserve(out, 4096);
            if (st != FM_OK) {
                fm_error_set(err, st, "out of memory reading %s", path);
                goto out;
            }
        }
        ssize_t n = read(fd, out->data + out->len, out->cap - out->len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            st = fm_error_set(err, FM_ERR_IO, "cannot read %s: %s", path,
                              strerror(errno));
            goto out;
        }
        if (n == 0)
            break;
        out->len += (size_t)n;
    }
out:
    close(fd);
    return st;
}

fm_status fm_wal_map_file(const char *path, struct fm_wal_image *out,
                          struct fm_error *err)
{
    out->data = NULL;
    out->len = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return fm_error_set(err, FM_ERR_IO, "cannot open %s: %s", path,
                            strerror(errno));
    fm_status st = FM_OK;
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        st = fm_error_set(err, FM_ERR_IO, "cannot stat %s: %s", path,
                          strerror(errno));
    } else if (sb.st_size > 0) {
        void *p = mmap(NULL, (size_t)sb.st_size, PROT_READ,
                       MAP_PRIVATE | MAP_POPULATE, fd, 0);
        if (p == MAP_FAILED)
            st = fm_error_set(err, FM_ERR_IO, "cannot map %s: %s", path,
                              strerror(errno));
        else
            *out = (struct fm_wal_image){p, (size_t)sb.st_size};
    }
    close(fd);
    return st;
}

void fm_wal_unmap_file(struct fm_wal_image *img)
{
    if (img->data != NULL)
        munmap((void *)img->data, img->len);
    img->data = NULL;
    img->len = 0;
}

fm_status fm_wal_fsync_dir(const struct fm_wal_io *io, const char *dir,
                           struct fm_error *err)
{
    int fd = io->open(io->ctx, dir, O_RDONLY | O_DIRECTORY, 0);
    if (fd < 0)
        return fm_error_set(err, FM_ERR_IO, "cannot open directory %s: %s", dir,
                            strerror(errno));
    fm_status st = FM_OK;
    if (io->fsync(io->ctx, fd) != 0)
        st = fm_error_set(err, FM_ERR_IO, "fsync of directory %s failed: %s",
                          dir, strerror(errno));
    io->close(io->ctx, fd);
    return st;
}

fm_status fm_wal_make_dir(const char *dir, struct fm_error *err)
{
    if (mkdir(dir, 0755) != 0) {
        if (errno == EEXIST)
            return FM_OK;
        return fm_error_set(err, FM_ERR_IO, "cannot create directory %s: %s",
                            dir, strerror(errno));
    }
    /* The new name lasts a power cut only once its parent is fsynced. */
    char parent[4096];
    size_t n = strlen(dir);
    if (n >= sizeof(parent))
        return fm_error_set(err, FM_ERR_LIMIT, "directory name too long: %s",
                            dir);
    memcpy(parent, dir, n + 1);
    while (n > 1 && parent[n - 1] == '/')
        parent[--n] = '\0';
    char *slash = strrchr(parent, '/');
    if (slash == NULL)
        snprintf(parent, sizeof(parent), ".");
    else if (slash == parent)
        parent[1] = '\0';
    else
        *slash = '\0';
    return fm_wal_fsync_dir(fm_wal_io_default(), parent, err);
}

int fm_wal_flock_try(int fd)
{
    for (;;) {
        if (flock(fd, LOCK_EX | LOCK_NB) == 0)
            return 0;
        if (errno != EINTR)
            return errno;
    }
}

void fm_wal_log(fm_log_fn fn, void *ctx, enum fm_log_level level,
                const char *fmt, ...)
{
    if (fn == NULL)
        return;
    char msg[FM_ERROR_MSG_CAP];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    fn(ctx, level, msg);
}

/* Parses "<16 hex digits><suffix>" exactly. */
static bool parse_lsn_name(const char *name, const char *suffix,
                           uint64_t *lsn_out)
{
    uint64_t v = 0;
    for (int i = 0; i < 16; i++) {
        char c = name[i];
        unsigned d;
        if (c >= '0' && c <= '9')
            d = (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f')
            d = (unsigned)(c - 'a' + 10);
        else
            return false;
        v = v << 4 | d;
    }
    if (strcmp(name + 16, suffix) != 0)
        return false;
    *lsn_out = v;
    return true;
}

fm_status fm_wal_list_dir(const char *dir, const char *suffix, fm_wal_dir_fn fn,
                          void *ctx, struct fm_error *err)
{
    DIR *d = opendir(dir);
    if (d == NULL)
        return fm_error_set(err, FM_ERR_IO, "cannot open directory %s: %s", dir,
                            strerror(errno));
    fm_status st = FM_OK;
    for (;;) {
        errno = 0;
        struct dirent *e = readdir(d);
        if (e == NULL) {
            if (errno != 0)
                st =
                    fm_error_set(err, FM_ERR_IO, "cannot read directory %s: %s",
                                 dir, strerror(errno));
            break;
        }
        uint64_t lsn;
        if (strlen(e->d_name) < 16 || !parse_lsn_name(e->d_name, suffix, &lsn))
            continue;
        st = fn(ctx, e->d_name, lsn);
        if (st != FM_OK)
            break;
    }
    closedir(d);
    return st;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a;
    uint64_t y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

void fm_wal_sort_lsns(uint64_t *lsns, size_t n)
{
    if (n > 1)
        qsort(lsns, n, sizeof(*lsns), cmp_u64);
}
