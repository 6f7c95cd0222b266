"""torchvision detection models (Faster R-CNN and Mask R-CNN with FPN, RetinaNet, FCOS) on any cvdist backbone.

The backbone is a cvdist classifier (``build_model``: ``small_cnn``, ``small_resnet``, the
ResNets, ``timm:<name>``), so a trunk trained by any cvdist recipe loads into it with the same
``state_dict`` keys (load the weights into the classifier first, see ``cvdist.engine.transfer``).
Its feature maps are taken by torchvision's ``create_feature_extractor``; which graph nodes to
take is found, not hand-wired: the classifier runs once on a dummy image and, for each spatial
size its feature maps go through, the *last* node at that size is a pyramid level (a stage's
output), up to the classifier's adaptive / global pool where its head begins. The deepest
``num_levels`` levels feed torchvision's ``FeaturePyramidNetwork`` (plus a max-pooled level for
Faster R-CNN and Mask R-CNN, P6/P7 for RetinaNet and FCOS, as in torchvision's own builders).
cvdist's ViTs (``vit_*``) have no stages: their pyramid is ViTDet's, built from the last block's
patch tokens (:mod:`cvdist.models.vit_pyramid`, which also explains its strides).
Mask R-CNN is Faster R-CNN (same backbone, anchors and box head) plus torchvision's mask branch
(``MaskRCNNHeads`` + ``MaskRCNNPredictor``, 14x14 RoIs, 28x28 mask logits), narrowed to
``_MASK_HEAD_WIDTH`` channels; its targets carry ``masks`` ``[N, H, W]`` (uint8) and its
predictions ``masks`` ``[N, 1, H, W]`` (probabilities at image size).

Anchor sizes start at ``anchor_base`` pixels on the finest level and double per level, suited
to 96-128 px canvases with 10-50 px objects; the models' own resize is pinned to
``image_size`` so images of that size are not rescaled. Labels outside the models are category
ids ``0..C-1``; the R-CNNs' class 0 is background, so :class:`Detector` shifts by one there.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torchvision.models.detection import FCOS, FasterRCNN, MaskRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

from cvdist.models.vit import VisionTransformer
from cvdist.models.vit_pyramid import SimpleFeaturePyramid

ARCHITECTURES = ("faster_rcnn", "mask_rcnn", "retinanet", "fcos")
_POOLS = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_CNN_ONLY = ("detection and segmentation need a CNN backbone (small_cnn, small_resnet, resnet18/34/50, "
             "timm:<cnn>); of the ViTs, detection takes cvdist's vit_* (a simple feature pyramid), "
             "not timm's")
_BOX_HEAD_WIDTH = 256
"""Faster R-CNN's box head width (torchvision's default 1024 makes the head 4 M parameters)."""
_MASK_HEAD_WIDTH = 64
"""Mask R-CNN's mask head width (torchvision's default 256 x 4 convolutions is 2.4 M parameters,
far more than the 96 px images' small masks need)."""


def pyramid_nodes(classifier: nn.Module, *, in_channels: int, image_size: int) -> list[tuple[str, int]]:
    """``(node name, channels)`` of each stage output of ``classifier``, finest first (see the
    module doc); ValueError when the model has no convolutional feature maps (ViTs)."""
    try:
        _, nodes = get_graph_node_names(classifier)
        extractor = create_feature_extractor(classifier, return_nodes=nodes)
    except Exception as error:  # torch.fx cannot trace data-dependent control flow (ViTs here)
        raise ValueError(f"backbone {type(classifier).__name__} cannot be traced for its feature maps ({error}); "
                         f"{_CNN_ONLY}") from None
    was_training = classifier.training
    extractor.eval()
    try:
        with torch.no_grad():
            outputs = extractor(torch.zeros(1, in_channels, image_size, image_size))
    except Exception as error:  # e.g. timm's ViTs assert their fixed input size
        raise ValueError(f"backbone {type(classifier).__name__} fails on a {image_size} px image ({error}); "
                         f"{_CNN_ONLY}") from None
    finally:
        classifier.train(was_training)
    last_at_size: OrderedDict[int, tuple[str, int]] = OrderedDict()
    for name in nodes:
        value = outputs[name]
        module = dict(classifier.named_modules()).get(name)
        if not torch.is_tensor(value) or value.dim() != 4 or isinstance(module, _POOLS) or value.shape[-1] == 1:
            if last_at_size:
                break  # the head begins (global / adaptive pool, flatten, tokens)
            continue
        last_at_size.pop(value.shape[-1], None)
        last_at_size[value.shape[-1]] = (name, int(value.shape[1]))
    levels = [entry for size, entry in last_at_size.items() if size < image_size or len(last_at_size) == 1]
    if len(levels) < 2:
        raise ValueError(f"backbone {type(classifier).__name__} gives {len(levels)} convolutional feature map(s) "
                         f"below the input size; {_CNN_ONLY}")
    return levels


