/* The serving threads' hot path, compiled: receive trapped syscalls and answer, without the
 * interpreter, the opens the static layer alone allows (CONTINUE, which is safe whatever we
 * read: the kernel then judges the program's own open against the static layer).
 *
 * An exec (execve) by a thread-group leader is answered here too (CONTINUE: exec is the
 * static layer's to judge) when there is nothing to report of it (engine.reports): that layer
 * allows the absolute path it names, or nothing is there. With readers opened here for new
 * threads, a new process costs no Python. Every other request is handed back to Python
 * (engine.loop) as the raw struct seccomp_notif.
 * The interpreter lock is released for the whole wait-receive-answer loop, so a serving thread
 * answers these while trio or another thread holds it, and two serving threads can answer at
 * once.
 *
 * The objects:
 *   StaticTable: the static rules' directories, by canonical path, with their rights; the
 *                one implementation of the lexical static check (engine.fastpath uses it too).
 *   Readers:     per-thread /proc/TID/mem descriptors, each with a pidfd of that thread,
 *                which tells when it has exited (its id may then name another task): dups of
 *                the ones Python opened with the supervisor's standing, or ones its opener
 *                thread (unrestricted, as a restricted serving thread may not open them)
 *                opened for a thread Python keeps none for; the threads whose
 *                context-changing call may still run (settled here when heard from, and
 *                Python told); and the threads whose exec was answered here, for Python to
 *                drop what it keeps of them.
 *   Receiver:    one serving thread's loop, and what it holds, for the stall watch.
 *   Grants:      what a serving thread needs to perform a supervisor-granted open itself
 *                (engine.grants): the control plane's identities, our /proc/self/fd, and
 *                the opens performed, for the rule-use counts.
 *
 * A granted open is performed here only in the one shape Python's serving path performs
 * inline (perform.operations._open_checked), and only for a thread whose credentials Python
 * found to be ours: an absolute path or one relative to the cwd Python lent, no creation,
 * truncation, O_PATH or O_NOFOLLOW, that
 * leads through the dentry cache alone to a regular file or directory on a mount known not
 * to block, which is not the control plane. The serving thread is restricted by its
 * generation's rules, so the kernel judges the open; anything else, a refusal included, is
 * handed to Python untouched (nothing done here had an effect Python would repeat).
 */
#define _GNU_SOURCE /* memmem */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include <linux/openat2.h>
#include <stdio.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#ifndef PATH_MAX
#define PATH_MAX 4096
#endif
#define PAGE 4096
#define READER_SLOTS 1024
#ifndef PIDFD_THREAD
#define PIDFD_THREAD_FLAG O_EXCL
#else
#define PIDFD_THREAD_FLAG PIDFD_THREAD
#endif
#define UNSETTLED_MAX 64
/* The flag keys: (flags & O_ACCMODE) | (O_TRUNC ? 4 : 0), and EXEC_KEY for an exec. */
#define EXEC_KEY 8
#define KEYS 9

/* What Receiver.next returns besides a notification (bytes). */
enum { R_TIMEOUT = 0, R_WOKEN = 1, R_HUNG_UP = 2, R_ABANDONED = 3 };

/* ---- StaticTable -------------------------------------------------------------------- */

typedef struct {
    char *path; /* canonical, no trailing slash ("" for the root) */
    size_t len;
    uint32_t rights;
} Dir;

typedef struct {
    char *from; /* "/lib" */
    size_t from_len;
    char *to; /* "/usr/lib" */
    size_t to_len;
} Link;

typedef struct {
    PyObject_HEAD
    Dir *dirs;
    Py_ssize_t ndirs;
    Link *links;
    Py_ssize_t nlinks;
    uint32_t needs[KEYS];
} StaticTable;

static void table_free_arrays(StaticTable *t) {
    for (Py_ssize_t i = 0; i < t->ndirs; i++) PyMem_RawFree(t->dirs[i].path);
    for (Py_ssize_t i = 0; i < t->nlinks; i++) {
        PyMem_RawFree(t->links[i].from);
        PyMem_RawFree(t->links[i].to);
    }
    PyMem_RawFree(t->dirs);
    PyMem_RawFree(t->links);
    t->dirs = NULL;
    t->links = NULL;
    t->ndirs = t->nlinks = 0;
}

static char *copy_bytes(PyObject *b, size_t *len) {
    char *data;
    Py_ssize_t n;
    if (PyBytes_AsStringAndSize(b, &data, &n) < 0) return NULL;
    char *out = PyMem_RawMalloc((size_t)n + 1);
    if (out == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    memcpy(out, data, (size_t)n);
    out[n] = 0;
    *len = (size_t)n;
    return out;
}

static int table_init(StaticTable *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"dirs", "links", "needs", NULL};
    PyObject *dirs, *links, *needs;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!O!O!", kwlist, &PyList_Type, &dirs,
                                     &PyList_Type, &links, &PyList_Type, &needs))
        return -1;
    if (PyList_GET_SIZE(needs) != KEYS) {
        PyErr_SetString(PyExc_ValueError, "needs: one right mask per flag key (9)");
        return -1;
    }
    if (self->dirs != NULL) {
        /* Receivers read it without the interpreter lock: it never changes once made. */
        PyErr_SetString(PyExc_RuntimeError, "a StaticTable is made once");
        return -1;
    }
    for (Py_ssize_t i = 0; i < KEYS; i++) {
        unsigned long v = PyLong_AsUnsignedLong(PyList_GET_ITEM(needs, i));
        if (PyErr_Occurred()) return -1;
        self->needs[i] = (uint32_t)v;
    }
    Py_ssize_t nd = PyList_GET_SIZE(dirs), nl = PyList_GET_SIZE(links);
    self->dirs = PyMem_RawCalloc((size_t)nd + 1, sizeof(Dir));
    self->links = PyMem_RawCalloc((size_t)nl + 1, sizeof(Link));
    if (self->dirs == NULL || self->links == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < nd; i++) {
        PyObject *item = PyList_GET_ITEM(dirs, i);
        PyObject *path;
        unsigned long rights;
        if (!PyArg_ParseTuple(item, "O!k", &PyBytes_Type, &path, &rights)) return -1;
        Dir *d = &self->dirs[self->ndirs];
        d->path = copy_bytes(path, &d->len);
        if (d->path == NULL) return -1;
        d->rights = (uint32_t)rights;
        self->ndirs++;
    }
    for (Py_ssize_t i = 0; i < nl; i++) {
        PyObject *item = PyList_GET_ITEM(links, i);
        PyObject *from, *to;
        if (!PyArg_ParseTuple(item, "O!O!", &PyBytes_Type, &from, &PyBytes_Type, &to)) return -1;
        Link *l = &self->links[self->nlinks];
        l->from = copy_bytes(from, &l->from_len);
        if (l->from == NULL) return -1;
        l->to = copy_bytes(to, &l->to_len);
        if (l->to == NULL) return -1;
        self->nlinks++;
    }
    return 0;
}

static void table_dealloc(StaticTable *self) {
    table_free_arrays(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Whether the static rules on the lexical ancestors of the absolute `path` (len bytes, no NUL
 * needed) grant every right of `key`. Never touches Python: called without the lock. */
static int table_allows(const StaticTable *t, const char *path, size_t len, int key) {
    char joined[PATH_MAX + PATH_MAX];
    if (len == 0 || path[0] != '/' || key < 0 || key >= KEYS) return 0;
    if (memmem(path, len, "/..", 3) != NULL) return 0; /* not judged lexically */
    /* A symlink directly in "/" stands for its target (see engine.fastpath). */
    const char *end = memchr(path + 1, '/', len - 1);
    size_t first = end == NULL ? len : (size_t)(end - path);
    for (Py_ssize_t i = 0; i < t->nlinks; i++) {
        const Link *l = &t->links[i];
        if (l->from_len == first && memcmp(l->from, path, first) == 0) {
            if (l->to_len + (len - first) > sizeof joined) return 0;
            memcpy(joined, l->to, l->to_len);
            memcpy(joined + l->to_len, path + first, len - first);
            path = joined;
            len = l->to_len + (len - first);
            break;
        }
    }
    while (len > 0 && path[len - 1] == '/') len--;
    uint32_t need = t->needs[key], granted = 0;
    for (Py_ssize_t i = 0; i < t->ndirs; i++) {
        const Dir *d = &t->dirs[i];
        /* The rule's own path, or beneath it ("" is the root: every absolute path). */
        if (len >= d->len && memcmp(path, d->path, d->len) == 0 &&
            (len == d->len || path[d->len] == '/')) {
            granted |= d->rights;
            if ((need & ~granted) == 0) return 1;
        }
    }
    return 0;
}

static int flag_key(uint64_t flags) {
    return (int)(flags & O_ACCMODE) | ((flags & O_TRUNC) ? 4 : 0);
}

/* The canonical path of what an open of `path` relative to `dirfd` with `flags` leads to now,
 * found by a walk of the dentry cache alone (RESOLVE_CACHED: it never waits on a filesystem,
 * so a serving thread may take it); its length, or -1 when the walk cannot tell (not cached,
 * a magic link, an error the open would have too). Only a hint: the object may be moved at
 * once; a static open is answered CONTINUE on it, safe whatever it says. */
static ssize_t real_path(int dirfd, const char *path, uint64_t flags, char *out, size_t size) {
    struct open_how how = {
        .flags = O_PATH | O_CLOEXEC | (flags & (O_NOFOLLOW | O_DIRECTORY)),
        .mode = 0,
        .resolve = RESOLVE_NO_MAGICLINKS | RESOLVE_CACHED,
    };
    int fd = (int)syscall(SYS_openat2, dirfd, path, &how, sizeof how);
    if (fd < 0) return -1;
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, out, size);
    close(fd);
    if (n <= 0 || (size_t)n >= size) return -1;
    out[n] = 0;
    return n;
}

/* Whether the static layer alone allows an open (never a creation) of what `path` leads to
 * from `dirfd`, judged by its canonical path (see real_path). */
static int table_allows_at(const StaticTable *t, int dirfd, const char *path, uint64_t flags) {
    char real[PATH_MAX];
    if (flags & O_CREAT) return 0;
    ssize_t n = real_path(dirfd, path, flags, real, sizeof real);
    return n > 0 && table_allows(t, real, (size_t)n, flag_key(flags));
}

static PyObject *table_py_allows_at(StaticTable *self, PyObject *args) {
    int dirfd;
    const char *path;
    unsigned long long flags;
    if (!PyArg_ParseTuple(args, "iyK", &dirfd, &path, &flags)) return NULL;
    int allowed;
    Py_BEGIN_ALLOW_THREADS
    allowed = table_allows_at(self, dirfd, path, flags);
    Py_END_ALLOW_THREADS
    return PyBool_FromLong(allowed);
}

static PyObject *py_real_path(PyObject *Py_UNUSED(module), PyObject *args) {
    int dirfd;
    const char *path;
    unsigned long long flags;
    if (!PyArg_ParseTuple(args, "iyK", &dirfd, &path, &flags)) return NULL;
    char real[PATH_MAX];
    ssize_t n;
    Py_BEGIN_ALLOW_THREADS
    n = real_path(dirfd, path, flags, real, sizeof real);
    Py_END_ALLOW_THREADS
    if (n < 0) Py_RETURN_NONE;
    return PyBytes_FromStringAndSize(real, n);
}

static PyObject *table_py_allows(StaticTable *self, PyObject *args) {
    const char *path;
    Py_ssize_t len;
    int key;
    if (!PyArg_ParseTuple(args, "y#i", &path, &len, &key)) return NULL;
    return PyBool_FromLong(table_allows(self, path, (size_t)len, key));
}

static PyMethodDef table_methods[] = {
    {"allows", (PyCFunction)table_py_allows, METH_VARARGS,
     "allows(path, key): whether the static rules grant an open with that flag key."},
    {"allows_at", (PyCFunction)table_py_allows_at, METH_VARARGS,
     "allows_at(dirfd, path, flags): the same, for what a relative open leads to."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject StaticTableType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "llsupervise.supervisor.engine._fastpath.StaticTable",
    .tp_basicsize = sizeof(StaticTable),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)table_init,
    .tp_dealloc = (destructor)table_dealloc,
    .tp_methods = table_methods,
};

/* ---- Readers ------------------------------------------------------------------------ */

typedef struct {
    pid_t tid;
    int fd;    /* its /proc/TID/mem */
    int pidfd; /* a pidfd of that thread (readable once it has exited), -1 for none */
    int cwd;   /* its cwd (O_PATH), while Python holds it settled; -1 otherwise */
    int ours;  /* Python found its credentials to be ours (see Readers.vouch) */
} Slot;

/* CLOCK_REALTIME `ms` milliseconds from now: a deadline for the pthread timed waits. */
static struct timespec realtime_after_ms(long ms) {
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_nsec += ms * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    return until;
}

/* pthread_create, the new thread taking no signal (they go to the threads Python expects
 * them on): 0, or the error. */
static int create_deaf_thread(const pthread_attr_t *attr, void *(*run)(void *), void *arg) {
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pthread_t thread;
    int err = pthread_create(&thread, attr, run, arg);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return err;
}

/* An unrestricted thread that opens a thread's reader (/proc/TID/mem, and a pidfd first)
 * for a restricted serving thread, which may not: a hand-over between two compiled threads
 * instead of one through Python's unrestricted worker. One request at a time; a requester
 * that finds it busy for longer than OPENER_WAIT_MS (stuck in the kernel, say) hands the
 * request to Python.
 * Freed by the last of its two references (the Readers and the thread): the thread is not
 * joined, since an open of /proc can wait on the kernel. */
typedef struct {
    pthread_mutex_t lock;
    pthread_cond_t asked, told;
    pthread_mutex_t turn; /* held by the one requester (trylock) */
    int refs;
    int running, stop;
    pid_t tid; /* the request in hand, 0 for none */
    int done, mem, pidfd;
} Opener;

/* How long a serving thread waits for the opener another one is using. */
#define OPENER_WAIT_MS 20

#define EXECD_MAX 256

typedef struct {
    PyObject_HEAD
    pthread_mutex_t lock;
    Slot slots[READER_SLOTS];
    pid_t unsettled[UNSETTLED_MAX];
    int nunsettled;
    int overflow; /* more unsettled threads than kept: every request goes to Python */
    Opener *opener; /* NULL until start_opener */
    /* Threads whose exec was answered here, for Python to drop what it keeps of them (see
     * Readers.take_execs); execd_overflow: more than kept, Python drops everything. */
    pid_t execd[EXECD_MAX];
    int nexecd, execd_overflow;
    /* Unsettled threads heard from here (a new syscall: the one that unsettled them has
     * returned), settled here and for Python to settle (see Readers.take_heard); one that
     * does not fit stays unsettled in Python, which is only slower. */
    pid_t heard[UNSETTLED_MAX];
    int nheard;
} Readers;

static int readers_init(Readers *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "", kwlist)) return -1;
    pthread_mutex_init(&self->lock, NULL);
    for (int i = 0; i < READER_SLOTS; i++)
        self->slots[i].fd = self->slots[i].pidfd = self->slots[i].cwd = -1;
    return 0;
}

