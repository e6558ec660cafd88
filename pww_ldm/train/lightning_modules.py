"""Lightning wrappers that train the plain nn.Modules of pww_ldm.models (the demo model).

Kept here, at the edge: pww_ldm.models never imports Lightning. Two stages, as CompVis does:
`AutoencoderTrainer` fits the KL autoencoder (reconstruction + a small KL term, no GAN), then
`LatentDiffusionTrainer` fits the UNet and the text encoder jointly (cond_stage_trainable) with
the epsilon-prediction loss on the model's own DDPM schedule, over a frozen autoencoder.
"""

from __future__ import annotations

import copy
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from ..config import instantiate_from_config
from ..models.autoencoder import AutoencoderKL
from ..models.latent_diffusion import LatentDiffusion


def adamw(params: list[nn.Parameter], **kwargs: Any) -> torch.optim.AdamW:
    """AdamW, fused where this torch has the fused kernel for the parameters' device (CUDA; CPU
    from torch 2.4): one kernel over all tensors instead of a Python loop, 4x faster on CPU."""
    on_cuda = params[0].is_cuda
    fused = on_cuda or tuple(int(v) for v in torch.__version__.split(".")[:2]) >= (2, 4)
    return torch.optim.AdamW(params, fused=fused, **kwargs)


def warmup_lambda(warmup_steps: int):
    """LR multiplier: linear from ~0 to 1 over `warmup_steps`, then 1."""
    return lambda step: min(1.0, (step + 1) / max(1, warmup_steps))


class ReconstructionKLLoss(nn.Module):
    """L1 + L2 reconstruction (per-element means) + kl_weight * KL per latent element."""

    def __init__(self, kl_weight: float = 1e-5, l2_weight: float = 1.0) -> None:
        super().__init__()
        self.kl_weight, self.l2_weight = kl_weight, l2_weight

    def forward(self, x: torch.Tensor, xrec: torch.Tensor, posterior: Any) -> dict[str, torch.Tensor]:
        """x, xrec (B, 3, H, W); posterior over (B, C, h, w) -> {"loss", "rec", "kl"} scalars."""
        l1 = (x - xrec).abs().mean()
        l2 = (x - xrec).pow(2).mean()
        kl = posterior.kl().mean() / posterior.mean[0].numel()
        rec = l1 + self.l2_weight * l2
        return {"loss": rec + self.kl_weight * kl, "rec": rec.detach(), "kl": kl.detach()}


