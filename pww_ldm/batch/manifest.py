"""The manifest: every rank's part files merged into one `manifest.jsonl`, and the run summary.

One line per job, in job-file order: {"id", "line", "hash", "seeds", "outputs", "status"
("ok" | "error"), "cached" (outputs reused from an earlier run), "error", "run": {"rank",
"seconds", "finished", "run_id"}}. Everything outside "run" is the same whatever the number of
processes; "run" says where and when the job ran.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import atomic_file
from .jobs import Job

MANIFEST = "manifest.jsonl"
PART_DIR = ".batch"  # per-rank part files, removed after the merge


def read_records(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSONL file; blank lines and a line torn by a kill are skipped."""
    records = []
    for row in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(row)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def write_jsonl_atomic(path: Path, records: list[dict[str, Any]]) -> None:
    """Write JSON lines to a temporary file beside `path`, fsync, then rename over it."""
    with atomic_file(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)


@dataclass
class Summary:
    """What a run did: the merged records, its wall time and the number of processes."""

    records: list[dict[str, Any]]
    elapsed: float
    world_size: int
    manifest: Path
    per_rank: dict[int, dict[str, int]] = field(default_factory=dict)

    @property
    def failed(self) -> list[dict[str, Any]]:
        """Records with status "error"."""
        return [r for r in self.records if r["status"] != "ok"]

    @property
    def images_generated(self) -> int:
        """Images generated in this run (reused outputs not counted)."""
        return sum(len(r["outputs"]) for r in self.records if r["status"] == "ok" and not r["cached"])

    def text(self) -> str:
        """The human summary: counts, speed, per-rank counts, every failure with its message."""
        ok = [r for r in self.records if r["status"] == "ok"]
        reused = sum(1 for r in ok if r["cached"])
        n = self.images_generated
        rate = n / self.elapsed if self.elapsed > 0 else 0.0
        lines = [f"{len(self.records)} job(s): {len(ok)} ok ({len(ok) - reused} generated, "
                 f"{reused} reused), {len(self.failed)} failed; {n} image(s) in "
                 f"{self.elapsed:.1f} s = {rate:.3f} images/s ({rate * 60:.1f} images/min) "
                 f"on {self.world_size} process(es)"]
        for rank, c in sorted(self.per_rank.items()):
            lines.append(f"  rank {rank}: {c['jobs']} job(s), {c['images']} image(s) generated, "
                         f"{c['reused']} reused, {c['failed']} failed")
        lines.append(f"manifest: {self.manifest}")
        if self.failed:
            lines.append("FAILED:")
            lines += [f"  job {r['id']!r} (line {r['line']}): {r['error']}" for r in self.failed]
        return "\n".join(lines)


def merge_manifest(outdir: Path, jobs: list[Job], run_id: str, elapsed: float,
                   world_size: int) -> Summary:
    """Merge this run's records from every part file into `<outdir>/manifest.jsonl`.

    Only records of `run_id` count (parts left by a killed run hold older ones); the first record
    of a job wins, so a job can never appear twice; a job with no record (a rank died) is an error.
    The part files are removed once the manifest is written.
    """
    parts = sorted((outdir / PART_DIR).glob("part-*.jsonl"))
    found: dict[str, dict[str, Any]] = {}
    for part in parts:
        for record in read_records(part):
            if record.get("run", {}).get("run_id") == run_id:
                found.setdefault(record.get("id"), record)
    records = []
    for job in jobs:
        record = found.get(job.id) or {
            "id": job.id, "line": job.line, "hash": None,
            "seeds": [job.seed + i for i in range(job.n_images)], "outputs": job.output_names(),
            "status": "error", "cached": False,
            "error": "no result: no process reported this job (did one crash?)",
            "run": {"rank": None, "seconds": None, "finished": None, "run_id": run_id}}
        records.append(record)
    outdir.mkdir(parents=True, exist_ok=True)
    manifest = outdir / MANIFEST
    write_jsonl_atomic(manifest, records)
    for part in parts:
        part.unlink(missing_ok=True)
    try:
        (outdir / PART_DIR).rmdir()
    except OSError:
        pass  # not empty (someone else's files) or already gone
    return Summary(records, elapsed, world_size, manifest, _per_rank(records, world_size))


def summary_from_manifest(outdir: Path, elapsed: float, world_size: int) -> Summary:
    """The Summary of the run that last wrote `<outdir>/manifest.jsonl` (for spawn strategies,
    whose rank 0 ran in another process)."""
    records = read_records(outdir / MANIFEST)
    return Summary(records, elapsed, world_size, outdir / MANIFEST, _per_rank(records, world_size))


def _per_rank(records: list[dict[str, Any]], world_size: int) -> dict[int, dict[str, int]]:
    counts: dict[int, Counter] = {rank: Counter() for rank in range(world_size)}
    for r in records:
        rank = r["run"]["rank"]
        if rank is None:
            continue
        c = counts.setdefault(rank, Counter())
        c["jobs"] += 1
        if r["status"] != "ok":
            c["failed"] += 1
        elif r["cached"]:
            c["reused"] += 1
        else:
            c["images"] += len(r["outputs"])
    keys = ("jobs", "images", "reused", "failed")
    return {rank: {k: c[k] for k in keys} for rank, c in counts.items()}
