"""An attention-based adherence score: does a label's attention fall inside its painted region?

No segmenter is needed, so it works on any checkpoint. Per region, from its label's aggregated
attention map (`AttentionMaps`, (H/8, W/8) latent cells) and its painted mask (H, W):

- mass_inside: the share of the map's attention mass inside the region (the map upsampled
  bilinearly to the mask's resolution; 1 = all the label's attention is in its region);
- iou: IoU of the thresholded map with the region (mask >= 0.5). The map is binarised at
  THRESHOLD = 0.4 of its maximum, the threshold DAAM (Tang et al. 2023, section 3) uses to turn
  word heat maps into segmentations.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from .errors import RegionError

THRESHOLD = 0.4  # of the map's maximum (DAAM's tau)


def adherence(attention: torch.Tensor, mask: torch.Tensor, threshold: float = THRESHOLD
              ) -> dict[str, float]:
    """attention (h, w) map >= 0, mask (H, W) in [0, 1] -> {"mass_inside", "iou"} in [0, 1]."""
    if attention.dim() != 2 or mask.dim() != 2:
        raise RegionError(f"adherence takes a 2-D map and a 2-D mask, got {tuple(attention.shape)} "
                          f"and {tuple(mask.shape)}")
    if not 0 < threshold < 1:
        raise RegionError(f"threshold must be in (0, 1), got {threshold}")
    up = attention.float()[None, None]
    if tuple(attention.shape) != tuple(mask.shape):
        up = F.interpolate(up, size=tuple(mask.shape), mode="bilinear", align_corners=False)
    up = up[0, 0].clamp_min(0)
    region = mask.float().to(up.device)
    total = float(up.sum())
    mass = float((up * region).sum()) / total if total > 0 else 0.0
    peak = float(up.max())
    binary = up >= threshold * peak if peak > 0 else torch.zeros_like(up, dtype=torch.bool)
    inside = region >= 0.5
    union = float((binary | inside).sum())
    iou = float((binary & inside).sum()) / union if union else 0.0
    return {"mass_inside": mass, "iou": iou}


def region_adherence(maps: Mapping[str, torch.Tensor], regions: Sequence[Any], image: int = 0,
                     threshold: float = THRESHOLD) -> list[dict[str, Any]]:
    """Per region with a label map: {"label", "color", "mass_inside", "iou"} for batch row `image`.

    maps: AttentionMaps.maps() (name -> (n, h, w)); regions: Regions with their masks (H, W).
    """
    rows = []
    for region in regions:
        if region.label not in maps or region.mask is None:
            continue
        score = adherence(maps[region.label][image], region.mask, threshold)
        rows.append({"label": region.label, "color": "#{:02x}{:02x}{:02x}".format(*region.color),
                     **score})
    return rows
