/* vhost-user back end of one virtio-net NIC (see vhost_user.h). */
#define _GNU_SOURCE
#include "vhost_user.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

/* requests (docs/interop/vhost-user.rst) */
enum {
    GET_FEATURES = 1, SET_FEATURES = 2, SET_OWNER = 3, RESET_OWNER = 4, SET_MEM_TABLE = 5,
    SET_LOG_BASE = 6, SET_LOG_FD = 7, SET_VRING_NUM = 8, SET_VRING_ADDR = 9, SET_VRING_BASE = 10,
    GET_VRING_BASE = 11, SET_VRING_KICK = 12, SET_VRING_CALL = 13, SET_VRING_ERR = 14,
    GET_PROTOCOL_FEATURES = 15, SET_PROTOCOL_FEATURES = 16, SET_VRING_ENABLE = 18,
};
#define MSG_VERSION 0x1u
#define MSG_REPLY 0x4u
#define MSG_NEED_REPLY 0x8u
#define MAX_MSG_FDS 8
#define MAX_PAYLOAD 4096

#define F_LOG_ALL 26
#define F_PROTOCOL_FEATURES 30
#define F_VERSION_1 32
#define F_NET_MRG_RXBUF 15
#define PF_LOG_SHMFD 1
#define OFFERED ((1ULL << F_VERSION_1) | (1ULL << F_LOG_ALL) | (1ULL << F_PROTOCOL_FEATURES))
#define OFFERED_PROTOCOL (1ULL << PF_LOG_SHMFD)

#define DESC_NEXT 1
#define DESC_WRITE 2
#define DESC_INDIRECT 4
#define USED_NO_NOTIFY 1
#define AVAIL_NO_INTERRUPT 1
#define RING_LOG 1 /* vhost_vring_addr.flags: log the used ring */
#define LOG_PAGE 4096
#define MAX_SEGS 64 /* descriptors one frame may span */

struct vu_desc { uint64_t addr; uint32_t len; uint16_t flags; uint16_t next; };
struct vu_avail { uint16_t flags; uint16_t idx; uint16_t ring[]; };
struct vu_used_elem { uint32_t id; uint32_t len; };
struct vu_used { uint16_t flags; uint16_t idx; struct vu_used_elem ring[]; };

typedef struct __attribute__((packed)) {
    uint32_t request, flags, size;
} msg_header_t;

typedef struct { uint32_t index, num; } vring_state_t;
typedef struct {
    uint32_t index, flags;
    uint64_t desc, used, avail, log;
} vring_addr_t;
typedef struct { uint64_t gpa, size, uva, mmap_offset; } mem_region_t;
typedef struct { uint32_t nregions, padding; mem_region_t regions[VU_MAX_REGIONS]; } mem_table_t;
typedef struct { uint64_t mmap_size, mmap_offset; } log_base_t;

void vu_init(vu_dev_t *dev, int owner, vu_kick_hook hook) {
    memset(dev, 0, sizeof *dev);
    dev->fd = -1;
    dev->owner = owner;
    dev->on_kick = hook;
    for (int q = 0; q < 2; q++) dev->ring[q].kick_fd = dev->ring[q].call_fd = -1;
}

static void unmap_memory(vu_dev_t *dev) {
    for (int i = 0; i < dev->nregions; i++) munmap(dev->regions[i].map, dev->regions[i].map_size);
    dev->nregions = 0;
}

static void unmap_log(vu_dev_t *dev) {
    if (dev->log_map) munmap(dev->log_map, dev->log_map_size);
    dev->log_map = NULL;
    dev->log = NULL;
    dev->log_size = 0;
}

static void set_kick(vu_dev_t *dev, int q, int fd) {
    vu_ring_t *r = &dev->ring[q];
    if (r->kick_fd >= 0) {
        if (dev->on_kick) dev->on_kick(dev, q, r->kick_fd, -1);
        close(r->kick_fd);
    }
    r->kick_fd = fd;
    if (fd >= 0 && dev->on_kick) dev->on_kick(dev, q, -1, fd);
}

void vu_reset(vu_dev_t *dev) {
    for (int q = 0; q < 2; q++) {
        set_kick(dev, q, -1);
        if (dev->ring[q].call_fd >= 0) close(dev->ring[q].call_fd);
        dev->ring[q] = (vu_ring_t){.kick_fd = -1, .call_fd = -1};
    }
    unmap_memory(dev);
    unmap_log(dev);
    dev->features = dev->protocol_features = 0;
}

