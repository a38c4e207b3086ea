"""Decoding a sendmsg's struct msghdr as read from a child (pure): what the supervisor sends
is what the kernel would have sent, and what the kernel refuses is refused the same way."""

from __future__ import annotations

import errno

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llsupervise.supervisor.net.msghdr import IOVEC, MSGHDR, UIO_MAXIOV, Message, read_message


class Memory:
    """A child's memory: a few mappings; reading outside them is EFAULT, like the reader's."""

    def __init__(self) -> None:
        self.blocks: dict[int, bytes] = {}
        self.next = 0x10000

    def put(self, data: bytes) -> int:
        at = self.next
        self.blocks[at] = data
        self.next += (len(data) + 0x1000) & ~0xFFF
        return at

    def read(self, addr: int, size: int) -> bytes:
        for at, data in self.blocks.items():
            if at <= addr and addr + size <= at + len(data):
                return data[addr - at : addr - at + size]
        raise OSError(errno.EFAULT, "unmapped")


def msghdr(
    mem: Memory, name: bytes | None, chunks: list[bytes], control: bytes = b"", namelen: int = -1
) -> int:
    name_at = mem.put(name) if name is not None else 0
    iov = b"".join(IOVEC.pack(mem.put(c) if c else 0, len(c)) for c in chunks)
    iov_at = mem.put(iov) if iov else 0
    control_at = mem.put(control) if control else 0
    length = len(name or b"") if namelen < 0 else namelen
    return mem.put(MSGHDR.pack(name_at, length, iov_at, len(chunks), control_at, len(control), 0))


@given(
    name=st.none() | st.binary(min_size=1, max_size=110),
    chunks=st.lists(st.binary(max_size=50), max_size=8),
)
def test_the_message_is_the_name_and_the_joined_data(
    name: bytes | None, chunks: list[bytes]
) -> None:
    mem = Memory()
    at = msghdr(mem, name, chunks)
    assert read_message(mem.read, at, 1 << 20) == Message(name, b"".join(chunks), b"")


def test_no_name_pointer_means_no_name_whatever_its_length() -> None:
    mem = Memory()
    at = mem.put(MSGHDR.pack(0, 50, 0, 0, 0, 0, 0))
    assert read_message(mem.read, at, 100).name is None


def test_control_messages_are_read_as_they_lie() -> None:
    mem = Memory()
    control = bytes(range(24))
    assert read_message(mem.read, msghdr(mem, None, [b"x"], control), 100).control == control


@given(chunks=st.lists(st.binary(max_size=50), max_size=8), limit=st.integers(0, 200))
def test_a_stream_sends_the_first_bytes_of_a_long_message(chunks: list[bytes], limit: int) -> None:
    mem = Memory()
    at = msghdr(mem, None, chunks)
    assert read_message(mem.read, at, limit, cut=True).data == b"".join(chunks)[:limit]


@pytest.mark.parametrize(
    ("build", "err"),
    [
        (lambda m: msghdr(m, b"\1\0/x", [b"x"], namelen=1 << 31), errno.EINVAL),  # negative
        (lambda m: msghdr(m, None, [b"x" * 101]), errno.EMSGSIZE),  # over max_data
        (lambda m: m.put(MSGHDR.pack(0, 0, 0x10, UIO_MAXIOV + 1, 0, 0, 0)), errno.EMSGSIZE),
        (lambda m: m.put(MSGHDR.pack(0, 0, 0, 0, 0, 1 << 31, 0)), errno.ENOBUFS),
        (lambda m: m.put(MSGHDR.pack(0, 0, 0xDEAD000, 1, 0, 0, 0)), errno.EFAULT),
        (lambda m: 0xBAD000, errno.EFAULT),
    ],
)
def test_what_the_kernel_refuses(build: object, err: int) -> None:
    mem = Memory()
    at = build(mem)  # type: ignore[operator]
    with pytest.raises(OSError) as info:
        read_message(mem.read, at, 100)
    assert info.value.errno == err


def test_a_long_name_is_cut_as_the_kernel_cuts_it() -> None:
    mem = Memory()
    at = msghdr(mem, b"\1\0" + b"a" * 200, [b"x"])
    name = read_message(mem.read, at, 100).name
    assert name is not None and len(name) == 128
