/* The floor of a user-space open supervisor: the least a seccomp user-notification design costs.
 *
 *     floor [--continue] CMD [ARGS...]
 *
 * Runs CMD with a filter that sends every openat(2) to this process, which reads the path from
 * /proc/PID/mem, opens it itself (no policy: every open is allowed) and injects the fd with
 * SECCOMP_IOCTL_NOTIF_ADDFD | SECCOMP_ADDFD_FLAG_SEND, one notification at a time on one thread.
 * Exits with CMD's status once every task under the filter has gone. For benchmarks only: it
 * enforces nothing. With --continue, it reads each open's path and answers CONTINUE (the
 * kernel then runs the open in the caller's context): the floor of a supervisor that lets a
 * static layer judge the open, as llsupervise does for a static-path one.
 *
 * Kept minimal on purpose, so that what it costs is what the kernel interface costs:
 * - a /proc/PID/mem fd is kept per process; after an exec the old one reads nothing (its mm has
 *   gone), and it is opened again;
 * - a relative path is opened beneath /proc/PID/cwd or /proc/PID/fd/N, opened for that request;
 * - paths that name the caller (/proc/self, /proc/thread-self, /dev/fd, /dev/std*, /dev/tty) are
 *   left to the kernel in the child's context (CONTINUE): opened here they would name us.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#if defined(__x86_64__)
#define ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define ARCH AUDIT_ARCH_AARCH64
#else
#error "floor.c knows x86_64 and aarch64 only"
#endif

#define MEM_SLOTS 256

static int continue_only; /* --continue */

static struct { pid_t pid; int fd; } mem_cache[MEM_SLOTS];

static void die(const char *what) {
    perror(what);
    exit(125);
}

static long seccomp(unsigned op, unsigned flags, void *args) {
    return syscall(SYS_seccomp, op, flags, args);
}

static void child(int sock, char **argv) {
    struct sock_filter filter[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, ARCH, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_openat, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_USER_NOTIF),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = {sizeof filter / sizeof filter[0], filter};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) die("prctl");
    int listener = (int)seccomp(SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER, &prog);
    if (listener < 0) die("seccomp");
    char control[CMSG_SPACE(sizeof(int))] = {0};
    char byte = 0;
    struct iovec iov = {&byte, 1};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1,
                         .msg_control = control, .msg_controllen = sizeof control};
    struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(cmsg), &listener, sizeof(int));
    if (sendmsg(sock, &msg, 0) < 0) die("sendmsg");
    close(listener);
    close(sock);
    execvp(argv[0], argv);
    perror(argv[0]);
    _exit(127);
}

static int receive_fd(int sock) {
    char control[CMSG_SPACE(sizeof(int))];
    char byte;
    struct iovec iov = {&byte, 1};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1,
                         .msg_control = control, .msg_controllen = sizeof control};
    if (recvmsg(sock, &msg, 0) <= 0) die("recvmsg");
    struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
    if (cmsg == NULL || cmsg->cmsg_type != SCM_RIGHTS) {
        fprintf(stderr, "floor: no listener received\n");
        exit(125);
    }
    int fd;
    memcpy(&fd, CMSG_DATA(cmsg), sizeof(int));
    return fd;
}

/* Reads a NUL-terminated string at addr, page by page (a path may end just before an unmapped
 * page). Returns its length, or -1. */
static ssize_t read_string(int mem, uint64_t addr, char *out, size_t size) {
    size_t got = 0;
    while (got < size) {
        size_t chunk = 4096 - ((addr + got) % 4096);
        if (chunk > size - got) chunk = size - got;
        ssize_t n = pread(mem, out + got, chunk, (off_t)(addr + got));
        if (n <= 0) return -1;
        char *nul = memchr(out + got, 0, (size_t)n);
        if (nul != NULL) return nul - out;
        got += (size_t)n;
    }
    return -1;
}

static int open_mem(pid_t pid) {
    char name[64];
    snprintf(name, sizeof name, "/proc/%d/mem", pid);
    return open(name, O_RDONLY | O_CLOEXEC);
}

/* The path the request names, read through a cached /proc/PID/mem (opened again when it reads
 * nothing: the process has exec'ed or gone). Returns its length, or -1. */
static ssize_t read_path(int listener, struct seccomp_notif *req, char *path, size_t size) {
    unsigned slot = (unsigned)req->pid % MEM_SLOTS;
    if (mem_cache[slot].pid == (pid_t)req->pid) {
        ssize_t n = read_string(mem_cache[slot].fd, req->data.args[1], path, size);
        if (n >= 0) return n;
        close(mem_cache[slot].fd);
        mem_cache[slot].pid = 0;
    }
    int mem = open_mem((pid_t)req->pid);
    if (mem < 0) return -1;
    /* The pid named the requester when it was opened only if the request is still pending. */
    if (ioctl(listener, SECCOMP_IOCTL_NOTIF_ID_VALID, &req->id) < 0) {
        close(mem);
        return -1;
    }
    if (mem_cache[slot].pid != 0) close(mem_cache[slot].fd);
    mem_cache[slot].pid = (pid_t)req->pid;
    mem_cache[slot].fd = mem;
    return read_string(mem, req->data.args[1], path, size);
}

