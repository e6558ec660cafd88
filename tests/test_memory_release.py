"""pww_ldm.allocator's malloc tuning: a freed large tensor's memory is reused by the next one
instead of being unmapped and page-faulted in afresh (MALLOC_MMAP_MAX_=0, see the module)."""

import json
import os
import subprocess
import sys

import pytest

# Allocates, fills and frees a 256 MiB tensor (over glibc's 32 MiB mmap-threshold cap) 3 times,
# then counts the minor page faults of doing it 4 times more. (The second allocation alone can
# miss the first's freed chunk: torch asks for 64-byte-aligned memory, and glibc's memalign
# needs a few bytes more than the freed chunk holds; from the third on, the freed chunks have
# merged and are reused.)
PROBE = """
import json, resource, sys
import pww_ldm.allocator as a
tuned = a.tune_malloc() if sys.argv[1] == "tuned" else False
import torch
def fill():
    x = torch.empty(64 * 2**20)
    x.fill_(1.0)
    del x
for _ in range(3):
    fill()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    fill()
print(json.dumps({"tuned": tuned, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def faults(mode: str, **extra_env: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "PWW_LDM_MALLOC"))}
    env.update(extra_env)
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True,
                         env=env, check=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning is Linux-only")
def test_tuned_malloc_reuses_a_freed_large_tensor_without_page_faults():
    untuned, tuned = faults("plain"), faults("tuned")
    assert tuned["tuned"] is True
    # 256 MiB is 65536 pages of 4 KiB: glibc's default maps it afresh each time (thousands of
    # faults even with transparent huge pages); the tuned heap hands the same pages back
    assert untuned["faults"] > 1000
    assert tuned["faults"] < 200


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning is Linux-only")
def test_pww_ldm_malloc_default_leaves_glibc_alone():
    plain = faults("tuned", PWW_LDM_MALLOC="default")
    assert plain["tuned"] is False
    assert plain["faults"] > 1000  # freed blocks unmapped and faulted in afresh, as untuned


def test_pww_ldm_malloc_warns_on_other_values(monkeypatch):
    import pww_ldm.allocator as allocator

    monkeypatch.setattr(allocator, "_tuned", False)
    monkeypatch.setattr(allocator.sys, "platform", "none")  # stop before mallopt: no tuning here
    monkeypatch.setenv("PWW_LDM_MALLOC", "off")
    with pytest.warns(UserWarning, match="PWW_LDM_MALLOC='off' is neither 'tuned' nor 'default'"):
        assert allocator.tune_malloc() is False
