"""Benchmark: images/s of cvdist's streaming pipeline against stock loaders and a bare decode loop.
Not a test: it prints numbers and ratios.

    .venv/bin/python bench/data_throughput.py            # full run, ~25 minutes on 2 CPU cores
    .venv/bin/python bench/data_throughput.py --quick    # smoke run, under a minute on 2 idle cores

Two data sets, both real images:

- ``small``: Fashion-MNIST (28x28 grey PNG) from its IDX files, written to shards by cvdist's own
  shard writer; transform ``build_transform(preset="flip", image_size=28, grey=True)``.
- ``photo``: ~400x500 RGB JPEGs (quality 90), random crops / scales / flips of the photographs
  scikit-learn ships (``load_sample_images``); transform ``preset="standard"``
  (RandomResizedCrop(224) + flip + normalise).
- ``large``: 1000x1250 RGB JPEGs (1.25 megapixels, quality 90) made the same way (sklearn's
  photos scaled 2.4-2.8x, so smoother than a camera's photo of that size); same transform.

Rows, run alternately (a, b, c, ..., a, b, ...) in one process for each worker count; the
median over rounds is reported. Every row times DataLoader creation (worker start-up included)
plus one full pass; every row uses the same transform object and reads the same image bytes.

a. cvdist: ``ShardStream`` + ``Decoder`` (shuffle buffer 1000, per-sample seeding; a JPEG under a
   leading random-resized crop has only the crop's region decoded, cvdist/data/jpeg_region.py,
   others whole by simplejpeg into the same pixels as PIL's, cvdist/data/jpeg_decode.py). Its
   workers send uint8 batches and the main process converts and normalises them (timed here: the
   row delivers the float normalised batches a training step receives).
b. stock webdataset: ``WebDataset(urls).shuffle(1000).decode("pill"/"pil").to_tuple(...)
   .map_tuple(transform, int).batched(B)`` in a ``DataLoader`` with the same worker count
   (``pill`` keeps grey images grey: plain ``pil`` converts them to RGB).
c. torchvision ``ImageFolder`` over the same bytes written as files (shuffle=True; a loader that
   keeps the file's mode, as (a) and (b) do).
d. ceiling: PIL decode + the same transform (to float normalised tensors, per image) over
   in-memory bytes, nothing else (no tar parsing,
   shuffling, batching, collation or transfer to the main process). 0 workers: a loop in this
   process; W > 0: a fork ``Pool`` of W processes (started inside the timed region, like
   DataLoader workers), each taking 1/W of the images.
e. cvdist with :class:`cvdist.data.fast_decode.FastDecoder` (small images only: it covers the
   ``none`` / ``flip`` presets); it checks first that its tensors equal Decoder's bit for bit.
f. the fast ceiling: (d) with FastDecoder's per-image work, the bound for (e).
g. cvdist draft (photos only): (a) with the decoder recipes use on photos by default
   (``data.jpeg_draft=true``): JPEGs whose crop is at least twice the target decoded at 1/2-1/8.
h. cvdist draft, persistent (photos only): (g) with its workers kept across passes, as recipes
   run (``data.persistent_workers=true``): only the first round starts them, so the median is an
   epoch without worker start-up.
i. ceiling, pool kept (photos only): (d) with its process pool kept across passes, started in the
   first round: the ceiling to compare (h) with.

Each row prints img/s (wall clock) and img per CPU-second (user + system time of this process and
its workers): on a shared machine the second is the steadier measure of per-image cost.
Torch runs with one intra-op thread in this process (``--threads``), as in DataLoader workers, so
0 workers means one core. The machine this was written on is shared (2 cores, other engineers'
jobs running): wall-clock figures vary by 10-30 % from round to round, more under heavy load.
"""

from __future__ import annotations

import argparse
import io
import multiprocessing
import os
import statistics
import tempfile
import time
import warnings
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from cvdist.data.converters import Sample, build_fashion_mnist_source
from cvdist.data.decode import Decoder
from cvdist.data.shard_writer import write_dataset_shards, write_split_shards
from cvdist.data.shard_sources import read_intact_shard
from cvdist.data.stream import DataError, ShardSet, ShardStream
from cvdist.data.transforms import build_transform

FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
SHUFFLE_BUFFER = 1000
NUM_SHARDS = 10
ROWS = ("cvdist", "cvdist draft", "cvdist draft, persistent", "webdataset", "ImageFolder", "ceiling",
        "ceiling, pool kept", "cvdist fast", "ceiling fast")


@dataclass
class BenchData:
    """One data set in every form the rows read: shards, files on disk, bytes in memory."""

    name: str
    urls: list[str]
    shard_sizes: list[int]
    class_counts: list[int]
    folder: str
    images: list[bytes]
    grey: bool
    batch_size: int
    transform_options: dict
    fast_ok: bool
    """Whether FastDecoder covers this data set's transform preset."""

    def normalisation(self) -> dict:
        """The ``mean`` / ``std`` every row normalises with (grey: 0.5; colour: ImageNet's)."""
        if self.grey:
            return {"mean": [0.5], "std": [0.5]}
        return {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}

    def transform(self):
        """A fresh transform of this data set's preset (picklable, used by every row)."""
        return build_transform(**self.normalisation(), grey=self.grey, train=True, **self.transform_options)


def _read_back(urls: list[str], image_ext: str) -> tuple[list[bytes], list[int]]:
    """The image bytes and labels of the shards, read with cvdist's tar reader (the exact bytes)."""
    images, labels = [], []
    for url in urls:
        for sample in read_intact_shard(url):
            images.append(sample[image_ext])
            labels.append(int(sample["cls"]))
    return images, labels


def _write_folder(root: Path, images: list[bytes], labels: list[int], ext: str) -> None:
    for index, (data, label) in enumerate(zip(images, labels)):
        directory = root / f"class{label:02d}"
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"{index:08d}.{ext}").write_bytes(data)


