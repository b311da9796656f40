#include "util/file.h"
#include "util/error.h"
#include "util/mem.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
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
    if (fd < 0) return pk_fail("%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        int err = errno;
        close(fd);
        return pk_fail("%s: cannot stat: %s", path, strerror(err));
    }
    if (!S_ISREG(sb.st_mode)) {
        const char *what = S_ISDIR(sb.st_mode) ? "a directory" : S_ISFIFO(sb.st_mode) ? "a FIFO"
                         : S_ISCHR(sb.st_mode) || S_ISBLK(sb.st_mode) ? "a device" : S_ISSOCK(sb.st_mode) ? "a socket"
                         : "something else";
        close(fd);
        return pk_fail("%s: not a regular file (%s)", path, what);
    }
    *size = sb.st_size;
    return fd;
}

/* Read fd to its end into a NUL-terminated buffer, at most max_bytes; `expect`
 * (the size fstat gave, or 0) sizes the first allocation. */
static char *read_fd(int fd, const char *name, size_t expect, size_t max_bytes, size_t *len)
{
    size_t cap = (expect < max_bytes ? expect : max_bytes) + 2, used = 0;
    char *buf = pk_malloc(cap, name);
    while (buf) {
        if (used + 1 == cap) {
            if (used > max_bytes) {
                pk_free(buf);
                pk_fail("%s: more than %zu bytes, more than such input may hold", name, max_bytes);
                return NULL;
            }
            size_t grown_cap = cap < max_bytes / 2 ? 2 * cap : max_bytes + 2;
            char *grown = pk_realloc(buf, grown_cap, name);
            if (!grown) {
                pk_free(buf);
                return NULL;
            }
            buf = grown;
            cap = grown_cap;
        }
        ssize_t r = read(fd, buf + used, cap - 1 - used);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            pk_fail("%s: read error: %s", name, strerror(errno));
            pk_free(buf);
            return NULL;
        }
        if (r == 0) break;
        used += (size_t)r;
    }
    if (!buf) return NULL;
    if (used > max_bytes) {
        pk_free(buf);
        pk_fail("%s: more than %zu bytes, more than such input may hold", name, max_bytes);
        return NULL;
    }
    buf[used] = '\0';
    if (len) *len = used;
    return buf;
}

char *pk_read_file(const char *path, size_t max_bytes, size_t *len)
{
    off_t st_size = 0;
    int fd = pk_open_regular(path, &st_size);
    if (fd < 0) return NULL;
    if ((uintmax_t)st_size > max_bytes) {
        close(fd);
        pk_fail("%s: %jd bytes is more than such a file may hold (%zu)", path, (intmax_t)st_size, max_bytes);
        return NULL;
    }
    char *buf = read_fd(fd, path, (size_t)st_size, max_bytes, len);
    close(fd);
    return buf;
}

char *pk_read_stream(int fd, const char *name, size_t max_bytes, size_t *len)
{
    return read_fd(fd, name, 0, max_bytes, len);
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
            if (++depth > CJSON_NESTING_LIMIT)
                return "nested too deeply (cJSON's limit is " PK_STR(CJSON_NESTING_LIMIT) " levels)";
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

/* ---- paths to remove if the process is interrupted --------------------- */

/* A fixed table, so that the signal handler reads it without locks or
 * allocation: a slot is filled, then marked used; the handler only reads. */
enum { CLEANUP_SLOTS = 64 };
static struct {
    char path[4096];
    volatile sig_atomic_t used;   /* 0 free, 1 a file, 2 a directory */
} cleanup[CLEANUP_SLOTS];

int pk_cleanup_register(const char *path, int is_dir)
{
    for (int i = 0; i < CLEANUP_SLOTS; i++) {
        if (cleanup[i].used) continue;
        if (strlen(path) >= sizeof cleanup[i].path) return -1;
        strcpy(cleanup[i].path, path);
        cleanup[i].used = is_dir ? 2 : 1;
        return i;
    }
    return -1; /* no room: the path is simply not cleaned up on a signal */
}

void pk_cleanup_unregister(int slot)
{
    if (slot >= 0 && slot < CLEANUP_SLOTS) cleanup[slot].used = 0;
}

void pk_cleanup_now(void)
{
    /* Files first, then directories, which are empty once their files are gone.
     * unlink and rmdir are async-signal-safe. */
    for (int pass = 1; pass <= 2; pass++)
        for (int i = 0; i < CLEANUP_SLOTS; i++)
            if (cleanup[i].used == pass) {
                if (pass == 1) unlink(cleanup[i].path);
                else rmdir(cleanup[i].path);
                cleanup[i].used = 0;
            }
}

/* ---- writing ------------------------------------------------------------ */

/* Write all of data to fd, retrying short writes. */
static int write_all(int fd, const void *data, size_t len)
{
    const char *p = data;
    while (len > 0) {
        ssize_t w = write(fd, p, len);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            if (w == 0) errno = EIO;
            return -1;
        }
        p += w;
        len -= (size_t)w;
    }
    return 0;
}

