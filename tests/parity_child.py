"""Child programs for the kernel-parity tests, and a way to run them in a plain Landlock domain.

Each program is standard library only (a supervised child cannot read this checkout) and is
written to the test tree's ``out/`` before it runs. It prints one line per attempt: a name and
what came of it (content read, ``ok``, or the errno's name); ``LEAK`` marks a secret byte read.
The same program runs once in a plain Landlock domain (``PLAIN``: the kernel's own answer) and
once supervised, with the same rights in the supervisor's layer; the lines must be the same.
"""

from __future__ import annotations

#: Restricts itself with a plain Landlock domain (argv[1], JSON: handled rights and rules),
#: then execs argv[2:]: the domain stays across exec, as it does for a supervised command.
PLAIN = r"""
import json, os, sys
from llsupervise.landlock import LandlockRuleset, set_no_new_privs
from llsupervise.rights import AccessFs
spec = json.loads(sys.argv[1])
with LandlockRuleset(AccessFs(spec["handled"])) as ruleset:
    for path, access in spec["rules"]:
        ruleset.add_path(path, AccessFs(access))
    set_no_new_privs()
    ruleset.restrict_self()
os.execv(sys.argv[2], sys.argv[2:])
"""

#: Helpers every program starts with. argv[1] is the secret's content.
COMMON = r"""
import ctypes, errno, os, sys, threading
SECRET = sys.argv[1].encode()
AT = 50  # the dirfd number the programs move between objects
libc = ctypes.CDLL(None, use_errno=True)

def report(name, fn):
    try:
        got = fn()
    except OSError as e:
        got = errno.errorcode.get(e.errno or 0, str(e.errno))
    if isinstance(got, bytes):
        got = "LEAK" if SECRET in got else (got.decode().strip() or "-")
    print(name, "ok" if got is None else got, flush=True)

def read(name, dirfd=AT):
    fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dirfd)
    try:
        return os.read(fd, 100)
    finally:
        os.close(fd)

def create(name, dirfd=AT):
    os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644,
                     dir_fd=dirfd))

def point(fd, inheritable=True):
    # fd number AT names what fd names (inherited across exec unless told otherwise)
    os.dup2(fd, AT, inheritable=inheritable)

def checked(ret):
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ret
"""

