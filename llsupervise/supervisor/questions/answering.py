"""Carrying out an answer: perform the denied request as decided and reply to the child.

Runs in a worker thread (performing may block on the kernel). An allow-once answer is
performed by a one-shot broker whose only extra rules are on the checked objects, so that a
path swapped since the check is judged without them.
"""

from __future__ import annotations

import errno

from llsupervise.policy.model import Ruleset
from llsupervise.seccomp import Listener, NotificationGone
from llsupervise.supervisor.engine.created import MOVES
from llsupervise.supervisor.engine.generations import BrokerSlot
from llsupervise.supervisor.engine.pending import Pending, kernel_decides, reply
from llsupervise.supervisor.events.model import Answer, Decision
from llsupervise.supervisor.perform.broker import Broker, kernel_ruleset
from llsupervise.supervisor.perform.operations import KernelDecides, perform
from llsupervise.supervisor.rules.objects import ObjectTable

#: Answers served by a one-shot broker rather than by a committed rule.
ONCE = (Answer.ALLOW_ONCE, Answer.PERMISSIVE, Answer.CONDITIONAL)


def once_broker(in_force: Ruleset, pending: Pending, table: ObjectTable) -> Broker | None:
    """A broker restricted with ``in_force`` plus rules on ``pending``'s checked objects;
    None when it cannot be made (the answer then fails closed).

    The extra rules go straight into the kernel ruleset from the request's own fds: the
    shared object table keeps nothing of an allow-once grant, and once the broker and the
    request are closed, nothing of it is held (a permissive run touching 100k files holds
    no more fds than one touching one)."""
    try:
        kernel = kernel_ruleset(in_force, table)
    except Exception:
        return None
    try:
        for o in pending.objects:
            kernel.add_path(o.fd, o.access)
        return Broker(kernel, "broker-once")
    except Exception:
        kernel.close()
        return None


def carry_out(
    listener: Listener | None,
    slot: BrokerSlot,
    pending: Pending,
    decision: Decision,
    once: Broker | None,
) -> None:
    """Perform ``pending`` as ``decision`` says and reply; owns and closes ``pending`` and
    ``once``. Refusals, and allow-once answers without a broker, reply EACCES."""
    n = pending.notification
    try:
        if listener is None or listener.closed:
            return
        if not decision.answer.allows or (decision.answer in ONCE and once is None):
            listener.send_error(n.id, errno.EACCES)
            return
        try:
            if once is not None:
                result = once.call(lambda: perform(pending.target))
            else:
                with slot.lock:
                    result = slot.broker.call(lambda: perform(pending.target))
        except KernelDecides:
            kernel_decides(listener, n, pending.request.op in MOVES, errno.EXDEV)
        except OSError as exc:
            listener.send_error(n.id, exc.errno or errno.EIO)
        else:
            reply(listener, n, pending.request, result)
    except NotificationGone:
        pass
    finally:
        if once is not None:
            once.close()
        pending.close()


async def carry_out_in_thread(
    listener: Listener | None,
    slot: BrokerSlot,
    pending: Pending,
    decision: Decision,
    once: Broker | None,
) -> None:
    """:func:`carry_out` in a worker thread, shielded: an answer once decided is carried out,
    and what it holds released, even when the run ends (cancels) before the thread starts."""
    import trio  # imported here: a run starts before trio (supervisor.door)

    with trio.CancelScope(shield=True):
        await trio.to_thread.run_sync(carry_out, listener, slot, pending, decision, once)
