#include "util/file.h"
#include "util/error.h"
#include "util/mem.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define PK_STR2(x) #x
#define PK_STR(x) PK_STR2(x)

int pk_open_regular(const char *path, off_t *size)
{
    /* O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer
     * forever. It changes nothing for a regular file. The check is made on the
     * opened descriptor, so the file cannot be swapped between check and read. */
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
        int err = errno;
        pk_fail("%s: cannot open: %s", path, strerror(err));
        errno = err;
        return -1;
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        const char *what = S_ISDIR(sb.st_mode) ? "a directory" : S_ISFIFO(sb.st_mode) ? "a FIFO"
                         : S_ISCHR(sb.st_mode) || S_ISBLK(sb.st_mode) ? "a device" : S_ISSOCK(sb.st_mode) ? "a socket"
                         : "not a regular file";
        close(fd);
        pk_fail("%s: not a regular file (%s)", path, what);
        errno = EINVAL;
        return -1;
    }
    *size = sb.st_size;
    return fd;
}

char *pk_read_file(const char *path, size_t max_bytes, size_t *len)
{
    off_t st_size;
    int fd = pk_open_regular(path, &st_size);
    if (fd < 0) return NULL;
    if ((uintmax_t)st_size > max_bytes) {
        close(fd);
        pk_fail("%s: %jd bytes is more than such a file may hold (%zu)", path, (intmax_t)st_size, max_bytes);
        return NULL;
    }
    /* Read what fstat promised, plus one byte to notice a file that grew since. */
    size_t size = (size_t)st_size, used = 0;
    char *buf = pk_malloc(size + 2, path);
    while (buf && used < size + 1) {
        ssize_t r = read(fd, buf + used, size + 1 - used);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            pk_fail("%s: read error: %s", path, strerror(errno));
            pk_free(buf);
            buf = NULL;
        } else if (r == 0) {
            break;
        } else {
            used += (size_t)r;
        }
    }
    close(fd);
    if (!buf) return NULL;
    if (used != size) {
        pk_free(buf);
        pk_fail("%s: changed size while being read", path);
        return NULL;
    }
    buf[size] = '\0';
    if (len) *len = size;
    return buf;
}

const char *pk_json_error_reason(const char *text, size_t len)
{
    /* cJSON gives up past CJSON_NESTING_LIMIT levels with the same NULL as for a
     * syntax error; count the depth (outside strings) to tell the two apart. */
    size_t depth = 0;
    int in_string = 0;
    for (size_t i = 0; i < len; i++) {
        char c = text[i];
        if (in_string) {
            if (c == '\\') i++;
            else if (c == '"') in_string = 0;
        } else if (c == '"') {
            in_string = 1;
        } else if (c == '[' || c == '{') {
            if (++depth > CJSON_NESTING_LIMIT) return "nested too deeply (cJSON's limit is " PK_STR(CJSON_NESTING_LIMIT) " levels)";
        } else if ((c == ']' || c == '}') && depth > 0) {
            depth--;
        }
    }
    return "invalid JSON";
}

struct cJSON *pk_read_json(const char *path, size_t max_bytes)
{
    size_t len;
    char *text = pk_read_file(path, max_bytes, &len);
    if (!text) return NULL;
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(text, len, &end, 0);
    if (!root)
        pk_fail("%s: %s near byte %td", path, pk_json_error_reason(text, len), end ? end - text : (ptrdiff_t)0);
    pk_free(text);
    return root;
}

int pk_join_path(char *out, size_t cap, const char *dir, const char *name)
{
    int n = snprintf(out, cap, "%s/%s", dir, name);
    if (n < 0 || (size_t)n >= cap) return pk_fail("%s/%s: path too long", dir, name);
    return 0;
}

int pk_path_exists(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0;
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
