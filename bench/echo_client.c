/*
 * echo_client.c -- ping-pong load generator for the aiouring echo benchmarks.
 *
 * One thread, one epoll instance, N nonblocking TCP connections.  Each
 * connection keeps exactly one message in flight: it sends S bytes, waits
 * until all S bytes have come back, checks every byte, records the round
 * trip time, and sends the next message.
 *
 * Verification.  Message k on connection c is a 16-byte header (magic,
 * connection index, sequence number) followed by bytes taken from a fixed
 * pseudo-random pattern at an offset that depends on (c, k).  The client
 * keeps the message it sent and memcmp()s every received chunk against the
 * matching slice of it, so a lost, duplicated, reordered or foreign byte is
 * a mismatch.  A mismatch or an early EOF counts as an error and the
 * connection is closed (the run goes on with the others).
 *
 * Phases.  Connect all N (with a timeout), run --warmup seconds unmeasured,
 * then --duration seconds measured.  Only round trips that complete inside
 * the measured window are counted; CPU time (getrusage) is taken over the
 * same window so the runner can tell when this client, not the server, is
 * the bottleneck.
 *
 * Latency is kept in a log-linear histogram (64 sub-buckets per power of
 * two, so about 1.5% resolution) of nanoseconds.
 *
 * Output: one JSON object on stdout.  Exit status 0 if the run happened
 * (even with errors; the JSON says how many), 2 for bad arguments, 1 if no
 * connection could be established.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define HDR_LEN 16
#define HDR_MAGIC 0x4f484345u /* "ECHO" little-endian */
#define PATTERN_SLACK 4096    /* number of distinct pattern offsets */
#define RECV_CHUNK (256 * 1024)
#define MAX_EVENTS 1024

/* ---- histogram ---------------------------------------------------------- */

#define SUB_BITS 6
#define SUB_COUNT (1 << SUB_BITS)
#define SUB_HALF (SUB_COUNT / 2)
#define HIST_BUCKETS (SUB_HALF * 66)

static uint64_t hist[HIST_BUCKETS];

/*
 * Values below SUB_COUNT get one bucket each.  Above, with shift = msb -
 * SUB_BITS + 1 >= 1, (v >> shift) lies in [SUB_HALF, SUB_COUNT), and bucket
 * shift * SUB_HALF + (v >> shift) covers [(shift+1)*SUB_HALF, (shift+2)*SUB_HALF):
 * the ranges for successive shifts follow each other without a gap.
 */
static int hist_index(uint64_t v)
{
    if (v < SUB_COUNT)
        return (int)v;
    int msb = 63 - __builtin_clzll(v);
    int shift = msb - SUB_BITS + 1;
    return shift * SUB_HALF + (int)(v >> shift);
}

/* Smallest value that falls into bucket i (inverse of hist_index). */
static uint64_t hist_value(int i)
{
    if (i < SUB_COUNT)
        return (uint64_t)i;
    int shift = i / SUB_HALF - 1;
    return (uint64_t)(i - shift * SUB_HALF) << shift;
}

static void hist_add(uint64_t v)
{
    int i = hist_index(v);
    if (i >= HIST_BUCKETS)
        i = HIST_BUCKETS - 1;
    hist[i]++;
}

static uint64_t hist_percentile(uint64_t total, double pct)
{
    if (total == 0)
        return 0;
    uint64_t rank = (uint64_t)((double)total * pct / 100.0);
    if (rank >= total)
        rank = total - 1;
    uint64_t seen = 0;
    for (int i = 0; i < HIST_BUCKETS; i++) {
        seen += hist[i];
        if (seen > rank) {
            /* report the middle of the bucket */
            uint64_t lo = hist_value(i);
            uint64_t hi = (i + 1 < HIST_BUCKETS) ? hist_value(i + 1) : lo;
            if (hi < lo)
                hi = lo;
            return lo + (hi - lo) / 2;
        }
    }
    return 0;
}

/* ---- connections ---------------------------------------------------------- */

enum conn_state { C_CONNECTING, C_RUNNING, C_DEAD };

