"""Reading WebDataset samples out of a tar stream that may be damaged or hostile, without unpickling anything.

A sample is the run of consecutive tar members that share a key (``a/b/000042.png`` and
``a/b/000042.cls`` -> key ``a/b/000042``). Only image members and label members (``.cls``,
``.json``) are kept as raw bytes; everything else (``.pyd``, ``.pickle``, ``.npy``, ...) is
dropped unread (skipped in bounded chunks, never held in memory), so no code path can unpickle
shard content.

The header parser is hand-written because Python's ``tarfile`` costs ~20 us per member, which
dominates the decode time of 28x28 images: it reads 1 MiB blocks, slices members out of them and
checks the header checksums of a block with one NumPy operation rather than summing each header
in Python. It handles ustar, GNU long names and pax headers (webdataset's and GNU tar's output).

Shards are untrusted input. Every header's checksum is verified before anything is done with its
fields: a size only locates the next header inside bytes already read, and before a member is
yielded, read past the block, skipped or refused, its header (and every header before it) has
passed the checksum test. Numeric fields are strict octal or GNU base-256 (positive, below
2**63); every header moves the read position forward by at least one 512-byte block; a kept member
above ``max_member_bytes`` (``data.max_member_bytes``) or a long-name / pax record above 1 MiB is
refused before any allocation. All damage raises :class:`CorruptShard` after every member before
it was yielded; nothing else escapes but the stream's own errors (``OSError``).
"""

from __future__ import annotations

from typing import BinaryIO, Iterator

import numpy as np

IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "webp")
LABEL_EXTENSIONS = ("cls", "json")
KEPT_EXTENSIONS = frozenset(IMAGE_EXTENSIONS + LABEL_EXTENSIONS)
DEFAULT_MAX_MEMBER_BYTES = 64 << 20
"""Largest image / label member read (``data.max_member_bytes``'s default): 64 MiB is ~8x a
full-resolution 24-megapixel JPEG; anything bigger in an image shard is damage or an attack."""
_MAX_RECORD_BYTES = 1 << 20
"""Largest GNU long-name / pax record held in memory (a Linux path is at most 4096 bytes)."""
_MAX_SIZE = (1 << 63) - 1
"""Largest base-256 number accepted (what a 64-bit file offset can address)."""
_BLOCK = 512
_ZERO_BLOCK = bytes(_BLOCK)
_FILE_KINDS = frozenset(b"07\0")  # regular files (b"7": contiguous file)
_NO_DATA_KINDS = frozenset(b"123456")  # links, devices, directories, FIFOs: no data follows (as in tarfile)
_RECORD_KINDS = frozenset(b"LxgK")  # GNU long name / link name, pax extended / global header


class CorruptShard(Exception):
    """The tar stream is truncated or malformed; samples before the damage were delivered."""


_CHUNK = 1 << 20
"""Bytes read from the stream at a time; members are sliced out of this buffer."""
_BLOCK_OFFSETS = np.arange(_BLOCK)


def _number(field: bytes) -> int:
    """A numeric header field: octal digits (NUL / space padded) or GNU base-256 (first byte
    0x80); ValueError for anything else, including negative numbers."""
    if field and field[0] == 0x80:
        value = int.from_bytes(field[1:], "big")
        if value > _MAX_SIZE:
            raise ValueError(f"base-256 number {value} is above 2**63")
        return value
    if field and field[0] & 0x80:
        raise ValueError("negative or malformed base-256 number")
    text = field.split(b"\0", 1)[0].strip(b" ")
    if text and not text.isdigit():  # int() alone would also take "-1", "+7", "1_0"
        raise ValueError(f"numeric field {bytes(field)!r} is not octal")
    return int(text, 8) if text else 0


def _stored_checksum(field: bytes) -> int | None:
    try:
        return _number(field)
    except ValueError:
        return None  # a malformed checksum field is a wrong checksum


def _first_bad_checksum(buffer: bytes, offsets: list[int]) -> int:
    """Index into ``offsets`` of the first header whose checksum is wrong (``len(offsets)`` if none).

    The sums of all the headers of one buffer are taken in one NumPy operation: summing 512
    bytes in Python costs more than the rest of a member's parsing."""
    blocks = np.frombuffer(buffer, dtype=np.uint8)[np.asarray(offsets)[:, None] + _BLOCK_OFFSETS]
    computed = blocks.sum(axis=1, dtype=np.int64) - blocks[:, 148:156].sum(axis=1, dtype=np.int64) + 8 * 32
    for index, (offset, value) in enumerate(zip(offsets, computed.tolist())):
        field = buffer[offset + 148:offset + 156]
        if not (field[6] in (0, 32) and field[:6] == b"%06o" % value) and _stored_checksum(field) != value:
            # (the first test is the form tarfile and GNU tar write: six digits, then NUL or space)
            return index
    return len(offsets)


