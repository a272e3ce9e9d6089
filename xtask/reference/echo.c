/*
 * The C reference for `cargo xtask bench`: the textbook fork-per-connection
 * echo server, as a Unix network programming course writes it.
 *
 *   echo [PORT]     PORT defaults to 0 (any free port); binds 127.0.0.1
 *
 * socket, bind, listen(128), then an accept loop that forks one child per
 * client; the child closes the listener, copies with blocking read/write
 * through a 64 KiB buffer until end of file, closes and _exits. A SIGCHLD
 * handler reaps every finished child with waitpid(WNOHANG) in a loop. Once
 * listening it prints the port, alone on a line, on standard output.
 *
 * It is deliberately plain: no logging, no limits, no idle timeout. What it
 * adds to the textbook is only what a benchmark needs not to crash: accept
 * and fork failures are retried, not fatal.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#define BUFSIZE (64 * 1024)

static void reap(int signo) {
    int saved = errno;
    (void)signo;
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
    errno = saved;
}

/* Echoes until end of file; returns when the peer is done or on an error. */
static void serve(int fd) {
    char buf[BUFSIZE];
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return;
        for (ssize_t off = 0; off < n;) {
            ssize_t w = write(fd, buf + off, (size_t)(n - off));
            if (w < 0 && errno == EINTR) continue;
            if (w <= 0) return;
            off += w;
        }
    }
}

int main(int argc, char **argv) {
    int port = argc > 1 ? atoi(argv[1]) : 0;
    int listenfd = socket(AF_INET, SOCK_STREAM, 0);
    if (listenfd < 0) { perror("socket"); return 1; }
    int one = 1;
    setsockopt(listenfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons((unsigned short)port);
    if (bind(listenfd, (struct sockaddr *)&addr, sizeof addr) < 0) { perror("bind"); return 1; }
    if (listen(listenfd, 128) < 0) { perror("listen"); return 1; }
    socklen_t len = sizeof addr;
    if (getsockname(listenfd, (struct sockaddr *)&addr, &len) < 0) { perror("getsockname"); return 1; }

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = reap;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    sigaction(SIGCHLD, &sa, NULL);

    printf("%d\n", ntohs(addr.sin_port));
    fflush(stdout);

    for (;;) {
        int connfd = accept(listenfd, NULL, NULL);
        if (connfd < 0) {
            if (errno == EINTR || errno == ECONNABORTED) continue;
            perror("accept");
            usleep(10000); /* EMFILE and friends: wait, then retry */
            continue;
        }
        pid_t pid = fork();
        if (pid == 0) {
            close(listenfd);
            serve(connfd);
            close(connfd);
            _exit(0);
        }
        if (pid < 0) perror("fork");
        close(connfd);
    }
}
