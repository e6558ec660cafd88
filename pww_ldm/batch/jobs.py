"""Job files for batch generation: parse, check every field, report every bad job at once.

A job is what `paint_with_words` takes (plus inpainting's mask, the hires fix and clip skip), one
per JSONL line (an optional first line `{"defaults": {...}}` gives shared fields) or one per item
of a YAML `jobs:` list (with an optional `defaults:` mapping). Relative paths (colour map,
colour-context file, init image, mask) are relative to the job file's folder. `load_jobs` checks
structure, types, unknown fields, sizes, sampler names and fields that go together;
`check_job_inputs` (inputs.py) opens the files, finds the LoRAs and aligns labels with the prompt
(tokenizer only, no model). The fields, their checks and defaults are in fields.py.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .fields import FIELDS, PER_JOB_ONLY, REQUIRED, STRENGTH_DEFAULTS, Bad, unknown_field

CONTEXT_SUFFIXES = (".json", ".yaml", ".yml")


class JobFileError(ValueError):
    """A job file with problems; `issues` lists every one (line, job, field, reason)."""

    def __init__(self, path: str, issues: list[Issue]) -> None:
        self.path, self.issues = path, issues
        lines = "\n".join(f"  {path}:{i}" for i in issues)
        super().__init__(f"{len(issues)} problem(s) in job file {path}; nothing was generated:\n{lines}")


@dataclass(frozen=True)
class Issue:
    """One problem: 1-based line, job id (or "defaults"/"file"), field (or "-"), reason."""

    line: int
    job: str
    field: str
    reason: str

    def __str__(self) -> str:
        where = f" field {self.field!r}:" if self.field != "-" else ""
        return f"{self.line}: {self.job}:{where} {self.reason}"


@dataclass(frozen=True)
class Job:
    """One validated job. Paths are absolute; `color_context` is a file path or inline data.

    index: 0-based position in the file; line: its 1-based line. width/height None = from the
    colour map (else init image, else 512), rounded down to a multiple of 8, as paint_with_words.
    mask_image (with init_image): inpainting, as pww_ldm.inpaint; hr_scale (without init_image):
    the hires fix, as pww_ldm.hires.hires_fix; clip_skip None = the run's --clip-skip.
    """

    index: int
    line: int
    id: str
    output: str
    prompt: str
    seed: int
    negative_prompt: str = ""
    color_map: str | None = None
    color_context: Any = None
    sampler: str = "euler_a"
    steps: int = 30
    guidance_scale: float = 7.5
    weight_function: str = "max"
    weight_scale: float | None = None
    width: int | None = None
    height: int | None = None
    n_images: int = 1
    init_image: str | None = None
    strength: float = 0.5
    eta: float | None = None
    resample: str = "area"
    strict: bool = True
    mask_image: str | None = None
    mask_blur: float = 4.0
    invert_mask: bool = False
    only_masked: bool = False
    only_masked_padding: int = 32
    hr_scale: float | None = None
    hr_denoise: float = 0.5
    hr_upscaler: str = "latent"
    hr_steps: int | None = None
    clip_skip: int | None = None
    self_attention: float = 0.0
    dense_cross: float = 0.0
    attention_guidance: float = 0.0
    base_ratio: float = 1.0
    region_cover: str = "touch"
    region_bias_tokens: str = "end"
    tome: float = 0.0
    deepcache: int = 0
    deepcache_branch: int = 1
    field_lines: dict[str, int] = field(default_factory=dict, compare=False, repr=False)

    def output_names(self) -> list[str]:
        """Output file names relative to the output folder: name.png, or name-<i>.png for i < n."""
        if self.n_images == 1:
            return [f"{self.output}.png"]
        return [f"{self.output}-{i}.png" for i in range(self.n_images)]


def _check_fields(raw: Any, who: str, line: int, lines: Mapping[str, int],
                  issues: list[Issue]) -> dict[str, Any]:
    """Check each field where it is written; return the converted values of the good ones."""
    if not isinstance(raw, Mapping):
        issues.append(Issue(line, who, "-", f"expected a mapping of fields, got {raw!r}"))
        return {}
    good = {}
    for name, value in raw.items():
        at = lines.get(name, line)
        if name not in FIELDS:
            issues.append(Issue(at, who, str(name), unknown_field(str(name))))
        elif who == "defaults" and name in PER_JOB_ONLY:
            issues.append(Issue(at, who, name, "not allowed in defaults: it must differ per job"))
        else:
            try:
                good[name] = FIELDS[name][0](value)
            except Bad as exc:
                issues.append(Issue(at, who, name, str(exc)))
    return good


def _resolve(value: str | None, base: Path) -> str | None:
    if value is None:
        return None
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else (base / path).resolve())


def _build_job(index: int, line: int, raw: Any, lines: Mapping[str, int], defaults: dict[str, Any],
               given: set, base: Path, issues: list[Issue]) -> Job | None:
    jid = raw.get("id") if isinstance(raw, Mapping) and isinstance(raw.get("id"), str) else None
    jid = jid or f"job-{index + 1:04d}"  # the default id: the job's number in the file
    who = f"job {jid!r}"
    before = len(issues)
    values = {**defaults, **_check_fields(raw, who, line, lines, issues)}
    for name, (_, default) in FIELDS.items():
        if name not in values and isinstance(raw, Mapping) and name not in raw:
            if default is REQUIRED and name not in given:
                issues.append(Issue(line, who, name, "required (give it here or in `defaults`)"))
            elif default is not REQUIRED:
                values[name] = default
    issues += _combination_issues(values, who, line, lines)
    if len(issues) > before:
        return None
    values.pop("id", None)
    values["output"] = values["output"] or jid
    if values["strength"] is None:
        values["strength"] = STRENGTH_DEFAULTS["inpaint" if values["mask_image"] else "img2img"]
    ctx = values["color_context"]
    if isinstance(ctx, str) and "\n" not in ctx and Path(ctx).suffix.lower() in CONTEXT_SUFFIXES:
        values["color_context"] = _resolve(ctx, base)
    for key in ("color_map", "init_image", "mask_image"):
        values[key] = _resolve(values[key], base)
    return Job(index=index, line=line, id=jid, field_lines=dict(lines), **values)


def _combination_issues(values: dict[str, Any], who: str, line: int,
                        lines: Mapping[str, int]) -> list[Issue]:
    """Fields that must (or must not) come together: map and context, mask and init image, the
    hires fix and an init image (it is text-to-image, as A1111's)."""
    found = []
    if (values.get("color_map") is None) != (values.get("color_context") is None):
        have, lack = (("color_map", "color_context") if values.get("color_map") is not None
                      else ("color_context", "color_map"))
        found.append(Issue(line, who, lack, f"missing: {have} is given, and the two go together "
                                            "(give both, or set both to null)"))
    if values.get("mask_image") is not None and values.get("init_image") is None:
        found.append(Issue(lines.get("mask_image", line), who, "mask_image",
                           "inpainting needs init_image too (the image whose white mask area is "
                           "repainted): give init_image, or set mask_image to null"))
    if values.get("hr_scale") is not None and values.get("init_image") is not None:
        found.append(Issue(lines.get("hr_scale", line), who, "hr_scale",
                           "the hires fix is for text-to-image jobs: set hr_scale to null, or "
                           "drop init_image (and mask_image)"))
    return found


Item = tuple[int, Any, dict[str, int]]  # (line, raw mapping, field -> line)


def _read_jsonl(text: str, issues: list[Issue]) -> tuple[Item, list[Item]]:
    defaults: Item = (0, {}, {})
    items: list[Item] = []
    for number, row in enumerate(text.splitlines(), start=1):
        if not row.strip():
            continue
        try:
            data = json.loads(row)
        except json.JSONDecodeError as exc:
            issues.append(Issue(number, "file", "-", f"invalid JSON: {exc}"))
            continue
        if isinstance(data, dict) and "defaults" in data:
            if items or defaults[0]:
                issues.append(Issue(number, "defaults", "-", 'a {"defaults": ...} line must come first'))
            elif set(data) != {"defaults"}:
                issues.append(Issue(number, "defaults", "-", "the defaults line holds only 'defaults'"))
            else:
                defaults = (number, data["defaults"], {})
            continue
        items.append((number, data, {}))
    return defaults, items


def _read_yaml(text: str, issues: list[Issue]) -> tuple[Item, list[Item]]:
    import yaml

    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        reason = "invalid YAML: " + " ".join(str(exc).split())
        issues.append(Issue(mark.line + 1 if mark else 1, "file", "-", reason))
        return (0, {}, {}), []

    def key_lines(n: Any) -> dict[str, int]:
        return {k.value: k.start_mark.line + 1 for k, _ in n.value} if isinstance(
            n, yaml.MappingNode) else {}

    if isinstance(data, list):  # a bare list of jobs
        data, node = {"jobs": data}, yaml.MappingNode("", [(yaml.ScalarNode("", "jobs"), node)])
    if not isinstance(data, dict) or "jobs" not in data:
        issues.append(Issue(1, "file", "-", "expected `jobs:` (a list), optionally with `defaults:`"))
        return (0, {}, {}), []
    nodes = {k.value: v for k, v in node.value}
    for key in sorted(set(data) - {"jobs", "defaults"}, key=str):
        issues.append(Issue(key_lines(node).get(key, 1), "file", str(key),
                            "unknown top-level key; expected `defaults:` and `jobs:`"))
    jobs = data["jobs"] or []
    if not isinstance(jobs, list):
        issues.append(Issue(nodes["jobs"].start_mark.line + 1, "file", "jobs", "must be a list"))
        jobs = []
    item_nodes = nodes["jobs"].value if jobs else []
    items = [(n.start_mark.line + 1, job, key_lines(n)) for n, job in zip(item_nodes, jobs, strict=True)]
    dnode = nodes.get("defaults")
    defaults = (0, {}, {})
    if dnode is not None:
        defaults = (dnode.start_mark.line + 1, data["defaults"] or {}, key_lines(dnode))
    return defaults, items


def parse_jobs(path: str | Path) -> tuple[list[Job], list[Issue]]:
    """Parse and check a .jsonl, .yaml / .yml or .json job file (structure, types, names; no file
    opened).

    Returns (the good jobs, every problem found as (line, job, field, reason)).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return [], [Issue(0, "file", "-", f"cannot read the job file: {exc}")]
    issues: list[Issue] = []
    # YAML is a superset of JSON: a .json file ({"defaults", "jobs"} or a list) reads as YAML.
    reader = _read_yaml if path.suffix.lower() in (".yaml", ".yml", ".json") else _read_jsonl
    (dline, draw, dlines), items = reader(text, issues)
    defaults = _check_fields(draw, "defaults", dline, dlines, issues)
    given = set(draw) if isinstance(draw, Mapping) else set()
    base = path.resolve().parent
    jobs = [_build_job(i, line, raw, lines, defaults, given, base, issues)
            for i, (line, raw, lines) in enumerate(items)]
    good = [j for j in jobs if j is not None]
    _check_unique(good, issues)
    if not items and not issues:
        issues.append(Issue(1, "file", "-", "no jobs in the file"))
    return good, issues


def load_jobs(path: str | Path) -> list[Job]:
    """`parse_jobs`, raising JobFileError (every problem, by line) if anything is wrong."""
    jobs, issues = parse_jobs(path)
    if issues:
        raise JobFileError(str(path), sorted(issues, key=lambda i: i.line))
    return jobs


def _check_unique(jobs: list[Job], issues: list[Issue]) -> None:
    ids: dict[str, Job] = {}
    outputs: dict[str, Job] = {}
    for job in jobs:
        if job.id in ids:
            issues.append(Issue(job.line, f"job {job.id!r}", "id",
                                f"duplicate id (also on line {ids[job.id].line})"))
        ids.setdefault(job.id, job)
        for name in job.output_names():
            other = outputs.setdefault(name.lower(), job)
            if other is not job:
                issues.append(Issue(job.line, f"job {job.id!r}", "output",
                                    f"writes {name}, as job {other.id!r} (line {other.line}) does"))
