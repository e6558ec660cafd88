"""The generation scripts' front end (pww_ldm.cli): defaults, checks before the model loads,
one-line errors with exit 2, nothing written on error, --threads; the low modules it shares
with batch generation; import-time behaviour of the package."""

import ast
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

import pww_ldm
from pww_ldm import cli, paths
from pww_ldm.checkpoint import CheckpointError
from pww_ldm.config import instantiate_from_config
from pww_ldm.models.tokenizer import get_tokenizer
from pww_ldm.region import RegionError, label_positions

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "a photo of a cat and a dog"
DEMO = json.loads((paths.DEMO_DIR / "demo.json").read_text())


@pytest.fixture
def inputs(tmp_path):
    """A 64x64 map (red cat, blue dog), its context, an init image and a junk checkpoint."""
    arr = np.zeros((64, 64, 3), np.uint8)
    arr[8:40, 4:30] = (255, 0, 0)
    arr[10:30, 36:60] = (0, 0, 255)
    Image.fromarray(arr).save(tmp_path / "map.png")
    (tmp_path / "ctx.json").write_text(json.dumps({"#ff0000": "cat,1", "#0000ff": "dog,1"}))
    (tmp_path / "fake.ckpt").write_bytes(b"not loadable, and must not be loaded")
    (tmp_path / "text.png").write_text("a text file with an image's name\n")
    (tmp_path / "cut.png").write_bytes((tmp_path / "map.png").read_bytes()[:80])  # truncated
    return tmp_path


@pytest.fixture
def no_model(monkeypatch):
    """Any model load fails the test: the checks must come before it."""
    def load_model(*args, **kwargs):
        pytest.fail("load_model called before the inputs were checked")
    monkeypatch.setattr(pww_ldm, "load_model", load_model)


def base_args(folder):
    return ["--ckpt", folder / "fake.ckpt", "--prompt", PROMPT, "--color-map", folder / "map.png",
            "--color-context", folder / "ctx.json", "--outdir", folder / "out", "--quiet"]


def with_flags(args, *flags):
    """`args` with each flag of `flags` (pairs) replaced or appended."""
    args = list(args)
    for flag, value in zip(flags[::2], flags[1::2], strict=True):
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
    return args


def run_cli(capsys, args, img2img=False):
    status = cli.main([str(a) for a in args], img2img=img2img)
    return status, capsys.readouterr().err


def assert_one_line_error(status, err, *fragments, one_line=True):
    assert status == 2
    assert err.startswith("error: ") and "Traceback" not in err, err
    assert err.count("\n") == 1 or not one_line, err
    for fragment in fragments:
        assert fragment in err


# --- import-time behaviour and module layering ---------------------------------------------

@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")
def test_import_does_not_tune_malloc():
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    code = ("import pww_ldm, pww_ldm.cli, pww_ldm.allocator as a; print(a._tuned); "
            "print(a.tune_malloc(), a._tuned)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=ROOT, timeout=120, check=True).stdout.split("\n")
    assert out[0] == "False"  # import alone: mallopt never called
    assert out[1] == "True True"  # observable here: the entry points' call does tune


def test_entry_points_tune_malloc(monkeypatch, capsys, tmp_path):
    calls = []
    monkeypatch.setattr(cli, "tune_malloc", lambda: calls.append("cli"))
    assert run_cli(capsys, ["--ckpt", tmp_path / "missing.ckpt"])[0] == 2
    monkeypatch.setattr(pww_ldm.allocator, "tune_malloc", lambda: calls.append("batch"))
    from pww_ldm.batch.run import main as batch_main

    assert batch_main(["--jobs", str(tmp_path / "jobs.jsonl"), "--ckpt",
                       str(tmp_path / "missing.ckpt"), "--outdir", str(tmp_path / "b")]) == 2
    assert "missing.ckpt does not exist" in capsys.readouterr().err
    assert calls == ["cli", "batch"]


def _imports(path, everywhere=False):
    """Modules imported by the file: at its top level, or also inside functions."""
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree) if everywhere else tree.body:
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            names.add("." * node.level + (node.module or ""))
    return names


def test_low_modules_import_no_front_end_network_or_pipeline():
    pkg = ROOT / "pww_ldm"
    assert not {"..cli", "pww_ldm.cli"} & _imports(pkg / "batch" / "run.py", everywhere=True)
    heavy = {".pipeline", ".loading", ".cli", "torch"}
    for name in ("paths.py", "user_errors.py", "threads.py"):
        found = _imports(pkg / name)
        assert not found & heavy and not any(n.startswith(".models") for n in found), (name, found)
    assert _imports(pkg / "paths.py") <= {"__future__", "pathlib"}  # standard library only


