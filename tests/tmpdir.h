/*
 * tmpdir.h: a temporary directory per test, shared by the tests of wal/
 * (test_wal.c, test_snapshot.c). Header-only so each test stays one
 * executable. The directories these tests make hold files only.
 */
#ifndef FM_TESTS_TMPDIR_H
#define FM_TESTS_TMPDIR_H

#include <criterion/criterion.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Makes a fresh directory /tmp/<prefix>XXXXXX into dir (cap bytes). */
static inline void fm_test_make_dir(char *dir, size_t cap, const char *prefix)
{
    snprintf(dir, cap, "/tmp/%sXXXXXX", prefix);
    cr_assert_not_null(mkdtemp(dir), "mkdtemp %s", dir);
}

/* Removes the files of path, then path itself. */
static inline void fm_test_remove_dir(const char *path)
{
    DIR *d = opendir(path);
    if (d == NULL)
        return;
    struct dirent *e;
    char p[512];
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        snprintf(p, sizeof(p), "%s/%s", path, e->d_name);
        unlink(p);
    }
    closedir(d);
    rmdir(path);
}

#endif /* FM_TESTS_TMPDIR_H */