#: What fd 50 names changes between requests, in one thread and across threads that share
#: or stop sharing their descriptor table; more dirfds than the supervisor keeps; a kept
#: directory renamed, removed and made anew. Needs data/ granted read-write, secret/x and
#: secret/s0..s7/f holding the secret.
DIRFD_TRICKS = (
    COMMON
    + r"""
data = os.open("data", os.O_PATH | os.O_CLOEXEC)
secret = os.open("secret", os.O_PATH | os.O_CLOEXEC)
os.symlink(".", "data/here")
kinds = {
    "data": data,
    "secret": secret,
    "file": os.open("data/x", os.O_RDONLY | os.O_CLOEXEC),
    "opath_file": os.open("data/x", os.O_PATH | os.O_CLOEXEC),
    "symlink": os.open("data/here", os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC),
    "followed_symlink": os.open("data/here", os.O_PATH | os.O_CLOEXEC),
    "pipe": os.pipe()[0],
    "proc_self": os.open("/proc/self", os.O_PATH | os.O_CLOEXEC),
    "dev": os.open("/dev", os.O_PATH | os.O_CLOEXEC),
}
order = ["data", "file", "secret", "opath_file", "data", "symlink", "followed_symlink",
         "pipe", "secret", "proc_self", "dev", "data", "secret"]
for round in range(2):
    for kind in order:
        point(kinds[kind])
        report(f"{round} x via {kind}", lambda: read("x"))
        report(f"{round} s via {kind}", lambda: read("s"))
        report(f"{round} mkdir via {kind}", lambda: os.mkdir(f"made{round}", dir_fd=AT))
        report(f"{round} rename via {kind}",
               lambda: os.rename("x", "x.moved", src_dir_fd=AT, dst_dir_fd=AT))
        report(f"{round} rename back via {kind}",
               lambda: os.rename("x.moved", "x", src_dir_fd=AT, dst_dir_fd=AT))
        report(f"{round} unlink via {kind}", lambda: os.unlink("x", dir_fd=AT) if kind == "secret"
               else os.unlink("nothing", dir_fd=AT))
point(kinds["proc_self"])
report("status via proc_self is mine",
       lambda: str(b"\nPid:\t%d\n" % os.getpid() in read("status")))
def is_my_stdin(name):
    fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=AT)
    try:
        return str(os.path.sameopenfile(fd, 0))
    finally:
        os.close(fd)
point(kinds["dev"])
report("stdin via dev is my stdin", lambda: is_my_stdin("stdin"))
report("fd/0 via dev is my stdin", lambda: is_my_stdin("fd/0"))
report("tty via dev", lambda: os.close(os.open("tty", os.O_RDONLY | os.O_NONBLOCK, dir_fd=AT)))

# Bad descriptor numbers.
os.close(AT)
for bad in (AT, -1, 2**31 - 1, 99999):
    report(f"bad dirfd {bad}", lambda: os.close(checked(libc.openat(bad, b"x", os.O_RDONLY))))

# More directories than are kept, in changing orders, then the same numbers on others.
def sweep(label, fds):
    seen = []
    for round in range(3):
        for fd in (fds if round % 2 == 0 else fds[::-1]):
            try:
                got = read("f", fd)
                seen.append("LEAK" if SECRET in got else got.decode())
            except OSError as e:
                seen.append(errno.errorcode[e.errno])
    print(label, ",".join(seen), flush=True)

for i in range(80):
    os.mkdir(f"data/d{i}")
    with open(f"data/d{i}/f", "w") as f:
        f.write(f"d{i}")
names = [f"data/d{i}" for i in range(80)] + [f"secret/s{i}" for i in range(8)]
fds = [os.open(n, os.O_PATH | os.O_CLOEXEC) for n in names]
sweep("many dirfds", fds)
for fd in fds:
    os.close(fd)
fds = [os.open(n, os.O_PATH | os.O_CLOEXEC) for n in reversed(names)]
sweep("many dirfds, numbers reused", fds)
for fd in fds:
    os.close(fd)

# Threads: one table shared, then one of them takes a table of its own.
CLONE_FILES = 0x400
barrier = threading.Barrier(2)
def other():
    barrier.wait()
    point(secret)  # the shared table: the main thread's fd 50 moves too
    barrier.wait()
    barrier.wait()
    checked(libc.unshare(CLONE_FILES))
    point(data)  # this thread's own table only
    report("thread: x via its own data", lambda: read("x"))
    barrier.wait()
    barrier.wait()
    point(secret)
    report("thread: x via its own secret", lambda: read("x"))
    barrier.wait()
t = threading.Thread(target=other)
t.start()
point(data)
report("main: x via data", lambda: read("x"))
barrier.wait()
barrier.wait()
report("main: x after the other thread moved the shared fd", lambda: read("x"))
barrier.wait()
barrier.wait()
report("main: x after the other thread took its own table", lambda: read("x"))
point(data)
report("main: x via data in its table", lambda: read("x"))
barrier.wait()
barrier.wait()
report("main: x after the other thread moved its own fd", lambda: read("x"))
t.join()

# A kept directory renamed, removed, made anew at the same place.
os.mkdir("data/sub")
with open("data/sub/f", "w") as f:
    f.write("sub")
sub = os.open("data/sub", os.O_PATH | os.O_CLOEXEC)
point(sub)
report("sub: f", lambda: read("f"))
os.rename("data/sub", "data/renamed")
report("renamed: f", lambda: read("f"))
report("renamed: ..", lambda: read("../x"))
os.unlink("data/renamed/f")
os.rmdir("data/renamed")
report("removed: create", lambda: create("g"))
report("removed: mkdir", lambda: os.mkdir("g", dir_fd=AT))
os.mkdir("data/renamed")
report("made anew, old fd: create", lambda: create("g"))
point(os.open("data/renamed", os.O_PATH | os.O_CLOEXEC))
report("made anew, new fd: create", lambda: create("g"))
report("made anew: listing", lambda: ",".join(sorted(os.listdir("data/renamed"))))
"""
)

