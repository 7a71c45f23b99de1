/*
 * vboxlab-agent: runs a lab's commands and moves its files over one virtio-serial port.
 *
 * The guest side of vboxlab's agent channel (vboxlab/channels/agent.py holds the host side and
 * the protocol's description). It opens only the port named org.vboxlab.agent.0 (found through
 * /sys/class/virtio-ports), listens on nothing else, and serves frames:
 *
 *   header (20 bytes, little-endian): magic "VBXA", type u8, flags u8, reserved u16,
 *   seq u32, length u32, crc32 u32 (IEEE, over the header with crc = 0 and the payload)
 *
 * Frames whose magic, length or CRC is wrong are dropped and the stream is scanned for the next
 * magic, so a restore that rewinds the guest in the middle of a frame costs one frame, never the
 * channel. Every answer carries the sequence number of its request; the host drops answers to
 * requests it no longer waits for.
 *
 * Built statically by the host on first use (vboxlab/agent/__init__.py) and placed in each VM's
 * initrd, so the agent always speaks the host's protocol version.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PORT_NAME "org.vboxlab.agent.0"
#define MAGIC 0x41584256u /* "VBXA" */
#define HEADER 20
#define MAX_PAYLOAD (1u << 20)
#define CHUNK (256u * 1024u)
#define MAX_COMMANDS 64
#define MAX_WRITES 16
#define OUTPUT_GRACE_MS 300
#define PORT_POLL_MS 10    /* no host and no SIGIO from the port: look for one this often */
#define PORT_WAIT_MS 1000  /* no host, SIGIO asked for: look anyway this often (a safety net) */
#define PROTOCOL "1"

enum {
    /* host to guest */
    T_HELLO = 1, T_EXEC = 2, T_KILL = 3,
    T_WRITE = 16, T_MKDIR = 17, T_LIST = 19, T_READ = 20,
    /* guest to host */
    T_READY = 64, T_HELLO_ACK = 65, T_STDOUT = 66, T_STDERR = 67, T_EXIT = 68,
    T_OK = 80, T_ERROR = 81, T_STAT_REPLY = 82, T_NAMES = 83, T_DATA = 84,
};
enum { F_FIRST = 1, F_LAST = 2, F_NOFOLLOW = 1 };

struct command {
    int used;
    uint32_t seq;
    pid_t pid;
    int out, err; /* pipe read ends, -1 once at end of file */
    int exited;
    int status;
    long long exited_at_ms;
};

struct upload {
    int used;
    uint32_t seq;
    int fd;
};

static int port = -1;
static int host_connected = 1;
static long long port_retry_at; /* while no host is connected: when to look again */
static int port_async;          /* O_ASYNC is on: the port sends SIGIO when a host comes */
static struct command commands[MAX_COMMANDS];
static struct upload uploads[MAX_WRITES];
static uint32_t crc_table[256];
static unsigned char *inbuf;
static size_t inlen;
static unsigned char *scratch;

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void crc_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[i] = c;
    }
}

static uint32_t crc_update(uint32_t crc, const unsigned char *p, size_t n)
{
    crc = ~crc;
    while (n--)
        crc = crc_table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return ~crc;
}

static void put32(unsigned char *p, uint32_t v) { memcpy(p, &v, 4); }
static uint32_t get32(const unsigned char *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static uint64_t get64(const unsigned char *p) { uint64_t v; memcpy(&v, p, 8); return v; }

static void write_all(const struct iovec *parts, int count)
{
    struct iovec iov[3];
    memcpy(iov, parts, sizeof(struct iovec) * count);
    int first = 0;
    while (first < count) {
        ssize_t n = writev(port, iov + first, count - first);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN) {
                struct pollfd p = { port, POLLOUT, 0 };
                poll(&p, 1, 100);
                continue;
            }
            return; /* the host went away: the answer is lost, the host retries */
        }
        while (first < count && (size_t)n >= iov[first].iov_len) {
            n -= iov[first].iov_len;
            first++;
        }
        if (first < count) {
            iov[first].iov_base = (char *)iov[first].iov_base + n;
            iov[first].iov_len -= n;
        }
    }
}