class PyramidBackbone(nn.Module):
    """Feature extractor + FPN: ``images -> OrderedDict`` of ``out_channels`` maps."""

    def __init__(self, classifier: nn.Module, *, nodes: list[tuple[str, int]], out_channels: int, extra_blocks):
        super().__init__()
        self.body = create_feature_extractor(classifier, return_nodes={name: str(i) for i, (name, _) in
                                                                       enumerate(nodes)})
        self.fpn = FeaturePyramidNetwork([channels for _, channels in nodes], out_channels, extra_blocks=extra_blocks)
        self.out_channels = out_channels

    def forward(self, images: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        return self.fpn(self.body(images))


class Detector(nn.Module):
    """A torchvision detector that takes and returns category ids ``0..C-1`` (see the module doc)."""

    def __init__(self, model: nn.Module, *, label_offset: int):
        super().__init__()
        self.model, self.label_offset = model, label_offset

    def forward(self, images: list[torch.Tensor], targets: list[dict] | None = None):
        """Training: the loss dict; evaluation: per image ``{"boxes", "scores", "labels"}`` (and
        ``masks`` for Mask R-CNN)."""
        if targets is not None:  # masks (Mask R-CNN) pass through; other keys (iscrowd) are not the model's
            targets = [{"boxes": t["boxes"], "labels": t["labels"] + self.label_offset,
                        **({"masks": t["masks"]} if "masks" in t else {})} for t in targets]
        out = self.model(images, targets)
        if self.training or not self.label_offset:
            return out
        return [{**o, "labels": o["labels"] - self.label_offset} for o in out]


def build_detector(*, architecture: str, classifier: nn.Module, num_categories: int, in_channels: int,
                   image_size: int, image_mean: list[float], image_std: list[float], fpn_channels: int = 64,
                   num_levels: int = 3, anchor_base: int = 8) -> Detector:
    """``architecture`` (one of ARCHITECTURES) on the trunk of ``classifier`` (see the module doc)."""
    if architecture not in ARCHITECTURES:
        raise ValueError(f"detection architecture {architecture!r} unknown; use one of {', '.join(ARCHITECTURES)}")
    if architecture == "fcos" and fpn_channels % 32:
        raise ValueError(f"FCOS's head normalises in 32 groups: fpn_channels={fpn_channels} must be a multiple of 32")
    rcnn = architecture in ("faster_rcnn", "mask_rcnn")
    extra = LastLevelMaxPool() if rcnn else LastLevelP6P7(fpn_channels, fpn_channels)
    if isinstance(classifier, VisionTransformer):  # one token map, no stages: ViTDet's simple pyramid
        backbone = SimpleFeaturePyramid(classifier, num_levels=num_levels, out_channels=fpn_channels,
                                        extra_blocks=extra)
    else:
        nodes = pyramid_nodes(classifier, in_channels=in_channels, image_size=image_size)[-num_levels:]
        backbone = PyramidBackbone(classifier, nodes=nodes, out_channels=fpn_channels, extra_blocks=extra)
    num_maps = len(backbone.fpn.inner_blocks) + (1 if rcnn else 2)
    sizes = [anchor_base * 2 ** i for i in range(num_maps)]
    common = dict(min_size=image_size, max_size=image_size, image_mean=list(image_mean), image_std=list(image_std))
    if rcnn:
        anchors = AnchorGenerator(tuple((s,) for s in sizes), ((0.5, 1.0, 2.0),) * num_maps)
        box_head = TwoMLPHead(fpn_channels * 7 * 7, _BOX_HEAD_WIDTH)  # 7x7: FasterRCNN's default RoI pool size
        rcnn_options = dict(rpn_anchor_generator=anchors, box_head=box_head,
                            box_predictor=FastRCNNPredictor(_BOX_HEAD_WIDTH, num_categories + 1),
                            rpn_batch_size_per_image=128, box_batch_size_per_image=128, rpn_pre_nms_top_n_train=600,
                            rpn_post_nms_top_n_train=300, rpn_pre_nms_top_n_test=300, rpn_post_nms_top_n_test=150,
                            **common)  # proposal counts scaled down from torchvision's 800 px defaults
        if architecture == "faster_rcnn":
            return Detector(FasterRCNN(backbone, **rcnn_options), label_offset=1)
        mask_head = MaskRCNNHeads(fpn_channels, [_MASK_HEAD_WIDTH] * 4, 1)
        mask_predictor = MaskRCNNPredictor(_MASK_HEAD_WIDTH, _MASK_HEAD_WIDTH, num_categories + 1)
        return Detector(MaskRCNN(backbone, mask_head=mask_head, mask_predictor=mask_predictor, **rcnn_options),
                        label_offset=1)
    if architecture == "retinanet":
        anchors = AnchorGenerator(tuple((s, int(s * 2 ** (1 / 3)), int(s * 2 ** (2 / 3))) for s in sizes),
                                  ((0.5, 1.0, 2.0),) * num_maps)
        return Detector(RetinaNet(backbone, num_classes=num_categories, anchor_generator=anchors, **common),
                        label_offset=0)
    anchors = AnchorGenerator(tuple((s,) for s in sizes), ((1.0,),) * num_maps)  # FCOS: one point per location
    return Detector(FCOS(backbone, num_classes=num_categories, anchor_generator=anchors, **common), label_offset=0)
