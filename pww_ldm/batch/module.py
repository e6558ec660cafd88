"""The Lightning side of batch generation: a job Dataset and a LightningModule for Trainer.predict.

Each process loads the model once (in `setup`), takes the jobs Lightning's distributed sampler
gives it (job i goes to rank i % world_size), and for each job writes its PNGs atomically and one
line to its own part file (`<outdir>/.batch/part-rank<r>.jsonl`, flushed and fsynced per job).
After a barrier, rank 0 merges the parts into `<outdir>/manifest.jsonl` (see manifest.py).
"""

from __future__ import annotations

import json
import os
import time
import uuid
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from ..images import save_png
from .features import TextSettings, generate_job, prepare_model
from .inputs import job_hash, open_inputs
from .jobs import Job
from .manifest import PART_DIR, Summary, merge_manifest


class JobDataset(Dataset):
    """The jobs, in file order; `None` items pad the list up to the number of processes."""

    def __init__(self, jobs: list[Job], min_length: int = 1) -> None:
        self.items: list[Job | None] = list(jobs) + [None] * max(0, min_length - len(jobs))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Job | None:
        return self.items[index]


def first_item(batch: list[Any]) -> Any:
    """collate_fn for batch_size=1: the job itself (no tensor collation)."""
    return batch[0]


def model_id(ckpt: str | os.PathLike, dtype: str | None, vae: str | os.PathLike | None = None,
             parameterization: str | None = None) -> str:
    """What identifies the weights in a job's hash: file name, size in bytes, dtype asked for,
    then the separate VAE's name and size and a forced parameterization, when given.

    Name and size (not mtime) so every node of a cluster computes the same id for its copy.
    """
    path = Path(ckpt)
    key = f"{path.name}:{path.stat().st_size}:{dtype or 'auto'}"
    if vae is not None:
        key += f":vae={Path(vae).name}:{Path(vae).stat().st_size}"
    return key + (f":{parameterization}-prediction" if parameterization else "")


def output_is_complete(path: Path, digest: str) -> bool:
    """Whether `path` is a fully decodable PNG written for the job with this parameters hash."""
    try:
        with Image.open(path) as image:
            image.load()
            text = image.info.get("parameters", "")
    except (OSError, SyntaxError, ValueError):
        return False
    return f"Job hash: {digest}" in text


