/*
 * vboxlab fabric: the userspace data path between lab NICs.
 *
 * QEMU NICs (-netdev dgram) exchange Ethernet frames as UDP datagrams with this
 * process over connected sockets it inherits; network-namespace hosts hand it the
 * file descriptor of their tap device instead (one frame per read and write). Each segment is a learning switch;
 * trunks join segments. Every direction of every link (a NIC into its switch,
 * the switch out to the NIC, each way of a trunk) is a "dir" with its own
 * impairments: delay, jitter (with or without reordering), random and
 * Gilbert-Elliott loss, rate with a byte queue, duplication, corruption, MTU and
 * up/down; its own counters; and an optional pcap capture.
 *
 * Control: text lines on a UNIX stream socket (see handle_command); one reply
 * line each, "ok ..." or "error ...". Deterministic with "seed N".
 *
 * Build: cc -O2 -o vboxlab-fabric fabric.c   (no dependencies beyond libc)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define MAX_PORTS 256
#define MAX_TRUNKS 128
#define MAX_SEGS 256
#define MAX_DIRS (MAX_PORTS * 2 + MAX_TRUNKS * 2)
#define MAX_FRAME 65536
#define MAC_SLOTS 1024
#define BATCH 32
#define MAX_CLIENTS 16

typedef struct frame {
    struct frame *next;
    uint64_t release;
    uint32_t len;
    uint8_t data[];
} frame_t;

typedef struct {
    int used;
    char name[32];
    /* impairments */
    uint64_t delay, jitter, rate, queue_limit;
    double loss, dup, corrupt, ge_p, ge_r, ge_h, ge_k;
    int ge, ge_bad, reorder, up;
    uint32_t mtu;
    /* state */
    frame_t *head, *tail;
    uint64_t last_release, busy_until, queued_bytes;
    /* counters */
    uint64_t rx_packets, rx_bytes, tx_packets, tx_bytes;
    uint64_t drop_loss, drop_queue, drop_down, drop_mtu, duplicated, corrupted;
    FILE *pcap;
    /* where released frames go: a port's NIC, or a segment's switch */
    int to_port;          /* >= 0: send to this port's socket */
    int to_seg, from_ep;  /* else: enter switch to_seg as coming from endpoint from_ep */
} dir_t;

typedef struct { int used, fd, seg, in, out, tap; } port_t; /* in: NIC->switch, out: switch->NIC; tap: fd is a tap device */
typedef struct { int used, seg_a, seg_b, ab, ba; } trunk_t;
typedef struct { uint8_t mac[6]; int ep; int used; } mac_entry_t;
typedef struct { int used; mac_entry_t table[MAC_SLOTS]; } seg_t;

static port_t ports[MAX_PORTS];
static trunk_t trunks[MAX_TRUNKS];
static seg_t segs[MAX_SEGS];
static dir_t dirs[MAX_DIRS];
static int epfd, tfd, listen_fd;
static int clients[MAX_CLIENTS];
static char client_buf[MAX_CLIENTS][4096];
static size_t client_len[MAX_CLIENTS];
static uint64_t rng = 0x9E3779B97F4A7C15ULL;
static int running = 1;
static long queued_frames = 0; /* frames waiting in any dir: 0 lets the loop skip the scan */
static int dir_count = 0;      /* dirs in use are 0 .. dir_count-1 */

/* endpoints: a port p is p; the side of trunk t on segment seg_a is MAX_PORTS + 2t, on seg_b +1 */
#define EP_TRUNK(t, side) (MAX_PORTS + 2 * (t) + (side))

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static double rnd(void) { /* xorshift64*, uniform in [0, 1) */
    rng ^= rng >> 12; rng ^= rng << 25; rng ^= rng >> 27;
    return (double)((rng * 2685821657736338717ULL) >> 11) / 9007199254740992.0;
}

static int dir_index(const char *name) {
    for (int i = 0; i < dir_count; i++)
        if (dirs[i].used && strcmp(dirs[i].name, name) == 0) return i;
    return -1;
}

