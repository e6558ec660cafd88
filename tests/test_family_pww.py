"""Paint-with-Words on SD 2.x (eps and v): a region changes the image, zero weights are plain SD."""

import numpy as np
import pytest
from tiny import painted_map
from tiny_families import tiny_family_model

import pww_ldm

PROMPT = "a photo of a cat and a dog"
KW = dict(steps=3, seed=5, progress=False, width=64, height=48)


def color_map():
    return painted_map(64, 48, ((255, 0, 0), slice(8, 40), slice(4, 30)),
                       ((0, 0, 255), slice(10, 30), slice(36, 60)))


@pytest.mark.parametrize("family,sampler", [("sd2", "euler_a"), ("sd2-v", "DPM++ 2M Karras"),
                                            ("sd2-v", "DDIM")])
def test_regions_steer_and_zero_weights_are_plain(family, sampler):
    model = tiny_family_model(family, seed=7)
    assert model.parameterization == ("v" if family == "sd2-v" else "eps")
    kw = dict(KW, sampler=sampler)
    plain = np.asarray(pww_ldm.txt2img(model, PROMPT, **kw)[0])
    zero = pww_ldm.paint_with_words(model, PROMPT, color_map(), {"#ff0000": "cat,0",
                                                                 "#0000ff": "dog,0"}, **kw)[0]
    painted = pww_ldm.paint_with_words(model, PROMPT, color_map(), {"#ff0000": "cat,2",
                                                                    "#0000ff": "dog,2"}, **kw)[0]
    assert np.array_equal(plain, np.asarray(zero))
    assert np.abs(plain.astype(int) - np.asarray(painted).astype(int)).max() > 0
