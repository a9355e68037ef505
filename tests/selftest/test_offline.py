"""The offline GPU runner's machinery (gemma2_regress/builds/offline.py and the gpu/*.sh wrappers):
bundles unpacked once per content and never half, builds that fail write nothing, the compile cache
packed into parts and restored, runs cut at their time bound, bad input in one line."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from gemma2_regress.builds import bundle as bundles
from gemma2_regress.builds import offline
from gemma2_regress.builds import parts as parts_module

ROOT = Path(__file__).resolve().parents[2]


def bundle(path: Path, marker: str) -> Path:
    """A small stand-in for .gpu/site.tgz: gpusite/unsloth/__init__.py holding ``marker``."""
    src = path.parent / f"src-{marker}" / "gpusite" / "unsloth"
    src.mkdir(parents=True)
    (src / "__init__.py").write_text(f"MARK = {marker!r}\n")
    with tarfile.open(path, "w:gz") as tf:
        tf.add(src.parent, arcname="gpusite")
    return path


def mark(site: Path) -> str:
    return (site / "unsloth" / "__init__.py").read_text()


def test_unpack_reuses_a_current_bundle_and_replaces_a_stale_one(tmp_path: Path) -> None:
    root = tmp_path / "root"
    tgz = bundle(tmp_path / "site.tgz", "old")
    site = bundles.unpack(tgz, root)
    assert mark(site) == "MARK = 'old'\n"
    stamp = (site / bundles.STAMP).stat().st_mtime_ns
    assert bundles.unpack(tgz, root) == site and (site / bundles.STAMP).stat().st_mtime_ns == stamp  # reused
    tgz.unlink()
    bundle(tgz, "new")
    assert mark(bundles.unpack(tgz, root)) == "MARK = 'new'\n"  # another sha256: unpacked afresh
    assert sorted(p.name for p in root.iterdir()) == [".gpusite.lock", "gpusite"]  # nothing half-made left


def test_an_unpack_holds_its_bytecode_naming_the_final_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import importlib.util
    import marshal

    site = bundles.unpack(bundle(tmp_path / "site.tgz", "x"), tmp_path / "root")
    pyc = Path(importlib.util.cache_from_source(str(site / "unsloth" / "__init__.py")))
    assert pyc.is_file(), "the unpack did not compile the bundle's modules"
    code = marshal.loads(pyc.read_bytes()[16:])  # after the 16-byte header (magic, flags, mtime, size)
    assert code.co_filename == str(site / "unsloth" / "__init__.py")  # not the temporary folder's
    assert "bytecode compiled in" in capsys.readouterr().err
    bundles.unpack(tmp_path / "site.tgz", tmp_path / "root")
    assert capsys.readouterr().err == ""  # reused: nothing unpacked, nothing said


def test_a_broken_or_missing_bundle_is_never_used(tmp_path: Path) -> None:
    root = tmp_path / "root"
    tgz = bundle(tmp_path / "site.tgz", "good")
    bundles.unpack(tgz, root)
    tgz.write_bytes(b"not a tarball")
    with pytest.raises(
        bundles.OfflineError, match=r"is not a bundle \(.*\); rebuild it where PyPI is reachable: python3 -m"
    ):
        bundles.unpack(tgz, root)
    assert sorted(p.name for p in root.iterdir()) == [".gpusite.lock", "gpusite"]
    with pytest.raises(bundles.OfflineError, match=r"no bundle .*nope.tgz; build it where PyPI is reachable"):
        bundles.unpack(tmp_path / "nope.tgz", root)


def test_cache_packs_into_parts_and_restores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(parts_module, "PART", 1000)
    cache = tmp_path / "cache"
    for name in ("fxgraph", "aotautograd", "triton"):
        (cache / name).mkdir(parents=True)
        (cache / name / "entry").write_bytes(os.urandom(3000))  # incompressible: several parts
    line = offline.pack_cache(cache, tmp_path / "out")
    parts = sorted((tmp_path / "out").glob("inductor.tgz.*"))
    assert len(parts) > 3 and parts[0].name == "inductor.tgz.aa" and f"{len(parts)} part(s)" in line
    back = tmp_path / "back"
    assert "restored" in offline.restore_cache(back, parts)
    assert (back / "triton" / "entry").read_bytes() == (cache / "triton" / "entry").read_bytes()
    assert "inductor cache:" in offline.restore_cache(back, parts)  # present: left alone
    broken = tmp_path / "broken.tgz.aa"
    broken.write_bytes(b"junk")
    assert "did not unpack; starting cold" in offline.restore_cache(tmp_path / "cold", [broken])
    assert not (tmp_path / "cold").exists()


def test_build_that_cannot_download_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    pins = tmp_path / "pins.txt"
    pins.write_text("# a pin that is nowhere\nunsloth==0.0.0.1\n")
    out = tmp_path / "gpu" / "site.tgz"
    with pytest.raises(
        bundles.OfflineError, match=r"pip download failed: .*unsloth==0\.0\.0\.1.*check the pins"
    ):
        bundles.build(pins, out)
    assert not out.parent.exists()
    pins.write_text("# nothing\n")
    with pytest.raises(bundles.OfflineError, match="names no package"):
        bundles.build(pins, out)


def test_the_tier_log_keeps_pytests_header(tmp_path: Path) -> None:
    """No -q: the header lines (versions, flash-attn, vec ISA) reach the tier's log; the args go last."""
    argv = offline.nox_argv(tmp_path, ["-k", "window"])
    pytest_args = argv[argv.index("--") + 1 :]
    assert not {"-q", "--quiet"} & set(pytest_args) and pytest_args[-2:] == ["-k", "window"]
    assert f"{tmp_path / 'junit.xml'}" in pytest_args


