"""Control messages of a send the supervisor performs, made its own (pure): descriptors taken,
the program's own credentials passed on, the rest refused or passed as plain data."""

from __future__ import annotations

import errno
import os
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llsupervise.supervisor.net.control import (
    SCM_CREDENTIALS,
    SCM_RIGHTS,
    SOL_SOCKET,
    UCRED,
    Identity,
    Refused,
    forward,
    messages,
    pack,
)

ME = Identity(pid=4242, uids=frozenset({1000}), gids=frozenset({100}))
SOL_IP, IP_TOS = 0, 1


def rights(*fds: int) -> bytes:
    return pack(SOL_SOCKET, SCM_RIGHTS, b"".join(struct.pack("=i", fd) for fd in fds))


class Taker:
    """Takes a program's descriptor as a fresh one of ours (a pipe end), and remembers it."""

    def __init__(self, bad: int = -1) -> None:
        self.bad = bad
        self.taken: list[tuple[int, int]] = []

    def __call__(self, fd: int) -> int:
        if fd == self.bad:
            raise OSError(errno.EBADF, "not open")
        ours, other = os.pipe()
        os.close(other)
        self.taken.append((fd, ours))
        return ours

    def open(self) -> list[int]:
        still = []
        for _, ours in self.taken:
            try:
                os.fstat(ours)
                still.append(ours)
            except OSError:
                pass
        return still


@given(st.lists(st.tuples(st.integers(0, 300), st.integers(0, 100), st.binary(max_size=40))))
def test_messages_are_walked_as_packed(found: list[tuple[int, int, bytes]]) -> None:
    assert messages(b"".join(pack(*m) for m in found)) == found


@pytest.mark.parametrize("raw", [struct.pack("=Qii", 8, 1, 1), struct.pack("=Qii", 64, 1, 1)])
def test_a_malformed_message_is_what_the_kernel_refuses(raw: bytes) -> None:
    with pytest.raises(OSError) as info:
        messages(raw)
    assert info.value.errno == errno.EINVAL


def test_descriptors_are_taken_from_the_program_and_passed_as_ours() -> None:
    take = Taker()
    control = rights(7, 9) + pack(SOL_IP, IP_TOS, b"\x10\0\0\0")
    rebuilt, passed = forward(control, True, take, ME)
    try:
        assert [fd for fd, _ in take.taken] == [7, 9]
        (fds, tos) = messages(rebuilt)
        assert fds[:2] == (SOL_SOCKET, SCM_RIGHTS)
        assert list(struct.unpack("=2i", fds[2])) == passed == [o for _, o in take.taken]
        assert tos == (SOL_IP, IP_TOS, b"\x10\0\0\0")  # plain data passes as it is
    finally:
        for fd in passed:
            os.close(fd)


def test_a_descriptor_that_cannot_be_taken_leaves_none_taken() -> None:
    take = Taker(bad=9)
    with pytest.raises(OSError) as info:
        forward(rights(7, 9), True, take, ME)
    assert info.value.errno == errno.EBADF
    assert take.open() == []


def test_descriptors_beyond_the_kernels_limit_are_refused_before_being_taken() -> None:
    """SCM_MAX_FD holds for a whole message: many SCM_RIGHTS naming one descriptor again
    and again do not make the supervisor hold one descriptor per name (EINVAL, as the
    kernel says)."""
    take = Taker()
    control = rights(*[0] * 200) * 20
    with pytest.raises(OSError) as info:
        forward(control, True, take, ME)
    assert info.value.errno == errno.EINVAL
    assert len(take.taken) <= 253
    assert take.open() == []


def test_the_programs_own_credentials_pass_as_the_supervisors_pid() -> None:
    control = pack(SOL_SOCKET, SCM_CREDENTIALS, UCRED.pack(4242, 1000, 100))
    rebuilt, passed = forward(control, True, Taker(), ME)
    assert passed == []
    ((level, kind, data),) = messages(rebuilt)
    assert (level, kind) == (SOL_SOCKET, SCM_CREDENTIALS)
    assert UCRED.unpack(data) == (os.getpid(), 1000, 100)


@pytest.mark.parametrize(
    "creds", [(1, 1000, 100), (4242, 0, 100), (4242, 1000, 0)]
)  # fmt: skip
def test_credentials_not_the_programs_own_are_refused(creds: tuple[int, int, int]) -> None:
    take = Taker()
    control = rights(3) + pack(SOL_SOCKET, SCM_CREDENTIALS, UCRED.pack(*creds))
    with pytest.raises(Refused) as info:
        forward(control, True, take, ME)
    assert "credentials" in info.value.why
    assert take.open() == []  # the descriptor taken before is closed again


@pytest.mark.parametrize(("unix", "passes"), [(True, False), (False, True)])
def test_socket_level_data_passes_only_where_it_is_data(unix: bool, passes: bool) -> None:
    mark = pack(SOL_SOCKET, 36, b"\1\0\0\0")  # SO_MARK: an inet socket's send option
    if passes:
        assert forward(mark, unix, Taker(), ME) == (mark, [])
    else:
        with pytest.raises(Refused):
            forward(mark, unix, Taker(), ME)


def test_an_unknown_socket_level_message_is_refused() -> None:
    with pytest.raises(Refused) as info:
        forward(pack(SOL_SOCKET, 99, b"x"), False, Taker(), ME)
    assert "99" in info.value.why
