"""Offline bundles: the Python packages an air-gapped GPU runner's image lacks, made where PyPI is
reachable and unpacked on the runner.

``build`` turns a pins file (``name==version`` lines) into ``.gpu/site.tgz``, wheels for the image's
CPython 3.12 on x86-64 installed into ``gpusite/``; a failed download writes nothing, and the tarball
is replaced only whole. ``unpack`` makes ``<root>/gpusite`` hold exactly a bundle: the folder carries
the tarball's sha256 in ``.bundle-sha256``, and a folder with another stamp is an older bundle and
is replaced (unpacked beside it, then renamed, under a lock), so a persistent runner never tests a
stale unpack and never a half-unpacked one. The unpack holds its modules' bytecode, compiled once by
the unpacking Python (the image's), so the tier's processes (probes, nox, each xdist worker) do not
each compile Unsloth and its dependencies from source.
"""

from __future__ import annotations

import compileall
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import warnings
from pathlib import Path

BUNDLE = Path(".gpu/site.tgz")
PINS = Path(__file__).resolve().parents[2] / "gpu" / "bundle-unsloth-2026.10.9.txt"
STAMP = ".bundle-sha256"
# The image's CPython 3.12 on x86-64: wheels for these platform tags.
PLATFORMS = [f"manylinux_2_{n}_x86_64" for n in (17, 24, 27, 28, 31, 34, 35)] + ["manylinux2014_x86_64"]
# Left out of a bundle to stay small: Unsloth's web app, console scripts, bitsandbytes' other CUDA builds.
DROP = ("studio", "bin")
KEEP_BNB = ("cuda130.so", "cpu.so")


class OfflineError(RuntimeError):
    """A bundle is missing, broken or cannot be made; the message names the fix."""


def fix_for(bundle: Path) -> str:
    """The command that makes ``bundle``, run where PyPI is reachable."""
    return f"python3 -m gemma2_regress.builds.offline build --out {bundle}"


def unpack(bundle: Path, root: Path) -> Path:
    """``root/gpusite`` holding exactly ``bundle`` (unpacked now unless its stamp says it already is)."""
    if not bundle.is_file():
        raise OfflineError(
            f"no bundle {bundle}; build it where PyPI is reachable: {fix_for(bundle)} (then copy .gpu/ here)"
        )
    digest = hashlib.sha256(bundle.read_bytes()).hexdigest()
    try:
        root.mkdir(parents=True, exist_ok=True)
        lock = open(root / ".gpusite.lock", "w")
    except OSError as exc:
        raise OfflineError(f"cannot write in {root} ({exc.strerror}); pass a writable --root") from None
    site = root / "gpusite"
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the gate's two directions share a folder: one unpacks
        if (site / STAMP).is_file() and (site / STAMP).read_text().strip() == digest:
            return site
        tmp = Path(tempfile.mkdtemp(prefix=".gpusite-new.", dir=root))
        start = time.monotonic()
        try:
            with tarfile.open(bundle) as tf:
                extract(tf, tmp)
            if not (tmp / "gpusite").is_dir():
                raise tarfile.TarError("no gpusite/ inside")
            unpacked = time.monotonic()
            # Every process of a run imports from here: compile each module once (all cores), not in each
            # process again. ddir: the code objects name the final folder. A module this Python cannot
            # compile is left to fail where it is imported, as without this.
            with warnings.catch_warnings():  # upstream modules' SyntaxWarnings: theirs, not this run's news
                warnings.simplefilter("ignore", SyntaxWarning)
                compileall.compile_dir(tmp / "gpusite", ddir=site, quiet=2, workers=0)
            compiled = time.monotonic()
            (tmp / "gpusite" / STAMP).write_text(digest + "\n")
            if site.exists():
                site.rename(tmp / "stale")
            (tmp / "gpusite").rename(site)
            print(
                f"unpacked {bundle} into {site} in {unpacked - start:.1f} s, "
                f"bytecode compiled in {compiled - unpacked:.1f} s (once per bundle)",
                file=sys.stderr,
                flush=True,
            )
        except (tarfile.TarError, OSError, EOFError) as exc:
            why = (str(exc).strip().splitlines() or [type(exc).__name__])[0].rstrip(":")
            raise OfflineError(
                f"{bundle} is not a bundle ({why}); rebuild it where PyPI is reachable: {fix_for(bundle)}"
            ) from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return site


def extract(tf: tarfile.TarFile, dest: Path) -> None:
    """Extract refusing links and paths outside ``dest`` where this Python can (the "data" filter)."""
    if hasattr(tarfile, "data_filter"):
        tf.extractall(dest, filter="data")
    else:  # Python < 3.10.12 / 3.11.4: the bundle is our own, built by ``build``
        tf.extractall(dest)  # the bundle is our own, made by build()


def build(pins: Path, out: Path, python: str = sys.executable) -> str:
    """Download the pinned wheels for CPython 3.12 / x86-64, install them into ``gpusite/`` and write
    ``out`` (only once complete: a failure leaves the old bundle, or none). Returns a one-line summary."""
    lines = [ln.split("#")[0].strip() for ln in pins.read_text().splitlines()] if pins.is_file() else None
    if lines is None:
        raise OfflineError(f"no pins file {pins}; pass one of name==version lines, e.g. {PINS.name}")
    if not any(lines):
        raise OfflineError(f"{pins} names no package; write name==version lines")
    plat = [a for p in PLATFORMS for a in ("--platform", p)]
    target = ["--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp", *plat]
    with tempfile.TemporaryDirectory() as work_dir:
        work = Path(work_dir)
        (work / "pins.txt").write_text("\n".join(ln for ln in lines if ln) + "\n")
        _pip(
            python,
            pins,
            "download",
            "-q",
            "--no-deps",
            *target,
            "-d",
            work / "wheels",
            "-r",
            work / "pins.txt",
        )
        wheels = sorted((work / "wheels").glob("*.whl"))
        _pip(
            python,
            pins,
            "install",
            "-q",
            "--no-deps",
            "--no-compile",
            "--target",
            work / "gpusite",
            *target,
            *wheels,
        )
        for name in DROP:
            shutil.rmtree(work / "gpusite" / name, ignore_errors=True)
        for lib in (work / "gpusite" / "bitsandbytes").glob("libbitsandbytes_*.so"):
            if not lib.name.endswith(KEEP_BNB):
                lib.unlink()
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
        os.close(fd)
        try:
            with tarfile.open(tmp, "w:gz") as tf:
                tf.add(work / "gpusite", arcname="gpusite")
            os.chmod(tmp, 0o644)
            os.replace(tmp, out)
        except OSError as exc:
            Path(tmp).unlink(missing_ok=True)
            raise OfflineError(f"cannot write {out} ({exc.strerror}); check the free space there") from None
        return f"wrote {out} ({out.stat().st_size / 2**20:.0f} MiB); packages: {len(wheels)}"


def _pip(python: str, pins: Path, *args: object) -> None:
    done = subprocess.run([python, "-m", "pip", *map(str, args)], capture_output=True, text=True)
    if done.returncode:
        errors = [ln for ln in (done.stderr + done.stdout).splitlines() if ln.startswith("ERROR")]
        why = (errors or (done.stderr or done.stdout).strip().splitlines() or ["no output"])[-1]
        raise OfflineError(f"pip {args[0]} failed: {why}; check the pins in {pins} and the network")
