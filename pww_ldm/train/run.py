"""Train the bundled demo model: stage 1 autoencoder, stage 2 latent diffusion, then export.

    python scripts/train_demo.py --minutes 15            # both stages, 15 min each, then export
    python scripts/train_demo.py --resume --minutes 25   # continue both up to 25 min in total
    python scripts/train_demo.py --stage ldm --set ldm.data.batch_size=128

Each stage keeps a Lightning checkpoint (`<out>/<stage>/last.ckpt`) and a CSV log; `--minutes`
is the stage's total training time (Lightning's max_time, counted across resumes). The export
writes models/pww-demo/model.safetensors (fp16 weights, LatentDiffusion state_dict keys) and the
CompVis-format model.yaml beside it, each through a temporary file and a rename.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from pytorch_lightning.callbacks import Callback, ModelCheckpoint, TQDMProgressBar
from pytorch_lightning.loggers import CSVLogger
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset

from ..allocator import tune_malloc
from ..config import get_obj_from_str, instantiate_from_config
from .latent_cache import build_latent_cache
from .shapes import CountingSampler

REPO = Path(__file__).resolve().parents[2]
AE_WEIGHTS = "autoencoder.safetensors"
LATENT_CACHE = "latents.pt"


class LossTracker(Callback):
    """Keeps the last `n` values of train/loss; `mean` is the stage's final loss."""

    def __init__(self, n: int = 200) -> None:
        self.values: collections.deque[float] = collections.deque(maxlen=n)

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        """Record this step's loss."""
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.values.append(float(loss))

    @property
    def mean(self) -> float:
        """Mean of the kept losses (nan when none)."""
        return sum(self.values) / len(self.values) if self.values else float("nan")


def _atomic(path: Path, write) -> Path:
    """Call write(tmp_path) then rename onto `path`: never a partial file under the real name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # as a plain open() would have made it
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def denormals_flushed() -> bool:
    """True when float32 denormals are read and written as zero on this thread's CPU."""
    return bool((torch.full((8,), 1e-39) * 1.5).eq(0).all())


@contextlib.contextmanager
def flush_denormals() -> Iterator[bool]:
    """Treat float32 denormals as zero inside the block (x86 DAZ/FTZ), then restore the setting.

    Flat-colour images can drive activations and gradients of the small demo networks into the
    denormal range, which x86 CPUs compute in microcode: an autoencoder step on 64 px crops of
    128 px images took 2.4 s instead of 0.38 s on 2 cores. Set at process start (in `main`),
    before the intra-op thread pool exists, so its threads start with the same mode.
    Yields whether flushing is on (False where the CPU has no such mode).
    """
    before = denormals_flushed()
    on = torch.set_flush_denormal(True)
    try:
        yield on
    finally:
        torch.set_flush_denormal(before)


def _steps_done(ckpt: Path | None) -> int:
    if ckpt is None:
        return 0
    return int(torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)["global_step"])


def fit_stage(module: pl.LightningModule, cfg: Any, stage_dir: Path, *, minutes: float,
              resume: bool, accelerator: str = "auto", max_steps: int | None = None,
              progress: bool = True, dataset: Dataset | None = None
              ) -> tuple[pl.LightningModule, float]:
    """Fit one stage on `dataset` (default: the config's); returns (module, mean of the last losses).

    cfg: the stage's CompVis config (`data`, `lightning.trainer`). The data stream continues at
    global_step * batch_size on resume, so a resumed run sees new samples.
    """
    stage_dir.mkdir(parents=True, exist_ok=True)
    last = stage_dir / "last.ckpt"
    ckpt = last if resume and last.is_file() else None
    batch_size = int(cfg.data.batch_size)
    dataset = instantiate_from_config(cfg.data) if dataset is None else dataset
    workers = int(cfg.data.get("num_workers", 0))
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers,
                        sampler=CountingSampler(_steps_done(ckpt) * batch_size),
                        persistent_workers=workers > 0, pin_memory=accelerator == "gpu")
    tracker = LossTracker()
    trainer_cfg = dict(OmegaConf.to_container(cfg.lightning.trainer, resolve=True))
    if max_steps is not None:
        trainer_cfg["max_steps"] = max_steps
    trainer = pl.Trainer(
        accelerator=accelerator, devices=1, max_time=timedelta(minutes=minutes),
        logger=CSVLogger(str(stage_dir), name="logs"), default_root_dir=str(stage_dir),
        callbacks=[tracker, TQDMProgressBar(refresh_rate=25),
                   ModelCheckpoint(dirpath=str(stage_dir), save_last=True, save_top_k=0,
                                   train_time_interval=timedelta(minutes=3))],
        use_distributed_sampler=False, enable_progress_bar=progress, enable_model_summary=progress,
        num_sanity_val_steps=0, limit_val_batches=0, **trainer_cfg)
    trainer.fit(module, train_dataloaders=loader, ckpt_path=str(ckpt) if ckpt else None)
    _atomic(last, lambda tmp: trainer.save_checkpoint(str(tmp)))
    return module, tracker.mean