static void send_frame2(int type, uint32_t seq, const void *a, size_t alen, const void *b,
                        size_t blen)
{
    unsigned char header[HEADER];
    put32(header, MAGIC);
    header[4] = (unsigned char)type;
    header[5] = header[6] = header[7] = 0;
    put32(header + 8, seq);
    put32(header + 12, (uint32_t)(alen + blen));
    put32(header + 16, 0);
    uint32_t crc = crc_update(0, header, HEADER);
    crc = crc_update(crc, a, alen);
    crc = crc_update(crc, b, blen);
    put32(header + 16, crc);
    struct iovec iov[3] = { { header, HEADER }, { (void *)a, alen }, { (void *)b, blen } };
    write_all(iov, 3);
}

static void send_frame(int type, uint32_t seq, const void *data, size_t len)
{
    send_frame2(type, seq, data, len, "", 0);
}

static void send_error(uint32_t seq, int err, const char *what, const char *path)
{
    char text[4200];
    uint32_t code = (uint32_t)err;
    int n = snprintf(text, sizeof text, "%s %s: %s", what, path, strerror(err));
    if (n < 0)
        n = 0;
    if ((size_t)n >= sizeof text)
        n = sizeof text - 1;
    send_frame2(T_ERROR, seq, &code, 4, text, (size_t)n);
}

/* seconds since boot at which the kernel ran the first userspace program ("Run /init"), from
 * the kernel log; -1 if it is not there (any more) */
static double userspace_start(void)
{
    int fd = open("/dev/kmsg", O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return -1;
    char record[2048];
    double found = -1;
    for (int records = 0; records < 20000 && found < 0; records++) {
        ssize_t n = read(fd, record, sizeof record - 1);
        if (n < 0 && errno == EPIPE)
            continue; /* overwritten while we read: go on with the next */
        if (n <= 0)
            break;
        record[n] = 0;
        unsigned long long usec;
        char *text = strchr(record, ';');
        if (text && (strstr(text, "Run /init ") || strstr(text, "Run /sbin/init ")) &&
            sscanf(record, "%*u,%*u,%llu", &usec) == 1)
            found = (double)usec / 1e6;
    }
    close(fd);
    return found;
}

/* seconds since boot at which process `pid` started (/proc/PID/stat, field 22) */
static double started_at(const char *pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%s/stat", pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return -1;
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    unsigned long long ticks;
    if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %*u %*u %*d %*d %*d "
                     "%*d %*d %*d %llu", &ticks) != 1)
        return -1;
    return (double)ticks / (double)sysconf(_SC_CLK_TCK);
}

/* READY carries facts for the host's boot timeline (seconds since the kernel started: now, when
 * userspace began, when this agent started); HELLO_ACK, sent after every restore, only the nonce
 * and the protocol version (a restore empties TCG's translation cache: all code run costs) */
static void send_hello(int type, uint32_t seq, const unsigned char *nonce, size_t nlen)
{
    char text[256];
    int n;
    if (type == T_HELLO_ACK) {
        n = snprintf(text, sizeof text, "protocol=%s", PROTOCOL);
    } else {
        double uptime = 0;
        int fd = open("/proc/uptime", O_RDONLY | O_CLOEXEC);
        if (fd >= 0) {
            char buf[64];
            ssize_t got = read(fd, buf, sizeof buf - 1);
            close(fd);
            buf[got > 0 ? got : 0] = 0;
            uptime = atof(buf);
        }
        n = snprintf(text, sizeof text, "protocol=%s uptime=%.3f userspace=%.3f agent=%.3f",
                     PROTOCOL, uptime, userspace_start(), started_at("self"));
    }
    send_frame2(type, seq, nonce, nlen, text, (size_t)n);
}

static struct command *find_command(uint32_t seq)
{
    for (int i = 0; i < MAX_COMMANDS; i++)
        if (commands[i].used && commands[i].seq == seq)
            return &commands[i];
    return NULL;
}

