"""Merge benchmark: kollm's streaming merge vs peft merge_and_unload + save_pretrained vs `cp` (the I/O floor).

Synthetic bf16 Llama-shaped bases (~1 B and ~2 B parameters, several shards; random finite values generated
here into a temp dir, never committed) with an r=16 all-linear LoRA. Each tool runs as its own process,
the tools alternate within each repetition, and peak RSS comes from the OS (GNU time's %M for that process).

    .venv/bin/python bench/merge.py            # writes bench/results/merge.json and merge.png
    .venv/bin/python bench/merge.py --layers 4 --reps 1   # quick look at a ~0.3 B model
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
HIDDEN, INTERMEDIATE, VOCAB, HEADS, RANK = 2048, 5632, 32000, 16, 16
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
SHARD_BYTES = 1 << 30


def _shapes(layers: int) -> dict[str, tuple[int, int] | tuple[int]]:
    shapes: dict[str, tuple[int, int] | tuple[int]] = {"model.embed_tokens.weight": (VOCAB, HIDDEN)}
    for i in range(layers):
        p = f"model.layers.{i}."
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            shapes[f"{p}self_attn.{name}.weight"] = (HIDDEN, HIDDEN)
        shapes[f"{p}mlp.gate_proj.weight"] = (INTERMEDIATE, HIDDEN)
        shapes[f"{p}mlp.up_proj.weight"] = (INTERMEDIATE, HIDDEN)
        shapes[f"{p}mlp.down_proj.weight"] = (HIDDEN, INTERMEDIATE)
        shapes[f"{p}input_layernorm.weight"] = (HIDDEN,)
        shapes[f"{p}post_attention_layernorm.weight"] = (HIDDEN,)
    shapes["model.norm.weight"] = (HIDDEN,)
    shapes["lm_head.weight"] = (VOCAB, HIDDEN)
    return shapes


def _random_bf16(rng: np.random.Generator, count: int) -> np.ndarray:
    # Random sign and mantissa, exponent fixed near 2^-7: finite weights of a plausible magnitude, fast to make.
    bits = rng.integers(0, 1 << 16, count, dtype=np.uint16)
    return (bits & np.uint16(0x807F)) | np.uint16(0x3C00)


def make_base(out: Path, layers: int, seed: int = 0) -> int:
    """Write a sharded bf16 Llama checkpoint; return its parameter count."""
    from kollm.release.safetensors_io import PlannedTensor, ShardWriter, plan_shards, shard_names

    rng = np.random.default_rng(seed)
    out.mkdir(parents=True)
    planned = [PlannedTensor(n, "BF16", s) for n, s in _shapes(layers).items()]
    shards = plan_shards(planned, SHARD_BYTES)
    names = shard_names(len(shards))
    weight_map = {}
    for shard, name in zip(shards, names, strict=True):
        writer = ShardWriter(out / name, shard)
        for tensor in shard:
            count = int(np.prod(tensor.shape))
            for start in range(0, count, 1 << 26):
                writer.write(_random_bf16(rng, min(1 << 26, count - start)).tobytes())
            weight_map[tensor.name] = name
        writer.close()
    total = sum(t.nbytes for t in planned)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index), encoding="utf-8")
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": HIDDEN,
        "intermediate_size": INTERMEDIATE,
        "num_hidden_layers": layers,
        "num_attention_heads": HEADS,
        "num_key_value_heads": HEADS,
        "vocab_size": VOCAB,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False,
        "dtype": "bfloat16",
    }
    (out / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return total // 2


def make_adapter(out: Path, base: Path, layers: int, seed: int = 1) -> None:
    """Write an r=16 all-linear PEFT LoRA adapter (float32 A and B, non-zero B) for the synthetic base."""
    import torch
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, shape in _shapes(layers).items():
        module = name.removesuffix(".weight")
        if module.rsplit(".", 1)[-1] not in TARGETS:
            continue
        rows, cols = shape
        key = f"base_model.model.{module}"
        tensors[f"{key}.lora_A.weight"] = torch.randn(RANK, cols, generator=gen) * 0.01
        tensors[f"{key}.lora_B.weight"] = torch.randn(rows, RANK, generator=gen) * 0.01
    out.mkdir(parents=True)
    save_file(tensors, out / "adapter_model.safetensors", metadata={"format": "pt"})
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": RANK,
        "lora_alpha": 32,
        "lora_dropout": 0.0,
        "target_modules": list(TARGETS),
        "base_model_name_or_path": str(base),
    }
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")


def peft_merge(base: str, adapter: str, out: str) -> None:
    """What most users run: load in bf16, merge_and_unload, save_pretrained."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
    PeftModel.from_pretrained(model, adapter).merge_and_unload().save_pretrained(out)


def _commands(base: Path, adapter: Path, out: Path) -> dict[str, list[str]]:
    venv_bin = Path(sys.executable).parent
    return {
        "kollm": [str(venv_bin / "kollm"), "merge", str(base), str(adapter), "-o", str(out)],
        "peft": [sys.executable, __file__, "--peft", str(base), str(adapter), str(out)],
        "cp": ["cp", "-r", str(base), str(out)],
    }


