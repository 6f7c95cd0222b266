"""The block-buffered tar reader: same members as tarfile, damage found at the same place."""

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