#: fd 50 across exec: moved before an exec, closed by one (CLOEXEC), moved by a thread that
#: then execs (it takes the thread group leader's id), and in a forked child's own table.
EXEC_CHAIN = (
    COMMON
    + r"""
stage = sys.argv[2] if len(sys.argv) > 2 else "0"
def again(next_stage):
    os.execv(sys.executable, [sys.executable, sys.argv[0], sys.argv[1], next_stage])
data = os.open("data", os.O_PATH | os.O_CLOEXEC)
secret = os.open("secret", os.O_PATH | os.O_CLOEXEC)
if stage == "0":
    point(data)
    report("0: x via data", lambda: read("x"))
    point(secret)
    again("1")
elif stage == "1":
    report("1: x via what exec kept (secret)", lambda: read("x"))
    point(data, inheritable=False)
    report("1: x via data (close-on-exec)", lambda: read("x"))
    again("2")
elif stage == "2":
    report("2: x via what exec closed", lambda: read("x"))
    point(data)
    report("2: x via data", lambda: read("x"))
    def exec_from_thread():
        point(secret)
        again("3")
    threading.Thread(target=exec_from_thread).start()
    threading.Event().wait()  # the exec ends this thread
elif stage == "3":
    report("3: x via what a thread's exec kept (secret)", lambda: read("x"))
    point(data)
    report("3: x via data", lambda: read("x"))
    pid = os.fork()
    if pid == 0:
        report("3 child: x via data", lambda: read("x"))
        point(secret)
        report("3 child: x via its own secret", lambda: read("x"))
        os._exit(0)
    os.waitpid(pid, 0)
    report("3 parent: x via data", lambda: read("x"))
"""
)

#: A kept dirfd's directory moved by someone else: out/ready-N and out/go-N are the steps.
MOVED_AWAY = (
    COMMON
    + r"""
import time
def step(n):
    open(f"out/ready-{n}", "w").close()
    while not os.path.exists(f"out/go-{n}"):
        time.sleep(0.005)
point(os.open("data/sub", os.O_PATH | os.O_CLOEXEC))
report("in data: f", lambda: read("f"))
step(1)  # moved into secret/
report("in secret: f", lambda: read("f"))
report("in secret: create", lambda: create("g"))
step(2)  # moved back into data/
report("back in data: f", lambda: read("f"))
"""
)

#: fd 50 on a directory, then on a bind mount of it where another filesystem is not
#: mounted over sub/ (argv[2]: the bind mount).
BIND_MOUNT = (
    COMMON
    + r"""
over = os.open("data", os.O_PATH | os.O_CLOEXEC)
under = os.open(sys.argv[2], os.O_PATH | os.O_CLOEXEC)
for label, fd in (("data", over), ("bind", under), ("data", over), ("bind", under)):
    point(fd)
    report(f"sub/f via {label}", lambda: read("sub/f"))
"""
)

#: Whether a blocking read-only open of a FIFO waits for a writer (argv[2]: its directory).
FIFO_READER = (
    COMMON
    + r"""
where = sys.argv[2]
os.mkfifo(f"{where}/p")
returned, finish = threading.Event(), threading.Event()
opened = []
def reader():
    opened.append(os.open(f"{where}/p", os.O_RDONLY))
    returned.set()
    finish.wait()  # alive until the main thread has seen how its open went
t = threading.Thread(target=reader)
t.start()
while True:
    if returned.is_set():
        print("reader open returned with no writer", flush=True)
        break
    try:
        with open(f"/proc/self/task/{t.native_id}/wchan") as f:
            wchan = f.read()
    except (FileNotFoundError, ProcessLookupError):
        if returned.is_set():
            continue  # the reader has just returned: the check above sees it
        t.join()  # it ended without returning from its open: the open failed
        print("reader open failed", flush=True)
        raise SystemExit(0)
    if "partner" in wchan:  # the kernel's FIFO wait
        print("reader open waits for a writer", flush=True)
        break
writer = os.open(f"{where}/p", os.O_WRONLY | os.O_NONBLOCK)  # the reader is there either way
os.write(writer, b"through the fifo")
os.close(writer)
finish.set()
t.join()
report("reader got", lambda: os.read(opened[0], 100))
"""
)

#: linkat(fd, "", ..., AT_EMPTY_PATH): an O_TMPFILE file made visible, and a plain file.
LINK_EMPTY_PATH = (
    COMMON
    + r"""
AT_EMPTY_PATH = 0x1000
for where in ("out", "data"):
    fd = os.open(where, os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o644)
    os.write(fd, b"written before it had a name")
    report(f"{where}: link O_TMPFILE",
           lambda: checked(libc.linkat(fd, b"", -100, f"{where}/named".encode(), AT_EMPTY_PATH)))
    report(f"{where}: read it", lambda: read(f"{where}/named", None))
x = os.open("data/x", os.O_RDONLY | os.O_CLOEXEC)
report("data: link data/x by fd",
       lambda: checked(libc.linkat(x, b"", -100, b"data/x.link", AT_EMPTY_PATH)))
s = os.open("secret/s", os.O_PATH | os.O_CLOEXEC)
report("link secret/s into data by fd",
       lambda: checked(libc.linkat(s, b"", -100, b"data/stolen", AT_EMPTY_PATH)))
report("read data/stolen", lambda: read("data/stolen", None))
"""
)