/* Called with the lock held. */
static void slot_clear(Slot *s) {
    if (s->fd >= 0) close(s->fd);
    if (s->pidfd >= 0) close(s->pidfd);
    if (s->cwd >= 0) close(s->cwd);
    s->fd = s->pidfd = s->cwd = -1;
    s->tid = 0;
    s->ours = 0;
}

/* The slot `tid` is kept in (ids equal modulo READER_SLOTS share it). */
static Slot *slot_of(Readers *self, pid_t tid) {
    return &self->slots[(unsigned)tid % READER_SLOTS];
}

/* Called with the lock held: let go of what is kept for `tid`, if its slot is still its. */
static void slot_forget(Readers *self, pid_t tid) {
    Slot *s = slot_of(self, tid);
    if (s->tid == tid) slot_clear(s);
}

/* Let go of what is kept for `tid`: Python closed its reader, or a read through it found its
 * address space gone (exec, exit). */
static void readers_let_go(Readers *self, pid_t tid) {
    pthread_mutex_lock(&self->lock);
    slot_forget(self, tid);
    pthread_mutex_unlock(&self->lock);
}

static void readers_close_all(Readers *self) {
    pthread_mutex_lock(&self->lock);
    for (int i = 0; i < READER_SLOTS; i++) slot_clear(&self->slots[i]);
    pthread_mutex_unlock(&self->lock);
}

static void opener_release(Opener *o) {
    pthread_mutex_lock(&o->lock);
    int last = --o->refs == 0;
    pthread_mutex_unlock(&o->lock);
    if (last) {
        pthread_mutex_destroy(&o->lock);
        pthread_mutex_destroy(&o->turn);
        pthread_cond_destroy(&o->asked);
        pthread_cond_destroy(&o->told);
        free(o);
    }
}

/* Asks the thread to end (not waited for: see Opener); a request in hand is served first. */
static void opener_stop(Opener *o) {
    pthread_mutex_lock(&o->lock);
    o->stop = 1;
    pthread_cond_broadcast(&o->asked);
    pthread_cond_broadcast(&o->told);
    pthread_mutex_unlock(&o->lock);
}

static void *opener_main(void *arg) {
    Opener *o = arg;
    char path[64];
    pthread_mutex_lock(&o->lock);
    for (;;) {
        while (!o->stop && (o->tid == 0 || o->done)) pthread_cond_wait(&o->asked, &o->lock);
        if (o->tid == 0 || o->done) break; /* stopped, with no request in hand */
        pid_t tid = o->tid;
        pthread_mutex_unlock(&o->lock);
        /* The pidfd first, as Python's open_task: it is then of this task or of an earlier
         * one with that id (which has exited: readers_take lets such a reader go). */
        int pidfd = (int)syscall(SYS_pidfd_open, tid, PIDFD_THREAD_FLAG);
        int mem = -1;
        if (pidfd >= 0) {
            snprintf(path, sizeof path, "/proc/%d/mem", (int)tid);
            mem = open(path, O_RDONLY | O_CLOEXEC);
            if (mem < 0) {
                close(pidfd);
                pidfd = -1;
            }
        }
        pthread_mutex_lock(&o->lock);
        o->mem = mem;
        o->pidfd = pidfd;
        o->done = 1;
        pthread_cond_broadcast(&o->told);
    }
    o->running = 0;
    pthread_mutex_unlock(&o->lock);
    opener_release(o);
    return NULL;
}

/* A reader of `tid` opened by the opener: 0 with *mem and *pidfd (ours to close), or -1
 * (no opener, busy, stopped, or the thread is gone or not ours to read). */
static int opener_open(Opener *o, pid_t tid, int *mem, int *pidfd) {
    if (o == NULL) return -1;
    /* Another serving thread's turn is brief, unless the kernel holds the opener: then this
     * request is Python's rather than held too. */
    struct timespec until = realtime_after_ms(OPENER_WAIT_MS);
    if (pthread_mutex_timedlock(&o->turn, &until) != 0) return -1;
    pthread_mutex_lock(&o->lock);
    int ok = 0;
    if (o->running && !o->stop) {
        o->tid = tid;
        o->done = 0;
        pthread_cond_signal(&o->asked);
        /* Answered even when stopped meanwhile: the thread serves the request in hand
         * before it ends, so nothing it opens is left behind. */
        while (!o->done) pthread_cond_wait(&o->told, &o->lock);
        if (o->mem >= 0) {
            *mem = o->mem;
            *pidfd = o->pidfd;
            ok = 1;
        }
        o->tid = 0;
    }
    pthread_mutex_unlock(&o->lock);
    pthread_mutex_unlock(&o->turn);
    return ok ? 0 : -1;
}

/* start_opener(cpu): start the opener thread, pinned to `cpu` (-1: anywhere). Call it from
 * a thread with the supervisor's own standing: the opener inherits the caller's Landlock
 * domain (a restricted one opens nothing, and every request goes to Python). */
static PyObject *readers_start_opener(Readers *self, PyObject *args) {
    int cpu;
    if (!PyArg_ParseTuple(args, "i", &cpu)) return NULL;
    if (self->opener != NULL) Py_RETURN_NONE;
    Opener *o = calloc(1, sizeof *o);
    if (o == NULL) return PyErr_NoMemory();
    pthread_mutex_init(&o->lock, NULL);
    pthread_mutex_init(&o->turn, NULL);
    pthread_cond_init(&o->asked, NULL);
    pthread_cond_init(&o->told, NULL);
    o->refs = 2;
    o->running = 1;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    if (cpu >= 0 && cpu < CPU_SETSIZE) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(cpu, &set);
        pthread_attr_setaffinity_np(&attr, sizeof set, &set); /* placement: speed only */
    }
    int err = create_deaf_thread(&attr, opener_main, o);
    if (err == EINVAL && cpu >= 0) { /* a CPU it may not use: anywhere, then */
        pthread_attr_destroy(&attr);
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        err = create_deaf_thread(&attr, opener_main, o);
    }
    pthread_attr_destroy(&attr);
    if (err) {
        o->refs = 1;
        opener_release(o);
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    self->opener = o;
    Py_RETURN_NONE;
}

static void readers_dealloc(Readers *self) {
    readers_close_all(self);
    if (self->opener != NULL) {
        opener_stop(self->opener);
        opener_release(self->opener);
        self->opener = NULL;
    }
    pthread_mutex_destroy(&self->lock);
    Py_TYPE(self)->tp_free((PyObject *)self);
}