static int new_dir(const char *name) {
    for (int i = 0; i < MAX_DIRS; i++) {
        if (!dirs[i].used) {
            memset(&dirs[i], 0, sizeof dirs[i]);
            dirs[i].used = 1;
            snprintf(dirs[i].name, sizeof dirs[i].name, "%s", name);
            dirs[i].up = 1;
            dirs[i].mtu = 65535;
            dirs[i].to_port = -1;
            if (i + 1 > dir_count) dir_count = i + 1;
            return i;
        }
    }
    return -1;
}

static void pcap_write(dir_t *d, const uint8_t *data, uint32_t len) {
    if (!d->pcap) return;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint32_t rec[4] = {(uint32_t)ts.tv_sec, (uint32_t)(ts.tv_nsec / 1000), len, len};
    fwrite(rec, sizeof rec, 1, d->pcap);
    fwrite(data, 1, len, d->pcap);
}

static void switch_input(int seg, int from_ep, const uint8_t *data, uint32_t len);

/* a frame leaves a dir: to a NIC, or into a switch */
static void deliver(dir_t *d, const uint8_t *data, uint32_t len) {
    d->tx_packets++;
    d->tx_bytes += len;
    pcap_write(d, data, len);
    if (d->to_port >= 0) {
        port_t *p = &ports[d->to_port];
        if (p->tap) {
            /* EIO: the interface is down (its namespace may be going away) */
            if (write(p->fd, data, len) < 0 && errno != EAGAIN && errno != EIO && errno != EBADFD)
                perror("fabric: write to tap");
        } else if (send(p->fd, data, len, MSG_DONTWAIT) < 0 && errno != EAGAIN &&
                   errno != ECONNREFUSED) {
            perror("fabric: send");
        }
    } else {
        switch_input(d->to_seg, d->from_ep, data, len);
    }
}

/* a frame enters a dir: impairments decide if, when and how often it leaves */
static void dir_input(int di, const uint8_t *data, uint32_t len) {
    dir_t *d = &dirs[di];
    d->rx_packets++;
    d->rx_bytes += len;
    if (!d->up) { d->drop_down++; return; }
    if (len > 14 && len - 14 > d->mtu) { d->drop_mtu++; return; }
    if (d->ge) {
        if (d->ge_bad) { if (rnd() < d->ge_r) d->ge_bad = 0; }
        else if (rnd() < d->ge_p) d->ge_bad = 1;
        double lose = d->ge_bad ? 1.0 - d->ge_h : 1.0 - d->ge_k;
        if (rnd() < lose) { d->drop_loss++; return; }
    } else if (d->loss > 0 && rnd() < d->loss) {
        d->drop_loss++;
        return;
    }
    int copies = (d->dup > 0 && rnd() < d->dup) ? 2 : 1;
    if (copies == 2) d->duplicated++;
    uint64_t now = now_ns();
    for (int c = 0; c < copies; c++) {
        if (d->delay == 0 && d->jitter == 0 && d->rate == 0 && d->head == NULL &&
            d->corrupt == 0) {
            deliver(d, data, len); /* the fast path: nothing to wait for */
            continue;
        }
        if (d->queue_limit && d->queued_bytes + len > d->queue_limit) { d->drop_queue++; continue; }
        frame_t *f = malloc(sizeof(frame_t) + len);
        if (!f) { d->drop_queue++; continue; }
        memcpy(f->data, data, len);
        f->len = len;
        f->next = NULL;
        if (d->corrupt > 0 && len > 14 && rnd() < d->corrupt) {
            uint32_t bit = 14 * 8 + (uint32_t)(rnd() * (double)((len - 14) * 8));
            f->data[bit / 8] ^= (uint8_t)(1u << (bit % 8));
            d->corrupted++;
        }
        uint64_t start = now;
        if (d->rate) {
            if (d->busy_until > start) start = d->busy_until;
            start += (uint64_t)len * 8ULL * 1000000000ULL / d->rate;
            d->busy_until = start;
        }
        int64_t jitter = 0;
        if (d->jitter) jitter = (int64_t)((rnd() * 2.0 - 1.0) * (double)d->jitter);
        int64_t release = (int64_t)(start + d->delay) + jitter;
        if (release < (int64_t)now) release = (int64_t)now;
        f->release = (uint64_t)release;
        d->queued_bytes += len;
        queued_frames++;
        if (!d->reorder || d->head == NULL) {
            if (!d->reorder && f->release < d->last_release) f->release = d->last_release;
            d->last_release = f->release;
            if (d->tail) d->tail->next = f; else d->head = f;
            d->tail = f;
        } else { /* keep the queue sorted by release time: later frames may overtake */
            frame_t **p = &d->head;
            while (*p && (*p)->release <= f->release) p = &(*p)->next;
            f->next = *p;
            *p = f;
            if (f->next == NULL) d->tail = f;
        }
    }
}

