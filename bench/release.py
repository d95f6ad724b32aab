"""Benchmark: the demo release through `kollm release` vs the same steps run by hand with the underlying tools.

By hand = what a user scripts today, one tool per process: peft merge_and_unload + save_pretrained (both
adapters), llama.cpp's convert_hf_to_gguf.py to f16, one quantize run per type (llama_model_quantize, the
function behind llama-quantize; the wheel ships no binary), then one verification script (HF logits vs
each GGUF). kollm = `kollm release release/ko-tiny.yaml` from an empty output dir (streaming merge, steps
run concurrently), plus a no-op re-run (everything verified and skipped).

``--fused`` instead times the demo with ``exports.safetensors: false`` through the fused GGUF path and through
the checkpoint route (``exports.fused_gguf: false``), fresh each time, alternating which goes first. The
demo's gates compare the f16 GGUF with the merged model, which needs a checkpoint, so both variants drop them.

Usage: .venv/bin/python bench/release.py [--fused [--runs N] [--synthetic]]
       → bench/results/release.json | release-fused.json | release-fused-synthetic.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
TYPES = ["q8_0", "q5_k_m", "q4_k_m"]

MERGE = """
import sys, torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer
base, out, *adapters = sys.argv[1:]
model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
for adapter in adapters:
    model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
model.save_pretrained(out)
AutoTokenizer.from_pretrained(base).save_pretrained(out)
"""

QUANTIZE = """
import sys, llama_cpp
src, dst, kind = sys.argv[1:]
params = llama_cpp.llama_model_quantize_default_params()
params.ftype = getattr(llama_cpp, "LLAMA_FTYPE_MOSTLY_" + kind.upper())
assert llama_cpp.llama_model_quantize(src.encode(), dst.encode(), params) == 0
"""

VERIFY = """
import sys, numpy as np, torch, llama_cpp
from transformers import AutoModelForCausalLM, AutoTokenizer
merged, *ggufs = sys.argv[1:]
tok = AutoTokenizer.from_pretrained(merged)
model = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32)
prompts = ["대한민국의 수도는", "오늘 날씨가 좋아서 공원에 산책을 나갔다.", "인공지능 모델을 배포할 때 가장 중요한 것은",
           "김치찌개를 맛있게 끓이는 방법을 알려 주세요."]
ref = []
with torch.no_grad():
    for p in prompts:
        ids = tok(p)["input_ids"]
        ref.append((ids, model(torch.tensor([ids])).logits[0, -1].numpy()))
for path in ggufs:
    llm = llama_cpp.Llama(path, n_ctx=512, logits_all=True, verbose=False)
    for ids, expected in ref:
        llm.reset(); llm.eval(ids)
        got = np.asarray(llm.scores[len(ids) - 1])[: expected.shape[0]]
        print(path, float(np.abs(got - expected).max()))
    llm.close()
