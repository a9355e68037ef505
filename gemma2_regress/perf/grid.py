"""What the benchmark measures: Gemma-2 attention shapes, the grid of cells, and the FLOPs of a cell.

Shapes are Google's configs (gemma_pytorch ``get_config_for_2b_v2`` / ``get_config_for_9b``,
transformers ``Gemma2Config`` defaults for 2B): 2B has 8 query heads and 4 key/value heads, 9B has
16 and 8; both use ``head_dim`` 256, ``query_pre_attn_scalar`` 256, ``attn_logit_softcapping`` 50
and a sliding window of 4096 on every other layer. ``tiny`` is a CPU smoke shape, not a model.

A *cell* is one (model, layer kind, length, batch) point; q_len == kv_len == length (training and
evaluation of a full sequence, no cache, no padding).

FLOPs counted (stated once, used everywhere): only the two matrix products over the *visible*
(query, key) pairs, 2 FLOPs per multiply-add::

    pairs(n, W)   = n(n+1)/2                      if W is None or n <= W   (causal)
                  = W(W+1)/2 + (n-W) W            otherwise                (query i sees min(i+1, W) keys)
    fwd           = 4 * b * h * d * pairs          (Q K^T and P V: 2 d FLOPs each per pair)
    fwd+bwd       = 3 * fwd                        (backward: dV, dP, dQ, dK, 4 products; no recompute credited)

Softcap, mask and softmax element-wise work is not counted. An implementation that computes the
full n x n score matrix (Unsloth's slow path) does more work than this; its achieved rate is the
useful rate, which is the figure that compares implementations fairly.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable, Sequence

GEMMA2_WINDOW = 4096


@dataclasses.dataclass(frozen=True)
class Shape:
    """One model's attention shape."""

    name: str
    n_heads: int
    n_kv_heads: int
    head_dim: int
    scalar: float  # query_pre_attn_scalar: Q is scaled by scalar**-0.5
    softcap: float  # attn_logit_softcapping
    window: int  # sliding window of the sliding layers (W keys including the query's own)


MODELS: dict[str, Shape] = {
    "2b": Shape("gemma-2-2b", 8, 4, 256, 256.0, 50.0, GEMMA2_WINDOW),
    "9b": Shape("gemma-2-9b", 16, 8, 256, 256.0, 50.0, GEMMA2_WINDOW),
    "tiny": Shape("tiny-cpu-smoke", 4, 2, 16, 16.0, 50.0, 32),
}
LAYERS = ("sliding", "global")
IMPLS = ("unsloth", "flex", "sdpa")  # Unsloth's slow path, flex attention, the SDPA floor
MODES = ("fwd", "fwdbwd")


@dataclasses.dataclass(frozen=True)
class Cell:
    """One benchmark point. ``layer`` is ``sliding`` (window ``shape.window``) or ``global`` (causal)."""

    model: str
    layer: str
    length: int
    batch: int

    @property
    def shape(self) -> Shape:
        return MODELS[self.model]

    @property
    def window(self) -> int | None:
        return self.shape.window if self.layer == "sliding" else None

    @property
    def key(self) -> str:
        """A stable name used to match cells between runs: ``9b/sliding/n8192/b1``."""
        return f"{self.model}/{self.layer}/n{self.length}/b{self.batch}"


def visible_pairs(n: int, window: int | None) -> int:
    """How many (query, key) pairs a causal (optionally sliding-window) layer of length n computes."""
    if window is None or n <= window:
        return n * (n + 1) // 2
    return window * (window + 1) // 2 + (n - window) * window


def flops(cell: Cell, mode: str) -> int:
    """Useful FLOPs of one call (see the module docstring for the formula)."""
    s = cell.shape
    fwd = 4 * cell.batch * s.n_heads * s.head_dim * visible_pairs(cell.length, cell.window)
    if mode == "fwd":
        return fwd
    if mode == "fwdbwd":
        return 3 * fwd
    raise ValueError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")


def score_matrix_bytes(cell: Cell, itemsize: int = 2) -> int:
    """Bytes of one full ``(b, h, n, n)`` score matrix: what a materialising kernel must hold at least once."""
    return cell.batch * cell.shape.n_heads * cell.length * cell.length * itemsize


