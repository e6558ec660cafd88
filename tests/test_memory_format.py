"""Every conv of the UNet sees one memory format: the model's own (NCHW, or channels_last when
asked). A channels_last tensor leaking into an NCHW UNet makes each later conv reorder its weight
on every call."""

import pytest
import torch

from pww_ldm.config import instantiate_from_config
from tests.tiny import randomize_, tiny_config


def _conv_inputs(unet: torch.nn.Module, x: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    seen, handles = [], []
    for name, module in unet.named_modules():
        if isinstance(module, torch.nn.Conv2d) and module.kernel_size == (3, 3):
            handles.append(module.register_forward_pre_hook(
                lambda _m, args, name=name: seen.append((name, args[0]))))
    try:
        with torch.no_grad():
            unet(x, torch.tensor([500.0, 500.0]), torch.randn(2, 77, 32))
    finally:
        for h in handles:
            h.remove()
    return seen


@pytest.mark.parametrize("channels_last", [False, True])
def test_all_3x3_convs_get_the_models_memory_format(channels_last):
    unet = randomize_(instantiate_from_config(tiny_config().model.params.unet_config))
    x = torch.randn(2, 4, 16, 16)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    if channels_last:
        unet = unet.to(memory_format=fmt)
        x = x.contiguous(memory_format=fmt)
    seen = _conv_inputs(unet, x)
    assert len(seen) > 5
    wrong = [name for name, t in seen if not t.is_contiguous(memory_format=fmt)]
    assert not wrong, f"convs fed another memory format: {wrong}"


def test_vae_convs_all_get_nchw():
    vae = randomize_(instantiate_from_config(tiny_config().model.params.first_stage_config))
    seen, handles = [], []
    for name, module in vae.named_modules():
        if isinstance(module, torch.nn.Conv2d) and module.kernel_size == (3, 3):
            handles.append(module.register_forward_pre_hook(
                lambda _m, args, name=name: seen.append((name, args[0]))))
    with torch.no_grad():
        vae.decode(vae.encode(torch.randn(1, 3, 32, 32)).mode())
    for h in handles:
        h.remove()
    assert len(seen) > 10
    wrong = [name for name, t in seen if not t.is_contiguous()]
    assert not wrong, f"convs fed a non-NCHW tensor: {wrong}"
