/*
 * vhost-user back end of one virtio-net NIC: the fabric reads the guest's
 * transmit ring and writes into its receive ring in the guest's own memory
 * (shared with QEMU as memfd regions), so a frame costs one copy and no system
 * call; QEMU's own network code is not on the path at all.
 *
 * Protocol: QEMU's docs/interop/vhost-user.rst (split virtqueues only). Offered:
 * VIRTIO_F_VERSION_1, VHOST_F_LOG_ALL and the protocol feature LOG_SHMFD (so
 * QEMU can stop, snapshot and migrate the VM: pages the fabric writes are
 * marked in QEMU's dirty log), nothing else: no offloads, so every frame is one
 * Ethernet frame of at most the MTU, as on the datagram path, and the fabric's
 * impairments and captures see the frames the guest sent.
 *
 * Everything the guest controls (ring indices, descriptors, chains, buffer
 * addresses and lengths) is checked before use: a descriptor outside the
 * memory QEMU shared, a chain longer than the ring or looping, an index beyond
 * the ring marks the ring broken (it is ignored until QEMU sets it up again),
 * so a guest cannot make the fabric read or write outside its own memory.
 */
#ifndef VBOXLAB_VHOST_USER_H
#define VBOXLAB_VHOST_USER_H

#include <stddef.h>
#include <stdint.h>

#define VU_MAX_REGIONS 8
#define VU_RX 0 /* the guest's receive queue: the fabric writes frames into it */
#define VU_TX 1 /* the guest's transmit queue: the fabric reads frames from it */

typedef struct {
    uint64_t gpa, size, uva; /* guest physical, size, QEMU's virtual address */
    uint8_t *host;           /* where it is mapped here */
    uint8_t *map;            /* the whole mapping (with mmap_offset), for munmap */
    size_t map_size;
} vu_region_t;

typedef struct {
    int kick_fd, call_fd;
    int enabled, broken;
    uint16_t num, last_avail, used_idx;
    uint64_t desc_uva, avail_uva, used_uva, log_gpa;
    int log_used;
    int have_addr;
    volatile struct vu_desc *desc;
    volatile struct vu_avail *avail;
    volatile struct vu_used *used;
    uint32_t pending; /* used entries written since the guest was last signalled */
} vu_ring_t;

struct vu_dev;
/* called before a ring's kick descriptor is closed (fd -1 after) and after a new one is set */
typedef void (*vu_kick_hook)(struct vu_dev *dev, int queue, int old_fd, int new_fd);

typedef struct vu_dev {
    int fd; /* the connection from QEMU, or -1 */
    uint64_t features, protocol_features;
    int nregions;
    vu_region_t regions[VU_MAX_REGIONS];
    vu_ring_t ring[2];
    uint8_t *log;
    uint64_t log_size;
    uint8_t *log_map;
    size_t log_map_size;
    vu_kick_hook on_kick;
    int owner; /* the fabric's port number, for the hook */
    uint64_t bad_frames; /* transmitted chains handed back unread: too long, outside memory, looping */
} vu_dev_t;

void vu_init(vu_dev_t *dev, int owner, vu_kick_hook hook);
/* forget everything QEMU set up (memory, rings, descriptors); the connection stays */
void vu_reset(vu_dev_t *dev);
/* handle one message on dev->fd; -1: the connection ended or sent garbage (caller closes) */
int vu_message(vu_dev_t *dev);
/* a ring the fabric may use now */
int vu_ready(const vu_dev_t *dev, int queue);

/* the guest's next transmitted frame: 1 with data and len (in guest memory, or in scratch when
   the frame spans descriptors) and *head to give back with vu_tx_done; 0: none waiting */
int vu_tx_pop(vu_dev_t *dev, uint8_t *scratch, uint32_t cap, const uint8_t **data,
              uint32_t *len, uint16_t *head);
void vu_tx_done(vu_dev_t *dev, uint16_t head);
/* a frame into the guest: 0 done, -1 no receive buffer now (the guest is behind), -2 dropped
   (the ring is not running), -3 dropped (the buffer was malformed or too small) */
int vu_rx_push(vu_dev_t *dev, const uint8_t *data, uint32_t len);
/* signal the guest if entries were used and it did not ask to be left alone */
void vu_signal(vu_dev_t *dev, int queue);
/* ask the guest to kick (on) or not (off) when it adds buffers; returns 1 when, after asking
   it to kick, buffers are already there (so the caller should look now) */
int vu_want_kicks(vu_dev_t *dev, int queue, int on);

#endif
