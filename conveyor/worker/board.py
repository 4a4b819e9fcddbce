"""A prefork child's notice board: what it holds and runs, readable without a wake-up.

A child used to write its "held" and "run" reports down its pipe just before
each task, so the supervisor knew at once what to renew, hand back or count
if the child died.  That pipe write woke the supervisor on every task, on
the round trip's path (docs/performance.md, round two, fifth pass; ADR 0039).

Now the child copies those reports into a small shared memory block (an
anonymous ``mmap`` made by the supervisor before the fork): a memory copy,
no system call, nobody woken.  The supervisor reads the board whenever it
needs the truth — before renewing leases, on a child's exit, before a
heartbeat (revoke-terminate, task events), on ``inspect`` — and the same
reports still go down the pipe with the task's "done" report, marked with
the board's sequence number, so the supervisor never applies a board the
pipe has already overtaken.

A write is one block: ``seq`` (8 bytes), payload length (4), CRC-32 of
both and the payload (4), then the payload, the header written last.  A
reader racing the writer, or a child killed in the middle of a write, gives
a block whose CRC does not match: the read returns nothing, as if the child
had not written yet (the same as a child killed before its pipe write).
"""

from __future__ import annotations

import mmap
import pickle
import struct
import zlib
from typing import Any

_HEADER = struct.Struct("<QII")
SIZE = 64 * 1024  # pages are touched only as written: one or two for a task's reports


class Board:
    """One child's block of shared memory; made before the fork, used on both sides."""

    def __init__(self, size: int = SIZE) -> None:
        self._map = mmap.mmap(-1, size)  # MAP_SHARED | MAP_ANONYMOUS: shared across fork
        self._room = size - _HEADER.size

    def post(self, seq: int, reports: list[tuple[Any, ...]]) -> bool:
        """Write ``reports`` under ``seq`` (child side); False if they do not fit
        (the caller then sends them down its pipe instead)."""
        payload = pickle.dumps(reports, pickle.HIGHEST_PROTOCOL)
        if len(payload) > self._room:
            return False
        head = struct.pack("<QI", seq, len(payload))
        self._map[_HEADER.size:_HEADER.size + len(payload)] = payload
        self._map[:_HEADER.size] = head + struct.pack("<I", zlib.crc32(payload, zlib.crc32(head)))
        return True

    def seq(self) -> int:
        """The sequence number of the last write (maybe torn: :meth:`read` checks)."""
        return int(_HEADER.unpack_from(self._map)[0])

    def read(self) -> tuple[int, list[tuple[Any, ...]]] | None:
        """The last complete write (supervisor side), or None if there is none or
        the one there is being written (or was cut short by the child's death)."""
        seq, length, crc = _HEADER.unpack_from(self._map)
        if seq == 0 or length > self._room:
            return None
        payload = self._map[_HEADER.size:_HEADER.size + length]
        head = struct.pack("<QI", seq, length)
        if zlib.crc32(payload, zlib.crc32(head)) != crc:
            return None
        try:
            return seq, pickle.loads(payload)
        except Exception:  # a torn block whose CRC matched by chance: as unreadable
            return None

    def close(self) -> None:
        self._map.close()
