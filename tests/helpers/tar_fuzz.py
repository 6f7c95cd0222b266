"""Mutations of valid tar shards and the contract every mutated shard must meet: shared by the fuzz
test (hypothesis draws the mutations) and ``bench/fuzz_shards.py`` (a seeded random campaign).

A case is a valid base shard (ustar as cvdist writes it; GNU with long names, links, a directory
and a ``.pyd``; pax with long names and a global header) and a list of mutations: bytes anywhere
in a header or a payload, size fields (octal, negative, huge, GNU base-256 positive and negative,
garbage) and type flags with or without a re-computed checksum, zero blocks inserted, blocks
dropped or repeated, truncation at any block. The contract (:func:`run_case`): the tar reader
ends with its samples or :class:`CorruptShard`, never another exception; within a CPU-time bound
(no hang); with bounded memory (traced peak and the largest read it asks of the stream); every
sample it gives decodes or raises an ``Exception`` (counted corrupt by the pipeline), never worse.
"""

from __future__ import annotations

import io
import signal
import tarfile
import tracemalloc
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
from PIL import Image

from cvdist.data.tar_samples import CorruptShard, iter_samples

SIZE_KINDS = ("octal", "huge_octal", "negative", "base256", "base256_negative", "base256_bad_flag", "spaces",
              "garbage")
TYPE_FLAGS = b"0\x0012345677LKxgSVD"
STRUCTURAL = ("zero_blocks", "drop_block", "dup_block", "cut")


class Hang(BaseException):
    """A case ran past its CPU-time bound (a BaseException: no ``except Exception`` may swallow it)."""