static void learn(seg_t *s, const uint8_t *mac, int ep) {
    if (mac[0] & 1) return;
    uint32_t h = (uint32_t)(mac[2] ^ (mac[3] << 8) ^ (mac[4] << 16) ^ (mac[5] << 24)) % MAC_SLOTS;
    for (int i = 0; i < MAC_SLOTS; i++) {
        mac_entry_t *e = &s->table[(h + i) % MAC_SLOTS];
        if (!e->used || memcmp(e->mac, mac, 6) == 0) {
            e->used = 1; memcpy(e->mac, mac, 6); e->ep = ep;
            return;
        }
    }
}

static int lookup(seg_t *s, const uint8_t *mac) {
    uint32_t h = (uint32_t)(mac[2] ^ (mac[3] << 8) ^ (mac[4] << 16) ^ (mac[5] << 24)) % MAC_SLOTS;
    for (int i = 0; i < MAC_SLOTS; i++) {
        mac_entry_t *e = &s->table[(h + i) % MAC_SLOTS];
        if (!e->used) return -1;
        if (memcmp(e->mac, mac, 6) == 0) return e->ep;
    }
    return -1;
}

/* the dir a frame takes from segment seg out through endpoint ep */
static int egress_dir(int seg, int ep) {
    if (ep < MAX_PORTS) return ports[ep].used && ports[ep].seg == seg ? ports[ep].out : -1;
    int t = (ep - MAX_PORTS) / 2, side = (ep - MAX_PORTS) % 2;
    if (!trunks[t].used) return -1;
    return side == 0 ? trunks[t].ab : trunks[t].ba;
}

static void switch_input(int seg, int from_ep, const uint8_t *data, uint32_t len) {
    if (len < 14) return;
    seg_t *s = &segs[seg];
    learn(s, data + 6, from_ep);
    int dst = (data[0] & 1) ? -1 : lookup(s, data);
    if (dst >= 0 && dst != from_ep) {
        int di = egress_dir(seg, dst);
        if (di >= 0) dir_input(di, data, len);
        return;
    }
    if (dst == from_ep) return;
    for (int p = 0; p < MAX_PORTS; p++)
        if (ports[p].used && ports[p].seg == seg && p != from_ep) dir_input(ports[p].out, data, len);
    for (int t = 0; t < MAX_TRUNKS; t++) {
        if (!trunks[t].used) continue;
        if (trunks[t].seg_a == seg && EP_TRUNK(t, 0) != from_ep) dir_input(trunks[t].ab, data, len);
        if (trunks[t].seg_b == seg && EP_TRUNK(t, 1) != from_ep) dir_input(trunks[t].ba, data, len);
    }
}

/* release every due frame; return the earliest pending release (0: none) */
static uint64_t run_queues(void) {
    uint64_t next = 0;
    for (int pass = 0; pass < 4 && queued_frames > 0; pass++) { /* trunks feed more dirs */
        uint64_t now = now_ns();
        int moved = 0;
        next = 0;
        for (int i = 0; i < dir_count; i++) {
            dir_t *d = &dirs[i];
            while (d->head && d->head->release <= now) {
                frame_t *f = d->head;
                d->head = f->next;
                if (!d->head) d->tail = NULL;
                d->queued_bytes -= f->len;
                queued_frames--;
                deliver(d, f->data, f->len);
                free(f);
                moved = 1;
            }
            if (d->head && (next == 0 || d->head->release < next)) next = d->head->release;
        }
        if (!moved) break;
    }
    return next;
}

