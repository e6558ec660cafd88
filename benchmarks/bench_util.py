"""Measuring helpers for benchmarks/bench.py: timing, FLOPs, memory, machine facts, output.

Nothing here knows about models: a measurement is a callable timed with warm-up, device
synchronisation and a median over repeats; FLOPs come from torch's FlopCounterMode.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from pww_ldm.fast import auto_precision, cpu_flags


@dataclass
class Row:
    """One line of the results table: a measured case."""

    section: str
    case: str
    impl: str
    dtype: str
    kernel: str = "sdpa"
    median_s: float | None = None
    min_s: float | None = None
    times_s: list[float] = field(default_factory=list)
    gflop: float | None = None
    peak_mib: float | None = None
    note: str = ""

    @property
    def gflops(self) -> float | None:
        """Achieved GFLOP/s: counted FLOPs over the median time."""
        if self.gflop is None or not self.median_s:
            return None
        return self.gflop / self.median_s


def sync(device: torch.device) -> None:
    """Wait for queued device work (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cpu_sdpa_flop(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any,
                   out_shape: Any = None, **kwargs: Any) -> int:
    # torch's FlopCounterMode has no entry for the CPU flash-attention op: same count as the
    # CUDA sdpa kernels (QK^T and PV matmuls).
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _onednn_linear_flop(input_shape: Any, weight_shape: Any, *args: Any, out_shape: Any = None,
                        **kwargs: Any) -> int:
    # nor for oneDNN's dense linear (pww_ldm.gemm.onednn_matmul_t): 2 * rows * in * out.
    rows = 1
    for size in input_shape[:-1]:
        rows *= size
    return 2 * rows * weight_shape[0] * weight_shape[1]


def flop_counter() -> FlopCounterMode:
    """A silent FlopCounterMode that also counts CPU sdpa and oneDNN linears (matmul, conv and
    attention FLOPs)."""
    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flop}
    if hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        mapping[torch.ops.mkldnn._linear_pointwise] = _onednn_linear_flop
    return FlopCounterMode(display=False, custom_mapping=mapping)


def time_fn(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int = 1,
            count_flops: bool = True) -> tuple[list[float], float | None, Any]:
    """Run `fn` warmup times (the first under a FLOP counter), then `repeats` timed runs.

    Returns (seconds of each timed run, GFLOP of one run or None, the last warm-up's output).
    Each timed run is bracketed by device synchronisation.
    """
    gflop, out = None, None
    with torch.inference_mode():
        for i in range(warmup):
            if i == 0 and count_flops:
                counter = flop_counter()
                with counter:
                    out = fn()
                gflop = counter.get_total_flops() / 1e9
            else:
                out = fn()
            sync(device)
        times = []
        for _ in range(repeats):
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times.append(time.perf_counter() - start)
    return times, gflop, out


def measured(row: Row, times: list[float], gflop: float | None) -> Row:
    """Fill a row's timing fields from raw times."""
    row.times_s = [round(t, 5) for t in times]
    row.median_s = statistics.median(times) if times else None
    row.min_s = min(times) if times else None
    row.gflop = gflop
    return row


# ---------------------------------------------------------------- memory


def rss_mib() -> tuple[float, float]:
    """(current RSS, peak RSS since start or the last `reset_peak_rss`) of this process, MiB."""
    values = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                values[line.split(":")[0]] = int(line.split()[1]) / 1024
    return values.get("VmRSS", 0.0), values.get("VmHWM", 0.0)


def malloc_trim() -> None:
    """Give freed heap memory back to the OS (glibc), so a peak measured next starts clean."""
    name = ctypes.util.find_library("c")
    if name:
        try:
            ctypes.CDLL(name).malloc_trim(0)
        except (OSError, AttributeError):
            pass


class PeakRSS:
    """Peak resident memory of this process over a `with` block, in MiB.

    Resets the kernel's high-water mark (/proc/self/clear_refs = 5) at entry; where that is not
    allowed, falls back to sampling VmRSS every 5 ms in a thread (may miss short spikes).
    """

    def __enter__(self) -> PeakRSS:
        self.method = "VmHWM"
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            self.method = "sampled"
        self.start_mib = rss_mib()[0]
        self.sampled = self.start_mib
        self._stop = threading.Event()
        if self.method == "sampled":
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.sampled = max(self.sampled, rss_mib()[0])

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        current, hwm = rss_mib()
        self.peak_mib = hwm if self.method == "VmHWM" else max(self.sampled, current)


# ---------------------------------------------------------------- machine