def make_module(cfg: Any, **extra: Any) -> pl.LightningModule:
    """The stage's LightningModule: lightning.module.target(model_config, lr, **params, **extra)."""
    spec = cfg.lightning.module
    params = dict(OmegaConf.to_container(spec.get("params", {}) or {}, resolve=True))
    model_config = OmegaConf.to_container(cfg.model, resolve=True)
    return get_obj_from_str(spec.target)(model_config=model_config,
                                         lr=float(cfg.model.base_learning_rate), **params, **extra)


def train_autoencoder(cfg: Any, out: Path, **fit_args: Any) -> tuple[Path, float]:
    """Stage 1. Writes <out>/autoencoder/autoencoder.safetensors; returns (its path, final loss)."""
    stage_dir = out / "autoencoder"
    module, loss = fit_stage(make_module(cfg), cfg, stage_dir, **fit_args)
    state = {k: v.detach().cpu().contiguous() for k, v in module.model.state_dict().items()}
    path = _atomic(stage_dir / AE_WEIGHTS, lambda tmp: save_file(state, str(tmp)))
    return path, loss


def train_latent_diffusion(cfg: Any, out: Path, ae_weights: Path, **fit_args: Any
                           ) -> tuple[pl.LightningModule, float]:
    """Stage 2 over the stage-1 autoencoder; returns (LatentDiffusionTrainer, final loss).

    With `data.latent_cache: N` in the config, the first N images are encoded once (or the cache
    in <out>/ldm/latents.pt is reused) and the stage trains on their cached posteriors.
    """
    module = make_module(cfg, first_stage_state=load_file(str(ae_weights)))
    n_cached = int(cfg.data.get("latent_cache", 0) or 0)
    dataset = None
    if n_cached:
        autoencoder = module.model.first_stage_model
        gpu = fit_args.get("accelerator") in ("gpu", "cuda", "auto") and torch.cuda.is_available()
        autoencoder.to("cuda" if gpu else "cpu")
        dataset = build_latent_cache(autoencoder, instantiate_from_config(cfg.data), n_cached,
                                     out / "ldm" / LATENT_CACHE, seed=int(cfg.data.params.seed),
                                     progress=fit_args.get("progress", True))
        autoencoder.to("cpu")
    return fit_stage(module, cfg, out / "ldm", dataset=dataset, **fit_args)


def export_demo(module: pl.LightningModule, model_cfg: Any, export_dir: Path,
                dtype: torch.dtype = torch.float16, notes: str = "") -> tuple[Path, Path]:
    """Write model.safetensors (weights in `dtype`, schedule buffers float32) and model.yaml.

    The yaml is the CompVis `model` section with the trained scale_factor and an inference
    (frozen) text encoder; `pww_ldm.load_model(export_dir / "model.safetensors")` reads both.
    notes: extra lines for the yaml's header comment (how it was trained).
    """
    sd = module.export_state_dict()
    weights = {k: (v.to(dtype) if v.is_floating_point() and k.startswith(
        ("model.", "first_stage_model.", "cond_stage_model.")) else v).contiguous()
        for k, v in sd.items()}
    scale = float(module.model.scale_factor)
    cfg = OmegaConf.create({"model": OmegaConf.to_container(model_cfg, resolve=True)})
    cfg.model.params.scale_factor = scale
    cfg.model.params.scale_by_std = False
    cfg.model.params.cond_stage_config.params.freeze = True
    header = ("# pww_ldm demo model: trained by scripts/train_demo.py on the procedural shapes set\n"
              "# (pww_ldm/train/shapes.py); configs/demo/ldm.yaml with scale_factor filled in.\n"
              + "".join(f"# {line}\n" for line in notes.splitlines()))
    meta = {"format": "pt", "scale_factor": f"{scale:.6f}", "source": "pww_ldm scripts/train_demo.py"}
    st = _atomic(export_dir / "model.safetensors", lambda tmp: save_file(weights, str(tmp), meta))
    yml = _atomic(export_dir / "model.yaml",
                  lambda tmp: tmp.write_text(header + OmegaConf.to_yaml(cfg)))
    return st, yml


