"""`kollm release`: the plan of steps (merge → exports → verification → manifest → report → publish).

Each step is a thin adapter from the release spec to one stage module; the graph engine (state file, resume,
concurrency) lives in ``kollm.release.steps``. To add a step, write a ``_foo_step`` function returning a
``Step`` and append it in ``build_steps`` after its inputs, then list its name in the manifest's inputs if the
manifest should record it. This module owns the rich progress display; the CLI prints the summary.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TaskID, TaskProgressColumn, TextColumn, TimeElapsedColumn

from kollm.config import GGUF_FLOAT_TYPES, GGUF_K_QUANT_TYPES, ReleaseSpec
from kollm.errors import GateFailedError, KollmError, OutputPathError, ReleaseLockedError
from kollm.manifest import MANIFEST_NAME, ArtifactRecord, remove_stale_temps, tool_versions
from kollm.release.inputs import ResolvedInput, resolve
from kollm.release.steps import (
    PlannedStep,
    RunHooks,
    Step,
    StepContext,
    StepOutput,
    StepState,
    execute,
    plan,
    read_state,
)

REPORT_NAME = "report.html"
_TOOLS = (
    "torch",
    "transformers",
    "peft",
    "tokenizers",
    "safetensors",
    "llama-cpp-python",
    "gguf",
    "huggingface_hub",
    "lm-eval",
    "llmcompressor",
    "compressed-tensors",
    "bitsandbytes",
)
# GGUF size relative to a 16-bit checkpoint, for disk and memory estimates.
_GGUF_RATIO = {"f32": 2.0, "f16": 1.0, "bf16": 1.0, "q8_0": 0.53, "q6_k": 0.41, "q5_k_m": 0.36, "q5_k_s": 0.35}
_MiB = 1024**2


@dataclass
class SummaryRow:
    """One line of the release summary."""

    artifact: str
    path: str
    size: int
    seconds: float
    check: str


@dataclass
class ReleaseResult:
    """What a release produced (or, for a dry run, would do)."""

    out_dir: Path
    manifest_path: Path
    rows: list[SummaryRow]
    published: list[str] = field(default_factory=list)
    seconds: float = 0.0
    plan: list[PlannedStep] = field(default_factory=list)
    ran: list[str] = field(default_factory=list)
    gates: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class _Inputs:
    base: ResolvedInput
    adapters: list[ResolvedInput]
    weights_bytes: int


def _inside(out: Path, relative: str, what: str) -> Path:
    """``out/relative``, refusing any path (``..``, absolute, a symlink) that would land outside ``out``."""
    target = (out / relative).resolve()
    if target != out and out not in target.parents:
        raise OutputPathError(what, relative)
    return out / relative


def _stat_fingerprint(directory: Path) -> str:
    # The base can be tens of GB: name, size and mtime decide whether the merge re-runs; the merge itself
    # records every base file's sha256 in the manifest.
    rows = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in directory.iterdir() if p.is_file())
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()


def _content_fingerprint(directory: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.iterdir() if p.is_file()):
        digest.update(path.name.encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def _resolve_inputs(spec: ReleaseSpec) -> _Inputs:
    base = resolve(spec.base, revision=spec.base_revision, trust_remote_code=spec.trust_remote_code, what="base model")
    adapters = [resolve(a, what="adapter") for a in spec.adapters]
    weights = sum(p.stat().st_size for p in base.path.glob("*.safetensors"))
    return _Inputs(base, adapters, weights)


# --- steps: thin adapters from the spec to the stage modules ------------------------------------------------


def _merged_dir(spec: ReleaseSpec) -> str:
    return "merged" if spec.exports.safetensors else ".work/merged"


def fused_gguf(spec: ReleaseSpec, base: Path) -> bool:
    """Whether the float GGUFs are converted from merged tensors streamed in (no merged checkpoint on disk).

    Only when GGUF is the sole consumer of the merge: no safetensors export, no GPTQ / bnb / quality report and
    no gate on the merged model (those load a checkpoint directory), and a 16-bit safetensors base (pickle and
    4-bit bases are converted by the checkpoint merge). The verification reference then merges in memory.
    """
    exports = spec.exports
    if not exports.gguf or exports.safetensors or not exports.fused_gguf or spec.dequantize_base:
        return False
    if exports.gptq or exports.bnb_4bit or exports.quality_report:
        return False
    if spec.gates:
        from kollm.evals.gates import needed, parse_gates

        if any(artifact not in exports.gguf for artifact in needed(parse_gates(spec.gates))):
            return False
    return any(base.glob("*.safetensors"))


def _merge_step(spec: ReleaseSpec, inputs: _Inputs, out: Path, fused: bool) -> Step:
    target = _inside(out, _merged_dir(spec), "merged model directory")

    def run(ctx: StepContext) -> StepOutput:
        from kollm.release import merge
        from kollm.train.stages import stage_provenance

        result = merge.run(
            merge.MergeConfig(
                allow_pickle=spec.allow_pickle,
                trust_remote_code=spec.trust_remote_code,
                dequantize_base=spec.dequantize_base,
            ),
            base=inputs.base.path,
            adapters=[a.path for a in inputs.adapters],
            out_dir=target,
            progress=ctx.progress,
            weights=not fused,  # fused: config and tokenizer only; the GGUF converter streams the tensors
        )
        record = {
            "dir": _merged_dir(spec),
            "base_files": result.base_files,
            "adapters": [
                {"source": a.source, **vars(p), "training": stage_provenance(a.path)}
                for a, p in zip(inputs.adapters, result.adapters, strict=True)
            ],
            "merged_tensors": result.merged_tensors,
            "replaced_tensors": result.replaced_tensors,
            "config_changes": result.config_changes,
            "dequantized_base": result.dequantized_base,
        }
        if fused:  # only then, so records (and fingerprints) of checkpoint releases stay as they were
            record["fused"] = True
        return StepOutput(files=[p for p in target.iterdir() if p.is_file()], record=record)

    external = {"base": _stat_fingerprint(inputs.base.path)}
    external |= {f"adapter{i}": _content_fingerprint(a.path) for i, a in enumerate(inputs.adapters)}
    config = {"dir": _merged_dir(spec), "allow_pickle": spec.allow_pickle, "trust_remote_code": spec.trust_remote_code}
    if spec.dequantize_base:  # only when set, so the merges of existing releases keep their fingerprints
        config["dequantize_base"] = True
    if fused:  # a different output (no weights): switching routes must re-run the merge, not verify-and-skip it
        config["fused"] = True
    return Step(
        "merge",
        run,
        config=config,
        external=external,
        memory_bytes=512 * _MiB,
        disk_bytes=_MiB if fused else inputs.weights_bytes,
        title="merge (fused: config only)" if fused else "",
    )


def _reference_step(spec: ReleaseSpec, inputs: _Inputs, out: Path, fused: bool) -> Step:
    target = _inside(out, ".work/hf-reference.npz", "verification reference")

    def run(ctx: StepContext) -> StepOutput:
        from kollm.manifest import atomic_path
        from kollm.release import verify_gguf

        model_dir = ctx.out / ctx.record("merge")["dir"]
        model = None
        if fused:  # no checkpoint to load: the same merged bytes, built in memory
            from kollm.release import merge, merged_model

            model = merged_model.load_merged(
                merge.MergeConfig(),
                base=inputs.base.path,
                adapters=[a.path for a in inputs.adapters],
                config_dir=model_dir,
            )
        reference = verify_gguf.hf_reference(model_dir, spec.verify.prompts, model=model)
        with atomic_path(target) as tmp:
            verify_gguf.save_reference(reference, tmp)
        return StepOutput(files=[target])

    return Step(
        "hf-reference",
        run,
        inputs=("merge",),
        config={"prompts": spec.verify.prompts},
        memory_bytes=3 * inputs.weights_bytes + 512 * _MiB,
        disk_bytes=64 * _MiB,
    )


def _reference_type(spec: ReleaseSpec) -> str:
    floats = [t for t in spec.exports.gguf if t in GGUF_FLOAT_TYPES]
    return "f16" if "f16" in floats or not floats else floats[0]


def _imatrix_types(spec: ReleaseSpec) -> list[str]:
    """The GGUF types quantized with the importance matrix (K-quants, when it is on)."""
    return [t for t in spec.exports.gguf if t in GGUF_K_QUANT_TYPES] if spec.exports.gguf_imatrix else []


def _gguf_steps(spec: ReleaseSpec, inputs: _Inputs, out: Path, fused: bool) -> list[Step]:
    from kollm.release.gguf import file_name

    types = spec.exports.gguf
    floats = [t for t in types if t in GGUF_FLOAT_TYPES]
    reference_type = _reference_type(spec)
    gguf_dir = _inside(out, "gguf", "GGUF directory")
    work = _inside(out, ".work", "work directory")
    with_imatrix = _imatrix_types(spec)

    def convert(gguf_type: str, target: Path) -> Step:
        def run(ctx: StepContext) -> StepOutput:
            from kollm.models import resolve_pre_tokenizer
            from kollm.release import gguf
            from kollm.release.converter import ensure_converter

            model_dir = ctx.out / ctx.record("merge")["dir"]
            pre = spec.gguf_pre_tokenizer or resolve_pre_tokenizer(model_dir)
            converter = ensure_converter()
            merge_inputs = (inputs.base.path, [a.path for a in inputs.adapters]) if fused else None
            item = gguf.convert_one(
                model_dir,
                target,
                gguf_type,
                pre_tokenizer=pre,
                converter_root=converter.root,
                merge_inputs=merge_inputs,
            )
            ctx.progress(1, 1)
            record = {"pre_tokenizer": pre, "converter": converter.origin, **_gguf_record(item)}
            return StepOutput(files=[target], record=record)

        ratio = _GGUF_RATIO[gguf_type]
        return Step(
            f"gguf-{gguf_type}",
            run,
            inputs=("merge",),
            config={"name": spec.name, "type": gguf_type, "pre": spec.gguf_pre_tokenizer, "path": str(target)},
            memory_bytes=inputs.weights_bytes + 512 * _MiB,
            disk_bytes=int(inputs.weights_bytes * ratio),
            title=f"gguf-{gguf_type} (fused merge)" if fused else "",
        )

    def quantize(gguf_type: str, target: Path, *, imatrix: bool, name: str) -> Step:
        def run(ctx: StepContext) -> StepOutput:
            from kollm.release import gguf

            reference = ctx.files(f"gguf-{reference_type}")[0]
            if imatrix:
                from kollm.release.llama_tools import ensure_tools

                item = gguf.quantize_with_imatrix(
                    reference, target, gguf_type, imatrix=ctx.files("gguf-imatrix")[0], tools=ensure_tools()
                )
            else:
                item = gguf.quantize_one(reference, target, gguf_type)
            ctx.progress(1, 1)
            return StepOutput(files=[target], record=_gguf_record(item))

        config: dict[str, Any] = {"name": spec.name, "type": gguf_type}
        external: dict[str, str] = {}
        if imatrix:
            from kollm.release.llama_tools import expected_origin

            config["imatrix"] = True
            external["tools"] = expected_origin()  # another llama-quantize re-runs the step
        if target.parent != gguf_dir:
            config["path"] = str(target)
        return Step(
            name,
            run,
            inputs=(f"gguf-{reference_type}", *(["gguf-imatrix"] if imatrix else [])),
            config=config,
            external=external,
            memory_bytes=2 * inputs.weights_bytes + 256 * _MiB,
            disk_bytes=int(inputs.weights_bytes * _GGUF_RATIO.get(gguf_type, 0.3)),
        )

    reference_target = (gguf_dir if reference_type in types else work) / file_name(spec.name, reference_type)
    steps = [convert(reference_type, reference_target)]
    steps += [convert(t, gguf_dir / file_name(spec.name, t)) for t in floats if t != reference_type]
    if with_imatrix:
        steps.append(_imatrix_step(spec, inputs, gguf_dir, reference_type))
    steps += [
        quantize(t, gguf_dir / file_name(spec.name, t), imatrix=t in with_imatrix, name=f"gguf-{t}")
        for t in types
        if t not in GGUF_FLOAT_TYPES
    ]
    if spec.exports.quality_report:
        # What the importance matrix bought: the same K-quants without it, measured but not released.
        steps += [
            quantize(t, work / "no-imatrix" / file_name(spec.name, t), imatrix=False, name=_no_imatrix_step(t))
            for t in with_imatrix
        ]
    return steps


def _no_imatrix_step(gguf_type: str) -> str:
    return f"gguf-{gguf_type}-no-imatrix"


def _imatrix_step(spec: ReleaseSpec, inputs: _Inputs, gguf_dir: Path, reference_type: str) -> Step:
    """llama-imatrix over Korean calibration text: the importance matrix the K-quants are quantized with."""
    from kollm.manifest import sha256_file
    from kollm.release import llama_tools
    from kollm.release.imatrix import ImatrixConfig, imatrix_file_name

    target = gguf_dir / imatrix_file_name(spec.name)
    cfg = ImatrixConfig(calibration=spec.exports.gguf_imatrix_calibration, chunks=spec.exports.gguf_imatrix_chunks)
    # Fail before anything is built when the tools are neither there nor buildable here.
    ready = llama_tools.find_tools()
    if ready is None:
        llama_tools.build_programs()

    def run(ctx: StepContext) -> StepOutput:
        from kollm.release import imatrix

        tools = llama_tools.ensure_tools(progress=ctx.progress)
        result = imatrix.compute(
            cfg,
            reference=ctx.files(f"gguf-{reference_type}")[0],
            target=target,
            tools=tools,
            model_dir=ctx.out / ctx.record("merge")["dir"],
        )
        record = {
            "calibration": result.calibration,
            "dataset": result.dataset,
            "entries": result.entries,
            "chunks": result.chunks,
            "chunk_tokens": result.chunk_tokens,
            "uncovered": result.uncovered,
            "tools": result.tools,
        }
        return StepOutput(files=[target], record=record)

    external = {"tools": llama_tools.expected_origin()}
    if cfg.calibration is not None:
        external["calibration"] = sha256_file(cfg.calibration)
    return Step(
        "gguf-imatrix",
        run,
        inputs=(f"gguf-{reference_type}", "merge"),
        config=json.loads(cfg.model_dump_json()),
        external=external,
        memory_bytes=inputs.weights_bytes + 512 * _MiB,
        disk_bytes=16 * _MiB,
        title="gguf-imatrix" if ready else "gguf-imatrix (building llama.cpp tools first)",
    )


def _gguf_record(item: Any) -> dict[str, Any]:
    record = {"gguf_type": item.gguf_type, "tensor_types": item.tensor_types, "fallback_tensors": item.fallback_tensors}
    if item.imatrix:
        record["imatrix"] = item.imatrix
    return record


def _verify_step(spec: ReleaseSpec, inputs: _Inputs, gguf_type: str) -> Step:
    is_float = gguf_type in GGUF_FLOAT_TYPES and gguf_type != "bf16"
    atol = spec.verify.f16_logits_atol if is_float else None

    def run(ctx: StepContext) -> StepOutput:
        from kollm.release import verify_gguf

        reference = verify_gguf.load_reference(ctx.files("hf-reference")[0])
        ctx.progress(0, 1)
        check = verify_gguf.check_gguf(ctx.files(f"gguf-{gguf_type}")[0], reference, atol=atol)
        verdict = f"ok, Δlogit {check.max_logit_diff:.3f}, top-1 {check.top1_agreement:.0%}" + (
            f" (≤ {atol})" if atol is not None else ""
        )
        return StepOutput(record={"checks": check.checks, "verdict": verdict})

    return Step(
        f"verify-gguf-{gguf_type}",
        run,
        inputs=(f"gguf-{gguf_type}", "hf-reference"),
        config={"atol": atol},
        memory_bytes=int(inputs.weights_bytes * _GGUF_RATIO.get(gguf_type, 0.3)) + 512 * _MiB,
    )


def _hf_export_step(spec: ReleaseSpec, inputs: _Inputs, out: Path, kind: str) -> Step:
    """GPTQ W4A16 (llm-compressor) or bnb NF4, each verified by reloading it; one directory per export."""
    directory = _inside(out, "gptq-w4a16" if kind == "gptq" else "bnb-nf4", f"{kind} export directory")

    def run(ctx: StepContext) -> StepOutput:
        merged = ctx.out / ctx.record("merge")["dir"]
        ctx.progress(0, 1)
        if kind == "gptq":
            from kollm.release import gptq

            cfg = gptq.GptqConfig(calibration=spec.exports.gptq_calibration, num_samples=spec.exports.gptq_samples)
            done = gptq.run(cfg, model_dir=merged, out_dir=directory)
            checks = gptq.verify(done.out_dir, spec.verify.prompts)
            details = {
                "format": "compressed-tensors pack-quantized",
                "scheme": gptq.SCHEME,
                "group_size": gptq.GROUP_SIZE,
                "calibration": done.calibration,
                "calibration_samples": done.samples,
                "serve": "vLLM detects the format from config.json; do not pass --quantization",
                "verdict": "ok, reloads + generates",
            }
        else:
            from kollm.release import bnb

            result = bnb.run(bnb.BnbConfig(), model_dir=merged, out_dir=directory, probe_texts=spec.verify.prompts)
            checks = result.checks
            details = {"quantization_config": result.quantization_config, "verdict": "ok, reload logits identical"}
        ctx.progress(1, 1)
        files = sorted(p for p in directory.rglob("*") if p.is_file())
        return StepOutput(files=files, record={"dir": directory.name, "checks": checks, "details": details})

    config = {"kind": kind, "prompts": spec.verify.prompts}
    if kind == "gptq":
        config |= {"calibration": str(spec.exports.gptq_calibration), "samples": spec.exports.gptq_samples}
    return Step(
        kind,
        run,
        inputs=("merge",),
        config=config,
        memory_bytes=3 * inputs.weights_bytes + 1024 * _MiB,
        disk_bytes=inputs.weights_bytes,
    )


def _quality_step(spec: ReleaseSpec, inputs: _Inputs, out: Path, deps: list[str]) -> Step:
    """Perplexity on held-out Korean text and top-1 agreement with the merge, for every export."""

    def run(ctx: StepContext) -> StepOutput:
        from kollm.release import quality, quantized

        merged_dir = ctx.out / ctx.record("merge")["dir"]
        size = sum(p.stat().st_size for p in merged_dir.glob("*.safetensors"))
        reference = quality.QualityInput("merged", "hf", merged_dir, size, ctx.states["merge"].seconds)
        comparisons = {}
        for gguf_type in _imatrix_types(spec):
            state = ctx.states[_no_imatrix_step(gguf_type)]
            path = ctx.files(_no_imatrix_step(gguf_type))[0]
            comparisons[f"gguf-{gguf_type}"] = quality.QualityInput(
                f"gguf-{gguf_type}", "gguf", path, path.stat().st_size, state.seconds
            )
        report = quantized.run_report(
            merged=reference,
            records=_artifacts(spec, ctx),
            out=ctx.out,
            comparisons=comparisons,
            progress=ctx.progress,
        )
        record = {"json": report.json_path.name, "png": report.png_path.name, "rows": [vars(r) for r in report.rows]}
        return StepOutput(files=[report.json_path, report.png_path], record=record)

    return Step(
        "quality",
        run,
        inputs=tuple(deps),
        memory_bytes=3 * inputs.weights_bytes + 1024 * _MiB,
        disk_bytes=4 * _MiB,
    )


def _gate_config(spec: ReleaseSpec) -> Any:
    from kollm.evals import release_gates

    return release_gates.GateRunConfig(
        gates=spec.gates,
        limit=spec.eval.limit,
        data_dir=spec.eval.data_dir,
        offline=spec.eval.offline,
        max_gen_toks=spec.eval.max_gen_toks,
    )


def _gates_step(spec: ReleaseSpec, inputs: _Inputs, out: Path) -> Step:
    """Evaluate the artifacts the gates name (lm-eval) and record the outcomes; `gate-check` acts on them."""
    eval_dir = _inside(out, "eval", "eval report directory")
    gguf_inputs = tuple(f"gguf-{t}" for t in spec.exports.gguf) + tuple(f"verify-gguf-{t}" for t in spec.exports.gguf)

    def run(ctx: StepContext) -> StepOutput:
        from kollm.evals import release_gates
        from kollm.evals import report as eval_report

        result = release_gates.run(
            _gate_config(spec),
            merged=ctx.out / ctx.record("merge")["dir"],
            gguf_files={t: ctx.files(f"gguf-{t}")[0] for t in spec.exports.gguf},
            out_dir=eval_dir,
            on_artifact=lambda _name, done, total: ctx.progress(done, total),
        )
        files = [p for p in (result.files.results, result.files.chart) if p is not None]
        record = {
            "results": result.files.results.relative_to(ctx.out).as_posix(),
            "gates": eval_report.gate_rows(result.outcomes),
            "scores": eval_report.score_records(result.outcomes, result.results),
            "failed": [{"gate": o.gate.text, "threshold": o.threshold, "actual": o.actual} for o in result.failed],
            "seconds": round(result.seconds, 1),
        }
        return StepOutput(files=files, record=record)

    config = {"gates": spec.gates, "eval": json.loads(spec.eval.model_dump_json())}
    return Step(
        "gates",
        run,
        inputs=("merge", *gguf_inputs),
        config=config,
        memory_bytes=3 * inputs.weights_bytes + 1024 * _MiB,
        disk_bytes=4 * _MiB,
    )


def _gate_check_step() -> Step:
    """Stops the release (exit 7) when a gate failed; publish depends on it, so nothing is published."""

    def run(ctx: StepContext) -> StepOutput:
        failed = ctx.record("gates")["failed"]
        if failed:
            first = failed[0]
            raise GateFailedError(
                first["gate"], first["threshold"], first["actual"], failed=[f["gate"] for f in failed]
            )
        return StepOutput(record={"passed": True})

    return Step("gate-check", run, inputs=("gates",))


def _artifacts(spec: ReleaseSpec, ctx: StepContext) -> list[ArtifactRecord]:
    found = []
    if spec.exports.safetensors:
        state = ctx.states["merge"]
        merge_record = state.record
        found.append(
            ArtifactRecord(
                name="merged",
                kind="safetensors",
                path=merge_record["dir"],
                files=state.files,
                seconds=state.seconds,
                checks={"sha256": "recorded"},
                details={k: merge_record[k] for k in ("merged_tensors", "replaced_tensors")},
            )
        )
    for gguf_type in spec.exports.gguf:
        state = ctx.states[f"gguf-{gguf_type}"]
        verify = ctx.record(f"verify-gguf-{gguf_type}")
        details = {k: state.record[k] for k in ("tensor_types", "fallback_tensors")} | {"verdict": verify["verdict"]}
        if "imatrix" in state.record:
            details["imatrix"] = state.record["imatrix"]
        found.append(
            ArtifactRecord(
                name=f"gguf-{gguf_type}",
                kind="gguf",
                path=state.files[0].path,
                files=state.files,
                seconds=state.seconds,
                checks=verify["checks"],
                details=details,
            )
        )
    if _imatrix_types(spec):
        state = ctx.states["gguf-imatrix"]
        record = state.record
        found.append(
            ArtifactRecord(
                name="gguf-imatrix",
                kind="imatrix",
                path=state.files[0].path,
                files=state.files,
                seconds=state.seconds,
                checks={"entries": record["entries"], "uncovered_weights": record["uncovered"]},
                details={k: record[k] for k in ("calibration", "dataset", "chunks", "chunk_tokens", "tools")}
                | {
                    "used_by": [f"gguf-{t}" for t in _imatrix_types(spec)],
                    "verdict": f"ok, {record['entries']} weights, {record['chunks']} chunks",
                },
            )
        )
    for kind, wanted in (("gptq", spec.exports.gptq), ("bnb-4bit", spec.exports.bnb_4bit)):
        if wanted:
            state = ctx.states[kind]
            found.append(
                ArtifactRecord(
                    name="gptq-w4a16" if kind == "gptq" else "bnb-nf4",
                    kind=kind,
                    path=state.record["dir"],
                    files=state.files,
                    seconds=state.seconds,
                    checks=state.record["checks"],
                    details=state.record["details"],
                )
            )
    return found


def _manifest_step(spec: ReleaseSpec, inputs: _Inputs, out: Path, spec_path: Path | None, deps: list[str]) -> Step:
    target = _inside(out, MANIFEST_NAME, "manifest")

    def run(ctx: StepContext) -> StepOutput:
        from kollm.manifest import write_json_atomic

        merge_record = ctx.record("merge")
        first_gguf = next((ctx.record(n) for n in deps if n.startswith("gguf-") and "converter" in ctx.record(n)), None)
        manifest: dict[str, Any] = {
            "kollm_manifest": 1,
            "release": spec.name,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "spec": json.loads(spec.model_dump_json()),
            "spec_file": str(spec_path) if spec_path else None,
            "base": {
                "source": inputs.base.source,
                "kind": inputs.base.kind,
                "revision": inputs.base.revision,
                "files_sha256": merge_record["base_files"],
            },
            "adapters": merge_record["adapters"],
            "merge": {
                "engine": "kollm-streaming",
                "config_changes": merge_record["config_changes"],
                "dequantized_base": merge_record.get("dequantized_base"),  # absent in merges recorded before it
                "fused_gguf": merge_record.get("fused", False),
            },
            "gguf": _gguf_provenance(spec, ctx, first_gguf),
            "tools": tool_versions(*_TOOLS),
            "steps": {name: ctx.states[name].fingerprint for name in deps},
            "artifacts": [a.model_dump() for a in _artifacts(spec, ctx)],
            "evals": None,
            # The publisher re-checks these and turns them into the cards' model-index (kollm.publish.card).
            "scores": [],
        }
        if "quality" in deps:
            quality_record = ctx.record("quality")
            manifest["quality"] = {k: quality_record[k] for k in ("json", "png", "rows")}
        if "gates" in deps:
            gates = ctx.record("gates")
            manifest["evals"] = {"results": gates["results"], "gates": gates["gates"]}
            manifest["scores"] = gates["scores"]
        write_json_atomic(target, manifest)
        return StepOutput(files=[target])

    return Step("manifest", run, inputs=tuple(deps), config=json.loads(spec.model_dump_json()), disk_bytes=_MiB)


def _gguf_provenance(spec: ReleaseSpec, ctx: StepContext, first_gguf: dict[str, Any] | None) -> dict[str, Any] | None:
    if first_gguf is None:
        return None
    provenance = {"pre_tokenizer": first_gguf["pre_tokenizer"], "converter": first_gguf["converter"]}
    if _imatrix_types(spec):
        record = ctx.record("gguf-imatrix")
        provenance["imatrix"] = {
            "file": ctx.states["gguf-imatrix"].files[0].path,
            "types": _imatrix_types(spec),
            **{k: record[k] for k in ("calibration", "dataset", "chunks", "chunk_tokens", "tools")},
        }
    return provenance


def _report_step(out: Path) -> Step:
    target = _inside(out, REPORT_NAME, "report")

    def run(ctx: StepContext) -> StepOutput:
        from kollm.manifest import write_text_atomic
        from kollm.release import report

        manifest = json.loads(ctx.files("manifest")[0].read_text(encoding="utf-8"))
        write_text_atomic(target, report.render(manifest, out_dir=ctx.out))
        return StepOutput(files=[target])

    return Step("report", run, inputs=("manifest",), disk_bytes=4 * _MiB)


def _publish_step(spec: ReleaseSpec, inputs: _Inputs, deps: list[str]) -> Step:
    from dataclasses import asdict

    from kollm.publish.plan import publish_config

    cfg = publish_config(spec)

    def run(ctx: StepContext) -> StepOutput:
        from kollm.publish import publisher
        from kollm.publish.plan import parse_target

        target = parse_target(cfg.target, cfg.name)
        if target.scheme == "local" and target.root is not None and target.root.is_dir():
            remove_stale_temps(target.root)  # a repo a killed run was assembling, never renamed into place
        # The publisher verifies the artifacts against the manifest, and re-publishing identical content under
        # the same version is a no-op, so a publish killed half-way simply runs again.
        result = publisher.run(cfg, out_dir=ctx.out)
        return StepOutput(record={"repos": [r.location for r in result.repos]})

    return Step("publish", run, inputs=("manifest", *deps), config=asdict(cfg), disk_bytes=inputs.weights_bytes * 3)


def build_steps(spec: ReleaseSpec, *, spec_path: Path | None = None, inputs: _Inputs | None = None) -> list[Step]:
    """The release's steps in plan order (every step after its inputs).

    Args:
        spec: the validated release spec.
        spec_path: the YAML it came from (recorded in the manifest).
        inputs: resolved base and adapters (resolved here when omitted).

    Returns:
        The steps; names are what `--force` accepts.

    Raises:
        OutputPathError: an output location resolves outside the output directory.
    """
    out = spec.out_dir.resolve()
    if out.exists() and not out.is_dir():
        raise KollmError(
            f"output_dir {out} exists and is not a directory.", hint="Choose another --output-dir or remove that file."
        )
    if spec.gates:
        from kollm.evals import release_gates

        # Bad gates, unknown suites and missing offline data fail here, before anything is built.
        release_gates.prepare(_gate_config(spec), artifact_names=["merged", *spec.exports.gguf])
    inputs = inputs or _resolve_inputs(spec)
    fused = fused_gguf(spec, inputs.base.path)
    steps = [_merge_step(spec, inputs, out, fused)]
    if spec.exports.gguf:
        steps.append(_reference_step(spec, inputs, out, fused))
        steps += _gguf_steps(spec, inputs, out, fused)
        steps += [_verify_step(spec, inputs, t) for t in spec.exports.gguf]
    if spec.exports.gptq:
        steps.append(_hf_export_step(spec, inputs, out, "gptq"))
    if spec.exports.bnb_4bit:
        steps.append(_hf_export_step(spec, inputs, out, "bnb-4bit"))
    comparisons = [_no_imatrix_step(t) for t in _imatrix_types(spec)] if spec.exports.quality_report else []
    artifact_steps = ["merge"] + [
        s.name
        for s in steps
        if (s.name.startswith(("gguf-", "verify-gguf-")) or s.name in ("gptq", "bnb-4bit"))
        and s.name not in comparisons
    ]
    manifest_deps = list(artifact_steps)
    if spec.exports.quality_report:
        steps.append(_quality_step(spec, inputs, out, artifact_steps + comparisons))
        manifest_deps.append("quality")
    if spec.gates:
        steps.append(_gates_step(spec, inputs, out))
        manifest_deps.append("gates")
    steps.append(_manifest_step(spec, inputs, out, spec_path, manifest_deps))
    steps.append(_report_step(out))
    if spec.gates:
        steps.append(_gate_check_step())
    if spec.publish:
        publish_deps = [*artifact_steps, "gate-check"] if spec.gates else artifact_steps
        steps.append(_publish_step(spec, inputs, publish_deps))
    return steps


def plan_release(spec: ReleaseSpec, *, force: tuple[str, ...] = ()) -> list[PlannedStep]:
    """What `kollm release` would do now, step by step, without writing anything (``--dry-run``)."""
    steps = build_steps(spec)
    return plan(steps, read_state(spec.out_dir.resolve()), spec.out_dir.resolve(), force=force)


class _Display:
    """The plan and one progress bar per running step, on stderr; silent when disabled (tests, --json)."""

    def __init__(self, enabled: bool) -> None:
        self.console = Console(stderr=True)
        self.enabled = enabled
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description:<26}"),
            BarColumn(),
            TaskProgressColumn(),
            TimeElapsedColumn(),
            console=self.console,
            disable=not enabled,
        )
        self.tasks: dict[str, TaskID] = {}

    def show_plan(self, planned: list[PlannedStep]) -> None:
        if not self.enabled:
            return
        self.console.print("[bold]plan[/bold]")
        for item in planned:
            mark = "[green]skip[/green]" if item.action == "skip" else "[yellow]run [/yellow]"
            self.console.print(f"  {mark} {item.step.name:<22} {item.reason}", highlight=False)

    def hooks(self) -> RunHooks:
        def started(step: Step) -> None:
            self.tasks[step.name] = self.progress.add_task(step.title or step.name, total=None)

        def progress(step: Step, done: int, total: int) -> None:
            self.progress.update(self.tasks[step.name], completed=done, total=total)

        def finished(step: Step, state: StepState, ran: bool) -> None:
            if ran:
                self.progress.update(self.tasks[step.name], completed=1, total=1)

        return RunHooks(started, progress, finished)


@contextmanager
def _locked(out: Path) -> Iterator[None]:
    # flock on the directory itself: it dies with the process, so a SIGKILLed release never leaves a stale
    # lock, and no lock file clutters the output.
    fd = os.open(out, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            raise ReleaseLockedError(out) from e
        yield
    finally:
        os.close(fd)


def _clean_temps(out: Path) -> None:
    for directory in [out, *(p for p in out.rglob("*") if p.is_dir() and ".tmp-" not in p.name)]:
        if directory.exists():
            remove_stale_temps(directory)


def _rows(out: Path) -> list[SummaryRow]:
    manifest = json.loads((out / MANIFEST_NAME).read_text(encoding="utf-8"))
    rows = []
    for artifact in manifest["artifacts"]:
        record = ArtifactRecord.model_validate(artifact)
        label = "merged (safetensors)" if record.kind == "safetensors" else record.name.replace("gguf-", "gguf ")
        rows.append(SummaryRow(label, record.path, record.size, record.seconds, record.details.get("verdict", "ok")))
    return rows


def run_release(
    spec: ReleaseSpec,
    *,
    spec_path: Path | None = None,
    show_progress: bool = True,
    force: tuple[str, ...] = (),
    max_workers: int | None = None,
) -> ReleaseResult:
    """Run the release described by ``spec``: every step that is not already done and verified.

    Args:
        spec: the validated release spec.
        spec_path: the YAML it came from (recorded in the manifest).
        show_progress: print the plan and draw progress bars on stderr.
        force: step names to re-run even if done.
        max_workers: most steps at once (default: CPU cores, bounded by memory).

    Returns:
        The summary rows, the manifest path, the published repos, the plan and the steps that ran.

    Raises:
        KollmError subclasses for every user-fixable problem; nothing is published unless all checks pass.
    """
    started = time.perf_counter()
    out = spec.out_dir.resolve()
    steps = build_steps(spec, spec_path=spec_path)
    out.mkdir(parents=True, exist_ok=True)
    display = _Display(show_progress)
    ran: list[str] = []
    with _locked(out):
        _clean_temps(out)
        hashes: dict = {}  # outputs hashed for the plan are not hashed again by the run
        planned = plan(steps, read_state(out), out, force=force, hashes=hashes)
        display.show_plan(planned)
        hooks = display.hooks()
        record_run = hooks.finished

        def finished(step: Step, state: StepState, did_run: bool) -> None:
            record_run(step, state, did_run)
            if did_run:
                ran.append(step.name)

        hooks.finished = finished
        try:
            with display.progress:
                state = execute(
                    steps, out=out, work=out / ".work", force=force, max_workers=max_workers, hooks=hooks, hashes=hashes
                )
        finally:
            gates = _gate_rows(out)
            if gates and show_progress:
                display.console.print(_gate_table(gates))
    published = list(state.steps["publish"].record["repos"]) if "publish" in state.steps else []
    return ReleaseResult(
        out_dir=out,
        manifest_path=out / MANIFEST_NAME,
        rows=_rows(out),
        published=published,
        seconds=time.perf_counter() - started,
        plan=planned,
        ran=ran,
        gates=gates,
    )


def _gate_rows(out: Path) -> list[dict[str, Any]]:
    record = read_state(out).steps.get("gates")
    return list(record.record["gates"]) if record is not None else []


def _gate_table(rows: list[dict[str, Any]]) -> Any:
    from rich.table import Table

    table = Table(title="release gates")
    for column in ("gate", "score ± stderr", "threshold", "result"):
        table.add_column(column)
    for row in rows:
        spread = f" ± {row['stderr']:.2f}" if row["stderr"] is not None else ""
        verdict = "[green]pass[/green]" if row["passed"] else "[bold red]FAIL[/bold red]"
        table.add_row(row["gate"], f"{row['score']:.2f}{spread}", f"{row['op']} {row['threshold']:.2f}", verdict)
    return table
