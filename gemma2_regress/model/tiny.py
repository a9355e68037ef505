"""The one tiny Gemma-2: its config, an offline random checkpoint (weights + tokenizer), token batches.

Every model-level test builds its model here, never by hand:

    cfg  = tiny_config()                         # 2 layers, hidden 64, 4 heads / 2 kv heads, W = 4096
    path = checkpoint(cfg, seed=0, init="default")
    model = load_transformers(path)              # eager Gemma2ForCausalLM, eval mode
    ids, mask = token_batch(cfg, bsz=2, seq_len=4200, pads=(7, 0), side="left")

The checkpoint directory loads with ``transformers.AutoModelForCausalLM.from_pretrained(path)`` and
``unsloth.FastLanguageModel.from_pretrained(path)``. Nothing is downloaded: the weights are drawn
here from a seeded generator and the tokenizer is built with the ``tokenizers`` library.

Layer kinds: layer ``i`` is sliding iff ``i % 2 == 0``. Unsloth hard-codes that rule while
transformers reads ``config.layer_types``; a config where the two disagree would test neither, so
``tiny_config`` refuses it.

Weight inits (``checkpoint(init=...)``), drawn in float32 from ``torch.Generator().manual_seed(seed)``:
  default  what transformers' ``_init_weights`` does for Gemma-2, written out here so that a seed
           gives the same weights under every transformers release: linear and embedding weights
           N(0, initializer_range = 0.02), the pad row of the embedding 0, RMSNorm weights 0
           (Gemma's norm multiplies by 1 + w). Attention is then nearly uniform: raw logits sit far
           inside tanh's linear range (tests/model/test_fixture_cpu.py keeps their std below 1).
  large    default, then q_proj and k_proj weights times ``LARGE_QK_SCALE``. A raw logit
           q.k / sqrt(s) scales with the square of that factor; 44 brings the default init's logit
           spread up to about attn_logit_softcapping (50), so the logits sit in tanh's curved range,
           where a dropped or misplaced cap changes the output. tests/model/test_fixture_cpu.py keeps
           the raw logit std inside [10, 200]; the measured values are in docs/oracle.md.
  probe    for the window-boundary test at model level: q_proj zero (every logit is 0, so attention
           is uniform over exactly the allowed keys), v_proj times ``PROBE_V_SCALE`` (so the
           attention output is far above the post-attention RMSNorm's eps), and the saved config has
           ``final_logit_softcapping = None`` (the final tanh would flatten what changed). Use it with
           ``num_hidden_layers=1``: a single sliding layer, so the last position's logits depend on
           exactly the keys its window admits.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import os
import pathlib
import shutil
import tempfile
from typing import Any

import torch

FORMAT_VERSION = 1  # bump when what a checkpoint directory holds, or how it is drawn, changes
SLIDING, FULL = "sliding_attention", "full_attention"
INITS = ("default", "large", "probe")
LARGE_QK_SCALE = 44.0
PROBE_V_SCALE = 50.0
PAD_ID, EOS_ID, BOS_ID, UNK_ID = 0, 1, 2, 3
SPECIAL_TOKENS = {"<pad>": PAD_ID, "<eos>": EOS_ID, "<bos>": BOS_ID, "<unk>": UNK_ID}
FIRST_PLAIN_ID = 4  # ids below this are special; token_batch draws real tokens from FIRST_PLAIN_ID..vocab-1

DEFAULTS: dict[str, Any] = dict(
    vocab_size=512,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    query_pre_attn_scalar=16,
    sliding_window=4096,
    max_position_embeddings=32768,
    attn_logit_softcapping=50.0,
    final_logit_softcapping=30.0,
    pad_token_id=PAD_ID,
    eos_token_id=EOS_ID,
    bos_token_id=BOS_ID,
)
# Keys of a config dict that say nothing about the model itself (left out of the cache key).
_VOLATILE = ("transformers_version", "_name_or_path", "architectures", "dtype", "torch_dtype")


def expected_layer_types(num_hidden_layers: int) -> list[str]:
    """Unsloth's hard-coded layout: sliding at even layers (0, 2, ...), global at odd ones."""
    return [SLIDING if i % 2 == 0 else FULL for i in range(num_hidden_layers)]


def layer_window(config: Any, layer_idx: int) -> int | None:
    """The window of layer ``layer_idx`` in the oracle's terms: ``config.sliding_window`` or None (global)."""
    return config.sliding_window if layer_idx % 2 == 0 else None