struct conn {
    int fd;
    uint32_t index;
    enum conn_state state;
    uint64_t seq;          /* sequence number of the message in flight */
    size_t sent;           /* bytes of the current message sent */
    size_t received;       /* bytes of the current message received and checked */
    uint64_t t_start;      /* ns, when the current message started */
    int want_out;          /* EPOLLOUT registered */
    size_t off;            /* pattern offset of the message in flight */
    unsigned char hdr[HDR_LEN]; /* header of the message in flight */
};

static struct {
    const char *host;
    const char *port;
    int conns;
    size_t size;
    double duration;
    double warmup;
    double connect_timeout;
    double request_timeout;
} opt = {"127.0.0.1", NULL, 10, 1024, 5.0, 1.0, 10.0, 5.0};

static unsigned char *pattern;
static int epfd;
static struct conn *conns;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static double cpu_seconds(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

/* statistics; "measuring" gates what is counted */
static int measuring;
static uint64_t st_requests, st_bytes_sent, st_bytes_recv, st_hist_total;
static uint64_t st_lat_max, st_lat_sum;
/* errors are counted over the whole run, warmup included */
static uint64_t err_mismatch, err_eof, err_reset, err_other, err_connect, err_timeout;
static char first_error[256];

static void note_error(const char *what, struct conn *c, int err)
{
    if (first_error[0] == 0)
        snprintf(first_error, sizeof first_error, "conn %u: %s%s%s", c->index, what,
                 err ? ": " : "", err ? strerror(err) : "");
}

/*
 * The message in flight is hdr[0..16) followed by pattern[off+16 .. off+size):
 * it is never materialised, sendmsg() gathers it and the receive path
 * compares against the same two pieces (no per-message memcpy).
 */
static void make_message(struct conn *c)
{
    /* offset depends on both connection and sequence number */
    uint64_t mix = (c->seq * 0x9E3779B97F4A7C15ull) ^ ((uint64_t)c->index * 0xC2B2AE3D27D4EB4Full);
    c->off = (size_t)((mix >> 29) % PATTERN_SLACK);
    uint32_t magic = HDR_MAGIC;
    memcpy(c->hdr, &magic, 4);
    memcpy(c->hdr + 4, &c->index, 4);
    memcpy(c->hdr + 8, &c->seq, 8);
    c->sent = 0;
    c->received = 0;
}

/* Compare buf[0..len) with bytes [pos, pos+len) of c's message; return the
 * index of the first differing byte, or len if all match. */
static size_t check_bytes(const struct conn *c, size_t pos, const unsigned char *buf, size_t len)
{
    size_t i = 0;
    for (; i < len && pos + i < HDR_LEN; i++)
        if (buf[i] != c->hdr[pos + i])
            return i;
    if (i < len && memcmp(buf + i, pattern + c->off + pos + i, len - i) != 0) {
        for (; i < len; i++)
            if (buf[i] != pattern[c->off + pos + i])
                return i;
    }
    return len;
}

static void set_events(struct conn *c, int want_out)
{
    if (c->want_out == want_out)
        return;
    struct epoll_event ev = {.events = EPOLLIN | (want_out ? EPOLLOUT : 0), .data.ptr = c};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
    c->want_out = want_out;
}

static void kill_conn(struct conn *c)
{
    if (c->state == C_DEAD)
        return;
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->fd = -1;
    c->state = C_DEAD;
}

/* Send as much of the current message as the socket takes. */
static void do_send(struct conn *c)
{
    while (c->sent < opt.size) {
        struct iovec iov[2];
        int niov = 0;
        if (c->sent < HDR_LEN && c->sent < opt.size) {
            size_t end = opt.size < HDR_LEN ? opt.size : HDR_LEN;
            iov[niov].iov_base = c->hdr + c->sent;
            iov[niov].iov_len = end - c->sent;
            niov++;
        }
        size_t from = c->sent > HDR_LEN ? c->sent : HDR_LEN;
        if (from < opt.size) {
            iov[niov].iov_base = pattern + c->off + from;
            iov[niov].iov_len = opt.size - from;
            niov++;
        }
        struct msghdr mh = {.msg_iov = iov, .msg_iovlen = (size_t)niov};
        ssize_t n = sendmsg(c->fd, &mh, MSG_NOSIGNAL);
        if (n > 0) {
            c->sent += (size_t)n;
            if (measuring)
                st_bytes_sent += (uint64_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            set_events(c, 1);
            return;
        }
        if (errno == ECONNRESET || errno == EPIPE)
            err_reset++;
        else
            err_other++;
        note_error("send", c, errno);
        kill_conn(c);
        return;
    }
    set_events(c, 0);
}

static void start_message(struct conn *c)
{
    make_message(c);
    c->t_start = now_ns();
    do_send(c);
}

static unsigned char rbuf[RECV_CHUNK];

static void do_recv(struct conn *c)
{
    for (;;) {
        ssize_t n = recv(c->fd, rbuf, sizeof rbuf, 0);
        if (n > 0) {
            size_t got = (size_t)n;
            if (c->received + got > c->sent) {
                /* more bytes than we have sent: the server invented data */
                err_mismatch++;
                note_error("received more bytes than sent", c, 0);
                kill_conn(c);
                return;
            }
            size_t i = check_bytes(c, c->received, rbuf, got);
            if (i != got) {
                err_mismatch++;
                char what[128];
                snprintf(what, sizeof what, "byte mismatch at offset %zu of message %llu",
                         c->received + i, (unsigned long long)c->seq);
                note_error(what, c, 0);
                kill_conn(c);
                return;
            }
            c->received += got;
            if (measuring)
                st_bytes_recv += got;
            if (c->received == opt.size) {
                uint64_t t = now_ns() - c->t_start;
                if (measuring) {
                    st_requests++;
                    hist_add(t);
                    st_hist_total++;
                    st_lat_sum += t;
                    if (t > st_lat_max)
                        st_lat_max = t;
                }
                c->seq++;
                start_message(c);
                if (c->state == C_DEAD)
                    return;
                /* Ping-pong: the echo cannot be there yet, go back to epoll. */
                return;
            }
            if ((size_t)n < sizeof rbuf)
                return; /* likely drained; level-triggered epoll will tell us */
            continue;
        }
        if (n == 0) {
            err_eof++;
            note_error("server closed the connection", c, 0);
            kill_conn(c);
            return;
        }
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return;
        if (errno == ECONNRESET)
            err_reset++;
        else
            err_other++;
        note_error("recv", c, errno);
        kill_conn(c);
        return;
    }
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: echo_client --port P [--host H] [--conns N] [--size BYTES]\n"
            "                   [--duration SEC] [--warmup SEC] [--connect-timeout SEC]\n"
            "                   [--request-timeout SEC]\n");
}

static int parse_args(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"host", required_argument, 0, 'h'},
        {"port", required_argument, 0, 'p'},
        {"conns", required_argument, 0, 'c'},
        {"size", required_argument, 0, 's'},
        {"duration", required_argument, 0, 'd'},
        {"warmup", required_argument, 0, 'w'},
        {"connect-timeout", required_argument, 0, 't'},
        {"request-timeout", required_argument, 0, 'r'},
        {"help", no_argument, 0, '?'},
        {0, 0, 0, 0},
    };
    int ch;
    while ((ch = getopt_long(argc, argv, "h:p:c:s:d:w:t:r:", longopts, NULL)) != -1) {
        switch (ch) {
        case 'h': opt.host = optarg; break;
        case 'p': opt.port = optarg; break;
        case 'c': opt.conns = atoi(optarg); break;
        case 's': opt.size = (size_t)strtoull(optarg, NULL, 10); break;
        case 'd': opt.duration = atof(optarg); break;
        case 'w': opt.warmup = atof(optarg); break;
        case 't': opt.connect_timeout = atof(optarg); break;
        case 'r': opt.request_timeout = atof(optarg); break;
        default: usage(stderr); return -1;
        }
    }
    if (!opt.port || opt.conns <= 0 || opt.size == 0 || opt.duration <= 0 || opt.warmup < 0) {
        usage(stderr);
        return -1;
    }
    return 0;
}

