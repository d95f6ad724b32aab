"""The merged model in memory, for verification when the fused GGUF path writes no merged checkpoint.

The GGUF verification compares llama.cpp's logits with the merged HF model's. Without a checkpoint on disk,
the model is built from the merged config and filled tensor by tensor from ``merge.merged_tensor``, the same
bytes the checkpoint would hold, then widened to float32 exactly as ``from_pretrained(dtype=float32)`` does.
Peak memory is the float32 model plus one tensor, what loading a checkpoint costs anyway.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from kollm.errors import FusedMergeError
from kollm.release.merge import MergeConfig, TensorReader, merged_tensor, prepare
from kollm.release.merge_math import as_tensor

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def load_merged(cfg: MergeConfig, *, base: Path, adapters: list[Path], config_dir: Path) -> PreTrainedModel:
    """Build the merged causal LM in float32 without writing its weights anywhere.

    Args:
        cfg: the merge settings (the block size must be the checkpoint merge's, so the float32 sums agree).
        base: HF base model directory (safetensors).
        adapters: PEFT LoRA adapters in training order.
        config_dir: the merged model's config.json (``merge.run(weights=False)`` writes it).

    Returns:
        The model in eval mode, every parameter loaded from the merge.

    Raises:
        FusedMergeError: a parameter got no merged tensor, or a merged tensor fits no parameter.
        InputNotFoundError, AdapterMismatchError: from planning the merge.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.initialization import no_init_weights

    merged = prepare(cfg, base=base, adapters=adapters)
    config = AutoConfig.from_pretrained(config_dir)
    with no_init_weights():  # every weight is overwritten below; random init would only cost time
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    params = model.state_dict()
    loaded: set[int] = set()
    with TensorReader() as read, torch.no_grad():
        for task in merged.tasks:
            target = params.get(task.out.name)
            if target is None or tuple(target.shape) != task.out.shape:
                raise FusedMergeError(
                    type(model).__name__,
                    f"the merged tensor '{task.out.name}' {list(task.out.shape)} fits no parameter",
                )
            target.copy_(as_tensor(merged_tensor(task, read, cfg.block_bytes), task.out.dtype, task.out.shape))
            loaded.add(target.data_ptr())
    model.tie_weights()
    missing = [name for name, tensor in model.state_dict().items() if tensor.data_ptr() not in loaded]
    if missing:
        raise FusedMergeError(
            type(model).__name__, f"{len(missing)} parameter(s) got no merged tensor, e.g. '{missing[0]}'"
        )
    return model.eval()
