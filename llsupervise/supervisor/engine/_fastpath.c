/* The serving threads' hot path, compiled: receive trapped syscalls and answer, without the
 * interpreter, the opens the static layer alone allows (CONTINUE, which is safe whatever we
 * read: the kernel then judges the program's own open against the static layer).
 *
 * Every other request is handed back to Python (engine.loop) as the raw struct seccomp_notif.
 * The interpreter lock is released for the whole wait-receive-answer loop, so a serving thread
 * answers these while trio or another thread holds it, and two serving threads can answer at
 * once.
 *
 * Three objects:
 *   StaticTable: the static rules' directories, by canonical path, with their rights; the
 *                one implementation of the lexical static check (engine.fastpath uses it too).
 *   Readers:     per-thread /proc/TID/mem descriptors (dups of the ones Python opened with the
 *                supervisor's standing, which a restricted serving thread may not open), each
 *                with a pidfd of that thread, which tells when it has exited (its id may then
 *                name another task), and the threads whose context-changing call may still
 *                run (handed to Python).
 *   Receiver:    one serving thread's loop, and what it holds, for the stall watch.
 */
#define _GNU_SOURCE /* memmem */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <linux/openat2.h>
#include <stdio.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#ifndef PATH_MAX
#define PATH_MAX 4096
#endif
#define PAGE 4096
#define READER_SLOTS 1024
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
} Slot;

typedef struct {
    PyObject_HEAD
    pthread_mutex_t lock;
    Slot slots[READER_SLOTS];
    pid_t unsettled[UNSETTLED_MAX];
    int nunsettled;
    int overflow; /* more unsettled threads than kept: every request goes to Python */
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
}

static void readers_close_all(Readers *self) {
    pthread_mutex_lock(&self->lock);
    for (int i = 0; i < READER_SLOTS; i++) slot_clear(&self->slots[i]);
    pthread_mutex_unlock(&self->lock);
}

static void readers_dealloc(Readers *self) {
    readers_close_all(self);
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
    Slot *s = &self->slots[(unsigned)tid % READER_SLOTS];
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
    pthread_mutex_lock(&self->lock);
    Slot *s = &self->slots[(unsigned)tid % READER_SLOTS];
    if (s->tid == tid) slot_clear(s);
    pthread_mutex_unlock(&self->lock);
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
 * the slot may be replaced or closed meanwhile. What was kept for a thread that has exited
 * is let go of: the same id may now be another task's (Python opens that one's afresh). */
static int readers_take(Readers *self, pid_t tid, int *cwd) {
    int fd = -1;
    pthread_mutex_lock(&self->lock);
    Slot *s = &self->slots[(unsigned)tid % READER_SLOTS];
    if (s->tid == tid && s->pidfd >= 0 && exited(s->pidfd)) slot_clear(s);
    if (s->tid == tid && s->fd >= 0) {
        fd = fcntl(s->fd, F_DUPFD_CLOEXEC, 3);
        if (cwd != NULL) *cwd = s->cwd >= 0 ? fcntl(s->cwd, F_DUPFD_CLOEXEC, 3) : -1;
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
    Slot *s = &self->slots[(unsigned)tid % READER_SLOTS];
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

/* The reader `fd` (a dup) read nothing: the thread's address space is gone (exec, exit). */
static void readers_drop_stale(Readers *self, pid_t tid) {
    pthread_mutex_lock(&self->lock);
    Slot *s = &self->slots[(unsigned)tid % READER_SLOTS];
    if (s->tid == tid) slot_clear(s);
    pthread_mutex_unlock(&self->lock);
}

static int readers_unsettled(Readers *self, pid_t tid) {
    int found = 0;
    pthread_mutex_lock(&self->lock);
    if (self->overflow) {
        found = 1;
    } else {
        for (int i = 0; i < self->nunsettled; i++)
            if (self->unsettled[i] == tid) found = 1;
    }
    pthread_mutex_unlock(&self->lock);
    return found;
}

static PyObject *readers_unsettle(Readers *self, PyObject *args) {
    int tid;
    if (!PyArg_ParseTuple(args, "i", &tid)) return NULL;
    pthread_mutex_lock(&self->lock);
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

static PyObject *readers_py_close(Readers *self, PyObject *Py_UNUSED(ignored)) {
    readers_close_all(self);
    Py_RETURN_NONE;
}

static PyMethodDef readers_methods[] = {
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
    {"close", (PyCFunction)readers_py_close, METH_NOARGS, "close every reader"},
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

/* ---- Receiver ----------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    int listener;
    uint32_t arch;
    int nr_open; /* -1 where the architecture has none */
    int nr_openat;
    StaticTable *table; /* NULL: nothing is answered here */
    Readers *readers;
    pthread_mutex_t lock;
    /* What the thread holds (for the stall watch): since when (CLOCK_MONOTONIC, seconds,
     * as time.monotonic()), 0 while idle; and the request. */
    double since;
    struct seccomp_notif held;
    int abandoned;
    unsigned long long answered;
} Receiver;

static int receiver_init(Receiver *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"listener", "arch", "nr_open", "nr_openat", "table", "readers", NULL};
    int listener, nr_open, nr_openat;
    unsigned long arch;
    PyObject *table, *readers;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "ikiiOO!", kwlist, &listener, &arch, &nr_open,
                                     &nr_openat, &table, &ReadersType, &readers))
        return -1;
    if (table != Py_None && !PyObject_TypeCheck(table, &StaticTableType)) {
        PyErr_SetString(PyExc_TypeError, "table: a StaticTable or None");
        return -1;
    }
    self->listener = listener;
    self->arch = (uint32_t)arch;
    self->nr_open = nr_open;
    self->nr_openat = nr_openat;
    Py_XSETREF(self->table, table == Py_None ? NULL : (StaticTable *)Py_NewRef(table));
    Py_XSETREF(self->readers, (Readers *)Py_NewRef(readers));
    pthread_mutex_init(&self->lock, NULL);
    return 0;
}