def _pax_path(data: bytes) -> str | None:
    # Records are "<length> key=value\n".
    for record in data.split(b"\n"):
        if b" path=" in record:
            return record.split(b" path=", 1)[1].decode("utf-8", errors="replace")
    return None


def _refill(stream: BinaryIO, rest: bytes, wanted: int) -> bytes:
    """``rest`` (the unparsed tail of the buffer) followed by what the stream gives, until at
    least ``wanted`` bytes (bounded by the caller) or the end of the stream."""
    parts, have = [rest], len(rest)
    while have < wanted:
        part = stream.read(max(_CHUNK, wanted - have))
        if not part:
            break
        parts.append(part)
        have += len(part)
    return b"".join(parts)


def _discard(stream: BinaryIO, count: int) -> None:
    """Read and drop ``count`` bytes in chunks (a member not kept: never held whole in memory)."""
    while count > 0:
        part = stream.read(min(_CHUNK, count))
        if not part:
            raise CorruptShard(f"truncated tar: a member ends {count} bytes past the end of the stream")
        count -= len(part)


def _size(header: bytes) -> int:
    """The member size field; the common form (11 octal digits, NUL or space) parsed directly."""
    field = header[124:135]
    if header[135] in (0, 32) and field.isdigit():
        return int(field, 8)  # ValueError for an 8 or a 9
    return _number(header[124:136])


def _flush(buffer: bytes, pending: list, headers: list[int]) -> Iterator[list[tuple[str, bytes | None]]]:
    """Check the checksums of ``headers``, yield (as one list) the ``pending`` members whose
    headers (and earlier ones) are sound, empty both lists; CorruptShard if a checksum is wrong."""
    bad = _first_bad_checksum(buffer, headers) if headers else 0
    sound = [(name, buffer[offset:offset + size] if kept else None)
             for name, offset, size, kept, header_index in pending if header_index < bad]
    damaged = bad < len(headers)
    pending.clear()
    headers.clear()
    if sound:
        yield sound
    if damaged:
        raise CorruptShard("bad tar header checksum")


def iter_tar_members(stream: BinaryIO, *,
                     max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES) -> Iterator[tuple[str, bytes | None]]:
    """Yield ``(name, data)`` for each regular file; ``data`` is None for members not kept.
    (See :func:`_member_lists`.)"""
    for members in _member_lists(stream, max_member_bytes=max_member_bytes):
        yield from members


def _ustar_name(header: bytes) -> str:
    name = header[0:100].split(b"\0", 1)[0].decode("utf-8", errors="replace")
    if header[345] and header[257:262] == b"ustar":
        prefix = header[345:500].split(b"\0", 1)[0].decode("utf-8", errors="replace")
        if prefix:
            name = f"{prefix}/{name}"
    return name


def _is_kept(name: str) -> bool:
    dot = name.rfind(".")
    return dot > name.rfind("/") and name[dot + 1:].lower() in KEPT_EXTENSIONS


def _record_name(kind: int, data: bytes) -> str | None:
    """The name a GNU long-name (``L``) or pax (``x``) record gives the next member."""
    if kind == 76:
        return data.split(b"\0", 1)[0].decode("utf-8", errors="replace")
    return _pax_path(data)


def _too_large(kind: int, name: str, size: int, max_member_bytes: int) -> str | None:
    """Why a member of this size is refused before it is read (None: it is not)."""
    if kind in _RECORD_KINDS and size > _MAX_RECORD_BYTES:
        return f"a tar long-name / pax record of {size} bytes (at most {_MAX_RECORD_BYTES} are read)"
    if kind in _FILE_KINDS and size > max_member_bytes and _is_kept(name):
        return (f"member {name!r} holds {size} bytes, more than data.max_member_bytes={max_member_bytes} "
                "(raise it if the images are really that large)")
    return None


