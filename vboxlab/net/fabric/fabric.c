/*
 * vboxlab fabric: the userspace data path between lab NICs.
 *
 * QEMU NICs (-netdev dgram) exchange Ethernet frames as UDP datagrams with this
 * process over connected sockets it inherits; network-namespace hosts hand it the
 * file descriptor of their tap device instead (one frame per read and write); a
 * vhost-user port ("vport") listens for its QEMU (-netdev vhost-user), which shares
 * the guest's memory, and the fabric then takes frames from the guest's transmit
 * ring and puts them into receive rings itself (vhost_user.c: no system call per
 * frame, and QEMU's network code is off the path). Each segment is a learning switch;
 * trunks join segments. Every direction of every link (a NIC into its switch,
 * the switch out to the NIC, each way of a trunk) is a "dir" with its own
 * impairments: delay, jitter (with or without reordering), random and
 * Gilbert-Elliott loss, rate with a byte queue, duplication, corruption, MTU and
 * up/down; its own counters; and an optional pcap capture, which may be a ring
 * (a size and/or age limit: the file is rotated to NAME.old when it holds half
 * the limit, and the previous .old, the oldest frames, is dropped and counted).
 *
 * Tees: a live copy of some dirs' frames as one pcap stream into a FIFO (or any
 * file) that a reader such as Suricata consumes while the lab runs. Writes never
 * block the data path: frames wait in a buffer of TEE_BUFFER bytes and go out as
 * the reader takes them; when the buffer is full a frame is dropped and counted.
 *
 * Control: text lines on a UNIX stream socket (see handle_command); one reply
 * line each, "ok ..." or "error ...". A port's descriptor (a NIC's socket, a tap)
 * travels with its "port" command as SCM_RIGHTS ancillary data, so ports can be
 * added while the fabric runs. A fabric started far from its controller (over
 * SSH, with --stdio: commands on stdin, replies on stdout, EOF ends it) makes its
 * ports' UDP sockets itself ("uport") and connects them later ("connect").
 *
 * Randomness: every direction has a generator of its own, seeded from the lab
 * seed ("seed N") and the direction's name, so one seed gives the same drops,
 * delays and corruptions on a direction whatever traffic the others carry.
 *
 * Safety: a trunk that would close a loop between segments is refused (a
 * broadcast would circle forever), and every frame carries a hop count that
 * ends its trip after MAX_HOPS switches in any case, so no input can make the
 * fabric recurse without bound.
 *
 * Speed: a port's frames are read in batches (recvmmsg) and the frames bound for
 * each socket port are sent in batches (sendmmsg) once the batch that produced
 * them is switched, so a busy link costs two system calls per batch, not per
 * frame. Frames without impairment are never copied; a delayed frame is copied
 * once, into a buffer from a free list. Delay queues wait in a min-heap keyed
 * by their first release, so the loop touches only the directions that are
 * due; the timer is re-armed only when that time changes, and fires
 * RELEASE_GRAIN_NS after it, so frames due within that time share one wake-up
 * (never early; at most that much later than their delay). Flooding walks the
 * segment's own endpoints.
 *
 * Build: cc -O2 -o vboxlab-fabric fabric.c vhost_user.c   (no dependencies beyond libc)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <sys/un.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <time.h>
#include <unistd.h>

#include "vhost_user.h"

#define MAX_PORTS 256
#define MAX_TRUNKS 128
#define MAX_SEGS 256
#define MAX_DIRS (MAX_PORTS * 2 + MAX_TRUNKS * 2)
#define MAX_FRAME 65536
#define MAC_SLOTS 1024
#define BATCH 32
#define MAX_CLIENTS 16
#define MAX_HOPS (MAX_TRUNKS + 2)
#define MAX_PENDING_FDS 16
#define MAX_TEES 64
#define TEE_BUFFER (4 << 20)
#define TAG_TEE 3000000
#define TAG_VU 4000000 /* + 4 * port + kind: 0 listening, 1 connection, 2 rx kick, 3 tx kick */
#define MAX_SEG_EPS (MAX_PORTS + 2 * MAX_TRUNKS)
#define OUT_MAX 1024       /* frames waiting for the next batched send */
#define SEND_BATCH 64      /* frames per sendmmsg */
#define POOL_FRAME 2048    /* delayed frames up to this size use the free list */
#define POOL_KEEP 8192     /* free-list buffers kept for reuse (16 MiB) */
#define FABRIC_NICE -10 /* the scheduling weight it asks for (see main) */
#define RELEASE_GRAIN_NS 50000
#define EGRESS_MAX 4096    /* frames a port holds while its NIC's socket is full (a switch's port buffer) */
#define HELD_MAX_BYTES (64u << 20) /* all ports together: a guest flooding a stalled one cannot grow us */ /* the timer fires this late, so frames due close together go out in one wake-up */

typedef struct frame {
    struct frame *next;
    uint64_t release;
    uint32_t len;
    uint32_t hops;
    uint32_t cap;
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
    uint64_t rng; /* this direction's own generator (xorshift64*) */
    /* state */
    frame_t *head, *tail;
    uint64_t last_release, busy_until, queued_bytes;
    /* counters */
    uint64_t rx_packets, rx_bytes, tx_packets, tx_bytes;
    uint64_t drop_loss, drop_queue, drop_down, drop_mtu, drop_hops, drop_full, duplicated, corrupted;
    uint64_t drop_bad; /* a vhost-user guest's malformed descriptors: frames it sent, buffers it gave */
    FILE *pcap;
    char *pcap_path;                      /* the capture's file while one is on */
    uint64_t ring_bytes, ring_ns;         /* ring limits (0: none) */
    uint64_t seg_bytes, seg_packets, seg_start; /* the current file */
    uint64_t old_packets, old_bytes;      /* what NAME.old holds */
    uint64_t ring_dropped_packets, ring_dropped_bytes;
    int tee;                              /* a tee this dir's frames are copied to, or -1 */
    /* where released frames go: a port's NIC, or a segment's switch */
    int to_port;          /* >= 0: send to this port's socket */
    int to_seg, from_ep;  /* else: enter switch to_seg as coming from endpoint from_ep */
    int heap_pos;         /* where this dir waits in the release heap, or -1 */
} dir_t;

typedef struct {
    int used, fd, seg, in, out, tap; /* in: NIC->switch, out: switch->NIC; tap: fd is a tap device */
    struct frame *wait_head, *wait_tail; /* frames its full socket refused, oldest first */
    uint32_t waiting;                    /* how many (EGRESS_MAX at most) */
    vu_dev_t *vu;                        /* a vhost-user port: fd listens for its QEMU */
    char *path;                          /* ... at this path (removed when the fabric ends) */
} port_t;
typedef struct { int used, seg_a, seg_b, ab, ba; } trunk_t;
typedef struct { uint8_t mac[6]; int ep; int used; } mac_entry_t;
typedef struct {
    int used;
    mac_entry_t table[MAC_SLOTS];
    int eps[MAX_SEG_EPS]; /* the endpoints on this segment (ports, trunk sides), for flooding */
    int neps;
} seg_t;

