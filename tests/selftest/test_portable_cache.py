"""The compile cache that travels (gemma2_regress/builds/portable_cache.py, plugins/compile_artifacts.py):
what one run's pytest process compiled, packed, is a cache hit for a process on an empty cache, with
real torch.compile (Inductor on CPU)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from gemma2_regress.builds import parts as parts_module
from gemma2_regress.builds import portable_cache

ROOT = Path(__file__).resolve().parents[2]

# One graph, compiled where the test runs; prints "hits misses" of the FX graph cache afterwards.
COMPILE = """
import torch
from gemma2_regress.plugins.costs import compile_counters
f = torch.compile(lambda x: torch.tanh(x / 7.0) * 7.0 + 0.25)
assert torch.allclose(f(torch.linspace(-3, 3, 16)), torch.tanh(torch.linspace(-3, 3, 16) / 7) * 7 + 0.25)
c = compile_counters()
print("fxgraph", int(c["fxgraph_hit"]), int(c["fxgraph_miss"]))
"""


def env(cache: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "TORCHINDUCTOR_CACHE_DIR": str(cache),
        "PYTEST_ADDOPTS": "",
        **extra,
    }


def fxgraph(out: str) -> tuple[int, int]:
    line = next(x for x in out.splitlines() if x.startswith("fxgraph "))
    hit, miss = line.split()[1:]
    return int(hit), int(miss)


def test_what_a_run_compiled_is_a_hit_on_an_empty_cache_after_packing(tmp_path: Path, monkeypatch) -> None:
    test = tmp_path / "suite" / "test_compiles.py"
    test.parent.mkdir()
    test.write_text(
        "def test_compiles():\n" + textwrap.indent(COMPILE, "    ") + "\n\ndef test_no_compile():\n    pass\n"
    )
    artifacts = tmp_path / "artifacts"
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-s", "-p", "gemma2_regress.plugins.compile_artifacts", str(test)],
        capture_output=True, text=True, cwd=test.parent,
        env=env(tmp_path / "cache-a", **{portable_cache.ENV: str(artifacts)}),
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert fxgraph(run.stdout) == (0, 1)  # an empty cache: compiled, the control for the hit below
    assert [p.name for p in artifacts.iterdir()] == ["main.bin"]  # whole files only, no temporaries left
    blob = (artifacts / "main.bin").read_bytes()
    one, counts = portable_cache.merge([blob])
    two, again = portable_cache.merge([blob, blob])  # two workers that compiled the same graph
    assert counts == again and counts.get("inductor") == 1 and len(two) == len(one)

    monkeypatch.setattr(parts_module, "PART", 4096)  # several parts, as a large cache would be
    line = portable_cache.pack(artifacts, tmp_path / "out" / portable_cache.PREFIX)
    parts = sorted((tmp_path / "out").glob(portable_cache.PREFIX + "*"))
    assert len(parts) >= 2 and parts[0].name.endswith(".aa") and "1 inductor" in line, line

    fresh = tmp_path / "cache-b"
    load = "import sys\nfrom pathlib import Path\nfrom gemma2_regress.builds import portable_cache\n"
    load += "print(portable_cache.load([Path(p) for p in sys.argv[1:]]))\n"
    run = subprocess.run(
        [sys.executable, "-c", load + COMPILE, *map(str, parts)],
        capture_output=True,
        text=True,
        env=env(fresh),
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"into {fresh}" in run.stdout and fxgraph(run.stdout) == (1, 0), run.stdout


def test_merge_keeps_every_variant_of_a_key() -> None:
    """An FX-graph key holds one compiled variant per set of shape guards: all of them must travel."""
    from torch.compiler._cache import CacheArtifactFactory, _serialize_single_cache
    from torch.utils._appending_byte_serializer import AppendingByteSerializer

    def blob(*contents: bytes) -> bytes:
        writer = AppendingByteSerializer(serialize_fn=_serialize_single_cache)
        writer.extend([("inductor", [CacheArtifactFactory.create("inductor", "fkey", c) for c in contents])])
        return writer.to_bytes()

    _, counts = portable_cache.merge([blob(b"at 4096 tokens", b"at 8192 tokens"), blob(b"at 8192 tokens")])
    assert counts == {"inductor": 2}
