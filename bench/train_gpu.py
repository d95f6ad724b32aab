"""SFT throughput and peak VRAM: Unsloth vs plain transformers + peft + trl, on one CUDA GPU.

Both backends train the same LoRA (r=16, all linear layers, bf16) on the same random-init Qwen2.5-0.5B-shaped
model and the same token ids, through trl's SFTTrainer. Each backend runs in its own process, because importing
Unsloth patches transformers for the whole interpreter. Writes ``<name>.json`` and ``<name>.png``.

    python bench/train_gpu.py --tokenizer DIR --out bench/results

``--tokenizer`` is any HF tokenizer directory (the ko-tiny fixture's ``base`` dir by default); the data are random
token ids below its vocabulary size, so the figures measure the training step, not the tokenizer.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

# Qwen2.5-0.5B's published shapes; weights are random (nothing can be downloaded here).
QWEN05 = dict(
    vocab_size=151936,
    hidden_size=896,
    intermediate_size=4864,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    max_position_embeddings=32768,
    rope_theta=1_000_000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
)
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def build_model(out: Path, tokenizer_dir: Path) -> None:
    """Save a random-init bf16 Qwen2.5-0.5B-shaped model plus the tokenizer to ``out``."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    config = Qwen2Config(**QWEN05, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out)
    tok.save_pretrained(out)


def run_backend(backend: str, model_dir: Path, args: argparse.Namespace) -> dict:
    """Train ``args.steps`` steps with one backend in this process; return throughput and memory figures."""
    if backend == "unsloth":
        import unsloth  # noqa: F401  (must come before trl/transformers so its patches apply)
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    gen = torch.Generator().manual_seed(1)
    tok = AutoTokenizer.from_pretrained(model_dir)
    n = args.batch * args.steps
    ids = torch.randint(16, len(tok) - 1, (n, args.seq_len), generator=gen).tolist()
    data = Dataset.from_dict({"input_ids": ids})

    if backend == "unsloth":
        from unsloth import FastLanguageModel

        model, tok = FastLanguageModel.from_pretrained(
            model_name=str(model_dir), max_seq_length=args.seq_len, dtype=torch.bfloat16, load_in_4bit=False
        )
        model = FastLanguageModel.get_peft_model(
            model,
            r=16,
            lora_alpha=16,
            lora_dropout=0.0,
            target_modules=TARGETS,
            use_gradient_checkpointing="unsloth" if args.grad_ckpt else False,
            random_state=0,
        )
    else:
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16, device_map={"": 0})
        if args.grad_ckpt:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.enable_input_require_grads()
        model = get_peft_model(
            model, LoraConfig(r=16, lora_alpha=16, lora_dropout=0.0, target_modules=TARGETS, task_type="CAUSAL_LM")
        )

    marks: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, *a, **k):
            torch.cuda.synchronize()
            marks.append(time.perf_counter())

    config = SFTConfig(
        output_dir=str(model_dir.parent / f"out-{backend}"),
        per_device_train_batch_size=args.batch,
        max_steps=args.steps,
        max_length=args.seq_len,
        learning_rate=2e-4,
        logging_steps=5,
        save_strategy="no",
        report_to=[],
        bf16=True,
        gradient_checkpointing=False,  # set on the model above, the way each backend does it
        dataloader_num_workers=0,
        seed=0,
    )
    trainer = SFTTrainer(model=model, args=config, train_dataset=data, processing_class=tok, callbacks=[Clock()])
    torch.cuda.reset_peak_memory_stats()
    out = trainer.train()
    timed = marks[args.warmup :]
    secs = timed[-1] - marks[args.warmup - 1]
    tokens = args.batch * args.seq_len * len(timed)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {
        "backend": backend,
        "gradient_checkpointing": args.grad_ckpt,
        "tokens_per_s": tokens / secs,
        "step_s_median": statistics.median(b - a for a, b in itertools.pairwise(marks[args.warmup - 1 :])),
        "peak_vram_gib": torch.cuda.max_memory_allocated() / 2**30,
        "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30,
        "timed_steps": len(timed),
        "losses": losses,
        "train_loss": out.training_loss,
    }


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['backend']}\n(grad ckpt {'on' if r['gradient_checkpointing'] else 'off'})" for r in results]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.bar(labels, [r["tokens_per_s"] for r in results], color="tab:blue")
    a.set_title("SFT throughput (tokens/s, higher is better)")
    b.bar(labels, [r["peak_vram_gib"] for r in results], color="tab:orange")
    b.set_title("Peak VRAM allocated (GiB, lower is better)")
    fig.suptitle("LoRA r=16 SFT, random-init Qwen2.5-0.5B shapes, bf16")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", type=Path, help="HF tokenizer dir (default: the ko-tiny fixture's)")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--name", default="train_gpu", help="file stem of the JSON and PNG written under --out")
    parser.add_argument("--work", type=Path, default=Path("/tmp/kollm-train-gpu"))
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--backends", default="hf,unsloth")
    parser.add_argument("--no-grad-ckpt", dest="grad_ckpt", action="store_false")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-timeout", type=int, default=300)
    args = parser.parse_args()

    model_dir = args.work / "model"
    if args.child:
        result = run_backend(args.child, model_dir, args)
        print("RESULT " + json.dumps(result), flush=True)
        return

    if args.tokenizer is None:
        from kollm.testing.fixture import build_fixture

        args.tokenizer = build_fixture().base
    if not (model_dir / "config.json").is_file():
        build_model(model_dir, args.tokenizer)
    results, failures = [], {}
    for backend in args.backends.split(","):
        cmd = [sys.executable, __file__, "--child", backend, "--work", str(args.work)]
        cmd += ["--seq-len", str(args.seq_len), "--batch", str(args.batch), "--steps", str(args.steps)]
        cmd += ["--warmup", str(args.warmup)] + ([] if args.grad_ckpt else ["--no-grad-ckpt"])
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.child_timeout)
        except subprocess.TimeoutExpired as e:
            failures[backend] = f"timed out after {args.child_timeout} s: {e.stdout!s:.2000} {e.stderr!s:.2000}"
            continue
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode == 0 and lines:
            results.append(json.loads(lines[-1].removeprefix("RESULT ")))
        else:
            failures[backend] = (proc.stdout + proc.stderr)[-4000:]
            print(f"--- {backend} failed (rc {proc.returncode}) ---\n{failures[backend]}", flush=True)

    import torch
    import transformers

    by = {r["backend"]: r for r in results}
    summary = {}
    if "hf" in by and "unsloth" in by:
        summary = {
            "speedup_tokens_per_s": by["unsloth"]["tokens_per_s"] / by["hf"]["tokens_per_s"],
            "vram_ratio": by["unsloth"]["peak_vram_gib"] / by["hf"]["peak_vram_gib"],
            "target": "speedup >= 1.8, vram_ratio <= 0.6",
        }
    record = {
        "model": "random-init Qwen2.5-0.5B shapes (bf16)",
        "lora": {"r": 16, "alpha": 16, "targets": TARGETS},
        "seq_len": args.seq_len,
        "batch": args.batch,
        "steps": args.steps,
        "warmup_steps": args.warmup,
        "gpu": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "results": results,
        "summary": summary,
        "failures": failures,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(record, indent=2), encoding="utf-8")
    if results:
        plot(results, args.out / f"{args.name}.png")
    for r in results:
        print(
            f"{r['backend']:8s} {r['tokens_per_s']:10.0f} tok/s  {r['peak_vram_gib']:6.2f} GiB  loss {r['train_loss']:.3f}"
        )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