/* The command runs as `sh -c COMMAND` in a session of its own, stdin /dev/null, in /root */
static void start_command(uint32_t seq, const unsigned char *payload, uint32_t len)
{
    struct command *slot = NULL;
    for (int i = 0; i < MAX_COMMANDS && !slot; i++)
        if (!commands[i].used)
            slot = &commands[i];
    if (!slot) {
        send_error(seq, EAGAIN, "running", "a command (64 already run)");
        return;
    }
    char *command = malloc(len + 1);
    if (!command) {
        send_error(seq, ENOMEM, "running", "a command");
        return;
    }
    memcpy(command, payload, len);
    command[len] = 0;
    int out[2], err[2];
    if (pipe2(out, O_CLOEXEC) < 0) {
        send_error(seq, errno, "running", "a command (pipe)");
        free(command);
        return;
    }
    if (pipe2(err, O_CLOEXEC) < 0) {
        send_error(seq, errno, "running", "a command (pipe)");
        close(out[0]);
        close(out[1]);
        free(command);
        return;
    }
    char *const argv[] = { "sh", "-c", command, NULL };
    char *const envp[] = {
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root",
        "USER=root", "LOGNAME=root", "SHELL=/bin/sh", NULL };
    sigset_t none;
    sigemptyset(&none);
    pid_t pid = vfork(); /* no page tables copied: the child only sets up and execs */
    if (pid == 0) {
        sigprocmask(SIG_SETMASK, &none, NULL);
        signal(SIGPIPE, SIG_DFL);
        setsid();
        int null = open("/dev/null", O_RDONLY | O_CLOEXEC);
        if (null >= 0)
            dup2(null, 0);
        dup2(out[1], 1);
        dup2(err[1], 2);
        if (chdir("/root") < 0 && chdir("/") < 0)
            _exit(127);
        execve("/bin/sh", argv, envp);
        _exit(127);
    }
    int saved = errno;
    free(command);
    close(out[1]);
    close(err[1]);
    if (pid < 0) {
        close(out[0]);
        close(err[0]);
        send_error(seq, saved, "running", "a command (fork)");
        return;
    }
    fcntl(out[0], F_SETFL, O_NONBLOCK);
    fcntl(err[0], F_SETFL, O_NONBLOCK);
    *slot = (struct command){ 1, seq, pid, out[0], err[0], 0, 0, 0 };
}

static void finish_command(struct command *c)
{
    int32_t code;
    if (WIFEXITED(c->status))
        code = WEXITSTATUS(c->status);
    else if (WIFSIGNALED(c->status))
        code = 128 + WTERMSIG(c->status);
    else
        code = -1;
    if (c->out >= 0)
        close(c->out);
    if (c->err >= 0)
        close(c->err);
    send_frame(T_EXIT, c->seq, &code, 4);
    c->used = 0;
}

static void drain(struct command *c, int *fd, int type)
{
    for (;;) {
        ssize_t n = read(*fd, scratch, CHUNK);
        if (n > 0) {
            send_frame(type, c->seq, scratch, (size_t)n);
            if ((size_t)n < CHUNK)
                return;
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            return;
        close(*fd);
        *fd = -1;
        return;
    }
}

static void reap(void)
{
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        for (int i = 0; i < MAX_COMMANDS; i++) {
            struct command *c = &commands[i];
            if (c->used && c->pid == pid && !c->exited) {
                c->exited = 1;
                c->status = status;
                c->exited_at_ms = now_ms();
            }
        }
    }
}

static struct upload *find_upload(uint32_t seq)
{
    for (int i = 0; i < MAX_WRITES; i++)
        if (uploads[i].used && uploads[i].seq == seq)
            return &uploads[i];
    return NULL;
}

/* payload: mode u32, path length u16, path, data */
static int split_path(const unsigned char *p, uint32_t len, size_t skip, char *path,
                      size_t *used)
{
    if (len < skip + 2)
        return -1;
    uint16_t plen;
    memcpy(&plen, p + skip, 2);
    if (plen == 0 || plen >= 4096 || len < skip + 2 + plen)
        return -1;
    memcpy(path, p + skip + 2, plen);
    path[plen] = 0;
    if (strlen(path) != plen)
        return -1;
    *used = skip + 2 + plen;
    return 0;
}

static void do_write(uint32_t seq, int flags, const unsigned char *p, uint32_t len)
{
    char path[4096];
    size_t used;
    if (split_path(p, len, 4, path, &used) < 0) {
        send_error(seq, EINVAL, "writing", "(a malformed request)");
        return;
    }
    uint32_t mode = get32(p) & 07777;
    struct upload *u = find_upload(seq);
    if (flags & F_FIRST) {
        if (u) {
            if (u->fd >= 0)
                close(u->fd);
            u->used = 0;
        }
        u = NULL;
        for (int i = 0; i < MAX_WRITES && !u; i++)
            if (!uploads[i].used)
                u = &uploads[i];
        if (!u) {
            send_error(seq, EAGAIN, "writing", path);
            return;
        }
        *u = (struct upload){ 1, seq, -1 };
        u->fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (u->fd < 0) {
            send_error(seq, errno, "writing", path);
            u->used = 0; /* the host stops sending; stray chunks find no upload */
            return;
        }
    }
    if (!u)
        return; /* a chunk of an upload that failed, or began before a restore */
    const unsigned char *data = p + used;
    size_t left = len - used;
    while (left) {
        ssize_t n = write(u->fd, data, left);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            send_error(seq, n < 0 ? errno : EIO, "writing", path);
            close(u->fd);
            u->used = 0;
            return;
        }
        data += n;
        left -= (size_t)n;
    }
    if (flags & F_LAST) {
        if (fchmod(u->fd, mode) < 0) {
            send_error(seq, errno, "setting the mode of", path);
            close(u->fd);
        } else if (close(u->fd) < 0) {
            send_error(seq, errno, "writing", path);
        } else {
            send_frame(T_OK, seq, "", 0);
        }
        u->used = 0;
    }
}

