"""Names a LoRA file may give a layer of our model, mapped onto our CompVis module paths.

Our modules keep CompVis's names (`model.diffusion_model.input_blocks.1.1.proj_in`); LoRA files
name layers in one of four spellings. For every Linear / Conv2d of the UNet and of the text
encoder, `layer_aliases` lists all of them, so a file key is matched by a plain lookup, never by
turning underscores back into dots (which is ambiguous: `to_q`, `proj_in`, `transformer_blocks`).

(D = `model.diffusion_model.`, T = `cond_stage_model.transformer.text_model.`)

| spelling | module key in the file | our module |
|---|---|---|
| kohya, diffusers names | `lora_unet_down_blocks_0_attentions_0_proj_in` | `D input_blocks.1.1.proj_in` |
| kohya, CompVis names | `lora_unet_input_blocks_1_1_proj_in` | same |
| diffusers / peft | `unet.down_blocks.0.attentions.0.proj_in` | same |
| kohya text | `lora_te_text_model_encoder_layers_0_self_attn_q_proj` | `T encoder.layers.0.self_attn.q_proj`|
| diffusers / peft text | `text_encoder.text_model.encoder.layers.0.self_attn.q_proj` | same |
| diffusers processors | `text_encoder.text_model.encoder.layers.0.self_attn.to_q` | same |

SD 2.x (OpenCLIP, O = `cond_stage_model.model.transformer.resblocks.`): the same text spellings
land on `O N.attn.in_proj_weight` rows [0, w), [w, 2w), [2w, 3w) for q/k/v_proj, `O N.attn.out_proj`,
`O N.mlp.c_fc` (fc1) and `O N.mlp.c_proj` (fc2), as A1111 maps them.

UNet paths, diffusers -> CompVis (R = num_res_blocks; read off the block structure, not assumed):

| diffusers | CompVis |
|---|---|
| `conv_in`, `conv_norm_out`, `conv_out` | `input_blocks.0.0`, `out.0`, `out.2` |
| `time_embedding.linear_1`, `.linear_2` | `time_embed.0`, `time_embed.2` |
| `down_blocks.L.resnets.i` | `input_blocks.{1 + L(R+1) + i}.0` |
| `down_blocks.L.attentions.i` | `input_blocks.{1 + L(R+1) + i}.1` |
| `down_blocks.L.downsamplers.0.conv` | `input_blocks.{(L+1)(R+1)}.0.op` |
| `mid_block.resnets.0`, `.attentions.0`, `.resnets.1` | `middle_block.0`, `.1`, `.2` |
| `up_blocks.U.resnets.i`, `.attentions.i` | `output_blocks.{U(R+1) + i}.0`, `.1` |
| `up_blocks.U.upsamplers.0.conv` | `output_blocks.{U(R+1) + R}.{last}.conv` (index 1 or 2) |
| resnet `norm1`, `conv1`, `norm2`, `conv2` | `in_layers.0`, `in_layers.2`, `out_layers.0`, `out_layers.3` |
| resnet `time_emb_proj`, `conv_shortcut` | `emb_layers.1`, `skip_connection` |
| attention inner names (`proj_in`, `transformer_blocks.k.attn1.to_q`, `ff.net.2`, ...) | unchanged |
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

UNET_PREFIX = "model.diffusion_model."
TEXT_PREFIX = "cond_stage_model.transformer."
OPEN_CLIP_PREFIX = "cond_stage_model.model.transformer.resblocks."

_RESNET_PARTS = {"in_layers.0": "norm1", "in_layers.2": "conv1", "out_layers.0": "norm2",
                 "out_layers.3": "conv2", "emb_layers.1": "time_emb_proj",
                 "skip_connection": "conv_shortcut"}  # fmt: skip
# diffusers' old attention-processor names of the CLIP projections (`to_q_lora` files).
_TEXT_PROCESSOR_NAMES = {"q_proj": "to_q", "k_proj": "to_k", "v_proj": "to_v", "out_proj": "to_out"}


def _kind(layer: nn.Module) -> str:
    # Duck-typed on CompVis's attribute names, so the mapping follows the checkpoint contract
    # rather than our class names.
    if hasattr(layer, "in_layers"):
        return "res"
    if hasattr(layer, "transformer_blocks"):
        return "attn"
    if hasattr(layer, "op"):
        return "down"
    if hasattr(layer, "conv"):
        return "up"
    return "other"


def _walk(blocks: list[nn.Module], start: int, ours: str, theirs: str, table: dict[str, str]) -> None:
    # Resnet i of level L is the i-th block since the last resampler; a resampler ends a level.
    level = index = 0
    for b, block in enumerate(blocks, start):
        resampled = False
        for j, layer in enumerate(block):
            kind, path = _kind(layer), f"{ours}.{b}.{j}"
            if kind == "res":
                table[path] = f"{theirs}.{level}.resnets.{index}"
            elif kind == "attn":
                table[path] = f"{theirs}.{level}.attentions.{index}"
            elif kind == "down":
                table[path + ".op"] = f"{theirs}.{level}.downsamplers.0.conv"
                resampled = True
            elif kind == "up":
                table[path + ".conv"] = f"{theirs}.{level}.upsamplers.0.conv"
                resampled = True
        level, index = (level + 1, 0) if resampled else (level, index + 1)


def unet_block_table(unet: nn.Module) -> dict[str, str]:
    """CompVis block path (under diffusion_model) -> diffusers path, for every block of `unet`."""
    table = {"input_blocks.0.0": "conv_in", "out.0": "conv_norm_out", "out.2": "conv_out",
             "time_embed.0": "time_embedding.linear_1", "time_embed.2": "time_embedding.linear_2",
             "middle_block.0": "mid_block.resnets.0", "middle_block.1": "mid_block.attentions.0",
             "middle_block.2": "mid_block.resnets.1"}  # fmt: skip
    # input_blocks.0 is conv_in: the down levels start at input_blocks.1.
    _walk(list(unet.input_blocks)[1:], 1, "input_blocks", "down_blocks", table)
    _walk(list(unet.output_blocks), 0, "output_blocks", "up_blocks", table)
    return table


def unet_diffusers_name(path: str, table: dict[str, str]) -> str | None:
    """diffusers name of a UNet module path (under diffusion_model), or None if not mapped."""
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        prefix = ".".join(parts[:cut])
        if prefix in table:
            rest = ".".join(parts[cut:])
            mapped = table[prefix]
            if ".resnets." in mapped and rest:
                rest = _RESNET_PARTS.get(rest, rest)
            return f"{mapped}.{rest}" if rest else mapped
    return None


@dataclass(frozen=True)
class Target:
    """Where a LoRA layer lands: `param` of our module `module`, or its rows [start, stop)."""

    module: str
    param: str = "weight"
    rows: tuple[int, int] | None = None

    @property
    def key(self) -> str:
        """The full parameter name (`...in_proj_weight`, `...weight`), as in `state_dict`."""
        return f"{self.module}.{self.param}"


def _is_target(module: nn.Module) -> bool:
    return isinstance(module, (nn.Linear, nn.Conv2d))


def _text_aliases(inner: str, target: Target, aliases: dict[str, Target]) -> None:
    # inner: the CLIPTextModel name under text_model (`encoder.layers.0.self_attn.q_proj`).
    aliases["lora_te_text_model_" + inner.replace(".", "_")] = target
    for prefix in ("text_encoder.text_model.", "text_encoder."):
        aliases[prefix + inner] = target
        head, _, last = inner.rpartition(".")
        if last in _TEXT_PROCESSOR_NAMES:
            aliases[f"{prefix}{head}.{_TEXT_PROCESSOR_NAMES[last]}"] = target


def _open_clip_aliases(resblocks: nn.ModuleList, aliases: dict[str, Target]) -> None:
    # SD 2.x's OpenCLIP holds q, k, v as row blocks of one in_proj_weight; LoRA files use the
    # CLIPTextModel names (as A1111 maps them: fc1 -> c_fc, fc2 -> c_proj, q/k/v -> in_proj rows).
    for i, block in enumerate(resblocks):
        base, width = f"{OPEN_CLIP_PREFIX}{i}", block.attn.embed_dim
        layer = f"encoder.layers.{i}"
        for j, name in enumerate(("q_proj", "k_proj", "v_proj")):
            target = Target(base + ".attn", "in_proj_weight", (j * width, (j + 1) * width))
            _text_aliases(f"{layer}.self_attn.{name}", target, aliases)
        _text_aliases(f"{layer}.self_attn.out_proj", Target(base + ".attn.out_proj"), aliases)
        _text_aliases(f"{layer}.mlp.fc1", Target(base + ".mlp.c_fc"), aliases)
        _text_aliases(f"{layer}.mlp.fc2", Target(base + ".mlp.c_proj"), aliases)


def layer_aliases(model: nn.Module) -> dict[str, Target]:
    """Every name a LoRA file may use for a layer of `model` -> its `Target`.

    Keys are module names without the LoRA part (`.lora_down.weight`, `.lora_A.weight`, ...):
    kohya's `lora_unet_*` / `lora_te_*` in both namings, and diffusers/peft's `unet.*` and
    `text_encoder.*`. Targets: every Linear and Conv2d of the UNet and of the SD 1.x text
    encoder; for SD 2.x's OpenCLIP, its attention (q/k/v rows of in_proj_weight, out_proj) and MLP.
    """
    aliases: dict[str, Target] = {}
    unet = model.model.diffusion_model
    table = unet_block_table(unet)
    for path, module in unet.named_modules():
        if not _is_target(module):
            continue
        target = Target(UNET_PREFIX + path)
        aliases["lora_unet_" + path.replace(".", "_")] = target
        name = unet_diffusers_name(path, table)
        if name is not None:
            aliases["lora_unet_" + name.replace(".", "_")] = target
            aliases["unet." + name] = target
    text = model.cond_stage_model
    if hasattr(text, "transformer"):  # SD 1.x: transformers' CLIPTextModel
        for path, module in text.transformer.named_modules():
            if _is_target(module):
                _text_aliases(path.removeprefix("text_model."), Target(TEXT_PREFIX + path), aliases)
    elif hasattr(getattr(text, "model", None), "transformer"):  # SD 2.x: OpenCLIP
        _open_clip_aliases(text.model.transformer.resblocks, aliases)
    return aliases