static PyObject *readers_remember(Readers *self, PyObject *args) {
    int tid, fd, pidfd = -1;
    if (!PyArg_ParseTuple(args, "ii|i", &tid, &fd, &pidfd)) return NULL;
    int own = fcntl(fd, F_DUPFD_CLOEXEC, 3);
    if (own < 0) return PyErr_SetFromErrno(PyExc_OSError);
    int own_pidfd = pidfd >= 0 ? fcntl(pidfd, F_DUPFD_CLOEXEC, 3) : -1;
    if (pidfd >= 0 && own_pidfd < 0) {
        close(own);
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    pthread_mutex_lock(&self->lock);
    Slot *s = slot_of(self, tid);
    slot_clear(s);
    s->tid = tid;
    s->fd = own;
    s->pidfd = own_pidfd;
    pthread_mutex_unlock(&self->lock);
    Py_RETURN_NONE;
}

static PyObject *readers_forget(Readers *self, PyObject *args) {
    int tid;
    if (!PyArg_ParseTuple(args, "i", &tid)) return NULL;
    readers_let_go(self, (pid_t)tid);
    Py_RETURN_NONE;
}

/* Whether the thread of this pidfd has exited (its id may now name another task). */
static int exited(int pidfd) {
    struct pollfd p = {pidfd, POLLIN, 0};
    int ready;
    while ((ready = poll(&p, 1, 0)) < 0 && errno == EINTR) {
    }
    return ready != 0; /* an error: not known to be the same thread */
}

/* Private dups of the reader of `tid` and (when `cwd` is not NULL) of its cwd, -1 for none:
 * the slot may be replaced or closed meanwhile; `*ours`: whether its credentials are ours.
 * What was kept for a thread that has exited is let go of: the same id may now be another
 * task's (Python opens that one's afresh). */
static int readers_take(Readers *self, pid_t tid, int *cwd, int *ours) {
    int fd = -1;
    *ours = 0;
    pthread_mutex_lock(&self->lock);
    Slot *s = slot_of(self, tid);
    if (s->tid == tid && s->pidfd >= 0 && exited(s->pidfd)) slot_clear(s);
    if (s->tid == tid && s->fd >= 0) {
        fd = fcntl(s->fd, F_DUPFD_CLOEXEC, 3);
        if (cwd != NULL) *cwd = s->cwd >= 0 ? fcntl(s->cwd, F_DUPFD_CLOEXEC, 3) : -1;
        *ours = s->ours;
    }
    pthread_mutex_unlock(&self->lock);
    return fd;
}

static PyObject *readers_remember_cwd(Readers *self, PyObject *args) {
    int tid, fd;
    if (!PyArg_ParseTuple(args, "ii", &tid, &fd)) return NULL;
    int own = fcntl(fd, F_DUPFD_CLOEXEC, 3);
    if (own < 0) return PyErr_SetFromErrno(PyExc_OSError);
    pthread_mutex_lock(&self->lock);
    Slot *s = slot_of(self, tid);
    if (s->tid == tid) {
        if (s->cwd >= 0) close(s->cwd);
        s->cwd = own;
        own = -1;
    }
    pthread_mutex_unlock(&self->lock);
    if (own >= 0) close(own); /* no reader kept for it: nothing is answered here for it */
    Py_RETURN_NONE;
}

static PyObject *readers_forget_cwds(Readers *self, PyObject *Py_UNUSED(ignored)) {
    pthread_mutex_lock(&self->lock);
    for (int i = 0; i < READER_SLOTS; i++) {
        if (self->slots[i].cwd >= 0) close(self->slots[i].cwd);
        self->slots[i].cwd = -1;
    }
    pthread_mutex_unlock(&self->lock);
    Py_RETURN_NONE;
}


/* `tid` is heard from (a new syscall): whether the loop may serve it. An unsettled thread
 * is settled (the call that unsettled it has returned) and Python told; with more unsettled
 * threads than kept, Python hears from every thread itself. */
static int readers_hear(Readers *self, pid_t tid) {
    int served = 1;
    pthread_mutex_lock(&self->lock);
    if (self->overflow) {
        served = 0;
    } else {
        for (int i = 0; i < self->nunsettled; i++) {
            if (self->unsettled[i] == tid) {
                self->unsettled[i] = self->unsettled[--self->nunsettled];
                if (self->nheard < UNSETTLED_MAX) self->heard[self->nheard++] = tid;
                break;
            }
        }
    }
    pthread_mutex_unlock(&self->lock);
    return served;
}

static PyObject *readers_unsettle(Readers *self, PyObject *args) {
    int tid;
    if (!PyArg_ParseTuple(args, "i", &tid)) return NULL;
    pthread_mutex_lock(&self->lock);
    /* Python drops every thread's cached context (credentials too): so do we. */
    for (int i = 0; i < READER_SLOTS; i++) self->slots[i].ours = 0;
    int found = 0;
    for (int i = 0; i < self->nunsettled; i++)
        if (self->unsettled[i] == tid) found = 1;
    if (!found) {
        if (self->nunsettled < UNSETTLED_MAX)
            self->unsettled[self->nunsettled++] = tid;
        else
            self->overflow = 1;
    }
    pthread_mutex_unlock(&self->lock);
    Py_RETURN_NONE;
}

static PyObject *readers_settle(Readers *self, PyObject *args) {
    int tid;
    if (!PyArg_ParseTuple(args, "i", &tid)) return NULL;
    pthread_mutex_lock(&self->lock);
    for (int i = 0; i < self->nunsettled; i++) {
        if (self->unsettled[i] == tid) {
            self->unsettled[i] = self->unsettled[--self->nunsettled];
            break;
        }
    }
    pthread_mutex_unlock(&self->lock);
    Py_RETURN_NONE;
}

static PyObject *readers_settle_all(Readers *self, PyObject *Py_UNUSED(ignored)) {
    pthread_mutex_lock(&self->lock);
    self->nunsettled = 0;
    self->overflow = 0;
    pthread_mutex_unlock(&self->lock);
    Py_RETURN_NONE;
}

/* vouch(tid): Python read the thread's credentials while no thread was unsettled, and they
 * are ours; kept until its reader is replaced or forgotten, or any thread is unsettled. */
static PyObject *readers_vouch(Readers *self, PyObject *args) {
    int tid;
    if (!PyArg_ParseTuple(args, "i", &tid)) return NULL;
    pthread_mutex_lock(&self->lock);
    Slot *s = slot_of(self, tid);
    if (s->tid == tid && s->fd >= 0 && self->nunsettled == 0 && !self->overflow) s->ours = 1;
    pthread_mutex_unlock(&self->lock);
    Py_RETURN_NONE;
}

static PyObject *readers_py_close(Readers *self, PyObject *Py_UNUSED(ignored)) {
    if (self->opener != NULL) opener_stop(self->opener);
    readers_close_all(self);
    Py_RETURN_NONE;
}

/* A reader of `tid` for a serving thread (a private dup, -1 for none): the one kept, else
 * one opened by the opener and kept (until Python remembers its own, or forgets it). What
 * is opened here is not vouched for (`*ours` is 0) and has no cwd: a grant, and an open
 * relative to its cwd, go to Python, which opens its own. `keep`: 0 for one read only. No
 * turn is lent (see GROUPS_MAX) while the opener opens one: measured, that cost a new
 * process 0.06 ms (two opener hand-overs each), and the opener seldom keeps a helper long
 * (the stall watch's keep_receiving covers it when it does). */
static int readers_reader(Readers *self, pid_t tid, int *cwd, int *ours, int keep) {
    int fd = readers_take(self, tid, cwd, ours);
    if (fd >= 0) return fd;
    int mem, pidfd;
    if (opener_open(self->opener, tid, &mem, &pidfd) < 0) return -1;
    if (!keep) { /* an exec's: it is about to go stale */
        close(pidfd);
        return mem;
    }
    pthread_mutex_lock(&self->lock);
    Slot *s = slot_of(self, tid);
    if (s->tid == tid && s->fd >= 0) {
        /* Python remembered its own meanwhile: that one is used, with what it holds. */
        close(mem);
        close(pidfd);
    } else {
        slot_clear(s);
        s->tid = tid;
        s->fd = mem;
        s->pidfd = pidfd;
    }
    fd = fcntl(s->fd, F_DUPFD_CLOEXEC, 3);
    if (fd >= 0 && cwd != NULL) *cwd = s->cwd >= 0 ? fcntl(s->cwd, F_DUPFD_CLOEXEC, 3) : -1;
    *ours = fd >= 0 ? s->ours : 0;
    pthread_mutex_unlock(&self->lock);
    return fd;
}

/* `tid` execs: what is kept for it reads an address space about to go, and Python is told
 * to drop what it keeps (see take_execs). Whether or not the exec succeeds: a dropped
 * reader is only opened again. */
static void readers_exec(Readers *self, pid_t tid) {
    pthread_mutex_lock(&self->lock);
    slot_forget(self, tid);
    if (self->nexecd < EXECD_MAX)
        self->execd[self->nexecd++] = tid;
    else
        self->execd_overflow = 1;
    pthread_mutex_unlock(&self->lock);
}

static PyObject *tid_list(const pid_t *tids, int n) {
    PyObject *list = PyList_New(n);
    if (list == NULL) return NULL;
    for (int i = 0; i < n; i++) {
        PyObject *tid = PyLong_FromLong(tids[i]);
        if (tid == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, i, tid);
    }
    return list;
}

/* take_heard() -> list[int]: the unsettled threads heard from here since the last call. */
static PyObject *readers_take_heard(Readers *self, PyObject *Py_UNUSED(ignored)) {
    pid_t heard[UNSETTLED_MAX];
    pthread_mutex_lock(&self->lock);
    int n = self->nheard;
    memcpy(heard, self->heard, (size_t)n * sizeof *heard);
    self->nheard = 0;
    pthread_mutex_unlock(&self->lock);
    return tid_list(heard, n);
}

/* take_execs() -> list[int] | None: the threads whose exec was answered here since the last
 * call, for Python to drop what it keeps of them; None: more than were kept, drop all. */
static PyObject *readers_take_execs(Readers *self, PyObject *Py_UNUSED(ignored)) {
    pid_t execd[EXECD_MAX];
    pthread_mutex_lock(&self->lock);
    int n = self->nexecd, overflow = self->execd_overflow;
    memcpy(execd, self->execd, (size_t)n * sizeof *execd);
    self->nexecd = self->execd_overflow = 0;
    pthread_mutex_unlock(&self->lock);
    if (overflow) Py_RETURN_NONE;
    return tid_list(execd, n);
}

static PyMethodDef readers_methods[] = {
    {"vouch", (PyCFunction)readers_vouch, METH_VARARGS,
     "vouch(tid): its credentials are ours (read while every thread was settled)"},
    {"remember", (PyCFunction)readers_remember, METH_VARARGS,
     "remember(tid, fd, pidfd=-1): keep dups of the thread's /proc/TID/mem descriptor and "
     "of a pidfd of it (PIDFD_THREAD), which tells when it has exited."},
    {"forget", (PyCFunction)readers_forget, METH_VARARGS, "forget(tid): close its reader."},
    {"remember_cwd", (PyCFunction)readers_remember_cwd, METH_VARARGS,
     "remember_cwd(tid, fd): keep a dup of the thread's cwd (O_PATH) with its reader."},
    {"forget_cwds", (PyCFunction)readers_forget_cwds, METH_NOARGS,
     "close every thread's cwd: one may have changed"},
    {"unsettle", (PyCFunction)readers_unsettle, METH_VARARGS,
     "unsettle(tid): its requests go to Python until settle(tid)."},
    {"settle", (PyCFunction)readers_settle, METH_VARARGS, "settle(tid)"},
    {"settle_all", (PyCFunction)readers_settle_all, METH_NOARGS, "settle every thread"},
    {"close", (PyCFunction)readers_py_close, METH_NOARGS, "close every reader, stop the opener"},
    {"start_opener", (PyCFunction)readers_start_opener, METH_VARARGS,
     "start_opener(cpu): open readers for the serving threads (call it unrestricted)"},
    {"take_heard", (PyCFunction)readers_take_heard, METH_NOARGS,
     "take_heard() -> [tid]: unsettled threads heard from (and settled) in the loop"},
    {"take_execs", (PyCFunction)readers_take_execs, METH_NOARGS,
     "take_execs() -> [tid] | None: threads whose exec was answered here (None: all)"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject ReadersType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "llsupervise.supervisor.engine._fastpath.Readers",
    .tp_basicsize = sizeof(Readers),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)readers_init,
    .tp_dealloc = (destructor)readers_dealloc,
    .tp_methods = readers_methods,
};

/* ---- Grants ------------------------------------------------------------------------- */

/* Unique mount ids (never reused) of mounts Python found not to block (perform.blocking):
 * shared by every loop, grown only, bounded (an unknown one is Python's to judge). */
#define INLINE_MOUNTS 1024
static pthread_mutex_t mounts_lock = PTHREAD_MUTEX_INITIALIZER;
static uint64_t inline_mounts[INLINE_MOUNTS];
static int ninline;

static int mount_inline(uint64_t unique) {
    int found = 0;
    pthread_mutex_lock(&mounts_lock);
    for (int i = 0; i < ninline && !found; i++) found = inline_mounts[i] == unique;
    pthread_mutex_unlock(&mounts_lock);
    return found;
}

static PyObject *py_inline_mount(PyObject *Py_UNUSED(module), PyObject *args) {
    unsigned long long unique;
    if (!PyArg_ParseTuple(args, "K", &unique)) return NULL;
    if (!mount_inline(unique)) {
        pthread_mutex_lock(&mounts_lock);
        if (ninline < INLINE_MOUNTS) inline_mounts[ninline++] = unique;
        pthread_mutex_unlock(&mounts_lock);
    }
    Py_RETURN_NONE;
}

typedef struct {
    dev_t dev;
    ino_t ino;
    int secret;
} Guarded;

typedef struct {
    int dirfd; /* a dup of the guard's, closed with the Grants */
    char *name;
    int secret;
} GuardEntry;

typedef struct {
    char *path;
    double when;
} Done;

#define DONE_MAX 65536

typedef struct {
    PyObject_HEAD
    pthread_mutex_t lock;
    int proc_fd; /* a dup of our /proc/self/fd */
    GuardEntry *entries;
    Py_ssize_t nentries;
    Guarded *objects;
    Py_ssize_t nobjects, objects_cap;
    Done *done; /* a ring of DONE_MAX: under a flood the oldest go, as in PerformedLog */
    size_t done_first, ndone;
    int disabled; /* the program added a Landlock layer of its own: nothing is performed */
    /* Python's own definitions, given once (see engine.grants): the open flags its one walk
     * leaves to the general path, and the paths that name the caller. */
    uint64_t not_checked;
    char **callers;
    size_t *caller_lens;
    Py_ssize_t ncallers;
} Grants;

/* Called with the lock held, or by the last reference. */
static void grants_free(Grants *self) {
    for (Py_ssize_t i = 0; i < self->nentries; i++) {
        close(self->entries[i].dirfd);
        free(self->entries[i].name);
    }
    free(self->entries);
    self->entries = NULL;
    self->nentries = 0;
    free(self->objects);
    self->objects = NULL;
    self->nobjects = self->objects_cap = 0;
    for (Py_ssize_t i = 0; i < self->ncallers; i++) free(self->callers[i]);
    free(self->callers);
    free(self->caller_lens);
    self->callers = NULL;
    self->caller_lens = NULL;
    self->ncallers = 0;
    if (self->done != NULL)
        for (size_t i = 0; i < self->ndone; i++)
            free(self->done[(self->done_first + i) % DONE_MAX].path);
    free(self->done);
    self->done = NULL;
    self->ndone = self->done_first = 0;
    if (self->proc_fd >= 0) close(self->proc_fd);
    self->proc_fd = -1;
}

static int grants_add_object(Grants *self, unsigned long long dev, unsigned long long ino,
                             int secret) {
    pthread_mutex_lock(&self->lock);
    if (self->nobjects == self->objects_cap) {
        Py_ssize_t cap = self->objects_cap ? self->objects_cap * 2 : 8;
        Guarded *grown = realloc(self->objects, (size_t)cap * sizeof *grown);
        if (grown == NULL) {
            pthread_mutex_unlock(&self->lock);
            PyErr_NoMemory();
            return -1;
        }
        self->objects = grown;
        self->objects_cap = cap;
    }
    self->objects[self->nobjects++] = (Guarded){(dev_t)dev, (ino_t)ino, secret};
    pthread_mutex_unlock(&self->lock);
    return 0;
}

/* Grants(proc_fd, entries: [(dirfd, name, secret)], objects: [(dev, ino, secret)],
 *        not_checked: open flags, callers: [path]) */
static int grants_init(Grants *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"proc_fd", "entries", "objects", "not_checked", "callers", NULL};
    int proc_fd;
    unsigned long long not_checked;
    PyObject *entries, *objects, *callers;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iO!O!KO!", kwlist, &proc_fd, &PyList_Type,
                                     &entries, &PyList_Type, &objects, &not_checked,
                                     &PyList_Type, &callers))
        return -1;
    if (self->done != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Grants: initialised once");
        return -1;
    }
    Py_ssize_t n = PyList_GET_SIZE(entries);
    self->entries = calloc((size_t)(n ? n : 1), sizeof *self->entries);
    self->done = calloc(DONE_MAX, sizeof *self->done);
    if (self->entries == NULL || self->done == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        int dirfd, secret;
        PyObject *name;
        if (!PyArg_ParseTuple(PyList_GET_ITEM(entries, i), "iO!p", &dirfd, &PyBytes_Type, &name,
                              &secret))
            return -1;
        size_t len;
        char *copy = copy_bytes(name, &len);
        if (copy == NULL) return -1;
        int own = fcntl(dirfd, F_DUPFD_CLOEXEC, 3);
        if (own < 0) {
            free(copy);
            PyErr_SetFromErrno(PyExc_OSError);
            return -1;
        }
        self->entries[self->nentries++] = (GuardEntry){own, copy, secret};
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(objects); i++) {
        unsigned long long dev, ino;
        int secret;
        if (!PyArg_ParseTuple(PyList_GET_ITEM(objects, i), "KKp", &dev, &ino, &secret)) return -1;
        if (grants_add_object(self, dev, ino, secret) < 0) return -1;
    }
    self->not_checked = not_checked;
    Py_ssize_t ncallers = PyList_GET_SIZE(callers);
    self->callers = calloc((size_t)(ncallers ? ncallers : 1), sizeof *self->callers);
    self->caller_lens = calloc((size_t)(ncallers ? ncallers : 1), sizeof *self->caller_lens);
    if (self->callers == NULL || self->caller_lens == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < ncallers; i++) {
        PyObject *path = PyList_GET_ITEM(callers, i);
        if (!PyBytes_Check(path)) {
            PyErr_SetString(PyExc_TypeError, "callers: a list of bytes");
            return -1;
        }
        size_t len;
        char *copy = copy_bytes(path, &len);
        if (copy == NULL) return -1;
        self->callers[self->ncallers] = copy;
        self->caller_lens[self->ncallers++] = len;
    }
    self->proc_fd = fcntl(proc_fd, F_DUPFD_CLOEXEC, 3);
    if (self->proc_fd < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    return 0;
}

