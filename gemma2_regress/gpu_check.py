"""Whether the GPU tier can run here, and if not, why: the one place the suite asks.

The GPU tier needs, checked cheapest first:

1. the NVIDIA driver: ``nvidia-smi -L`` runs and lists a GPU (when ``nvidia-smi`` is absent but
   ``CUDA_VISIBLE_DEVICES`` is set, step 2 decides: some containers mount the driver's libraries only);
2. torch, in the interpreter that will run the tests, sees a CUDA device (asked in a subprocess: that
   interpreter is often not this one, and nox should not import torch);
3. that interpreter imports Unsloth (an import of 7 to 10 s on a 2-core CPU; a pass can be recorded under
   the stack the torch probe saw, ``unsloth_problem``'s ``record``, so a warm run does not import it again).

Each check gives ``None`` or a one-line reason. Whether a reason fails the run or skips the tier is the
caller's choice: a GPU is *required* where ``GEMMA2_REGRESS_REQUIRE_GPU=1`` is set or ``--require-gpu``
is passed (``required_by``); then a missing GPU is a failure, otherwise a skip with the reason.
Standard library only (and the suite's own ``records``, ``atomic``): the noxfile and tox import it before
any environment is built.

As a command (tox's ``gpu`` environment)::

    python -m gemma2_regress.gpu_check [--driver-only] [--require-gpu] [--python PY] [pytest args...]

prints one line and exits 1 when a GPU is required and the tier cannot run, 2 on a bad
``GEMMA2_REGRESS_REQUIRE_GPU`` value, else 0 (arguments it does not know are pytest's and ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from gemma2_regress import records
from gemma2_regress.atomic import write_json_atomic

REQUIRE_ENV = "GEMMA2_REGRESS_REQUIRE_GPU"
REQUIRE_FLAG = "--require-gpu"
_YES, _NO = {"1", "true", "yes", "on"}, {"", "0", "false", "no", "off"}
_MARK = "GEMMA2_GPU_CHECK "  # prefixes the probe's answer: Unsloth prints banners on stdout

# Run by the tier's interpreter; each prints one line: _MARK and a JSON answer.
_TORCH_PROBE = """
import json
try:
    import torch
