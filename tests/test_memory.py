"""keep_freed_memory: large tensors allocated again reuse memory instead of faulting in pages."""

import subprocess
import sys

import pytest

# one process per setting, since the setting is process-wide and cannot be undone
SCRIPT = """
import resource, sys, torch
from nifty_fishernet.memory import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else None
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(2):  # 80 MB, allocated and freed: the heap grows to hold it
    torch.ones(10_000_000, dtype=torch.float64)
before = faults()
for _ in range(5):
    torch.ones(10_000_000, dtype=torch.float64)
print(applied, faults() - before)
"""


def minor_faults(setting):
    out = subprocess.run([sys.executable, "-c", SCRIPT, setting], capture_output=True,
                         text=True, check=True).stdout.split()
    return out[0], int(out[1])


def test_keep_freed_memory_reuses_large_blocks():
    applied, kept = minor_faults("keep")
    if applied == "False":
        pytest.skip("the C library is not glibc: keep_freed_memory changes nothing there")
    assert applied == "True"
    _, default = minor_faults("default")
    # five fresh 80 MB blocks fault in five times their pages; reused, at most the first of
    # them does (glibc may place it anew once, next to the small blocks made meanwhile)
    assert default > 0
    assert kept <= default / 4, (kept, default)