static void do_mkdir(uint32_t seq, const unsigned char *p, uint32_t len)
{
    char path[4096];
    size_t used;
    if (split_path(p, len, 4, path, &used) < 0) {
        send_error(seq, EINVAL, "creating", "(a malformed request)");
        return;
    }
    mode_t mode = get32(p) & 07777;
    if (mkdir(path, 0700) < 0 && errno != EEXIST) {
        send_error(seq, errno, "creating", path);
        return;
    }
    if (chmod(path, mode) < 0) {
        send_error(seq, errno, "setting the mode of", path);
        return;
    }
    send_frame(T_OK, seq, "", 0);
}

static void do_list(uint32_t seq, const unsigned char *p, uint32_t len)
{
    char path[4096];
    size_t used, fill = 0;
    if (split_path(p, len, 0, path, &used) < 0) {
        send_error(seq, EINVAL, "listing", "(a malformed request)");
        return;
    }
    DIR *dir = opendir(path);
    if (!dir) {
        send_error(seq, errno, "listing", path);
        return;
    }
    struct dirent *entry;
    while ((entry = readdir(dir))) {
        if (!strcmp(entry->d_name, ".") || !strcmp(entry->d_name, ".."))
            continue;
        size_t n = strlen(entry->d_name) + 1;
        if (fill + n > CHUNK) {
            send_frame(T_NAMES, seq, scratch, fill);
            fill = 0;
        }
        memcpy(scratch + fill, entry->d_name, n);
        fill += n;
    }
    closedir(dir);
    if (fill)
        send_frame(T_NAMES, seq, scratch, fill);
    send_frame(T_OK, seq, "", 0);
}

/* payload: limit u64, path length u16, path. Answers STAT_REPLY (mode, size), then for a
 * regular file within the limit its DATA in chunks, then OK with the byte count: never more than
 * limit + 1 bytes, so the host can tell a file that grew past its limit. With F_NOFOLLOW a
 * final symlink is refused (ELOOP), as lstat would show it */
static void do_read(uint32_t seq, int flags, const unsigned char *p, uint32_t len)
{
    char path[4096];
    size_t used;
    struct stat st;
    if (len < 8 || split_path(p, len, 8, path, &used) < 0) {
        send_error(seq, EINVAL, "reading", "(a malformed request)");
        return;
    }
    uint64_t limit = get64(p), total = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY |
                  (flags & F_NOFOLLOW ? O_NOFOLLOW : 0));
    if (fd < 0 && errno == ELOOP && (flags & F_NOFOLLOW) && lstat(path, &st) == 0) {
        fd = -1; /* a symlink: say what it is, read nothing */
    } else if (fd < 0 || fstat(fd, &st) < 0) {
        int saved = errno;
        if (fd >= 0)
            close(fd);
        send_error(seq, saved, "reading", path);
        return;
    }
    unsigned char reply[12];
    uint32_t mode = (uint32_t)st.st_mode;
    uint64_t size = (uint64_t)st.st_size;
    memcpy(reply, &mode, 4);
    memcpy(reply + 4, &size, 8);
    send_frame(T_STAT_REPLY, seq, reply, sizeof reply);
    while (fd >= 0 && S_ISREG(st.st_mode) && size <= limit && total <= limit) {
        uint64_t want = limit + 1 - total;
        ssize_t n = read(fd, scratch, want < CHUNK ? (size_t)want : CHUNK);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            int saved = errno;
            close(fd);
            send_error(seq, saved, "reading", path);
            return;
        }
        if (n == 0)
            break;
        send_frame(T_DATA, seq, scratch, (size_t)n);
        total += (uint64_t)n;
    }
    if (fd >= 0)
        close(fd);
    send_frame(T_OK, seq, &total, 8);
}