static port_t ports[MAX_PORTS];
static trunk_t trunks[MAX_TRUNKS];
static seg_t segs[MAX_SEGS];
static dir_t dirs[MAX_DIRS];
static int epfd, tfd, listen_fd;
static int clients[MAX_CLIENTS];
static int client_out[MAX_CLIENTS]; /* where replies go: the client's socket, or stdout */
static int stdio_client = -1;       /* with --stdio: the slot of stdin/stdout (EOF ends the fabric) */
static char client_buf[MAX_CLIENTS][4096];
static size_t client_len[MAX_CLIENTS];
static int client_fds[MAX_CLIENTS][MAX_PENDING_FDS]; /* descriptors received, oldest first */
static int client_nfds[MAX_CLIENTS];
static uint64_t lab_seed = 0x9E3779B97F4A7C15ULL;
static int running = 1;
static int dir_count = 0;      /* dirs in use are 0 .. dir_count-1 */

/* the release heap: dirs with frames waiting, earliest first release on top */
static int heap[MAX_DIRS];
static int heap_n = 0;

/* frames bound for socket ports, sent in batches by flush_out; per port a chain in order */
typedef struct { const uint8_t *data; uint32_t len; int next; } out_t;
static out_t outq[OUT_MAX];
static int outq_len = 0;
static int out_first[MAX_PORTS], out_last[MAX_PORTS];
static int out_ports[MAX_PORTS], out_nports = 0;
static struct frame *sent_frames = NULL; /* released frames whose bytes wait in outq */
static struct frame *pool = NULL;        /* free list of POOL_FRAME buffers */
static int pool_count = 0;
static uint64_t armed_at = 0;
static uint64_t held_bytes = 0;          /* bytes of frames ports hold (egress_hold) */            /* the timer's current deadline (0: disarmed) */

/* endpoints: a port p is p; the side of trunk t on segment seg_a is MAX_PORTS + 2t, on seg_b +1 */
#define EP_TRUNK(t, side) (MAX_PORTS + 2 * (t) + (side))

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static double rnd(dir_t *d) { /* xorshift64*, uniform in [0, 1) */
    d->rng ^= d->rng >> 12; d->rng ^= d->rng << 25; d->rng ^= d->rng >> 27;
    return (double)((d->rng * 2685821657736338717ULL) >> 11) / 9007199254740992.0;
}

/* a direction's generator state: the lab seed and its name, mixed (FNV-1a, splitmix64) */
static uint64_t derive_rng(const char *name) {
    uint64_t h = 0xcbf29ce484222325ULL;
    for (const char *c = name; *c; c++) { h ^= (uint8_t)*c; h *= 0x100000001b3ULL; }
    uint64_t z = lab_seed ^ h;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    z ^= z >> 31;
    return z ? z : 0x9E3779B97F4A7C15ULL;
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
            dirs[i].tee = -1;
            dirs[i].heap_pos = -1;
            dirs[i].rng = derive_rng(dirs[i].name);
            if (i + 1 > dir_count) dir_count = i + 1;
            return i;
        }
    }
    return -1;
}

static FILE *pcap_open(const char *path) {
    FILE *f = fopen(path, "wb");
    if (!f) return NULL;
    uint32_t hdr[6] = {0xa1b2c3d4, 0x00040002, 0, 0, MAX_FRAME, 1};
    fwrite(hdr, sizeof hdr, 1, f);
    return f;
}

static void pcap_close(dir_t *d) {
    if (d->pcap) fclose(d->pcap);
    d->pcap = NULL;
    free(d->pcap_path);
    d->pcap_path = NULL;
}

/* a ring's current file is full (half the limit) or old: it becomes NAME.old, the old .old goes */
static void pcap_rotate(dir_t *d, uint64_t now) {
    size_t n = strlen(d->pcap_path) + 5;
    char *older = malloc(n);
    if (!older) return;
    snprintf(older, n, "%s.old", d->pcap_path);
    fclose(d->pcap);
    d->ring_dropped_packets += d->old_packets;
    d->ring_dropped_bytes += d->old_bytes;
    if (rename(d->pcap_path, older) < 0) perror("fabric: capture ring");
    free(older);
    d->old_packets = d->seg_packets;
    d->old_bytes = d->seg_bytes;
    d->pcap = pcap_open(d->pcap_path);
    if (!d->pcap) { perror("fabric: capture ring"); free(d->pcap_path); d->pcap_path = NULL; }
    d->seg_packets = d->seg_bytes = 0;
    d->seg_start = now;
}

static void pcap_write(dir_t *d, const uint8_t *data, uint32_t len) {
    if (!d->pcap) return;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (d->seg_packets > 0 && (d->ring_bytes || d->ring_ns)) {
        uint64_t now = now_ns();
        if ((d->ring_bytes && 2 * (d->seg_bytes + 16 + len) > d->ring_bytes) ||
            (d->ring_ns && 2 * (now - d->seg_start) > d->ring_ns)) {
            pcap_rotate(d, now);
            if (!d->pcap) return;
        }
    }
    if (d->seg_packets == 0) d->seg_start = now_ns();
    uint32_t rec[4] = {(uint32_t)ts.tv_sec, (uint32_t)(ts.tv_nsec / 1000), len, len};
    fwrite(rec, sizeof rec, 1, d->pcap);
    fwrite(data, 1, len, d->pcap);
    d->seg_packets++;
    d->seg_bytes += 16 + len;
}


/* tees: a merged live pcap stream of some dirs, written without ever blocking */
typedef struct {
    int used, fd;
    char name[32];
    uint8_t *buf;
    size_t start, len;      /* pending bytes: buf[start .. start+len) */
    int watching;           /* EPOLLOUT armed */
    uint64_t packets, dropped_packets, dropped_bytes;
} tee_t;
static tee_t tees[MAX_TEES];

static void tee_watch(int t, int on) {
    if (tees[t].watching == on) return;
    struct epoll_event ev = {.events = EPOLLOUT, .data.u32 = TAG_TEE + (uint32_t)t};
    epoll_ctl(epfd, on ? EPOLL_CTL_ADD : EPOLL_CTL_DEL, tees[t].fd, &ev);
    tees[t].watching = on;
}

static void tee_flush(int t) {
    tee_t *tee = &tees[t];
    while (tee->len > 0) {
        ssize_t n = write(tee->fd, tee->buf + tee->start, tee->len);
        if (n <= 0) {
            if (n < 0 && errno == EINTR) continue;
            if (n < 0 && errno != EAGAIN) { tee->dropped_bytes += tee->len; tee->len = 0; }
            break; /* EAGAIN: the reader is behind; EPIPE: it is gone */
        }
        tee->start += (size_t)n;
        tee->len -= (size_t)n;
    }
    if (tee->len == 0) tee->start = 0;
    tee_watch(t, tee->len > 0);
}

static void tee_write(int t, const uint8_t *data, uint32_t len) {
    tee_t *tee = &tees[t];
    if (tee->len + 16 + len > TEE_BUFFER) { tee->dropped_packets++; tee->dropped_bytes += len; return; }
    if (tee->start + tee->len + 16 + len > TEE_BUFFER) { /* compact */
        memmove(tee->buf, tee->buf + tee->start, tee->len);
        tee->start = 0;
    }
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint32_t rec[4] = {(uint32_t)ts.tv_sec, (uint32_t)(ts.tv_nsec / 1000), len, len};
    memcpy(tee->buf + tee->start + tee->len, rec, sizeof rec);
    memcpy(tee->buf + tee->start + tee->len + sizeof rec, data, len);
    tee->len += sizeof rec + len;
    tee->packets++;
    tee_flush(t);
}