/* host address of [addr, addr+len) in guest-physical (by_uva 0) or QEMU-virtual (1) space */
static uint8_t *translate(const vu_dev_t *dev, uint64_t addr, uint64_t len, int by_uva) {
    for (int i = 0; i < dev->nregions; i++) {
        const vu_region_t *r = &dev->regions[i];
        uint64_t base = by_uva ? r->uva : r->gpa;
        if (addr >= base && len <= r->size && addr - base <= r->size - len)
            return r->host + (addr - base);
    }
    return NULL;
}

static void log_write(vu_dev_t *dev, uint64_t gpa, uint64_t len) {
    if (!dev->log || !(dev->features & (1ULL << F_LOG_ALL)) || len == 0) return;
    for (uint64_t page = gpa / LOG_PAGE; page <= (gpa + len - 1) / LOG_PAGE; page++) {
        if (page / 8 >= dev->log_size) return;
        __atomic_fetch_or(&dev->log[page / 8], (uint8_t)(1u << (page % 8)), __ATOMIC_RELAXED);
    }
}

static void log_used(vu_dev_t *dev, vu_ring_t *r, uint64_t offset, uint64_t len) {
    if (r->log_used) log_write(dev, r->log_gpa + offset, len);
}

/* the ring's tables, from the addresses QEMU gave (after a new memory table, too) */
static void map_ring(vu_dev_t *dev, vu_ring_t *r) {
    if (!r->have_addr || r->num == 0) return;
    r->desc = (volatile struct vu_desc *)translate(dev, r->desc_uva, 16ULL * r->num, 1);
    r->avail = (volatile struct vu_avail *)translate(dev, r->avail_uva, 4 + 2ULL * r->num, 1);
    r->used = (volatile struct vu_used *)translate(dev, r->used_uva, 4 + 8ULL * r->num, 1);
    r->broken = !r->desc || !r->avail || !r->used;
}

static void start_ring(vu_ring_t *r) {
    if (r->used && !r->broken) r->used_idx = r->used->idx;
}

int vu_ready(const vu_dev_t *dev, int q) {
    const vu_ring_t *r = &dev->ring[q];
    return dev->fd >= 0 && r->enabled && !r->broken && r->kick_fd >= 0 && r->desc != NULL;
}

static void close_fds(int *fds, int n) {
    for (int i = 0; i < n; i++) if (fds[i] >= 0) close(fds[i]);
}

