"""The compile cache that travels (gemma2_regress/builds/portable_cache.py, plugins/compile_artifacts.py):
what one run's pytest process compiled, packed, is a cache hit for a process on an empty cache, with
real torch.compile (Inductor on CPU). Packing and merging run in child processes, as the tier driver
runs them: torch's artifact registry does not survive an in-process pytester run's module reset."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from gemma2_regress.builds import portable_cache

ROOT = Path(__file__).resolve().parents[2]

# Two graphs, compiled where the test runs; prints "hits misses" of the FX graph cache after each. Matmuls:
# Inductor hands them to an extern kernel, so no C++ is built and a graph costs seconds, not tens of them.
COMPILE = """
import torch
from gemma2_regress.plugins.costs import compile_counters
a, b = torch.randn(4, 8, generator=torch.Generator().manual_seed(0)), torch.eye(8)
def check(graph, want):
    assert torch.equal(torch.compile(graph)(a, b), want)
    c = compile_counters()
    print("fxgraph", int(c["fxgraph_hit"]), int(c["fxgraph_miss"]))
"""
FIRST, SECOND = "check(lambda x, y: x @ y, a)", "check(lambda x, y: y @ x.t(), a.t())"


def child(argv: list[str], cache: Path, **extra: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "TORCHINDUCTOR_CACHE_DIR": str(cache),
        "PYTEST_ADDOPTS": "",
        **extra,
    }
    run = subprocess.run([sys.executable, *argv], capture_output=True, text=True, env=env, cwd=ROOT)
    assert run.returncode == 0, run.stdout + run.stderr
    return run


def fxgraph(out: str) -> tuple[int, int]:
    hit, miss = re.findall(r"fxgraph (\d+) (\d+)", out)[-1]  # the last: the counters only grow
    return int(hit), int(miss)


def test_what_a_run_compiled_is_a_hit_on_an_empty_cache_after_packing(tmp_path: Path) -> None:
    test = tmp_path / "test_compiles.py"
    # Each compiling test makes the process save again: the pack must hold both saves' graphs.
    test.write_text(
        COMPILE + f"\n\ndef test_compiles():\n    {FIRST}\n\ndef test_no_compile():\n    pass\n"
        f"\n\ndef test_compiles_another():\n    {SECOND}\n"
    )
    artifacts = tmp_path / "artifacts"
    # The run's own cache: the tier's persistent one where set (a hit is recorded as an artifact too).
    cache = Path(os.environ.get("TORCHINDUCTOR_CACHE_DIR") or tmp_path / "cache-a")
    run = child(
        ["-m", "pytest", "-q", "-s", "-p", "gemma2_regress.plugins.compile_artifacts", "--rootdir", str(tmp_path),
         str(test)],
        cache, **{portable_cache.ENV: str(artifacts)},
    )  # fmt: skip
    assert sum(fxgraph(run.stdout)) == 2  # compiled, or found in that cache
    assert [p.name for p in artifacts.iterdir()] == ["main.bin"]  # whole files only, no temporaries left

    prefix = tmp_path / "out" / portable_cache.PREFIX
    run = child(
        ["-m", "gemma2_regress.builds.portable_cache", "pack", str(artifacts), str(prefix)], tmp_path / "x"
    )
    parts = sorted(prefix.parent.glob(prefix.name + "*"))
    # torch's own reader of a twice-saved file would keep the last save's graph alone ("1 inductor").
    assert [p.name for p in parts] == [portable_cache.PREFIX + "aa"] and "2 inductor" in run.stdout, (
        run.stdout
    )

    fresh = tmp_path / "cache-b"  # empty: a hit can only come from the loaded parts
    load = "import sys\nfrom pathlib import Path\nfrom gemma2_regress.builds import portable_cache\n"
    load += "print(portable_cache.load([Path(p) for p in sys.argv[1:]]))\n"
    run = child(["-c", load + COMPILE + f"\n{FIRST}\n{SECOND}\n", *map(str, parts)], fresh)
    assert f"into {fresh}" in run.stdout and fxgraph(run.stdout) == (2, 0), run.stdout


MERGE = """
from torch.compiler._cache import CacheArtifactFactory, CacheArtifactManager, _serialize_single_cache
from torch.utils._appending_byte_serializer import AppendingByteSerializer
from gemma2_regress.builds import portable_cache