#: renameat2's flags: RENAME_EXCHANGE within data/, between data/ and out/ (both granted),
#: and between data/ and secret/ (never granted: the secret must not come out, nor data/x go
#: in); RENAME_WHITEOUT (leaves a whiteout, a 0:0 character device, where the name was: root
#: only) within data/ and out/; RENAME_NOREPLACE onto an existing name.
RENAME_FLAGS = (
    COMMON
    + r"""
import stat
NOREPLACE, EXCHANGE, WHITEOUT = 1, 2, 4
def rename2(old, new, flags):
    return checked(libc.renameat2(-100, old.encode(), -100, new.encode(), flags))
def kind(name):
    st = os.lstat(name)
    return "whiteout" if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0 else "file"
for where in ("data", "out"):
    for name in ("a", "b"):
        with open(f"{where}/{name}", "wb") as f:
            f.write(f"{where}/{name}".encode())
report("exchange within data", lambda: rename2("data/a", "data/b", EXCHANGE))
report("read data/a", lambda: read("data/a", None))
report("exchange data and out", lambda: rename2("data/a", "out/a", EXCHANGE))
report("read out/a", lambda: read("out/a", None))
report("exchange data and secret", lambda: rename2("data/b", "secret/s", EXCHANGE))
report("read data/b", lambda: read("data/b", None))
report("noreplace onto data/b", lambda: rename2("out/b", "data/b", NOREPLACE))
for where in ("data", "out"):
    report(f"whiteout in {where}", lambda: rename2(f"{where}/a", f"{where}/c", WHITEOUT))
    report(f"{where}/a is now", lambda: kind(f"{where}/a"))
    report(f"read {where}/c", lambda: read(f"{where}/c", None))
"""
)

#: A child started as root gives up its privileges, then opens what only root may.
DROPPED_PRIVILEGES = (
    COMMON
    + r"""
for where in ("data", "out"):
    fd = os.open(f"{where}/root-only", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    os.write(fd, SECRET)
    os.close(fd)
    os.chmod(where, 0o777)
os.setgroups([])
os.setresgid(65534, 65534, 65534)
os.setresuid(65534, 65534, 65534)
for path in ("data/root-only", "out/root-only", "out/../out/root-only"):
    report(f"read {path}", lambda: read(path, None))
    report(f"write {path}", lambda: os.close(os.open(path, os.O_WRONLY | os.O_CLOEXEC)))
for path in ("data/mine", "out/mine"):
    def owner():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        st = os.fstat(fd)
        os.close(fd)
        return f"{st.st_uid}:{st.st_gid}"
    report(f"owner of {path}", owner)
"""
)

#: A blocking open of a Unix socket file (argv[2]: the socket).
SOCKET_FILE = (
    COMMON
    + r"""
report("blocking open", lambda: os.close(os.open(sys.argv[2], os.O_RDONLY)))
report("non-blocking open", lambda: os.close(os.open(sys.argv[2], os.O_RDONLY | os.O_NONBLOCK)))
"""
)

#: A new session leader opens its pty (relative to /dev/pts) without O_NOCTTY: the pty
#: becomes its controlling terminal.
SESSION_TERMINAL = (
    COMMON
    + r"""
master, slave = os.openpty()
name = os.path.basename(os.ttyname(slave))
os.close(slave)
pts = os.open("/dev/pts", os.O_PATH | os.O_CLOEXEC)
pid = os.fork()
if pid == 0:
    os.setsid()
    report("open the pty", lambda: os.open(name, os.O_RDWR, dir_fd=pts) and None)
    report("controlling terminal", lambda: os.close(os.open("/dev/tty", os.O_RDONLY)))
    os._exit(0)
os.waitpid(pid, 0)
"""
)