static int reply(vu_dev_t *dev, uint32_t request, const void *payload, uint32_t size) {
    uint8_t buf[sizeof(msg_header_t) + 16];
    msg_header_t h = {request, MSG_VERSION | MSG_REPLY, size};
    memcpy(buf, &h, sizeof h);
    memcpy(buf + sizeof h, payload, size);
    size_t want = sizeof h + size, done = 0;
    while (done < want) {
        ssize_t n = send(dev->fd, buf + done, want - done, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return -1;
        done += (size_t)n;
    }
    return 0;
}

static int reply_u64(vu_dev_t *dev, uint32_t request, uint64_t value) {
    return reply(dev, request, &value, sizeof value);
}

static int set_mem_table(vu_dev_t *dev, const uint8_t *payload, uint32_t size, int *fds, int nfds) {
    mem_table_t table;
    if (size < 8) return -1;
    memset(&table, 0, sizeof table);
    memcpy(&table, payload, size < sizeof table ? size : sizeof table);
    if (table.nregions == 0 || table.nregions > VU_MAX_REGIONS || (int)table.nregions != nfds ||
        size < 8 + table.nregions * sizeof(mem_region_t)) {
        fprintf(stderr, "fabric: vhost-user port %d: bad memory table (%u regions, %d fds)\n",
                dev->owner, table.nregions, nfds);
        return -1;
    }
    unmap_memory(dev);
    for (uint32_t i = 0; i < table.nregions; i++) {
        mem_region_t *m = &table.regions[i];
        size_t map_size = (size_t)(m->size + m->mmap_offset);
        if (m->size == 0 || map_size < m->size) { unmap_memory(dev); return -1; }
        void *map = mmap(NULL, map_size, PROT_READ | PROT_WRITE, MAP_SHARED, fds[i], 0);
        if (map == MAP_FAILED) {
            fprintf(stderr, "fabric: vhost-user port %d: mapping guest memory: %s\n",
                    dev->owner, strerror(errno));
            unmap_memory(dev);
            return -1;
        }
        dev->regions[dev->nregions++] = (vu_region_t){m->gpa, m->size, m->uva,
            (uint8_t *)map + m->mmap_offset, map, map_size};
    }
    for (int q = 0; q < 2; q++) map_ring(dev, &dev->ring[q]);
    return 0;
}

static int set_log_base(vu_dev_t *dev, const uint8_t *payload, uint32_t size, int *fds, int nfds) {
    log_base_t log;
    if (size < sizeof log || nfds != 1) return -1;
    memcpy(&log, payload, sizeof log);
    unmap_log(dev);
    size_t map_size = (size_t)(log.mmap_size + log.mmap_offset);
    if (log.mmap_size == 0 || map_size < log.mmap_size) return -1;
    void *map = mmap(NULL, map_size, PROT_READ | PROT_WRITE, MAP_SHARED, fds[0], 0);
    if (map == MAP_FAILED) return -1;
    dev->log_map = map;
    dev->log_map_size = map_size;
    dev->log = (uint8_t *)map + log.mmap_offset;
    dev->log_size = log.mmap_size;
    return reply_u64(dev, SET_LOG_BASE, 0);
}

/* one message; fds it does not keep are closed */
static int dispatch(vu_dev_t *dev, msg_header_t *h, const uint8_t *payload, int *fds, int nfds) {
    vring_state_t state = {0, 0};
    vring_addr_t addr;
    uint64_t u64 = 0;
    if (h->size >= sizeof state) memcpy(&state, payload, sizeof state);
    if (h->size >= sizeof u64) memcpy(&u64, payload, sizeof u64);
    uint32_t q = state.index;
    int kept = 0, rc = 0;
    switch (h->request) {
    case GET_FEATURES: rc = reply_u64(dev, h->request, OFFERED); break;
    case SET_FEATURES: dev->features = u64 & OFFERED; break;
    case SET_OWNER: break;
    case RESET_OWNER: vu_reset(dev); break;
    case GET_PROTOCOL_FEATURES: rc = reply_u64(dev, h->request, OFFERED_PROTOCOL); break;
    case SET_PROTOCOL_FEATURES: dev->protocol_features = u64 & OFFERED_PROTOCOL; break;
    case SET_MEM_TABLE:
        rc = set_mem_table(dev, payload, h->size, fds, nfds);
        break; /* the mappings hold the memory: the fds are closed below */
    case SET_LOG_BASE: rc = set_log_base(dev, payload, h->size, fds, nfds); break;
    case SET_LOG_FD: break;
    case SET_VRING_NUM:
        if (q > 1 || state.num == 0 || state.num > 32768 || (state.num & (state.num - 1))) { rc = -1; break; }
        dev->ring[q].num = (uint16_t)(state.num == 32768 ? 32768 : state.num);
        map_ring(dev, &dev->ring[q]);
        break;
    case SET_VRING_ADDR:
        if (h->size < sizeof addr) { rc = -1; break; }
        memcpy(&addr, payload, sizeof addr);
        if (addr.index > 1) { rc = -1; break; }
        q = addr.index;
        dev->ring[q].desc_uva = addr.desc;
        dev->ring[q].avail_uva = addr.avail;
        dev->ring[q].used_uva = addr.used;
        dev->ring[q].log_gpa = addr.log;
        dev->ring[q].log_used = (addr.flags & RING_LOG) != 0;
        dev->ring[q].have_addr = 1;
        map_ring(dev, &dev->ring[q]);
        break;
    case SET_VRING_BASE:
        if (q > 1) { rc = -1; break; }
        dev->ring[q].last_avail = (uint16_t)state.num;
        break;
    case GET_VRING_BASE: /* stop the ring and say where it stopped */
        if (q > 1) { rc = -1; break; }
        dev->ring[q].enabled = 0;
        set_kick(dev, (int)q, -1);
        state.num = dev->ring[q].last_avail;
        rc = reply(dev, h->request, &state, sizeof state);
        break;
    case SET_VRING_KICK:
    case SET_VRING_CALL:
    case SET_VRING_ERR: {
        q = (uint32_t)(u64 & 0xff);
        int fd = (u64 & 0x100) || nfds < 1 ? -1 : fds[0];
        if (q > 1) { rc = -1; break; }
        if (h->request == SET_VRING_KICK) {
            if (fd < 0) { /* polling without a kick: not offered */
                fprintf(stderr, "fabric: vhost-user port %d: a ring without a kick\n", dev->owner);
                rc = -1;
                break;
            }
            set_kick(dev, (int)q, fd);
            if (!(dev->features & (1ULL << F_PROTOCOL_FEATURES))) dev->ring[q].enabled = 1;
            start_ring(&dev->ring[q]);
            kept = 1;
        } else if (h->request == SET_VRING_CALL) {
            if (dev->ring[q].call_fd >= 0) close(dev->ring[q].call_fd);
            dev->ring[q].call_fd = fd;
            kept = fd >= 0;
        }
        break;
    }
    case SET_VRING_ENABLE:
        if (q > 1) { rc = -1; break; }
        dev->ring[q].enabled = state.num != 0;
        if (state.num) start_ring(&dev->ring[q]);
        break;
    default:
        fprintf(stderr, "fabric: vhost-user port %d: request %u not handled\n", dev->owner,
                h->request);
        if (h->flags & MSG_NEED_REPLY) rc = reply_u64(dev, h->request, 1);
        close_fds(fds, nfds);
        return rc;
    }
    if (!kept) close_fds(fds, nfds);
    else close_fds(fds + 1, nfds - 1);
    /* REPLY_ACK is not offered, but a front end that asks anyway gets its answer */
    if (rc == 0 && (h->flags & MSG_NEED_REPLY) && h->request != GET_VRING_BASE &&
        h->request != GET_FEATURES && h->request != GET_PROTOCOL_FEATURES)
        rc = reply_u64(dev, h->request, 0);
    return rc;
}

int vu_message(vu_dev_t *dev) {
    msg_header_t h;
    int fds[MAX_MSG_FDS], nfds = 0;
    char control[CMSG_SPACE(sizeof fds)];
    struct iovec iov = {&h, sizeof h};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control,
                         .msg_controllen = sizeof control};
    ssize_t got;
    do got = recvmsg(dev->fd, &msg, MSG_WAITALL | MSG_CMSG_CLOEXEC); while (got < 0 && errno == EINTR);
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
        int n = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
        for (int i = 0; i < n && nfds < MAX_MSG_FDS; i++) memcpy(&fds[nfds++], CMSG_DATA(c) + i * sizeof(int), sizeof(int));
    }
    if (got != (ssize_t)sizeof h || (h.flags & 0x3) != MSG_VERSION || h.size > MAX_PAYLOAD ||
        (msg.msg_flags & MSG_CTRUNC)) {
        close_fds(fds, nfds);
        return -1;
    }
    static uint8_t payload[MAX_PAYLOAD];
    size_t done = 0;
    while (done < h.size) {
        ssize_t n = recv(dev->fd, payload + done, h.size - done, MSG_WAITALL);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) { close_fds(fds, nfds); return -1; }
        done += (size_t)n;
    }
    return dispatch(dev, &h, payload, fds, nfds);
}