static PyObject *grants_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    Grants *self = (Grants *)PyType_GenericNew(type, args, kwds);
    if (self != NULL) {
        self->proc_fd = -1;
        pthread_mutex_init(&self->lock, NULL);
    }
    return (PyObject *)self;
}

static void grants_dealloc(Grants *self) {
    pthread_mutex_lock(&self->lock);
    grants_free(self);
    pthread_mutex_unlock(&self->lock);
    pthread_mutex_destroy(&self->lock);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* disable(): no open is performed with it any more (the program restricted itself). */
static PyObject *grants_disable(Grants *self, PyObject *Py_UNUSED(ignored)) {
    pthread_mutex_lock(&self->lock);
    self->disabled = 1;
    pthread_mutex_unlock(&self->lock);
    Py_RETURN_NONE;
}

/* close(): no open is performed with it any more (once no serving thread runs). */
static PyObject *grants_close(Grants *self, PyObject *Py_UNUSED(ignored)) {
    pthread_mutex_lock(&self->lock);
    self->disabled = 1;
    grants_free(self);
    pthread_mutex_unlock(&self->lock);
    Py_RETURN_NONE;
}

static PyObject *grants_protect(Grants *self, PyObject *args) {
    unsigned long long dev, ino;
    int secret;
    if (!PyArg_ParseTuple(args, "KKp", &dev, &ino, &secret)) return NULL;
    if (grants_add_object(self, dev, ino, secret) < 0) return NULL;
    Py_RETURN_NONE;
}

/* Whether an open of (dev, ino) must be refused: guard.Guard.object_by_id, entries looked up
 * live (a file replaced since is still protected). */
static int grants_guarded(Grants *self, dev_t dev, ino_t ino, int reading_only) {
    int found = 0;
    pthread_mutex_lock(&self->lock);
    for (Py_ssize_t i = 0; i < self->nobjects && !found; i++) {
        const Guarded *o = &self->objects[i];
        found = o->dev == dev && o->ino == ino && (o->secret || !reading_only);
    }
    for (Py_ssize_t i = 0; i < self->nentries && !found; i++) {
        const GuardEntry *e = &self->entries[i];
        if (!e->secret && reading_only) continue;
        struct stat st;
        if (fstatat(e->dirfd, e->name, &st, AT_SYMLINK_NOFOLLOW) != 0) continue;
        found = st.st_dev == dev && st.st_ino == ino;
    }
    pthread_mutex_unlock(&self->lock);
    return found;
}

/* The clock's time in seconds (CLOCK_MONOTONIC as time.monotonic(), CLOCK_REALTIME as
 * time.time()). */
static double seconds(clockid_t clock) {
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Records an open performed (`path` relative to `dirfd` when that is not -1), by its absolute
 * path as named (the directory's as our /proc/self/fd tells it, as PerformedLog does). */
static void grants_note(Grants *self, int dirfd, const char *path) {
    char *copy;
    if (dirfd < 0) {
        copy = strdup(path);
    } else {
        char link[16], dir[PATH_MAX];
        snprintf(link, sizeof link, "%d", dirfd);
        pthread_mutex_lock(&self->lock);
        ssize_t n = self->proc_fd >= 0 ? readlinkat(self->proc_fd, link, dir, sizeof dir - 1) : -1;
        pthread_mutex_unlock(&self->lock);
        if (n <= 0) return; /* a count lost, nothing else */
        size_t len = strlen(path);
        copy = malloc((size_t)n + 1 + len + 1);
        if (copy != NULL) {
            memcpy(copy, dir, (size_t)n);
            copy[n] = '/';
            memcpy(copy + n + 1, path, len + 1);
        }
    }
    if (copy == NULL) return; /* a count lost, nothing else */
    double when = seconds(CLOCK_REALTIME);
    pthread_mutex_lock(&self->lock);
    if (self->done == NULL) { /* closed */
        pthread_mutex_unlock(&self->lock);
        free(copy);
        return;
    }
    if (self->ndone == DONE_MAX) {
        free(self->done[self->done_first].path);
        self->done_first = (self->done_first + 1) % DONE_MAX;
        self->ndone--;
    }
    self->done[(self->done_first + self->ndone) % DONE_MAX] = (Done){copy, when};
    self->ndone++;
    pthread_mutex_unlock(&self->lock);
}

/* drain() -> [(path, time)]: the opens performed here since the last drain. */
static PyObject *grants_drain(Grants *self, PyObject *Py_UNUSED(ignored)) {
    pthread_mutex_lock(&self->lock);
    size_t n = self->ndone, first = self->done_first;
    Done *taken = n ? malloc(n * sizeof *taken) : NULL;
    if (n && taken == NULL) {
        pthread_mutex_unlock(&self->lock);
        return PyErr_NoMemory();
    }
    for (size_t i = 0; i < n; i++) taken[i] = self->done[(first + i) % DONE_MAX];
    self->ndone = self->done_first = 0;
    pthread_mutex_unlock(&self->lock);
    PyObject *out = PyList_New(0);
    for (size_t i = 0; i < n; i++) {
        if (out != NULL) {
            PyObject *item = Py_BuildValue("(yd)", taken[i].path, taken[i].when);
            if (item == NULL || PyList_Append(out, item) < 0) Py_CLEAR(out);
            Py_XDECREF(item);
        }
        free(taken[i].path);
    }
    free(taken);
    return out;
}

static PyMethodDef grants_methods[] = {
    {"protect", (PyCFunction)grants_protect, METH_VARARGS,
     "protect(dev, ino, secret): never open it for writing (for any open when secret)"},
    {"disable", (PyCFunction)grants_disable, METH_NOARGS,
     "perform no open any more (the program added a Landlock layer of its own)"},
    {"close", (PyCFunction)grants_close, METH_NOARGS,
     "release its descriptors: no open is performed with it any more"},
    {"drain", (PyCFunction)grants_drain, METH_NOARGS,
     "the opens performed here since the last call: [(path, time.time())]"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject GrantsType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "llsupervise.supervisor.engine._fastpath.Grants",
    .tp_basicsize = sizeof(Grants),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = grants_new,
    .tp_init = (initproc)grants_init,
    .tp_dealloc = (destructor)grants_dealloc,
    .tp_methods = grants_methods,
};

/* Whether `path` names the caller (requests.SELF_REFERENTIAL, as given): never performed by
 * us, whose /proc/self is not the program's. Called with the lock held. */
static int self_referential(const Grants *g, const char *path, size_t len) {
    for (Py_ssize_t i = 0; i < g->ncallers; i++) {
        size_t n = g->caller_lens[i];
        if (len >= n && memcmp(path, g->callers[i], n) == 0 && (len == n || path[n] == '/'))
            return 1;
    }
    return 0;
}

#define STATX_WANTED (0x1U | 0x2U | 0x100U | 0x4000U) /* TYPE MODE INO MNT_ID_UNIQUE */

/* Open `path` (relative to `dirfd`, the thread's cwd, or AT_FDCWD for an absolute one) for
 * the program as _open_checked does, in this (restricted) thread; the fd, or -1: Python's
 * (nothing was done that it would repeat). */
static int grant_open(Grants *g, int dirfd, const char *path, uint64_t flags) {
    struct open_how how = {
        .flags = O_PATH | O_CLOEXEC | (flags & O_DIRECTORY),
        .resolve = RESOLVE_NO_MAGICLINKS | RESOLVE_CACHED,
    };
    int held = (int)syscall(SYS_openat2, dirfd, path, &how, sizeof how);
    if (held < 0) return -1;
    unsigned char sx[256];
    memset(sx, 0, sizeof sx);
    uint32_t mask;
    uint16_t mode;
    uint64_t ino, unique;
    uint32_t major, minor;
    if (syscall(SYS_statx, held, "", AT_EMPTY_PATH | AT_STATX_DONT_SYNC, STATX_WANTED, sx) != 0) {
        close(held);
        return -1;
    }
    /* struct statx: stx_mask @0, stx_mode @28, stx_ino @32, stx_dev_major/minor @136/140,
     * stx_mnt_id @144 (the unique id, as asked for). */
    memcpy(&mask, sx, 4);
    memcpy(&mode, sx + 28, 2);
    memcpy(&ino, sx + 32, 8);
    memcpy(&major, sx + 136, 4);
    memcpy(&minor, sx + 140, 4);
    memcpy(&unique, sx + 144, 8);
    int reading_only = (flags & O_ACCMODE) == O_RDONLY;
    if ((mask & STATX_WANTED) != STATX_WANTED || !(S_ISREG(mode) || S_ISDIR(mode)) ||
        !mount_inline(unique) || grants_guarded(g, makedev(major, minor), (ino_t)ino, reading_only)) {
        close(held);
        return -1;
    }
    char name[16];
    snprintf(name, sizeof name, "%d", held);
    /* O_NONBLOCK: a lease makes the open fail rather than wait (Python then decides). */
    int opened = ((int)flags & ~O_CLOEXEC) | O_CLOEXEC | O_NOCTTY | O_NONBLOCK;
    pthread_mutex_lock(&g->lock);
    int proc = g->proc_fd;
    pthread_mutex_unlock(&g->lock);
    int fd = proc >= 0 ? openat(proc, name, opened) : -1;
    close(held);
    if (fd < 0) return -1;
    if (!(flags & O_NONBLOCK) && fcntl(fd, F_SETFL, opened & ~O_NONBLOCK) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* A granted open in _open_checked's shape, performed here: an absolute path, or one relative
 * to `cwd` (-1: none lent); the fd, or -1 (Python's). */
static int grant(Grants *g, int cwd, const char *path, size_t len, uint64_t flags) {
    int absolute = len > 0 && path[0] == '/';
    pthread_mutex_lock(&g->lock);
    int taken = !g->disabled && len > 0 && (absolute || cwd >= 0) && !(flags & g->not_checked) &&
                !(absolute && self_referential(g, path, len));
    pthread_mutex_unlock(&g->lock);
    if (!taken) return -1;
    return grant_open(g, absolute ? AT_FDCWD : cwd, path, flags);
}

/* open_checked(grants, dirfd, path, flags) -> int: what the loop would inject for that open
 * (a new fd, ours to close), or -1 where it would hand the open to Python. */
static PyObject *py_open_checked(PyObject *Py_UNUSED(module), PyObject *args) {
    PyObject *grants;
    int dirfd;
    const char *path;
    Py_ssize_t len;
    unsigned long long flags;
    if (!PyArg_ParseTuple(args, "O!iy#K", &GrantsType, &grants, &dirfd, &path, &len, &flags))
        return NULL;
    if ((size_t)len != strlen(path)) {
        PyErr_SetString(PyExc_ValueError, "path: no NUL byte");
        return NULL;
    }
    int fd;
    Py_BEGIN_ALLOW_THREADS
    fd = grant((Grants *)grants, dirfd, path, (size_t)len, flags);
    Py_END_ALLOW_THREADS
    return PyLong_FromLong(fd);
}

/* ---- Handoff ------------------------------------------------------------------------ */

/* The requests the helper threads hand to Python, in the order received, for whichever
 * serving thread is current: one queue for the loop, so that what one generation's helpers
 * received and Python had not yet taken is taken by the next generation's thread (it is then
 * served with the rules in force, as a request still waiting in the kernel would be).
 * Freed by the last of its references (the Python object, and each Receiver's threads). */
typedef struct {
    pthread_mutex_t lock;
    int refs;
    int efd; /* readable while something was pushed since Python last looked; -1: closed */
    struct seccomp_notif *items; /* a ring */
    size_t first, count, cap;
    int hung_up; /* a helper saw every supervisee gone */
} Queue;

typedef struct {
    PyObject_HEAD
    Queue *queue;
} Handoff;

static void queue_release(Queue *q) {
    pthread_mutex_lock(&q->lock);
    int last = --q->refs == 0;
    pthread_mutex_unlock(&q->lock);
    if (last) {
        if (q->efd >= 0) close(q->efd);
        free(q->items);
        pthread_mutex_destroy(&q->lock);
        free(q);
    }
}

static Queue *queue_ref(Queue *q) {
    pthread_mutex_lock(&q->lock);
    q->refs++;
    pthread_mutex_unlock(&q->lock);
    return q;
}

static void queue_signal(Queue *q) {
    uint64_t one = 1;
    pthread_mutex_lock(&q->lock); /* the number stays ours until the write is done */
    if (q->efd >= 0)
        while (write(q->efd, &one, sizeof one) < 0 && errno == EINTR) {
        }
    pthread_mutex_unlock(&q->lock);
}

/* Called with the lock held. 0, or -1 when out of memory. */
static int queue_grow(Queue *q) {
    if (q->count < q->cap) return 0;
    size_t cap = q->cap ? q->cap * 2 : 16;
    struct seccomp_notif *items = malloc(cap * sizeof *items);
    if (items == NULL) return -1;
    for (size_t i = 0; i < q->count; i++) items[i] = q->items[(q->first + i) % q->cap];
    free(q->items);
    q->items = items;
    q->first = 0;
    q->cap = cap;
    return 0;
}

/* Called with the lock held: `n` at the back (or, `front`, at the front). */
static int queue_put(Queue *q, const struct seccomp_notif *n, int front) {
    if (queue_grow(q) < 0) return -1;
    if (front) {
        q->first = (q->first + q->cap - 1) % q->cap;
        q->items[q->first] = *n;
    } else {
        q->items[(q->first + q->count) % q->cap] = *n;
    }
    q->count++;
    return 0;
}

/* The request at the front into `n`: 1, or 0 when there is none. */
static int queue_take(Queue *q, struct seccomp_notif *n) {
    pthread_mutex_lock(&q->lock);
    int got = q->count > 0;
    if (got) {
        *n = q->items[q->first];
        q->first = (q->first + 1) % q->cap;
        q->count--;
    }
    pthread_mutex_unlock(&q->lock);
    return got;
}

static int handoff_init(Handoff *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "", kwlist)) return -1;
    if (self->queue != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Handoff: initialised once");
        return -1;
    }
    Queue *q = calloc(1, sizeof *q);
    if (q == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    q->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (q->efd < 0) {
        free(q);
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    pthread_mutex_init(&q->lock, NULL);
    q->refs = 1;
    self->queue = q;
    return 0;
}

static void handoff_dealloc(Handoff *self) {
    if (self->queue != NULL) queue_release(self->queue);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *handoff_len(Handoff *self, PyObject *Py_UNUSED(ignored)) {
    pthread_mutex_lock(&self->queue->lock);
    size_t n = self->queue->count;
    pthread_mutex_unlock(&self->queue->lock);
    return PyLong_FromSize_t(n);
}

/* close(): its descriptor is closed (the loop's end); what is queued is dropped. */
static PyObject *handoff_close(Handoff *self, PyObject *Py_UNUSED(ignored)) {
    Queue *q = self->queue;
    pthread_mutex_lock(&q->lock);
    if (q->efd >= 0) close(q->efd);
    q->efd = -1;
    q->count = 0;
    pthread_mutex_unlock(&q->lock);
    Py_RETURN_NONE;
}

static PyMethodDef handoff_methods[] = {
    {"pending", (PyCFunction)handoff_len, METH_NOARGS,
     "how many requests wait for Python in the queue"},
    {"close", (PyCFunction)handoff_close, METH_NOARGS, "close its descriptor (the loop's end)"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject HandoffType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "llsupervise.supervisor.engine._fastpath.Handoff",
    .tp_basicsize = sizeof(Handoff),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)handoff_init,
    .tp_dealloc = (destructor)handoff_dealloc,
    .tp_methods = handoff_methods,
};

/* ---- Receiver ----------------------------------------------------------------------- */

/* Helpers come in groups, one group per CPU (up to GROUPS_MAX; beyond, a group shares
 * several), each pinned to its group's CPUs. The kernel's receive is no exclusive wait: a
 * trap wakes every helper waiting in it, and with SYNC_WAKE_UP moves each one it may to the
 * trapping CPU, where one takes the request. Unpinned, every trap dragged all idle helpers to
 * its CPU, and two programs' threads trapping on two CPUs fought over them (two concurrent
 * openers paid 1.5-1.9x one). So one helper of a group waits in the receive at a time, on
 * its own CPUs; the other waits for its turn, which it gets when the first is about to wait
 * on something else (an open of ours and the injection of its descriptor), or ends, or is
 * held up anywhere else (the stall watch's keep_receiving): a trap on those CPUs is then
 * still answered there. */
#define GROUPS_MAX 4
#define PER_GROUP 2
#define HELPERS_MAX (GROUPS_MAX * PER_GROUP)

/* What one thread holds, for the stall watch: since when (CLOCK_MONOTONIC, seconds, as
 * time.monotonic()), 0 while idle; and the request. given_up: it acts no more. */
typedef struct {
    double since;
    struct seccomp_notif held;
    int given_up;
    int sending; /* answering the request in hand: a watch leaves it to the thread */
    int handed; /* the Python thread's: returned to Python, not yet taken over (see taken) */
    pid_t tid; /* a helper's thread, 0 until it runs */
    int ended; /* a helper's thread has left its loop */
    int group; /* a helper's: its index in Shared.groups */
} Hand;

typedef struct {
    int receiving; /* of its helpers, how many wait in the kernel's receive (or are about to) */
    pthread_cond_t turn; /* where the others wait for their turn to */
} Group;

/* What a receiver's threads share: the Python thread's and its helpers'. Freed by the last
 * of its references (the Receiver, and each helper thread, which may outlive it: see
 * helper_main). Table, readers and grants are the Receiver's references, lent: a helper
 * touches them only while it holds a request, and a Receiver that goes while a helper
 * given up on still holds one (the kernel holds it) leaves them to it (receiver_dealloc). */
typedef struct {
    pthread_mutex_t lock;
    int refs;
    int listener; /* the loop's: a helper uses it only while it runs and is not given up on,
                   * and the loop closes it only once its serving has stopped */
    uint32_t arch;
    int nr_open; /* -1 where the architecture has none */
    int nr_openat;
    int nr_execve; /* -1: every exec goes to Python */
    StaticTable *table; /* NULL: no open is judged static here */
    Readers *readers;
    Grants *grants; /* NULL: no open is performed here */
    Queue *queue; /* NULL: no helpers */
    Hand hands[1 + HELPERS_MAX]; /* 0: the Python thread's */
    int helpers; /* started (each with hands[i], 1 <= i <= helpers) */
    Group groups[GROUPS_MAX];
    int stopping; /* helpers act no more: what they receive is queued, and they end */
    int abandoned;
    int err; /* a helper's failed answer (an errno), for Python to raise */
    pthread_cond_t idle; /* a helper let go of its request while stopping, or abandon() */
    unsigned long long answered;
} Shared;

typedef struct {
    PyObject_HEAD
    Shared *s;
    PyObject *handoff;
} Receiver;

static void shared_release(Shared *s) {
    pthread_mutex_lock(&s->lock);
    int last = --s->refs == 0;
    pthread_mutex_unlock(&s->lock);
    if (last) {
        if (s->queue != NULL) queue_release(s->queue);
        pthread_cond_destroy(&s->idle);
        for (int g = 0; g < GROUPS_MAX; g++) pthread_cond_destroy(&s->groups[g].turn);
        pthread_mutex_destroy(&s->lock);
        free(s);
    }
}

static int receiver_init(Receiver *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"listener", "arch", "nr_open", "nr_openat", "table", "readers",
                             "grants", "nr_execve", "handoff", NULL};
    int listener, nr_open, nr_openat, nr_execve = -1;
    unsigned long arch;
    PyObject *table, *readers, *grants = Py_None, *handoff = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "ikiiOO!|OiO", kwlist, &listener, &arch,
                                     &nr_open, &nr_openat, &table, &ReadersType, &readers,
                                     &grants, &nr_execve, &handoff))
        return -1;
    if (table != Py_None && !PyObject_TypeCheck(table, &StaticTableType)) {
        PyErr_SetString(PyExc_TypeError, "table: a StaticTable or None");
        return -1;
    }
    if (grants != Py_None && !PyObject_TypeCheck(grants, &GrantsType)) {
        PyErr_SetString(PyExc_TypeError, "grants: a Grants or None");
        return -1;
    }
    if (handoff != Py_None && !PyObject_TypeCheck(handoff, &HandoffType)) {
        PyErr_SetString(PyExc_TypeError, "handoff: a Handoff or None");
        return -1;
    }
    if (self->s != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Receiver: initialised once");
        return -1;
    }
    Shared *s = calloc(1, sizeof *s);
    if (s == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    s->listener = listener;
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->idle, NULL);
    for (int g = 0; g < GROUPS_MAX; g++) pthread_cond_init(&s->groups[g].turn, NULL);
    s->refs = 1;
    s->arch = (uint32_t)arch;
    s->nr_open = nr_open;
    s->nr_openat = nr_openat;
    s->nr_execve = nr_execve;
    s->table = table == Py_None ? NULL : (StaticTable *)Py_NewRef(table);
    s->readers = (Readers *)Py_NewRef(readers);
    s->grants = grants == Py_None ? NULL : (Grants *)Py_NewRef(grants);
    if (handoff != Py_None) {
        s->queue = queue_ref(((Handoff *)handoff)->queue);
        self->handoff = Py_NewRef(handoff);
    }
    self->s = s;
    return 0;
}

/* Whether a helper holds a request (it may be using table, readers and grants). Called with
 * the lock held. */
static int helper_holds(const Shared *s, int given_up_too) {
    for (int i = 1; i <= s->helpers; i++) {
        const Hand *h = &s->hands[i];
        if (!h->ended && h->since != 0 && (given_up_too || !h->given_up)) return 1;
    }
    return 0;
}

/* Sent to a helper waiting in the kernel's receive, to end that wait (EINTR): it takes it only
 * there, never while it injects a descriptor (see Listener.addfd). */
#define WAKE_SIGNAL (SIGRTMIN + 6)

static void on_wake_signal(int signo) {
    (void)signo; /* only to interrupt the receive */
}

/* Ends the wait of each helper still running, in the kernel or for its turn (called with
 * the lock held): a wait entered just after is ended by the next call (see stop_and_wait). */
static void wake_helpers(Shared *s) {
    for (int i = 1; i <= s->helpers; i++) {
        Hand *h = &s->hands[i];
        if (!h->ended && h->tid != 0) syscall(SYS_tgkill, getpid(), h->tid, WAKE_SIGNAL);
    }
    for (int g = 0; g < GROUPS_MAX; g++) pthread_cond_broadcast(&s->groups[g].turn);
}

/* The helper of `h` is about to wait on something other than the kernel's receive: another
 * of its group receives meanwhile (see GROUPS_MAX). Not the Python thread's (no group). */
static void lend_turn(Shared *s, Hand *h) {
    if (h == &s->hands[0]) return;
    Group *g = &s->groups[h->group];
    pthread_mutex_lock(&s->lock);
    if (g->receiving == 0) pthread_cond_signal(&g->turn);
    pthread_mutex_unlock(&s->lock);
}

static void receiver_dealloc(Receiver *self) {
    Shared *s = self->s;
    if (s != NULL) {
        pthread_mutex_lock(&s->lock);
        s->stopping = 1; /* stop_helpers was called, bar an error: they end */
        wake_helpers(s);
        int holding = helper_holds(s, 1);
        pthread_mutex_unlock(&s->lock);
        if (!holding) { /* else a helper held by the kernel may use them when let go */
            Py_XDECREF(s->table);
            Py_XDECREF(s->grants);
            Py_XDECREF(s->readers);
        }
        shared_release(s);
    }
    Py_XDECREF(self->handoff);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* The NUL-terminated string at addr, page by page (a path may end just before an unmapped
 * page); its length, or -1. */
static ssize_t read_string(int mem, uint64_t addr, char *out, size_t size) {
    size_t got = 0;
    while (got < size) {
        size_t chunk = PAGE - ((addr + got) % PAGE);
        if (chunk > size - got) chunk = size - got;
        ssize_t n = pread(mem, out + got, chunk, (off_t)(addr + got));
        if (n <= 0) return -1;
        char *nul = memchr(out + got, 0, (size_t)n);
        if (nul != NULL) return nul - out;
        got += (size_t)n;
    }
    return -1;
}

/* Whether the thread of `h` was given up on. */
static int given_up(Shared *s, Hand *h) {
    pthread_mutex_lock(&s->lock);
    int gone = h->given_up;
    pthread_mutex_unlock(&s->lock);
    return gone;
}

/* Whether the thread was given up on; if not, it answers the request in hand from now on (a
 * watch giving up on it then leaves that request to it, neither answering it nor queueing
 * it again: one answer, whoever gives it). */
static int begin_answer(Shared *s, Hand *h) {
    pthread_mutex_lock(&s->lock);
    int gone = h->given_up;
    if (!gone) h->sending = 1;
    pthread_mutex_unlock(&s->lock);
    return gone;
}

/* Marks the request in hand done; whether the thread was given up on meanwhile. */
static int finish(Shared *s, Hand *h) {
    pthread_mutex_lock(&s->lock);
    h->since = 0;
    h->sending = 0;
    int gone = h->given_up;
    if (s->stopping) pthread_cond_broadcast(&s->idle);
    pthread_mutex_unlock(&s->lock);
    return gone;
}

/* Answers with `resp` (retried on EINTR); 0, or the errno (ENOENT, the caller gone, is 0). */
static int send_response(Shared *s, struct seccomp_notif_resp *resp) {
    while (ioctl(s->listener, SECCOMP_IOCTL_NOTIF_SEND, resp) < 0) {
        if (errno == EINTR) continue;
        return errno == ENOENT ? 0 : errno;
    }
    return 0;
}

/* Hands the opened `fd` (closed here) to the program as its open's result. 0, or the errno
 * of the answer that failed. */
static int send_fd(Shared *s, struct seccomp_notif *n, int fd, uint64_t flags) {
    struct seccomp_notif_addfd addfd = {
        .id = n->id,
        .flags = SECCOMP_ADDFD_FLAG_SEND,
        .srcfd = (uint32_t)fd,
        .newfd = 0,
        .newfd_flags = (flags & O_CLOEXEC) ? O_CLOEXEC : 0,
    };
    int err = 0;
    while (ioctl(s->listener, SECCOMP_IOCTL_NOTIF_ADDFD, &addfd) < 0) {
        if (errno == EINTR) continue;
        err = errno;
        break;
    }
    close(fd);
    if (err == ENOENT || err == ESRCH) return 0; /* the caller is gone */
    if (err) {
        /* Not answered (its descriptor table is full, say): it is told why. */
        struct seccomp_notif_resp resp = {.id = n->id, .val = -1, .error = -err, .flags = 0};
        return send_response(s, &resp);
    }
    return 0;
}

/* The request in hand, for the stall watch (a read of its memory, or the opener, can wait
 * on the kernel). A helper holds it from its receipt (see helper_main). */
static void hold(Shared *s, Hand *h, struct seccomp_notif *n) {
    double now = seconds(CLOCK_MONOTONIC);
    pthread_mutex_lock(&s->lock);
    h->held = *n;
    if (h->since == 0) h->since = now;
    pthread_mutex_unlock(&s->lock);
}

/* The request in hand is Python's: 0, or -1 when the thread was given up on (the watch has
 * it). Still held: the calling thread's until Python takes it over (see receiver_taken), a
 * helper's until it is queued (see helper_main), so that a watch giving up on the thread
 * finds it held or queued, never neither. */
static int to_python(Shared *s, Hand *h) {
    return given_up(s, h) ? -1 : 0;
}

/* The calling thread received `n` (from the kernel, or from the queue: `handed`, for Python,
 * untouched): held from now on, as a helper holds what it receives. 0; or -1 when the thread
 * was given up on already (the watch did not see it), and `n` is queued again, at the front,
 * for the thread in its place. */
static int hold_received(Shared *s, const struct seccomp_notif *n, int handed) {
    Hand *h = &s->hands[0];
    double now = seconds(CLOCK_MONOTONIC);
    pthread_mutex_lock(&s->lock);
    int gone = h->given_up || s->abandoned;
    if (gone) {
        pthread_mutex_lock(&s->queue->lock);
        if (queue_put(s->queue, n, 1) < 0 && !s->err) s->err = ENOMEM;
        pthread_mutex_unlock(&s->queue->lock);
    } else {
        h->held = *n;
        h->since = now;
        h->handed = handed;
    }
    pthread_mutex_unlock(&s->lock);
    if (gone) queue_signal(s->queue);
    return gone ? -1 : 0;
}

static void count_answered(Shared *s) {
    __atomic_fetch_add(&s->answered, 1, __ATOMIC_RELAXED);
}

/* Answers CONTINUE unless given up on meanwhile; as answer_here. */
static int answer_continue(Shared *s, Hand *h, struct seccomp_notif *n) {
    if (begin_answer(s, h)) return -1;
    struct seccomp_notif_resp resp = {
        .id = n->id, .val = 0, .error = 0, .flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE};
    int failed = send_response(s, &resp);
    if (finish(s, h)) return -1;
    if (failed) {
        errno = failed;
        return -2;
    }
    count_answered(s);
    return 1;
}

/* Whether nothing is at the absolute `path` (the dentry cache says so: a walk that would
 * wait on a filesystem tells nothing), so that an exec of it fails on its own, with nothing
 * for Landlock to refuse and nothing to report (engine.denials finds no object either). A
 * path under /proc may name the caller, which we would look up as ourselves: not judged. */
static int nothing_at(const char *path) {
    if (strncmp(path, "/proc/", 6) == 0 || strcmp(path, "/proc") == 0) return 0;
    struct open_how how = {
        .flags = O_PATH | O_CLOEXEC,
        .resolve = RESOLVE_NO_MAGICLINKS | RESOLVE_CACHED,
    };
    int fd = (int)syscall(SYS_openat2, AT_FDCWD, path, &how, sizeof how);
    if (fd >= 0) {
        close(fd);
        return 0;
    }
    return errno == ENOENT || errno == ENOTDIR;
}

/* An exec (execve) by a thread-group leader: the static layer judges it in any case
 * (CONTINUE); answered here when there is nothing to report of it, as engine.reports finds:
 * that layer alone allows the absolute path it names, or nothing is there (a search along
 * PATH). Whatever is kept for the thread is dropped first (its address space and its
 * credentials are about to be replaced), and Python is told. As answer_here. */
static int answer_exec(Shared *s, Hand *h, struct seccomp_notif *n) {
    if (s->table == NULL || !readers_hear(s->readers, (pid_t)n->pid)) return 0;
    /* Only its group's leader keeps its id through an exec: another thread takes the leader's
     * (de_thread), and Python drops what is kept for both (engine.contexts.exec_begins). A
     * pidfd of a whole process opens only for its leader. */
    int leader = (int)syscall(SYS_pidfd_open, (pid_t)n->pid, 0);
    if (leader < 0) return 0;
    close(leader);
    hold(s, h, n);
    int ours;
    int mem = readers_reader(s->readers, (pid_t)n->pid, NULL, &ours, 0);
    if (given_up(s, h)) { /* held by the kernel in the opener, and answered by the watch */
        if (mem >= 0) close(mem);
        return -1;
    }
    readers_exec(s->readers, (pid_t)n->pid);
    if (mem < 0) return to_python(s, h);
    char path[PATH_MAX];
    ssize_t len = read_string(mem, n->data.args[0], path, sizeof path);
    close(mem);
    if (given_up(s, h)) return -1; /* the read was held by the kernel: act no more */
    if (len <= 0 || path[0] != '/' ||
        (!table_allows(s->table, path, (size_t)len, EXEC_KEY) && !nothing_at(path)))
        return to_python(s, h); /* Python reads it again, and reports it */
    return answer_continue(s, h, n);
}

/* 1: answered here; 0: Python's; -1: given up on (answer nothing more); -2: errno set. */
static int answer_here(Shared *s, Hand *h, struct seccomp_notif *n) {
    const StaticTable *t = s->table;
    if ((t == NULL && s->grants == NULL) || n->data.arch != s->arch) return 0;
    if ((int)n->data.nr == s->nr_execve) return answer_exec(s, h, n);
    uint64_t addr, flags;
    if ((int)n->data.nr == s->nr_openat) {
        addr = n->data.args[1];
        flags = n->data.args[2];
    } else if (s->nr_open >= 0 && (int)n->data.nr == s->nr_open) {
        addr = n->data.args[0];
        flags = n->data.args[1];
    } else {
        return 0;
    }
    if (flags & O_CREAT) return 0; /* a creation is performed by Python, never CONTINUE */
    if (!readers_hear(s->readers, (pid_t)n->pid)) return 0;
    /* Relative to its cwd (open, or openat with AT_FDCWD): judged by where it leads. */
    int from_cwd = (int)n->data.nr != s->nr_openat || (int)n->data.args[0] == AT_FDCWD;
    int cwd = -1, ours = 0;
    hold(s, h, n);
    int mem = readers_reader(s->readers, (pid_t)n->pid, from_cwd ? &cwd : NULL, &ours, 1);
    if (mem < 0) return to_python(s, h);
    char path[PATH_MAX];
    ssize_t len = read_string(mem, addr, path, sizeof path);
    close(mem);
    if (given_up(s, h)) { /* the read was held by the kernel: act no more */
        if (cwd >= 0) close(cwd);
        return -1;
    }
    if (len < 0) {
        if (cwd >= 0) close(cwd);
        readers_let_go(s->readers, (pid_t)n->pid); /* its address space is gone */
        return to_python(s, h);
    }
    int absolute = len > 0 && path[0] == '/';
    int allowed = 0;
    if (t != NULL) {
        if (absolute)
            allowed = table_allows(t, path, (size_t)len, flag_key(flags));
        else
            allowed = cwd >= 0 && table_allows_at(t, cwd, path, flags);
    }
    int fd = -1;
    if (!allowed) {
        /* Performed here only for a thread acting as we do, in _open_checked's shape: an
         * absolute path, or one relative to the cwd Python lent (which it would open it in);
         * and only once the request is known to be still waiting, so the path read was its. */
        uint64_t id = n->id;
        if (s->grants == NULL || !ours ||
            ioctl(s->listener, SECCOMP_IOCTL_NOTIF_ID_VALID, &id) < 0) {
            if (cwd >= 0) close(cwd);
            return to_python(s, h);
        }
        lend_turn(s, h); /* our open may wait, and the injection waits for the program */
        fd = grant(s->grants, cwd, path, (size_t)len, flags);
        if (fd < 0) {
            if (cwd >= 0) close(cwd);
            return to_python(s, h);
        }
    }
    if (begin_answer(s, h)) { /* answered by the watch: act no more */
        if (fd >= 0) close(fd); /* an open without creation or truncation changed nothing */
        if (cwd >= 0) close(cwd);
        return -1;
    }
    int failed;
    if (fd >= 0) {
        failed = send_fd(s, n, fd, flags);
        grants_note(s->grants, absolute ? -1 : cwd, path);
    } else {
        struct seccomp_notif_resp resp = {
            .id = n->id, .val = 0, .error = 0, .flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE};
        failed = send_response(s, &resp);
    }
    if (cwd >= 0) close(cwd);
    if (finish(s, h)) return -1;
    if (failed) {
        errno = failed;
        return -2;
    }
    count_answered(s);
    return 1;
}

/* What receive() found. */
enum { GOT = 0, AGAIN = 1, STOPPED = 2, HUNG_UP = 3, TIMED_OUT = 4, WOKEN = 5, FAILED = 6 };

/* Waits (up to timeout_ms, -1 for ever) for a request on the listener, or for `wake` to be
 * readable, and receives it into `n`. errno set on FAILED. */
static int receive(Shared *s, int wake, int timeout, struct seccomp_notif *n) {
    struct pollfd fds[2] = {{s->listener, POLLIN, 0}, {wake, POLLIN, 0}};
    int ready = poll(fds, 2, timeout);
    if (ready < 0) return errno == EINTR ? AGAIN : FAILED;
    if (ready == 0) return TIMED_OUT;
    if (fds[1].revents) return WOKEN;
    if (!(fds[0].revents & POLLIN)) return HUNG_UP; /* POLLHUP without input: all gone */
    memset(n, 0, sizeof *n);
    if (ioctl(s->listener, SECCOMP_IOCTL_NOTIF_RECV, n) < 0) {
        if (errno == EINTR || errno == ENOENT) return AGAIN; /* gone between poll and recv */
        return FAILED;
    }
    return GOT;
}

/* Our handler for WAKE_SIGNAL, installed once (without SA_RESTART): 0, or -1 when another
 * handler has it (then no helper is started). */
static int wake_signal_ours(void) {
    static pthread_mutex_t once = PTHREAD_MUTEX_INITIALIZER;
    static int installed;
    pthread_mutex_lock(&once);
    if (!installed) {
        struct sigaction old;
        if (sigaction(WAKE_SIGNAL, NULL, &old) == 0 && old.sa_handler == SIG_DFL &&
            !(old.sa_flags & SA_SIGINFO)) {
            struct sigaction sa;
            memset(&sa, 0, sizeof sa);
            sa.sa_handler = on_wake_signal;
            sigfillset(&sa.sa_mask);
            installed = sigaction(WAKE_SIGNAL, &sa, NULL) == 0;
        }
    }
    int ours = installed;
    pthread_mutex_unlock(&once);
    return ours ? 0 : -1;
}

/* Waits in the kernel for a request and receives it into `n` (no poll: each waiting helper
 * is woken by a trap, and one receives it), taking WAKE_SIGNAL meanwhile only. errno set on
 * FAILED. */
static int receive_blocking(Shared *s, struct seccomp_notif *n) {
    sigset_t wake;
    sigemptyset(&wake);
    sigaddset(&wake, WAKE_SIGNAL);
    memset(n, 0, sizeof *n);
    pthread_sigmask(SIG_UNBLOCK, &wake, NULL);
    int got = ioctl(s->listener, SECCOMP_IOCTL_NOTIF_RECV, n);
    int err = errno;
    pthread_sigmask(SIG_BLOCK, &wake, NULL);
    errno = err;
    if (got == 0) return GOT;
    if (errno == EINTR) return AGAIN;
    if (errno != ENOENT) return FAILED;
    /* Taken back (its caller was interrupted), or every supervisee is gone. */
    struct pollfd p = {s->listener, POLLIN, 0};
    if (poll(&p, 1, 0) == 1 && (p.revents & POLLHUP) && !(p.revents & POLLIN)) return HUNG_UP;
    return AGAIN;
}

/* A helper thread's loop. It waits in the kernel's receive when its turn has come (see
 * GROUPS_MAX), and answers what it receives there or queues it for Python. Told to stop (or
 * given up on), a helper acts on nothing more: WAKE_SIGNAL ends its wait, and a request it
 * received meanwhile is queued for Python, untouched. It ends too when every supervisee is
 * gone. */
typedef struct {
    Shared *s;
    Hand *h;
} HelperArg;

static void *helper_main(void *arg) {
    Shared *s = ((HelperArg *)arg)->s;
    Hand *h = ((HelperArg *)arg)->h;
    free(arg);
    pthread_mutex_lock(&s->lock);
    h->tid = (pid_t)syscall(SYS_gettid);
    pthread_mutex_unlock(&s->lock);
    Group *g = &s->groups[h->group];
    struct seccomp_notif n;
    for (;;) {
        pthread_mutex_lock(&s->lock);
        int stop;
        while (!(stop = s->stopping || s->abandoned || h->given_up) && g->receiving > 0)
            pthread_cond_wait(&g->turn, &s->lock);
        if (!stop) g->receiving++;
        pthread_mutex_unlock(&s->lock);
        if (stop) break;
        int got = receive_blocking(s, &n);
        int err = errno;
        pthread_mutex_lock(&s->lock);
        g->receiving--;
        pthread_mutex_unlock(&s->lock);
        if (got == AGAIN) continue;
        if (got == HUNG_UP || got == FAILED) {
            pthread_mutex_lock(&s->queue->lock);
            s->queue->hung_up |= got == HUNG_UP;
            pthread_mutex_unlock(&s->queue->lock);
            if (got == FAILED) {
                pthread_mutex_lock(&s->lock);
                if (!s->err && !s->stopping) s->err = err;
                pthread_mutex_unlock(&s->lock);
            }
            queue_signal(s->queue);
            break;
        }
        /* Held from now on: a watch that gives up on this thread takes it. Received after
         * the stop (or the watch): queued for Python, untouched. */
        pthread_mutex_lock(&s->lock);
        int late = h->given_up || s->stopping || s->abandoned;
        if (late) {
            pthread_mutex_lock(&s->queue->lock);
            if (queue_put(s->queue, &n, 0) < 0 && !s->err) s->err = ENOMEM;
            pthread_mutex_unlock(&s->queue->lock);
        } else {
            h->held = n;
            h->since = seconds(CLOCK_MONOTONIC);
        }
        pthread_mutex_unlock(&s->lock);
        if (late) {
            queue_signal(s->queue);
            break;
        }
        int answered = answer_here(s, h, &n);
        if (answered == 1) continue;
        if (answered == -1) break; /* given up: the watch answered it, or queued it again */
        if (answered == -2) {
            pthread_mutex_lock(&s->lock);
            if (!s->err) s->err = errno;
            pthread_mutex_unlock(&s->lock);
            queue_signal(s->queue);
            break;
        }
        /* Python's. Queued under our lock, so that a watch giving up on this thread sees it
         * either held (and answers it) or queued, never neither. */
        pthread_mutex_lock(&s->lock);
        int gone = h->given_up;
        int lost = 0;
        if (!gone) {
            h->since = 0;
            pthread_mutex_lock(&s->queue->lock);
            lost = queue_put(s->queue, &n, 0) < 0;
            pthread_mutex_unlock(&s->queue->lock);
            if (s->stopping) pthread_cond_broadcast(&s->idle);
        }
        if (lost && !s->err) s->err = ENOMEM;
        pthread_mutex_unlock(&s->lock);
        if (gone) break;
        queue_signal(s->queue);
        if (lost) break;
    }
    pthread_mutex_lock(&s->lock);
    h->ended = 1;
    pthread_cond_broadcast(&s->idle);
    pthread_cond_signal(&g->turn); /* the other of its group receives in its place */
    pthread_mutex_unlock(&s->lock);
    shared_release(s);
    return NULL;
}

/* The helpers act no more; returns once each has ended, bar those given up on (the kernel may
 * hold them for ever). Called with the lock held. */
static void stop_and_wait(Shared *s) {
    s->stopping = 1;
    for (;;) {
        int live = 0;
        for (int i = 1; i <= s->helpers; i++) live += !s->hands[i].ended && !s->hands[i].given_up;
        if (live == 0) break;
        wake_helpers(s);
        /* Again after a moment: a signal taken just before a helper's receive began ends
         * nothing. */
        struct timespec until = realtime_after_ms(2);
        pthread_cond_timedwait(&s->idle, &s->lock, &until);
    }
}

/* start_helpers(groups) -> int: start the helper threads, PER_GROUP in each of up to
 * `groups` groups (no more than GROUPS_MAX, nor than the CPUs this process may use), which
 * receive and answer from now on; Python's requests then come through the Handoff. Call it
 * from the serving thread, once, when its turn has come: a helper inherits that thread's
 * Landlock domain (all signals are blocked in it, bar WAKE_SIGNAL in its receive; it runs on
 * its group's CPUs, see GROUPS_MAX). Returns how many threads started (0: the calling thread
 * receives itself, as without helpers). */
static PyObject *receiver_start_helpers(Receiver *self, PyObject *args) {
    int groups;
    if (!PyArg_ParseTuple(args, "i", &groups)) return NULL;
    Shared *s = self->s;
    if (s->queue == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "start_helpers: the receiver has no handoff");
        return NULL;
    }
    if (s->helpers != 0) {
        PyErr_SetString(PyExc_RuntimeError, "start_helpers: started once");
        return NULL;
    }
    cpu_set_t cpus;
    int ncpus = sched_getaffinity(getpid(), sizeof cpus, &cpus) == 0 ? CPU_COUNT(&cpus) : 0;
    if (groups > GROUPS_MAX) groups = GROUPS_MAX;
    if (ncpus > 0 && groups > ncpus) groups = ncpus;
    if (groups <= 0 || wake_signal_ours() < 0) return PyLong_FromLong(0);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, 256 * 1024); /* two paths and a notification */
    /* Fewer helpers (or none) only serve slower. */
    int started = 0;
    for (int i = 1; i <= groups * PER_GROUP; i++) {
        int group = (i - 1) / PER_GROUP;
        if (ncpus > 0) { /* the group's CPUs: every `groups`th this process may use */
            cpu_set_t mine;
            CPU_ZERO(&mine);
            for (int cpu = 0, k = 0; cpu < CPU_SETSIZE; cpu++)
                if (CPU_ISSET(cpu, &cpus) && k++ % groups == group) CPU_SET(cpu, &mine);
            pthread_attr_setaffinity_np(&attr, sizeof mine, &mine); /* placement: speed only */
        }
        HelperArg *arg = malloc(sizeof *arg);
        if (arg == NULL) break;
        arg->s = s;
        arg->h = &s->hands[i];
        arg->h->group = group;
        pthread_mutex_lock(&s->lock);
        s->refs++;
        s->helpers = i;
        pthread_mutex_unlock(&s->lock);
        if (create_deaf_thread(&attr, helper_main, arg) != 0) {
            free(arg);
            pthread_mutex_lock(&s->lock);
            s->refs--;
            s->helpers = i - 1;
            pthread_mutex_unlock(&s->lock);
            break;
        }
        started++;
    }
    pthread_attr_destroy(&attr);
    return PyLong_FromLong(started);
}

/* stop_helpers(): the helpers act no more; returns once each has ended (a request in hand
 * answered, or queued for Python), bar those given up on. */
static PyObject *receiver_stop_helpers(Receiver *self, PyObject *Py_UNUSED(ignored)) {
    Shared *s = self->s;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&s->lock);
    stop_and_wait(s);
    pthread_mutex_unlock(&s->lock);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

/* next(wake_fd, timeout_ms) -> bytes | int: the next request for Python (a struct
 * seccomp_notif), or R_TIMEOUT, R_WOKEN, R_HUNG_UP, R_ABANDONED. With helpers, it waits on
 * their queue; without, the calling thread receives and answers itself. */
static PyObject *receiver_next(Receiver *self, PyObject *args) {
    int wake, timeout;
    if (!PyArg_ParseTuple(args, "ii", &wake, &timeout)) return NULL;
    Shared *s = self->s;
    Hand *h = &s->hands[0];
    struct seccomp_notif n;
    int result = R_TIMEOUT, err = 0, have = 0;
    Py_BEGIN_ALLOW_THREADS
    for (;;) {
        pthread_mutex_lock(&s->lock);
        int abandoned = h->given_up || s->abandoned;
        int helpers = s->helpers;
        err = s->err;
        pthread_mutex_unlock(&s->lock);
        if (abandoned) {
            result = R_ABANDONED;
            break;
        }
        if (err) break;
        if (helpers) {
            Queue *q = s->queue;
            /* Woken first: a program that keeps the queue full must not keep this thread
             * from a commit's hand-over or a stop (the queue is the next thread's too). */
            struct pollfd woken = {wake, POLLIN, 0};
            if (poll(&woken, 1, 0) == 1) {
                result = R_WOKEN;
                break;
            }
            if (queue_take(q, &n)) {
                if (hold_received(s, &n, 1) < 0) {
                    result = R_ABANDONED;
                    break;
                }
                have = 1;
                break;
            }
            pthread_mutex_lock(&q->lock);
            int hung_up = q->hung_up && q->count == 0;
            pthread_mutex_unlock(&q->lock);
            if (hung_up) {
                result = R_HUNG_UP;
                break;
            }
            struct pollfd fds[2] = {{q->efd, POLLIN, 0}, {wake, POLLIN, 0}};
            int ready = poll(fds, 2, timeout);
            if (ready < 0) {
                if (errno == EINTR) continue;
                err = errno;
                break;
            }
            if (ready == 0) {
                result = R_TIMEOUT;
                break;
            }
            if (fds[0].revents) {
                uint64_t count;
                while (read(q->efd, &count, sizeof count) < 0 && errno == EINTR) {
                }
                continue; /* looked at again: taken, or another thread took it */
            }
            result = R_WOKEN;
            break;
        }
        int got = receive(s, wake, timeout, &n);
        if (got == AGAIN) continue;
        if (got == FAILED) {
            err = errno;
            break;
        }
        if (got != GOT) {
            result = got == TIMED_OUT ? R_TIMEOUT : got == WOKEN ? R_WOKEN : R_HUNG_UP;
            break;
        }
        if (s->queue != NULL && hold_received(s, &n, 0) < 0) {
            result = R_ABANDONED;
            break;
        }
        int answered = answer_here(s, h, &n);
        if (answered == 1) continue;
        if (answered == -1) {
            result = R_ABANDONED;
            break;
        }
        if (answered == -2) {
            err = errno;
            break;
        }
        have = 1;
        break;
    }
    if (have) {
        pthread_mutex_lock(&s->lock);
        h->handed = 1;
        pthread_mutex_unlock(&s->lock);
    }
    Py_END_ALLOW_THREADS
    if (err) {
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    if (have) return PyBytes_FromStringAndSize((const char *)&n, sizeof n);
    return PyLong_FromLong(result);
}

/* taken() -> bool: Python takes over the request next() returned (it answers it from now on,
 * and its own watch covers it): True; False when the thread was given up on meanwhile (the
 * watch queued that request again, or answered it): then Python must not act on it. Called
 * under the lock the watch gives up under, so that one of the two has it, never neither. */
static PyObject *receiver_taken(Receiver *self, PyObject *Py_UNUSED(ignored)) {
    Shared *s = self->s;
    Hand *h = &s->hands[0];
    pthread_mutex_lock(&s->lock);
    int gone = h->given_up;
    if (!gone) {
        h->since = 0;
        h->handed = 0;
    }
    pthread_mutex_unlock(&s->lock);
    return PyBool_FromLong(!gone);
}

/* Since when the oldest request held by one of the receiver's threads is (0.0 for none). */
static PyObject *receiver_held_since(Receiver *self, PyObject *Py_UNUSED(ignored)) {
    Shared *s = self->s;
    double since = 0;
    pthread_mutex_lock(&s->lock);
    for (int i = 0; i <= s->helpers; i++) {
        Hand *h = &s->hands[i];
        if (!h->given_up && h->since != 0 && (since == 0 || h->since < since)) since = h->since;
    }
    pthread_mutex_unlock(&s->lock);
    return PyFloat_FromDouble(since);
}

/* abandon(stalled_seconds) -> [bytes]: the receiver's threads act no more. Returns the requests
 * they hold here that have been held longer than `stalled_seconds`, to be answered without
 * them; a request held for less (a helper's, busy when another stalled) is queued again for
 * Python, at the front, as if it had just been received. */
static PyObject *receiver_abandon(Receiver *self, PyObject *args) {
    double stalled = 0;
    if (!PyArg_ParseTuple(args, "|d", &stalled)) return NULL;
    Shared *s = self->s;
    struct seccomp_notif held[1 + HELPERS_MAX];
    int nheld = 0, lost = 0;
    double now = seconds(CLOCK_MONOTONIC);
    pthread_mutex_lock(&s->lock);
    s->abandoned = 1;
    for (int i = 0; i <= s->helpers; i++) {
        Hand *h = &s->hands[i];
        int holding = h->since != 0 && !h->given_up && !h->sending;
        h->given_up = 1;
        if (!holding) continue; /* idle, or answering it (see begin_answer) */
        /* The Python thread's is answered, bar one it has not taken over yet (untouched) */
        int untouched = i == 0 ? h->handed : now - h->since <= stalled;
        if (s->queue == NULL || !untouched) {
            held[nheld++] = h->held;
        } else {
            pthread_mutex_lock(&s->queue->lock);
            if (queue_put(s->queue, &h->held, 1) < 0) lost = 1;
            pthread_mutex_unlock(&s->queue->lock);
            if (lost) held[nheld++] = h->held; /* answered without it, then */
        }
    }
    pthread_cond_broadcast(&s->idle); /* stop_helpers waits for these no more */
    wake_helpers(s); /* the idle ones end (one that misses it queues what it receives) */
    pthread_mutex_unlock(&s->lock);
    if (s->queue != NULL) queue_signal(s->queue);
    PyObject *out = PyList_New(0);
    for (int i = 0; out != NULL && i < nheld; i++) {
        PyObject *item = PyBytes_FromStringAndSize((const char *)&held[i], sizeof held[i]);
        if (item == NULL || PyList_Append(out, item) < 0) Py_CLEAR(out);
        Py_XDECREF(item);
    }
    return out;
}

/* keep_receiving(): in each group none of whose helpers waits in the kernel's receive (one
 * is held up where it lent no turn: reading a path from memory the kernel holds, say), another
 * takes its turn, so that the group's CPUs are served meanwhile. For the stall watch. */
static PyObject *receiver_keep_receiving(Receiver *self, PyObject *Py_UNUSED(ignored)) {
    Shared *s = self->s;
    pthread_mutex_lock(&s->lock);
    for (int g = 0; g < GROUPS_MAX; g++)
        if (s->groups[g].receiving == 0) pthread_cond_signal(&s->groups[g].turn);
    pthread_mutex_unlock(&s->lock);
    Py_RETURN_NONE;
}

static PyObject *receiver_answered(Receiver *self, void *Py_UNUSED(closure)) {
    return PyLong_FromUnsignedLongLong(__atomic_load_n(&self->s->answered, __ATOMIC_RELAXED));
}

static PyObject *receiver_holding(Receiver *self, void *Py_UNUSED(closure)) {
    pthread_mutex_lock(&self->s->lock);
    int holding = helper_holds(self->s, 1);
    pthread_mutex_unlock(&self->s->lock);
    return PyBool_FromLong(holding);
}

static PyMethodDef receiver_methods[] = {
    {"next", (PyCFunction)receiver_next, METH_VARARGS,
     "next(wake_fd, timeout_ms): the next request for Python, or why none."},
    {"start_helpers", (PyCFunction)receiver_start_helpers, METH_VARARGS,
     "start_helpers(groups): start helper threads that receive; how many started"},
    {"stop_helpers", (PyCFunction)receiver_stop_helpers, METH_NOARGS,
     "the helpers act no more; returns once none holds a request, bar those given up on"},
    {"held_since", (PyCFunction)receiver_held_since, METH_NOARGS,
     "since when (time.monotonic) the oldest request held here is; 0.0 when none is"},
    {"abandon", (PyCFunction)receiver_abandon, METH_VARARGS,
     "abandon(stalled_seconds=0): give up on the threads; the stalled requests they hold"},
    {"taken", (PyCFunction)receiver_taken, METH_NOARGS,
     "Python takes over the request next() returned; False when given up on meanwhile"},
    {"keep_receiving", (PyCFunction)receiver_keep_receiving, METH_NOARGS,
     "in each group of helpers none of which receives, another takes its turn"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef receiver_getset[] = {
    {"answered", (getter)receiver_answered, NULL, "requests answered here", NULL},
    {"holding", (getter)receiver_holding, NULL,
     "whether a helper holds a request (one given up on: the kernel holds it)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject ReceiverType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "llsupervise.supervisor.engine._fastpath.Receiver",
    .tp_basicsize = sizeof(Receiver),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)receiver_init,
    .tp_dealloc = (destructor)receiver_dealloc,
    .tp_methods = receiver_methods,
    .tp_getset = receiver_getset,
};

/* ---- module ------------------------------------------------------------------------- */

static PyMethodDef module_methods[] = {
    {"open_checked", (PyCFunction)py_open_checked, METH_VARARGS,
     "open_checked(grants, dirfd, path, flags): the loop's granted open, or -1 (Python's)"},
    {"inline_mount", (PyCFunction)py_inline_mount, METH_VARARGS,
     "inline_mount(unique): the mount of that unique id does not block (perform.blocking)"},
    {"real_path", (PyCFunction)py_real_path, METH_VARARGS,
     "real_path(dirfd, path, flags): the canonical path of what the open leads to, or None"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_fastpath",
    "The serving threads' compiled hot path (see engine.fastpath).", -1, module_methods,
};

PyMODINIT_FUNC PyInit__fastpath(void) {
    if (PyType_Ready(&StaticTableType) < 0 || PyType_Ready(&ReadersType) < 0 ||
        PyType_Ready(&ReceiverType) < 0 || PyType_Ready(&GrantsType) < 0 ||
        PyType_Ready(&HandoffType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    if (PyModule_AddObjectRef(m, "StaticTable", (PyObject *)&StaticTableType) < 0 ||
        PyModule_AddObjectRef(m, "Readers", (PyObject *)&ReadersType) < 0 ||
        PyModule_AddObjectRef(m, "Receiver", (PyObject *)&ReceiverType) < 0 ||
        PyModule_AddObjectRef(m, "Grants", (PyObject *)&GrantsType) < 0 ||
        PyModule_AddObjectRef(m, "Handoff", (PyObject *)&HandoffType) < 0 ||
        PyModule_AddIntConstant(m, "TIMEOUT", R_TIMEOUT) < 0 ||
        PyModule_AddIntConstant(m, "WOKEN", R_WOKEN) < 0 ||
        PyModule_AddIntConstant(m, "HUNG_UP", R_HUNG_UP) < 0 ||
        PyModule_AddIntConstant(m, "ABANDONED", R_ABANDONED) < 0 ||
        PyModule_AddIntConstant(m, "EXEC_KEY", EXEC_KEY) < 0 ||
        PyModule_AddIntConstant(m, "GROUPS_MAX", GROUPS_MAX) < 0 ||
        PyModule_AddIntConstant(m, "PER_GROUP", PER_GROUP) < 0 ||
        PyModule_AddIntConstant(m, "NOTIF_SIZE", (long)sizeof(struct seccomp_notif)) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
