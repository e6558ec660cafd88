"""`scripts/batch_pww.py`: validate a job file, then generate it on Lightning's `Trainer.predict`.

    python scripts/batch_pww.py --jobs jobs.jsonl --ckpt model.ckpt --outdir out/ \\
        [--accelerator cpu|gpu] [--devices N] [--num-nodes M] [--strategy ddp] \\
        [--vae FILE] [--v-pred] [--lora FILE[:W]] [--lora-dir DIR] [--embeddings-dir DIR] [--clip-skip N]

Exit status: 0 all jobs ok; 1 some job failed (each recorded with its error in the manifest, the
others completed); 2 bad input (the whole job file is checked first: nothing is generated).
With the `ddp` strategy Lightning re-runs this command once per extra local process; each one
validates the file again (cheap) and only global rank 0 prints the summary and sets the status.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Any

from ..cli_text import add_text_flags
from .features import TextSettings, job_approximations
from .inputs import validate_job_file
from .jobs import Job, JobFileError
from .manifest import Summary, summary_from_manifest

PRECISIONS = {"auto": "auto", "autocast": None, "fp32": "fp32", "full": "fp32", "fp16": "fp16",
              "bf16": "bf16"}


def _devices(text: str) -> int | str:
    return text if text == "auto" else int(text)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of scripts/batch_pww.py."""
    p = argparse.ArgumentParser(
        description="Paint-with-Words batch generation from a JSONL/YAML job file, on one or "
                    "many processes (Lightning Trainer.predict). Rerun the same command to resume.")
    p.add_argument("--jobs", required=True, help="job file: .jsonl, .yaml / .yml or .json")
    p.add_argument("--ckpt", default=None,
                   help="SD v1 .ckpt/.safetensors (default: the bundled demo model, else the SD v1 path)")
    p.add_argument("--config", default=None, help="model config YAML (default: <ckpt>.yaml, else SD v1)")
    p.add_argument("--outdir", default="outputs/batch", help="output folder (default outputs/batch)")
    p.add_argument("--accelerator", default="auto", help="cpu, gpu or auto (default)")
    p.add_argument("--devices", type=_devices, default=1, help="processes per node (default 1), or auto")
    p.add_argument("--num-nodes", "--num_nodes", dest="num_nodes", type=int, default=1, help="nodes")
    p.add_argument("--strategy", default="auto",
                   help="Lightning strategy (auto = ddp when more than one process)")
    p.add_argument("--precision", choices=list(PRECISIONS), default="autocast",
                   help="weights dtype: autocast (default) is fp32 on CPU, fp16 on CUDA; auto = "
                        "what each process's device was measured good at (pww_ldm.fast: bf16 on "
                        "CPUs with native bf16, printed); full = fp32")
    p.add_argument("--vae", default=None,
                   help="a separate VAE (.vae.pt, .vae.safetensors, or a whole-model .ckpt)")
    p.add_argument("--v-pred", action="store_true",
                   help="the checkpoint is v-prediction (SD 2.x 768-v) whatever its config says")
    add_text_flags(p)  # --clip-skip (the default of jobs without clip_skip), --lora, ...
    p.add_argument("--fast", action="store_true",
                   help="UNet compiled with weight freezing (pww_ldm.fast): minutes of compiling "
                        "per process at the first image of each size")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads per process (default: cores / processes). On CPU, "
                        "images are byte-identical across process counts only at the same "
                        "thread count (kernels' sums depend on it): e.g. --threads 1")
    p.add_argument("--timeout-hours", type=float, default=48.0,
                   help="how long a finished process waits at the final barrier for the others")
    p.add_argument("--no-input-checks", action="store_true",
                   help="before starting, check only the job file's structure; files and labels "
                        "are then checked per job at run time, a bad job recorded as an error")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--verbose", action="store_true", help="keep Lightning's own messages")
    return p


def _strategy(name: str, devices: int | str, num_nodes: int, timeout_hours: float) -> Any:
    several = num_nodes > 1 or devices == "auto" or (isinstance(devices, int) and devices > 1)
    if name == "ddp" or (name == "auto" and several):
        from pytorch_lightning.strategies import DDPStrategy

        # The final barrier waits for the slowest rank: allow more than gloo/NCCL's 30 min.
        return DDPStrategy(timeout=timedelta(hours=timeout_hours))
    return name