def run_job(model: Any, job: Job, outdir: Path, model_key: str, rank: int,
            text: TextSettings | None = None) -> dict[str, Any]:
    """Generate one job (or reuse its complete outputs); return its manifest record.

    text: the run's text flags (they enter the job hash). Any exception of the job (unreadable
    map, label not in prompt, ...) becomes status "error" with its message; the caller goes on
    with the next job.
    """
    started = time.perf_counter()
    names = job.output_names()
    record: dict[str, Any] = {"id": job.id, "line": job.line, "hash": None,
                              "seeds": [job.seed + i for i in range(job.n_images)],
                              "outputs": names, "status": "ok", "cached": False, "error": None}
    try:
        inputs = open_inputs(job)
        digest = job_hash(job, inputs, model_key, text)
        record["hash"] = digest
        paths = [outdir / name for name in names]
        if all(output_is_complete(p, digest) for p in paths):
            record["cached"] = True
        else:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="colour map is")  # resized to the job
                images = generate_job(model, job, inputs, digest)
            for image, path in zip(images, paths, strict=True):
                save_png(image, path)
    except Exception as exc:  # one bad job must not stop the batch
        record.update(status="error", error=f"{type(exc).__name__}: {exc}")
    record["run"] = {"rank": rank, "seconds": round(time.perf_counter() - started, 3),
                     "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    return record


class PartWriter:
    """Appends one JSON line per record to a rank's part file, flushed and fsynced each time,
    so a process killed at any moment leaves at most one torn last line (skipped on reading)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(path, "a", encoding="utf-8")  # closed in close()
        if self.file.tell():
            self.file.write("\n")  # end a line a killed run may have torn

    def write(self, record: dict[str, Any]) -> None:
        """Append `record` and push it to disk."""
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        os.fsync(self.file.fileno())

    def close(self) -> None:
        """Close the file."""
        self.file.close()


class BatchGenerator(pl.LightningModule):
    """Wraps the pipeline for `Trainer.predict`: one model per process, one job per step.

    jobs: validated jobs. ckpt/config/dtype/use_ema/attention/fast/vae/parameterization: as
    `load_model`, except dtype "auto": each process takes `pww_ldm.fast.auto_precision` and
    `auto_vae_precision` of its device (the job hash names what was picked). threads: torch
    CPU threads per process (None = Lightning's choice). text: the run's LoRA / embeddings /
    clip-skip flags (default: none). After predict, `summary` holds the merged result on global
    rank 0 (None elsewhere).
    """

    def __init__(self, jobs: list[Job], ckpt: str, outdir: str | os.PathLike, config: str | None = None,
                 dtype: str | None = None, use_ema: bool = False, attention: str = "auto",
                 threads: int | None = None, fast: bool = False, vae: str | None = None,
                 parameterization: str | None = None, text: TextSettings | None = None) -> None:
        super().__init__()
        self.jobs, self.ckpt, self.outdir = jobs, ckpt, Path(outdir)
        self.load_options = dict(config=config, dtype=dtype, use_ema=use_ema, attention=attention,
                                 fast=fast, vae=vae, parameterization=parameterization)
        self.threads = threads
        self.text = text or TextSettings()
        self.model_key = model_id(ckpt, dtype, vae, parameterization)
        self.summary: Summary | None = None

    def setup(self, stage: str) -> None:
        """Per process: agree on a run id, clear stale temp files (rank 0), load the model, apply
        the text flags and check the jobs' clip skips (UsageError before any image)."""
        from ..loading import load_model
        from ..threads import set_threads

        set_threads(self.threads)
        strategy = self.trainer.strategy
        self.run_id = strategy.broadcast(uuid.uuid4().hex if self.global_rank == 0 else None, src=0)
        if self.global_rank == 0:
            remove_stale_temp_files(self.outdir, self.jobs)
        strategy.barrier("pww-batch-setup")
        options = self._resolved_precision(strategy.root_device)
        # Kept out of nn.Module registration: Lightning must not move, wrap or summarise it.
        engine = load_model(self.ckpt, device=strategy.root_device, **options)
        prepare_model(engine, self.text, self.jobs)
        self.__dict__["engine"] = engine
        self.part = PartWriter(self.outdir / PART_DIR / f"part-rank{self.global_rank}.jsonl")
        self.started = time.time()

    def _resolved_precision(self, device: torch.device) -> dict[str, Any]:
        """load_model's options with dtype "auto" replaced by this device's measured choice (UNet
        and text encoder, VAE); the model key then names the dtypes that run."""
        options = dict(self.load_options)
        if options["dtype"] != "auto":
            return options
        from ..fast import auto_dtypes

        unet, vae, report = auto_dtypes(device)
        if self.global_rank == 0:
            print(report, flush=True)
        options.update(dtype=unet, vae_dtype=vae)
        self.model_key = model_id(self.ckpt, f"{unet}/vae-{vae}", options["vae"], options["parameterization"])
        return options

    def predict_dataloader(self) -> DataLoader:
        """One job per step; Lightning swaps in its distributed sampler when world_size > 1."""
        dataset = JobDataset(self.jobs, min_length=self.trainer.world_size)
        return DataLoader(dataset, batch_size=1, shuffle=False, collate_fn=first_item)

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """Jobs are descriptions, not tensors: nothing to move."""
        return batch

    def predict_step(self, job: Job | None, batch_idx: int) -> dict[str, Any]:
        """Run one job, append its record to this rank's part file and return it."""
        world = self.trainer.world_size
        if job is None or job.index % world != self.global_rank:
            return {"skipped": True}  # padding, or a duplicate a padding sampler gave a 2nd rank
        record = run_job(self.__dict__["engine"], job, self.outdir, self.model_key, self.global_rank,
                         self.text)
        record["run"]["run_id"] = self.run_id
        self.part.write(record)
        return record

    def on_predict_end(self) -> None:
        """Barrier, then rank 0 merges every rank's part into the manifest."""
        self.part.close()
        self.trainer.strategy.barrier("pww-batch-done")
        if self.global_rank == 0:
            self.summary = merge_manifest(self.outdir, self.jobs, self.run_id,
                                          elapsed=time.time() - self.started,
                                          world_size=self.trainer.world_size)


def remove_stale_temp_files(outdir: Path, jobs: list[Job]) -> int:
    """Delete the temporary files a killed run left beside this batch's outputs; return count.

    save_png's temporaries are named `.<name>.<random>.tmp` (pww_ldm.atomic); each folder is
    listed once.
    """
    names: dict[Path, set[str]] = {}
    for job in jobs:
        for name in job.output_names():
            target = outdir / name
            names.setdefault(target.parent, set()).add(target.name)
    removed = 0
    for folder, wanted in names.items():
        if not folder.is_dir():
            continue
        for entry in os.scandir(folder):
            name = entry.name
            if name.startswith(".") and name.endswith(".tmp") and entry.is_file():
                if name[1:-len(".tmp")].rpartition(".")[0] in wanted:
                    Path(entry.path).unlink(missing_ok=True)
                    removed += 1
    return removed