static void tee_close(int t) {
    tee_t *tee = &tees[t];
    if (!tee->used) return;
    tee_watch(t, 0);
    close(tee->fd);
    free(tee->buf);
    for (int i = 0; i < dir_count; i++) if (dirs[i].tee == t) dirs[i].tee = -1;
    memset(tee, 0, sizeof *tee);
}

static void switch_input(int seg, int from_ep, const uint8_t *data, uint32_t len, uint32_t hops);

static uint64_t heap_key(int k) { return dirs[heap[k]].head->release; }

static void heap_set(int k, int di) { heap[k] = di; dirs[di].heap_pos = k; }

static void heap_up(int k) {
    int di = heap[k];
    uint64_t key = dirs[di].head->release;
    while (k > 0 && heap_key((k - 1) / 2) > key) { heap_set(k, heap[(k - 1) / 2]); k = (k - 1) / 2; }
    heap_set(k, di);
}

static void heap_down(int k) {
    int di = heap[k];
    uint64_t key = dirs[di].head->release;
    for (;;) {
        int c = 2 * k + 1;
        if (c >= heap_n) break;
        if (c + 1 < heap_n && heap_key(c + 1) < heap_key(c)) c++;
        if (heap_key(c) >= key) break;
        heap_set(k, heap[c]);
        k = c;
    }
    heap_set(k, di);
}

/* dir di's first frame changed (or its queue emptied): move it in the heap */
static void heap_update(int di) {
    dir_t *d = &dirs[di];
    int k = d->heap_pos;
    if (!d->head) {
        if (k < 0) return;
        d->heap_pos = -1;
        int last = heap[--heap_n];
        if (k == heap_n) return;
        heap_set(k, last);
        heap_up(k);
        heap_down(dirs[last].heap_pos);
        return;
    }
    if (k < 0) { heap_set(heap_n, di); heap_up(heap_n++); return; }
    heap_up(k);
    heap_down(d->heap_pos);
}

static frame_t *frame_alloc(uint32_t len) {
    if (len <= POOL_FRAME && pool) {
        frame_t *f = pool;
        pool = f->next;
        pool_count--;
        return f;
    }
    uint32_t cap = len <= POOL_FRAME ? POOL_FRAME : len;
    frame_t *f = malloc(sizeof(frame_t) + cap);
    if (f) f->cap = cap;
    return f;
}

static void frame_free(frame_t *f) {
    if (f->cap == POOL_FRAME && pool_count < POOL_KEEP) { f->next = pool; pool = f; pool_count++; }
    else free(f);
}

static void vhost_out(int p, int i);
static void vhost_wake(vu_dev_t *vu, int q);

/* a port's NIC socket is full: keep a copy of the frame until it is writable again (up to
   EGRESS_MAX frames, and HELD_MAX_BYTES over all ports; then the frame is dropped and
   counted: the NIC's reader is far behind) */
static void egress_hold(int p, const uint8_t *data, uint32_t len) {
    port_t *port = &ports[p];
    dir_t *d = &dirs[port->out];
    frame_t *f = port->waiting < EGRESS_MAX && held_bytes + len <= HELD_MAX_BYTES ?
        frame_alloc(len) : NULL;
    if (!f) {
        d->drop_full++;
        d->tx_packets--;
        d->tx_bytes -= len;
        return;
    }
    memcpy(f->data, data, len);
    f->len = len;
    f->next = NULL;
    if (port->wait_tail) port->wait_tail->next = f; else port->wait_head = f;
    port->wait_tail = f;
    held_bytes += len;
    if (port->waiting++ == 0 && port->vu) { /* the guest kicks when it adds buffers */
        if (vu_want_kicks(port->vu, VU_RX, 1)) vhost_wake(port->vu, VU_RX); /* it already did */
    } else if (port->waiting == 1) { /* tell us when it is writable */
        struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.u32 = (uint32_t)p};
        epoll_ctl(epfd, EPOLL_CTL_MOD, port->fd, &ev);
    }
}

/* the port's socket is writable: send what it held, oldest first, as far as it takes */
static void egress_drain(int p) {
    port_t *port = &ports[p];
    struct mmsghdr msgs[SEND_BATCH];
    struct iovec iovs[SEND_BATCH];
    while (port->wait_head) {
        int n = 0;
        for (frame_t *f = port->wait_head; f && n < SEND_BATCH; f = f->next, n++) {
            iovs[n] = (struct iovec){f->data, f->len};
            msgs[n].msg_hdr = (struct msghdr){.msg_iov = &iovs[n], .msg_iovlen = 1};
        }
        int sent = sendmmsg(port->fd, msgs, (unsigned)n, MSG_DONTWAIT);
        if (sent < 0 && errno == EINTR) continue;
        if (sent < 0 && errno == EAGAIN) return; /* still full: wait for the next EPOLLOUT */
        if (sent <= 0) sent = 1;                 /* an error on the first frame: drop it */
        for (int k = 0; k < sent; k++) {
            frame_t *f = port->wait_head;
            port->wait_head = f->next;
            port->waiting--;
            held_bytes -= f->len;
            frame_free(f);
        }
    }
    port->wait_tail = NULL;
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)p};
    epoll_ctl(epfd, EPOLL_CTL_MOD, port->fd, &ev);
}

/* send every frame waiting in outq, a batch per port, in order; then free released frames.
   A port whose socket is full (or already holds frames) keeps them, in order, for later. */
static void flush_out(void) {
    struct mmsghdr msgs[SEND_BATCH];
    struct iovec iovs[SEND_BATCH];
    for (int t = 0; t < out_nports; t++) {
        int p = out_ports[t], i = out_first[p];
        out_first[p] = -1;
        if (ports[p].vu) { vhost_out(p, i); continue; }
        while (i >= 0) {
            if (ports[p].waiting) { /* behind frames held earlier: keep the order */
                for (; i >= 0; i = outq[i].next) egress_hold(p, outq[i].data, outq[i].len);
                break;
            }
            int n = 0, first = i;
            for (; i >= 0 && n < SEND_BATCH; i = outq[i].next, n++) {
                iovs[n] = (struct iovec){(void *)outq[i].data, outq[i].len};
                msgs[n].msg_hdr = (struct msghdr){.msg_iov = &iovs[n], .msg_iovlen = 1};
            }
            int done = 0;
            while (done < n) {
                int sent = sendmmsg(ports[p].fd, msgs + done, (unsigned)(n - done), MSG_DONTWAIT);
                if (sent > 0) { done += sent; continue; }
                if (errno == EINTR) continue;
                if (errno == EAGAIN) break; /* full: the rest is held below */
                if (errno != ECONNREFUSED) perror("fabric: send");
                done++; /* skip the frame that failed */
            }
            if (done < n) { /* hold the frames of this batch it did not take, in order */
                int j = first;
                for (int k = 0; k < done; k++) j = outq[j].next;
                for (int k = done; k < n; k++, j = outq[j].next) egress_hold(p, outq[j].data, outq[j].len);
            }
        }
    }
    out_nports = 0;
    outq_len = 0;
    while (sent_frames) { frame_t *f = sent_frames; sent_frames = f->next; frame_free(f); }
}