#: A writer waiting in the kernel for a FIFO's reader holds up no other request.
FIFO_WRITER = (
    COMMON
    + r"""
os.mkfifo("out/w")
def writer():
    fd = os.open("out/w", os.O_WRONLY)  # waits for a reader
    os.write(fd, b"written once a reader came")
    os.close(fd)
t = threading.Thread(target=writer)
t.start()
def waiting():
    try:
        with open(f"/proc/self/task/{t.native_id}/wchan") as f:
            return "partner" in f.read()
    except (FileNotFoundError, ProcessLookupError):
        return False  # it has ended (its open did not wait): the reports below show it
while t.is_alive() and not waiting():
    pass
reads = [read("data/x", None) for _ in range(50)]
report("reads while the writer waits", lambda: b"".join(sorted(set(reads))))
r = os.open("out/w", os.O_RDONLY | os.O_NONBLOCK)
t.join()
report("the writer wrote", lambda: os.read(r, 100))
"""
)

#: Broker.call interrupted twice by a signal handler that raises (main thread): first while
#: its job runs, then before the broker thread could take its job (it still runs the first).
#: A third call then waits; meanwhile (a handler that returns) the first job ends and the
#: broker thread takes every wake-up written so far. Each later job must run once and its
#: call return its result. Prints the outcome as JSON.
BROKER_INTERRUPTED = r"""
import json, os, signal, threading, time
from llsupervise.supervisor.perform.broker import Broker

class Interrupted(Exception):
    pass

broker = Broker(None, "under-test")
worker = next(t for t in threading.enumerate() if t.name == "under-test")
main = threading.main_thread()
started, release = threading.Event(), threading.Event()
runs, results, outcome, failures = [], [], {}, []
threading.excepthook = lambda args: failures.append(repr(args.exc_value))
interrupting = True

def in_read(thread):
    # Blocked in read(2): a caller waiting for its result, or an idle broker thread.
    try:
        with open(f"/proc/self/task/{thread.native_id}/syscall") as f:
            return f.read().split()[0] == "0"
    except (FileNotFoundError, ProcessLookupError):
        return False  # it has ended

def on_signal(signum, frame):
    if interrupting:
        raise Interrupted
    release.set()
    while not in_read(worker):
        time.sleep(0.001)

signal.signal(signal.SIGUSR1, on_signal)

def signal_main(when):
    def run():
        while not when():
            time.sleep(0.001)
        signal.pthread_kill(main.ident, signal.SIGUSR1)
    threading.Thread(target=run, daemon=True).start()

def job(name):
    def run():
        if name == "first":
            started.set()
            release.wait()
        runs.append(name)
        return name
    return run

for name, when in (("first", started.is_set), ("second", lambda: in_read(main))):
    signal_main(when)
    try:
        broker.call(job(name))
        outcome[name] = "returned"
    except Interrupted:
        outcome[name] = "interrupted"
interrupting = False
signal_main(lambda: in_read(main))
results.append(broker.call(job("third")))
fourth = threading.Thread(target=lambda: results.append(broker.call(job("fourth"))), daemon=True)
fourth.start()
fourth.join(30)
outcome.update(results=results, runs=runs, failures=failures)
print(json.dumps(outcome), flush=True)
os._exit(0)
"""

#: Uses a directory on another mount through a dirfd, closes every descriptor of it, then
#: lets its parent unmount it (out/ready, out/go).
UNMOUNT = (
    COMMON
    + r"""
import time
mnt = os.open("data/mnt", os.O_PATH | os.O_CLOEXEC)
point(mnt)
os.close(mnt)
report("f via the mount", lambda: read("f"))
os.close(AT)
open("out/ready", "w").close()
while not os.path.exists("out/go"):
    time.sleep(0.005)
report("still mounted", lambda: str(os.path.ismount("data/mnt")))
"""
)

#: The child's own /proc/PID entries that need ptrace standing (fd/, cwd, environ), reached
#: relative to a dirfd on its /proc/PID or through its own symlinks: a process may always
#: follow its own. (What they lead to is in the static layer.)
OWN_PROC = (
    COMMON
    + r"""
me = os.getpid()
def is_my_stdin(name, dirfd=AT):
    fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dirfd)
    try:
        return str(os.path.sameopenfile(fd, 0))
    finally:
        os.close(fd)
def my_fds():
    fd = os.open("fd", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=AT)
    try:
        return str(len(os.listdir(fd)) > 2)
    finally:
        os.close(fd)
point(os.open(f"/proc/{me}", os.O_PATH | os.O_CLOEXEC))
report("fd/0 via my /proc/PID", lambda: is_my_stdin("fd/0"))
report("environ via my /proc/PID", lambda: str(len(read("environ")) > 0))
# (out/ is in the static layer: what is left to the kernel is judged by that layer alone)
report("cwd/out/script.py via my /proc/PID", lambda: str(len(read("cwd/out/script.py")) > 0))
report("fd/ via my /proc/PID", my_fds)
os.symlink(f"/proc/{me}/fd/0", "data/my-stdin")
os.symlink(f"/proc/{me}/cwd", "data/my-cwd")
report("data/my-stdin", lambda: is_my_stdin("data/my-stdin", None))
report("data/my-cwd/out/script.py", lambda: str(len(read("data/my-cwd/out/script.py", None)) > 0))
"""
)

