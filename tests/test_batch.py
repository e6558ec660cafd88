"""Batch generation (issue 7): job-file validation, resume, bad-job isolation, multi-process runs.

Tiny random model, 32 px, 2 steps. The multi-process and kill tests run scripts/batch_pww.py as a
subprocess (Lightning's DDP re-runs the script once per extra process) and are marked slow.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image
from tiny import save_config, tiny_config, tiny_model, write_checkpoint

from pww_ldm.batch import JobFileError, load_jobs, main, read_records, validate_job_file
from pww_ldm.batch.run import lock_outdir

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "batch_pww.py"
PROMPT = "realistic photo of a dog, cat, tree, with beautiful sky, on sandy ground"
DEFAULTS = {"color_map": "cat_dog.png", "color_context": "cat_dog.json", "steps": 2,
            "width": 32, "height": 32}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """A tiny checkpoint with its config beside it (load_model picks <name>.yaml up)."""
    folder = tmp_path_factory.mktemp("model")
    save_config(tiny_config(), folder / "tiny.yaml")
    return write_checkpoint(tiny_model(), folder / "tiny.ckpt", ema=False)


@pytest.fixture
def workdir(tmp_path) -> Path:
    for name in ("cat_dog.png", "cat_dog.json"):
        shutil.copy(REPO / "examples" / name, tmp_path / name)
    return tmp_path


def good_jobs(n: int) -> list[dict]:
    """n varied jobs: PwW, several images, another sampler, inline context, img2img, plain SD."""
    kinds = [{}, {"n_images": 2, "sampler": "DPM++ 2M"},
             {"prompt": "a cat and a dog", "color_context": {"#ff0000": "cat", "#0000ff": "dog,2"}},
             {"init_image": "cat_dog.png", "strength": 0.7, "output": "sub/i2i"},
             {"prompt": "a tree", "color_map": None, "color_context": None, "width": 40}]
    jobs = []
    for i in range(n):
        job = {"id": f"j{i}", "prompt": PROMPT, "seed": 10 * i, **kinds[i % len(kinds)]}
        if "output" in job:
            job["output"] += str(i)
        jobs.append(job)
    return jobs


def write_jsonl(folder: Path, jobs: list[dict], defaults: dict = DEFAULTS) -> Path:
    path = folder / "jobs.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in [{"defaults": defaults}, *jobs]) + "\n")
    return path


def run_script(*args: str, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), *args, "--quiet"], capture_output=True,
                          text=True, env=env, timeout=240, **kwargs)


def manifest(outdir: Path) -> list[dict]:
    return read_records(outdir / "manifest.jsonl")


def without_run(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "run"} for r in records]


def pngs(outdir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(outdir)): p.read_bytes() for p in sorted(outdir.rglob("*.png"))}


def assert_complete(outdir: Path, records: list[dict]) -> None:
    for record in records:
        for name in record["outputs"]:
            with Image.open(outdir / name) as image:
                image.load()
                assert f"Job hash: {record['hash']}" in image.info["parameters"]


# ---- the job file ---------------------------------------------------------------------------

def test_examples_validate():
    for name in ("jobs.jsonl", "jobs.yaml"):
        jobs = validate_job_file(REPO / "examples" / name)
        assert [j.id for j in jobs] == ["cat-dog", "cat-dog-dpm", "cat-dog-std", "two-animals",
                                        "repaint", "plain-sd"]
        assert jobs[1].sampler == "dpmpp_2m_karras" and jobs[1].output_names() == [
            "cat-dog-dpm-0.png", "cat-dog-dpm-1.png"]
        assert jobs[0].color_map == str(REPO / "examples" / "cat_dog.png")  # relative to the file


def test_validation_lists_every_bad_job(workdir, capsys):
    (workdir / "broken.png").write_bytes(b"not a png")
    jobs = good_jobs(2) + [
        {"id": "typo", "prompt": PROMPT, "seed": 1, "stesp": 3},                      # line 4
        {"id": "size", "prompt": PROMPT, "seed": 1, "width": 30, "sampler": "nope"},  # line 5
        {"id": "label", "prompt": "a photo of a horse", "seed": 1},                   # line 6
        {"id": "map", "prompt": PROMPT, "seed": -1, "color_map": "missing.png"},      # line 7
        {"id": "init", "prompt": PROMPT, "seed": 1, "init_image": "broken.png"},      # line 8
        {"id": "j0", "prompt": PROMPT, "seed": 7},                                    # line 9
    ]
    path = write_jsonl(workdir, jobs)
    with path.open("a") as f:
        f.write("{not json\n")                                                        # line 10
    with pytest.raises(JobFileError) as info:
        validate_job_file(path)
    found = {(i.line, i.field) for i in info.value.issues}
    assert found == {(4, "stesp"), (5, "width"), (5, "sampler"), (6, "color_context"),
                     (7, "seed"), (8, "init_image"), (9, "id"), (9, "output"),
                     (10, "-")}
    assert "did you mean 'steps'" in str(info.value)
    assert "'beautiful sky'" in str(info.value) and "not in the prompt" in str(info.value)
    # The script: exit 2, every problem printed, nothing generated.
    outdir = workdir / "out"
    assert main(["--jobs", str(path), "--ckpt", str(path), "--outdir", str(outdir)]) == 2
    err = capsys.readouterr().err
    assert all(f"jobs.jsonl:{n}:" in err for n in range(4, 11))
    assert not outdir.exists()


def test_yaml_lines_and_defaults(workdir):
    path = workdir / "jobs.yaml"
    path.write_text(
        "defaults:\n  color_map: cat_dog.png\n  color_context: cat_dog.json\n  steps: 0\n"
        "  id: shared\njobs:\n"
        f"  - prompt: {PROMPT}\n    seed: 1\n"
        "  - prompt: a photo of a cat\n    seed: 2\n    weight_function: maxx\n"
        "    color_context:\n      '#ff0000': cat\n"
        f"  - prompt: {PROMPT}\n    seed: 3\n    colour_map: x.png\n")
    with pytest.raises(JobFileError) as info:
        load_jobs(path)
    found = {(i.line, i.job, i.field) for i in info.value.issues}
    assert found == {(4, "defaults", "steps"), (5, "defaults", "id"),
                     (11, "job 'job-0002'", "weight_function"),
                     (16, "job 'job-0003'", "colour_map")}
    path.write_text(path.read_text().replace("steps: 0", "steps: 4").replace("  id: shared\n", "")
                    .replace("maxx", "std").replace("    colour_map: x.png\n", ""))
    jobs = validate_job_file(path)
    assert [(j.id, j.steps, j.weight_function) for j in jobs] == [
        ("job-0001", 4, "max"), ("job-0002", 4, "std"), ("job-0003", 4, "max")]


# ---- running --------------------------------------------------------------------------------

def test_bad_job_is_isolated_and_rerun_resumes(workdir, ckpt, capsys):
    jobs = good_jobs(3)
    jobs.insert(1, {"id": "bad", "prompt": "a photo of a horse", "seed": 5})  # label not in prompt
    jobs.append({"id": "nomap", "prompt": PROMPT, "seed": 6, "color_map": "gone.png"})
    path = write_jsonl(workdir, jobs)
    outdir = workdir / "out"
    args = ["--jobs", str(path), "--ckpt", str(ckpt), "--outdir", str(outdir), "--accelerator",
            "cpu", "--quiet"]
    assert main(args) == 2  # caught up front
    assert main([*args, "--no-input-checks"]) == 1  # ... or, unchecked, recorded at run time
    out = capsys.readouterr().out
    assert "FAILED" in out and "job 'bad' (line 3): LabelNotInPromptError" in out
    records = manifest(outdir)
    assert [(r["id"], r["status"], r["cached"]) for r in records] == [
        ("j0", "ok", False), ("bad", "error", False), ("j1", "ok", False), ("j2", "ok", False),
        ("nomap", "error", False)]
    assert "LabelNotInPromptError" in records[1]["error"] and records[1]["outputs"] == ["bad.png"]
    assert "gone.png does not exist" in records[4]["error"]
    assert not (outdir / "bad.png").exists()
    assert records[2]["seeds"] == [10, 11] and records[2]["outputs"] == ["j1-0.png", "j1-1.png"]
    assert_complete(outdir, [r for r in records if r["status"] == "ok"])
    before = pngs(outdir)
    # Rerun: done jobs are reused, not redone; a changed job is redone.
    jobs[3]["seed"] = 99
    write_jsonl(workdir, jobs)
    assert main([*args, "--no-input-checks"]) == 1
    again = manifest(outdir)
    assert [(r["id"], r["status"], r["cached"]) for r in again] == [
        ("j0", "ok", True), ("bad", "error", False), ("j1", "ok", True), ("j2", "ok", False),
        ("nomap", "error", False)]
    assert again[0]["hash"] == records[0]["hash"] and again[3]["hash"] != records[3]["hash"]
    after = pngs(outdir)
    assert {k: v for k, v in after.items() if "j2" not in k} == {
        k: v for k, v in before.items() if "j2" not in k}
    assert after["j2.png"] != before["j2.png"]
    assert not list((outdir / ".batch").glob("part-*"))  # part files merged and removed
    # A second run while one holds the folder: refused before anything starts.
    held = lock_outdir(outdir)
    assert main([*args, "--no-input-checks"]) == 2
    assert "another batch run is writing to" in capsys.readouterr().err
    held.close()


@pytest.mark.slow
def test_two_processes_match_one(workdir, ckpt):
    path = write_jsonl(workdir, good_jobs(5))  # 5 jobs over 2 ranks: uneven split
    one, two = workdir / "one", workdir / "two"
    # Same threads per process: CPU kernels' sums (so the last bit) depend on the thread count.
    common = ["--jobs", str(path), "--ckpt", str(ckpt), "--accelerator", "cpu", "--threads", "1"]
    r1 = run_script(*common, "--outdir", str(one), "--devices", "1")
    assert r1.returncode == 0, r1.stderr[-3000:]
    r2 = run_script(*common, "--outdir", str(two), "--devices", "2", "--strategy", "ddp")
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert "on 2 process(es)" in r2.stdout and "rank 1: 2 job(s)" in r2.stdout, r2.stdout
    assert pngs(one) == pngs(two) and len(pngs(one)) == 6
    m1, m2 = manifest(one), manifest(two)
    assert without_run(m1) == without_run(m2)
    assert sorted(r["run"]["rank"] for r in m2) == [0, 0, 0, 1, 1]
    assert len({r["id"] for r in m2}) == 5


@pytest.mark.slow
def test_kill_9_then_rerun_loses_nothing(workdir, ckpt):
    jobs = [{"id": f"k{i}", "prompt": PROMPT, "seed": i, "steps": 6, "width": 48, "height": 48}
            for i in range(8)]
    path = write_jsonl(workdir, jobs)
    outdir = workdir / "out"
    cmd = [sys.executable, str(SCRIPT), "--jobs", str(path), "--ckpt", str(ckpt), "--outdir",
           str(outdir), "--accelerator", "cpu", "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    while not list(outdir.glob("*.png")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert len(list(outdir.glob("*.png"))) < len(jobs)  # killed mid-run
    for png in outdir.glob("*.png"):  # whatever is there is whole
        with Image.open(png) as image:
            image.load()
    result = run_script("--jobs", str(path), "--ckpt", str(ckpt), "--outdir", str(outdir),
                        "--accelerator", "cpu")
    assert result.returncode == 0, result.stderr[-3000:]
    records = manifest(outdir)
    assert [r["id"] for r in records] == [j["id"] for j in jobs]
    assert all(r["status"] == "ok" for r in records) and any(r["cached"] for r in records)
    assert_complete(outdir, records)
    assert sorted(p.name for p in outdir.iterdir()) == sorted(
        [f"k{i}.png" for i in range(8)] + ["manifest.jsonl", ".batch"])  # no temp file left
    assert [p.name for p in (outdir / ".batch").iterdir()] == ["lock"]  # no part file left


def test_merge_keeps_one_record_per_job_of_this_run(tmp_path, workdir):
    from pww_ldm.batch import merge_manifest
    from pww_ldm.batch.module import remove_stale_temp_files

    jobs = load_jobs(write_jsonl(workdir, good_jobs(3)))
    parts = tmp_path / ".batch"
    parts.mkdir()

    def rec(job_id: str, run_id: str, rank: int) -> str:
        return json.dumps({"id": job_id, "line": 2, "hash": "h", "seeds": [0], "outputs": ["x.png"],
                           "status": "ok", "cached": False, "error": None,
                           "run": {"rank": rank, "seconds": 1.0, "run_id": run_id}})

    (parts / "part-rank0.jsonl").write_text(
        rec("j0", "old", 0) + "\n" + rec("j0", "new", 0) + "\n" + rec("j2", "new", 0) + '\n{"id": "j')
    (parts / "part-rank1.jsonl").write_text(rec("j2", "new", 1) + "\n")  # a duplicate: ignored
    (tmp_path / ".j1-0.png.abc123.tmp").write_bytes(b"torn")  # left by a kill -9
    assert remove_stale_temp_files(tmp_path, jobs) == 1
    summary = merge_manifest(tmp_path, jobs, "new", elapsed=2.0, world_size=2)
    records = manifest(tmp_path)
    assert [(r["id"], r["status"], r["run"]["rank"]) for r in records] == [
        ("j0", "ok", 0), ("j1", "error", None), ("j2", "ok", 0)]
    assert "no result" in records[1]["error"] and summary.failed == [records[1]]
    assert not parts.exists() and "rank 1: 0 job(s)" in summary.text()
