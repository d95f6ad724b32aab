"""The training stages: cpt, sft and dpo on one spec schema, each writing an adapter dir + a stage manifest.

A stage starts from the base or from an earlier stage (``start_from``): the earlier adapters are merged into the
base in memory and a new LoRA is trained on top, so ``kollm release`` merges the adapters in the same order and
reproduces exactly the weights each stage trained against.
"""

from __future__ import annotations

import json
import logging
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kollm.errors import AdapterMismatchError, InputNotFoundError
from kollm.manifest import atomic_path, sha256_file, sha256_tree, tool_versions, write_json_atomic
from kollm.release.inputs import resolve
from kollm.train import data as train_data
from kollm.train.backends import choose_backend, load_for_training
from kollm.train.spec import TrainSpec

log = logging.getLogger(__name__)
STAGE_MANIFEST = "kollm-stage.json"
TOOLS = ("kollm", "torch", "transformers", "peft", "trl", "datasets", "accelerate", "unsloth", "bitsandbytes")


@dataclass
class StageResult:
    """What a finished stage produced."""

    adapter_dir: Path
    manifest_path: Path
    backend: str
    losses: list[float] = field(default_factory=list)
    final_loss: float | None = None
    tokens_seen: int = 0
    seconds: float = 0.0
    main_process: bool = True  # False on the other ranks of a multi-GPU run, which write nothing


def _parents(start_from: str | None) -> list[Path]:
    """The earlier stages' adapter dirs, oldest first, read from ``start_from``'s stage manifest."""
    if start_from is None:
        return []
    previous = Path(start_from)
    manifest = previous / STAGE_MANIFEST
    if not manifest.is_file():
        raise InputNotFoundError(
            "stage manifest",
            manifest,
            hint="`start_from` must be the output_dir of an earlier `kollm train` stage; run that stage first.",
        )
    record = json.loads(manifest.read_text(encoding="utf-8"))
    return [Path(p["path"]) for p in record.get("parents", [])] + [previous.resolve()]


def _check_same_base(parents: list[Path], base_sha: str) -> None:
    for parent in parents:
        record = json.loads((parent / STAGE_MANIFEST).read_text(encoding="utf-8"))
        if record["base"]["sha256"] != base_sha:
            raise AdapterMismatchError(parent, "it was trained on a different base model than this stage's `base`")


def _hardware() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"machine": platform.machine(), "cpu_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def _training_args(spec: TrainSpec, work: Path, backend: str) -> dict[str, Any]:
    import torch

    t = spec.training
    cuda = torch.cuda.is_available()
    return {
        "output_dir": str(work),
        "max_steps": t.max_steps,
        "learning_rate": t.learning_rate,
        "per_device_train_batch_size": t.batch_size,
        "gradient_accumulation_steps": t.grad_accum,
        "warmup_steps": t.warmup_steps,
        "weight_decay": t.weight_decay,
        "logging_steps": t.logging_steps,
        "seed": t.seed,
        "data_seed": t.seed,
        "max_length": t.max_length,
        # Unsloth sets up its own (offloaded) checkpointing on the model; the trainer must not add a second one.
        "gradient_checkpointing": t.gradient_checkpointing and backend == "hf",
        "save_strategy": "no",
        "report_to": [],
        "use_cpu": not cuda,
        "bf16": cuda,
        "dataloader_num_workers": 0,
        "include_num_input_tokens_seen": "non_padding",
        "disable_tqdm": True,
    }


def _make_trainer(spec: TrainSpec, model: Any, tokenizer: Any, records: list[Any], args: dict, callback: Any) -> Any:
    from datasets import Dataset

    if spec.stage == "dpo":
        from trl import DPOConfig, DPOTrainer

        config = DPOConfig(beta=spec.training.dpo_beta, **args)
        dataset = Dataset.from_list(train_data.dpo_conversational(records))
        # ref_model=None with a peft model: trl uses the adapter-disabled model (base + earlier stages) as reference.
        return DPOTrainer(
            model=model,
            ref_model=None,
            args=config,
            train_dataset=dataset,
            processing_class=tokenizer,
            callbacks=[callback],
        )
    from trl import SFTConfig, SFTTrainer

    if spec.stage == "cpt":
        # "wrapped" packing concatenates documents and cuts fixed blocks: no padding, no cross-sequence masks needed.
        config = SFTConfig(packing=True, packing_strategy="wrapped", **args)
        rows = train_data.tokenize_cpt(records, tokenizer)
    else:
        config = SFTConfig(**args)
        rows = train_data.tokenize_sft(records, tokenizer, spec.training.max_length)
    return SFTTrainer(
        model=model,
        args=config,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        callbacks=[callback],
    )


