/* Settings that must be in place before the shared libraries start.
 *
 * libgomp reads its environment, and OpenBLAS allocates one buffer per thread,
 * in their own initializers, which run before main(). A function in the
 * executable's .preinit_array runs before any of them (only executables have
 * one), so the CLI can still decide their settings:
 *
 *  - OpenMP's idle threads spin for a while before they sleep (libgomp's
 *    default: 300,000 spins). On a machine where another process wants the
 *    cores, the spinning threads take the cores from it and from each other,
 *    and decoding collapsed from about 490 to 5 tokens/s. Sleeping at once
 *    (OMP_WAIT_POLICY=passive) cost idle decoding 40 % instead (about 280
 *    tokens/s: a token runs dozens of parallel regions microseconds apart, and
 *    each woke its threads through the kernel). GOMP_SPINCOUNT=1000, a few
 *    microseconds of spinning, keeps both; the user's OMP_WAIT_POLICY or
 *    GOMP_SPINCOUNT wins.
 *  - Under an address-space limit (ulimit -v) too small for OpenBLAS's
 *    per-thread buffers, OpenBLAS 0.3.21 retries its failed allocation forever
 *    inside its initializer: the command hangs before main. Use fewer threads
 *    when that fits the limit, or fail with a message when not even one does.
 *
 * The library never does either: it is the program's choice. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

/* Address space pikv needs besides OpenBLAS's threads (its own code, libraries,
 * the bundled model and its scratch), and what each OpenMP/OpenBLAS thread adds
 * (a 128 MiB OpenBLAS buffer, its stack, and slack); measured on x86-64 with
 * Debian 12's OpenBLAS 0.3.21: 1 thread needed 400-600 MiB for `generate`, 2
 * threads 500-550 MiB, and `--help` about 170 MiB per thread. */
enum { BASE_MIB = 400, PER_THREAD_MIB = 160 };

/* Print a line on stderr without stdio (libc is not initialized yet). */
static void say(const char *text)
{
    size_t n = strlen(text);
    while (n > 0) {
        ssize_t w = write(2, text, n);
        if (w <= 0) return;
        text += w;
        n -= (size_t)w;
    }
}

/* The value of NAME in envp, or NULL (getenv cannot be trusted this early). */
static const char *env_get(char **envp, const char *name)
{
    size_t n = strlen(name);
    for (char **e = envp; *e; e++)
        if (strncmp(*e, name, n) == 0 && (*e)[n] == '=') return *e + n + 1;
    return NULL;
}

/* The OMP_NUM_THREADS that fits RLIMIT_AS (0: no change needed), or exit with
 * a message when not even one thread fits. */
static long threads_for_address_limit(char **envp)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_AS, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY) return 0;
    long limit_mib = (long)(rl.rlim_cur >> 20);
    long fit = (limit_mib - BASE_MIB) / PER_THREAD_MIB;
    const char *user = env_get(envp, "OMP_NUM_THREADS");
    long wanted = user && *user ? strtol(user, NULL, 10) : sysconf(_SC_NPROCESSORS_ONLN);
    if (wanted < 1) wanted = 1;
    if (wanted <= fit) return 0;
    char line[400];
    if (fit >= 1 && !(user && *user)) {
        snprintf(line, sizeof line,
                 "pikv: ulimit -v allows %ld MiB of address space: running on %ld thread%s instead of %ld\n",
                 limit_mib, fit, fit == 1 ? "" : "s", wanted);
        say(line);
        return fit;
    }
    long need = fit >= 1 ? wanted : 1;
    snprintf(line, sizeof line,
             "pikv: ulimit -v allows %ld MiB of address space, but %ld thread%s about %ld MiB "
             "(OpenBLAS would hang while starting); raise the limit%s\n",
             limit_mib, need, need == 1 ? " needs" : "s need", BASE_MIB + PER_THREAD_MIB * need,
             fit >= 1 ? " or lower OMP_NUM_THREADS" : "");
    say(line);
    _exit(1);
}

/* setenv() here would be undone: libc's own initializer, which runs after this,
 * sets the environment back to the array the kernel passed. So when a variable
 * must change, start the program again with a new environment, before any
 * library has initialized (a few milliseconds). */
static void prepare_runtime(int argc, char **argv, char **envp)
{
    (void)argc;
    enum { MAX_ENV = 4096 };
    static char *env[MAX_ENV + 3];
    static char threads[64];
    int n = 0, changed = 0;
    for (char **e = envp; *e; e++) {
        if (n == MAX_ENV) return; /* an environment this large is left as it is */
        env[n++] = *e;
    }
    if (!env_get(envp, "OMP_WAIT_POLICY") && !env_get(envp, "GOMP_SPINCOUNT")) {
        env[n++] = "GOMP_SPINCOUNT=1000";
        changed = 1;
    }
    long fit = threads_for_address_limit(envp);
    if (fit > 0) {
        snprintf(threads, sizeof threads, "OMP_NUM_THREADS=%ld", fit);
        env[n++] = threads;
        changed = 1;
    }
    env[n] = NULL;
    if (changed) execve("/proc/self/exe", argv, env); /* returns only on failure: go on as we are */
}

__attribute__((section(".preinit_array"), used)) static void (*const run_prepare_runtime)(int, char **, char **) =
    prepare_runtime;
