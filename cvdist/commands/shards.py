"""``cvdist shards ...``: write WebDataset shards and long-tailed subsets from the command line.

``cvdist.cli`` calls :func:`add_shards_commands`; the handlers only translate arguments into the
keyword arguments of the library functions. User errors raise ValueError / FileNotFoundError,
which ``cvdist.cli.main`` prints as one ``cvdist: error: ...`` line (exit status 2); so does any
other I/O error on the user's files (a permission, a full disk), through :func:`_one_line_errors`.
"""

from __future__ import annotations

import argparse
import functools
from typing import Callable

from cvdist.data.converters import build_cifar_source, build_fashion_mnist_source, build_folder_source
from cvdist.data.coco_import import write_coco_shards
from cvdist.data.segfolder_import import write_segfolder_shards
from cvdist.data.dense_shards import SCENE_DATASETS, write_scene_shards
from cvdist.data.longtail import write_longtail_shards
from cvdist.data.manifest import IMAGE_FORMATS, Manifest
from cvdist.data.scenes import SceneOptions
from cvdist.data.shard_writer import DEFAULT_QUALITY, DEFAULT_SAMPLES_PER_SHARD, write_dataset_shards

DEFAULT_FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"


def _summary(manifest: Manifest) -> str:
    parts = ", ".join(f"{name} {info.num_samples} samples in {len(info.shards)} shards"
                      for name, info in manifest.splits.items())
    return f"wrote {parts} to {manifest.directory} (manifest.json beside them)"


def _writer_options(args: argparse.Namespace) -> dict:
    return dict(out_dir=args.out, samples_per_shard=args.samples_per_shard, image_format=args.image_format,
                quality=args.quality, overwrite=args.overwrite, progress=not args.quiet)


def _fashion_mnist(args: argparse.Namespace) -> int:
    source = build_fashion_mnist_source(root=args.root, limit=args.limit)
    manifest = write_dataset_shards(source=source, shuffle_seed=args.shuffle_seed, inputs=[args.root],
                                    **_writer_options(args))
    print(_summary(manifest))
    return 0


def _folder(args: argparse.Namespace) -> int:
    roots = {args.split_name: args.root}
    if args.test_root is not None:
        if args.split_name == "test":
            raise ValueError("--test-root writes the 'test' split, which --split-name test already names; "
                             "use another --split-name")
        roots["test"] = args.test_root
    source = build_folder_source(splits=roots, image_format=args.image_format)
    manifest = write_dataset_shards(source=source, shuffle_seed=None if args.no_shuffle else args.shuffle_seed,
                                    inputs=list(roots.values()), **_writer_options(args))
    print(_summary(manifest))
    return 0


def _cifar(args: argparse.Namespace) -> int:
    source = build_cifar_source(archive=args.archive)
    manifest = write_dataset_shards(source=source, shuffle_seed=args.shuffle_seed, inputs=[args.archive],
                                    **_writer_options(args))
    print(_summary(manifest))
    return 0


def _longtail(args: argparse.Namespace) -> int:
    manifest = write_longtail_shards(source_dir=args.source, out_dir=args.out, imbalance_factor=args.imbalance_factor,
                                     seed=args.seed, samples_per_shard=args.samples_per_shard,
                                     overwrite=args.overwrite, progress=not args.quiet)
    print(_summary(manifest))
    print(f"kept per class: {manifest.longtail.kept_per_class}")
    return 0