static void queue_out(int p, const uint8_t *data, uint32_t len) {
    if (outq_len == OUT_MAX) flush_out();
    int i = outq_len++;
    outq[i] = (out_t){data, len, -1};
    if (out_first[p] < 0) { out_first[p] = i; out_ports[out_nports++] = p; }
    else outq[out_last[p]].next = i;
    out_last[p] = i;
}

/* a frame leaves a dir: to a NIC, or into a switch (one more hop) */
static void deliver(dir_t *d, const uint8_t *data, uint32_t len, uint32_t hops) {
    d->tx_packets++;
    d->tx_bytes += len;
    pcap_write(d, data, len);
    if (d->tee >= 0) tee_write(d->tee, data, len);
    if (d->to_port >= 0) {
        port_t *p = &ports[d->to_port];
        if (p->tap) {
            /* EIO: the interface is down (its namespace may be going away) */
            if (write(p->fd, data, len) < 0 && errno != EAGAIN && errno != EIO && errno != EBADFD)
                perror("fabric: write to tap");
        } else {
            queue_out(d->to_port, data, len);
        }
    } else if (hops >= MAX_HOPS) {
        d->drop_hops++;
    } else {
        switch_input(d->to_seg, d->from_ep, data, len, hops + 1);
    }
}

/* a frame enters a dir: impairments decide if, when and how often it leaves */
static void dir_input(int di, const uint8_t *data, uint32_t len, uint32_t hops) {
    dir_t *d = &dirs[di];
    d->rx_packets++;
    d->rx_bytes += len;
    if (!d->up) { d->drop_down++; return; }
    if (len > 14 && len - 14 > d->mtu) { d->drop_mtu++; return; }
    if (d->ge) {
        if (d->ge_bad) { if (rnd(d) < d->ge_r) d->ge_bad = 0; }
        else if (rnd(d) < d->ge_p) d->ge_bad = 1;
        double lose = d->ge_bad ? 1.0 - d->ge_h : 1.0 - d->ge_k;
        if (rnd(d) < lose) { d->drop_loss++; return; }
    } else if (d->loss > 0 && rnd(d) < d->loss) {
        d->drop_loss++;
        return;
    }
    int copies = (d->dup > 0 && rnd(d) < d->dup) ? 2 : 1;
    if (copies == 2) d->duplicated++;
    if (d->delay == 0 && d->jitter == 0 && d->rate == 0 && d->head == NULL && d->corrupt == 0) {
        for (int c = 0; c < copies; c++) deliver(d, data, len, hops); /* nothing to wait for */
        return;
    }
    uint64_t now = now_ns();
    for (int c = 0; c < copies; c++) {
        if (d->queue_limit && d->queued_bytes + len > d->queue_limit) { d->drop_queue++; continue; }
        frame_t *f = frame_alloc(len);
        if (!f) { d->drop_queue++; continue; }
        memcpy(f->data, data, len);
        f->len = len;
        f->hops = hops;
        f->next = NULL;
        if (d->corrupt > 0 && len > 14 && rnd(d) < d->corrupt) {
            uint32_t bit = 14 * 8 + (uint32_t)(rnd(d) * (double)((len - 14) * 8));
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
        if (d->jitter) jitter = (int64_t)((rnd(d) * 2.0 - 1.0) * (double)d->jitter);
        int64_t release = (int64_t)(start + d->delay) + jitter;
        if (release < (int64_t)now) release = (int64_t)now;
        f->release = (uint64_t)release;
        d->queued_bytes += len;
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
        if (d->head == f) heap_update(di);
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

static void switch_input(int seg, int from_ep, const uint8_t *data, uint32_t len, uint32_t hops) {
    if (len < 14) return;
    seg_t *s = &segs[seg];
    learn(s, data + 6, from_ep);
    int dst = (data[0] & 1) ? -1 : lookup(s, data);
    if (dst >= 0 && dst != from_ep) {
        int di = egress_dir(seg, dst);
        if (di >= 0) dir_input(di, data, len, hops);
        return;
    }
    if (dst == from_ep) return;
    for (int k = 0; k < s->neps; k++) {
        if (s->eps[k] == from_ep) continue;
        int di = egress_dir(seg, s->eps[k]);
        if (di >= 0) dir_input(di, data, len, hops);
    }
}

/* release every due frame, earliest first; return the next pending release (0: none) */
static uint64_t run_queues(void) {
    if (heap_n == 0) return 0;
    uint64_t now = now_ns();
    while (heap_n > 0) {
        int di = heap[0];
        dir_t *d = &dirs[di];
        frame_t *f = d->head;
        if (f->release > now) break;
        d->head = f->next;
        if (!d->head) d->tail = NULL;
        d->queued_bytes -= f->len;
        heap_update(di);
        deliver(d, f->data, f->len, f->hops); /* may queue it again further on (trunks) */
        f->next = sent_frames;                /* its bytes may wait in outq: freed by flush_out */
        sent_frames = f;
    }
    return heap_n > 0 ? dirs[heap[0]].head->release : 0;
}

static void arm_timer(uint64_t when) {
    if (when == armed_at) return;
    armed_at = when;
    struct itimerspec its = {0};
    if (when) {
        its.it_value.tv_sec = (time_t)(when / 1000000000ULL);
        its.it_value.tv_nsec = (long)(when % 1000000000ULL);
    }
    timerfd_settime(tfd, TFD_TIMER_ABSTIME, &its, NULL);
}

/* true if segments a and b are already joined through trunks (a new trunk would close a loop) */
static int segments_joined(int a, int b) {
    int queue[MAX_SEGS], seen[MAX_SEGS] = {0}, head = 0, tail = 0;
    queue[tail++] = a;
    seen[a] = 1;
    while (head < tail) {
        int s = queue[head++];
        if (s == b) return 1;
        for (int t = 0; t < MAX_TRUNKS; t++) {
            if (!trunks[t].used) continue;
            int other = trunks[t].seg_a == s ? trunks[t].seg_b : trunks[t].seg_b == s ? trunks[t].seg_a : -1;
            if (other >= 0 && !seen[other]) { seen[other] = 1; queue[tail++] = other; }
        }
    }
    return 0;
}

static int set_param(dir_t *d, const char *key, const char *value) {
    char *end;
    double v = strtod(value, &end);
    int numeric = strcmp(key, "ge") != 0;
    if (numeric && (end == value || *end != 0 || v != v || v < 0 || v > 1e18)) return -2;
    if (!strcmp(key, "delay_ns")) d->delay = (uint64_t)v;
    else if (!strcmp(key, "jitter_ns")) d->jitter = (uint64_t)v;
    else if (!strcmp(key, "reorder")) d->reorder = v != 0;
    else if (!strcmp(key, "loss")) { d->loss = v; d->ge = 0; }
    else if (!strcmp(key, "ge")) {
        double p, r, h, k;
        if (sscanf(value, "%lf,%lf,%lf,%lf", &p, &r, &h, &k) != 4 || !(p >= 0 && p <= 1) ||
            !(r >= 0 && r <= 1) || !(h >= 0 && h <= 1) || !(k >= 0 && k <= 1)) return -2;
        d->ge_p = p; d->ge_r = r; d->ge_h = h; d->ge_k = k;
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
                ",\"drop_hops\":%" PRIu64 ",\"drop_full\":%" PRIu64 ",\"drop_bad\":%" PRIu64
                ",\"duplicated\":%" PRIu64
                ",\"corrupted\":%" PRIu64
                ",\"queued_bytes\":%" PRIu64 ",\"ring_dropped_packets\":%" PRIu64
                ",\"ring_dropped_bytes\":%" PRIu64 "}",
                first ? "" : ",", d->name, d->rx_packets, d->rx_bytes, d->tx_packets, d->tx_bytes,
                d->drop_loss, d->drop_queue, d->drop_down, d->drop_mtu, d->drop_hops, d->drop_full,
                d->drop_bad, d->duplicated,
                d->corrupted, d->queued_bytes, d->ring_dropped_packets, d->ring_dropped_bytes);
        first = 0;
    }
    fputc('}', out);
}

/* the oldest descriptor client c sent and no command used yet, or -1 */
static int take_fd(int c) {
    if (client_nfds[c] == 0) return -1;
    int fd = client_fds[c][0];
    memmove(client_fds[c], client_fds[c] + 1, (size_t)(client_nfds[c] - 1) * sizeof(int));
    client_nfds[c]--;
    return fd;
}

static void vhost_kick_changed(vu_dev_t *vu, int q, int old_fd, int new_fd);

/* port p on segment s reads and writes fd (a datagram socket or a tap), or, with vhost_path,
   fd is the socket listening there for the port's QEMU (vhost-user); 0, or -1 with the error
   written to out (fd closed) */
static int add_port(int p, int s, int fd, const char *vhost_path, FILE *out) {
    char name[32];
    if (p < 0 || p >= MAX_PORTS || s < 0 || s >= MAX_SEGS || ports[p].used) {
        close(fd);
        fputs("error bad port", out);
        return -1;
    }
    snprintf(name, sizeof name, "p%d.in", p);
    int in = new_dir(name);
    snprintf(name, sizeof name, "p%d.out", p);
    int o = new_dir(name);
    if (in < 0 || o < 0) { close(fd); fputs("error too many links", out); return -1; }
    dirs[in].to_seg = s; dirs[in].from_ep = p;
    dirs[o].to_port = p;
    int sock_type, tap = 0;
    socklen_t optlen = sizeof sock_type;
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &sock_type, &optlen) < 0) tap = errno == ENOTSOCK;
    ports[p] = (port_t){1, fd, s, in, o, tap, NULL, NULL, 0, NULL, NULL};
    segs[s].used = 1;
    segs[s].eps[segs[s].neps++] = p;
    fcntl(fd, F_SETFL, O_NONBLOCK);
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)p};
    if (vhost_path) {
        ports[p].vu = malloc(sizeof(vu_dev_t));
        ports[p].path = strdup(vhost_path);
        if (!ports[p].vu || !ports[p].path) { perror("fabric: vhost-user port"); exit(1); }
        vu_init(ports[p].vu, p, vhost_kick_changed);
        ev.data.u32 = TAG_VU + 4 * (uint32_t)p;
    }
    epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
    return 0;
}

