/* The child that bench/run's wrappers supervise, for the measurements that need
 * microseconds: no interpreter between the event and the clock.
 *
 *   child signals SIGNO...   On stdout, one 16-byte record per watched signal that reaches
 *                            the handler: the signal number and the CLOCK_MONOTONIC time at
 *                            the handler's entry in ns (two native int64s); first a record
 *                            with signal 0 once the handlers are installed. A watched signal
 *                            does nothing else (a watched SIGTERM is in effect ignored); the
 *                            others keep their default action.
 *   child orphans N          As the child of PID 1 in a PID namespace: makes N orphans (their
 *                            parent exits, so they go to PID 1), lets them all exit at once,
 *                            and polls PID 1's children until none is left. Prints the peak
 *                            number of zombies seen, the ms from the release to zero, and the
 *                            number of polls.
 *
 * Bounded: SIGALRM (default action) ends the child after 300 s whatever happens. */
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int64_t now_ns(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (int64_t)now.tv_sec * 1000000000 + now.tv_nsec;
}

static void report(int sig) {
    int64_t record[2] = {sig, now_ns()};
    /* One write(2) of 16 bytes to a pipe is atomic. */
    if (write(STDOUT_FILENO, record, sizeof record) != sizeof record) {
        _exit(3);
    }
}

static int signals(int count, char **numbers) {
    struct sigaction action = {0};
    action.sa_handler = report;
    sigemptyset(&action.sa_mask);
    action.sa_flags = SA_RESTART;
    for (int i = 0; i < count; i++) {
        if (sigaction(atoi(numbers[i]), &action, NULL) != 0) {
            return 2;
        }
    }
    report(0);
    for (;;) {
        pause();
    }
}

/* The pids of PID 1's children, but ours, into `pids` (at most `max`); how many. */
static int orphans_of_init(int *pids, int max) {
    static char text[1 << 20];
    FILE *f = fopen("/proc/1/task/1/children", "r");
    if (!f) {
        perror("/proc/1/task/1/children");
        exit(1);
    }
    size_t len = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[len] = 0;
    int n = 0, me = getpid();
    for (char *word = strtok(text, " \n"); word && n < max; word = strtok(NULL, " \n")) {
        int pid = atoi(word);
        if (pid != me) {
            pids[n++] = pid;
        }
    }
    return n;
}

static int is_zombie(int pid) {
    char path[64], stat[512];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f) {
        return 0; /* reaped meanwhile */
    }
    size_t len = fread(stat, 1, sizeof stat - 1, f);
    fclose(f);
    stat[len] = 0;
    char *name_end = strrchr(stat, ')');
    return name_end && name_end[1] == ' ' && name_end[2] == 'Z';
}

static int orphans(int n) {
    static int pids[100000];
    if (n < 1 || n > 100000) {
        return 2;
    }
    int release[2];
    if (pipe(release) != 0) {
        return 1;
    }
    pid_t middle = fork();
    if (middle == 0) {
        for (int i = 0; i < n; i++) {
            pid_t pid = fork();
            if (pid == 0) {
                char byte;
                close(release[1]);
                (void)!read(release[0], &byte, 1); /* EOF once the last write end closes */
                _exit(0);
            }
            if (pid < 0) {
                perror("fork");
                _exit(1);
            }
        }
        _exit(0);
    }
    int status;
    if (middle < 0 || waitpid(middle, &status, 0) != middle || status != 0) {
        fprintf(stderr, "could not make %d orphans\n", n);
        return 1;
    }
    close(release[0]);
    int64_t deadline = now_ns() + 30 * 1000000000LL;
    while (orphans_of_init(pids, n + 1) < n) {
        if (now_ns() > deadline) {
            fprintf(stderr, "the orphans did not all come to PID 1\n");
            return 1;
        }
        usleep(1000);
    }
    int64_t released = now_ns();
    close(release[1]); /* every orphan's read() returns: they all exit at once */
    int peak = 0, polls = 0;
    for (;;) {
        int left = orphans_of_init(pids, n + 1), zombies = 0;
        polls++;
        for (int i = 0; i < left; i++) {
            zombies += is_zombie(pids[i]);
        }
        if (zombies > peak) {
            peak = zombies;
        }
        if (left == 0) {
            break;
        }
        if (now_ns() > released + 30 * 1000000000LL) {
            fprintf(stderr, "%d orphans still unreaped after 30 s\n", left);
            return 1;
        }
    }
    printf("%d %.3f %d\n", peak, (now_ns() - released) / 1e6, polls);
    return 0;
}

int main(int argc, char **argv) {
    alarm(300);
    if (argc >= 2 && strcmp(argv[1], "signals") == 0) {
        return signals(argc - 2, argv + 2);
    }
    if (argc == 3 && strcmp(argv[1], "orphans") == 0) {
        return orphans(atoi(argv[2]));
    }
    fprintf(stderr, "usage: child signals SIGNO... | child orphans N\n");
    return 2;
}