static void arm_timer(uint64_t when) {
    struct itimerspec its = {0};
    if (when) {
        its.it_value.tv_sec = (time_t)(when / 1000000000ULL);
        its.it_value.tv_nsec = (long)(when % 1000000000ULL);
    }
    timerfd_settime(tfd, TFD_TIMER_ABSTIME, &its, NULL);
}

static int set_param(dir_t *d, const char *key, const char *value) {
    double v = strtod(value, NULL);
    if (!strcmp(key, "delay_ns")) d->delay = (uint64_t)v;
    else if (!strcmp(key, "jitter_ns")) d->jitter = (uint64_t)v;
    else if (!strcmp(key, "reorder")) d->reorder = v != 0;
    else if (!strcmp(key, "loss")) { d->loss = v; d->ge = 0; }
    else if (!strcmp(key, "ge")) {
        if (sscanf(value, "%lf,%lf,%lf,%lf", &d->ge_p, &d->ge_r, &d->ge_h, &d->ge_k) != 4) return -1;
        d->ge = 1; d->ge_bad = 0;
    }
    else if (!strcmp(key, "rate_bps")) { d->rate = (uint64_t)v; d->busy_until = 0; }
    else if (!strcmp(key, "queue_bytes")) d->queue_limit = (uint64_t)v;
    else if (!strcmp(key, "dup")) d->dup = v;
    else if (!strcmp(key, "corrupt")) d->corrupt = v;
    else if (!strcmp(key, "mtu")) d->mtu = (uint32_t)v;
    else if (!strcmp(key, "up")) d->up = v != 0;
    else return -1;
    return 0;
}

static void stats(FILE *out) {
    fputc('{', out);
    int first = 1;
    for (int i = 0; i < MAX_DIRS; i++) {
        dir_t *d = &dirs[i];
        if (!d->used) continue;
        fprintf(out, "%s\"%s\":{\"rx_packets\":%" PRIu64 ",\"rx_bytes\":%" PRIu64
                ",\"tx_packets\":%" PRIu64 ",\"tx_bytes\":%" PRIu64 ",\"drop_loss\":%" PRIu64
                ",\"drop_queue\":%" PRIu64 ",\"drop_down\":%" PRIu64 ",\"drop_mtu\":%" PRIu64
                ",\"duplicated\":%" PRIu64 ",\"corrupted\":%" PRIu64 ",\"queued_bytes\":%" PRIu64 "}",
                first ? "" : ",", d->name, d->rx_packets, d->rx_bytes, d->tx_packets, d->tx_bytes,
                d->drop_loss, d->drop_queue, d->drop_down, d->drop_mtu, d->duplicated, d->corrupted,
                d->queued_bytes);
        first = 0;
    }
    fputc('}', out);
}