static void kill_command(uint32_t seq)
{
    struct command *c = find_command(seq);
    if (c && !c->exited)
        kill(-c->pid, SIGKILL);
}

static void handle(int type, int flags, uint32_t seq, const unsigned char *p, uint32_t len)
{
    switch (type) {
    case T_HELLO: send_hello(T_HELLO_ACK, seq, p, len > 64 ? 64 : len); break;
    case T_EXEC: start_command(seq, p, len); break;
    case T_KILL: kill_command(seq); break;
    case T_WRITE: do_write(seq, flags, p, len); break;
    case T_MKDIR: do_mkdir(seq, p, len); break;
    case T_LIST: do_list(seq, p, len); break;
    case T_READ: do_read(seq, flags, p, len); break;
    default: send_error(seq, ENOSYS, "handling", "an unknown request"); break;
    }
}

/* parse every whole frame in inbuf; keep the rest; drop damaged frames by scanning for the
 * next magic */
static void parse(void)
{
    size_t at = 0;
    while (inlen - at >= HEADER) {
        unsigned char *h = inbuf + at;
        if (get32(h) != MAGIC) {
            at++;
            continue;
        }
        uint32_t len = get32(h + 12);
        if (len > MAX_PAYLOAD) {
            at++;
            continue;
        }
        if (inlen - at < HEADER + len)
            break;
        uint32_t crc = get32(h + 16);
        put32(h + 16, 0);
        uint32_t want = crc_update(crc_update(0, h, HEADER), h + HEADER, len);
        put32(h + 16, crc);
        if (crc != want) {
            at++;
            continue;
        }
        handle(h[4], h[5], get32(h + 8), h + HEADER, len);
        at += HEADER + len;
    }
    memmove(inbuf, inbuf + at, inlen - at);
    inlen -= at;
}

/* ask the port for SIGIO (virtio_console sends it when the host side opens or closes, and
   for each message while it is on), or stop asking; 1 if the port now does as asked */
static int port_notify(int on)
{
    if (port_async == on)
        return 1;
    int flags = fcntl(port, F_GETFL);
    if (flags < 0 || (on && fcntl(port, F_SETOWN, getpid()) < 0) ||
        fcntl(port, F_SETFL, on ? flags | O_ASYNC : flags & ~O_ASYNC) < 0)
        return 0;
    port_async = on;
    return 1;
}

