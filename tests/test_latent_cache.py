"""The latent cache of the demo training: same posteriors as encoding on the fly, each image once
per epoch, reused only when it was built from the same images and autoencoder."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from pww_ldm.train import latent_cache
from pww_ldm.train.latent_cache import LatentCache, build_latent_cache
from pww_ldm.train.run import make_module
from pww_ldm.train.shapes import ShapesDataset
from tests.test_train import tiny_configs


@pytest.fixture(scope="module")
def trainer(tmp_path_factory: pytest.TempPathFactory):
    """A tiny LatentDiffusionTrainer (random weights) and its data set (32 px shapes)."""
    _, ldm_path = tiny_configs(tmp_path_factory.mktemp("cfg"))
    cfg = OmegaConf.load(ldm_path)
    torch.manual_seed(0)
    return make_module(cfg), ShapesDataset(size=32, seed=5)


def test_cache_holds_the_posteriors_of_the_first_n_images(trainer, tmp_path: Path) -> None:
    module, data = trainer
    autoencoder = module.model.first_stage_model
    cache = build_latent_cache(autoencoder, data, 10, tmp_path / "latents.pt", batch_size=4,
                               progress=False)
    assert len(cache) == 10
    with torch.no_grad():
        posterior = autoencoder.encode(torch.stack([data[i]["image"] for i in range(10)]))
    torch.testing.assert_close(cache.mean, posterior.mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(cache.std, posterior.std, rtol=1e-5, atol=1e-6)
    assert cache.captions == [data[i]["caption"] for i in range(10)]
    assert float(cache.std.min()) > 0  # a posterior, not a single draw


def test_each_epoch_visits_every_image_once_in_its_own_order() -> None:
    n = 7
    cache = LatentCache(torch.arange(n).float().view(n, 1, 1, 1), torch.ones(n, 1, 1, 1),
                        [str(i) for i in range(n)], seed=3)
    epochs = [[cache[e * n + p]["caption"] for p in range(n)] for e in range(3)]
    for visited in epochs:
        assert sorted(visited) == sorted(str(i) for i in range(n))
    assert epochs[0] != epochs[1] or epochs[1] != epochs[2]
    item = cache[2 * n + 4]  # a resumed stream lands on the same items
    assert item["caption"] == epochs[2][4]
    assert float(item["latent_mean"]) == float(item["caption"])


def test_training_on_the_cache_is_training_on_the_images(trainer, tmp_path: Path) -> None:
    module, data = trainer
    cache = build_latent_cache(module.model.first_stage_model, data, 4, tmp_path / "latents.pt",
                               progress=False)
    images = {"image": torch.stack([data[i]["image"] for i in range(4)]),
              "caption": [data[i]["caption"] for i in range(4)]}
    cached = {"latent_mean": cache.mean, "latent_std": cache.std, "caption": cache.captions}
    module.log = lambda *a, **k: None  # no Trainer attached
    module.model.scale_factor.fill_(0.5)  # as after the first step of a run
    losses = []
    for batch in (images, cached):
        torch.manual_seed(11)  # the same posterior draw, caption dropout, timesteps and noise
        with torch.no_grad():
            losses.append(module.training_step(batch, 0))
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-6)


def test_cache_is_reused_only_for_the_same_images_and_autoencoder(trainer, tmp_path: Path,
                                                                  monkeypatch) -> None:
    module, data = trainer
    autoencoder = module.model.first_stage_model
    path = tmp_path / "latents.pt"
    calls = []
    encode = latent_cache.encode_images
    monkeypatch.setattr(latent_cache, "encode_images",
                        lambda *a, **k: calls.append(1) or encode(*a, **k))
    first = build_latent_cache(autoencoder, data, 6, path, progress=False)
    again = build_latent_cache(autoencoder, data, 6, path, progress=False)
    assert len(calls) == 1 and torch.equal(first.mean, again.mean)
    build_latent_cache(autoencoder, ShapesDataset(size=32, seed=6), 6, path, progress=False)
    build_latent_cache(autoencoder, data, 5, path, progress=False)
    assert len(calls) == 3
    changed = copy.deepcopy(autoencoder)  # another autoencoder: only its decoder differs
    with torch.no_grad():
        changed.decoder.conv_out.bias.add_(1.0)
    rebuilt = build_latent_cache(changed, data, 5, path, progress=False)
    assert len(calls) == 4 and torch.equal(rebuilt.mean, first.mean[:5])  # the encoder is the same


def test_a_bad_cache_size_says_what_to_do(trainer, tmp_path: Path) -> None:
    module, data = trainer
    with pytest.raises(ValueError, match="latent_cache must be a positive"):
        build_latent_cache(module.model.first_stage_model, data, 0, tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()