/* a chain's segments: checked, translated; -1 when the guest wrote something impossible */
typedef struct { uint8_t *host; uint64_t gpa; uint32_t len; } seg_t;

static int walk_chain(vu_dev_t *dev, vu_ring_t *r, uint16_t head, int writable, seg_t *segs) {
    int n = 0;
    uint16_t i = head;
    for (;;) {
        if (i >= r->num || n == MAX_SEGS || n == r->num) return -1;
        struct vu_desc d;
        memcpy(&d, (const void *)&r->desc[i], sizeof d); /* read once: the guest may change it */
        if ((d.flags & DESC_INDIRECT) || !(d.flags & DESC_WRITE) != !writable) return -1;
        uint8_t *host = translate(dev, d.addr, d.len, 0);
        if (!host) return -1;
        segs[n++] = (seg_t){host, d.addr, d.len};
        if (!(d.flags & DESC_NEXT)) return n;
        i = d.next;
    }
}

static uint32_t header_len(const vu_dev_t *dev) {
    return dev->features & ((1ULL << F_VERSION_1) | (1ULL << F_NET_MRG_RXBUF)) ? 12 : 10;
}

/* the next chain the guest made available, or -1 (none, or the ring is broken) */
static int next_head(vu_ring_t *r) {
    uint16_t avail = r->avail->idx;
    if (avail == r->last_avail) return -1;
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    if ((uint16_t)(avail - r->last_avail) > r->num) { r->broken = 1; return -1; }
    uint16_t head = r->avail->ring[r->last_avail % r->num];
    if (head >= r->num) { r->broken = 1; return -1; }
    r->last_avail++;
    return head;
}

static void put_used(vu_dev_t *dev, vu_ring_t *r, uint16_t head, uint32_t len) {
    uint16_t slot = r->used_idx % r->num;
    r->used->ring[slot].id = head;
    r->used->ring[slot].len = len;
    __atomic_thread_fence(__ATOMIC_RELEASE);
    r->used->idx = ++r->used_idx;
    log_used(dev, r, 4 + 8ULL * slot, 8);
    log_used(dev, r, 2, 2);
    r->pending++;
}

