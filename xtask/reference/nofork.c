/*
 * A limit for `cargo xtask bench`: the same echo as echo.c without fork.
 * One process accepts a client, echoes until end of file, closes, and only
 * then accepts the next: the cost of a connection once no process is made
 * for it, the ceiling a fork-per-connection server can approach.
 *
 *   nofork [PORT]   PORT defaults to 0 (any free port); binds 127.0.0.1
 *
 * Once listening it prints the port, alone on a line, on standard output.
 * Clients wait in the backlog while another is served, so it suits only
 * short connections (the bench runs connrate and latency on it).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUFSIZE (64 * 1024)

static char buf[BUFSIZE];

static void serve(int fd) {
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
    /* A client that resets must not kill the only process with SIGPIPE. */
    signal(SIGPIPE, SIG_IGN);
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
    printf("%d\n", ntohs(addr.sin_port));
    fflush(stdout);

    for (;;) {
        int connfd = accept(listenfd, NULL, NULL);
        if (connfd < 0) {
            if (errno == EINTR || errno == ECONNABORTED) continue;
            perror("accept");
            usleep(10000);
            continue;
        }
        serve(connfd);
        close(connfd);
    }
}
