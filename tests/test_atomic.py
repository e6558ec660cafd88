"""atomic_file: all or nothing, and new files get the usual permissions (0666 minus umask)."""

from __future__ import annotations

import os
import re
import stat

import pytest
from PIL import Image

from pww_ldm.atomic import atomic_file
from pww_ldm.images import save_png


@pytest.fixture
def umask():
    """os.umask for one test: the previous umask is put back afterwards."""
    previous = os.umask(0o022)
    yield os.umask
    os.umask(previous)


def mode_of(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_new_file_mode_is_0666_minus_umask(tmp_path, umask, mask, expected):
    umask(mask)
    target = tmp_path / "out.bin"
    with atomic_file(target) as f:
        f.write(b"data")
    assert target.read_bytes() == b"data"
    assert mode_of(target) == expected


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_replacing_a_0600_file_gives_the_usual_mode(tmp_path, umask):
    umask(0o022)
    target = tmp_path / "out.png"
    target.write_bytes(b"old")
    os.chmod(target, 0o600)  # as the mkstemp-based writer used to leave it
    save_png(Image.new("RGB", (8, 8), "red"), target, parameters="a cat\nSteps: 1, Seed: 2, Size: 8x8")
    assert mode_of(target) == 0o644
    with Image.open(target) as im:
        assert im.info["parameters"] == "a cat\nSteps: 1, Seed: 2, Size: 8x8"


def test_temporary_name_and_cleanup_on_error(tmp_path):
    target = tmp_path / "grid.png"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_file(target, "w", encoding="utf-8") as f:
            f.write("new")
            names = [p.name for p in tmp_path.iterdir()]
            raise RuntimeError("boom")
    # batch.module.remove_stale_temp_files recognises `.<name>.<random>.tmp`.
    temps = [n for n in names if n != "grid.png"]
    assert len(temps) == 1 and re.fullmatch(r"\.grid\.png\.[0-9a-f]{8}\.tmp", temps[0])
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]
    assert target.read_text() == "old"


def test_text_mode_writes_encoded_text(tmp_path):
    target = tmp_path / "sub" / "manifest.json"
    with atomic_file(target, "w", encoding="utf-8") as f:
        f.write("caf\u00e9")
    assert target.read_bytes() == "caf\u00e9".encode()