# --- grids ------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Block:
    """A product of models x lengths x batches x layers; a grid is an ordered list of blocks."""

    models: tuple[str, ...]
    lengths: tuple[int, ...]
    batches: tuple[int, ...]
    layers: tuple[str, ...] = LAYERS

    def cells(self) -> list[Cell]:
        # Batch, then length, then model, then layer: compiled graphs of both models stay cached,
        # and a run cut short by its time budget loses the longest lengths of both models alike.
        return [
            Cell(m, layer, n, b)
            for b, n, m, layer in itertools.product(self.batches, self.lengths, self.models, self.layers)
        ]


SWEEP = (1024, 4095, 4096, 4097, 8192, 16384, 32768)
QUICK = (
    Block(("2b", "9b"), SWEEP, (1,)),  # the length sweep: where each implementation runs out of memory
    Block(("9b",), (4096, 8192), (8,)),  # the largest batch at the window and past it
)
SMOKE = (Block(("tiny",), (16, 31, 32, 33, 64), (1, 2)),)  # CPU: the tiny shape around its 32 window
FULL = (Block(("2b", "9b"), (1024, 2048, 4095, 4096, 4097, 8192, 16384, 32768), (1, 2, 4, 8)),)
# Where users hit walls: training batches past the window, then one row ever longer until each
# implementation runs out of memory (the ladder's steps halve the gap between powers of two).
LADDER = (32768, 49152, 65536, 98304, 131072)
WALLS = (
    Block(("2b", "9b"), (4096, 8192, 16384), (2, 4, 8)),
    Block(("2b", "9b"), LADDER, (1,)),
)


def cells_of(blocks: Iterable[Block]) -> list[Cell]:
    """The grid's cells in order, without duplicates."""
    seen: dict[str, Cell] = {}
    for block in blocks:
        for c in block.cells():
            seen.setdefault(c.key, c)
    return list(seen.values())


def parse_ints(text: str, what: str) -> tuple[int, ...]:
    """``"1024,4095..4097,8192"`` -> (1024, 4095, 4096, 4097, 8192); a bad entry is a one-line error."""
    out: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            if ".." in part:
                lo, hi = (int(x) for x in part.split("..", 1))
                if hi < lo:
                    raise ValueError
                out.extend(range(lo, hi + 1))
            else:
                out.append(int(part))
        except ValueError:
            raise ValueError(
                f"--{what}: {part!r} is not an integer or a range lo..hi; write e.g. --{what} 1024,4095..4097"
            ) from None
    if not out or any(v < 1 for v in out):
        raise ValueError(f"--{what}: give positive integers, e.g. --{what} 1,4 (got {text!r})")
    return tuple(dict.fromkeys(out))


def parse_names(text: str, known: Sequence[str], what: str) -> tuple[str, ...]:
    """A comma list checked against ``known``; an unknown name is a one-line error listing them."""
    names = tuple(dict.fromkeys(p.strip().lower() for p in text.split(",") if p.strip()))
    bad = [n for n in names if n not in known]
    if bad or not names:
        raise ValueError(f"--{what}: unknown {', '.join(bad) or '(empty)'}; choose from {', '.join(known)}")
    return names


def select(
    preset: str = "quick",
    models: str | None = None,
    layers: str | None = None,
    lengths: str | None = None,
    batches: str | None = None,
) -> list[Cell]:
    """The cells to run: a preset (``quick``/``full``/``walls``/``smoke``), narrowed or replaced by explicit lists.

    With any of ``lengths``/``batches``/``models`` given, the grid is their product (the preset only
    fills the ones not given); ``layers`` filters.
    """
    presets = {"quick": QUICK, "full": FULL, "walls": WALLS, "smoke": SMOKE}
    if preset not in presets:
        raise ValueError(f"unknown preset {preset!r}; use --quick, --full, --walls or --smoke")
    blocks = presets[preset]
    if models or lengths or batches:
        base = blocks[0]
        blocks = (
            Block(
                parse_names(models, list(MODELS), "models") if models else base.models,
                parse_ints(lengths, "lengths") if lengths else base.lengths,
                parse_ints(batches, "batch") if batches else base.batches,
            ),
        )
    cells = cells_of(blocks)
    if layers:
        keep = parse_names(layers, LAYERS, "layers")
        cells = [c for c in cells if c.layer in keep]
    return cells