/* one control command; the reply goes to out (one line) */
static void handle_command(char *line, FILE *out) {
    char *argv[24];
    int argc = 0;
    for (char *tok = strtok(line, " \t\r"); tok && argc < 24; tok = strtok(NULL, " \t\r")) argv[argc++] = tok;
    if (argc == 0) { fputs("error empty command", out); return; }
    char name[32];
    if (!strcmp(argv[0], "port") && argc == 4) {            /* port ID FD SEG */
        int p = atoi(argv[1]), fd = atoi(argv[2]), s = atoi(argv[3]);
        if (p < 0 || p >= MAX_PORTS || s < 0 || s >= MAX_SEGS || ports[p].used) { fputs("error bad port", out); return; }
        if (fcntl(fd, F_GETFD) < 0) { fprintf(out, "error fd %d is not open", fd); return; }
        snprintf(name, sizeof name, "p%d.in", p);
        int in = new_dir(name);
        snprintf(name, sizeof name, "p%d.out", p);
        int o = new_dir(name);
        if (in < 0 || o < 0) { fputs("error too many links", out); return; }
        dirs[in].to_seg = s; dirs[in].from_ep = p;
        dirs[o].to_port = p;
        int sock_type, tap = 0;
        socklen_t optlen = sizeof sock_type;
        if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &sock_type, &optlen) < 0) tap = errno == ENOTSOCK;
        ports[p] = (port_t){1, fd, s, in, o, tap};
        segs[s].used = 1;
        fcntl(fd, F_SETFL, O_NONBLOCK);
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)p};
        epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
        fputs("ok", out);
    } else if (!strcmp(argv[0], "trunk") && argc == 4) {    /* trunk ID SEG_A SEG_B */
        int t = atoi(argv[1]), a = atoi(argv[2]), b = atoi(argv[3]);
        if (t < 0 || t >= MAX_TRUNKS || a < 0 || a >= MAX_SEGS || b < 0 || b >= MAX_SEGS || a == b || trunks[t].used) {
            fputs("error bad trunk", out); return;
        }
        snprintf(name, sizeof name, "t%d.ab", t);
        int ab = new_dir(name);
        snprintf(name, sizeof name, "t%d.ba", t);
        int ba = new_dir(name);
        dirs[ab].to_seg = b; dirs[ab].from_ep = EP_TRUNK(t, 1);
        dirs[ba].to_seg = a; dirs[ba].from_ep = EP_TRUNK(t, 0);
        trunks[t] = (trunk_t){1, a, b, ab, ba};
        segs[a].used = segs[b].used = 1;
        fputs("ok", out);
    } else if (!strcmp(argv[0], "set") && argc >= 3) {      /* set DIR key=value ... */
        int di = dir_index(argv[1]);
        if (di < 0) { fprintf(out, "error no link direction %s", argv[1]); return; }
        for (int i = 2; i < argc; i++) {
            char *eq = strchr(argv[i], '=');
            if (!eq) { fprintf(out, "error %s is not key=value", argv[i]); return; }
            *eq = 0;
            if (set_param(&dirs[di], argv[i], eq + 1) < 0) { fprintf(out, "error unknown setting %s", argv[i]); return; }
        }
        fputs("ok", out);
    } else if (!strcmp(argv[0], "capture") && argc == 3) {  /* capture DIR PATH|off */
        int di = dir_index(argv[1]);
        if (di < 0) { fprintf(out, "error no link direction %s", argv[1]); return; }
        if (dirs[di].pcap) { fclose(dirs[di].pcap); dirs[di].pcap = NULL; }
        if (strcmp(argv[2], "off") != 0) {
            FILE *f = fopen(argv[2], "wb");
            if (!f) { fprintf(out, "error cannot write %s: %s", argv[2], strerror(errno)); return; }
            uint32_t hdr[6] = {0xa1b2c3d4, 0x00040002, 0, 0, MAX_FRAME, 1};
            fwrite(hdr, sizeof hdr, 1, f);
            dirs[di].pcap = f;
        }
        fputs("ok", out);
    } else if (!strcmp(argv[0], "flush")) {                 /* flush pcaps to disk */
        for (int i = 0; i < MAX_DIRS; i++) if (dirs[i].pcap) fflush(dirs[i].pcap);
        fputs("ok", out);
    } else if (!strcmp(argv[0], "stats")) {
        fputs("ok ", out);
        stats(out);
    } else if (!strcmp(argv[0], "seed") && argc == 2) {
        rng = strtoull(argv[1], NULL, 10) * 2654435761ULL + 0x9E3779B97F4A7C15ULL;
        fputs("ok", out);
    } else if (!strcmp(argv[0], "quit")) {
        running = 0;
        fputs("ok", out);
    } else {
        fprintf(out, "error unknown command %s", argv[0]);
    }
}

static void client_input(int c) {
    ssize_t n = read(clients[c], client_buf[c] + client_len[c], sizeof client_buf[c] - client_len[c] - 1);
    if (n <= 0) { close(clients[c]); clients[c] = -1; client_len[c] = 0; return; }
    client_len[c] += (size_t)n;
    char *start = client_buf[c], *nl;
    while ((nl = memchr(start, '\n', client_len[c] - (size_t)(start - client_buf[c])))) {
        *nl = 0;
        char *reply = NULL;
        size_t size = 0;
        FILE *out = open_memstream(&reply, &size);
        handle_command(start, out);
        fputc('\n', out);
        fclose(out);
        if (write(clients[c], reply, size) < 0) perror("fabric: reply");
        free(reply);
        start = nl + 1;
    }
    size_t rest = client_len[c] - (size_t)(start - client_buf[c]);
    memmove(client_buf[c], start, rest);
    client_len[c] = rest;
    if (client_len[c] >= sizeof client_buf[c] - 1) client_len[c] = 0; /* overlong line: drop */
}