def load_configs(ae_path: str | Path, ldm_path: str | Path, overrides: list[str] = ()
                 ) -> tuple[Any, Any]:
    """Both stage configs, with `ae.KEY=VALUE` / `ldm.KEY=VALUE` dotlist overrides applied."""
    both = OmegaConf.create({"ae": OmegaConf.load(ae_path), "ldm": OmegaConf.load(ldm_path)})
    both = OmegaConf.merge(both, OmegaConf.from_dotlist(list(overrides)))
    ae_dd = both.ae.model.params.ddconfig
    if OmegaConf.to_container(both.ldm.model.params.first_stage_config.params.ddconfig) != \
            OmegaConf.to_container(ae_dd):
        raise ValueError("ldm config's first_stage_config.params.ddconfig differs from the "
                         "autoencoder config's ddconfig: make them equal")
    return both.ae, both.ldm


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options of scripts/train_demo.py."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--stage", choices=["all", "autoencoder", "ldm", "export"], default="all")
    p.add_argument("--out", default=str(REPO / "outputs" / "train_demo"), help="run directory")
    p.add_argument("--export-dir", default=str(REPO / "models" / "pww-demo"))
    p.add_argument("--ae-config", default=str(REPO / "configs" / "demo" / "autoencoder.yaml"))
    p.add_argument("--ldm-config", default=str(REPO / "configs" / "demo" / "ldm.yaml"))
    p.add_argument("--minutes", type=float, default=15.0, help="per stage, total across resumes")
    p.add_argument("--ae-minutes", type=float, help="stage 1 budget (default --minutes)")
    p.add_argument("--ldm-minutes", type=float, help="stage 2 budget (default --minutes)")
    p.add_argument("--max-steps", type=int, help="cap both stages (smoke runs, tests)")
    p.add_argument("--resume", action="store_true", help="continue from <out>/<stage>/last.ckpt")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--accelerator", default="auto", help="cpu, gpu or auto")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="config overrides, e.g. ldm.data.batch_size=64 ae.model.base_learning_rate=1e-4")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the stages asked for; returns a summary dict (losses, paths, wall times)."""
    tune_malloc()  # first: glibc's default malloc made training here 6-36x slower
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_float32_matmul_precision("high")
    with flush_denormals():
        return _run(args, argv)


def _run(args: argparse.Namespace, argv: list[str] | None) -> dict[str, Any]:
    """main's body, run with denormals flushed."""
    pl.seed_everything(args.seed, workers=True)
    ae_cfg, ldm_cfg = load_configs(args.ae_config, args.ldm_config, args.set)
    out = Path(args.out)
    fit = dict(resume=args.resume, accelerator=args.accelerator, max_steps=args.max_steps)
    summary: dict[str, Any] = {}
    ae_weights = out / "autoencoder" / AE_WEIGHTS
    if args.stage in ("all", "autoencoder"):
        t0 = time.time()
        ae_weights, summary["autoencoder_loss"] = train_autoencoder(
            ae_cfg, out, minutes=args.ae_minutes or args.minutes, **fit)
        summary["autoencoder_wall_s"] = round(time.time() - t0, 1)
    if args.stage in ("all", "ldm", "export"):
        if not ae_weights.is_file():
            raise SystemExit(f"{ae_weights} is missing: run --stage autoencoder first")
        t0 = time.time()
        if args.stage == "export":
            module = make_module(ldm_cfg, first_stage_state=load_file(str(ae_weights)))
            ckpt = out / "ldm" / "last.ckpt"
            state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
            module.load_state_dict(state)
        else:
            module, summary["ldm_loss"] = train_latent_diffusion(
                ldm_cfg, out, ae_weights, minutes=args.ldm_minutes or args.minutes, **fit)
            summary["ldm_wall_s"] = round(time.time() - t0, 1)
        notes = f"command: {' '.join(['scripts/train_demo.py', *(argv or sys.argv[1:])])}"
        notes += f"\ntrain_demo summary: {summary}" if summary else ""
        st, yml = export_demo(module, ldm_cfg.model, Path(args.export_dir), notes=notes)
        n_params = sum(v.numel() for k, v in module.export_state_dict().items()
                       if k.startswith(("model.", "first_stage_model.", "cond_stage_model.")))
        summary.update(weights=str(st), config=str(yml), params=n_params,
                       megabytes=round(st.stat().st_size / 1e6, 2),
                       scale_factor=float(module.model.scale_factor))
    print("summary:", summary, flush=True)
    return summary
