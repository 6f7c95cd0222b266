"""A small Vision Transformer for 28-64 px images and a masked autoencoder (MAE, He et al. 2022).

Both share one encoder layout (``patch_embed``, ``blocks``, ``norm``) and keep
everything else under ``head``: the classifier's linear head, or the MAE's whole decoder. A
MAE checkpoint therefore transfers into the ViT classifier of the same preset with the usual
head replacement (``cvdist.models.transfer``: the target's head is ``head``, so the source's ``head.*``
keys, the decoder, are left out).

Blocks are ``nn.TransformerEncoderLayer`` (pre-norm, GELU); features are the mean of the patch
tokens (no class token, so masking needs no special case). Positions are fixed 2-D sine-cosine
embeddings computed for the image's patch grid, so one model (and its weights) serves any image
size that is a multiple of the patch size, and nothing about the size is stored in a checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn


@dataclass(frozen=True)
class VitPreset:
    """Encoder size: patch side, token width, blocks, attention heads, the MLP's width factor."""

    patch_size: int
    dim: int
    depth: int
    num_heads: int
    mlp_ratio: float = 4.0


# Patch 4 (7x7 = 49 tokens at 28 px, 64 at 32 px) is the usual choice for CIFAR-sized images;
# the _p8 presets are for 64 px images (64 tokens).
VIT_PRESETS: dict[str, VitPreset] = {
    "vit_micro": VitPreset(patch_size=4, dim=32, depth=2, num_heads=2, mlp_ratio=2.0),  # tests: ~20 k parameters
    "vit_tiny": VitPreset(patch_size=4, dim=192, depth=12, num_heads=3),
    "vit_small": VitPreset(patch_size=4, dim=384, depth=12, num_heads=6),
    "vit_tiny_p8": VitPreset(patch_size=8, dim=192, depth=12, num_heads=3),
    "vit_small_p8": VitPreset(patch_size=8, dim=384, depth=12, num_heads=6),
}