"""


def _timed(cmd: list[str], **kwargs) -> float:
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if done.returncode != 0:
        raise SystemExit(f"{cmd[:4]} failed:\n{done.stderr[-2000:]}")
    return time.perf_counter() - started


def by_hand(work: Path) -> dict[str, float]:
    from kollm.release.converter import ensure_converter
    from kollm.testing.fixture import build_fixture

    fixture = build_fixture()
    converter = ensure_converter()
    merged, ggufs = work / "merged", work / "gguf"
    ggufs.mkdir(parents=True)
    times = {"merge": _timed([PY, "-c", MERGE, str(fixture.base), str(merged), *map(str, fixture.adapters.values())])}
    f16 = ggufs / "f16.gguf"
    # convert_entry is convert_hf_to_gguf.py with the pre-tokenizer named (stock refuses the fixture's vocab).
    convert = [PY, "-m", "kollm.release.convert_entry", str(converter.root), "qwen2", "--", str(merged)]
    times["convert_f16"] = _timed(
        [*convert, "--outfile", str(f16), "--outtype", "f16"], env={**os.environ, "NO_LOCAL_GGUF": "1"}
    )
    times["quantize"] = sum(_timed([PY, "-c", QUANTIZE, str(f16), str(ggufs / f"{t}.gguf"), t]) for t in TYPES)
    files = [str(f16), *(str(ggufs / f"{t}.gguf") for t in TYPES)]
    times["verify"] = _timed([PY, "-c", VERIFY, str(merged), *files])
    times["total"] = sum(times.values())
    return times


def kollm(work: Path, *extra: str) -> float:
    cli = [PY, "-c", "from kollm.cli import main; main()", "release", str(REPO / "release" / "ko-tiny.yaml")]
    return _timed([*cli, "-o", str(work / "out"), "--publish", f"local:{work / 'reg'}", "--json", *extra])


def by_hand_vs_kollm(root: Path) -> dict:
    """The demo by hand and through `kollm release` (fresh, resumed no-op, sequential)."""
    hand = by_hand(root / "hand")
    concurrent = kollm(root / "k2")
    resume = kollm(root / "k2")
    sequential = kollm(root / "k1", "--jobs", "1")
    return {
        "what": "demo release (ko-tiny: merge 2 adapters, GGUF f16/q8_0/q5_k_m/q4_k_m, verify) — seconds",
        "cpu_cores": os.cpu_count(),
        "load_average_1min_at_end": round(os.getloadavg()[0], 1),  # other jobs on a shared machine inflate times
        "by_hand": {k: round(v, 2) for k, v in hand.items()},
        "kollm": round(concurrent, 2),
        "kollm_jobs_1": round(sequential, 2),
        "kollm_resume_noop": round(resume, 2),
        "ratio_by_hand_over_kollm": round(hand["total"] / concurrent, 2),
        "note": "kollm also writes the manifest, report and publishes to a local registry; by hand does not.",
    }


def _release_variant(work: Path, fused: bool, base: str | None, adapters: list[str] | None) -> Path:
    import yaml

    spec = yaml.safe_load((REPO / "release" / "ko-tiny.yaml").read_text(encoding="utf-8"))
    spec.pop("gates", None)
    spec.pop("eval", None)
    spec["exports"] |= {"safetensors": False, "fused_gguf": fused}
    if base:
        spec |= {"base": base, "adapters": adapters or []}
    path = work / ("fused.yaml" if fused else "checkpoint.yaml")
    path.write_text(yaml.safe_dump(spec, allow_unicode=True), encoding="utf-8")
    return path


def synthetic_model(work: Path) -> tuple[str, list[str]]:
    """A random 279 MB bf16 Qwen2 (hidden 1024, 12 layers, ko-tiny's tokenizer) and one r=16 all-linear adapter."""
    from kollm.testing.fixture import build_fixture
    from kollm.testing.lora_cases import AdapterCase, BaseCase, make_adapter, make_base

    case = BaseCase(vocab_size=4096, hidden_size=1024, intermediate_size=2816, num_layers=12, initializer_range=0.02)
    base = make_base(case, work / "synthetic" / "base", tokenizer_from=build_fixture().base)
    adapter = make_adapter(AdapterCase(r=16, alpha=32), base, work / "synthetic" / "sft")
    return str(base), [str(adapter)]


def fused_vs_checkpoint(work: Path, runs: int, base: str | None = None, adapters: list[str] | None = None) -> dict:
    """Fresh releases, fused and checkpoint route alternated; seconds, key steps' seconds and the load."""
    from kollm.testing.fixture import build_fixture

    specs = {route: _release_variant(work, route == "fused", base, adapters) for route in ("fused", "checkpoint")}
    cli = [PY, "-c", "from kollm.cli import main; main()", "release"]
    rows = []
    for i in range(runs):
        for route in ("fused", "checkpoint") if i % 2 == 0 else ("checkpoint", "fused"):
            out, reg = work / f"{route}-{i}", work / f"reg-{route}-{i}"
            load_before = os.getloadavg()[0]
            seconds = _timed([*cli, str(specs[route]), "-o", str(out), "--publish", f"local:{reg}", "--json"])
            state = json.loads((out / "kollm-state.json").read_text(encoding="utf-8"))["steps"]
            rows.append(
                {
                    "route": route,
                    "run": i,
                    "seconds": round(seconds, 2),
                    "steps": {n: state[n]["seconds"] for n in ("merge", "hf-reference", "gguf-f16")},
                    "load_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
                }
            )
            shutil.rmtree(out)
            shutil.rmtree(reg)
    median = {r: statistics.median(x["seconds"] for x in rows if x["route"] == r) for r in specs}
    weights = Path(base) if base else build_fixture().base
    return {
        "what": "release/ko-tiny.yaml, exports.safetensors: false, no gates: fused GGUF path vs checkpoint route",
        "base": "synthetic (hidden 1024, 12 layers, bf16)" if base else "fixture:ko-tiny",
        "base_weights_bytes": sum(p.stat().st_size for p in weights.glob("*.safetensors")),
        "cpu_cores": os.cpu_count(),
        "runs": rows,
        "median_seconds": median,
        "ratio_checkpoint_over_fused": round(median["checkpoint"] / median["fused"], 3),
        "note": "load_1min is the 1-minute load average before and after each run; other jobs share the machine.",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fused", action="store_true", help="fused GGUF path vs checkpoint route")
    parser.add_argument("--runs", type=int, default=3, help="runs per route with --fused")
    parser.add_argument("--synthetic", action="store_true", help="with --fused: a 279 MB random base instead")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kollm-bench-") as tmp:
        root = Path(tmp)
        if args.fused:
            base, adapters = synthetic_model(root) if args.synthetic else (None, None)
            result = fused_vs_checkpoint(root, args.runs, base, adapters)
            name = "release-fused-synthetic.json" if args.synthetic else "release-fused.json"
        else:
            result, name = by_hand_vs_kollm(root), "release.json"
    out = REPO / "bench" / "results" / name
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
