"""A CPU dry run of old Unsloth releases (``offline releases --device cpu``, docs/bisect.md): loaded by Python
at start-up from a bundle layer made of this folder (``gpu/cpu-dryrun/build-twins.sh``), where
``GEMMA2_REGRESS_CPU_DRYRUN=1``. Not a verdict of record, a check of bundles before device time is spent.

Releases before 2026.8.16 do not import without a GPU: they ask torch for a CUDA device, its capability, its
memory, its current stream. While ``import unsloth`` runs (here, before anything else) those queries are
answered as an H200 would answer them and ``torch.cuda.is_available()`` is true; afterwards it is false again,
so Unsloth's module-level choices read "cuda" but its kernels run on CPU tensors, as the suite's CPU tier does
from 2026.8.16 on (``UNSLOTH_ALLOW_CPU``). Nothing else of torch is touched. Where torchvision does not import
(no CPU build for this torch), a stand-in with the version paired with this torch is importable: any
``torchvision.*`` module, any attribute a dummy class; old ``unsloth_zoo`` imports it unconditionally.
"""

import enum
import importlib.abc
import importlib.machinery
import importlib.metadata
import importlib.util
import os
import sys
import types

if os.environ.get("GEMMA2_REGRESS_CPU_DRYRUN") == "1":
    import torch

    def _torchvision_standin() -> None:
        tv = f"0.{int(torch.__version__.split('.')[1]) + 15}.0"  # torch 2.11 -> 0.26, 2.13 -> 0.28

        class _Any(type):
            def __getattr__(cls, name):
                return _Dummy

        class _Dummy(metaclass=_Any):
            def __init__(self, *a, **k):
                pass

        class _Module(types.ModuleType):
            def __getattr__(self, name):
                if name.startswith("__"):
                    raise AttributeError(name)
                if name == "InterpolationMode":
                    return enum.Enum(
                        "InterpolationMode", "NEAREST BILINEAR BICUBIC BOX HAMMING LANCZOS NEAREST_EXACT"
                    )
                return _Dummy

        class _Dist(importlib.metadata.Distribution):  # importlib.metadata.version("torchvision")
            def read_text(self, filename):
                return (
                    f"Metadata-Version: 2.1\nName: torchvision\nVersion: {tv}\n"
                    if filename == "METADATA"
                    else None
                )

            def locate_file(self, path):
                return path

        class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
            def find_spec(self, name, path, target=None):
                if name == "torchvision" or name.startswith("torchvision."):
                    return importlib.machinery.ModuleSpec(name, self, is_package=True)
                return None

            def find_distributions(self, context=None):
                name = getattr(context, "name", None)
                return [_Dist()] if name in (None, "torchvision") else []

            def create_module(self, spec):
                m = _Module(spec.name)
                m.__path__, m.__version__ = [], tv
                return m

            def exec_module(self, module):
                pass

        sys.meta_path.insert(0, _Finder())

    try:
        import torchvision  # noqa: F401
    except Exception:
        sys.modules.pop("torchvision", None)
        _torchvision_standin()

    props = types.SimpleNamespace(
        name="NVIDIA H200 (CPU dry run)",
        total_memory=141 * 2**30,
        major=9,
        minor=0,
        multi_processor_count=132,
        gcnArchName="",
        L2_cache_size=60 * 2**20,
    )
    torch.cuda.memory.mem_get_info = lambda *a, **k: (80 * 2**30, 141 * 2**30)
    torch.cuda.mem_get_info = torch.cuda.memory.mem_get_info
    torch.cuda.get_device_capability = lambda *a, **k: (9, 0)
    torch.cuda.get_device_properties = lambda *a, **k: props
    torch.cuda.get_device_name = lambda *a, **k: props.name
    torch.cuda.device_count = lambda: 1
    torch.cuda.current_device = lambda: 0
    torch.cuda.is_bf16_supported = lambda *a, **k: True
    torch._C._cuda_getCurrentRawStream = lambda *a: 0
    if importlib.util.find_spec("unsloth") is not None:
        available = torch.cuda.is_available
        torch.cuda.is_available = lambda: True
        try:
            import unsloth  # noqa: F401
        finally:
            torch.cuda.is_available = available