static int open_port(void)
{
    for (;;) {
        DIR *dir = opendir("/sys/class/virtio-ports");
        if (dir) {
            struct dirent *entry;
            while ((entry = readdir(dir))) {
                if (entry->d_name[0] == '.')
                    continue;
                char path[512], name[128] = "";
                snprintf(path, sizeof path, "/sys/class/virtio-ports/%s/name", entry->d_name);
                int fd = open(path, O_RDONLY | O_CLOEXEC);
                if (fd < 0)
                    continue;
                ssize_t n = read(fd, name, sizeof name - 1);
                close(fd);
                if (n <= 0)
                    continue;
                name[n] = 0;
                name[strcspn(name, "\n")] = 0;
                if (strcmp(name, PORT_NAME))
                    continue;
                snprintf(path, sizeof path, "/dev/%s", entry->d_name);
                fd = open(path, O_RDWR | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
                if (fd >= 0) {
                    closedir(dir);
                    return fd;
                }
            }
            closedir(dir);
        }
        usleep(20000); /* the port's module or device node is not there yet */
    }
}

/* vboxlab-agent             serve the virtio-serial port org.vboxlab.agent.0 (in a guest)
 * vboxlab-agent --fd N      serve the socket on descriptor N, ending at its end of file (the
 *                           host's unit tests run the agent this way) */
int main(int argc, char **argv)
{
    int own_fd = -1;
    if (argc == 3 && !strcmp(argv[1], "--fd")) {
        own_fd = atoi(argv[2]);
    } else if (argc != 1) {
        fprintf(stderr, "usage: vboxlab-agent [--fd N]\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    crc_init();
    inbuf = malloc(2 * (HEADER + MAX_PAYLOAD));
    scratch = malloc(CHUNK);
    if (!inbuf || !scratch)
        return 1;
    sigset_t caught; /* read from sfd: a child ended; the port's host came (SIGIO) */
    sigemptyset(&caught);
    sigaddset(&caught, SIGCHLD);
    sigaddset(&caught, SIGIO);
    sigprocmask(SIG_BLOCK, &caught, NULL);
    int sfd = signalfd(-1, &caught, SFD_NONBLOCK | SFD_CLOEXEC);
    if (sfd < 0)
        return 1;
    if (chdir("/root") < 0 && chdir("/") < 0)
        return 1; /* relative guest paths are the home folder's, as over SFTP */
    port = own_fd >= 0 ? own_fd : open_port();
    if (own_fd >= 0)
        fcntl(port, F_SETFL, O_NONBLOCK);
    send_hello(T_READY, 0, (const unsigned char *)"", 0);

    for (;;) {
        struct pollfd fds[2 + 2 * MAX_COMMANDS];
        struct command *owner[2 + 2 * MAX_COMMANDS];
        int nfds = 0, timeout = -1;
        long long now = now_ms();
        if (!host_connected && now >= port_retry_at)
            host_connected = 1;
        fds[nfds++] = (struct pollfd){ sfd, POLLIN, 0 };
        if (host_connected)
            fds[nfds++] = (struct pollfd){ port, POLLIN, 0 };
        else /* poll reports a missing host as an event at once, never its return: look again */
            timeout = (int)(port_retry_at - now);
        for (int i = 0; i < MAX_COMMANDS; i++) {
            struct command *c = &commands[i];
            if (!c->used)
                continue;
            if (c->exited && ((c->out < 0 && c->err < 0) ||
                              now - c->exited_at_ms >= OUTPUT_GRACE_MS)) {
                /* done; or a background process it started holds its output open */
                if (c->out >= 0)
                    drain(c, &c->out, T_STDOUT);
                if (c->err >= 0)
                    drain(c, &c->err, T_STDERR);
                finish_command(c);
                continue;
            }
            if (c->exited) {
                int left = (int)(OUTPUT_GRACE_MS - (now - c->exited_at_ms));
                if (timeout < 0 || left < timeout)
                    timeout = left;
            }
            if (c->out >= 0) {
                owner[nfds] = c;
                fds[nfds++] = (struct pollfd){ c->out, POLLIN, 0 };
            }
            if (c->err >= 0) {
                owner[nfds] = c;
                fds[nfds++] = (struct pollfd){ c->err, POLLIN, 0 };
            }
        }
        int ready = poll(fds, nfds, timeout);
        if (ready < 0 && errno != EINTR)
            return 1;
        if (ready <= 0)
            continue;
        /* output first: a command's last output goes out before its exit status */
        int start = host_connected ? 2 : 1;
        for (int i = start; i < nfds; i++) {
            if (!fds[i].revents)
                continue;
            struct command *c = owner[i];
            if (fds[i].fd == c->out)
                drain(c, &c->out, T_STDOUT);
            else if (fds[i].fd == c->err)
                drain(c, &c->err, T_STDERR);
        }
        if (fds[0].revents) {
            struct signalfd_siginfo info;
            int host_came = 0;
            while (read(sfd, &info, sizeof info) == sizeof info)
                host_came |= info.ssi_signo == SIGIO;
            reap();
            if (host_came) /* look at the port now, not at the next retry */
                port_retry_at = now_ms();
        }
        if (host_connected && fds[1].revents) {
            ssize_t n = read(port, inbuf + inlen, HEADER + MAX_PAYLOAD);
            if (n > 0) {
                if (port_async)
                    port_notify(0); /* a host is here: no SIGIO for each of its messages */
                inlen += (size_t)n;
                parse();
                if (inlen >= HEADER + MAX_PAYLOAD) /* never a whole frame: start over */
                    inlen = 0;
            } else if (own_fd >= 0 && (n == 0 || (fds[1].revents & POLLHUP))) {
                return 0; /* the socket's peer is gone */
            } else if (n == 0 || (fds[1].revents & POLLHUP)) {
                /* no host on the socket: wait for one. The port's SIGIO says when one comes
                   (look once more right after asking for it: a host that came meanwhile sent
                   none); a port that cannot send it is looked at every PORT_POLL_MS */
                host_connected = 0;
                int wait = PORT_POLL_MS;
                if (port_async)
                    wait = PORT_WAIT_MS;
                else if (port_notify(1))
                    wait = 0;
                port_retry_at = now_ms() + wait;
            }
        }
    }
}
