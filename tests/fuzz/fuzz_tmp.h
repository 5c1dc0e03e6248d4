/*
 * fuzz_tmp.h: where the fuzz targets that write files make their data
 * directories, shared by fuzz_engine.c and fuzz_wal.c.
 */
#ifndef FM_FUZZ_TMP_H
#define FM_FUZZ_TMP_H

#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

/* FM_FUZZ_TMPDIR if set, else tmpfs when there is one, else /tmp. */
static inline const char *fm_fuzz_tmp_root(void)
{
    const char *env = getenv("FM_FUZZ_TMPDIR");
    if (env != NULL)
        return env;
    struct stat sb;
    if (stat("/dev/shm", &sb) == 0 && S_ISDIR(sb.st_mode) &&
        access("/dev/shm", W_OK) == 0)
        return "/dev/shm";
    return "/tmp";
}

#endif /* FM_FUZZ_TMP_H */