/* one control command from client c; the reply goes to out (one line) */
static void handle_command(int c, char *line, FILE *out) {
    char *argv[24];
    int argc = 0;
    for (char *tok = strtok(line, " \t\r"); tok && argc < 24; tok = strtok(NULL, " \t\r")) argv[argc++] = tok;
    if (argc == 0) { fputs("error empty command", out); return; }
    char name[32];
    if (!strcmp(argv[0], "port") && argc == 3) {            /* port ID SEG, the fd attached */
        int fd = take_fd(c);
        if (fd < 0) { fputs("error port needs its descriptor sent with the command", out); return; }
        if (add_port(atoi(argv[1]), atoi(argv[2]), fd, NULL, out) == 0) fputs("ok", out);
    } else if (!strcmp(argv[0], "vport") && argc == 4) {    /* vport ID SEG PATH: vhost-user */
        /* a port whose QEMU connects to PATH (-netdev vhost-user): the fabric reads and
           writes the guest's rings in its shared memory; a restarted QEMU connects again */
        struct sockaddr_un addr = {.sun_family = AF_UNIX};
        if (strlen(argv[3]) >= sizeof addr.sun_path || argv[3][0] != '/') {
            fprintf(out, "error vport path must be absolute and under %zu bytes", sizeof addr.sun_path);
            return;
        }
        strcpy(addr.sun_path, argv[3]);
        struct stat st;
        if (lstat(argv[3], &st) == 0 && !S_ISSOCK(st.st_mode)) {
            fprintf(out, "error %s exists and is not a socket", argv[3]);
            return;
        }
        unlink(argv[3]);
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0 || bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0 || chmod(argv[3], 0600) < 0 ||
            listen(fd, 4) < 0) {
            fprintf(out, "error vhost-user socket %s: %s", argv[3], strerror(errno));
            if (fd >= 0) close(fd);
            return;
        }
        if (add_port(atoi(argv[1]), atoi(argv[2]), fd, argv[3], out) == 0) fputs("ok", out);
        else unlink(argv[3]);
    } else if (!strcmp(argv[0], "uport") && argc == 6) {    /* uport ID SEG ADDR PEER_ADDR PEER_PORT */
        /* a port whose UDP socket the fabric makes itself (a fabric started far from the
           caller, which cannot send it descriptors): bound to ADDR, connected to the peer
           unless PEER_PORT is 0 (then later, with connect); the reply is its port */
        struct sockaddr_in here = {.sin_family = AF_INET}, peer = {.sin_family = AF_INET};
        int peer_port = atoi(argv[5]);
        if (inet_pton(AF_INET, argv[3], &here.sin_addr) != 1 ||
            inet_pton(AF_INET, argv[4], &peer.sin_addr) != 1 || peer_port < 0 || peer_port > 65535) {
            fputs("error bad address", out);
            return;
        }
        peer.sin_port = htons((uint16_t)peer_port);
        int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        int buffer = 4 << 20; /* beyond rmem_max/wmem_max as root (FORCE), else capped there */
        if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &buffer, sizeof buffer) < 0)
            setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buffer, sizeof buffer);
        if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &buffer, sizeof buffer) < 0)
            setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &buffer, sizeof buffer);
        socklen_t len = sizeof here;
        if (fd < 0 || bind(fd, (struct sockaddr *)&here, sizeof here) < 0 ||
            (peer_port && connect(fd, (struct sockaddr *)&peer, sizeof peer) < 0) ||
            getsockname(fd, (struct sockaddr *)&here, &len) < 0) {
            fprintf(out, "error socket: %s", strerror(errno));
            if (fd >= 0) close(fd);
            return;
        }
        if (add_port(atoi(argv[1]), atoi(argv[2]), fd, NULL, out) == 0) fprintf(out, "ok %d", ntohs(here.sin_port));
    } else if (!strcmp(argv[0], "connect") && argc == 4) {  /* connect ID PEER_ADDR PEER_PORT */
        int p = atoi(argv[1]), peer_port = atoi(argv[3]);
        struct sockaddr_in peer = {.sin_family = AF_INET, .sin_port = htons((uint16_t)peer_port)};
        if (p < 0 || p >= MAX_PORTS || !ports[p].used || ports[p].tap || ports[p].vu ||
            inet_pton(AF_INET, argv[2], &peer.sin_addr) != 1 || peer_port <= 0 || peer_port > 65535) {
            fputs("error bad port or address", out);
            return;
        }
        if (connect(ports[p].fd, (struct sockaddr *)&peer, sizeof peer) < 0) { fprintf(out, "error connect: %s", strerror(errno)); return; }
        fputs("ok", out);
    } else if (!strcmp(argv[0], "trunk") && argc == 4) {    /* trunk ID SEG_A SEG_B */
        int t = atoi(argv[1]), a = atoi(argv[2]), b = atoi(argv[3]);
        if (t < 0 || t >= MAX_TRUNKS || a < 0 || a >= MAX_SEGS || b < 0 || b >= MAX_SEGS || a == b || trunks[t].used) {
            fputs("error bad trunk", out); return;
        }
        if (segments_joined(a, b)) {
            fprintf(out, "error trunk %d would close a loop: segments %d and %d are already joined", t, a, b);
            return;
        }
        snprintf(name, sizeof name, "t%d.ab", t);
        int ab = new_dir(name);
        snprintf(name, sizeof name, "t%d.ba", t);
        int ba = new_dir(name);
        dirs[ab].to_seg = b; dirs[ab].from_ep = EP_TRUNK(t, 1);
        dirs[ba].to_seg = a; dirs[ba].from_ep = EP_TRUNK(t, 0);
        trunks[t] = (trunk_t){1, a, b, ab, ba};
        segs[a].used = segs[b].used = 1;
        segs[a].eps[segs[a].neps++] = EP_TRUNK(t, 0);
        segs[b].eps[segs[b].neps++] = EP_TRUNK(t, 1);
        fputs("ok", out);
    } else if (!strcmp(argv[0], "set") && argc >= 3) {      /* set DIR key=value ... */
        int di = dir_index(argv[1]);
        if (di < 0) { fprintf(out, "error no link direction %s", argv[1]); return; }
        for (int i = 2; i < argc; i++) {
            char *eq = strchr(argv[i], '=');
            if (!eq) { fprintf(out, "error %s is not key=value", argv[i]); return; }
            *eq = 0;
            int result = set_param(&dirs[di], argv[i], eq + 1);
            if (result == -1) { fprintf(out, "error unknown setting %s", argv[i]); return; }
            if (result == -2) { fprintf(out, "error bad value %s for %s", eq + 1, argv[i]); return; }
        }
        fputs("ok", out);
    } else if (!strcmp(argv[0], "capture") && (argc == 3 || argc == 5)) { /* capture DIR PATH|off [RING_BYTES RING_NS] */
        int di = dir_index(argv[1]);
        if (di < 0) { fprintf(out, "error no link direction %s", argv[1]); return; }
        dir_t *d = &dirs[di];
        pcap_close(d);
        d->ring_bytes = d->ring_ns = d->seg_bytes = d->seg_packets = 0;
        d->old_packets = d->old_bytes = d->ring_dropped_packets = d->ring_dropped_bytes = 0;
        if (strcmp(argv[2], "off") != 0) {
            if (argc == 5) {
                char *end1, *end2;
                d->ring_bytes = strtoull(argv[3], &end1, 10);
                d->ring_ns = strtoull(argv[4], &end2, 10);
                if (*end1 || *end2 || (d->ring_bytes && d->ring_bytes < 2 * (MAX_FRAME + 40))) {
                    fprintf(out, "error bad ring limits %s %s (bytes: 0 or at least %d)", argv[3], argv[4], 2 * (MAX_FRAME + 40));
                    return;
                }
            }
            size_t n = strlen(argv[2]) + 5;
            char *older = malloc(n);
            if (older) { snprintf(older, n, "%s.old", argv[2]); unlink(older); free(older); }
            FILE *f = pcap_open(argv[2]);
            if (!f) { fprintf(out, "error cannot write %s: %s", argv[2], strerror(errno)); return; }
            d->pcap = f;
            d->pcap_path = strdup(argv[2]);
            d->seg_start = now_ns();
        }
        fputs("ok", out);
    } else if (!strcmp(argv[0], "tee") && argc == 4) {      /* tee NAME PATH DIR,DIR...  */
        int t = -1;
        for (int i = 0; i < MAX_TEES; i++) if (tees[i].used && !strcmp(tees[i].name, argv[1])) { fputs("error tee exists", out); return; }
        for (int i = 0; i < MAX_TEES; i++) if (!tees[i].used) { t = i; break; }
        if (t < 0) { fputs("error too many tees", out); return; }
        int wanted[MAX_DIRS], count = 0;
        char *save = NULL;
        for (char *part = strtok_r(argv[3], ",", &save); part; part = strtok_r(NULL, ",", &save)) {
            int di = dir_index(part);
            if (di < 0) { fprintf(out, "error no link direction %s", part); return; }
            if (dirs[di].tee >= 0) { fprintf(out, "error %s is already teed", part); return; }
            if (count < MAX_DIRS) wanted[count++] = di;
        }
        int fd = open(argv[2], O_WRONLY | O_NONBLOCK | O_CLOEXEC | O_NOFOLLOW);
        if (fd < 0) { fprintf(out, "error cannot open %s: %s", argv[2], strerror(errno)); return; }
        struct stat st;
        if (fstat(fd, &st) < 0 || !S_ISFIFO(st.st_mode)) { /* a tee feeds a reader, never a file */
            close(fd);
            fprintf(out, "error %s is not a FIFO", argv[2]);
            return;
        }
        uint8_t *buf = malloc(TEE_BUFFER);
        if (!buf) { close(fd); fputs("error out of memory", out); return; }
        tee_t *tee = &tees[t];
        memset(tee, 0, sizeof *tee);
        tee->used = 1; tee->fd = fd; tee->buf = buf;
        snprintf(tee->name, sizeof tee->name, "%s", argv[1]);
        uint32_t hdr[6] = {0xa1b2c3d4, 0x00040002, 0, 0, MAX_FRAME, 1};
        memcpy(buf, hdr, sizeof hdr);
        tee->len = sizeof hdr;
        for (int k = 0; k < count; k++) dirs[wanted[k]].tee = t;
        tee_flush(t);
        fputs("ok", out);
    } else if (!strcmp(argv[0], "untee") && argc == 2) {    /* untee NAME: flush what the reader takes, close */
        for (int i = 0; i < MAX_TEES; i++) {
            if (tees[i].used && !strcmp(tees[i].name, argv[1])) {
                /* hand the reader the rest (5 s at most: a stuck reader cannot stall the lab) */
                uint64_t until = now_ns() + 5000000000ULL;
                tee_flush(i);
                while (tees[i].len > 0 && now_ns() < until) {
                    struct pollfd pfd = {.fd = tees[i].fd, .events = POLLOUT};
                    if (poll(&pfd, 1, 500) < 0 && errno != EINTR) break;
                    if (pfd.revents & (POLLERR | POLLHUP)) break;
                    tee_flush(i);
                }
                tees[i].dropped_bytes += tees[i].len;
                fprintf(out, "ok {\"packets\":%" PRIu64 ",\"dropped_packets\":%" PRIu64 ",\"dropped_bytes\":%" PRIu64 "}",
                        tees[i].packets, tees[i].dropped_packets, tees[i].dropped_bytes);
                tee_close(i);
                return;
            }
        }
        fprintf(out, "error no tee %s", argv[1]);
    } else if (!strcmp(argv[0], "flush")) {                 /* flush pcaps to disk */
        for (int i = 0; i < MAX_DIRS; i++) if (dirs[i].pcap) fflush(dirs[i].pcap);
        fputs("ok", out);
    } else if (!strcmp(argv[0], "stats")) {
        fputs("ok ", out);
        stats(out);
    } else if (!strcmp(argv[0], "seed") && argc == 2) {
        lab_seed = strtoull(argv[1], NULL, 10);
        for (int i = 0; i < dir_count; i++) if (dirs[i].used) { dirs[i].rng = derive_rng(dirs[i].name); dirs[i].ge_bad = 0; }
        fputs("ok", out);
    } else if (!strcmp(argv[0], "quit")) {
        running = 0;
        fputs("ok", out);
    } else {
        fprintf(out, "error unknown command %s", argv[0]);
    }
}

