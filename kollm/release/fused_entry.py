"""Subprocess entry point: llama.cpp's converter with its tensor source replaced by kollm's streaming merge.

Usage: python -m kollm.release.fused_entry CONVERTER_DIR PRE_TOKENIZER BASE [ADAPTER ...] -- <converter args>

The converter's model directory holds only the merged model's config and tokenizer files
(``merge.run(weights=False)``). ``ModelBase.index_tensors``, the converter's one map from tensor names to
loaders (model classes that override it call it through ``super()``), is replaced so that each name loads
the merged tensor from ``merge.merged_tensor`` instead of a safetensors file. Name mapping, vocabulary,
metadata and the GGUFWriter stay the converter's own, so the file is the one it writes from a merged
checkpoint, byte for byte. In its lazy mode the writer evaluates one tensor at a time while writing, so
memory holds about one merged tensor, as when it reads a checkpoint.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from kollm.release.convert_entry import load_converter, run_converter
from kollm.release.merge import MergeConfig, MergePlan, TensorReader, merged_tensor, prepare
from kollm.release.merge_math import as_tensor
from kollm.release.merge_plan import Task


def install_merged_source(conversion: ModuleType, merged: MergePlan, read: TensorReader, block_bytes: int) -> list[int]:
    """Make the converter's models index ``merged``'s tasks (in checkpoint order) instead of weight files.

    Returns:
        A one-element counter of how many times the converter indexed tensors (0 after a run = the hook
        was bypassed).
    """
    lazy_tensor = conversion.LazyTorchTensor
    calls = [0]

    def load(task: Task) -> Any:
        return as_tensor(merged_tensor(task, read, block_bytes), task.out.dtype, task.out.shape)

    def index_tensors(self: Any, remote_hf_model_id: str | None = None) -> dict[str, Callable[[], Any]]:
        calls[0] += 1
        tensors: dict[str, Callable[[], Any]] = {}
        for task in merged.tasks:
            if self.lazy:
                meta = lazy_tensor.meta_with_dtype_and_shape(lazy_tensor._dtype_str_map[task.out.dtype], task.out.shape)
                gen = lambda t=task, m=meta: lazy_tensor(meta=m, args=(t,), func=load)  # noqa: E731
            else:
                gen = lambda t=task: load(t)  # noqa: E731
            # The converter's own renaming and filtering, as when it indexes a checkpoint.
            if item := self.filter_tensors((task.out.name, gen)):
                tensors[item[0]] = item[1]
        return tensors

    conversion.ModelBase.index_tensors = index_tensors
    return calls


def main(argv: list[str]) -> None:
    if "--" not in argv or argv.index("--") < 3:
        raise SystemExit("usage: fused_entry CONVERTER_DIR PRE_TOKENIZER BASE [ADAPTER ...] -- ARGS...")
    split = argv.index("--")
    converter_dir, pre_tokenizer, base, *adapters = argv[:split]
    conversion = load_converter(Path(converter_dir), pre_tokenizer)
    cfg = MergeConfig()
    merged = prepare(cfg, base=Path(base), adapters=[Path(a) for a in adapters])
    with TensorReader() as read:
        calls = install_merged_source(conversion, merged, read, cfg.block_bytes)
        run_converter(argv[split + 1 :])
    if not calls[0]:
        raise SystemExit("the converter's model class bypassed ModelBase.index_tensors; use the checkpoint route")


if __name__ == "__main__":
    main(sys.argv[1:])
