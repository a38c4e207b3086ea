"""Offload: a job stuck past its deadline is answered once, by the watchdog, and never holds
up the jobs after it (real threads; a stuck job waits on an event, as on a hung FUSE call)."""

from __future__ import annotations

import threading
from collections.abc import Callable

from llsupervise.supervisor.engine.offload import Job, Offload

#: Only for waits that a broken offload would make endless.
LIMIT = 30.0


class Recorder:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.answers: list[tuple[str, str]] = []
        self.done = threading.Condition(self.lock)

    def job(self, name: str, work: Callable[[], object] = lambda: None) -> Job:
        def run(job: Job) -> None:
            work()
            if job.claim():
                self._note(name, "worker")

        def expire(started: bool) -> None:
            self._note(name, "deadline, started" if started else "deadline, not started")

        return Job(run, expire)

    def _note(self, name: str, how: str) -> None:
        with self.done:
            self.answers.append((name, how))
            self.done.notify_all()

    def wait_for(self, count: int) -> list[tuple[str, str]]:
        with self.done:
            assert self.done.wait_for(lambda: len(self.answers) >= count, LIMIT)
            return list(self.answers)


def test_a_stuck_job_is_answered_at_its_deadline_and_later_jobs_go_on() -> None:
    release = threading.Event()
    offload = Offload(None, deadline=0.3, workers=2)
    rec = Recorder()
    offload.submit(rec.job("stuck", lambda: release.wait(LIMIT)))
    offload.submit(rec.job("quick"))
    assert rec.wait_for(2) == [("quick", "worker"), ("stuck", "deadline, started")]
    release.set()  # the stuck call returns late: it may not answer a second time
    offload.submit(rec.job("after"))
    assert rec.wait_for(3)[2] == ("after", "worker")
    assert rec.answers.count(("stuck", "worker")) == 0
    assert offload.expired == 1
    offload.close()


def test_a_job_no_worker_could_start_is_answered_and_never_run() -> None:
    release = threading.Event()
    ran: list[str] = []
    offload = Offload(None, deadline=0.3, workers=1)
    rec = Recorder()
    offload.submit(rec.job("stuck", lambda: release.wait(LIMIT)))
    offload.submit(rec.job("queued", lambda: ran.append("queued")))
    answers = rec.wait_for(2)
    assert sorted(answers) == [("queued", "deadline, not started"), ("stuck", "deadline, started")]
    release.set()
    offload.submit(rec.job("after"))
    assert rec.wait_for(3)[2] == ("after", "worker")
    assert ran == []
    offload.close()


def test_jobs_not_started_move_to_the_next_generation() -> None:
    release = threading.Event()
    old, new = Offload(None, deadline=LIMIT, workers=1), Offload(None, deadline=LIMIT)
    rec = Recorder()
    where: list[str] = []
    old.submit(rec.job("stuck", lambda: release.wait(LIMIT)))
    old.submit(rec.job("queued", lambda: where.append(threading.current_thread().name)))
    assert old.hand_over(new) == 1
    assert rec.wait_for(1) == [("queued", "worker")]
    release.set()
    assert rec.wait_for(2)[1] == ("stuck", "worker")
    assert old.expired == new.expired == 0
    old.close()
    new.close()
