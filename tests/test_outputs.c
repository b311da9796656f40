/* Writing outputs: a FIFO or device is written as it is and never replaced, a
 * symbolic link is refused and left alone, a set of report files replaces the
 * old set only when every file can be replaced, destinations are checked
 * before a run, and registered temporaries are removed from a signal handler. */
#include "check.h"
#include "pikv.h"
#include "util/file.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char tmp[256];

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    fputs(text, f);
    fclose(f);
}

/* The whole content of a small file, or "" when it cannot be read. */
static const char *content(const char *path)
{
    static char buf[256];
    buf[0] = '\0';
    FILE *f = fopen(path, "r");
    if (!f) return buf;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

static int entries_in(const char *dir)
{
    char cmd[600];
    snprintf(cmd, sizeof cmd, "exit $(ls -A %s | wc -l)", dir);
    int rc = system(cmd);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

static void check_targets(void)
{
    char fifo[300], link[300], file[300], path[300];
    /* A FIFO with a reader (this process): the bytes arrive through it and it stays a FIFO. */
    snprintf(fifo, sizeof fifo, "%s/fifo", tmp);
    CHECK(mkfifo(fifo, 0600) == 0, "mkfifo");
    int rd = open(fifo, O_RDONLY | O_NONBLOCK);
    CHECK(pk_output_kind(fifo) == PK_OUT_STREAM, "a FIFO is written as a stream");
    CHECK(pk_write_file_atomic(fifo, "a,b\n", 4) == 0, "write into a FIFO: %s", pikv_last_error());
    char got[8] = {0};
    CHECK(read(rd, got, sizeof got - 1) == 4 && strcmp(got, "a,b\n") == 0, "the FIFO's reader got '%s'", got);
    close(rd);
    struct stat sb;
    CHECK(lstat(fifo, &sb) == 0 && S_ISFIFO(sb.st_mode), "the FIFO is still a FIFO");
    CHECK(pk_output_kind("/dev/null") == PK_OUT_STREAM, "/dev/null is written as a stream, not replaced");

    /* A symbolic link to a file: refused, the link and its file untouched. */
    snprintf(file, sizeof file, "%s/target.csv", tmp);
    snprintf(link, sizeof link, "%s/link.csv", tmp);
    write_text(file, "old");
    CHECK(symlink(file, link) == 0, "symlink");
    CHECK(pk_write_file_atomic(link, "new", 3) == -1 && strstr(pikv_last_error(), "is a symbolic link"),
          "a symlink is refused: %s", pikv_last_error());
    CHECK(lstat(link, &sb) == 0 && S_ISLNK(sb.st_mode) && strcmp(content(file), "old") == 0,
          "the link and its file are unchanged");
    CHECK(pk_check_output_file(link) == -1, "and refused by the check before a run");
    /* A regular file is replaced; a directory is not a file. */
    CHECK(pk_write_file_atomic(file, "new", 3) == 0 && strcmp(content(file), "new") == 0, "a regular file is replaced");
    CHECK(pk_write_file_atomic(tmp, "x", 1) == -1 && strstr(pikv_last_error(), "is a directory"),
          "a directory is refused: %s", pikv_last_error());

    /* Checks before a run. */
    CHECK(pk_check_output_file("/nonexistent-dir/x.csv") == -1 && strstr(pikv_last_error(), "/nonexistent-dir"),
          "a file in a missing directory: %s", pikv_last_error());
    CHECK(pk_check_output_dir("/nonexistent-dir") == -1, "a missing directory");
    CHECK(pk_check_output_dir(file) == -1 && strstr(pikv_last_error(), "not a directory"), "a file as a directory");
    snprintf(path, sizeof path, "%s/new.csv", tmp);
    CHECK(pk_check_output_file(path) == 0, "a new file in a writable directory: %s", pikv_last_error());
    CHECK(entries_in(tmp) == 3, "no temporaries left beside the outputs (%d entries)", entries_in(tmp));
}

static void check_report_set(void)
{
    char dir[300], staging[300], path[400];
    snprintf(dir, sizeof dir, "%s/report", tmp);
    snprintf(staging, sizeof staging, "%s/report/.staging", tmp);
    mkdir(dir, 0700);
    mkdir(staging, 0700);
    const char *names[] = {"compare.json", "compare.csv"};
    snprintf(path, sizeof path, "%s/compare.json", dir);
    write_text(path, "old json");
    /* compare.csv cannot be replaced (it is a directory): nothing of the new set may land. */
    snprintf(path, sizeof path, "%s/compare.csv", dir);
    mkdir(path, 0700);
    for (int i = 0; i < 2; i++) {
        snprintf(path, sizeof path, "%s/%s", staging, names[i]);
        write_text(path, "new");
    }
    CHECK(pk_publish_dir(staging, dir, names, 2) == -1 && strstr(pikv_last_error(), "compare.csv"),
          "a set with an unreplaceable file fails: %s", pikv_last_error());
    snprintf(path, sizeof path, "%s/compare.json", dir);
    CHECK(strcmp(content(path), "old json") == 0, "the old compare.json is untouched ('%s')", content(path));
    snprintf(path, sizeof path, "%s/compare.csv", dir);
    rmdir(path);
    CHECK(pk_publish_dir(staging, dir, names, 2) == 0, "then the set moves in: %s", pikv_last_error());
    snprintf(path, sizeof path, "%s/compare.json", dir);
    CHECK(strcmp(content(path), "new") == 0, "new compare.json");
    snprintf(path, sizeof path, "%s/compare.csv", dir);
    CHECK(strcmp(content(path), "new") == 0, "new compare.csv");
    CHECK(entries_in(staging) == 0, "the staging directory is empty");
    rmdir(staging);
}

static void cleanup_handler(int sig)
{
    (void)sig;
    pk_cleanup_now();
}

static void check_cleanup_on_signal(void)
{
    char dir[300], file[400], kept[300];
    snprintf(dir, sizeof dir, "%s/.staging-signal", tmp);
    snprintf(file, sizeof file, "%s/compare.json.tmp-ABCDEF", dir);
    snprintf(kept, sizeof kept, "%s/kept.txt", tmp);
    mkdir(dir, 0700);
    write_text(file, "partial");
    write_text(kept, "kept");
    int a = pk_cleanup_register(dir, 1), b = pk_cleanup_register(file, 0), c = pk_cleanup_register(kept, 0);
    CHECK(a >= 0 && b >= 0 && c >= 0, "three paths registered");
    pk_cleanup_unregister(c); /* written and published: no longer a temporary */
    signal(SIGUSR1, cleanup_handler);
    raise(SIGUSR1);
    signal(SIGUSR1, SIG_DFL);
    struct stat sb;
    CHECK(stat(file, &sb) != 0 && errno == ENOENT, "the temporary file is gone");
    CHECK(stat(dir, &sb) != 0 && errno == ENOENT, "the staging directory is gone");
    CHECK(stat(kept, &sb) == 0, "an unregistered file stays");
    unlink(kept);
}

int main(void)
{
    snprintf(tmp, sizeof tmp, "/tmp/pikv-test-outputs-XXXXXX");
    if (!mkdtemp(tmp)) return 1;
    check_targets();
    check_report_set();
    check_cleanup_on_signal();
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmp);
    if (system(cmd)) fprintf(stderr, "could not remove %s\n", tmp);
    return check_done("outputs");
}