static void raise_nofile(int need)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (rlim_t)need) {
        rl.rlim_cur = rl.rlim_max < (rlim_t)need ? rl.rlim_max : (rlim_t)need;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static int epoll_timeout_ms(uint64_t deadline)
{
    uint64_t t = now_ns();
    if (t >= deadline)
        return 0;
    uint64_t ms = (deadline - t + 999999) / 1000000;
    return ms > 1000 ? 1000 : (int)ms;
}

int main(int argc, char **argv)
{
    if (parse_args(argc, argv) < 0)
        return 2;
    signal(SIGPIPE, SIG_IGN);
    raise_nofile(opt.conns + 64);

    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *ai;
    int gai = getaddrinfo(opt.host, opt.port, &hints, &ai);
    if (gai != 0) {
        fprintf(stderr, "echo_client: %s: %s\n", opt.host, gai_strerror(gai));
        return 2;
    }

    /* pattern: xorshift64 bytes, long enough for any offset */
    pattern = malloc(opt.size + PATTERN_SLACK);
    uint64_t x = 0x853c49e6748fea9bull;
    for (size_t i = 0; i < opt.size + PATTERN_SLACK; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        pattern[i] = (unsigned char)(x >> 32);
    }

    epfd = epoll_create1(EPOLL_CLOEXEC);
    conns = calloc((size_t)opt.conns, sizeof *conns);
    struct epoll_event *events = calloc(MAX_EVENTS, sizeof *events);

    /* ---- connect everything ---- */
    int pending = 0;
    for (int i = 0; i < opt.conns; i++) {
        struct conn *c = &conns[i];
        c->index = (uint32_t)i;
        c->fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (c->fd < 0) {
            err_connect++;
            note_error("socket", c, errno);
            c->state = C_DEAD;
            continue;
        }
        int one = 1;
        setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        c->state = C_CONNECTING;
        if (connect(c->fd, ai->ai_addr, ai->ai_addrlen) < 0 && errno != EINPROGRESS) {
            err_connect++;
            note_error("connect", c, errno);
            close(c->fd);
            c->fd = -1;
            c->state = C_DEAD;
            continue;
        }
        struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = c};
        epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev);
        c->want_out = 1;
        pending++;
    }
    freeaddrinfo(ai);

    uint64_t t_connect0 = now_ns();
    uint64_t connect_deadline = t_connect0 + (uint64_t)(opt.connect_timeout * 1e9);
    while (pending > 0 && now_ns() < connect_deadline) {
        int n = epoll_wait(epfd, events, MAX_EVENTS, epoll_timeout_ms(connect_deadline));
        if (n < 0 && errno == EINTR)
            continue;
        for (int i = 0; i < n; i++) {
            struct conn *c = events[i].data.ptr;
            if (c->state != C_CONNECTING)
                continue;
            int err = 0;
            socklen_t len = sizeof err;
            getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
            pending--;
            if (err != 0) {
                err_connect++;
                note_error("connect", c, err);
                kill_conn(c);
                continue;
            }
            c->state = C_RUNNING;
            set_events(c, 0);
        }
    }
    int connected = 0;
    for (int i = 0; i < opt.conns; i++) {
        if (conns[i].state == C_CONNECTING) {
            err_connect++;
            note_error("connect timed out", &conns[i], 0);
            kill_conn(&conns[i]);
        } else if (conns[i].state == C_RUNNING) {
            connected++;
        }
    }
    double connect_seconds = (double)(now_ns() - t_connect0) / 1e9;
    if (connected == 0) {
        printf("{\"ok\": false, \"error\": \"no connection could be established\", "
               "\"first_error\": \"%s\", \"conns\": %d, \"connected\": 0}\n",
               first_error, opt.conns);
        return 1;
    }

    /* ---- run: warmup, then measure ---- */
    for (int i = 0; i < opt.conns; i++)
        if (conns[i].state == C_RUNNING)
            start_message(&conns[i]);

    uint64_t t0 = now_ns();
    uint64_t measure_start = t0 + (uint64_t)(opt.warmup * 1e9);
    uint64_t measure_end = measure_start + (uint64_t)(opt.duration * 1e9);
    double cpu0 = 0;
    uint64_t t_measure0 = 0;
    uint64_t next_timeout_check = t0;
    uint64_t request_timeout_ns = (uint64_t)(opt.request_timeout * 1e9);
    if (opt.warmup == 0) {
        measuring = 1;
        cpu0 = cpu_seconds();
        t_measure0 = now_ns();
    }
    for (;;) {
        uint64_t t = now_ns();
        if (!measuring && t >= measure_start) {
            measuring = 1;
            cpu0 = cpu_seconds();
            t_measure0 = t;
        }
        if (t >= measure_end)
            break;
        if (t >= next_timeout_check) {
            /* A lost byte leaves a connection waiting forever: time it out. */
            next_timeout_check = t + 100000000ull;
            for (int i = 0; i < opt.conns; i++) {
                struct conn *c = &conns[i];
                if (c->state == C_RUNNING && t - c->t_start > request_timeout_ns) {
                    err_timeout++;
                    note_error("no complete echo within --request-timeout", c, 0);
                    kill_conn(c);
                }
            }
        }
        int n = epoll_wait(epfd, events, MAX_EVENTS,
                           epoll_timeout_ms(measuring ? measure_end : measure_start));
        if (n < 0) {
            if (errno == EINTR)
                continue;
            perror("epoll_wait");
            break;
        }
        for (int i = 0; i < n; i++) {
            struct conn *c = events[i].data.ptr;
            if (c->state != C_RUNNING)
                continue;
            uint32_t e = events[i].events;
            if (e & (EPOLLIN | EPOLLERR | EPOLLHUP))
                do_recv(c);
            if (c->state == C_RUNNING && (e & EPOLLOUT) && c->sent < opt.size)
                do_send(c);
        }
    }
    uint64_t t_measure1 = now_ns();
    double cpu1 = cpu_seconds();
    measuring = 0;

    int alive = 0;
    for (int i = 0; i < opt.conns; i++) {
        /* A message that started before the measured window and is still
         * not back made no progress for the whole window: count it. */
        if (conns[i].state == C_RUNNING && conns[i].t_start < t_measure0) {
            err_timeout++;
            note_error("stalled for the whole measured window", &conns[i], 0);
        } else if (conns[i].state == C_RUNNING) {
            alive++;
        }
        kill_conn(&conns[i]);
    }

    double secs = (double)(t_measure1 - t_measure0) / 1e9;
    double cpu = cpu1 - cpu0;
    uint64_t errors = err_mismatch + err_eof + err_reset + err_other + err_connect + err_timeout;
    double mean_us = st_hist_total ? (double)st_lat_sum / (double)st_hist_total / 1e3 : 0.0;

    printf("{\"ok\": true, \"conns\": %d, \"connected\": %d, \"alive_at_end\": %d, "
           "\"size\": %zu, \"warmup_s\": %.3f, \"duration_s\": %.6f, \"connect_s\": %.6f, "
           "\"requests\": %llu, \"rps\": %.1f, "
           "\"bytes_sent\": %llu, \"bytes_received\": %llu, \"mib_per_s\": %.2f, "
           "\"latency_us\": {\"mean\": %.1f, \"p50\": %.1f, \"p90\": %.1f, \"p99\": %.1f, "
           "\"p999\": %.1f, \"max\": %.1f}, "
           "\"errors\": %llu, \"error_kinds\": {\"mismatch\": %llu, \"eof\": %llu, "
           "\"reset\": %llu, \"connect\": %llu, \"timeout\": %llu, \"other\": %llu}, \"first_error\": \"%s\", "
           "\"cpu_s\": %.4f, \"cpu_fraction\": %.4f}\n",
           opt.conns, connected, alive, opt.size, opt.warmup, secs, connect_seconds,
           (unsigned long long)st_requests, secs > 0 ? (double)st_requests / secs : 0.0,
           (unsigned long long)st_bytes_sent, (unsigned long long)st_bytes_recv,
           secs > 0 ? (double)st_bytes_recv / secs / 1048576.0 : 0.0, mean_us,
           hist_percentile(st_hist_total, 50) / 1e3, hist_percentile(st_hist_total, 90) / 1e3,
           hist_percentile(st_hist_total, 99) / 1e3, hist_percentile(st_hist_total, 99.9) / 1e3,
           st_lat_max / 1e3, (unsigned long long)errors, (unsigned long long)err_mismatch,
           (unsigned long long)err_eof, (unsigned long long)err_reset,
           (unsigned long long)err_connect, (unsigned long long)err_timeout,
           (unsigned long long)err_other, first_error, cpu,
           secs > 0 ? cpu / secs : 0.0);
    return 0;
}
