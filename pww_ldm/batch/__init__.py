"""Batch generation: job files (JSONL / YAML) run on Lightning's Trainer.predict, one or many
processes or nodes, resumable, with a merged manifest. Entry point: scripts/batch_pww.py."""

from .features import TextSettings
from .inputs import check_job_inputs, job_hash, open_inputs, validate_job_file
from .jobs import Issue, Job, JobFileError, load_jobs, parse_jobs
from .manifest import Summary, merge_manifest, read_records
from .run import main, run_batch

__all__ = ["Issue", "Job", "JobFileError", "Summary", "TextSettings", "check_job_inputs", "job_hash",
           "load_jobs", "main", "merge_manifest", "open_inputs", "parse_jobs", "read_records",
           "run_batch", "validate_job_file"]
