"""The `parameters` text the pipeline writes, read back with A1111's own regex."""

from __future__ import annotations

import hashlib
import json
import re

from tiny import painted_map, save_config, tiny_config, tiny_model, write_checkpoint

import pww_ldm

# A1111's re_param (modules/infotext_utils.py), written out here rather than imported from ours.
A1111_RE_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def test_regions_model_and_hash_survive_a1111s_parser(tmp_path):
    ckpt = write_checkpoint(tiny_model(seed=4), tmp_path / "tiny-v1.safetensors")
    save_config(tiny_config(), tmp_path / "tiny-v1.yaml")
    model = pww_ldm.load_model(ckpt)
    cmap = painted_map(64, 48, ((255, 0, 0), slice(8, 40), slice(4, 30)))
    context = {"#ff0000": "cat,1.5,77", "#000000": "dog,0.5"}
    image = pww_ldm.paint_with_words(model, "a cat, a dog", cmap, context,
                                     steps=1, seed=3, progress=False)[0]
    settings_line = image.info["parameters"].splitlines()[-1]
    pairs = {k: v for k, v in A1111_RE_PARAM.findall(settings_line)}
    regions = json.loads(json.loads(pairs["PwW regions"]))  # quoted JSON string, as A1111 does
    assert regions == [{"color": "#ff0000", "label": "cat", "weight": 1.5, "seed": 77},
                       {"color": "#000000", "label": "dog", "weight": 0.5}]
    assert pairs["Model hash"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()[:10]
    assert pairs["Model"] == "tiny-v1" and pairs["Seed"] == "3" and pairs["Size"] == "64x48"