def tiny_config(**overrides: Any) -> Any:
    """A small ``transformers.Gemma2Config`` (defaults in ``DEFAULTS``), eager attention.

    Any Gemma2Config field can be overridden, e.g. ``tiny_config(num_hidden_layers=1,
    sliding_window=16)``. ``layer_types`` follows ``num_hidden_layers`` (sliding first, alternating);
    passing a different layout raises, because Unsloth ignores it (``idx % 2 == 0`` is sliding).
    """
    from transformers import Gemma2Config

    params = inspect.signature(Gemma2Config.__init__).parameters
    known = set(params) | set(Gemma2Config().to_dict()) | {"attn_implementation"}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"tiny_config: unknown Gemma2Config field(s) {unknown}; check the spelling")
    kw = {**DEFAULTS, **overrides}
    n = kw["num_hidden_layers"]
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"tiny_config: num_hidden_layers must be an int >= 1, got {n!r}")
    want = expected_layer_types(n)
    if kw.get("layer_types") is not None and list(kw["layer_types"]) != want:
        raise ValueError(
            f"tiny_config: layer_types {list(kw['layer_types'])} breaks Unsloth's hard-coded layout "
            f"(layer idx % 2 == 0 is sliding); drop layer_types or pass {want}"
        )
    if "layer_types" in params:  # transformers >= 4.53 reads it; older releases alternate by index
        kw["layer_types"] = want
    else:
        kw.pop("layer_types", None)
    kw.setdefault("attn_implementation", "eager")
    config = Gemma2Config(**kw)
    config._attn_implementation = kw["attn_implementation"]
    return config


def _config_dict(config: Any) -> dict[str, Any]:
    d = config.to_dict()
    for key in _VOLATILE:
        d.pop(key, None)
    return d


def checkpoint_key(config: Any, seed: int, init: str) -> str:
    """The cache key: a hash of (config dict, seed, init, FORMAT_VERSION)."""
    blob = json.dumps(
        {"config": _config_dict(config), "seed": seed, "init": init, "format": FORMAT_VERSION},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> pathlib.Path:
    """``cache_dir``, else ``$GEMMA2_REGRESS_CACHE``, else ``~/.cache/gemma2-regress/checkpoints``."""
    if cache_dir is not None:
        return pathlib.Path(cache_dir)
    env = os.environ.get("GEMMA2_REGRESS_CACHE")
    if env:
        return pathlib.Path(env)
    return pathlib.Path.home() / ".cache" / "gemma2-regress" / "checkpoints"


def checkpoint(
    config: Any = None,
    *,
    seed: int = 0,
    init: str = "default",
    cache_dir: str | os.PathLike[str] | None = None,
) -> pathlib.Path:
    """A checkpoint directory for ``config`` (default ``tiny_config()``), built once and cached.

    Holds config.json, model.safetensors (float32), the tokenizer files and ``gemma2_regress.json``
    (how it was made). Built in a temporary directory next to its final place and renamed into
    place, so concurrent builders never see or leave a half-written checkpoint; the loser of a race
    discards its copy. ``init="probe"`` saves the config with ``final_logit_softcapping=None``.
    """
    if init not in INITS:
        raise ValueError(f"checkpoint: init must be one of {INITS}, got {init!r}")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"checkpoint: seed must be an int >= 0, got {seed!r}")
    config = tiny_config() if config is None else _copy_config(config)
    if init == "probe":
        config.final_logit_softcapping = None
    root = cache_root(cache_dir)
    final = root / f"gemma2-tiny-{checkpoint_key(config, seed, init)}"
    if (final / "gemma2_regress.json").is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=root))
    try:
        _build(config, seed, init, tmp)
        try:
            os.rename(tmp, final)  # atomic; fails if another builder got there first
        except OSError:
            if not (final / "gemma2_regress.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _copy_config(config: Any) -> Any:
    from transformers import Gemma2Config

    if not isinstance(config, Gemma2Config):
        raise TypeError(
            f"checkpoint: config must be a Gemma2Config (use tiny_config()), got {type(config).__name__}"
        )
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None and list(layer_types) != expected_layer_types(config.num_hidden_layers):
        raise ValueError(
            f"checkpoint: layer_types {list(layer_types)} breaks Unsloth's idx % 2 == 0 sliding layout; "
            "build the config with tiny_config()"
        )
    copy = Gemma2Config.from_dict(config.to_dict())
    copy._attn_implementation = getattr(config, "_attn_implementation", None) or "eager"
    return copy


def _build(config: Any, seed: int, init: str, out: pathlib.Path) -> None:
    from transformers import Gemma2ForCausalLM

    with _default_dtype(torch.float32):
        model = Gemma2ForCausalLM(config)
    init_weights(model, seed=seed, init=init)
    model.save_pretrained(out, safe_serialization=True)
    build_tokenizer(config).save_pretrained(out)
    meta = {"format": FORMAT_VERSION, "seed": seed, "init": init, "key": checkpoint_key(config, seed, init)}
    (out / "gemma2_regress.json").write_text(json.dumps(meta, indent=1, sort_keys=True))


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


@torch.no_grad()
def init_weights(model: torch.nn.Module, *, seed: int, init: str) -> None:
    """Draw every parameter of a Gemma2ForCausalLM in place (see the module docstring for ``init``).

    Parameters are visited in ``named_parameters`` order, so the draw is a function of the seed and
    the config only.
    """
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    std = float(getattr(model.config, "initializer_range", 0.02))
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            p.zero_()
        elif p.dim() >= 2:
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float32) * std)
        else:  # biases (attention_bias=True)
            p.zero_()
    pad = model.config.pad_token_id
    if pad is not None:
        model.get_input_embeddings().weight[pad].zero_()
    for layer in model.model.layers:
        attn = layer.self_attn
        if init == "large":
            attn.q_proj.weight.mul_(LARGE_QK_SCALE)
            attn.k_proj.weight.mul_(LARGE_QK_SCALE)
        elif init == "probe":
            attn.q_proj.weight.zero_()
            attn.v_proj.weight.mul_(PROBE_V_SCALE)