def prepare_small(workdir: Path, num_images: int, root: str) -> BenchData:
    """Fashion-MNIST train images (first ``num_images``) as 10 PNG shards + an image folder."""
    source = build_fashion_mnist_source(root=root, limit=num_images)
    manifest = write_dataset_shards(source=source, out_dir=workdir / "fmnist-shards", image_format="png",
                                    samples_per_shard=-(-num_images // NUM_SHARDS))
    urls = manifest.shard_paths("train")
    images, labels = _read_back(urls, "png")
    _write_folder(workdir / "fmnist-folder", images, labels, "png")
    return BenchData(name="small", urls=urls, shard_sizes=manifest.shard_sample_counts("train"),
                     class_counts=manifest.class_counts("train"), folder=str(workdir / "fmnist-folder"),
                     images=images, grey=True, batch_size=256, fast_ok=True,
                     transform_options=dict(preset="flip", image_size=28))


PHOTO_SIZES = {"photo": ((400, 500), (1.0, 1.3)), "large": ((1000, 1250), (2.4, 2.8))}
"""Photo data set -> ((height, width) of its JPEGs, range of the scale applied to sklearn's
427 x 640 photos before cropping)."""


def _photo_jpegs(num_images: int, *, size: str, seed: int = 0) -> list[tuple[bytes, int]]:
    """Varied crops (random scale, offset, flip) of sklearn's photos at ``PHOTO_SIZES[size]``, JPEG q=90."""
    from sklearn.datasets import load_sample_images  # `pip install -e '.[bench]'` (bench only)

    photos = [Image.fromarray(array) for array in load_sample_images().images]
    (height, width), (low, high) = PHOTO_SIZES[size]
    rng = np.random.default_rng(seed)
    out = []
    for index in range(num_images):
        label = index % len(photos)
        photo = photos[label]
        scale = rng.uniform(low, high)
        scaled = photo.resize((round(photo.width * scale), round(photo.height * scale)), Image.BILINEAR)
        top, left = rng.integers(0, scaled.height - height + 1), rng.integers(0, scaled.width - width + 1)
        crop = scaled.crop((left, top, left + width, top + height))
        if rng.random() < 0.5:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        buffer = io.BytesIO()
        crop.save(buffer, format="JPEG", quality=90)
        out.append((buffer.getvalue(), label))
    return out


def prepare_photo(workdir: Path, num_images: int, size: str = "photo") -> BenchData:
    """Photo-sized JPEGs (``size``: a key of PHOTO_SIZES) as 10 shards (cvdist's split writer,
    bytes copied) + an image folder."""
    jpegs = _photo_jpegs(num_images, size=size)
    directory = workdir / f"{size}-shards"
    directory.mkdir()
    samples = (Sample(label=label, image_bytes=data, key=f"photo-{i:08d}") for i, (data, label) in enumerate(jpegs))
    split = write_split_shards(samples=samples, directory=directory, split="train", num_classes=2,
                               samples_per_shard=-(-num_images // NUM_SHARDS), image_format="jpg")
    urls = [str(directory / shard.file) for shard in split.shards]
    images, labels = _read_back(urls, "jpg")
    _write_folder(workdir / f"{size}-folder", images, labels, "jpg")
    return BenchData(name=size, urls=urls, shard_sizes=[s.num_samples for s in split.shards],
                     class_counts=split.class_counts, folder=str(workdir / f"{size}-folder"), images=images,
                     grey=False, batch_size=32, fast_ok=False,
                     transform_options=dict(preset="standard", image_size=224))


# ----------------------------------------------------------------------------------------------
# The rows. Each returns the number of images delivered; the caller times it.

def _count(loader) -> int:
    total = 0
    for batch in loader:
        images = batch["image"] if isinstance(batch, dict) else batch[0]
        total += images.shape[0]
    return total


def run_cvdist(stream: ShardStream, epoch: int) -> int:
    """(a)/(e) one epoch of cvdist's pipeline."""
    return _count(stream.iterate(epoch=epoch))


def make_cvdist(data: BenchData, workers: int, decoder, *, persistent: bool = False) -> ShardStream:
    """cvdist's stream over the shards, one rank, as a recipe builds it (seeded, shuffled)."""
    source = ShardSet(urls=data.urls, shard_sizes=data.shard_sizes, class_counts=data.class_counts)
    # Workers start for every pass, as every other row's do (their start-up is timed), except in
    # row (h); keeping them across many short epochs is measured by bench/persistent_workers.py.
    return ShardStream(sources=[source], rank=0, world_size=1, num_workers=workers, batch_size=data.batch_size,
                       seed=0, decoder=decoder, shuffle_buffer=SHUFFLE_BUFFER, persistent_workers=persistent)


def make_webdataset(data: BenchData, transform):
    """(b) the minimal stock webdataset pipeline (``pill`` keeps grey images grey)."""
    import webdataset as wds

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset = wds.WebDataset(data.urls, shardshuffle=len(data.urls), empty_check=False)
    return (dataset.shuffle(SHUFFLE_BUFFER).decode("pill" if data.grey else "pil")
            .to_tuple("png;jpg", "cls").map_tuple(transform, int).batched(data.batch_size))


def run_webdataset(dataset, workers: int, epoch: int) -> int:
    """(b) one pass of the webdataset pipeline through a DataLoader (it batches itself)."""
    return _count(DataLoader(dataset, batch_size=None, num_workers=workers))


def open_image(path: str) -> Image.Image:
    """ImageFolder loader that keeps the file's mode (torchvision's default converts to RGB)."""
    with open(path, "rb") as handle:
        image = Image.open(handle)
        image.load()
    return image


def run_folder(dataset, batch_size: int, workers: int, epoch: int) -> int:
    """(c) torchvision ImageFolder + DataLoader, shuffled."""
    return _count(DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers))


_CEILING: dict = {}  # the bytes and the decode function, inherited by forked pool workers


def decode_with_transform(transform, data: bytes) -> None:
    """The ceiling's per-image work: PIL decode + the transform, nothing else."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        transform(image)


def decode_with_fast(fast, data: bytes) -> None:
    """The fast ceiling's per-image work: FastDecoder on a bare in-memory sample."""
    fast({"__key__": "k", "png": data, "cls": b"0"})


def _ceiling_chunk(bounds: tuple[int, int]) -> int:
    decode = _CEILING["decode"]
    for data in _CEILING["images"][bounds[0]:bounds[1]]:
        decode(data)
    return bounds[1] - bounds[0]


def _one_thread() -> None:
    torch.set_num_threads(1)


def run_ceiling(data: BenchData, decode: Callable[[bytes], None], workers: int, epoch: int) -> int:
    """(d)/(f) decode only; W forked processes for W > 0 (start-up timed, as for DataLoader workers)."""
    _CEILING.update(images=data.images, decode=decode)
    count = len(data.images)
    if workers == 0:
        return _ceiling_chunk((0, count))
    edges = [count * i // workers for i in range(workers + 1)]
    with multiprocessing.get_context("fork").Pool(workers, initializer=_one_thread) as pool:
        return sum(pool.map(_ceiling_chunk, list(zip(edges[:-1], edges[1:]))))


class PooledCeiling:
    """(i) the ceiling with its process pool kept across passes: the bound for row (h), whose
    workers live across passes too (0 workers: the plain ceiling loop)."""

    def __init__(self, data: BenchData, decode: Callable[[bytes], None], workers: int):
        self.data, self.decode, self.workers, self.pool = data, decode, workers, None

    def __call__(self, epoch: int) -> int:
        count = len(self.data.images)
        if self.workers == 0:
            return run_ceiling(self.data, self.decode, 0, epoch)
        if self.pool is None:  # (the first pass starts it, as row (h)'s first pass starts its workers)
            _CEILING.update(images=self.data.images, decode=self.decode)  # (the pool's copy, from the fork)
            self.pool = multiprocessing.get_context("fork").Pool(self.workers, initializer=_one_thread)
        edges = [count * i // self.workers for i in range(self.workers + 1)]
        return sum(self.pool.map(_ceiling_chunk, list(zip(edges[:-1], edges[1:]))))

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool.join()


# ----------------------------------------------------------------------------------------------

def fast_decoder(data: BenchData) -> Optional[Callable]:
    """cvdist's FastDecoder for this data set, or None where it does not apply."""
    if not data.fast_ok:
        return None
    from cvdist.data.fast_decode import FastDecoder

    return FastDecoder(**data.normalisation(), grey=data.grey, train=True, num_classes=len(data.class_counts),
                       **data.transform_options)


def draft_decoder(data: BenchData) -> Optional[Callable]:
    """The decoder recipes use on photos (``data.jpeg_draft=true``, the default): JPEGs decoded at
    reduced scale where the crop allows; None for the small images (FastDecoder's domain)."""
    if data.fast_ok:
        return None
    from cvdist.data.fast_decode import build_decoder

    return build_decoder(**data.normalisation(), grey=False, train=True,
                         num_classes=len(data.class_counts), jpeg_draft=True, **data.transform_options)


def check_same_output(data: BenchData, fast, reference, num_samples: int = 200) -> None:
    """FastDecoder must give Decoder's exact tensors under the same per-sample torch seed."""
    for index, sample in zip(range(num_samples), read_intact_shard(data.urls[0])):
        torch.default_generator.manual_seed(index)
        expected = reference(sample)
        torch.default_generator.manual_seed(index)
        got = fast(sample)
        if not (torch.equal(expected[0], got[0]) and expected[1:] == got[1:]):
            raise AssertionError(f"FastDecoder differs from Decoder on sample {sample['__key__']}")
    print(f"  check: FastDecoder == Decoder (bitwise, same seeds) on {num_samples} {data.name} samples")


def _cpu_seconds() -> float:
    """User + system CPU time of this process and its children (DataLoader / pool workers): the
    reaped ones from ``os.times``, the living ones (persistent workers) from ``/proc``."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system + _living_children_cpu()


def _living_children_cpu() -> float:
    """CPU seconds used so far by this process's living children (Linux ``/proc``; 0 elsewhere)."""
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    total = 0.0
    for task in Path(f"/proc/{os.getpid()}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for pid in children:
            try:  # fields after the command name: utime and stime are the 12th and 13th
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:  # reaped meanwhile: its time is in os.times' children now
                continue
            total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def bench_size(data: BenchData, worker_counts: list[int], rounds: int) -> dict:
    """Alternated rounds of every row for each worker count.

    Returns ``{(row, workers): [(img/s, img per CPU-second), ...]}``, one pair per round.
    """
    from torchvision.datasets import ImageFolder

    transform = data.transform()
    reference = Decoder(transform, num_classes=len(data.class_counts))
    fast = fast_decoder(data)
    if fast is not None:
        check_same_output(data, fast, reference)
    folder = ImageFolder(data.folder, transform=transform, loader=open_image)
    results: dict = {}
    for workers in worker_counts:
        rows: dict[str, Callable[[int], int]] = {
            "cvdist": partial(run_cvdist, make_cvdist(data, workers, reference)),
            "webdataset": partial(run_webdataset, make_webdataset(data, transform), workers),
            "ImageFolder": partial(run_folder, folder, data.batch_size, workers),
            "ceiling": partial(run_ceiling, data, partial(decode_with_transform, transform), workers),
        }
        draft = draft_decoder(data)
        if draft is not None:
            rows["cvdist draft"] = partial(run_cvdist, make_cvdist(data, workers, draft))
            rows["cvdist draft, persistent"] = partial(run_cvdist, make_cvdist(data, workers, draft, persistent=True))
            rows["ceiling, pool kept"] = PooledCeiling(data, partial(decode_with_transform, transform), workers)
        if fast is not None:
            rows["cvdist fast"] = partial(run_cvdist, make_cvdist(data, workers, fast))
            rows["ceiling fast"] = partial(run_ceiling, data, partial(decode_with_fast, fast), workers)
        for round_index in range(rounds):
            for row, run in rows.items():
                start, cpu_start = time.perf_counter(), _cpu_seconds()
                count = run(round_index)
                rate = count / (time.perf_counter() - start)
                per_cpu = count / max(_cpu_seconds() - cpu_start, 1e-9)
                results.setdefault((row, workers), []).append((rate, per_cpu))
                print(f"  {data.name:5s} workers={workers} round {round_index + 1}/{rounds} {row:24s} "
                      f"{count:6d} img {rate:8.0f} img/s {per_cpu:8.0f} img/CPU-s", flush=True)
        for run in rows.values():
            if isinstance(run, PooledCeiling):
                run.close()
    return results


RATIOS = [("cvdist", "ceiling"), ("cvdist", "webdataset"), ("cvdist", "ImageFolder"), ("cvdist draft", "ceiling"),
          ("cvdist draft, persistent", "ceiling"), ("cvdist draft, persistent", "ceiling, pool kept"),
          ("cvdist draft", "webdataset"), ("cvdist draft", "ImageFolder"), ("cvdist fast", "cvdist"),
          ("cvdist fast", "ceiling fast"), ("cvdist fast", "ceiling"), ("cvdist fast", "webdataset"),
          ("cvdist fast", "ImageFolder")]


def print_table(all_results: dict[str, dict], worker_counts: list[int], rounds: int) -> None:
    """Medians per row and worker count (img/s, then img per CPU-second), then the ratios of img/s."""
    columns = "".join(f"{f'{w} workers':>12s}" for w in worker_counts)
    medians: dict = {}
    for index, unit in enumerate(["img/s (wall clock)", "img per CPU-second (all processes; robust to load)"]):
        print(f"\n{unit}, median of {rounds} round(s); shared 2-core machine, other jobs running")
        print(f"{'size':6s} {'row':26s}{columns}\n" + "-" * (33 + len(columns)))
        for size, results in all_results.items():
            for row in ROWS:
                if (row, worker_counts[0]) in results:
                    values = [statistics.median(r[index] for r in results[(row, w)]) for w in worker_counts]
                    medians.update({(index, size, row, w): v for w, v in zip(worker_counts, values)})
                    print(f"{size:6s} {row:26s}" + "".join(f"{v:12.0f}" for v in values))
    print("\nratios of img/s, of the medians above (targets: small images cvdist / ceiling >= 0.80; photos "
          "cvdist draft / ceiling >= 1.3 and / webdataset >= 1.5)")
    _print_ratios(all_results, worker_counts, lambda size, top, bottom, w:
                  medians[(0, size, top, w)] / medians[(0, size, bottom, w)])
    print("\nmedian of the per-round ratios of img/s (a round runs the rows back to back, so a change of load "
          "between rounds cancels out)")
    _print_ratios(all_results, worker_counts, lambda size, top, bottom, w: statistics.median(
        a[0] / b[0] for a, b in zip(all_results[size][(top, w)], all_results[size][(bottom, w)])))


def _print_ratios(all_results: dict[str, dict], worker_counts: list[int], ratio: Callable) -> None:
    """One line per size and pair of :data:`RATIOS` measured, ``ratio(size, top, bottom, workers)``
    for each worker count."""
    columns = "".join(f"{f'{w} workers':>12s}" for w in worker_counts)
    print(f"{'size':6s} {'ratio':46s}{columns}\n" + "-" * (53 + len(columns)))
    for size, results in all_results.items():
        for top, bottom in RATIOS:
            if (top, worker_counts[0]) in results and (bottom, worker_counts[0]) in results:
                values = [ratio(size, top, bottom, w) for w in worker_counts]
                print(f"{size:6s} {f'{top} / {bottom}':46s}" + "".join(f"{v:12.2f}" for v in values))


def main() -> None:
    """Parse the options, write the data sets into a temporary directory, run and print."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few images, one round (< 1 minute)")
    parser.add_argument("--small-images", type=int, default=10_000, help="Fashion-MNIST images (max 60000)")
    # 3,000: a pass of ~2-3 s, where per-pass costs (worker start, a shuffle buffer of 1,000
    # filled before the first batch, the last batches' imbalance between workers) stop dominating
    # a per-image measure, as in real epochs of 10^4-10^6 photos; --photo-images 1000 shows them.
    parser.add_argument("--photo-images", type=int, default=3_000, help="400x500 JPEGs")
    parser.add_argument("--large-images", type=int, default=300, help="1000x1250 JPEGs (1.25 megapixels)")
    parser.add_argument("--rounds", type=int, default=3, help="alternated rounds; the median is reported")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="DataLoader worker counts")
    parser.add_argument("--sizes", nargs="+", default=["small", "photo", "large"],
                        choices=["small", "photo", "large"])
    parser.add_argument("--fashion-mnist-root", default=FASHION_MNIST_ROOT, help="directory of the IDX files")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads in this process")
    args = parser.parse_args()
    if args.quick:
        args.small_images, args.photo_images, args.large_images, args.rounds = 1_500, 128, 128, 1
    torch.set_num_threads(args.threads)
    print(f"data throughput benchmark: {args.small_images} small / {args.photo_images} photo / "
          f"{args.large_images} large images, "
          f"workers {args.workers}, {args.rounds} round(s), torch threads {args.threads}, "
          f"{multiprocessing.cpu_count()} CPUs (shared machine, load average {os.getloadavg()[0]:.1f})", flush=True)
    all_results = {}
    with tempfile.TemporaryDirectory(prefix="cvdist-bench-") as tmp:
        for size in args.sizes:
            start = time.perf_counter()
            if size == "small":
                data = prepare_small(Path(tmp), args.small_images, args.fashion_mnist_root)
            else:
                count = args.photo_images if size == "photo" else args.large_images
                data = prepare_photo(Path(tmp), count, size=size)
            print(f"{size}: {len(data.images)} images in {len(data.urls)} shards, batch {data.batch_size}, "
                  f"preset {data.transform_options['preset']} (prepared in {time.perf_counter() - start:.1f} s)",
                  flush=True)
            all_results[size] = bench_size(data, args.workers, args.rounds)
    print_table(all_results, args.workers, args.rounds)
    print(f"load average at the end (1, 5, 15 min): {', '.join(f'{v:.1f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    try:
        main()
    except DataError as error:  # a damaged shard: one line, no traceback
        raise SystemExit(f"data_throughput: error: {error}") from None
