"""The broker's hand-off: results, errors and order under concurrent callers, and close."""

from __future__ import annotations

import threading

import pytest

from llsupervise.supervisor.broker import Broker


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
        results[k] = [broker.call(lambda i=i: k * 1000 + i) for i in range(200)]

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
    with pytest.raises(RuntimeError, match="closed"):
        broker.call(lambda: None)
    broker.close()  # twice is fine
