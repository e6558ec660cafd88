"""How much a trained demo model uses its caption: held-out eps MSE, right vs another caption.

For held-out images of the shapes set, noised to timestep t with the same noise for every
caption, the eps MSE is measured with each image's own caption, with the caption of the next
image (`torch.roll`), and with the empty caption. The gain (wrong - right) is what the text adds
to the prediction: near 0 for a model that ignores its text, and it is the quantity that must
grow before Paint-with-Words can steer anything. It needs no sampling, so it scores a short
training trial in seconds.
"""

from __future__ import annotations

from typing import Any

import torch

from .shapes import ShapesDataset


@torch.no_grad()
def caption_gain(model: Any, n: int = 128, seed: int = 777, size: int = 128,
                 timesteps: tuple[int, ...] = (200, 500, 800, 950)) -> list[dict[str, float]]:
    """One row per timestep: {"t", "right", "wrong", "empty", "gain"} (eps MSEs; gain = wrong - right).

    model: a LatentDiffusion (pww_ldm.load_model). Images: ShapesDataset(size, seed)[0:n], encoded
    to their posterior means (n, 4, size/8, size/8); the noise is seeded by `seed`.
    """
    items = [ShapesDataset(size, seed=seed)[i] for i in range(n)]
    device, dtype = model.device, model.unet_dtype
    images = torch.stack([it["image"] for it in items]).to(device, dtype)
    z = model.encode_first_stage(images).mean * model.scale_factor
    right = model.get_learned_conditioning([it["caption"] for it in items])
    contexts = {"right": right, "wrong": torch.roll(right, 1, 0),
                "empty": model.get_learned_conditioning([""] * n)}
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for step in timesteps:
        noise = torch.randn(z.shape, generator=generator).to(device, dtype)
        t = torch.full((n,), step, device=device, dtype=torch.long)
        noisy = model.q_sample(z, t, noise)
        row = {"t": step}
        for name, context in contexts.items():
            eps = model.apply_model(noisy, t, context)
            row[name] = float((eps.float() - noise.float()).pow(2).mean())
        row["gain"] = row["wrong"] - row["right"]
        rows.append(row)
    return rows