def _one_line_errors(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """``handler`` with OSErrors (unreadable inputs, unwritable outputs) turned into ValueError,
    which the command line prints as one line."""
    @functools.wraps(handler)
    def wrapped(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except FileNotFoundError:
            raise
        except OSError as error:
            raise ValueError(f"{error}; check the paths given to `cvdist shards {args.shards_command}`") from None
    return wrapped


def _scenes(args: argparse.Namespace) -> int:
    options = SceneOptions(canvas_size=args.canvas_size, max_items=args.max_items, min_item_size=args.min_item_size,
                           max_item_size=args.max_item_size, occlusion=args.occlusion,
                           imbalance_factor=args.imbalance_factor, tint=args.tint)
    manifest = write_scene_shards(out_dir=args.out, dataset=args.items, root=args.root, num_train=args.num_train,
                                  num_test=args.num_test, options=options, seed=args.seed,
                                  samples_per_shard=args.samples_per_shard, overwrite=args.overwrite,
                                  progress=not args.quiet)
    print(_summary(manifest))
    print(f"instances per category: {manifest.dense.instance_counts}")
    return 0


def _coco(args: argparse.Namespace) -> int:
    result = write_coco_shards(root=args.root, out_dir=args.out, images_dir=args.images, image_format=args.image_format,
                               samples_per_shard=args.samples_per_shard, overwrite=args.overwrite,
                               progress=not args.quiet)
    print(_summary(result.manifest))
    print(f"instances per category: {result.manifest.dense.instance_counts}; left out: {result.skipped_images} "
          f"images without annotations, {result.skipped_annotations} empty boxes")
    return 0


def _segfolder(args: argparse.Namespace) -> int:
    result = write_segfolder_shards(root=args.root, out_dir=args.out, num_classes=args.num_classes, split=args.split,
                                    image_format=args.image_format, samples_per_shard=args.samples_per_shard,
                                    overwrite=args.overwrite, progress=not args.quiet)
    print(_summary(result.manifest))
    print(f"left out: {result.skipped_images} images without a label map")
    return 0


def _add_dense_commands(commands) -> None:
    coco = commands.add_parser("coco", help="dense shards from a COCO-format folder (instances_<split>.json + images/)")
    coco.add_argument("--root", required=True, help="folder with instances_<split>.json (or annotations/...)")
    coco.add_argument("--images", default=None, help="image directory (default: ROOT/images)")
    _add_output_options(coco, image_options=True, samples_per_shard_default=500)
    coco.set_defaults(handler=_one_line_errors(_coco))

    segfolder = commands.add_parser("segfolder", help="dense shards from images + PNG label maps (VOC / ADE20K style)")
    segfolder.add_argument("--root", required=True, help="folder with images/ and labels/ (or annotations/); "
                           "sub-folders of images/ are splits, with the same sub-folders under labels/")
    segfolder.add_argument("--split", default="train", help="split name when images/ has no sub-folders "
                           "(default: %(default)s)")
    segfolder.add_argument("--num-classes", type=int, default=0, metavar="N",
                           help="categories (label values 1..N; 0 background, 255 ignore) when there is no "
                           "ROOT/classes.txt")
    _add_output_options(segfolder, image_options=True, samples_per_shard_default=500)
    segfolder.set_defaults(handler=_one_line_errors(_segfolder))

    scenes = commands.add_parser("scenes", help="the built-in detection / segmentation set: items pasted on canvases")
    scenes.add_argument("--items", choices=SCENE_DATASETS, default="fashion_mnist",
                        help="where the pasted items come from (default: %(default)s)")
    scenes.add_argument("--root", default=DEFAULT_FASHION_MNIST_ROOT, help="Fashion-MNIST IDX directory")
    scenes.add_argument("--num-train", type=int, default=2000, metavar="N", help="training scenes")
    scenes.add_argument("--num-test", type=int, default=500, metavar="N", help="test scenes (always balanced)")
    scenes.add_argument("--canvas-size", type=int, default=96, metavar="PX", help="canvas side (default 96)")
    scenes.add_argument("--max-items", type=int, default=4, metavar="K", help="items per scene: 1..K")
    scenes.add_argument("--min-item-size", type=int, default=20, metavar="PX")
    scenes.add_argument("--max-item-size", type=int, default=44, metavar="PX")
    scenes.add_argument("--occlusion", action="store_true", help="let items overlap (boxes from visible pixels)")
    scenes.add_argument("--imbalance-factor", type=float, default=1.0, metavar="F",
                        help="long-tailed categories in train: head / tail item ratio (default 1 = balanced)")
    scenes.add_argument("--tint", action="store_true", help="RGB scenes with a random tint per item")
    scenes.add_argument("--seed", type=int, default=0, help="the same seed writes the same bytes")
    _add_output_options(scenes, image_options=False, samples_per_shard_default=500)
    scenes.set_defaults(handler=_one_line_errors(_scenes))


def _add_output_options(parser: argparse.ArgumentParser, *, image_options: bool,
                        samples_per_shard_default: int | None = DEFAULT_SAMPLES_PER_SHARD) -> None:
    parser.add_argument("--out", required=True, help="output directory (shards + manifest.json); must not exist "
                        "or be empty unless --overwrite")
    parser.add_argument("--samples-per-shard", type=int, default=samples_per_shard_default, metavar="N",
                        help="samples per tar file (default: %s)" % (
                            samples_per_shard_default or "the source's largest train shard"))
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing shard directory (one holding manifest.json) in one swap")
    parser.add_argument("--quiet", action="store_true", help="no progress bars on stderr")
    if image_options:
        parser.add_argument("--image-format", choices=IMAGE_FORMATS, default="png",
                            help="image member format (default: png, lossless)")
        parser.add_argument("--quality", type=int, default=None, metavar="Q",
                            help=f"jpg/webp quality 1-100 (default {DEFAULT_QUALITY})")


def add_shards_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register ``shards`` with its sub-commands fashion-mnist, folder, cifar, longtail, scenes, coco and
    segfolder."""
    shards = subparsers.add_parser("shards", help="write WebDataset shards + manifest.json, or a long-tailed subset")
    commands = shards.add_subparsers(dest="shards_command", required=True,
                                     metavar="{fashion-mnist,folder,cifar,longtail,scenes,coco,segfolder}")

    fashion = commands.add_parser("fashion-mnist", help="shards from the Fashion-MNIST IDX files")
    fashion.add_argument("--root", default=DEFAULT_FASHION_MNIST_ROOT,
                         help="directory with the four IDX files, .gz or not (default: %(default)s)")
    fashion.add_argument("--limit", type=int, default=0, metavar="N",
                         help="only the first N samples of each split (a quick subset; default: all)")
    fashion.add_argument("--shuffle-seed", type=int, default=None, metavar="S",
                         help="write samples in a seeded random order (default: file order, already mixed)")
    _add_output_options(fashion, image_options=True)
    fashion.set_defaults(handler=_one_line_errors(_fashion_mnist))

    folder = commands.add_parser("folder", help="shards from an image folder tree root/<class>/<image>")
    folder.add_argument("--root", required=True, help="the tree of one split; classes = sub-directories sorted by name")
    folder.add_argument("--split-name", default="train", help="split written from --root (default: %(default)s)")
    folder.add_argument("--test-root", default=None,
                        help="optional second tree with the same classes, written as the 'test' split")
    folder.add_argument("--shuffle-seed", type=int, default=0, metavar="S",
                        help="seed of the write order, so each shard mixes classes (default: %(default)s)")
    folder.add_argument("--no-shuffle", action="store_true", help="write in sorted class/file order instead")
    _add_output_options(folder, image_options=True)
    folder.set_defaults(handler=_one_line_errors(_folder))

    cifar = commands.add_parser("cifar", help="shards from a CIFAR-10/100 python archive you already have")
    cifar.add_argument("--archive", required=True,
                       help="cifar-10-python.tar.gz / cifar-100-python.tar.gz or the extracted directory")
    cifar.add_argument("--shuffle-seed", type=int, default=None, metavar="S",
                       help="write samples in a seeded random order (default: archive order, already mixed)")
    _add_output_options(cifar, image_options=True)
    cifar.set_defaults(handler=_one_line_errors(_cifar))

    longtail = commands.add_parser("longtail", help="a long-tailed train split from balanced shards (test copied)")
    longtail.add_argument("--source", required=True, help="a shard directory written by `cvdist shards`")
    longtail.add_argument("--imbalance-factor", type=float, required=True, metavar="F",
                          help="head / tail sample ratio, e.g. 10 or 100")
    longtail.add_argument("--seed", type=int, required=True, help="selects which samples each class keeps")
    _add_output_options(longtail, image_options=False, samples_per_shard_default=None)
    longtail.set_defaults(handler=_one_line_errors(_longtail))
    _add_dense_commands(commands)