def run_stage(
    spec: TrainSpec,
    *,
    on_backend: Callable[[str], None] | None = None,
    on_step: Callable[[int, int, float | None], None] | None = None,
) -> StageResult:
    """Train one stage and write its adapter dir and stage manifest (atomically) to ``spec.output_dir``.

    Args:
        spec: the validated stage spec.
        on_backend: called once with the chosen backend name, before the model loads.
        on_step: called after each logged step with (step, max_steps, loss).

    Returns:
        Paths, the backend, per-step losses, tokens seen and wall time.

    Raises:
        DataFormatError: a data file has a bad record (file and line named).
        InputNotFoundError: base, data or ``start_from`` missing.
        BackendUnavailableError: the requested backend cannot run here.
        AdapterMismatchError: ``start_from`` was trained on another base.
    """
    start = time.perf_counter()
    # Data first: a bad line should fail in a second, before any model or library loads.
    records = train_data.read_for_stage(spec.stage, spec.data)
    backend = choose_backend(spec.backend)
    if on_backend:
        on_backend(backend)
    if backend == "unsloth":
        import unsloth  # noqa: F401  (patches transformers/trl; must precede their import)
    from transformers import PrinterCallback, TrainerCallback

    base = resolve(spec.base, revision=spec.base_revision, trust_remote_code=spec.trust_remote_code, what="base model")
    base_sha = sha256_tree(base.path)
    parents = _parents(spec.start_from)
    _check_same_base(parents, base_sha)
    model, tokenizer = load_for_training(spec, backend, base_dir=base.path, parents=parents)

    losses: list[float] = []

    class _Report(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))
                if on_step:
                    on_step(state.global_step, state.max_steps, float(logs["loss"]))

    out = Path(spec.output_dir)
    work = out.parent / f".{out.name}.work"
    trainer = _make_trainer(spec, model, tokenizer, records, _training_args(spec, work, backend), _Report())
    trainer.remove_callback(PrinterCallback)  # progress is reported through on_step, not printed dicts
    trainer.train()
    tokens = int(trainer.state.num_input_tokens_seen)
    # save_model is collective under FSDP/ZeRO-3 (it gathers the sharded weights) and writes on rank 0 only.
    trainer.save_model(str(work / "adapter"))
    if not trainer.is_world_process_zero():
        return StageResult(out.resolve(), out.resolve() / STAGE_MANIFEST, backend, losses, None, tokens, 0.0, False)
    with atomic_path(out) as tmp:
        tmp.mkdir()
        # Top-level files only: trl's DPO may save a frozen 'ref' adapter copy in a subfolder.
        for item in (work / "adapter").iterdir():
            if item.is_file() and item.name != "training_args.bin":
                shutil.copy2(item, tmp / item.name)
        _rewrite_base_name(tmp, spec.base)
        _remove_tree(work)
        adapter_sha = sha256_file(tmp / "adapter_model.safetensors")
        seconds = time.perf_counter() - start
        manifest = {
            "kind": "kollm.train.stage",
            "name": spec.name,
            "stage": spec.stage,
            "backend": backend,
            "base": {"source": spec.base, "path": str(base.path), "revision": base.revision, "sha256": base_sha},
            "parents": [{"path": str(p), "sha256": sha256_file(p / "adapter_model.safetensors")} for p in parents],
            "adapter_sha256": adapter_sha,
            "data": [{"path": str(p), "sha256": sha256_file(p)} for p in spec.data],
            "records": len(records),
            "hyperparameters": spec.model_dump(mode="json"),
            "losses": losses,
            "final_loss": losses[-1] if losses else None,
            "tokens_seen": tokens,
            "wall_seconds": round(seconds, 3),
            "hardware": _hardware(),
            "tool_versions": tool_versions(*TOOLS),
        }
        write_json_atomic(tmp / STAGE_MANIFEST, manifest)
    log.info("stage %s (%s) done in %.1f s", spec.name, spec.stage, seconds)
    return StageResult(
        adapter_dir=out.resolve(),
        manifest_path=out.resolve() / STAGE_MANIFEST,
        backend=backend,
        losses=losses,
        final_loss=losses[-1] if losses else None,
        tokens_seen=tokens,
        seconds=seconds,
    )


def _rewrite_base_name(adapter_dir: Path, base: str) -> None:
    """Record the spec's base reference (not a temp or cache path) as the adapter's base model."""
    path = adapter_dir / "adapter_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = base
    path.write_text(json.dumps(config, indent=2), encoding="utf-8")


def _remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def stage_provenance(adapter_dir: Path) -> dict[str, Any] | None:
    """The training record of an adapter written by `kollm train`, for the release manifest (None otherwise).

    Args:
        adapter_dir: an adapter directory named in a release spec.

    Returns:
        Stage, backend, base hash, data hashes, hyperparameters, final loss, tokens seen, wall time and hardware.
    """
    path = Path(adapter_dir) / STAGE_MANIFEST
    if not path.is_file():
        return None
    record = json.loads(path.read_text(encoding="utf-8"))
    keys = ("name", "stage", "backend", "base", "parents", "data", "hyperparameters", "final_loss", "tokens_seen")
    return {key: record.get(key) for key in (*keys, "wall_seconds", "hardware", "tool_versions")}
