"""Whether torch.compile computes right answers here: a canary, the one place the suite asks.

Unsloth's attention kernel is ``torch.compile``'d. Where the compiler itself is wrong (seen: torch
2.13's inductor under ``ATEN_CPU_CAPABILITY=avx2`` on an AVX-512 CPU, a compiled ``x * 2 + 1`` off by
1.8e38), every compiled kernel's verdict would blame Unsloth for torch's fault. The canary compiles
``x * 2 + 1`` in a child process (a compiler fault may kill it) on the CPU and, where torch sees one,
on a CUDA device, and compares it with eager, exactly. A compile that fails loudly is not a wrong
answer: Unsloth then falls back to eager and the tests say so.

Used by the ``compile_canary`` pytest plugin (before any test runs) and by ``nox -s portability``
(per CPU setting). Standard library only; the child imports torch.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping

# A record of Inductor's CPU ISA probe for the child to replay (plugins.vec_isa sets it through child_env).
VEC_ISA_RECORD_ENV = "GEMMA2_REGRESS_VEC_ISA_RECORD"
_WRONG = 7  # the child's exit status for a wrong answer (its stdout: "<device> <error>")

_CANARY = f"""
import os
if os.environ.get("{VEC_ISA_RECORD_ENV}"):  # replay the run's CPU ISA probe (plugins.vec_isa)
    try:
        from gemma2_regress.plugins.vec_isa import replay_file
        replay_file(os.environ["{VEC_ISA_RECORD_ENV}"])
    except ImportError:
        pass
import torch
devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
for dev in devices:
    x = torch.linspace(-3, 3, 1000, device=dev)
    try:
        y = torch.compile(lambda t: t * 2 + 1, dynamic=True)(x)
    except Exception:
        continue
    err = (y - (x * 2 + 1)).abs().max().item()
    if err != 0:
        print(dev, err)
        raise SystemExit({_WRONG})
"""

TIMEOUT_S = 600.0


def start(env: dict[str, str] | None = None, base: Mapping[str, str] | None = None) -> subprocess.Popen:
    """The canary's child, running in the background under ``base`` (default: this process's environment)
    plus ``env``."""
    return subprocess.Popen(
        [sys.executable, "-c", _CANARY],
        env={**(os.environ if base is None else base), **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def explain(returncode: int, stdout: str, stderr: str) -> str | None:
    """Why torch.compile cannot be trusted, from the child's exit status and output; None when it can."""
    if returncode == 0:
        return None
    if returncode == _WRONG:
        dev, _, err = stdout.strip().rpartition("\n")[2].partition(" ")
        return f"torch.compile computes wrong results here (canary: x * 2 + 1 on {dev} off by {err})"
    return f"torch.compile's canary died here (exit {returncode}): {stderr.strip()[-200:]}"


def verdict(child: subprocess.Popen, timeout_s: float = TIMEOUT_S) -> str | None:
    """Wait for a ``start``ed canary: None, or why torch.compile cannot be trusted here."""
    try:
        out, err = child.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        child.kill()
        child.communicate()
        return f"torch.compile hangs here (canary: x * 2 + 1 took over {timeout_s:.0f} s)"
    return explain(child.returncode, out, err)


def canary(env: dict[str, str] | None = None) -> str | None:
    """``verdict(start(env))``: the canary, run to the end."""
    return verdict(start(env))
