"""Reading PEFT LoRA adapters: their config, per-module scale, and where each tensor lands in the base."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from kollm.errors import AdapterMismatchError, InputNotFoundError, UnsafeCheckpointError
from kollm.release.pickle_io import pickle_to_safetensors
from kollm.release.safetensors_io import TensorInfo, read_header

_PEFT_PREFIX = "base_model.model."


@dataclass(frozen=True)
class LoraPair:
    """The A and B matrices of one adapted module and the scale applied to B·A."""

    base_key: str  # e.g. model.layers.0.self_attn.q_proj.weight
    a: TensorInfo
    b: TensorInfo
    scale: float
    transposed: bool  # fan-in-fan-out layers and embeddings store the weight as (in, out): delta = (B·A)ᵀ


@dataclass
class Adapter:
    """One LoRA adapter directory, indexed by the base tensor each entry changes."""

    path: Path
    config: dict
    weights: Path  # the file the user gave (provenance); tensors may be read from a converted copy
    pairs: dict[str, LoraPair] = field(default_factory=dict)
    replacements: dict[str, TensorInfo] = field(default_factory=dict)  # modules_to_save: full tensors

    @property
    def base_model(self) -> str | None:
        return self.config.get("base_model_name_or_path")

    @property
    def keeps_tying(self) -> bool:
        """peft's ``ensure_weight_tying``: the adapter's embedding and lm_head updates are one, kept tied."""
        return bool(self.config.get("ensure_weight_tying"))


def _pattern_value(module: str, patterns: dict, default: float) -> float:
    """PEFT's rank_pattern / alpha_pattern lookup: the first key that matches the end of the module name."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def load_adapter(path: Path, *, pickle_dir: Path | None = None) -> Adapter:
    """Read an adapter directory (adapter_config.json + adapter_model.safetensors).

    Args:
        path: a directory written by peft's ``save_pretrained``.
        pickle_dir: where to convert an ``adapter_model.bin`` to safetensors; None refuses pickle.

    Returns:
        The adapter's LoRA pairs (with scale) and full replacement tensors, keyed by base tensor name.

    Raises:
        InputNotFoundError: the directory or its config/weights are missing.
        UnsafeCheckpointError: only adapter_model.bin exists and pickle is not allowed.
        AdapterMismatchError: the adapter is not a LoRA kollm can merge exactly (e.g. DoRA).
    """
    config_path = path / "adapter_config.json"
    if not config_path.is_file():
        raise InputNotFoundError(
            "LoRA adapter",
            config_path,
            hint="Point at a directory written by peft's save_pretrained or `kollm train`.",
        )
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if config.get("peft_type", "LORA") != "LORA":
        raise AdapterMismatchError(path, f"peft_type {config.get('peft_type')} is not LoRA")
    if config.get("use_dora"):
        raise AdapterMismatchError(
            path,
            "it is a DoRA adapter (use_dora: true); DoRA rescales every column by a norm of the merged weight, "
            "which kollm's streaming merge does not compute. Merge it with peft's merge_and_unload instead",
        )
    weights = path / "adapter_model.safetensors"
    tensors_file = weights
    if not weights.is_file():
        weights = path / "adapter_model.bin"
        if not weights.is_file():
            raise InputNotFoundError(
                "adapter weights", path / "adapter_model.safetensors", hint="The adapter directory is incomplete."
            )
        if pickle_dir is None:
            raise UnsafeCheckpointError(weights)
        tensors_file = pickle_to_safetensors(weights, pickle_dir / f"adapter-{abs(hash(path)):x}.safetensors")
    infos, _ = read_header(tensors_file)
    adapter = Adapter(path=path, config=config, weights=weights)
    r_default = config.get("r", 8)
    alpha_default = config.get("lora_alpha", r_default)
    a_by_module: dict[str, TensorInfo] = {}
    b_by_module: dict[str, TensorInfo] = {}
    embedding_modules: set[str] = set()
    for name, info in infos.items():
        key = name.removeprefix(_PEFT_PREFIX)
        if ".lora_A." in key or key.endswith(".lora_A.weight"):
            a_by_module[key.split(".lora_A")[0]] = info
        elif ".lora_B." in key or key.endswith(".lora_B.weight"):
            b_by_module[key.split(".lora_B")[0]] = info
        elif ".lora_embedding_A" in key:
            a_by_module[key.split(".lora_embedding_A")[0]] = info
            embedding_modules.add(key.split(".lora_embedding_A")[0])
        elif ".lora_embedding_B" in key:
            b_by_module[key.split(".lora_embedding_B")[0]] = info
        elif ".original_module." in key:
            continue  # a resized base's copy kept so peft can unmerge; the merge uses the trained copy
        elif ".lora_magnitude_vector" in key:
            raise AdapterMismatchError(path, "it holds DoRA magnitude vectors; kollm cannot merge DoRA exactly")
        else:
            # modules_to_save tensors are saved under the module's own name (no "modules_to_save.default");
            # with save_embedding_layers peft also saves an adapted embedding's full weight as "base_layer",
            # which it loads over the base before adding the LoRA update: a replacement like the others.
            # A resized wrapper is also saved whole: "modules_to_save." holds the same trained copy.
            adapter.replacements[key.replace(".base_layer.", ".").replace(".modules_to_save.", ".")] = info
    if a_by_module.keys() != b_by_module.keys():
        raise AdapterMismatchError(path, "some lora_A matrices have no lora_B partner (corrupt adapter)")
    for module, a in a_by_module.items():
        r = _pattern_value(module, config.get("rank_pattern") or {}, r_default)
        alpha = _pattern_value(module, config.get("alpha_pattern") or {}, alpha_default)
        if a.shape[0] != r:
            raise AdapterMismatchError(path, f"{module}: lora_A has rank {a.shape[0]} but the config says r={r}")
        scale = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
        adapter.pairs[f"{module}.weight"] = LoraPair(
            base_key=f"{module}.weight",
            a=a,
            b=b_by_module[module],
            scale=scale,
            # peft stores embedding LoRA as A (r, vocab), B (dim, r) and transposes B·A, like fan-in-fan-out
            transposed=module in embedding_modules or bool(config.get("fan_in_fan_out")),
        )
    return adapter
