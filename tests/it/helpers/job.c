/* job: a static test job for places without a shell (an empty chroot, a FROM scratch image).
 * Built by the tests with `cc -static`. Every mode prints its lines on stdout, then waits for a
 * signal (SIGTERM ends it) unless said otherwise:
 *
 *   job id              "uid=U gid=G groups=N user=USER home=HOME"
 *   job say TEXT...     the words, one line
 *   job orphans N       N times: fork a child that forks a grandchild and exits at once; the
 *                       grandchild (an orphan, reparented to the supervisor) exits after 100 ms
 *                       and must be reaped by it. Prints "orphans N" when all were forked.
 *   job exit CODE       exits with CODE at once
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void wait_for_signal(void) {
    for (;;) pause();
}

static void nap_ms(long ms) {
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
    nanosleep(&ts, NULL);
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    const char *mode = argc > 1 ? argv[1] : "";
    if (strcmp(mode, "id") == 0) {
        const char *user = getenv("USER"), *home = getenv("HOME");
        printf("uid=%d gid=%d groups=%d user=%s home=%s\n", (int)getuid(), (int)getgid(), getgroups(0, NULL),
               user ? user : "-", home ? home : "-");
    } else if (strcmp(mode, "say") == 0) {
        for (int i = 2; i < argc; i++) printf(i + 1 < argc ? "%s " : "%s\n", argv[i]);
    } else if (strcmp(mode, "orphans") == 0 && argc > 2) {
        int n = atoi(argv[2]);
        for (int i = 0; i < n; i++) {
            pid_t child = fork();
            if (child == 0) {
                if (fork() == 0) {
                    nap_ms(100);
                    _exit(0);
                }
                _exit(0);
            }
            if (child > 0) waitpid(child, NULL, 0);
        }
        printf("orphans %d\n", n);
    } else if (strcmp(mode, "exit") == 0 && argc > 2) {
        return atoi(argv[2]);
    } else {
        fprintf(stderr, "usage: job id | say TEXT... | orphans N | exit CODE\n");
        return 2;
    }
    wait_for_signal();
    return 0;
}