def test_bounded_run_interrupts_at_the_bound(tmp_path: Path) -> None:
    code = "import signal,sys,time\nsignal.signal(signal.SIGINT, lambda *a: sys.exit(7))\ntime.sleep(30)"
    t0 = time.time()
    rc = offline.bounded_run([sys.executable, "-c", code], 1, tmp_path / "log", dict(os.environ))
    assert rc == 7 and time.time() - t0 < 20  # SIGINT at the bound, and the process's own exit status
    deaf = "import os,signal,time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nprint(os.getcwd(), flush=True)\ntime.sleep(30)"
    (tmp_path / "here").mkdir()
    t0 = time.time()
    rc = offline.bounded_run(
        [sys.executable, "-c", deaf], 1, tmp_path / "log2", dict(os.environ), cwd=tmp_path / "here", grace=1
    )
    assert rc == -9 and time.time() - t0 < 10  # killed a grace after the bound
    assert (tmp_path / "log2").read_text().strip() == str(tmp_path / "here")


def run(*argv: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    full = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    return subprocess.run(argv, cwd=cwd, env=full, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["tier"], "no bundle .gpu/site.tgz; build it where PyPI is reachable"),
        (["tier", "--seconds", "0"], "--seconds: '0': must be at least 1"),
        (["gate"], "the following arguments are required: --baseline"),
        (["tier", "--pack-cache", "yes"], "invalid choice: 'yes'"),
        (["build", "--pins", "missing-pins.txt"], "--pins missing-pins.txt: no such file"),
        (["build", "--out", "out.zip"], "--out out.zip: give a .tgz path"),
        (["releases", "--plan", "missing.txt"], "cannot read the plan missing.txt"),
        (["releases", "--only", "1999.1"], "1999.1 not in the plan"),
        (["releases", "--jobs", "0"], "--jobs: '0': must be at least 1"),
        (["releases"], "in .gpu/old; build them where PyPI is reachable: bash gpu/build-old-bundles.sh"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, argv: list[str], needle: str) -> None:
    offline_cmd = (sys.executable, "-m", "gemma2_regress.builds.offline")
    done = run(*offline_cmd, *argv, cwd=tmp_path, BUNDLE_ROOT=str(tmp_path / "r"))
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], done.stderr
    assert not (tmp_path / "r").exists() and not (tmp_path / "reports").exists()  # nothing made


@pytest.mark.parametrize(
    ("script", "args", "env", "needle"),
    [
        ("tier.sh", [], {}, "no bundle .gpu/site.tgz"),
        ("tier.sh", ["-k"], {}, "SECONDS must be a whole number"),
        ("tier.sh", ["100"], {"PACK_CACHE": "yes"}, "PACK_CACHE='yes': use one of 0 1 portable"),
        ("gate.sh", ["100"], {"REVERSE": "true"}, "REVERSE='true': use one of 0 1"),
        ("gate.sh", [], {}, "no bundle .gpu/site.tgz"),
        ("old-releases.sh", ["soon"], {}, "SECONDS must be a whole number"),
        ("old-releases.sh", [], {}, "no unsloth-2026.8.15.tgz, "),
        ("build-old-bundles.sh", ["nope.txt"], {}, "no plan nope.txt"),
    ],
)
def test_gpu_wrappers_pass_bad_input_on_in_one_line(
    tmp_path: Path, script: str, args: list[str], env: dict[str, str], needle: str
) -> None:
    done = run(
        "bash", str(ROOT / "gpu" / script), *args, cwd=tmp_path, BUNDLE_ROOT=str(tmp_path / "r"), **env
    )
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], done.stderr
    assert not (tmp_path / "r").exists()