except Exception as exc:
    print("GEMMA2_GPU_CHECK " + json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
    raise SystemExit(0)
n = torch.cuda.device_count() if torch.cuda.is_available() else 0
from importlib import metadata
def version(dist):
    try:
        return metadata.version(dist)
    except Exception:
        return ""
stack = {d: version(d) for d in ("torch", "triton", "transformers", "trl", "unsloth", "unsloth_zoo")}
if n:
    stack["gpu"] = torch.cuda.get_device_name(0)
why = ""
if n == 0:
    try:  # torch's own reason: a CPU build, a driver too old, no device
        torch.cuda.init()
    except Exception as exc:
        why = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
print("GEMMA2_GPU_CHECK " + json.dumps({"devices": n, "torch": torch.__version__, "cuda": torch.version.cuda, "why": why, "stack": stack}))
"""

_UNSLOTH_PROBE = """
import json, os
os.environ.setdefault("UNSLOTH_DISABLE_STATISTICS", "1")
try:
    import unsloth
except Exception as exc:
    first = (str(exc).strip().splitlines() or [""])[0]
    print("GEMMA2_GPU_CHECK " + json.dumps({"error": f"{type(exc).__name__}: {first}"}))
else:
    print("GEMMA2_GPU_CHECK " + json.dumps({"version": getattr(unsloth, "__version__", "?")}))
"""


def required_by(args: Sequence[str] = (), environ: Mapping[str, str] | None = None) -> str | None:
    """What makes a GPU required: ``"--require-gpu"`` (in ``args``), ``"GEMMA2_REGRESS_REQUIRE_GPU=<v>"``
    (a true value in ``environ``, default ``os.environ``), or ``None`` when neither does.

    Raises ``ValueError`` (one line, naming the fix) for a value of the variable that is neither true
    (1/true/yes/on) nor false (0/false/no/off/empty).
    """
    if REQUIRE_FLAG in args:
        return REQUIRE_FLAG
    value = (os.environ if environ is None else environ).get(REQUIRE_ENV, "")
    if value.strip().lower() in _YES:
        return f"{REQUIRE_ENV}={value}"
    if value.strip().lower() in _NO:
        return None
    raise ValueError(f"{REQUIRE_ENV}={value!r}: use 1 (a GPU is required: no GPU fails the run) or 0 (skip)")


def _short(text: str, limit: int = 200) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def driver_problem(timeout_s: float = 60.0) -> str | None:
    """Why the NVIDIA driver cannot serve the GPU tier (no ``nvidia-smi``, it fails or lists no GPU), or None."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        if os.environ.get("CUDA_VISIBLE_DEVICES"):
            return None  # no tool, but devices named: torch's answer (torch_problem) decides
        return "no `nvidia-smi` on PATH: no NVIDIA driver on this machine"
    try:
        done = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return f"`nvidia-smi -L` did not answer in {timeout_s:.0f} s: the NVIDIA driver hangs"
    except OSError as exc:
        return f"`nvidia-smi -L` could not start: {_short(str(exc))}"
    said = (done.stdout + done.stderr).strip()
    if done.returncode != 0:
        first = said.splitlines()[0] if said else "no output"
        return f"`nvidia-smi -L` failed (exit {done.returncode}): {_short(first)}"
    if "GPU" not in done.stdout:
        return "`nvidia-smi -L` lists no GPU"
    return None


def _probe(code: str, python: str, env: Mapping[str, str] | None, timeout_s: float) -> tuple[dict, str]:
    """Run ``code`` in ``python``; its JSON answer (``{}`` if none) and, without one, why (one line)."""
    try:
        done = subprocess.run(
            [python, "-c", code],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env=None if env is None else dict(env),
        )
    except subprocess.TimeoutExpired:
        return {}, f"{python} did not answer in {timeout_s:.0f} s"
    except OSError as exc:
        return {}, f"{python} could not start: {_short(str(exc))}"
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(_MARK):
            return json.loads(line[len(_MARK) :]), ""
    tail = [s for s in done.stderr.splitlines() if s.strip()]
    return {}, f"{python} exited {done.returncode}: {_short(tail[-1]) if tail else 'no output'}"


def torch_problem(
    python: str | None = None, env: Mapping[str, str] | None = None, timeout_s: float = 300.0
) -> tuple[int, str | None]:
    """``(devices, None)`` when torch in ``python`` (default: this interpreter) sees CUDA devices, else
    ``(0, why)``: torch not importable, or no device (with torch's own reason, e.g. a CPU build)."""
    n, why, _ = torch_stack(python, env, timeout_s)
    return n, why


def torch_stack(
    python: str | None = None, env: Mapping[str, str] | None = None, timeout_s: float = 300.0
) -> tuple[int, str | None, dict[str, str]]:
    """``torch_problem``'s answer and the stack that probe saw: ``python`` and the installed versions of
    torch, triton, transformers, trl, unsloth and unsloth_zoo ("" where absent), and the first GPU's name
    where there is one. Empty where torch does not import."""
    python = python or sys.executable
    answer, failed = _probe(_TORCH_PROBE, python, env, timeout_s)
    if failed:
        return 0, f"asking torch for CUDA devices failed: {failed}", {}
    if "error" in answer:
        return 0, f"torch is not importable by {python}: {_short(answer['error'])}", {}
    stack = {"python": python, **answer.get("stack", {})}
    if answer["devices"] > 0:
        return int(answer["devices"]), None, stack
    build = f"torch {answer['torch']}, " + (f"CUDA {answer['cuda']}" if answer["cuda"] else "a CPU build")
    why = f": {_short(answer['why'])}" if answer["why"] else ""
    return 0, f"torch sees no CUDA device ({build}){why}", stack


def unsloth_problem(
    python: str | None = None,
    env: Mapping[str, str] | None = None,
    timeout_s: float = 300.0,
    *,
    record: Path | None = None,
    stack: Mapping[str, str] | None = None,
) -> str | None:
    """Why ``python`` (default: this interpreter) cannot import Unsloth, or None. With ``record`` (a file:
    ``records.path`` in the compile cache) and ``stack`` (``torch_stack``'s), a pass is recorded there under
    ``stack`` (``unsloth_recorded``); a failure never is, so it is asked again each run."""
    python = python or sys.executable
    key = dict(stack or {})
    answer, failed = _probe(_UNSLOTH_PROBE, python, env, timeout_s)
    if failed:
        return f"Unsloth is not importable: `import unsloth` in {failed}"
    if "error" in answer:
        return f"Unsloth is not importable by {python}: {_short(answer['error'])}"
    if record is not None and key:
        write_json_atomic(record, {"key": key, "unsloth": str(answer.get("version", "?"))})
    return None


def unsloth_recorded(record: Path, stack: Mapping[str, str]) -> bool:
    """Whether ``record`` holds a pass of ``unsloth_problem`` under ``stack`` (never for an empty stack): then
    the caller need not import Unsloth to ask again. Where the record is wrong (something the stack does not
    name broke the import), the run still goes red: each test that needs Unsloth fails with the import's
    reason (``unsloth_adapter``), only later than ``unsloth_problem``'s one line."""
    return records.holds(record, stack)


def gpu_tier_problem(
    python: str | None = None, env: Mapping[str, str] | None = None, *, unsloth: bool = True
) -> str | None:
    """The first reason the GPU tier cannot run with ``python`` (driver, then torch, then Unsloth), or None."""
    problem = driver_problem()
    if problem is None:
        problem = torch_problem(python, env)[1]
    if problem is None and unsloth:
        problem = unsloth_problem(python, env)
    return problem


def cuda_device_count(python: str | None = None, env: Mapping[str, str] | None = None) -> int:
    """``torch.cuda.device_count()``: in this process (``python`` None; 0 without torch), or in the
    interpreter ``python`` with ``env`` (0 when that fails)."""
    if python is None:
        try:
            import torch
        except ImportError:
            return 0
        return torch.cuda.device_count()
    done = subprocess.run(
        [python, "-c", "import torch; print(torch.cuda.device_count())"],
        capture_output=True,
        text=True,
        env=None if env is None else dict(env),
    )
    out = done.stdout.strip().splitlines()
    return int(out[-1]) if done.returncode == 0 and out and out[-1].isdigit() else 0


def visible_gpus() -> int | None:
    """CUDA devices this process could hand out: torch's count where torch imports (it honours
    CUDA_VISIBLE_DEVICES), else ``nvidia-smi -L``'s; None when neither can tell."""
    try:
        import torch  # noqa: F401
    except ImportError:
        pass
    else:
        return cuda_device_count()
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    done = subprocess.run([smi, "-L"], capture_output=True, text=True)
    return sum(ln.startswith("GPU ") for ln in done.stdout.splitlines()) if done.returncode == 0 else 0


def gpu_memory_gib(timeout_s: float = 60.0) -> float | None:
    """The smallest visible GPU's memory in GiB, from ``nvidia-smi --query-gpu=memory.total`` (the GPUs of
    CUDA_VISIBLE_DEVICES when it lists indices); None when nvidia-smi is absent or does not answer."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    argv = [smi, "--query-gpu=index,memory.total", "--format=csv,noheader,nounits"]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired):
        return None
    mib = {}
    for line in done.stdout.splitlines():
        index, _, total = line.partition(",")
        if index.strip().isdigit() and total.strip().isdigit():
            mib[index.strip()] = int(total)
    chosen = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    if chosen and all(d in mib for d in chosen):
        mib = {d: mib[d] for d in chosen}
    return min(mib.values()) / 1024 if done.returncode == 0 and mib else None


def cpu_cores() -> int:
    """CPU cores this process may run on (its affinity, where the OS tells it; else ``os.cpu_count()``)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def cuda_available() -> bool:
    """``torch.cuda.is_available()`` in this process (False without torch)."""
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gemma2_regress.gpu_check", add_help=False, allow_abbrev=False)
    p.add_argument(
        "--driver-only", action="store_true", help="only nvidia-smi (before anything is installed)"
    )
    p.add_argument(
        REQUIRE_FLAG, action="store_true", help="a GPU is required (as GEMMA2_REGRESS_REQUIRE_GPU=1)"
    )
    p.add_argument("--python", default=sys.executable, help="the interpreter that will run the GPU tier")
    args, _pytest_args = p.parse_known_args(argv)
    try:
        why = required_by([REQUIRE_FLAG] if args.require_gpu else [])
    except ValueError as exc:
        print(f"gpu_check: {exc}", file=sys.stderr)
        return 2
    if args.driver_only:
        problem = driver_problem()
    else:
        problem = gpu_tier_problem(args.python)
    if problem is None:
        print("gpu_check: the GPU tier can run here" + (" (driver only checked)" if args.driver_only else ""))
        return 0
    if why:
        print(f"gpu_check: GPU tier required ({why}) but {problem}", file=sys.stderr)
        return 1
    print(f"gpu_check: the GPU tier's tests will skip: {problem} ({REQUIRE_ENV}=1 makes this a failure)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