# --- defaults --------------------------------------------------------------------------------

def parse(*argv, img2img=False):
    return cli.resolve_defaults(cli.build_parser(img2img).parse_args(list(argv)))


@pytest.mark.parametrize("argv", [["--ddim_steps", "10"], ["--ddim_steps=10"], ["--ste", "10"],
                                  ["--steps", "10"]])
def test_demo_defaults_keep_given_steps_alias_and_abbreviation(argv):
    args = parse(*argv)
    assert args.ckpt == str(paths.DEMO_CKPT)
    assert args.steps == 10


def test_demo_defaults_fill_in_what_is_left_out():
    args = parse()
    assert args.prompt == DEMO["prompt"] and args.color_map == str(paths.DEMO_DIR / DEMO["color_map"])
    got = {k: getattr(args, k) for k in ("steps", "scale", "sampler", "weight_function", "weight_scale")}
    assert got == {k: DEMO[k] for k in got}
    assert DEMO["weight_function"] != "max"  # so the test tells demo.json from the usual default
    assert args.compare is True
    given = parse("--weight-f", "max", "--sca", "3", "--no-compare")
    assert (given.weight_function, given.scale, given.compare) == ("max", 3.0, False)


def test_usual_defaults_without_the_demo_model(monkeypatch, inputs):
    monkeypatch.setattr(paths, "DEMO_CKPT", inputs / "absent" / "model.safetensors")
    args = parse("--ckpt", str(inputs / "fake.ckpt"))
    assert (args.steps, args.scale, args.sampler, args.weight_function, args.weight_scale,
            args.compare) == (30, 7.5, "euler_a", "max", None, False)
    assert args.prompt == paths.EXAMPLE_PROMPT and args.color_map == str(paths.EXAMPLE_MAP)


def test_no_checkpoint_anywhere_says_what_to_pass(monkeypatch, capsys, tmp_path, no_model):
    monkeypatch.setattr(paths, "DEMO_CKPT", tmp_path / "pww-demo" / "model.safetensors")
    monkeypatch.setattr(paths, "SD_CKPT", tmp_path / "ldm" / "model.ckpt")
    status, err = run_cli(capsys, [])
    assert_one_line_error(status, err, "no --ckpt given", "demo model", "pass --ckpt")


# --- checks before the model loads -----------------------------------------------------------

@pytest.mark.parametrize("img2img,flags,fragments", [
    (False, ["--color-map", "{d}/text.png"], ["colour map", "text.png", "not an image file"]),
    (False, ["--color-map", "{d}/gone.png"], ["colour map", "gone.png", "does not exist"]),
    (False, ["--color-map", "{d}/cut.png"], ["colour map", "cut.png", "cannot be read"]),
    (False, ["--color-map", "{d}"], ["colour map", "is a folder"]),
    (True, ["--init-img", "{d}/text.png"], ["init image", "text.png", "not an image file"]),
    (True, ["--init-img", "{d}/gone.png"], ["init image", "gone.png", "does not exist"]),
])
def test_unreadable_image_is_one_line_exit_2(capsys, inputs, no_model, img2img, flags, fragments):
    args = with_flags(base_args(inputs), *[f.replace("{d}", str(inputs)) for f in flags])
    if img2img and "--init-img" not in flags:
        args += ["--init-img", inputs / "map.png"]
    assert_one_line_error(*run_cli(capsys, args, img2img), *fragments)


