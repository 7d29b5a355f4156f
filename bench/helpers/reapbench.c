/* reapbench: zombie reaping by PID 1 of a PID namespace.
 *
 * Run as the only job of the init under test, inside
 * `unshare --pid --fork --mount-proc` (so /proc shows the namespace only):
 *
 *   reapbench MODE N OUT [--term-init]
 *
 * It forks a "spawner", which forks N grandchildren and then exits, so the
 * grandchildren are reparented to PID 1 (nothing in between is a subreaper).
 *
 *   MODE zombies  the grandchildren exit at once; the spawner waits until all
 *                 of them are dead (zombies it does not reap), then exits:
 *                 PID 1 inherits N zombies in one go. Measures pure reaping.
 *   MODE release  the grandchildren block on a pipe whose only writer is the
 *                 spawner; its exit releases all N at once, and they exit
 *                 while PID 1 reaps them. Peak zombies = how far PID 1 lags.
 *
 * Clock starts when the spawner has exited (waitpid returned: by then the
 * kernel has reparented its children) and stops when the namespace holds no
 * process beyond those present before the spawner (PID 1, its helpers, us).
 * Zombies are counted as (processes in /proc beyond that baseline) minus
 * (grandchildren still alive, a counter in shared memory that each one
 * decrements just before _exit).  Appends one JSON line to OUT.
 * With --term-init, it then sends SIGTERM to PID 1 (supervisord, corral).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int count_procs(void) {
    DIR *d = opendir("/proc");
    if (!d) return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (e->d_name[0] >= '1' && e->d_name[0] <= '9') n++;
    closedir(d);
    return n;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: reapbench zombies|release N OUT [--term-init] [--timeout SECONDS]\n");
        return 2;
    }
    const char *mode = argv[1];
    int n = atoi(argv[2]);
    const char *out = argv[3];
    int term_init = 0;
    double timeout_s = 60;
    for (int i = 4; i < argc; i++) {
        if (strcmp(argv[i], "--term-init") == 0) term_init = 1;
        else if (strcmp(argv[i], "--timeout") == 0 && i + 1 < argc) timeout_s = atof(argv[++i]);
    }
    int release = strcmp(mode, "release") == 0;

    /* shared: [0] grandchildren alive, [1] grandchildren forked */
    atomic_int *sh = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (sh == MAP_FAILED) { perror("mmap"); return 1; }
    atomic_store(&sh[0], 0);
    atomic_store(&sh[1], 0);

    /* Let PID 1 settle (tini/dumb-init/corral have just started us). */
    usleep(200000);
    int baseline = count_procs();

    int p[2];
    if (pipe(p) != 0) { perror("pipe"); return 1; }
    long long t_fork = now_ns();
    pid_t spawner = fork();
    if (spawner < 0) { perror("fork"); return 1; }
    if (spawner == 0) {
        for (int i = 0; i < n; i++) {
            atomic_fetch_add(&sh[0], 1);
            pid_t c = fork();
            if (c == 0) {
                if (release) {
                    /* the spawner's p[1] must be the only writer left */
                    char b;
                    close(p[1]);
                    while (read(p[0], &b, 1) < 0 && errno == EINTR) {}
                }
                atomic_fetch_sub(&sh[0], 1);
                _exit(0);
            }
            if (c < 0) {
                atomic_fetch_sub(&sh[0], 1);
                if (errno == EAGAIN) { usleep(1000); i--; continue; }
                break;
            }
            atomic_fetch_add(&sh[1], 1);
        }
        if (!release) {
            /* wait until every grandchild has died (zombies, not reaped) */
            while (atomic_load(&sh[0]) > 0) usleep(1000);
            usleep(50000);
        }
        _exit(0);
    }
    close(p[0]);
    close(p[1]);
    int st;
    while (waitpid(spawner, &st, 0) < 0 && errno == EINTR) {}
    long long t0 = now_ns();

    int peak = 0, left = 0, timed_out = 0;
    long long deadline = t0 + (long long)(timeout_s * 1e9);
    for (;;) {
        int procs = count_procs() - baseline;
        int alive = atomic_load(&sh[0]);
        int zombies = procs - alive;
        if (zombies > peak) peak = zombies;
        if (procs <= 0) { left = 0; break; }
        if (now_ns() > deadline) { left = procs; timed_out = 1; break; }
        usleep(200);
    }
    long long t1 = now_ns();

    FILE *f = fopen(out, "a");
    if (f) {
        fprintf(f, "{\"mode\":\"%s\",\"n\":%d,\"forked\":%d,\"fork_ms\":%.1f,\"reap_ms\":%.3f,"
                   "\"peak_zombies\":%d,\"left\":%d,\"timed_out\":%s,\"baseline\":%d}\n",
                mode, n, atomic_load(&sh[1]), (t0 - t_fork) / 1e6, (t1 - t0) / 1e6, peak, left,
                timed_out ? "true" : "false", baseline);
        fclose(f);
    }
    if (term_init) kill(1, SIGTERM);
    return 0;
}
