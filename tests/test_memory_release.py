"""The decode hands the sampler's freed heap back to the OS first (pww_ldm.allocator's malloc
tuning keeps freed memory resident), and that changes nothing in the image."""

import torch
from tiny import tiny_model

import pww_ldm.vae
from pww_ldm.allocator import release_free_memory


def test_release_free_memory_runs_here_and_says_whether_it_could():
    assert isinstance(release_free_memory(), bool)


def test_cpu_decode_releases_free_memory_once_before_decoding(monkeypatch):
    model = tiny_model(seed=3)
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    events = []
    monkeypatch.setattr(pww_ldm.vae, "release_free_memory", lambda: events.append("release"))
    decoder = model.first_stage_model.decoder
    handle = decoder.register_forward_pre_hook(lambda *_: events.append("decode"))
    try:
        released = pww_ldm.vae.decode_latents(model, z)
    finally:
        handle.remove()
    assert events == ["release", "decode", "decode"]  # once, before the first of the 2 images
    monkeypatch.setattr(pww_ldm.vae, "release_free_memory", lambda: None)
    assert torch.equal(released, pww_ldm.vae.decode_latents(model, z))