def _measure(cmd: list[str]) -> dict[str, float]:
    # /usr/bin/time forks the tool from a small process, so %M is the tool's own peak RSS (a child forked
    # straight from this Python process would start by counting this process's pages).
    with tempfile.NamedTemporaryFile("r", suffix=".time") as report:
        started = time.perf_counter()
        done = subprocess.run(
            ["/usr/bin/time", "-o", report.name, "-f", "%M", *cmd], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            raise SystemExit(f"{cmd[0]} failed ({done.returncode}): {done.stderr.decode(errors='replace')[-2000:]}")
        peak_kb = int(report.read().split()[-1])
    return {"seconds": round(seconds, 2), "peak_rss_mb": round(peak_kb / 1024, 1), "load_avg_1m": os.getloadavg()[0]}


def _same_tensors(a: Path, b: Path) -> bool:
    """Every tensor of two checkpoints bit-identical (read lazily, one tensor at a time)."""
    from safetensors import safe_open

    def locate(d: Path) -> dict[str, Path]:
        found = {}
        for f in sorted(d.glob("*.safetensors")):
            with safe_open(f, "pt") as h:
                found.update(dict.fromkeys(h.keys(), f))
        return found

    left, right = locate(a), locate(b)
    if left.keys() != right.keys():
        return False
    for name, path in left.items():
        with safe_open(path, "pt") as ha, safe_open(right[name], "pt") as hb:
            if not ha.get_tensor(name).equal(hb.get_tensor(name)):
                return False
    return True


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({r["params_b"] for r in rows})
    tools = ["cp", "kollm", "peft"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    width = 0.25
    for k, (metric, label) in enumerate((("seconds", "wall time (s)"), ("peak_rss_mb", "peak RSS (MB)"))):
        ax = axes[k]
        for j, tool in enumerate(tools):
            values = [
                float(np.median([r[metric] for r in rows if r["tool"] == tool and r["params_b"] == s])) for s in sizes
            ]
            ax.bar([i + (j - 1) * width for i in range(len(sizes))], values, width, label=tool)
        ax.set_xticks(range(len(sizes)), [f"{s:.2f} B params" for s in sizes])
        ax.set_ylabel(label)
        ax.legend()
    axes[1].axhline(1536, color="grey", linestyle="--", linewidth=1)
    fig.suptitle("LoRA merge (bf16 base, r=16 all-linear), median of runs")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, nargs="+", default=[18, 38], help="decoder layers per model size")
    parser.add_argument("--reps", type=int, default=2, help="repetitions (tools alternate within each)")
    parser.add_argument("--workdir", type=Path, default=None, help="where the synthetic models go (temp dir)")
    parser.add_argument("--peft", nargs=3, metavar=("BASE", "ADAPTER", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peft:
        peft_merge(*args.peft)
        return
    rows: list[dict] = []
    checks: dict[str, bool] = {}
    with tempfile.TemporaryDirectory(prefix="kollm-bench-merge-", dir=args.workdir) as tmp:
        work = Path(tmp)
        for layers in args.layers:
            base, adapter = work / f"base-{layers}", work / f"adapter-{layers}"
            started = time.perf_counter()
            params = make_base(base, layers)
            make_adapter(adapter, base, layers)
            print(
                f"{params / 1e9:.2f} B params, {len(list(base.glob('*.safetensors')))} shards "
                f"generated in {time.perf_counter() - started:.0f} s",
                flush=True,
            )
            tools = ["cp", "kollm", "peft"]
            for rep in range(args.reps):
                order = tools[rep % 3 :] + tools[: rep % 3]
                for tool in order:
                    out = work / f"out-{tool}"
                    subprocess.run(["sync"], check=True)
                    row = {
                        "tool": tool,
                        "params_b": round(params / 1e9, 3),
                        "rep": rep,
                        **_measure(_commands(base, adapter, out)[tool]),
                    }
                    rows.append(row)
                    print(row, flush=True)
                    if tool != "cp" and rep == 0 and layers == args.layers[0]:
                        shutil.move(out, work / f"keep-{tool}")
                    else:
                        shutil.rmtree(out)
            if (work / "keep-kollm").exists():
                checks[f"kollm == peft bf16 merge, bit for bit ({params / 1e9:.2f} B)"] = _same_tensors(
                    work / "keep-kollm", work / "keep-peft"
                )
                shutil.rmtree(work / "keep-kollm")
                shutil.rmtree(work / "keep-peft")
            shutil.rmtree(base)
            shutil.rmtree(adapter)
    summary = {}
    for tool, size in sorted({(r["tool"], r["params_b"]) for r in rows}):
        mine = [r for r in rows if r["tool"] == tool and r["params_b"] == size]
        summary[f"{tool}@{size}B"] = {
            "median_seconds": float(np.median([r["seconds"] for r in mine])),
            "max_peak_rss_mb": max(r["peak_rss_mb"] for r in mine),
        }
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "setup": {
            "hidden": HIDDEN,
            "intermediate": INTERMEDIATE,
            "vocab": VOCAB,
            "layers": args.layers,
            "lora_rank": RANK,
            "targets": list(TARGETS),
            "shard_bytes": SHARD_BYTES,
            "page_cache": "warm: not dropped (writing /proc/sys/vm/drop_caches is not permitted here); "
            "`sync` before every run",
        },
        "runs": rows,
        "summary": summary,
        "checks": checks,
    }
    (RESULTS / "merge.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    _plot(rows, RESULTS / "merge.png")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