CacheArtifactManager._ensure_cache_artifacts_registered()


def blob(*contents):
    writer = AppendingByteSerializer(serialize_fn=_serialize_single_cache)
    writer.extend([("inductor", [CacheArtifactFactory.create("inductor", "fkey", c) for c in contents])])
    return writer.to_bytes()


one, counts = portable_cache.merge([blob(b"at 4096 tokens", b"at 8192 tokens")])
two, again = portable_cache.merge([blob(b"at 4096 tokens", b"at 8192 tokens"), blob(b"at 8192 tokens")])
print("merged", counts["inductor"], again["inductor"], one == two)

# Two workers' files packed into several parts (a part limit of 64 bytes), read back in order as load does.
import lzma
import sys
from pathlib import Path
from gemma2_regress.builds import parts

tmp = Path(sys.argv[1])
(tmp / "art").mkdir()
(tmp / "art" / "gw0.bin").write_bytes(blob(b"at 4096 tokens", b"at 8192 tokens"))
(tmp / "art" / "gw1.bin").write_bytes(blob(b"at 8192 tokens"))
parts.PART = 64
print(portable_cache.pack(tmp / "art", tmp / "out" / portable_cache.PREFIX))
packed = sorted((tmp / "out").iterdir())
print("parts", " ".join(p.name[-2:] for p in packed))
with parts.joined(packed) as stream:
    print("joined back", lzma.decompress(stream.read()) == two)
