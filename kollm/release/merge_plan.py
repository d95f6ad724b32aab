"""Planning a merge: which bytes each output tensor comes from and which LoRA updates it gets.

The plan reads nothing beyond headers; ``check_base`` first converts a base the merge cannot stream as is
(pickle, or bitsandbytes 4-bit with ``dequantize_base``) into safetensors in a scratch dir. The plan enforces what makes the merged model mean what the adapters
computed during training: shapes must fit, replacements (modules_to_save) supersede earlier updates,
a vocabulary grown by an adapter must be grown consistently, and a tied embedding whose halves an adapter
changed differently is untied.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from kollm.errors import (
    AdapterMismatchError,
    DequantizeError,
    InputNotFoundError,
    QuantizedBaseError,
    UnsafeCheckpointError,
)
from kollm.release.adapters import Adapter, LoraPair
from kollm.release.dequantize import DequantizedBase, dequantize_bnb_4bit
from kollm.release.pickle_io import pickle_to_safetensors
from kollm.release.safetensors_io import FLOAT_DTYPES, PlannedTensor, TensorInfo

log = logging.getLogger(__name__)

EMBED, LM_HEAD = "model.embed_tokens.weight", "lm_head.weight"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth")
DEQUANTIZE_WARNING = (
    "Merging onto a dequantized 4-bit base: {base} holds bitsandbytes 4-bit weights, and dequantizing them does "
    "not bring back what quantization rounded away, so every merged weight carries that quantization error "
    "(merged models measurably lose quality this way: peft#2321, unsloth#1519). The original 16-bit base is "
    "preferred whenever it is available; evaluate this merge before releasing it."
)


@dataclass(frozen=True)
class BaseCheckpoint:
    """A validated base: its config.json and where the merge reads its safetensors from."""

    config: dict
    tensor_dir: Path  # the base itself, or a converted copy in the scratch dir (pickle, dequantized 4-bit)
    dequantized: DequantizedBase | None = None  # set when a bitsandbytes 4-bit base was dequantized


@dataclass
class Task:
    """One output tensor: its planned dtype/shape, where its bytes come from, and the updates to add."""

    out: PlannedTensor
    source: TensorInfo
    loras: list[LoraPair]


def check_base(
    base: Path, *, pickle_dir: Path | None, dequantize_dir: Path | None, block_bytes: int = 64 * 1024**2
) -> BaseCheckpoint:
    """Validate a base directory; convert it first where the merge cannot read it as is.

    Args:
        base: HF model directory.
        pickle_dir: where to convert pickle weights to safetensors; None refuses pickle.
        dequantize_dir: where to write a dequantized copy of a bitsandbytes 4-bit base; None refuses such a base.
        block_bytes: bytes of a tensor copied at once while converting.

    Returns:
        The config and the directory to read safetensors from (``base``, or a copy under a scratch dir).

    Raises:
        InputNotFoundError, UnsafeCheckpointError, QuantizedBaseError, DequantizeError, ToolMissingError.
    """
    config_path = base / "config.json"
    if not config_path.is_file():
        raise InputNotFoundError(
            "base model config", config_path, hint="`base` must be a HF model directory with config.json."
        )
    config = json.loads(config_path.read_text(encoding="utf-8"))
    quant = config.get("quantization_config") or {}
    if quant.get("quant_method") == "bitsandbytes" or quant.get("load_in_4bit"):
        if dequantize_dir is None:
            raise QuantizedBaseError(base)
        if quant.get("load_in_8bit"):
            raise DequantizeError(base, "it is a bitsandbytes 8-bit (LLM.int8) checkpoint; only 4-bit is supported")
        log.warning(DEQUANTIZE_WARNING.format(base=base))
        dequantized = dequantize_bnb_4bit(base, dequantize_dir / "base", block_bytes=block_bytes)
        return BaseCheckpoint(config, dequantized.tensor_dir, dequantized)
    if any(base.glob("*.safetensors")):
        return BaseCheckpoint(config, base)
    pickles = sorted(p for p in base.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if not pickles:
        raise InputNotFoundError("model weights (*.safetensors)", base, hint="The base directory is incomplete.")
    if pickle_dir is None:
        raise UnsafeCheckpointError(pickles[0])
    converted = pickle_dir / "base"
    converted.mkdir(parents=True, exist_ok=True)
    for path in pickles:
        pickle_to_safetensors(path, converted / f"{path.stem}.safetensors")
    return BaseCheckpoint(config, converted)


def _is_tied(base_tensors: dict[str, TensorInfo], config: dict) -> bool:
    # A checkpoint without lm_head can only mean a tied one (transformers' own default is to tie).
    return LM_HEAD not in base_tensors and EMBED in base_tensors and config.get("tie_word_embeddings", True)


def plan(base_tensors: dict[str, TensorInfo], adapters: list[Adapter], config: dict) -> tuple[list[Task], dict]:
    """Decide, for every output tensor, its source bytes and the LoRA updates to add, in adapter order.

    Args:
        base_tensors: the base checkpoint's tensors in file order.
        adapters: loaded adapters, in the order they were trained.
        config: the base's config.json.

    Returns:
        The tasks in output order and the config.json changes (``tie_word_embeddings``, ``vocab_size``).

    Raises:
        AdapterMismatchError: an adapter targets a tensor the base lacks, or its shapes do not fit.
    """
    changes: dict[str, object] = {}
    sources = dict(base_tensors)
    loras: dict[str, list[LoraPair]] = {name: [] for name in base_tensors}
    tied = _is_tied(base_tensors, config)
    for adapter in adapters:
        touched = set(adapter.pairs) | set(adapter.replacements)
        if tied and touched & {EMBED, LM_HEAD} and not adapter.keeps_tying:
            # During training the adapter changed one side of the tie only (peft wraps or adapts that module,
            # the other keeps the base weight): the merged model needs two tensors to compute the same thing.
            sources[LM_HEAD] = sources[EMBED]
            loras[LM_HEAD] = list(loras[EMBED])
            tied = False
            changes["tie_word_embeddings"] = False
        replacements = dict(adapter.replacements)
        if tied and adapter.keeps_tying and LM_HEAD in replacements:
            # peft saved the tied lm_head next to (or instead of) the embeddings: it is the same tensor.
            lm_head = replacements.pop(LM_HEAD)
            replacements.setdefault(EMBED, lm_head)
        for key, info in replacements.items():
            if key not in sources:
                raise AdapterMismatchError(adapter.path, f"modules_to_save tensor '{key}' is not in the base")
            old = sources[key]
            if info.shape != old.shape:
                resizable = key in (EMBED, LM_HEAD) and len(info.shape) == 2 and info.shape[1:] == old.shape[1:]
                if not resizable:
                    raise AdapterMismatchError(
                        adapter.path,
                        f"'{key}' has shape {list(info.shape)} but the base has {list(old.shape)}",
                    )
                changes["vocab_size"] = info.shape[0]
            sources[key] = info
            loras[key] = []  # a full replacement supersedes earlier low-rank updates
        for key, pair in adapter.pairs.items():
            if key not in sources:
                raise AdapterMismatchError(adapter.path, f"it targets '{key}', which the base does not have")
            shape = sources[key].shape
            b_rows, a_cols = pair.b.shape[0], pair.a.shape[1]
            expected = (a_cols, b_rows) if pair.transposed else (b_rows, a_cols)
            if tuple(shape) != expected:
                raise AdapterMismatchError(
                    adapter.path,
                    f"'{key}' is {list(shape)} in the base but the adapter's B·A is {list(expected)}",
                )
            loras[key].append(pair)
        _check_vocab(adapter, sources)
    tasks = []
    for key, source in sources.items():
        out_dtype = base_tensors[key].dtype if key in base_tensors else base_tensors[EMBED].dtype
        if source.dtype not in FLOAT_DTYPES:
            out_dtype = source.dtype
        tasks.append(Task(PlannedTensor(key, out_dtype, source.shape), source, loras[key]))
    return tasks, changes


def _check_vocab(adapter: Adapter, sources: dict[str, TensorInfo]) -> None:
    if EMBED in sources and LM_HEAD in sources and sources[EMBED].shape[0] != sources[LM_HEAD].shape[0]:
        raise AdapterMismatchError(
            adapter.path,
            f"it resizes the vocabulary but leaves the embeddings with {sources[EMBED].shape[0]} rows and "
            f"lm_head with {sources[LM_HEAD].shape[0]}; the rows it added to the other one were never saved. "
            "Train with both embed_tokens and lm_head in modules_to_save",
        )
