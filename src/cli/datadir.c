#include "cli/datadir.h"
#include "pikv_build.h"
#include "util/file.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The bundled model, relative to the data directory; its config.json marks a
 * directory as a data directory. */
static const char bundled_model[] = "models/pikv-ref-14m";

/* 1 when dir holds the bundled model's config.json. */
static int holds_bundled_model(const char *dir)
{
    char probe[PATH_MAX];
    int n = snprintf(probe, sizeof probe, "%s/%s/config.json", dir, bundled_model);
    return n > 0 && (size_t)n < sizeof probe && pk_file_exists(probe);
}

/* The data directory next to the running executable, into out (without "..",
 * so that messages and reports show a plain path); 0 when found. */
static int data_dir_beside_executable(char *out, size_t cap)
{
    char candidate[PATH_MAX + 16];
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0) return -1;
    exe[n] = '\0';
    char *slash = strrchr(exe, '/');
    if (!slash) return -1;
    *slash = '\0';
    static const char *const relative[] = {"../share/pikv", ".."};
    for (size_t i = 0; i < sizeof relative / sizeof *relative; i++) {
        int len = snprintf(candidate, sizeof candidate, "%s/%s", exe, relative[i]);
        if (len <= 0 || (size_t)len >= sizeof candidate || !holds_bundled_model(candidate)) continue;
        char resolved[PATH_MAX];
        if (!realpath(candidate, resolved)) continue;
        if ((size_t)snprintf(out, cap, "%s", resolved) < cap) return 0;
    }
    return -1;
}

const char *cli_data_dir(void)
{
    static char dir[PATH_MAX];
    if (*dir) return dir;
    const char *env = getenv("PIKV_DATA_DIR");
    if (env && *env) snprintf(dir, sizeof dir, "%s", env);
    else if (data_dir_beside_executable(dir, sizeof dir) != 0) snprintf(dir, sizeof dir, "%s", PIKV_DATADIR);
    return dir;
}

/* DATA_DIR/relative into a caller's static buffer of PATH_MAX + DATA_NAME_MAX
 * bytes, which holds any data directory followed by one of our short names. */
enum { DATA_NAME_MAX = 64 };
static const char *in_data_dir(char *out, size_t cap, const char *relative)
{
    snprintf(out, cap, "%s/%s", cli_data_dir(), relative);
    return out;
}

const char *cli_model_dir(const char *flag_value)
{
    static char path[PATH_MAX + DATA_NAME_MAX];
    if (flag_value) return flag_value;
    const char *env = getenv("PIKV_MODEL");
    if (env && *env) return env;
    return in_data_dir(path, sizeof path, bundled_model);
}

const char *cli_haystack_path(const char *flag_value)
{
    static char path[PATH_MAX + DATA_NAME_MAX];
    return flag_value ? flag_value : in_data_dir(path, sizeof path, "data/haystack.txt");
}
