"""Stage 2's images encoded once: the frozen autoencoder's posterior of a fixed set of images.

Without it the latent diffusion stage runs the encoder on every batch; on the 2-core CPU that was
0.29 s of a 0.64 s step of the demo config, spent again on every epoch of the same kind of data.
The cache keeps each image's posterior (mean and std, not one draw), and the training step draws
`mean + std * noise` afresh, exactly what encoding the image again would give: the stage learns
the same thing from the same images, only the encoder's cost is paid once per image.

The cache is written beside the stage's checkpoint (atomically) and reused on resume, as long as
the data set's description and the autoencoder's weights are the ones it was built from.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset
from tqdm import tqdm

from ..atomic import atomic_file
from .shapes import ShapesDataset


def weights_fingerprint(module: nn.Module) -> str:
    """sha1 of a module's state (names, shapes, bytes): tells whether a cache came from it."""
    digest = hashlib.sha1()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class LatentCache(Dataset):
    """Index -> {"latent_mean", "latent_std": (C, h, w) float32, "caption": str}.

    Holds n encoded images and walks them epoch by epoch, each epoch in its own seeded order:
    index i is item perm_e[i % n] with e = i // n, so `CountingSampler`'s endless stream (and a
    resume at any step) visits every image once per epoch.
    """

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, captions: list[str], seed: int = 0
                 ) -> None:
        if not (len(mean) == len(std) == len(captions) > 0):
            raise ValueError(f"mean, std and captions must have the same non-zero length, got "
                             f"{len(mean)}, {len(std)}, {len(captions)}")
        self.mean, self.std, self.captions, self.seed = mean, std, list(captions), seed
        self._epoch, self._order = -1, np.arange(0)

    def __len__(self) -> int:
        """The number of distinct encoded images."""
        return len(self.captions)

    def order(self, epoch: int) -> np.ndarray:
        """The permutation (n,) of the cached items visited in `epoch`."""
        if epoch != self._epoch:
            self._epoch = epoch
            self._order = np.random.default_rng([self.seed, epoch]).permutation(len(self))
        return self._order

    def __getitem__(self, index: int) -> dict:
        """The index-th item of the endless, per-epoch shuffled stream."""
        epoch, position = divmod(int(index), len(self))
        j = int(self.order(epoch)[position])
        return {"latent_mean": self.mean[j], "latent_std": self.std[j], "caption": self.captions[j]}


@torch.no_grad()
def encode_images(autoencoder: nn.Module, dataset: Dataset, n: int, batch_size: int = 64,
                  progress: bool = True) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Posterior mean and std (n, C, h, w) float32 on the CPU, and the captions, of dataset[0:n].

    Runs on the autoencoder's device, in eval mode.
    """
    device = next(autoencoder.parameters()).device
    was_training = autoencoder.training
    autoencoder.eval()
    means, stds, captions = [], [], []
    for start in tqdm(range(0, n, batch_size), desc="encoding the latent cache", disable=not progress,
                      unit="batch"):
        items = [dataset[i] for i in range(start, min(start + batch_size, n))]
        posterior = autoencoder.encode(torch.stack([it["image"] for it in items]).to(device))
        means.append(posterior.mean.float().cpu())
        stds.append(posterior.std.float().cpu())
        captions += [it["caption"] for it in items]
    autoencoder.train(was_training)
    return torch.cat(means), torch.cat(stds), captions


def describe(dataset: Dataset) -> str:
    """What identifies a data set's images: class and, for the shapes set, size and seed."""
    if isinstance(dataset, ShapesDataset):
        return f"ShapesDataset(size={dataset.size}, seed={dataset.seed})"
    return type(dataset).__qualname__


def build_latent_cache(autoencoder: nn.Module, dataset: Dataset, n: int, path: Path,
                       batch_size: int = 64, seed: int = 0, progress: bool = True) -> LatentCache:
    """Encode dataset[0:n] with `autoencoder`, or load `path` when it holds exactly that.

    path: where the cache lives (written completely or not at all).
    """
    if n <= 0:
        raise ValueError(f"latent_cache must be a positive number of images, got {n}")
    key = {"n": n, "data": describe(dataset), "autoencoder": weights_fingerprint(autoencoder)}
    if path.is_file():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if saved["key"] == key:
            return LatentCache(saved["mean"], saved["std"], saved["captions"], seed)
    mean, std, captions = encode_images(autoencoder, dataset, n, batch_size, progress)
    with atomic_file(path) as f:
        torch.save({"key": key, "mean": mean, "std": std, "captions": captions}, f)
    return LatentCache(mean, std, captions, seed)