static int names_caller(const char *path) {
    static const char *const prefixes[] = {"/proc/self", "/proc/thread-self", "/dev/fd",
                                           "/dev/std", "/dev/tty"};
    for (size_t i = 0; i < sizeof prefixes / sizeof prefixes[0]; i++)
        if (strncmp(path, prefixes[i], strlen(prefixes[i])) == 0) return 1;
    return 0;
}

static void respond(int listener, struct seccomp_notif_resp *resp, __u64 id, int error,
                    __u32 flags) {
    resp->id = id;
    resp->val = 0;
    resp->error = error;
    resp->flags = flags;
    /* ENOENT: the requester has gone (killed, or the request was interrupted). */
    if (ioctl(listener, SECCOMP_IOCTL_NOTIF_SEND, resp) < 0 && errno != ENOENT) die("NOTIF_SEND");
}

static void serve(int listener, struct seccomp_notif *req, struct seccomp_notif_resp *resp) {
    char path[PATH_MAX + 1];
    if (read_path(listener, req, path, sizeof path) < 0) {
        respond(listener, resp, req->id, -EFAULT, 0);
        return;
    }
    if (continue_only || names_caller(path)) {
        respond(listener, resp, req->id, 0, SECCOMP_USER_NOTIF_FLAG_CONTINUE);
        return;
    }
    int dirfd = (int)req->data.args[0];
    int flags = (int)req->data.args[2];
    mode_t mode = (mode_t)req->data.args[3];
    int base = AT_FDCWD;
    if (path[0] != '/') {
        char name[64];
        if (dirfd == AT_FDCWD)
            snprintf(name, sizeof name, "/proc/%u/cwd", req->pid);
        else
            snprintf(name, sizeof name, "/proc/%u/fd/%d", req->pid, dirfd);
        base = open(name, O_PATH | O_DIRECTORY | O_CLOEXEC);
        if (base < 0) {
            respond(listener, resp, req->id, errno == ENOENT ? -EBADF : -errno, 0);
            return;
        }
    }
    int fd = openat(base, path, flags | O_CLOEXEC, mode);
    int error = errno;
    if (base != AT_FDCWD) close(base);
    if (fd < 0) {
        respond(listener, resp, req->id, -error, 0);
        return;
    }
    struct seccomp_notif_addfd addfd = {
        .id = req->id,
        .flags = SECCOMP_ADDFD_FLAG_SEND,
        .srcfd = (__u32)fd,
        .newfd = 0,
        .newfd_flags = (__u32)(flags & O_CLOEXEC),
    };
    if (ioctl(listener, SECCOMP_IOCTL_NOTIF_ADDFD, &addfd) < 0 && errno != ENOENT)
        die("NOTIF_ADDFD");
    close(fd);
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "--continue") == 0) {
        continue_only = 1;
        argv++;
        argc--;
    }
    if (argc < 2) {
        fprintf(stderr, "usage: floor [--continue] CMD [ARGS...]\n");
        return 2;
    }
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) die("socketpair");
    pid_t pid = fork();
    if (pid < 0) die("fork");
    if (pid == 0) {
        close(sv[0]);
        child(sv[1], argv + 1);
    }
    close(sv[1]);
    int listener = receive_fd(sv[0]);
    close(sv[0]);
    struct seccomp_notif_sizes sizes;
    if (seccomp(SECCOMP_GET_NOTIF_SIZES, 0, &sizes) < 0) die("SECCOMP_GET_NOTIF_SIZES");
    struct seccomp_notif *req = malloc(sizes.seccomp_notif);
    struct seccomp_notif_resp *resp = malloc(sizes.seccomp_notif_resp);
    if (req == NULL || resp == NULL) die("malloc");
    for (;;) {
        struct pollfd p = {listener, POLLIN, 0};
        if (poll(&p, 1, -1) < 0) {
            if (errno == EINTR) continue;
            die("poll");
        }
        if (!(p.revents & POLLIN)) break; /* POLLHUP: no task is left under the filter */
        memset(req, 0, sizes.seccomp_notif);
        if (ioctl(listener, SECCOMP_IOCTL_NOTIF_RECV, req) < 0) {
            if (errno == EINTR || errno == ENOENT) continue;
            die("NOTIF_RECV");
        }
        serve(listener, req, resp);
    }
    int status;
    if (waitpid(pid, &status, 0) < 0) die("waitpid");
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}