@contextmanager
def cpu_time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`Hang` after ``seconds`` of CPU time (SIGPROF: pytest-timeout keeps SIGALRM)."""
    def on_signal(signum, frame):
        raise Hang(f"no result after {seconds} s of CPU time")

    previous = signal.signal(signal.SIGPROF, on_signal)
    signal.setitimer(signal.ITIMER_PROF, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.signal(signal.SIGPROF, previous)


@dataclass(frozen=True)
class Base:
    """A valid shard and the offsets of all its headers (long-name and pax records included)."""

    name: str
    data: bytes
    headers: tuple[int, ...]

    def __repr__(self) -> str:  # a failing case names its base, not 20 kB of bytes
        return f"Base({self.name!r})"


def _image(fmt: str, value: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8), value, dtype=np.uint8)).save(buffer, format=fmt)
    return buffer.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.linkname = kind, len(data), "target.png" if kind in (b"1", b"2") else ""
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def _shard(tar_format: int, prefix: str, extras: bool) -> Base:
    buffer = io.BytesIO()
    pax = {"comment": "global"} if tar_format == tarfile.PAX_FORMAT else None
    with tarfile.open(fileobj=buffer, mode="w", format=tar_format, pax_headers=pax) as tar:
        if extras:
            _add(tar, "dir", kind=tarfile.DIRTYPE)
        for index, fmt in enumerate(("PNG", "JPEG", "WEBP", "PNG")):
            key = f"{prefix}{index:04d}"
            _add(tar, f"{key}.{ {'PNG': 'png', 'JPEG': 'jpg', 'WEBP': 'webp'}[fmt]}", _image(fmt, 40 * index))
            _add(tar, f"{key}.cls", str(index % 3).encode())
            _add(tar, f"{key}.json", b'{"coarse": %d}' % (index % 2))
            if extras:
                _add(tar, f"{key}.pyd", b"\x80\x04K\x01." * 30)
                _add(tar, f"{key}.lnk.png", kind=tarfile.SYMTYPE)
                _add(tar, f"{key}.hard.png", kind=tarfile.LNKTYPE)
    data = buffer.getvalue()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        headers = sorted({o for info in tar.getmembers() for o in (info.offset, info.offset_data - 512)})
    name = {tarfile.USTAR_FORMAT: "ustar", tarfile.GNU_FORMAT: "gnu", tarfile.PAX_FORMAT: "pax"}[tar_format]
    return Base(name=name, data=data, headers=tuple(headers))


def base_shards() -> list[Base]:
    """The valid shards mutations start from (ustar, GNU long names + links, pax long names)."""
    long = "d/" + "x" * 110 + "/s"
    return [_shard(tarfile.USTAR_FORMAT, "train-", extras=False), _shard(tarfile.GNU_FORMAT, long, extras=True),
            _shard(tarfile.PAX_FORMAT, long, extras=True)]


def _size_field(kind: str, number: int) -> bytes:
    return {"octal": b"%011o\0" % (number % 8 ** 11), "huge_octal": b"77777777777\0",
            "negative": b"-%010o\0" % (number % 8 ** 10), "base256": b"\x80" + (number % 2 ** 88).to_bytes(11, "big"),
            "base256_negative": b"\xff" + (number % 2 ** 88).to_bytes(11, "big"),
            "base256_bad_flag": bytes([0x81 + number % 0x7e]) + bytes(11), "spaces": b" " * 12,
            "garbage": (number % 2 ** 96).to_bytes(12, "big")}[kind]


def _set(data: bytearray, offset: int, value: bytes, fix_checksum: bool) -> None:
    data[offset:offset + len(value)] = value
    if fix_checksum:
        header = offset - offset % 512
        data[header + 148:header + 156] = b" " * 8
        data[header + 148:header + 156] = b"%06o\0 " % sum(data[header:header + 512])


def mutate(base: Base, mutations: Sequence[tuple]) -> bytes:
    """``base`` with ``mutations`` applied in order (see :func:`random_mutations` for their forms)."""
    data = bytearray(base.data)
    for op, *args in mutations:
        if op in STRUCTURAL:
            blocks = max(len(data) // 512, 1)
            at = int(args[0] * blocks) * 512
            if op == "zero_blocks":
                data[at:at] = bytes(512 * args[1])
            elif op == "drop_block":
                del data[at:at + 512]
            elif op == "dup_block":
                data[at:at] = data[at:at + 512]
            else:
                del data[at + args[1]:]
            continue
        header = base.headers[args[0] % len(base.headers)]
        if header + 512 > len(data):
            continue
        if op == "header_byte":
            _set(data, header + args[1] % 512, bytes([args[2]]), args[3])
        elif op == "size":
            _set(data, header + 124, _size_field(args[1], args[2]), args[3])
        elif op == "type":
            _set(data, header + 156, bytes([TYPE_FLAGS[args[1] % len(TYPE_FLAGS)]]), args[2])
        elif op == "payload_byte":
            at = header + 512 + args[1] % 4096
            if at < len(data):
                data[at] = args[2]
    return bytes(data)


def random_mutations(rng: np.random.Generator, count: int) -> list[tuple]:
    """``count`` mutations drawn with ``rng`` (the campaign's form of hypothesis' strategy)."""
    out: list[tuple] = []
    for _ in range(count):
        op = rng.choice(["header_byte", "size", "type", "payload_byte", *STRUCTURAL])
        header, fix, value = int(rng.integers(0, 1000)), bool(rng.random() < 0.7), int(rng.integers(0, 256))
        out.append({"header_byte": (op, header, int(rng.integers(0, 512)), value, fix),
                    "size": (op, header, str(rng.choice(SIZE_KINDS)), int(rng.integers(0, 2 ** 62)) ** 2 >> 20, fix),
                    "type": (op, header, int(rng.integers(0, len(TYPE_FLAGS))), fix),
                    "payload_byte": (op, header, int(rng.integers(0, 4096)), value),
                    "zero_blocks": (op, float(rng.random()), int(rng.integers(1, 4))),
                    "drop_block": (op, float(rng.random())), "dup_block": (op, float(rng.random())),
                    "cut": (op, float(rng.random()), int(rng.integers(0, 512)))}[str(op)])
    return out


class ReadRecorder(io.BytesIO):
    """A stream recording the largest read asked of it: what a reader could have allocated."""

    largest = 0

    def read(self, size=-1):
        self.largest = max(self.largest, size if size is not None and size >= 0 else len(self.getbuffer()))
        return super().read(size)


@dataclass
class Outcome:
    """What one case did: ``status`` is clean, corrupt, hang or crash (the last two break the contract)."""

    status: str
    detail: str = ""
    samples: int = 0
    decoded: int = 0
    refused: int = 0
    peak_bytes: int = 0
    largest_read: int = 0


def run_case(data: bytes, *, max_member_bytes: int, decoders: Sequence[Callable], cpu_seconds: float) -> Outcome:
    """Read ``data`` with the tar reader (traced memory), then decode each sample with each decoder."""
    stream, samples = ReadRecorder(data), []
    tracemalloc.start()
    try:
        with cpu_time_limit(cpu_seconds):
            try:
                samples.extend(iter_samples(stream, max_member_bytes=max_member_bytes))
                outcome = Outcome("clean")
            except CorruptShard as error:
                outcome = Outcome("corrupt", str(error))
            except Exception as error:  # noqa: BLE001 - the contract breach being looked for
                outcome = Outcome("crash", f"reader: {type(error).__name__}: {error}")
    except Hang as error:
        outcome = Outcome("hang", f"reader: {error}")
    finally:
        outcome_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    outcome.samples, outcome.peak_bytes, outcome.largest_read = len(samples), outcome_peak, stream.largest
    if outcome.status in ("clean", "corrupt"):
        _decode_all(samples, decoders, cpu_seconds, outcome)
    return outcome


def _decode_all(samples: list[dict], decoders: Sequence[Callable], cpu_seconds: float, outcome: Outcome) -> None:
    try:
        with cpu_time_limit(cpu_seconds):
            for sample in samples:
                for decoder in decoders:
                    try:
                        decoder(sample)
                        outcome.decoded += 1
                    except Exception:  # noqa: BLE001 - a corrupt sample, counted by the pipeline
                        outcome.refused += 1
    except Hang as error:
        outcome.status, outcome.detail = "hang", f"decoder: {error}"