static void receiver_dealloc(Receiver *self) {
    Py_XDECREF(self->table);
    Py_XDECREF(self->readers);
    pthread_mutex_destroy(&self->lock);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static double monotonic(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
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

/* Marks the request in hand done; whether the thread was given up on meanwhile. */
static int finish(Receiver *self) {
    pthread_mutex_lock(&self->lock);
    self->since = 0;
    int abandoned = self->abandoned;
    pthread_mutex_unlock(&self->lock);
    return abandoned;
}

/* 1: answered here; 0: Python's; -1: given up on (answer nothing more); -2: errno set. */
static int answer_static(Receiver *self, struct seccomp_notif *n) {
    const StaticTable *t = self->table;
    if (t == NULL || n->data.arch != self->arch) return 0;
    uint64_t addr, flags;
    if ((int)n->data.nr == self->nr_openat) {
        addr = n->data.args[1];
        flags = n->data.args[2];
    } else if (self->nr_open >= 0 && (int)n->data.nr == self->nr_open) {
        addr = n->data.args[0];
        flags = n->data.args[1];
    } else {
        return 0;
    }
    if (flags & O_CREAT) return 0; /* a creation is performed by Python, never CONTINUE */
    if (readers_unsettled(self->readers, (pid_t)n->pid)) return 0;
    /* Relative to its cwd (open, or openat with AT_FDCWD): judged by where it leads. */
    int from_cwd = (int)n->data.nr != self->nr_openat || (int)n->data.args[0] == AT_FDCWD;
    int cwd = -1;
    int mem = readers_take(self->readers, (pid_t)n->pid, from_cwd ? &cwd : NULL);
    if (mem < 0) return 0;
    pthread_mutex_lock(&self->lock);
    self->held = *n;
    self->since = monotonic();
    pthread_mutex_unlock(&self->lock);
    char path[PATH_MAX];
    ssize_t len = read_string(mem, addr, path, sizeof path);
    close(mem);
    if (len < 0) {
        if (cwd >= 0) close(cwd);
        readers_drop_stale(self->readers, (pid_t)n->pid);
        return finish(self) ? -1 : 0;
    }
    int allowed;
    if (len > 0 && path[0] == '/')
        allowed = table_allows(t, path, (size_t)len, flag_key(flags));
    else
        allowed = cwd >= 0 && table_allows_at(t, cwd, path, flags);
    if (cwd >= 0) close(cwd);
    if (!allowed) return finish(self) ? -1 : 0;
    pthread_mutex_lock(&self->lock);
    int abandoned = self->abandoned;
    pthread_mutex_unlock(&self->lock);
    if (abandoned) return -1; /* answered by the watch: act no more */
    struct seccomp_notif_resp resp = {
        .id = n->id, .val = 0, .error = 0, .flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE};
    int failed = 0;
    while (ioctl(self->listener, SECCOMP_IOCTL_NOTIF_SEND, &resp) < 0) {
        if (errno == EINTR) continue;
        if (errno != ENOENT) failed = errno; /* ENOENT: the caller is gone */
        break;
    }
    if (finish(self)) return -1;
    if (failed) {
        errno = failed;
        return -2;
    }
    self->answered++;
    return 1;
}

/* next(wake_fd, timeout_ms) -> bytes | int: the next request for Python (a struct
 * seccomp_notif), or R_TIMEOUT, R_WOKEN, R_HUNG_UP, R_ABANDONED. */
static PyObject *receiver_next(Receiver *self, PyObject *args) {
    int wake, timeout;
    if (!PyArg_ParseTuple(args, "ii", &wake, &timeout)) return NULL;
    struct seccomp_notif n;
    int result = R_TIMEOUT, err = 0, have = 0;
    Py_BEGIN_ALLOW_THREADS
    for (;;) {
        pthread_mutex_lock(&self->lock);
        int abandoned = self->abandoned;
        pthread_mutex_unlock(&self->lock);
        if (abandoned) {
            result = R_ABANDONED;
            break;
        }
        struct pollfd fds[2] = {{self->listener, POLLIN, 0}, {wake, POLLIN, 0}};
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
        if (fds[1].revents) {
            result = R_WOKEN;
            break;
        }
        if (!(fds[0].revents & POLLIN)) {
            result = R_HUNG_UP; /* POLLHUP without input: every supervisee is gone */
            break;
        }
        memset(&n, 0, sizeof n);
        if (ioctl(self->listener, SECCOMP_IOCTL_NOTIF_RECV, &n) < 0) {
            if (errno == EINTR || errno == ENOENT) continue; /* gone between poll and recv */
            err = errno;
            break;
        }
        int answered = answer_static(self, &n);
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
    Py_END_ALLOW_THREADS
    if (err) {
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    if (have) return PyBytes_FromStringAndSize((const char *)&n, sizeof n);
    return PyLong_FromLong(result);
}

static PyObject *receiver_held_since(Receiver *self, PyObject *Py_UNUSED(ignored)) {
    pthread_mutex_lock(&self->lock);
    double since = self->since;
    pthread_mutex_unlock(&self->lock);
    return PyFloat_FromDouble(since);
}

/* abandon() -> bytes | None: the thread acts no more; the request it holds, to be answered
 * without it (None when it holds none). */
static PyObject *receiver_abandon(Receiver *self, PyObject *Py_UNUSED(ignored)) {
    struct seccomp_notif held;
    pthread_mutex_lock(&self->lock);
    int holding = self->since != 0 && !self->abandoned;
    self->abandoned = 1;
    held = self->held;
    pthread_mutex_unlock(&self->lock);
    if (!holding) Py_RETURN_NONE;
    return PyBytes_FromStringAndSize((const char *)&held, sizeof held);
}

static PyObject *receiver_answered(Receiver *self, void *Py_UNUSED(closure)) {
    return PyLong_FromUnsignedLongLong(self->answered);
}

static PyMethodDef receiver_methods[] = {
    {"next", (PyCFunction)receiver_next, METH_VARARGS,
     "next(wake_fd, timeout_ms): the next request for Python, or why none."},
    {"held_since", (PyCFunction)receiver_held_since, METH_NOARGS,
     "since when (time.monotonic) the thread holds a request here; 0.0 when it holds none"},
    {"abandon", (PyCFunction)receiver_abandon, METH_NOARGS,
     "give up on the thread; the request it holds here, if any"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef receiver_getset[] = {
    {"answered", (getter)receiver_answered, NULL, "requests answered here", NULL},
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
        PyType_Ready(&ReceiverType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    if (PyModule_AddObjectRef(m, "StaticTable", (PyObject *)&StaticTableType) < 0 ||
        PyModule_AddObjectRef(m, "Readers", (PyObject *)&ReadersType) < 0 ||
        PyModule_AddObjectRef(m, "Receiver", (PyObject *)&ReceiverType) < 0 ||
        PyModule_AddIntConstant(m, "TIMEOUT", R_TIMEOUT) < 0 ||
        PyModule_AddIntConstant(m, "WOKEN", R_WOKEN) < 0 ||
        PyModule_AddIntConstant(m, "HUNG_UP", R_HUNG_UP) < 0 ||
        PyModule_AddIntConstant(m, "ABANDONED", R_ABANDONED) < 0 ||
        PyModule_AddIntConstant(m, "EXEC_KEY", EXEC_KEY) < 0 ||
        PyModule_AddIntConstant(m, "NOTIF_SIZE", (long)sizeof(struct seccomp_notif)) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