class AutoencoderTrainer(pl.LightningModule):
    """Stage 1: trains `self.model`, an AutoencoderKL built from a CompVis model config."""

    def __init__(self, model_config: dict, lr: float = 4.5e-4, warmup_steps: int = 200,
                 weight_decay: float = 0.0, betas: tuple[float, float] = (0.5, 0.9)) -> None:
        super().__init__()
        self.save_hyperparameters()
        params = dict(model_config["params"])
        self.loss = instantiate_from_config(params["lossconfig"])
        params["lossconfig"] = {"target": "torch.nn.Identity"}
        self.model: AutoencoderKL = instantiate_from_config({"target": model_config["target"],
                                                             "params": params})

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        """batch["image"] (B, 3, H, W) in [-1, 1] -> scalar loss."""
        x = batch["image"]
        xrec, posterior = self.model(x)
        out = self.loss(x, xrec, posterior)
        self.log_dict({"train/loss": out["loss"], "train/rec": out["rec"], "train/kl": out["kl"]},
                      prog_bar=True, batch_size=x.shape[0])
        return out["loss"]

    def configure_optimizers(self) -> Any:
        """AdamW (CompVis's autoencoder betas unless the config sets them), linear warm-up."""
        opt = adamw(list(self.model.parameters()), lr=self.hparams.lr,
                    betas=tuple(self.hparams.betas), weight_decay=self.hparams.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_lambda(self.hparams.warmup_steps))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class LatentDiffusionTrainer(pl.LightningModule):
    """Stage 2: eps-prediction on random timesteps; UNet + text encoder trained, VAE frozen.

    model_config: the CompVis `model` section (target LatentDiffusion). first_stage_state: the
    trained AutoencoderKL's state_dict (None when resuming: the checkpoint holds it).
    The latent scale is 1/std of the first batch's latents (CompVis's scale_by_std). An EMA copy
    of the trained parts is kept and is what `export_state_dict` returns.
    snr_gamma: None for CompVis's plain eps MSE; a number weights each sample's MSE by
    min(SNR(t), gamma) / SNR(t) (Min-SNR, Hang et al. 2023), which stops the nearly clean
    timesteps from dominating the gradient.
    """

    def __init__(self, model_config: dict, first_stage_state: dict | None = None,
                 lr: float = 2e-4, warmup_steps: int = 500, ucg_rate: float = 0.1,
                 ema_decay: float = 0.999, weight_decay: float = 0.01,
                 snr_gamma: float | None = None) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["first_stage_state"])
        params = dict(model_config["params"])
        params["scale_by_std"] = True  # scale_factor becomes a buffer, saved with the checkpoint
        params["scale_factor"] = 1.0
        self.model: LatentDiffusion = instantiate_from_config({"target": model_config["target"],
                                                               "params": params})
        if first_stage_state is not None:
            self.model.first_stage_model.load_state_dict(first_stage_state, strict=True)
        self.model.first_stage_model.eval().requires_grad_(False)
        self.model.cond_stage_model.requires_grad_(True)
        self.ema_unet = copy.deepcopy(self.model.model).requires_grad_(False)
        self.ema_text = copy.deepcopy(self.model.cond_stage_model).requires_grad_(False)

    def trained_modules(self) -> list[tuple[nn.Module, nn.Module]]:
        """(live, EMA) pairs: the UNet wrapper and the text encoder."""
        return [(self.model.model, self.ema_unet), (self.model.cond_stage_model, self.ema_text)]

    def train(self, mode: bool = True) -> LatentDiffusionTrainer:
        """As nn.Module.train, but the frozen autoencoder and the EMA copies stay in eval mode."""
        super().train(mode)
        for module in (self.model.first_stage_model, self.ema_unet, self.ema_text):
            module.eval()
        return self

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) -> unscaled latent samples (B, 4, H/8, W/8)."""
        return self.model.encode_first_stage(x).sample()

    def latents(self, batch: dict) -> torch.Tensor:
        """Unscaled latent samples (B, 4, h, w) of a batch of images, or drawn from the cached
        posterior moments `latent_mean`, `latent_std` (pww_ldm.train.latent_cache): the same
        distribution, and the same draw for the same random state."""
        if "latent_mean" in batch:
            std = batch["latent_std"]
            return batch["latent_mean"] + std * torch.randn(std.shape, device=std.device, dtype=std.dtype)
        return self.encode(batch["image"])

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        """batch {"image": (B, 3, H, W) or "latent_mean", "latent_std": (B, 4, h, w),
        "caption": [str] * B} -> scalar eps MSE."""
        captions = list(batch["caption"])
        z = self.latents(batch)
        if self.global_step == 0 and float(self.model.scale_factor) == 1.0:  # a fresh run
            self.model.scale_factor.fill_(1.0 / z.flatten().std().item())
            self.print(f"scale_factor = {float(self.model.scale_factor):.5f} (1/std of the latents)")
        z = z * self.model.scale_factor
        drop = torch.rand(len(captions)) < self.hparams.ucg_rate
        captions = ["" if d else c for c, d in zip(captions, drop.tolist(), strict=True)]
        context = self.model.cond_stage_model(captions)
        t = torch.randint(0, self.model.num_timesteps, (z.shape[0],), device=z.device)
        noise = torch.randn_like(z)
        eps = self.model.apply_model(self.model.q_sample(z, t, noise), t, context)
        mse = (eps - noise).pow(2).mean(dim=(1, 2, 3))
        loss = (self.timestep_weights(t) * mse).mean()
        # train/mse: the plain eps MSE, comparable across weightings
        self.log_dict({"train/loss": loss, "train/mse": mse.detach().mean()}, prog_bar=True,
                      batch_size=z.shape[0])
        return loss

    def timestep_weights(self, t: torch.Tensor) -> torch.Tensor:
        """Per-sample loss weights (B,) for timesteps t (B,): ones, or the Min-SNR weights."""
        if self.hparams.snr_gamma is None:
            return torch.ones(t.shape, device=t.device)
        ac = self.model.alphas_cumprod[t].float()
        snr = ac / (1.0 - ac)
        return snr.clamp(max=float(self.hparams.snr_gamma)) / snr

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """EMA update with CompVis's warm-up of the decay: min(decay, (1+n)/(10+n))."""
        n = self.global_step
        decay = min(self.hparams.ema_decay, (1 + n) / (10 + n))
        with torch.no_grad():
            for live, ema in self.trained_modules():
                ema_params = list(ema.parameters())
                torch._foreach_lerp_(ema_params, list(live.parameters()), 1.0 - decay)

    def configure_optimizers(self) -> Any:
        """AdamW over the UNet and the text encoder, linear warm-up."""
        params = list(self.model.model.parameters()) + list(self.model.cond_stage_model.parameters())
        opt = adamw(params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_lambda(self.hparams.warmup_steps))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def export_state_dict(self, use_ema: bool = True) -> dict[str, torch.Tensor]:
        """The LatentDiffusion state_dict (EMA weights for UNet and text encoder), without the
        training-only `scale_factor` buffer: keys as an inference LatentDiffusion has them."""
        sd = {k: v.detach().cpu() for k, v in self.model.state_dict().items() if k != "scale_factor"}
        if use_ema:
            for prefix, ema in (("model.", self.ema_unet), ("cond_stage_model.", self.ema_text)):
                for k, v in ema.state_dict().items():
                    sd[prefix + k] = v.detach().cpu()
        return sd