static void drop_client(int c) {
    if (c == stdio_client) running = 0; /* whoever started us over a pipe is gone */
    close(clients[c]);
    clients[c] = -1;
    client_len[c] = 0;
    while (client_nfds[c] > 0) close(take_fd(c));
}

static void client_input(int c) {
    char control[CMSG_SPACE(sizeof(int) * MAX_PENDING_FDS)];
    struct iovec iov = {client_buf[c] + client_len[c], sizeof client_buf[c] - client_len[c] - 1};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control, .msg_controllen = sizeof control};
    ssize_t n = c == stdio_client ? read(clients[c], iov.iov_base, iov.iov_len)
                                  : recvmsg(clients[c], &msg, MSG_CMSG_CLOEXEC);
    if (c == stdio_client) msg.msg_controllen = 0;
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(&msg); n > 0 && cm; cm = CMSG_NXTHDR(&msg, cm)) {
        if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS) continue;
        size_t count = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        int *fds = (int *)CMSG_DATA(cm);
        for (size_t k = 0; k < count; k++) {
            if (client_nfds[c] < MAX_PENDING_FDS) client_fds[c][client_nfds[c]++] = fds[k];
            else close(fds[k]);
        }
    }
    if (n <= 0) { drop_client(c); return; }
    client_len[c] += (size_t)n;
    char *start = client_buf[c], *nl;
    while ((nl = memchr(start, '\n', client_len[c] - (size_t)(start - client_buf[c])))) {
        *nl = 0;
        char *reply = NULL;
        size_t size = 0;
        FILE *out = open_memstream(&reply, &size);
        handle_command(c, start, out);
        fputc('\n', out);
        fclose(out);
        if (write(client_out[c], reply, size) < 0) perror("fabric: reply");
        free(reply);
        start = nl + 1;
    }
    size_t rest = client_len[c] - (size_t)(start - client_buf[c]);
    memmove(client_buf[c], start, rest);
    client_len[c] = rest;
    if (client_len[c] >= sizeof client_buf[c] - 1) client_len[c] = 0; /* overlong line: drop */
}

