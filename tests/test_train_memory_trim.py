"""release_free_heap hands free malloc memory back to the system (glibc), a no-op elsewhere."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from cryoviz.train.memory import glibc_malloc_trim, release_free_heap

# 400 arrays of 100 KB (below glibc's 128 KB mmap threshold, so they come from the
# heap), all freed but the last, which pins the top of the heap: glibc keeps the
# ~40 MB resident until malloc_trim. Run in a child so pytest's heap is not involved.
CHILD = textwrap.dedent("""
    import json, sys
    import numpy as np

    def anon():
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024

    from cryoviz.train.memory import release_free_heap
    release_free_heap()
    base = anon()
    blocks = [np.ones(100_000 // 8) for _ in range(400)]
    filled = anon()
    last = blocks[-1]
    del blocks
    freed = anon()
    released = release_free_heap()
    trimmed = anon()
    print(json.dumps({"base": base, "filled": filled, "freed": freed, "trimmed": trimmed,
                      "released": released, "last": float(last.sum())}))
""")


@pytest.mark.skipif(glibc_malloc_trim() is None, reason="needs Linux with glibc")
def test_release_free_heap_returns_freed_heap_pages():
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                         check=True, timeout=120)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    mb = {k: round(v / 1e6, 1) for k, v in r.items() if isinstance(v, int)
          and not isinstance(v, bool)}
    assert r["filled"] - r["base"] > 35e6, mb  # the blocks were resident
    assert r["freed"] - r["base"] > 35e6, mb  # and stayed resident after the free
    assert r["released"] is True, mb
    assert r["freed"] - r["trimmed"] > 30e6, mb  # malloc_trim gave them back


def test_release_free_heap_is_a_no_op_without_glibc(monkeypatch):
    import cryoviz.train.memory as memory

    memory.glibc_malloc_trim.cache_clear()
    monkeypatch.setattr(memory.sys, "platform", "darwin")
    try:
        assert memory.glibc_malloc_trim() is None
        assert memory.release_free_heap() is False
    finally:
        memory.glibc_malloc_trim.cache_clear()


@pytest.mark.skipif(glibc_malloc_trim() is None, reason="needs Linux with glibc")
def test_release_free_heap_keeps_live_objects():
    import numpy as np

    data = np.arange(50_000, dtype=np.float64)
    expected = float(data.sum())
    release_free_heap()
    assert float(data.sum()) == expected