@pytest.mark.parametrize("img2img,flags,fragment", [
    (False, ["--color-context", '{"#ff0000": "horse,1"}'], "horse"),
    (False, ["--color-context", '{"#00ff00": "cat,1"}'], "not in the colour map"),
    (False, ["--color-context", '{"#ff0000": '], "neither valid JSON nor YAML"),
    (False, ["--weight-function", "bogus"], "bogus"),
    (False, ["--W", "60"], "multiples of 8"),
    (False, ["--sampler", "Euler z"], "unknown sampler"),
    (False, ["--steps", "0"], "--steps must be >= 1"),
    (False, ["--n_samples", "0"], "--n_samples must be >= 1"),
    (False, ["--config", "{d}/none.yaml"], "none.yaml does not exist"),
    (False, ["--ckpt", "{d}/none.ckpt"], "none.ckpt does not exist"),
    (True, ["--strength", "0"], "--strength must be in (0, 1]"),
    (True, ["--strength", "1.5"], "--strength must be in (0, 1]"),
    (False, ["--attention-guidance", "-0.5"], "--attention-guidance must be >= 0"),
    (False, ["--self-attention", "-1"], "--self-attention must be >= 0"),
    (False, ["--base-ratio", "1.2"], "--base-ratio must be in [0, 1]"),
    (False, ["--region-cover", "box"], "--region-cover must be one of touch, area, got 'box'"),
    (False, ["--region-bias-tokens", "all"], "--region-bias-tokens must be one of words, words+end, end"),
])
def test_bad_input_fails_before_the_model_loads(capsys, inputs, no_model, img2img, flags, fragment):
    args = with_flags(base_args(inputs), *[f.replace("{d}", str(inputs)) for f in flags])
    if img2img:
        args += ["--init-img", inputs / "map.png"]
    # the YAML parser's own message shows the place over several lines
    one_line = "JSON" not in fragment
    assert_one_line_error(*run_cli(capsys, args, img2img), fragment, one_line=one_line)
    assert not (inputs / "out").exists()


@pytest.mark.parametrize("prompt", [DEMO["prompt"], "a (red circle:1.3), a [blue square] and a red circle"])
def test_bundled_tokenizer_aligns_labels_as_the_demo_model(prompt):
    """The pre-load check aligns labels with get_tokenizer(); the pipeline with the model's own."""
    cond = OmegaConf.load(paths.DEMO_DIR / "model.yaml").model.params.cond_stage_config
    model_tokenizer = instantiate_from_config(cond).tokenizer
    for label in ("red circle", "blue square"):
        expected = label_positions(prompt, label, model_tokenizer)
        assert expected  # found by the model's tokenizer
        assert label_positions(prompt, label, get_tokenizer()) == expected


# --- outputs and threads ---------------------------------------------------------------------

def test_error_after_load_leaves_no_folder(monkeypatch, capsys, inputs):
    monkeypatch.setattr(pww_ldm, "load_model", lambda *a, **k: object())

    def fail(*args, **kwargs):
        raise RegionError("raised by the pipeline")
    monkeypatch.setattr(pww_ldm, "paint_with_words", fail)
    status, err = run_cli(capsys, base_args(inputs))
    assert_one_line_error(status, err, "raised by the pipeline")
    assert not (inputs / "out").exists()


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield before
    torch.set_num_threads(before)


def test_threads_are_set_before_the_model_loads(monkeypatch, capsys, inputs, restore_threads):
    wanted = restore_threads + 1  # differs from the current count, whatever it is
    seen = []

    def load_model(*args, **kwargs):
        seen.append(torch.get_num_threads())
        raise CheckpointError("stop here")
    monkeypatch.setattr(pww_ldm, "load_model", load_model)
    assert run_cli(capsys, with_flags(base_args(inputs), "--threads", wanted))[0] == 2
    assert seen == [wanted]
    with pytest.raises(SystemExit) as exit_info:
        cli.main([str(a) for a in with_flags(base_args(inputs), "--threads", "0")])
    assert exit_info.value.code == 2 and "must be an integer >= 1" in capsys.readouterr().err


def test_eval_regions_writes_under_outputs_by_default():
    spec = importlib.util.spec_from_file_location("eval_regions_script", ROOT / "scripts" / "eval_regions.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = Path(script.build_parser().parse_args([]).out)
    assert not out.is_absolute() and out.parts[0] == "outputs"
    assert Path("benchmarks") / "results" not in [out, *out.parents]


@pytest.mark.filterwarnings("ignore:colour map is 128x128 px")  # the 128 px demo map, at 64 px
def test_demo_model_end_to_end(capsys, tmp_path, restore_threads):
    status, err = run_cli(capsys, ["--steps", 2, "--H", 64, "--W", 64, "--threads", 1,
                                   "--outdir", tmp_path, "--quiet"])
    assert status == 0, err
    sample = Image.open(tmp_path / "samples" / "00000.png")
    assert sample.size == (64, 64)
    assert "Steps: 2" in sample.info["parameters"] and "PwW regions" in sample.info["parameters"]
    assert Image.open(tmp_path / "compare-00000.png").size == (3 * 64, 64)
