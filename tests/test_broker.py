"""The broker's hand-off: results, errors and order under concurrent callers, and close."""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable

import pytest

from llsupervise.supervisor.perform.broker import _NUMBER, Broker, BrokerClosed


def test_a_call_returns_what_the_function_returned_in_the_brokers_thread() -> None:
    broker = Broker(None, "test-broker")
    try:
        assert broker.call(lambda: threading.current_thread().name) == "test-broker"
    finally:
        broker.close()


def test_an_exception_reaches_the_caller_and_the_broker_goes_on() -> None:
    broker = Broker(None)
    try:
        with pytest.raises(ZeroDivisionError):
            broker.call(lambda: 1 // 0)
        assert broker.call(lambda: 42) == 42
    finally:
        broker.close()


def test_concurrent_callers_each_get_their_own_result() -> None:
    broker = Broker(None)
    results: dict[int, list[int]] = {}

    def caller(k: int) -> None:
        results[k] = [broker.call(functools.partial(int, k * 1000 + i)) for i in range(200)]

    threads = [threading.Thread(target=caller, args=(k,)) for k in range(8)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        broker.close()
    assert results == {k: [k * 1000 + i for i in range(200)] for k in range(8)}


def test_close_waits_for_the_call_in_flight_and_later_calls_fail() -> None:
    broker = Broker(None)
    started, release = threading.Event(), threading.Event()
    outcome: list[str] = []

    def slow() -> str:
        started.set()
        release.wait()
        return "done"

    caller = threading.Thread(target=lambda: outcome.append(broker.call(slow)))
    caller.start()
    started.wait()
    closer = threading.Thread(target=broker.close)
    closer.start()
    closer.join(0.2)
    assert closer.is_alive()  # the call in flight is finished first
    release.set()
    caller.join()
    closer.join()
    assert outcome == ["done"]
    with pytest.raises(BrokerClosed, match="closed"):
        broker.call(lambda: None)
    broker.close()  # twice is fine


def test_a_caller_interrupted_while_waiting_leaves_nothing_for_the_next() -> None:
    # What an interrupted call leaves (KeyboardInterrupt while waiting in the main thread):
    # its job handed over, no one to read its result. Here it is left while the broker is
    # busy, so that later calls are handed over before the broker reads it.
    broker = Broker(None)
    release = threading.Event()
    runs: list[str] = []

    def leave_job(fn: Callable[[], object]) -> None:
        with broker._lock:
            broker._sequence += 1
            broker._jobs[broker._sequence] = fn
            os.write(broker._go_w, _NUMBER.pack(broker._sequence))

    def run(name: str) -> str:
        runs.append(name)
        return name

    results: list[str] = []
    caller = threading.Thread(target=lambda: results.append(broker.call(lambda: run("mine"))))
    try:
        leave_job(release.wait)  # keeps the broker busy
        leave_job(lambda: run("abandoned"))
        caller.start()
        release.set()
        caller.join()
        results.append(broker.call(lambda: run("next")))
    finally:
        release.set()
        broker.close()
    assert results == ["mine", "next"]
    assert runs == ["abandoned", "mine", "next"]  # each job once, in order