int pk_output_kind(const char *path)
{
    struct stat sb;
    if (lstat(path, &sb) != 0) {
        if (errno == ENOENT) return PK_OUT_NEW;
        return pk_fail("%s: %s", path, strerror(errno));
    }
    if (S_ISLNK(sb.st_mode)) {
        if (stat(path, &sb) == 0 && (S_ISCHR(sb.st_mode) || S_ISFIFO(sb.st_mode) || S_ISSOCK(sb.st_mode)))
            return PK_OUT_STREAM; /* e.g. /dev/stdout */
        return pk_fail("%s: is a symbolic link; give the file it points to (it would be replaced by a regular file)",
                       path);
    }
    if (S_ISREG(sb.st_mode)) return PK_OUT_REPLACE;
    if (S_ISCHR(sb.st_mode) || S_ISFIFO(sb.st_mode) || S_ISSOCK(sb.st_mode)) return PK_OUT_STREAM;
    return pk_fail("%s: is %s, not a file", path, S_ISDIR(sb.st_mode) ? "a directory" : "a block device or other");
}

int pk_check_output_dir(const char *dir)
{
    struct stat sb;
    if (stat(dir, &sb) != 0) return pk_fail("%s: %s", dir, strerror(errno));
    if (!S_ISDIR(sb.st_mode)) return pk_fail("%s: not a directory", dir);
    if (access(dir, W_OK | X_OK) != 0) return pk_fail("%s: cannot write into it: %s", dir, strerror(errno));
    return 0;
}

int pk_check_output_file(const char *path)
{
    int kind = pk_output_kind(path);
    if (kind < 0) return -1;
    if (kind == PK_OUT_STREAM) {
        if (access(path, W_OK) != 0) return pk_fail("%s: cannot write: %s", path, strerror(errno));
        return 0;
    }
    /* A new or replaced file is a temporary beside it, renamed: its directory must take it. */
    char parent[4096];
    const char *slash = strrchr(path, '/');
    int n = slash ? snprintf(parent, sizeof parent, "%.*s", (int)(slash == path ? 1 : slash - path), path)
                  : snprintf(parent, sizeof parent, ".");
    if (n < 0 || (size_t)n >= sizeof parent) return pk_fail("%s: path too long", path);
    if (pk_check_output_dir(parent)) return pk_fail_prefix("%s", path);
    return 0;
}

int pk_write_file_atomic(const char *path, const void *data, size_t len)
{
    int kind = pk_output_kind(path);
    if (kind < 0) return -1;
    if (kind == PK_OUT_STREAM) {
        /* A device, FIFO or socket (/dev/null, /dev/stdout, a pipe) is written
         * as it is: renaming a file over it would replace the node itself. */
        int fd = open(path, O_WRONLY | O_CLOEXEC);
        if (fd < 0) return pk_fail("%s: cannot open: %s", path, strerror(errno));
        int rc = write_all(fd, data, len);
        int err = errno;
        if (close(fd) != 0 && rc == 0) rc = -1, err = errno;
        return rc ? pk_fail("%s: write failed: %s", path, strerror(err)) : 0;
    }
    char tmp[4096];
    int n = snprintf(tmp, sizeof tmp, "%s.tmp-XXXXXX", path);
    if (n < 0 || (size_t)n >= sizeof tmp) return pk_fail("%s: path too long", path);
    int fd = mkstemp(tmp);
    if (fd < 0) return pk_fail("%s: cannot create a temporary file beside it: %s", path, strerror(errno));
    int slot = pk_cleanup_register(tmp, 0);
    int rc = write_all(fd, data, len) == 0 && fsync(fd) == 0 ? 0 : -1;
    int err = errno;
    if (close(fd) != 0 && rc == 0) rc = -1, err = errno;
    if (rc == 0 && rename(tmp, path) != 0) {
        err = errno;
        unlink(tmp);
        pk_cleanup_unregister(slot);
        return pk_fail("%s: cannot replace: %s", path, strerror(err));
    }
    if (rc != 0) unlink(tmp);
    pk_cleanup_unregister(slot);
    return rc ? pk_fail("%s: write failed: %s", path, strerror(err)) : 0;
}

int pk_publish_dir(const char *staging, const char *dir, const char *const *names, int n)
{
    char from[4096], to[4096];
    /* Every target is checked before anything is renamed, so that a target that
     * cannot be replaced leaves the old set as it was. */
    for (int i = 0; i < n; i++) {
        if (pk_join_path(to, sizeof to, dir, names[i])) return -1;
        int kind = pk_output_kind(to);
        if (kind < 0) return -1;
        if (kind == PK_OUT_STREAM) return pk_fail("%s: is a device or FIFO, not a report file", to);
    }
    for (int i = 0; i < n; i++) {
        if (pk_join_path(from, sizeof from, staging, names[i]) || pk_join_path(to, sizeof to, dir, names[i]))
            return -1;
        if (rename(from, to) != 0)
            return pk_fail("%s: cannot replace (%d of %d files of the set already replaced): %s", to, i, n,
                           strerror(errno));
    }
    return 0;
}
