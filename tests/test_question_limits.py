"""The bounds on open questions and waiting requests (see questions/limits.py)."""

from __future__ import annotations

from llsupervise.supervisor.questions.limits import QuestionLimits


def test_a_process_gets_its_share_and_all_processes_the_total() -> None:
    limits = QuestionLimits(per_process=2, total=3, waiting=10)
    for pid in (1, 1):
        assert limits.may_open(pid)
        limits.opened(pid, 1)
    assert not limits.may_open(1)
    assert limits.may_open(2)
    limits.opened(2, 1)
    assert not limits.may_open(3)  # the total
    limits.closed(1, 1)
    assert limits.may_open(1) and limits.may_open(3)


def test_waiting_requests_are_bounded_and_released_with_their_question() -> None:
    limits = QuestionLimits(per_process=5, total=5, waiting=3)
    limits.opened(1, 1)
    limits.joined()
    limits.joined()
    assert not limits.may_wait()
    limits.closed(1, 3)
    assert limits.may_wait()
    limits.opened(1, 1)
    limits.clear()
    assert limits.may_open(1) and limits.may_wait()