def sincos_positions(side: int, dim: int, *, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embeddings (1, side*side, dim) of a square patch grid, row
    major (as in MAE): half the channels encode the row, half the column."""
    if dim % 4:
        raise ValueError(f"ViT width {dim} must be a multiple of 4 for 2-D sine-cosine positions")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, device=device, dtype=torch.float32) / (dim // 4))
    coords = torch.arange(side, device=device, dtype=torch.float32)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")
    parts = [f(axis.reshape(-1, 1) * omega) for axis in (rows, cols) for f in (torch.sin, torch.cos)]
    return torch.cat(parts, dim=1).unsqueeze(0).to(dtype)


def _blocks(*, dim: int, depth: int, num_heads: int, mlp_ratio: float) -> nn.ModuleList:
    return nn.ModuleList(
        nn.TransformerEncoderLayer(d_model=dim, nhead=num_heads, dim_feedforward=int(dim * mlp_ratio), dropout=0.0,
                                   activation="gelu", batch_first=True, norm_first=True)
        for _ in range(depth))


def num_patches_of(*, image_size: int, patch_size: int) -> int:
    """Patches per image; ``image_size`` must be a multiple of ``patch_size``."""
    if patch_size <= 0 or image_size % patch_size:
        raise ValueError(f"image size {image_size} is not a multiple of the ViT patch size {patch_size}; "
                         "choose a patch size that divides it (e.g. 4 or 7 for 28 px, 4 or 8 for 32 px)")
    return (image_size // patch_size) ** 2


class VisionTransformer(nn.Module):
    """ViT classifier: ``forward(images) -> logits``; ``forward_features`` gives (B, dim) features.
    Images are square, their side a multiple of ``patch_size``."""

    def __init__(self, *, patch_size: int, in_channels: int, num_classes: int, dim: int, depth: int,
                 num_heads: int, mlp_ratio: float = 4.0, head: Optional[nn.Module] = None):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"ViT width {dim} is not divisible by its {num_heads} attention heads")
        self.patch_size, self.in_channels, self.feature_dim = patch_size, in_channels, dim
        self.patch_embed = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)
        self.blocks = _blocks(dim=dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio)
        self.norm = nn.LayerNorm(dim)
        # registered last: cvdist.models.transfer takes the last nn.Linear as the head
        self.head = head if head is not None else nn.Linear(dim, num_classes)

    def tokens(self, images: torch.Tensor, keep_index: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Encoded tokens (B, n, dim) of all patches, or only of those in ``keep_index`` (B, n)."""
        num_patches_of(image_size=images.shape[-1], patch_size=self.patch_size)
        x = self.patch_embed(images)
        side = x.shape[-1]
        x = x.flatten(2).transpose(1, 2)
        x = x + sincos_positions(side, x.shape[-1], device=x.device, dtype=x.dtype)
        if keep_index is not None:
            x = torch.gather(x, 1, keep_index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """Mean-pooled token features (B, dim)."""
        return self.tokens(images).mean(dim=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(images))


def build_vit(*, name: str, num_classes: int, in_channels: int) -> VisionTransformer:
    """The ViT classifier of preset ``name`` (see ``VIT_PRESETS``)."""
    preset = _preset(name)
    return VisionTransformer(patch_size=preset.patch_size, in_channels=in_channels, num_classes=num_classes,
                             dim=preset.dim, depth=preset.depth, num_heads=preset.num_heads,
                             mlp_ratio=preset.mlp_ratio)


def _preset(name: str) -> VitPreset:
    if name not in VIT_PRESETS:
        raise ValueError(f"ViT preset {name!r} is not one of {', '.join(VIT_PRESETS)}")
    return VIT_PRESETS[name]


# --- patches and masking -----------------------------------------------------------------------------

def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, p*p*C), patches in row-major order, pixels (row, col, channel)."""
    b, c, h, w = images.shape
    p = patch_size
    x = images.reshape(b, c, h // p, p, w // p, p)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(patches: torch.Tensor, *, patch_size: int, channels: int) -> torch.Tensor:
    """Inverse of :func:`patchify` for square images."""
    b, n, _ = patches.shape
    p, side = patch_size, int(round(n ** 0.5))
    x = patches.reshape(b, side, side, p, p, channels).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(b, channels, side * p, side * p)


def num_visible(num_patches: int, mask_ratio: float) -> int:
    """Patches the encoder sees: ``int(N * (1 - mask_ratio))`` as in the MAE reference code."""
    return int(num_patches * (1.0 - mask_ratio))


def random_masking(batch_size: int, num_patches: int, *, mask_ratio: float, device: torch.device,
                   generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample random masks: ``(keep_index (B, n_keep) ascending, mask (B, N) float, 1 = masked)``.

    Draws from ``generator`` (on ``device``) or, if None, from the global RNG (which the training
    loop seeds per rank and restores on resume)."""
    keep = num_visible(num_patches, mask_ratio)
    if not 1 <= keep < num_patches:
        raise ValueError(f"mask ratio {mask_ratio} keeps {keep} of {num_patches} patches; it must keep at least "
                         "one and mask at least one (0 < ratio < 1, and not too close to 1 for so few patches)")
    noise = torch.rand(batch_size, num_patches, device=device, generator=generator)
    keep_index = noise.argsort(dim=1)[:, :keep].sort(dim=1).values
    mask = torch.ones(batch_size, num_patches, device=device)
    mask.scatter_(1, keep_index, 0.0)
    return keep_index, mask


# --- masked autoencoder --------------------------------------------------------------------------------

class MaeDecoder(nn.Module):
    """The MAE's light decoder: visible tokens plus a shared mask token at every masked
    position, own position embeddings and blocks, then a linear map to each patch's pixels."""

    def __init__(self, *, encoder_dim: int, patch_pixels: int, dim: int, depth: int, num_heads: int,
                 mlp_ratio: float = 4.0):
        super().__init__()
        self.embed = nn.Linear(encoder_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = _blocks(dim=dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio)
        self.norm = nn.LayerNorm(dim)
        self.pred = nn.Linear(dim, patch_pixels)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, visible: torch.Tensor, keep_index: torch.Tensor, num_patches: int) -> torch.Tensor:
        """(B, n_keep, encoder_dim) tokens at ``keep_index`` -> (B, num_patches, patch_pixels)."""
        x = self.embed(visible)
        full = self.mask_token.to(x.dtype).expand(x.shape[0], num_patches, -1).clone()
        full.scatter_(1, keep_index.unsqueeze(-1).expand(-1, -1, x.shape[-1]), x)
        side = int(round(num_patches ** 0.5))
        x = full + sincos_positions(side, x.shape[-1], device=x.device, dtype=x.dtype)
        for block in self.blocks:
            x = block(x)
        return self.pred(self.norm(x))


class MaskedAutoencoder(VisionTransformer):
    """A ViT encoder that sees only the visible patches, and :class:`MaeDecoder` as its ``head``.

    ``forward(images, generator=None) -> {"pred": (B, N, p*p*C), "mask": (B, N)}``; the loss
    (``cvdist.losses.reconstruction.masked_mse`` against :func:`patch_targets`) is the caller's.
    ``forward(images, features_only=True) -> {"features": (B, dim)}`` (no masking), e.g. for kNN."""

    def __init__(self, *, patch_size: int, in_channels: int, dim: int, depth: int, num_heads: int,
                 mlp_ratio: float = 4.0, mask_ratio: float = 0.75, decoder_dim: int = 64, decoder_depth: int = 2,
                 decoder_heads: int = 2):
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"MAE mask ratio {mask_ratio} must lie in (0, 1), e.g. 0.75")
        if decoder_dim % decoder_heads:
            raise ValueError(f"MAE decoder width {decoder_dim} is not divisible by its {decoder_heads} heads")
        decoder = MaeDecoder(encoder_dim=dim, patch_pixels=patch_size ** 2 * in_channels, dim=decoder_dim,
                             depth=decoder_depth, num_heads=decoder_heads, mlp_ratio=mlp_ratio)
        super().__init__(patch_size=patch_size, in_channels=in_channels, num_classes=0, dim=dim, depth=depth,
                         num_heads=num_heads, mlp_ratio=mlp_ratio, head=decoder)
        self.mask_ratio = mask_ratio

    def forward(self, images: torch.Tensor, generator: Optional[torch.Generator] = None, *,
                features_only: bool = False) -> dict[str, torch.Tensor]:
        if features_only:  # the encoder on every patch: what a classifier built from it sees
            return {"features": self.forward_features(images)}
        num_patches = num_patches_of(image_size=images.shape[-1], patch_size=self.patch_size)
        keep_index, mask = random_masking(images.shape[0], num_patches, mask_ratio=self.mask_ratio,
                                          device=images.device, generator=generator)
        pred = self.head(self.tokens(images, keep_index), keep_index, num_patches)
        return {"pred": pred, "mask": mask.to(pred.dtype)}