def run_batch(jobs: list[Job], ckpt: str, outdir: str | Path, *, accelerator: str = "auto",
              devices: int | str = 1, num_nodes: int = 1, strategy: str = "auto",
              config: str | None = None, precision: str | None = None, threads: int | None = None,
              progress: bool = True, timeout_hours: float = 48.0, fast: bool = False,
              vae: str | None = None, parameterization: str | None = None,
              text: TextSettings | None = None) -> Summary | None:
    """Generate validated `jobs` into `outdir` with Trainer.predict; resume what exists.

    vae / parameterization: as `load_model`; text: the run's LoRA, embeddings and clip-skip flags.
    Returns the merged Summary on global rank 0, None on the other ranks.
    """
    import pytorch_lightning as pl

    from .module import BatchGenerator

    Path(outdir).mkdir(parents=True, exist_ok=True)
    module = BatchGenerator(jobs, ckpt, outdir, config=config, dtype=precision, threads=threads,
                            fast=fast, vae=vae, parameterization=parameterization, text=text)
    trainer = pl.Trainer(accelerator=accelerator, devices=devices, num_nodes=num_nodes,
                         strategy=_strategy(strategy, devices, num_nodes, timeout_hours),
                         logger=False, enable_checkpointing=False, enable_model_summary=False,
                         enable_progress_bar=progress, use_distributed_sampler=True,
                         inference_mode=True)
    started = time.time()
    try:
        trainer.predict(module, return_predictions=False)
    except BaseException:
        # Lightning kills the processes it started only on Ctrl-C; after any other error here
        # they would wait at a barrier until the timeout.
        launcher = trainer.strategy.launcher
        if launcher is not None and getattr(launcher, "procs", None):
            launcher.kill(signal.SIGKILL)
        raise
    if module.summary is None and trainer.is_global_zero:  # ddp_spawn & co: rank 0 ran elsewhere
        return summary_from_manifest(Path(outdir), time.time() - started, trainer.world_size)
    return module.summary


class OutdirBusyError(RuntimeError):
    """Another batch run holds the output folder."""


def lock_outdir(outdir: Path) -> Any:
    """Hold an exclusive lock on `<outdir>/.batch/lock` for this process's life (released by the
    OS on any exit, kill -9 included); OutdirBusyError if another run holds it.

    Two runs in one folder would merge and delete each other's part files. Taken by the
    launching process of node 0 only; a file system without locks is let through.
    """
    import fcntl

    from .manifest import PART_DIR

    (outdir / PART_DIR).mkdir(parents=True, exist_ok=True)
    handle = open(outdir / PART_DIR / "lock", "w")  # noqa: SIM115 - held until exit
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise OutdirBusyError(f"another batch run is writing to {outdir}/ (lock "
                              f"{outdir / PART_DIR / 'lock'}); wait for it or use another --outdir") from None
    except OSError:
        pass
    return handle


def _quiet_lightning() -> None:
    import pytorch_lightning  # noqa: F401 - it sets its loggers to INFO when imported

    for name in ("pytorch_lightning", "lightning_fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns 0 (all ok), 1 (some job failed) or 2 (bad input, nothing generated)."""
    from ..allocator import tune_malloc
    from ..paths import resolve_checkpoint
    from ..user_errors import USER_ERRORS, UsageError

    tune_malloc()
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    if not args.verbose:
        _quiet_lightning()
    from pytorch_lightning.utilities.rank_zero import rank_zero_only

    try:
        ckpt = resolve_checkpoint(args.ckpt)
        if args.vae is not None and not Path(args.vae).is_file():
            raise UsageError(f"--vae {args.vae}: no such file; pass a VAE file or leave the flag out")
        text = TextSettings.from_args(args)
        jobs = validate_job_file(args.jobs, check_inputs=not args.no_input_checks, text=text)
        approximated = [j.id for j in jobs if job_approximations(j) is not None]
        if args.fast and approximated:
            raise UsageError(f"job(s) {', '.join(map(repr, approximated[:3]))} set tome / deepcache, "
                             "which need the eager UNet: leave out --fast, or those fields")
        if rank_zero_only.rank == 0 and os.environ.get("NODE_RANK", "0") == "0":
            _lock = lock_outdir(Path(args.outdir))  # noqa: F841 - kept open until exit
        if rank_zero_only.rank == 0:
            print(f"{args.jobs}: {len(jobs)} job(s), "
                  f"{sum(j.n_images for j in jobs)} image(s) -> {args.outdir}/", flush=True)
        summary = run_batch(jobs, ckpt, args.outdir, accelerator=args.accelerator,
                            devices=args.devices, num_nodes=args.num_nodes,
                            strategy=args.strategy, config=args.config,
                            precision=PRECISIONS[args.precision], threads=args.threads,
                            progress=not args.quiet, timeout_hours=args.timeout_hours,
                            fast=args.fast, vae=args.vae,
                            parameterization="v" if args.v_pred else None, text=text)
    except (JobFileError, OutdirBusyError, *USER_ERRORS) as exc:
        rank = rank_zero_only.rank
        print(f"error{f' (rank {rank})' if rank else ''}: {exc}", file=sys.stderr)
        return 2
    if summary is None:
        return 0  # not global rank 0: rank 0 reports for everyone
    print(summary.text(), flush=True)
    return 1 if summary.failed else 0