def _member_lists(stream: BinaryIO, *, max_member_bytes: int) -> Iterator[list[tuple[str, bytes | None]]]:
    """Lists of ``(name, data)``, one per 1 MiB block read, for each regular file (``data`` None
    for members not kept); members are sliced out of the block (no per-member read or TarInfo).
    See the module docstring for what is checked when; on damage every member before it is
    yielded, then CorruptShard."""
    pending: list[tuple[str, int, int, bool, int]] = []  # (name, data offset, size, kept, header index)
    headers: list[int] = []  # offsets of the headers in buffer not checked yet
    pending_name: str | None = None
    buffer, pos, start_of_buffer = b"", 0, 0  # buffer[pos:] is not parsed yet; buffer[0] is stream byte start_of_buffer
    small_limit = min(max_member_bytes, _MAX_RECORD_BYTES)  # sizes up to this need no further check
    while True:
        if len(buffer) - pos < _BLOCK:
            yield from _flush(buffer, pending, headers)
            start_of_buffer += pos
            buffer, pos = _refill(stream, buffer[pos:], _BLOCK), 0
            if len(buffer) < _BLOCK:
                if buffer:
                    raise CorruptShard(f"truncated tar header at byte {start_of_buffer}")
                return  # end of the stream without the closing zero blocks
        header = buffer[pos:pos + _BLOCK]
        if header == _ZERO_BLOCK:
            yield from _flush(buffer, pending, headers)
            return  # end of archive (a clean end has zero blocks)
        headers.append(pos)
        header_index, kind = len(headers) - 1, header[156]
        name = pending_name or _ustar_name(header) if kind in _FILE_KINDS else ""
        try:
            size, refused = 0 if kind in _NO_DATA_KINDS else _size(header), None
        except ValueError as error:
            size, refused = 0, f"malformed size field ({error})"
        if size > small_limit:
            refused = _too_large(kind, name, size, max_member_bytes)
        if refused:
            yield from _flush(buffer, pending, headers)  # a wrong checksum is reported first
            raise CorruptShard(f"tar header at byte {start_of_buffer + pos}: {refused}")
        kept = kind in (76, 120) or (kind in _FILE_KINDS and _is_kept(name))
        end = pos + _BLOCK + (size + _BLOCK - 1) // _BLOCK * _BLOCK  # > pos: the position always advances
        if end > len(buffer):
            yield from _flush(buffer, pending, headers)  # this header is checked before its size is acted on
            start_of_buffer += pos
            end, header_index = end - pos, -1
            if not kept:
                _discard(stream, end - (len(buffer) - pos))
                buffer, pos, start_of_buffer = b"", 0, start_of_buffer + end
                if kind in _FILE_KINDS:
                    pending.append((name, 0, 0, False, -1))
                pending_name = pending_name if kind in (103, 75) else None
                continue
            buffer, pos = _refill(stream, buffer[pos:], end), 0
            if len(buffer) < end:
                raise CorruptShard(f"truncated tar: member at byte {start_of_buffer} wants {size} bytes, "
                                   f"the stream holds {len(buffer) - _BLOCK}")
        start, pos = pos + _BLOCK, end
        if kind in (76, 120):  # b"L", b"x": GNU long name / pax extended header for the next member
            pending_name = _record_name(kind, buffer[start:start + size])
            continue
        if kind in _FILE_KINDS:
            pending.append((name, start, size, kept, header_index))
        if kind not in (103, 75):  # b"g", b"K": a pax global header / long link name leave a long name in place
            pending_name = None


def iter_samples(stream: BinaryIO, *,
                 max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES) -> Iterator[dict[str, bytes | str]]:
    """Group members into samples: ``{"__key__": key, "png": b"...", "cls": b"3", ...}``.

    Members that were not kept are omitted; ``.pyd`` / ``.pickle`` members therefore never
    reach a decoder. Raises CorruptShard after yielding every complete sample before damage
    (the sample being assembled when the damage is found is dropped: more of it may have followed).
    The key is WebDataset's: everything before the first dot of the file's base name.
    """
    current: dict[str, bytes | str] | None = None
    current_key = None
    for members in _member_lists(stream, max_member_bytes=max_member_bytes):
        for name, data in members:
            directory, _, base = name.rpartition("/")
            stem, _, extension = base.partition(".")
            key = f"{directory}/{stem}" if directory else stem
            if key.startswith("__") and key.endswith("__"):
                continue  # webdataset metadata members
            if key != current_key:
                if current is not None:
                    yield current
                current, current_key = {"__key__": key}, key
            if data is not None:
                current[extension.lower()] = data
    if current is not None:
        yield current