"""


def test_merge_keeps_every_variant_of_a_key_once(tmp_path: Path) -> None:
    """One FX-graph key holds a compiled variant per set of shape guards: each travels, once, through a
    pack of several parts read back in order."""
    run = child(["-c", MERGE, str(tmp_path)], tmp_path / "cache")
    assert "merged 2 2 True" in run.stdout, run.stdout
    names = next(line for line in run.stdout.splitlines() if line.startswith("parts ")).split()[1:]
    assert len(names) >= 2 and names == [chr(97 + i // 26) + chr(97 + i % 26) for i in range(len(names))]
    assert "2 process(es)" in run.stdout and "(2 inductor)" in run.stdout, run.stdout
    assert "joined back True" in run.stdout, run.stdout


def test_a_missing_part_is_one_line_and_exit_2_and_a_missing_folder_packs_nothing(tmp_path: Path) -> None:
    def cli(*args: Path) -> subprocess.CompletedProcess:
        argv = [sys.executable, "-m", "gemma2_regress.builds.portable_cache", *map(str, args)]
        return subprocess.run(argv, capture_output=True, text=True, cwd=ROOT)

    run = cli(Path("load"), tmp_path / "compile-cache.xz.aa")
    assert run.returncode == 2 and run.stderr.count("\n") == 1 and "no such part" in run.stderr, run.stderr
    run = cli(Path("pack"), tmp_path / "none", tmp_path / "out" / portable_cache.PREFIX)
    assert run.returncode == 0 and "nothing to pack" in run.stdout and not (tmp_path / "out").exists()


def test_compress_slices_side_by_side_and_decompresses_whole(monkeypatch) -> None:
    import lzma
    import random

    monkeypatch.setattr(portable_cache, "SLICE", 1000)
    blob = random.Random(0).randbytes(3500) * 2  # 7 slices, the last one short
    packed = portable_cache.compress(blob, threads=3)
    assert lzma.decompress(packed) == blob and packed == portable_cache.compress(blob, threads=1)
    assert lzma.decompress(portable_cache.compress(b"")) == b""


def test_pack_carries_the_records_and_load_puts_them_back(tmp_path: Path, monkeypatch) -> None:
    from gemma2_regress import records

    isa = {"key": {"torch": "t", "compiler": "c"}, "passed": ["avx2"], "checks": {"a1": True}}
    peaks = {"key": {"gpu": "g", "torch": "t"}, "tests": {"t.py::a": {"gib": 3.0, "source": "s"}}}
    here, there, beside = tmp_path / "here", tmp_path / "there", tmp_path / "beside"
    records.import_(here, records.VEC_ISA, [isa])
    records.import_(here, records.GPU_PEAKS, [peaks])
    canary = {"key": {"torch": "t", "driver": "d", "env": "{}"}, "passed": "ok"}
    records.import_(here, records.CANARY, [canary])
    stack = {"python": "p", "torch": "t", "unsloth": "u", "gpu": "g"}
    passed = {"key": stack}
    records.import_(here, records.GPU_TIER_PASSED, [passed])
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(here))
    assert portable_cache._carry(beside) == (
        ", 1 vec-ISA record(s) in compile-cache.vec-isa.json, 1 canary record(s) in compile-cache.canary.json"
        ", 1 GPU-peak record(s) in compile-cache.gpu-peaks.json, 1 tier-passed record(s) in compile-cache.tier-passed.json"
    )  # no Unsloth-import record here: none written beside
    assert not (beside / "compile-cache.unsloth-import.json").exists()
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(there))
    assert portable_cache._restore(beside) == (
        ", 1 of 1 vec-ISA record(s) new, 1 of 1 canary record(s) new, 1 of 1 GPU-peak record(s) new"
        ", 1 of 1 tier-passed record(s) new"
    )
    assert records.export(there, records.VEC_ISA) == [isa]
    assert records.export(there, records.GPU_PEAKS) == [peaks]
    assert records.export(there, records.CANARY) == [canary]
    # the loading runner's tier reads it as the noxfile does: warm on that stack, on no other
    assert records.holds(records.path(there, records.GPU_TIER_PASSED, stack), stack)
    assert not records.holds(records.path(there, records.GPU_TIER_PASSED, stack), {**stack, "unsloth": "v"})
    assert portable_cache._restore(beside) == (
        ", 0 of 1 vec-ISA record(s) new, 0 of 1 canary record(s) new, 0 of 1 GPU-peak record(s) new"
        ", 0 of 1 tier-passed record(s) new"
    )
    assert portable_cache._restore(tmp_path / "absent") == ""


def test_only_a_whole_green_run_packs_the_tier_passed_record(tmp_path: Path, monkeypatch) -> None:
    """A pack of part of the tier (cut at its bound, narrowed, red) leaves the cache's record of an earlier
    whole pass behind, and a pack never leaves an older pack's record beside its parts."""
    import json

    from gemma2_regress import records
    from gemma2_regress.builds import offline

    here, beside = tmp_path / "here", tmp_path / "beside"
    records.import_(here, records.GPU_TIER_PASSED, [{"key": {"gpu": "g"}}])
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(here))
    assert portable_cache._carry(beside) == ", 1 tier-passed record(s) in compile-cache.tier-passed.json"
    said = portable_cache._carry(beside, whole=False)
    assert said == ", no tier-passed record (the run was not a whole tier that passed)"
    assert not (beside / "compile-cache.tier-passed.json").exists()

    out, artifacts = tmp_path / "out", tmp_path / "artifacts"
    out.mkdir()
    prefix = str(out / portable_cache.PREFIX)
    assert offline.pack_args(artifacts, out) == [str(artifacts), prefix, "--partial"]  # no summary: cut short
    for status, narrowed, partial in (
        (0, [], []),
        (0, ["-k evaluate"], ["--partial"]),
        (1, [], ["--partial"]),
    ):
        summary = {"exit_status": status, "narrowed": narrowed, "tests": {}, "records": []}
        (out / "summary.json").write_text(json.dumps(summary))
        assert offline.pack_args(artifacts, out) == [str(artifacts), prefix, *partial], (status, narrowed)