def build_tokenizer(config: Any = None) -> Any:
    """A byte-level tokenizer with exactly ``config.vocab_size`` ids, built offline.

    ids 0..3 are ``<pad> <eos> <bos> <unk>``, 4..259 the 256 bytes (so any text encodes), the rest
    ``<unused_k>`` placeholders. Encoding prepends ``<bos>``, as Gemma's tokenizer does; padding is
    on the left, as in Gemma's tokenizer config.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    config = tiny_config() if config is None else config
    n = int(config.vocab_size)
    if n < FIRST_PLAIN_ID + 256:
        raise ValueError(
            f"build_tokenizer: vocab_size must be >= {FIRST_PLAIN_ID + 256} (specials + 256 bytes), got {n}"
        )
    vocab = dict(SPECIAL_TOKENS)
    for b, ch in enumerate(_byte_alphabet()):
        vocab[ch] = FIRST_PLAIN_ID + b
    for i in range(FIRST_PLAIN_ID + 256, n):
        vocab[f"<unused_{i}>"] = i
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", BOS_ID)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="<eos>",
        bos_token="<bos>",
        unk_token="<unk>",
        padding_side="left",
        model_max_length=int(config.max_position_embeddings),
    )


def _byte_alphabet() -> list[str]:
    """GPT-2's byte-level stand-in character for each byte 0..255 (what ``ByteLevel`` emits)."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    out, extra = [], 0
    for b in range(256):
        if b in printable:
            out.append(chr(b))
        else:
            out.append(chr(256 + extra))
            extra += 1
    return out


def load_transformers(
    path: str | os.PathLike[str], dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> Any:
    """The checkpoint as transformers' eager ``Gemma2ForCausalLM`` in eval mode."""
    from transformers import AutoModelForCausalLM

    # float32 weights cast after loading: exact, and the same call under every transformers release
    model = AutoModelForCausalLM.from_pretrained(str(path), attn_implementation="eager")
    return model.to(device=device, dtype=dtype).eval()


def token_batch(
    config: Any,
    bsz: int,
    seq_len: int,
    pads: tuple[int, ...] | list[int] = (),
    side: str = "none",
    seed: int = 0,
    right_pads: tuple[int, ...] | list[int] = (),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic ``(input_ids, attention_mask)``, both ``(bsz, seq_len)`` int64.

    Real tokens are drawn uniformly from the plain ids ``FIRST_PLAIN_ID..vocab_size-1`` with
    ``torch.Generator().manual_seed(seed)``; row ``b`` has ``pads[b]`` pad tokens (``pad_token_id``,
    mask 0) on ``side`` ("left", "right" or "none"), or with ``side="both"`` ``pads[b]`` on the left
    and ``right_pads[b]`` on the right.
    """
    from gemma2_regress.reference.masks import padding_from_lengths

    if bsz < 1 or seq_len < 1:
        raise ValueError(f"token_batch: bsz and seq_len must be >= 1, got {bsz}, {seq_len}")
    pads, right_pads = tuple(pads), tuple(right_pads)
    if side not in ("none", "left", "right", "both"):
        raise ValueError(f"token_batch: side must be 'none', 'left', 'right' or 'both', got {side!r}")
    for counts in (pads, right_pads):
        if counts and len(counts) != bsz:
            raise ValueError(f"token_batch: {len(counts)} pad counts for bsz {bsz}; give one per row")
        if any(p < 0 or p > seq_len for p in counts):
            raise ValueError(f"token_batch: pads {counts} outside 0..{seq_len}")
    if pads and any(pads) and side == "none":
        raise ValueError("token_batch: pads given with side='none'; pass side='left' or 'right'")
    if right_pads and side != "both":
        raise ValueError(f"token_batch: right_pads given with side={side!r}; pass side='both'")
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(FIRST_PLAIN_ID, int(config.vocab_size), (bsz, seq_len), generator=g)
    mask = (
        padding_from_lengths(bsz, seq_len, list(pads), side, list(right_pads))
        if pads or right_pads
        else torch.ones(bsz, seq_len, dtype=torch.long)
    )
    pad_id = config.pad_token_id if config.pad_token_id is not None else PAD_ID
    ids = ids.masked_fill(mask == 0, pad_id)
    return ids, mask