/* ---- vhost-user ports: frames straight from and into the guests' rings ---- */

static void vhost_kick_changed(vu_dev_t *vu, int q, int old_fd, int new_fd) {
    if (old_fd >= 0) epoll_ctl(epfd, EPOLL_CTL_DEL, old_fd, NULL);
    if (new_fd >= 0) {
        struct epoll_event ev = {.events = EPOLLIN,
                                 .data.u32 = TAG_VU + 4 * (uint32_t)vu->owner + 2 + (uint32_t)q};
        epoll_ctl(epfd, EPOLL_CTL_ADD, new_fd, &ev);
    }
}

/* look at ring q again on the next turn of the loop (its kick descriptor becomes readable) */
static void vhost_wake(vu_dev_t *vu, int q) {
    uint64_t one = 1;
    if (vu->ring[q].kick_fd >= 0 && write(vu->ring[q].kick_fd, &one, sizeof one) < 0 && errno != EAGAIN)
        perror("fabric: vhost-user wake");
}

/* a frame the port's guest could not take counts as dropped there, not as sent: rc -2, its
   NIC is not running; -3, the buffer it gave was malformed or too small */
static void vhost_undelivered(int p, uint32_t len, int rc) {
    dir_t *d = &dirs[ports[p].out];
    if (rc == -2) d->drop_down++; else d->drop_bad++;
    d->tx_packets--;
    d->tx_bytes -= len;
}

/* frames switched to vhost port p (outq chain from i), into its guest's receive ring; when
   the guest has no buffer the rest wait, in order, until it adds some */
static void vhost_out(int p, int i) {
    port_t *port = &ports[p];
    for (; i >= 0; i = outq[i].next) {
        int rc = port->waiting ? -1 : vu_rx_push(port->vu, outq[i].data, outq[i].len);
        if (rc == -1) egress_hold(p, outq[i].data, outq[i].len);
        else if (rc < -1) vhost_undelivered(p, outq[i].len, rc);
    }
    vu_signal(port->vu, VU_RX);
}

/* the guest of port p added receive buffers: the frames it held go in, oldest first */
static void vhost_drain(int p) {
    port_t *port = &ports[p];
    while (port->wait_head) {
        frame_t *f = port->wait_head;
        int rc = vu_rx_push(port->vu, f->data, f->len);
        if (rc == -1) break;
        if (rc < -1) vhost_undelivered(p, f->len, rc);
        port->wait_head = f->next;
        port->waiting--;
        held_bytes -= f->len;
        frame_free(f);
    }
    if (!port->wait_head) {
        port->wait_tail = NULL;
        vu_want_kicks(port->vu, VU_RX, 0); /* nothing waits: no kick per refill */
    }
    vu_signal(port->vu, VU_RX);
}

/* what the guest of port p sent, in batches; after 8 batches the others get their turn */
static void vhost_tx(int p) {
    static uint8_t scratch[BATCH][MAX_FRAME]; /* frames spread over several descriptors */
    vu_dev_t *vu = ports[p].vu;
    for (int round = 0; round < 8; round++) {
        uint16_t heads[BATCH];
        const uint8_t *data;
        uint32_t len;
        int n = 0;
        vu_want_kicks(vu, VU_TX, 0);
        while (n < BATCH && vu_tx_pop(vu, scratch[n], MAX_FRAME, &data, &len, &heads[n])) {
            dir_input(ports[p].in, data, len, 0);
            n++;
        }
        flush_out(); /* the frames leave before the guest may reuse their buffers */
        dirs[ports[p].in].drop_bad += vu->bad_frames; /* chains it handed back unread */
        vu->bad_frames = 0;
        for (int k = 0; k < n; k++) vu_tx_done(vu, heads[k]);
        vu_signal(vu, VU_TX);
        if (n < BATCH && !vu_want_kicks(vu, VU_TX, 1)) return;
    }
    vu_want_kicks(vu, VU_TX, 1);
    vhost_wake(vu, VU_TX);
}

