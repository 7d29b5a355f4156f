/* reapbench: zombie reaping by PID 1 of a PID namespace.
 *
 * Run as the only job of the init under test, inside
 * `unshare --pid --fork --mount-proc` (so /proc shows the namespace only):
 *
 *   reapbench MODE N OUT [--term-init] [--timeout SECONDS]
 *
 * It forks a "spawner" whose descendants end up as orphans of PID 1 (nothing
 * in between is a subreaper):
 *
 *   zombies  the spawner forks N children that exit at once, waits until all
 *            of them are dead (zombies it does not reap), then exits: PID 1
 *            inherits N zombies in one go. Clock: from the spawner's exit
 *            (our waitpid returned; the kernel reparents before that) until
 *            the namespace holds no process beyond those present before the
 *            spawner (PID 1, its helpers, us). Pure reaping throughput.
 *            Progress is read with readdir(/proc) only, which stays cheap.
 *   stream   the spawner double-forks N times as fast as it can (a child that
 *            forks a grandchild and exits at once, as daemons do); each
 *            grandchild exits at once, so a stream of orphans reaches PID 1.
 *            Peak zombies = most zombies (state Z, parent 1) seen at one
 *            time, sampled while the stream runs; lag = from the spawner's
 *            exit (last orphan made) until everything is reaped.
 *
 * Appends one JSON line to OUT. With --term-init it then sends SIGTERM to
 * PID 1 (supervisord and corral exit on it; tini and dumb-init exit with us).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Processes in /proc; with `zombies`, also count those in state Z whose
 * parent is PID 1 (one read of /proc/PID/stat each). */
static int scan(int *zombies) {
    DIR *d = opendir("/proc");
    if (!d) return -1;
    int n = 0, z = 0;
    struct dirent *e;
    char path[300], buf[512];
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] < '1' || e->d_name[0] > '9') continue;
        n++;
        if (!zombies) continue;
        snprintf(path, sizeof path, "/proc/%s/stat", e->d_name);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) continue;
        ssize_t r = read(fd, buf, sizeof buf - 1);
        close(fd);
        if (r <= 0) continue;
        buf[r] = 0;
        char *p = strrchr(buf, ')');
        char state;
        int ppid;
        if (p && sscanf(p + 2, "%c %d", &state, &ppid) == 2 && state == 'Z' && ppid == 1) z++;
    }
    closedir(d);
    if (zombies) *zombies = z;
    return n;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: reapbench zombies|stream N OUT [--term-init] [--timeout SECONDS]\n");
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
    int stream = strcmp(mode, "stream") == 0;
    if (!stream && strcmp(mode, "zombies") != 0) {
        fprintf(stderr, "reapbench: unknown mode %s\n", mode);
        return 2;
    }

    /* spawner -> us: the number of orphans it made */
    int rep[2];
    if (pipe(rep) != 0) { perror("pipe"); return 1; }

    usleep(200000); /* let PID 1 settle */
    int baseline = scan(NULL);

    long long t_start = now_ns();
    pid_t spawner = fork();
    if (spawner < 0) { perror("fork"); return 1; }
    if (spawner == 0) {
        close(rep[0]);
        int made = 0;
        if (stream) {
            for (int i = 0; i < n; i++) {
                pid_t c = fork();
                if (c == 0) {
                    if (fork() < 0) _exit(1); /* the grandchild exits at once too */
                    _exit(0);
                }
                if (c < 0) {
                    if (errno == EAGAIN) { usleep(1000); i--; continue; }
                    break;
                }
                int st;
                while (waitpid(c, &st, 0) < 0 && errno == EINTR) {}
                if (WIFEXITED(st) && WEXITSTATUS(st) == 0) made++;
            }
        } else {
            for (int i = 0; i < n; i++) {
                pid_t c = fork();
                if (c == 0) _exit(0);
                if (c < 0) {
                    if (errno == EAGAIN) { usleep(1000); i--; continue; }
                    break;
                }
                made++;
            }
            /* wait until every child is dead: waitid(WNOWAIT) reports a
             * zombie without reaping it, so poll /proc/self/task/.../children
             * is not needed: count the zombies among our children instead */
            for (;;) {
                int z = 0, all = 0;
                char path[64];
                snprintf(path, sizeof path, "/proc/%d/task/%d/children", getpid(), getpid());
                FILE *f = fopen(path, "r");
                if (!f) break;
                int pid;
                while (fscanf(f, "%d", &pid) == 1) {
                    char sp[64], buf[256];
                    all++;
                    snprintf(sp, sizeof sp, "/proc/%d/stat", pid);
                    int fd = open(sp, O_RDONLY);
                    if (fd < 0) continue;
                    ssize_t r = read(fd, buf, sizeof buf - 1);
                    close(fd);
                    if (r > 0) {
                        buf[r] = 0;
                        char *p = strrchr(buf, ')');
                        if (p && p[2] == 'Z') z++;
                    }
                }
                fclose(f);
                if (z == all) break;
                usleep(10000);
            }
        }
        if (write(rep[1], &made, sizeof made) != sizeof made) _exit(1);
        _exit(0);
    }
    close(rep[1]);

    /* --timeout counts from the spawner's exit; making the orphans may take
     * up to 120 s more (stream mode: about 0.5 ms per double fork) */
    long long limit = (long long)(timeout_s * 1e9);
    int peak = 0, made = 0, left = 0, timed_out = 0;
    long long t_spawned = 0;
    int st;
    if (!stream) {
        while (waitpid(spawner, &st, 0) < 0 && errno == EINTR) {}
        t_spawned = now_ns();
    }
    for (;;) {
        if (stream && !t_spawned) {
            pid_t w = waitpid(spawner, &st, WNOHANG);
            if (w == spawner) t_spawned = now_ns();
        }
        int z = 0;
        int procs = scan(stream ? &z : NULL) - baseline;
        if (!stream) z = procs; /* nothing but zombies is left */
        if (z > peak) peak = z;
        if (t_spawned && procs <= 0) break;
        long long t = now_ns();
        if ((t_spawned && t - t_spawned > limit) || t - t_start > limit + 120000000000LL) {
            left = procs;
            timed_out = 1;
            break;
        }
        usleep(200);
    }
    long long t_end = now_ns();
    if (read(rep[0], &made, sizeof made) != sizeof made) made = -1;

    FILE *f = fopen(out, "a");
    if (f) {
        fprintf(f, "{\"mode\":\"%s\",\"n\":%d,\"forked\":%d,\"spawn_ms\":%.1f,\"reap_ms\":%.3f,"
                   "\"total_ms\":%.1f,\"peak_zombies\":%d,\"left\":%d,\"timed_out\":%s,\"baseline\":%d}\n",
                mode, n, made, t_spawned ? (t_spawned - t_start) / 1e6 : -1.0,
                t_spawned ? (t_end - t_spawned) / 1e6 : -1.0, (t_end - t_start) / 1e6, peak, left,
                timed_out ? "true" : "false", baseline);
        fclose(f);
    }
    if (term_init) kill(1, SIGTERM);
    return 0;
}
