"""The block-buffered tar reader: same members as tarfile, damage found at the same place; hostile
headers (malformed or huge sizes, oversized members, links with sizes, undecodable names) refused
or skipped in bounded reads."""

from __future__ import annotations

import io
import tarfile

import pytest

from cvdist.data import tar_samples
from cvdist.data.tar_samples import CorruptShard, iter_samples, iter_tar_members


def build_tar(tar_format: int) -> tuple[bytes, list[tarfile.TarInfo]]:
    """Members of several sizes, a long name (GNU / pax header before it), a directory, a .pyd."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tar_format) as tar:
        directory = tarfile.TarInfo("d")
        directory.type = tarfile.DIRTYPE
        tar.addfile(directory)
        members = [("a/s0.png", 700), ("a/s0.cls", 1), ("a/s0.pyd", 40), ("a/" + "x" * 120 + ".png", 3000),
                   ("a/" + "x" * 120 + ".cls", 2), ("s2.jpg", 0), ("s2.cls", 1), ("s3.json", 2100)]
        for index, (name, size) in enumerate(members):
            info = tarfile.TarInfo(name)
            info.size = size
            tar.addfile(info, io.BytesIO(bytes((index * 7 + i) % 251 for i in range(size))))
    data = buffer.getvalue()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return data, tar.getmembers()


def padded(size: int) -> int:
    return (size + 511) // 512 * 512


def expected(data: bytes, infos: list[tarfile.TarInfo], length: int) -> tuple[list, bool]:
    """What the reader must give for ``data[:length]``: complete regular members, and whether
    the cut lies inside a header or a member (an error) rather than between them."""
    members, clean = [], {0}
    for info in infos:
        end = info.offset_data + padded(info.size)
        clean.update({end, info.offset_data - 512})  # after the member; after a long-name header
        if info.isfile() and end <= length:
            kept = info.name.rsplit(".", 1)[-1] in tar_samples.KEPT_EXTENSIONS
            members.append((info.name, data[info.offset_data:info.offset_data + info.size] if kept else None))
    archive_end = max(info.offset_data + padded(info.size) for info in infos)
    return members, not (length in clean or length >= archive_end + 512)


def read_members(data: bytes) -> tuple[list, bool]:
    got = []
    try:
        for member in iter_tar_members(io.BytesIO(data)):
            got.append(member)
    except CorruptShard:
        return got, True
    return got, False


@pytest.mark.parametrize("chunk", [1024, 1 << 20])
@pytest.mark.parametrize("tar_format", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_members_and_truncation_match_tarfile(monkeypatch, chunk, tar_format):
    monkeypatch.setattr(tar_samples, "_CHUNK", chunk)
    data, infos = build_tar(tar_format)
    assert read_members(data) == expected(data, infos, len(data))
    for length in sorted(set(range(0, len(data), 97)) | {info.offset_data + d for info in infos for d in (-1, 0, 1)}):
        if 0 <= length <= len(data):
            assert read_members(data[:length]) == expected(data, infos, length), length


@pytest.mark.parametrize("chunk", [1024, 1 << 20])
def test_bad_checksum_stops_after_the_members_before_it(monkeypatch, chunk):
    monkeypatch.setattr(tar_samples, "_CHUNK", chunk)
    data, infos = build_tar(tarfile.GNU_FORMAT)
    damaged = next(info for info in infos if info.name == "s2.cls")
    broken = bytearray(data)
    broken[damaged.offset + 3] ^= 0x55  # inside the name: the header checksum no longer matches
    got, raised = read_members(bytes(broken))
    assert raised
    assert [name for name, _ in got] == [info.name for info in infos if info.isfile()][:6]  # up to s2.jpg


def test_samples_group_members_and_drop_pickles():
    data, _ = build_tar(tarfile.GNU_FORMAT)
    samples = list(iter_samples(io.BytesIO(data)))
    assert [sorted(sample) for sample in samples] == [["__key__", "cls", "png"]] * 2 + [
        ["__key__", "cls", "jpg"], ["__key__", "json"]]
    assert samples[2]["jpg"] == b""


class ReadRecorder(io.BytesIO):
    """A stream that records the largest read asked of it (what a reader could allocate)."""

    largest = 0

    def read(self, size=-1):
        self.largest = max(self.largest, size if size >= 0 else len(self.getbuffer()))
        return super().read(size)


def with_field(data: bytes, header_offset: int, start: int, value: bytes, *, fix_checksum: bool = True) -> bytes:
    """``data`` with the header at ``header_offset`` given ``value`` at ``start`` (checksum re-computed)."""
    header = bytearray(data[header_offset:header_offset + 512])
    header[start:start + len(value)] = value
    if fix_checksum:
        header[148:156] = b" " * 8
        header[148:156] = b"%06o\0 " % sum(header)
    return data[:header_offset] + bytes(header) + data[header_offset + 512:]


def member_header(data: bytes, name: str) -> int:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return next(info.offset for info in tar.getmembers() if info.name == name)


@pytest.mark.parametrize("size_field, problem", [
    (b"-0000000001\0", "not octal"), (b"+0000000001\0", "not octal"), (b"0000000_001\0", "not octal"),
    (b"\xff" * 12, "negative"), (b"\x80" + b"\xff" * 11, "above 2\\*\\*63"), (b"\x81" + bytes(11), "negative"),
    (b"00000000009\0", "malformed size"),
])
def test_malformed_sizes_under_a_correct_checksum_are_corrupt(size_field, problem):
    data, _ = build_tar(tarfile.GNU_FORMAT)
    damaged = with_field(data, member_header(data, "s2.cls"), 124, size_field)
    with pytest.raises(CorruptShard, match=problem):
        list(iter_tar_members(io.BytesIO(damaged)))


def test_a_bad_checksum_is_reported_before_a_malformed_size():
    data, _ = build_tar(tarfile.GNU_FORMAT)
    damaged = with_field(data, member_header(data, "s2.cls"), 124, b"-0000000001\0", fix_checksum=False)
    with pytest.raises(CorruptShard, match="checksum"):
        list(iter_tar_members(io.BytesIO(damaged)))


@pytest.mark.parametrize("size", [10 ** 6, 2 ** 40, 2 ** 62])
def test_a_kept_member_above_the_limit_is_refused_before_it_is_read(size):
    data, _ = build_tar(tarfile.GNU_FORMAT)
    field = b"%011o\0" % size if size < 8 ** 11 else b"\x80" + size.to_bytes(11, "big")
    stream = ReadRecorder(with_field(data, member_header(data, "s2.cls"), 124, field))
    with pytest.raises(CorruptShard, match="more than data.max_member_bytes=4096"):
        list(iter_tar_members(stream, max_member_bytes=4096))
    assert stream.largest <= tar_samples._CHUNK


def test_members_not_kept_are_skipped_in_bounded_chunks(monkeypatch):
    monkeypatch.setattr(tar_samples, "_CHUNK", 4096)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, size in (("a.npy", 3 << 20), ("a.cls", 1), ("b.pyd", 100_000), ("b.png", 5)):
            info = tarfile.TarInfo(name)
            info.size = size
            tar.addfile(info, io.BytesIO(bytes(size)))
    stream = ReadRecorder(buffer.getvalue())
    got = list(iter_tar_members(stream, max_member_bytes=1024))  # the 3 MiB member is not kept: no limit
    assert got == [("a.npy", None), ("a.cls", b"\0"), ("b.pyd", None), ("b.png", bytes(5))]
    assert stream.largest <= 4096
    with pytest.raises(CorruptShard, match="past the end"):  # a skipped member cut short is still damage
        list(iter_tar_members(ReadRecorder(buffer.getvalue()[:1 << 20])))


def test_links_and_directories_carry_no_data_and_names_never_fail_to_decode():
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, kind in (("d", tarfile.DIRTYPE), ("l.png", tarfile.SYMTYPE), ("h.png", tarfile.LNKTYPE)):
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, "x.png"
            tar.addfile(info)
        info = tarfile.TarInfo("x.png")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    data = buffer.getvalue()
    # A directory whose size field claims data: tarfile reads none after it, and neither does cvdist.
    data = with_field(data, member_header(data, "d"), 124, b"%011o\0" % 5000)
    data = with_field(data, member_header(data, "x.png"), 0, b"\xff\xfe.png\0")
    assert list(iter_tar_members(io.BytesIO(data))) == [("\ufffd\ufffd.png", b"abc")]
