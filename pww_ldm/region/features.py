"""The optional region features of one generation, built into attention plug-ins.

`build_features` turns the options of `paint_with_words` (attention maps, per-region prompts,
DenseDiffusion self-/cross-attention modulation) into the plug-ins that follow Paint-with-Words,
the region chunks to append to the conditioning, and the step clock the sampler callback drives.
Everything is off by default, and then nothing is added: plain Paint-with-Words, bit for bit.
The text encoder is reached through an `encode` callable, so this package still imports nothing
of the network.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from .attention_maps import AttentionMaps, region_groups
from .context import RegionContext
from .errors import ColorMapError, ColorNotInMapError, RegionError
from .guidance import DEFAULT_GUIDANCE_WINDOW, RegionGuidance
from .masks import color_mask, gaussian_blur, to_rgb
from .parse import Region, hex_color
from .region_prompts import (
    CHUNK,
    DEFAULT_BIAS_TOKENS,
    DEFAULT_COVER,
    PromptRegion,
    RegionPrompts,
    bias_positions,
)
from .self_attention import DEFAULT_SIZEREG, DEFAULT_WINDOW, DenseCrossAttention, DenseSelfAttention
from .timing import StepClock
from .tokens import Tokenizer, label_positions


@dataclass(frozen=True)
class FeatureOptions:
    """What to add to Paint-with-Words (all off by default).

    attention_maps: observe and return per-label attention maps; attention_steps: (first, stop)
    step range of the maps (None = all); per_token: also one map per label token.
    self_attention / dense_cross: DenseDiffusion weights w^s (paper 0.3) / w^c (paper 1.0),
    0 = off; sizereg and window: its size regularisation and step fraction (paper 1.0, 0.3).
    guidance: attention guidance's step in noise standard deviations (0 = off; see
    pww_ldm.region.guidance), over the first guidance_window of the steps, guidance_iterations
    gradient steps each. base_ratio: the prompt's share of attention inside the regions that
    have their own prompt (pww_ldm.region.region_prompts; 1 = unchanged, 0 = only their own);
    region_cover: how those regions reach a grid cell, "touch" (any cell they cover more than
    5 % of) or "area" (their share of its pixels); region_bias_tokens: which of their prompt's
    tokens get the Paint-with-Words bias, "words", "words+end" (and the end-of-text token) or
    "end" (pww_ldm.region.region_prompts.BIAS_TOKENS).
    """

    attention_maps: bool = False
    attention_steps: tuple[int, int] | None = None
    per_token: bool = False
    self_attention: float = 0.0
    dense_cross: float = 0.0
    sizereg: float = DEFAULT_SIZEREG
    window: float = DEFAULT_WINDOW
    guidance: float = 0.0
    guidance_window: float = DEFAULT_GUIDANCE_WINDOW
    base_ratio: float = 1.0
    guidance_iterations: int = 1
    region_cover: str = DEFAULT_COVER
    region_bias_tokens: str = DEFAULT_BIAS_TOKENS


@dataclass
class Features:
    """Built features: plug-ins (after PwW), appended chunks (cond, uncond) or None, the clock."""

    plugins: list[Any] = field(default_factory=list)
    extra_chunks: tuple[torch.Tensor, torch.Tensor] | None = None
    clock: StepClock | None = None
    maps: AttentionMaps | None = None
    guide: RegionGuidance | None = None

    def callback(self, user: Callable[[dict], None] | None) -> Callable[[dict], None] | None:
        """The sampler callback: advances the clock, then calls the user's callback."""
        if self.clock is None:
            return user
        clock = self.clock

        def step_done(info: dict) -> None:
            clock.advance(info)
            if user is not None:
                user(info)

        return step_done

    def attention(self) -> dict[str, torch.Tensor]:
        """label -> (n, H/8, W/8) attention map (see AttentionMaps.maps)."""
        if self.maps is None:
            raise RegionError("attention maps were not asked for (return_attention=True)")
        return self.maps.maps()


def _prompt_chunks(prompt_regions: Sequence[Region], encode: Callable[[list[str]], torch.Tensor],
                   tokenizer: Tokenizer, bias_tokens: str = DEFAULT_BIAS_TOKENS
                   ) -> tuple[list[PromptRegion], list[PromptRegion], tuple]:
    """Cond and uncond PromptRegions and the encoded chunks (cond (1, 77R, C), uncond likewise)."""
    cond, uncond, cond_rows, uncond_rows = [], [], [], []
    for r, region in enumerate(prompt_regions):
        negative = region.negative_prompt or ""
        pair = encode([region.prompt, negative])  # (2, 77k, C): one chunk count for both
        if pair.shape[1] != CHUNK:
            raise RegionError(f"region {region.color}: its prompt and negative prompt must fit one "
                              f"chunk of 75 tokens; {region.prompt!r} / {negative!r} do not")
        words = bias_positions(label_positions(region.prompt, region.prompt, tokenizer), bias_tokens)
        cond.append(PromptRegion(region.mask, r, words, region.weight))
        uncond.append(PromptRegion(region.mask, r, (), 0.0, visible=bool(negative)))
        cond_rows.append(pair[:1])
        uncond_rows.append(pair[1:])
    return cond, uncond, (torch.cat(cond_rows, 1), torch.cat(uncond_rows, 1))