int main(int argc, char **argv) {
    if (argc != 2) { fprintf(stderr, "usage: %s CONTROL_SOCKET\n", argv[0]); return 2; }
    signal(SIGPIPE, SIG_IGN);
    for (int i = 0; i < MAX_CLIENTS; i++) clients[i] = -1;
    epfd = epoll_create1(EPOLL_CLOEXEC);
    tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (strlen(argv[1]) >= sizeof addr.sun_path) { fprintf(stderr, "fabric: socket path too long\n"); return 2; }
    strcpy(addr.sun_path, argv[1]);
    unlink(argv[1]);
    if (bind(listen_fd, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(listen_fd, 8) < 0) {
        perror("fabric: control socket");
        return 1;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = 1000000};
    epoll_ctl(epfd, EPOLL_CTL_ADD, listen_fd, &ev);
    ev.data.u32 = 1000001;
    epoll_ctl(epfd, EPOLL_CTL_ADD, tfd, &ev);
    fprintf(stderr, "fabric: listening on %s\n", argv[1]);
    static uint8_t bufs[BATCH][MAX_FRAME];
    struct mmsghdr msgs[BATCH];
    struct iovec iovs[BATCH];
    while (running) {
        struct epoll_event events[64];
        int n = epoll_wait(epfd, events, 64, -1);
        if (n < 0 && errno != EINTR) { perror("fabric: epoll_wait"); return 1; }
        for (int i = 0; i < n; i++) {
            uint32_t tag = events[i].data.u32;
            if (tag < MAX_PORTS) {
                for (int k = 0; k < BATCH; k++) {
                    iovs[k] = (struct iovec){bufs[k], MAX_FRAME};
                    msgs[k].msg_hdr = (struct msghdr){.msg_iov = &iovs[k], .msg_iovlen = 1};
                }
                if (ports[tag].tap) {
                    for (int k = 0; k < BATCH; k++) {
                        ssize_t got = read(ports[tag].fd, bufs[0], MAX_FRAME);
                        if (got <= 0) {
                            /* the tap's namespace is gone: stop listening to it */
                            if (got == 0 || (errno != EAGAIN && errno != EINTR))
                                epoll_ctl(epfd, EPOLL_CTL_DEL, ports[tag].fd, NULL);
                            break;
                        }
                        dir_input(ports[tag].in, bufs[0], (uint32_t)got);
                    }
                    continue;
                }
                int got = recvmmsg(ports[tag].fd, msgs, BATCH, MSG_DONTWAIT, NULL);
                for (int k = 0; k < got; k++) dir_input(ports[tag].in, bufs[k], msgs[k].msg_len);
            } else if (tag == 1000000) {
                int fd = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC);
                int slot = -1;
                for (int c = 0; c < MAX_CLIENTS; c++) if (clients[c] < 0) { slot = c; break; }
                if (fd >= 0 && slot >= 0) {
                    clients[slot] = fd;
                    struct epoll_event cev = {.events = EPOLLIN, .data.u32 = 2000000 + (uint32_t)slot};
                    epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &cev);
                } else if (fd >= 0) close(fd);
            } else if (tag == 1000001) {
                uint64_t expirations;
                if (read(tfd, &expirations, sizeof expirations) < 0 && errno != EAGAIN) perror("fabric: timer");
            } else if (tag >= 2000000) {
                client_input((int)(tag - 2000000));
            }
        }
        arm_timer(run_queues());
    }
    for (int i = 0; i < MAX_DIRS; i++) if (dirs[i].pcap) fclose(dirs[i].pcap);
    unlink(argv[1]);
    return 0;
}
