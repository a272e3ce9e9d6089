/*
 * A limit for `cargo xtask bench`: how fast this machine can fork a child
 * that exits at once, and reap it, with nothing else around it.
 *
 *   forkrate COUNT SECONDS [MIB]
 *
 * Forks one child at a time; the child _exits at once and the parent reaps
 * it with waitpid before the next fork. Stops after COUNT children or
 * SECONDS, whichever comes first. With MIB, the parent first allocates and
 * touches that many MiB, as a larger server would (fork copies page tables,
 * so its cost grows with the parent's mapped memory).
 *
 * Prints one line: `forks N seconds S rate R` (R = N / S, forks a second).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* Where the touched memory is kept: a volatile global the compiler must honour. */
static char *volatile keep;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: forkrate COUNT SECONDS [MIB]\n");
        return 2;
    }
    long count = atol(argv[1]);
    double seconds = atof(argv[2]);
    long mib = argc > 3 ? atol(argv[3]) : 0;
    if (mib > 0) {
        size_t size = (size_t)mib << 20;
        char *memory = malloc(size);
        if (memory == NULL) { perror("malloc"); return 1; }
        memset(memory, 1, size);
        keep = memory; /* used, so the compiler keeps the pages touched */
    }
    double start = now(), elapsed = 0;
    long forks = 0;
    while (forks < count && elapsed < seconds) {
        pid_t pid = fork();
        if (pid < 0) { perror("fork"); return 1; }
        if (pid == 0) _exit(0);
        int status;
        if (waitpid(pid, &status, 0) != pid) { perror("waitpid"); return 1; }
        forks++;
        elapsed = now() - start;
    }
    printf("forks %ld seconds %.6f rate %.1f\n", forks, elapsed, elapsed > 0 ? forks / elapsed : 0.0);
    return 0;
}