int vu_tx_pop(vu_dev_t *dev, uint8_t *scratch, uint32_t cap, const uint8_t **data,
              uint32_t *len, uint16_t *head) {
    vu_ring_t *r = &dev->ring[VU_TX];
    seg_t segs[MAX_SEGS];
    while (vu_ready(dev, VU_TX)) {
        int h = next_head(r);
        if (h < 0) return 0;
        int n = walk_chain(dev, r, (uint16_t)h, 0, segs);
        uint32_t skip = header_len(dev), total = 0, parts = 0;
        const uint8_t *first = NULL;
        for (int k = 0; k < n; k++) {
            uint32_t off = skip < segs[k].len ? skip : segs[k].len;
            skip -= off;
            if (segs[k].len == off) continue;
            if (parts++ == 0) first = segs[k].host + off;
            total += segs[k].len - off;
        }
        if (n < 0 || skip || total == 0 || total > cap) { /* not a frame: give it back */
            dev->bad_frames++;
            put_used(dev, r, (uint16_t)h, 0);
            continue;
        }
        if (parts == 1) {
            *data = first;
        } else {
            uint32_t at = 0;
            skip = header_len(dev);
            for (int k = 0; k < n; k++) {
                uint32_t off = skip < segs[k].len ? skip : segs[k].len;
                skip -= off;
                memcpy(scratch + at, segs[k].host + off, segs[k].len - off);
                at += segs[k].len - off;
            }
            *data = scratch;
        }
        *len = total;
        *head = (uint16_t)h;
        return 1;
    }
    return 0;
}

void vu_tx_done(vu_dev_t *dev, uint16_t head) {
    if (dev->ring[VU_TX].used && !dev->ring[VU_TX].broken) put_used(dev, &dev->ring[VU_TX], head, 0);
}

int vu_rx_push(vu_dev_t *dev, const uint8_t *data, uint32_t len) {
    vu_ring_t *r = &dev->ring[VU_RX];
    seg_t segs[MAX_SEGS];
    while (vu_ready(dev, VU_RX)) {
        int h = next_head(r);
        if (h < 0) return r->broken ? -2 : -1;
        int n = walk_chain(dev, r, (uint16_t)h, 1, segs);
        uint32_t hlen = header_len(dev);
        uint64_t room = 0;
        for (int k = 0; k < n; k++) room += segs[k].len;
        if (n < 0 || room < hlen + (uint64_t)len) { /* a buffer too small for it: drop the frame */
            put_used(dev, r, (uint16_t)h, 0);
            return -3;
        }
        uint8_t header[12] = {0};
        header[10] = 1; /* num_buffers (VERSION_1 header) */
        const uint8_t *parts[2] = {header, data};
        uint32_t sizes[2] = {hlen, len};
        int k = 0;
        uint32_t at = 0; /* within segs[k] */
        for (int p = 0; p < 2; p++) {
            uint32_t from = 0;
            while (from < sizes[p]) {
                if (at == segs[k].len) { k++; at = 0; continue; }
                uint32_t step = segs[k].len - at;
                if (step > sizes[p] - from) step = sizes[p] - from;
                memcpy(segs[k].host + at, parts[p] + from, step);
                log_write(dev, segs[k].gpa + at, step);
                at += step;
                from += step;
            }
        }
        put_used(dev, r, (uint16_t)h, hlen + len);
        return 0;
    }
    return -2;
}

void vu_signal(vu_dev_t *dev, int q) {
    vu_ring_t *r = &dev->ring[q];
    if (!r->pending || r->call_fd < 0 || !r->avail) return;
    r->pending = 0;
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (r->avail->flags & AVAIL_NO_INTERRUPT) return;
    uint64_t one = 1;
    if (write(r->call_fd, &one, sizeof one) < 0 && errno != EAGAIN) perror("fabric: vhost-user call");
}

int vu_want_kicks(vu_dev_t *dev, int q, int on) {
    vu_ring_t *r = &dev->ring[q];
    if (!vu_ready(dev, q)) return 0;
    uint16_t flags = on ? 0 : USED_NO_NOTIFY;
    if (r->used->flags != flags) {
        r->used->flags = flags;
        log_used(dev, r, 0, 2);
    }
    if (!on) return 0;
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    return r->avail->idx != r->last_avail;
}
