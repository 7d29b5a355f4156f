/* benchjob: the one job every supervisor in the benchmark runs.
 *
 * Driven by the environment, because s6 and runit run `./run` without
 * arguments (their `run` is a symlink to this binary):
 *
 *   BENCH_MODE   sleep (default)   stamp, then wait for a signal (SIGTERM ends it)
 *                ignore-term       same, but SIGTERM is ignored (needs SIGKILL)
 *                crash             stamp, stay up BENCH_UPTIME_MS, stamp again, exit 1
 *   BENCH_STAMP  file that gets one line per event, appended with O_APPEND
 *                (one write(2) per line, so lines from many jobs never mix):
 *                "S <CLOCK_MONOTONIC ns> <pid>" at start,
 *                "E <CLOCK_MONOTONIC ns> <pid>" just before a crash exit
 *   BENCH_LOCK   file held with flock(LOCK_SH) while the job lives, so the
 *                harness learns that every job has exited by taking LOCK_EX
 *   BENCH_UPTIME_MS  crash mode: how long to stay up before exiting (default 0)
 *   BENCH_NOTIFY_FD  s6 only (its notification-fd): write "\n" there once
 *                started, so s6-supervise knows the job is ready
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void stamp(const char *path, char kind) {
    if (!path || !*path) return;
    char line[64];
    int n = snprintf(line, sizeof line, "%c %lld %d\n", kind, now_ns(), (int)getpid());
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) return;
    if (write(fd, line, (size_t)n) != n) { /* nothing to do: a lost stamp shows as a missing sample */ }
    close(fd);
}

int main(void) {
    const char *mode = getenv("BENCH_MODE");
    const char *stampf = getenv("BENCH_STAMP");
    const char *lockf = getenv("BENCH_LOCK");
    if (!mode || !*mode) mode = "sleep";

    if (strcmp(mode, "ignore-term") == 0) signal(SIGTERM, SIG_IGN);
    if (lockf && *lockf) {
        int fd = open(lockf, O_RDONLY | O_CREAT | O_CLOEXEC, 0644);
        if (fd >= 0) flock(fd, LOCK_SH); /* kept open until exit */
    }
    stamp(stampf, 'S');
    const char *nfd = getenv("BENCH_NOTIFY_FD");
    if (nfd && *nfd) {
        int fd = atoi(nfd);
        if (write(fd, "\n", 1) == 1) close(fd);
    }

    if (strcmp(mode, "crash") == 0) {
        const char *up = getenv("BENCH_UPTIME_MS");
        long ms = up ? atol(up) : 0;
        if (ms > 0) {
            struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
            while (nanosleep(&ts, &ts) != 0) {}
        }
        stamp(stampf, 'E');
        _exit(1);
    }
    for (;;) pause();
}