#: A thread with a table of its own keeps fd 50 on data/ and exits; the next thread gets its
#: thread id (out/ready: the id; the parent sets ns_last_pid, then out/go) and shares the
#: main table, where fd 50 is on secret/.
TID_REUSE = (
    COMMON
    + r"""
import time
data = os.open("data", os.O_PATH | os.O_CLOEXEC)
point(os.open("secret", os.O_PATH | os.O_CLOEXEC))
seen = {}
def first(told):
    checked(libc.unshare(0x400))  # CLONE_FILES: a table of its own
    point(data)
    if told:
        report("first thread: x via its own data", lambda: read("x"))
    else:
        read("x")  # what the supervisor keeps for its fd 50 is the point, not the result
    seen["tid"] = threading.get_native_id()
def start_over(told=False):
    t = threading.Thread(target=first, args=(told,))
    t.start()
    t.join()
    while os.path.exists(f"/proc/self/task/{seen['tid']}"):
        time.sleep(0.001)
start_over(told=True)
# Each attempt: the setup sets the namespace's last pid to just below the id, then says go.
# Any task made in the pid namespace meanwhile (a thread of the supervisor) takes the id
# first; a thread that did not get it reads nothing, and the setup is asked again. A task
# that took it and lives on (a worker thread) would fail every later attempt: then another
# first thread gives another id.
control = open("out/control", "w")
for attempt in range(200):
    if os.path.exists(f"/proc/{seen['tid']}"):
        start_over()
    control.write(f"{seen['tid']} {attempt}\n")
    control.flush()
    while not os.path.exists(f"out/go{attempt}"):
        time.sleep(0.005)
    def second():
        seen["reused"] = threading.get_native_id() == seen["tid"]
        if seen["reused"]:
            report("second thread: x via the shared secret", lambda: read("x"))
    t = threading.Thread(target=second)
    t.start()
    t.join()
    if seen["reused"]:
        break
control.close()
report("thread id reused", lambda: str(seen["reused"]))
"""
)

#: A writer waits in its blocking open of a FIFO, then writes and closes at once (as
#: ``echo hi > fifo`` does); another thread then opens the FIFO for reading (blocking). Its
#: open must meet that writer and read what it wrote: never wait for a writer that has come
#: and gone. Repeated (argv[2]: the directory, argv[3]: how many times).
FIFO_WRITER_FIRST = (
    COMMON
    + r"""
where, times = sys.argv[2], int(sys.argv[3])
def waiting(thread):
    try:
        with open(f"/proc/self/task/{thread.native_id}/wchan") as f:
            return "partner" in f.read()
    except (FileNotFoundError, ProcessLookupError):
        return False  # it has ended (between the open and the read, too: ESRCH)
outcomes = {}
for i in range(times):
    path = f"{where}/p{i}"
    os.mkfifo(path)
    def writer():
        try:
            fd = os.open(path, os.O_WRONLY)
        except OSError as e:
            return
        try:
            os.write(fd, b"through the fifo")
        except OSError:
            pass
        os.close(fd)
    w = threading.Thread(target=writer)
    w.start()
    while w.is_alive() and not waiting(w):
        pass
    got = []
    def reader():
        try:
            got.append(os.open(path, os.O_RDONLY))
        except OSError as e:
            got.append(e)
    r = threading.Thread(target=reader)
    r.start()
    w.join()
    while not got and not waiting(r):
        pass
    if not got:
        outcome = "reader left waiting for a writer that has come and gone"
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))  # only a writer of ours ends it
        r.join()
    else:
        r.join()
        if isinstance(got[0], OSError):
            outcome = "reader " + errno.errorcode[got[0].errno]
        else:
            outcome = "reader read " + (os.read(got[0], 100).decode() or "nothing")
            os.close(got[0])
    outcomes[outcome] = outcomes.get(outcome, 0) + 1
for outcome, count in sorted(outcomes.items()):
    print(outcome, "x", count, flush=True)
"""
)
