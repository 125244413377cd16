/*
 * ref_echo_server.c -- a minimal native epoll echo server, used only to
 * measure the ceiling of the benchmark setup (run_benchmarks.py --ceiling).
 *
 * On loopback, the kernel work of a TCP round trip (copies, segment
 * processing, wakeups) is paid by whoever calls send/recv, so the load
 * generator spends about as much CPU per request as the server does.  With
 * a server that does nothing but recv/send, the requests/s reached here is
 * the most any event loop can show on this machine with this client: a
 * Python loop measured close to it is limited by the client, not by itself.
 *
 * Prints "READY <port>" like bench/servers.py and serves until killed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

static char buf[256 * 1024];

int main(int argc, char **argv)
{
    int port = argc > 1 ? atoi(argv[1]) : 0;
    int one = 1;
    signal(SIGPIPE, SIG_IGN);
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                               .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof addr;
    if (bind(lfd, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(lfd, 4096) < 0 ||
        getsockname(lfd, (struct sockaddr *)&addr, &alen) < 0) {
        perror("ref_echo_server");
        return 1;
    }
    printf("LOOP native-epoll\nREADY %d\n", ntohs(addr.sin_port));
    fflush(stdout);

    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = lfd}, events[512];
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    for (;;) {
        int n = epoll_wait(ep, events, 512, -1);
        if (n < 0 && errno != EINTR)
            return 1;
        for (int i = 0; i < n; i++) {
            int fd = events[i].data.fd;
            if (fd == lfd) {
                int c;
                while ((c = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
                    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    struct epoll_event cev = {.events = EPOLLIN, .data.fd = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, c, &cev);
                }
                continue;
            }
            ssize_t r = recv(fd, buf, sizeof buf, 0);
            if (r < 0 && (errno == EAGAIN || errno == EINTR))
                continue;
            if (r <= 0) {
                close(fd);
                continue;
            }
            for (ssize_t off = 0; off < r;) {
                ssize_t w = send(fd, buf + off, (size_t)(r - off), MSG_NOSIGNAL);
                if (w >= 0) {
                    off += w;
                } else if (errno == EAGAIN || errno == EINTR) {
                    /* Rare in ping-pong: wait for room rather than buffer. */
                    struct pollfd p = {.fd = fd, .events = POLLOUT};
                    if (poll(&p, 1, 5000) <= 0)
                        goto drop;
                } else {
                    goto drop;
                }
            }
            continue;
        drop:
            close(fd);
        }
    }
}