def cpu_model() -> str:
    """The processor's model name (lscpu / /proc/cpuinfo), else platform.processor()."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_bf16() -> bool:
    """Whether the CPU has native bf16 instructions (what `--precision auto` decides on)."""
    return auto_precision("cpu")[0] == "bf16"


def machine_info(device: torch.device) -> dict[str, Any]:
    """Facts to print above the table and store in the JSON."""
    import diffusers

    flags = cpu_flags()
    info: dict[str, Any] = {
        "cpu": cpu_model(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_bf16_flags": sorted({"avx512_bf16", "amx_bf16", "amx_tile", "avx512f"} & flags),
        "torch": torch.__version__, "diffusers": diffusers.__version__,
        "python": platform.python_version(), "platform": platform.platform(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],  # other work on a shared box
        "precision_auto": auto_precision(device)[1],
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_mem_gib=round(props.total_memory / 2**30, 1),
                    cuda=torch.version.cuda)
    try:
        import xformers

        info["xformers"] = xformers.__version__
    except ImportError:
        info["xformers"] = None
    return info


# ---------------------------------------------------------------- subprocesses

MARKER = "BENCH_RESULT "


def run_worker(task: dict[str, Any], env: dict[str, str] | None = None,
               timeout: float = 1800) -> dict[str, Any]:
    """Run benchmarks/bench_worker.py on `task` in a fresh Python; returns its result dict.

    A fresh process per configuration keeps peak-memory readings and process-wide settings
    (mallopt) apart. Raises RuntimeError with the worker's stderr tail on failure.
    """
    worker = Path(__file__).with_name("bench_worker.py")
    proc = subprocess.run([sys.executable, str(worker), json.dumps(task)], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(MARKER):
            return json.loads(line[len(MARKER):])
    raise RuntimeError(f"worker {task.get('task')} failed (exit {proc.returncode}):\n"
                       + (proc.stderr or proc.stdout)[-3000:])


# ---------------------------------------------------------------- output


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write JSON to `path` via a temporary file in the same folder and os.replace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _fmt(value: float | None, digits: int = 3) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def markdown_table(rows: list[Row]) -> str:
    """The results as a markdown table."""
    head = ("| section | case | impl | dtype | kernel | median s | min s | GFLOP | GFLOP/s "
            "| peak MiB | note |\n|---|---|---|---|---|---:|---:|---:|---:|---:|---|")
    lines = [head]
    for r in rows:
        lines.append(f"| {r.section} | {r.case} | {r.impl} | {r.dtype} | {r.kernel} "
                     f"| {_fmt(r.median_s, 4)} | {_fmt(r.min_s, 4)} | {_fmt(r.gflop, 1)} "
                     f"| {_fmt(r.gflops, 1)} | {_fmt(r.peak_mib, 0)} | {r.note} |")
    return "\n".join(lines)


def ratio_table(ratios: list[dict[str, Any]]) -> str:
    """The key ratios against their targets as a markdown table."""
    lines = ["| ratio | value | target | met |", "|---|---:|---|---|"]
    for r in ratios:
        met = "" if r["met"] is None else ("yes" if r["met"] else "NO")
        lines.append(f"| {r['name']} | {_fmt(r['value'])} | {r['target']} | {met} |")
    return "\n".join(lines)


def rows_as_dicts(rows: list[Row]) -> list[dict[str, Any]]:
    """Rows for the JSON file, with GFLOP/s included."""
    return [{**asdict(r), "gflops": r.gflops} for r in rows]


def time_interleaved(fns: dict[str, Callable[[], Any]], device: torch.device, repeats: int,
                     warmup: int = 1, count_flops: bool = True
                     ) -> dict[str, tuple[list[float], float | None, Any, float | None]]:
    """Time several callables doing comparable work, interleaved repeat by repeat.

    Interleaving (a, b, c, a, b, c, ...) spreads slow periods of a shared machine over all of
    them, so their ratios are fairer than back-to-back blocks. Returns {name: (times, GFLOP of
    one run, the first warm-up's output, CUDA peak MiB during warm-up or None)}.
    """
    out: dict[str, Any] = {}
    for name, fn in fns.items():
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        _, gflop, result = time_fn(fn, device, repeats=0, warmup=warmup, count_flops=count_flops)
        peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
        out[name] = ([], gflop, result, peak)
    with torch.inference_mode():
        for _ in range(repeats):
            for name, fn in fns.items():
                sync(device)
                start = time.perf_counter()
                fn()
                sync(device)
                out[name][0].append(time.perf_counter() - start)
    return out