def build_mae(*, name: str, in_channels: int, mask_ratio: float, decoder_dim: int, decoder_depth: int,
              decoder_heads: int) -> MaskedAutoencoder:
    """The MAE whose encoder is the ViT preset ``name``; it transfers into ``build_vit(name=...)``."""
    preset = _preset(name)
    return MaskedAutoencoder(patch_size=preset.patch_size, in_channels=in_channels, dim=preset.dim,
                             depth=preset.depth, num_heads=preset.num_heads, mlp_ratio=preset.mlp_ratio,
                             mask_ratio=mask_ratio, decoder_dim=decoder_dim, decoder_depth=decoder_depth,
                             decoder_heads=decoder_heads)


def patch_targets(images: torch.Tensor, *, patch_size: int, norm_pix: bool) -> torch.Tensor:
    """What the MAE predicts: each patch's pixels, normalised per patch with ``norm_pix``."""
    target = patchify(images, patch_size)
    if norm_pix:
        mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1e-6).sqrt()
    return target


def mae_reconstruction(images: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor, *, patch_size: int,
                       norm_pix: bool) -> torch.Tensor:
    """Images for display: the predicted masked patches (mapped back to pixel scale when the
    targets were per-patch normalised) and the visible patches of the input."""
    patches = patchify(images, patch_size)
    if norm_pix:
        mean, var = patches.mean(dim=-1, keepdim=True), patches.var(dim=-1, keepdim=True)
        pred = pred * (var + 1e-6).sqrt() + mean
    mixed = torch.where(mask.unsqueeze(-1).bool(), pred.to(patches.dtype), patches)
    return unpatchify(mixed, patch_size=patch_size, channels=images.shape[1])
