"""`cvdist shards` on damaged inputs: every converter and the long-tail subset writer, fed files
damaged at random (hypothesis), either succeed or stop with one `cvdist: error:` line (exit 2),
never a traceback, and leave no output directory behind when they stop."""

from __future__ import annotations

import contextlib
import io
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from cvdist.cli import main
from cvdist.data.converters import SourceDataset, array_source_split
from cvdist.data.shard_writer import write_dataset_shards
from tests.helpers.shards import make_cifar10, tar_gz
from tests.test_shard_writer import fake_fashion_mnist

FUZZ = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def damage():
    """A damage to a file: ("cut", where in [0, 1)) or ("byte", where, value)."""
    return st.one_of(st.tuples(st.just("cut"), st.floats(0, 0.999)),
                     st.tuples(st.just("byte"), st.floats(0, 0.999), st.integers(0, 255)))


def damaged(data: bytes, how: tuple) -> bytes:
    at = int(how[1] * len(data))
    if how[0] == "cut":
        return data[:at]
    return data[:at] + bytes([how[2]]) + data[at + 1:]


def run_cli(argv: list[str], out: Path) -> int:
    """``cvdist`` with ``argv``: 0, or 2 with one error line and no ``out`` directory."""
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    if code != 0:
        lines = stderr.getvalue().strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("cvdist: error: "), stderr.getvalue()
        assert not out.exists()
    return code


def converted(argv: list[str]) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        return run_cli([*argv, "--out", str(Path(tmp) / "out"), "--quiet"], Path(tmp) / "out")


@pytest.fixture(scope="module")
def longtail_source(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    splits = {split: array_source_split(rng.integers(0, 256, (24, 8, 8), dtype=np.uint8), np.arange(24) % 4)
              for split in ("train", "test")}
    source = SourceDataset(description="damage test", class_names=list("abcd"), splits=splits)
    directory = tmp_path_factory.mktemp("lt") / "shards"
    write_dataset_shards(source=source, out_dir=directory, samples_per_shard=12)
    return directory


@FUZZ
@given(how=damage())
def test_longtail_writer_on_a_damaged_source_shard(longtail_source, how):
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "source"
        source.mkdir()
        for path in longtail_source.iterdir():
            data = path.read_bytes()
            (source / path.name).write_bytes(damaged(data, how) if path.name == "train-000000.tar" else data)
        run_cli(["shards", "longtail", "--source", str(source), "--imbalance-factor", "2", "--seed", "0",
                 "--out", str(Path(tmp) / "out"), "--quiet"], Path(tmp) / "out")


@FUZZ
@given(how=damage(), content=st.sampled_from(["png", "jpeg_in_png", "eps_in_png", "huge_png"]))
def test_folder_converter_on_damaged_images(tmp_path, how, content):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "images"
        for label in ("cat", "dog"):
            (root / label).mkdir(parents=True)
            Image.fromarray(np.full((8, 8), 9, dtype=np.uint8)).save(root / label / "0.png")
        buffer = io.BytesIO()
        fmt = "JPEG" if content == "jpeg_in_png" else "PNG"
        Image.fromarray(np.full((8, 8), 9, dtype=np.uint8)).save(buffer, format=fmt)
        data = {"eps_in_png": b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n"}.get(content, buffer.getvalue())
        if content == "huge_png":  # IHDR claims 20000 x 20000: refused from the header
            data = data[:16] + (20000).to_bytes(4, "big") * 2 + data[24:]
        (root / "dog" / "1.png").write_bytes(damaged(data, how))
        code = converted(["shards", "folder", "--root", str(root)])
        assert code == 2 or content == "png"


@FUZZ
@given(how=damage())
def test_cifar_converter_on_a_damaged_archive(tmp_path, how):
    with tempfile.TemporaryDirectory() as tmp:
        archive = tar_gz(make_cifar10_once(Path(tmp)), Path(tmp) / "cifar-10-python.tar.gz")
        archive.write_bytes(damaged(archive.read_bytes(), how))
        converted(["shards", "cifar", "--archive", str(archive)])


def make_cifar10_once(tmp: Path) -> Path:
    make_cifar10(tmp / "cifar-10-batches-py")
    return tmp / "cifar-10-batches-py"


@FUZZ
@given(how=damage(), which=st.sampled_from(["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"]))
def test_fashion_mnist_converter_on_damaged_idx_files(tmp_path, how, which):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "fmnist"
        fake_fashion_mnist(root)
        (root / which).write_bytes(damaged((root / which).read_bytes(), how))
        converted(["shards", "fashion-mnist", "--root", str(root)])