/* the port's QEMU went away (or broke the protocol): forget its rings and held frames */
static void vhost_disconnect(int p) {
    port_t *port = &ports[p];
    vu_dev_t *vu = port->vu;
    epoll_ctl(epfd, EPOLL_CTL_DEL, vu->fd, NULL);
    vu_reset(vu);
    close(vu->fd);
    vu->fd = -1;
    while (port->wait_head) {
        frame_t *f = port->wait_head;
        port->wait_head = f->next;
        vhost_undelivered(p, f->len, -2);
        held_bytes -= f->len;
        frame_free(f);
    }
    port->wait_tail = NULL;
    port->waiting = 0;
}

static void vhost_event(uint32_t tag, uint32_t events) {
    int p = (int)((tag - TAG_VU) / 4), kind = (int)((tag - TAG_VU) % 4);
    if (p >= MAX_PORTS || !ports[p].vu) return;
    vu_dev_t *vu = ports[p].vu;
    if (kind == 0) { /* a QEMU connects; the newest one wins (a restarted VM) */
        int fd = accept4(ports[p].fd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0) return;
        if (vu->fd >= 0) vhost_disconnect(p);
        struct timeval wait = {2, 0}; /* a message's rest must not stall the data path for long */
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &wait, sizeof wait);
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &wait, sizeof wait);
        vu->fd = fd;
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = TAG_VU + 4 * (uint32_t)p + 1};
        epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
    } else if (kind == 1) {
        if (vu->fd < 0) return;
        if (!(events & EPOLLIN) || vu_message(vu) < 0) { vhost_disconnect(p); return; }
        if (ports[p].wait_head && vu_ready(vu, VU_RX)) vhost_drain(p);
        if (vu_ready(vu, VU_TX)) vhost_tx(p); /* what it sent before its ring was watched */
    } else {
        int q = kind - 2;
        uint64_t count;
        if (vu->ring[q].kick_fd < 0 || read(vu->ring[q].kick_fd, &count, sizeof count) < 0) return;
        if (q == VU_TX) vhost_tx(p);
        else vhost_drain(p);
    }
}

int main(int argc, char **argv) {
    if (argc != 2 && !(argc == 3 && !strcmp(argv[2], "--stdio"))) {
        fprintf(stderr, "usage: %s CONTROL_SOCKET|- [--stdio]\n", argv[0]);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    /* a frame waits while the fabric waits for a core: with the guests' vCPUs keeping every
       core busy, a fabric at the default weight adds run-queue latency to each frame. A
       higher weight (root only; otherwise it stays as it is) lets it run when frames come. */
    if (setpriority(PRIO_PROCESS, 0, FABRIC_NICE) < 0 && errno != EACCES && errno != EPERM)
        perror("fabric: setpriority");
    for (int i = 0; i < MAX_CLIENTS; i++) clients[i] = -1;
    for (int i = 0; i < MAX_PORTS; i++) out_first[i] = -1;
    epfd = epoll_create1(EPOLL_CLOEXEC);
    tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    int listening = strcmp(argv[1], "-") != 0; /* "-" with --stdio: no control socket at all */
    if (!listening && argc != 3) { fprintf(stderr, "fabric: '-' needs --stdio\n"); return 2; }
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = 1000000};
    if (listening) {
        listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct sockaddr_un addr = {.sun_family = AF_UNIX};
        if (strlen(argv[1]) >= sizeof addr.sun_path) { fprintf(stderr, "fabric: socket path too long\n"); return 2; }
        strcpy(addr.sun_path, argv[1]);
        unlink(argv[1]);
        if (bind(listen_fd, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(listen_fd, 8) < 0) {
            perror("fabric: control socket");
            return 1;
        }
        epoll_ctl(epfd, EPOLL_CTL_ADD, listen_fd, &ev);
    }
    ev.data.u32 = 1000001;
    epoll_ctl(epfd, EPOLL_CTL_ADD, tfd, &ev);
    if (argc == 3) { /* commands on stdin, replies on stdout (a fabric started over SSH) */
        stdio_client = 0;
        clients[0] = 0;
        client_out[0] = 1;
        struct epoll_event sev = {.events = EPOLLIN, .data.u32 = 2000000};
        epoll_ctl(epfd, EPOLL_CTL_ADD, 0, &sev);
    }
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
            if (tag < MAX_PORTS && (events[i].events & EPOLLOUT)) egress_drain((int)tag);
            if (tag < MAX_PORTS && !(events[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP))) continue;
            if (tag < MAX_PORTS) {
                for (int k = 0; k < BATCH; k++) {
                    iovs[k] = (struct iovec){bufs[k], MAX_FRAME};
                    msgs[k].msg_hdr = (struct msghdr){.msg_iov = &iovs[k], .msg_iovlen = 1};
                }
                if (ports[tag].tap) {
                    for (int k = 0; k < BATCH; k++) { /* each frame keeps its buffer until the flush */
                        ssize_t got = read(ports[tag].fd, bufs[k], MAX_FRAME);
                        if (got <= 0) {
                            /* the tap's namespace is gone: stop listening to it */
                            if (got == 0 || (errno != EAGAIN && errno != EINTR))
                                epoll_ctl(epfd, EPOLL_CTL_DEL, ports[tag].fd, NULL);
                            break;
                        }
                        dir_input(ports[tag].in, bufs[k], (uint32_t)got, 0);
                    }
                    flush_out();
                    continue;
                }
                int got = recvmmsg(ports[tag].fd, msgs, BATCH, MSG_DONTWAIT, NULL);
                for (int k = 0; k < got; k++) dir_input(ports[tag].in, bufs[k], msgs[k].msg_len, 0);
                flush_out(); /* before the buffers are read into again */
            } else if (tag == 1000000) {
                int fd = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC);
                int slot = -1;
                for (int c = 0; c < MAX_CLIENTS; c++) if (clients[c] < 0) { slot = c; break; }
                if (fd >= 0 && slot >= 0) {
                    clients[slot] = fd;
                    client_out[slot] = fd;
                    struct epoll_event cev = {.events = EPOLLIN, .data.u32 = 2000000 + (uint32_t)slot};
                    epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &cev);
                } else if (fd >= 0) close(fd);
            } else if (tag == 1000001) {
                uint64_t expirations;
                if (read(tfd, &expirations, sizeof expirations) < 0 && errno != EAGAIN) perror("fabric: timer");
                armed_at = 0; /* it fired: the next deadline must be armed anew */
            } else if (tag >= TAG_VU) {
                vhost_event(tag, events[i].events);
            } else if (tag >= TAG_TEE) {
                tee_flush((int)(tag - TAG_TEE));
            } else if (tag >= 2000000) {
                client_input((int)(tag - 2000000));
            }
        }
        uint64_t next = run_queues();
        flush_out();
        arm_timer(next ? next + RELEASE_GRAIN_NS : 0);
    }
    for (int i = 0; i < MAX_DIRS; i++) pcap_close(&dirs[i]);
    for (int i = 0; i < MAX_TEES; i++) tee_close(i);
    for (int p = 0; p < MAX_PORTS; p++) if (ports[p].path) unlink(ports[p].path);
    if (listening) unlink(argv[1]);
    return 0;
}