def build_features(options: FeatureOptions, regions: RegionContext, prompt_regions: Sequence[Region],
                   *, n_steps: int, latent_hw: tuple[int, int], alphas_cumprod: torch.Tensor,
                   encode: Callable[[list[str]], torch.Tensor], tokenizer: Tokenizer) -> Features:
    """The plug-ins of `options` for these regions (label regions in `regions`, own-prompt
    regions with their masks in `prompt_regions`). n_steps: sampling steps that will run."""
    features = Features()
    if not (options.attention_maps or prompt_regions or options.self_attention
            or options.dense_cross or options.guidance):
        return features
    features.clock = StepClock(n_steps)
    labelled = [r for r in regions.regions if r.mask is not None and r.token_positions]
    worded = [r.mask for r in labelled] + [r.mask for r in prompt_regions]  # regions with words
    if options.dense_cross:
        features.plugins.append(DenseCrossAttention(
            [r.mask for r in labelled], [r.token_positions[0] for r in labelled], features.clock,
            alphas_cumprod, options.dense_cross, options.sizereg, options.window))
    if prompt_regions:
        cond, uncond, features.extra_chunks = _prompt_chunks(prompt_regions, encode, tokenizer,
                                                                 options.region_bias_tokens)
        size = (regions.height, regions.width)
        fn = regions.weight_function
        cover = options.region_cover
        features.plugins += [RegionPrompts(cond, len(cond), *size, fn, "cond", options.base_ratio, cover),
                             RegionPrompts(uncond, len(cond), *size, None, "uncond", cover=cover)]
    if options.self_attention:
        features.plugins.append(DenseSelfAttention(worded, features.clock, alphas_cumprod,
                                                   options.self_attention, options.sizereg,
                                                   options.window))
    if options.guidance:
        features.guide = _guide(options, worded, labelled, prompt_regions, features.clock, tokenizer)
    if options.attention_maps:
        groups = region_groups(regions.regions, options.per_token)
        n = len(prompt_regions)
        for r, region in enumerate(prompt_regions):
            groups[f"prompt: {region.prompt}"] = _prompt_columns(region, r, n, tokenizer)
        features.maps = AttentionMaps(groups, latent_hw, features.clock, options.attention_steps)
        features.plugins.append(features.maps)
    return features


def _prompt_columns(region: Region, r: int, n: int, tokenizer: Tokenizer) -> tuple[int, ...]:
    """The words of own-prompt region r of n, as negative columns into the appended chunks."""
    words = label_positions(region.prompt, region.prompt, tokenizer)
    return tuple(j - CHUNK * (n - r) for j in words)


def _guide(options: FeatureOptions, masks: Sequence[torch.Tensor], labelled: Sequence[Region],
           prompt_regions: Sequence[Region], clock: StepClock, tokenizer: Tokenizer) -> RegionGuidance:
    """Attention guidance over every region with words (`masks`: labelled, then own prompts)."""
    columns = [r.token_positions[0] for r in labelled]
    columns += [_prompt_columns(r, k, len(prompt_regions), tokenizer) for k, r in enumerate(prompt_regions)]
    if not masks:
        raise RegionError("attention guidance needs painted regions with words of the prompt")
    return RegionGuidance(masks, columns, clock, options.guidance, options.guidance_window,
                          options.guidance_iterations)


def split_regions(parsed: Sequence[Region], color_map: Any, width: int, height: int,
                  strict: bool = True) -> tuple[list[Region], list[Region]]:
    """(regions painting words of the prompt, regions with their own prompt, masks filled in).

    A region with both a label and a prompt is in both lists. Own-prompt masks are cut from the
    colour map as RegionContext cuts them (exact colour, then the region's blur); a colour not
    in the map raises ColorNotInMapError (a warning when strict=False; the region is dropped).
    """
    labelled = [r for r in parsed if r.label]
    own = [r for r in parsed if r.prompt]
    if not own:
        return labelled, []
    if color_map is None:
        raise ColorMapError("regions with their own prompt need a colour map")
    rgb = to_rgb(color_map, (width, height))
    out = []
    for region in own:
        mask = color_mask(rgb, region.color)
        if not mask.any():
            message = f"colour {hex_color(region.color)} of the region prompted {region.prompt!r} " \
                      "is not in the colour map"
            if strict:
                raise ColorNotInMapError(message)
            warnings.warn(message + "; the region is dropped", stacklevel=2)
            continue
        out.append(replace(region, mask=gaussian_blur(mask, region.blur)))
    return labelled, out


def feature_parameters(options: FeatureOptions, prompt_regions: Sequence[Region]) -> dict[str, Any]:
    """The infotext entries of the features in use (none when all are off)."""
    out: dict[str, Any] = {}
    if prompt_regions:
        out["PwW region prompts"] = json.dumps(
            [{"color": "#{:02x}{:02x}{:02x}".format(*r.color), "prompt": r.prompt,
              "negative_prompt": r.negative_prompt, "weight": r.weight} for r in prompt_regions])
    if options.self_attention:
        out["PwW self-attention"] = options.self_attention
    if options.dense_cross:
        out["PwW dense cross"] = options.dense_cross
    if prompt_regions and options.base_ratio != 1.0:
        out["PwW base ratio"] = options.base_ratio
    if prompt_regions and options.region_cover != DEFAULT_COVER:
        out["PwW region cover"] = options.region_cover
    if prompt_regions and options.region_bias_tokens != DEFAULT_BIAS_TOKENS:
        out["PwW region bias tokens"] = options.region_bias_tokens
    if options.guidance:
        out["PwW guidance"] = options.guidance
        out["PwW guidance window"] = options.guidance_window
    return out
