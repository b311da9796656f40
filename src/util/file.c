#include "util/file.h"
#include "util/error.h"
#include "util/mem.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

char *pk_read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        pk_fail("%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    struct stat sb;
    if (fstat(fileno(f), &sb) || !S_ISREG(sb.st_mode)) {
        fclose(f);
        pk_fail("%s: not a regular file", path);
        return NULL;
    }
    size_t size = (size_t)sb.st_size;
    char *buf = pk_malloc(size + 1, path);
    if (buf && fread(buf, 1, size, f) != size) {
        pk_fail("%s: read error", path);
        pk_free(buf);
        buf = NULL;
    }
    fclose(f);
    if (!buf) return NULL;
    buf[size] = '\0';
    if (len) *len = size;
    return buf;
}

struct cJSON *pk_read_json(const char *path)
{
    size_t len;
    char *text = pk_read_file(path, &len);
    if (!text) return NULL;
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(text, len, &end, 0);
    if (!root) pk_fail("%s: invalid JSON near byte %td", path, end ? end - text : (ptrdiff_t)0);
    pk_free(text);
    return root;
}

int pk_join_path(char *out, size_t cap, const char *dir, const char *name)
{
    int n = snprintf(out, cap, "%s/%s", dir, name);
    if (n < 0 || (size_t)n >= cap) return pk_fail("%s/%s: path too long", dir, name);
    return 0;
}

int pk_file_exists(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISREG(sb.st_mode);
}

int pk_write_file_atomic(const char *path, const void *data, size_t len)
{
    char tmp[4096];
    int n = snprintf(tmp, sizeof tmp, "%s.tmp-XXXXXX", path);
    if (n < 0 || (size_t)n >= sizeof tmp) return pk_fail("%s: path too long", path);
    int fd = mkstemp(tmp);
    if (fd < 0) return pk_fail("%s: cannot create a temporary file beside it: %s", path, strerror(errno));
    const char *p = data;
    size_t left = len;
    while (left > 0) {
        ssize_t w = write(fd, p, left);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            int err = errno;
            close(fd);
            unlink(tmp);
            return pk_fail("%s: write failed: %s", path, strerror(err));
        }
        p += w;
        left -= (size_t)w;
    }
    if (fsync(fd) != 0 || close(fd) != 0) {
        int err = errno;
        unlink(tmp);
        return pk_fail("%s: write failed: %s", path, strerror(err));
    }
    if (rename(tmp, path) != 0) {
        int err = errno;
        unlink(tmp);
        return pk_fail("%s: cannot replace: %s", path, strerror(err));
    }
    return 0;
}
