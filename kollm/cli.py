"""The `kollm` command line: parse, call one library function, print. No logic lives here."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated

import click
import typer
from rich.console import Console
from rich.table import Table

from kollm.errors import KollmError

app = typer.Typer(
    name="kollm",
    help="Release Korean LLMs: train adapters, merge, export (GGUF, GPTQ, bnb), gate on Korean benchmarks, publish, serve.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
# Piped output (CI logs, `| tee`) gets a wide table instead of rich's 80-column default.
out = Console(width=None if sys.stdout.isatty() else 120)
err = Console(stderr=True)


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1024 or unit == "TB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{int(value)} B"
        value /= 1024
    return str(size)


@app.command()
def release(
    spec: Annotated[Path, typer.Argument(help="Release spec (YAML), e.g. release/ko-tiny.yaml.")],
    output_dir: Annotated[Path | None, typer.Option("--output-dir", "-o", help="Override output_dir.")] = None,
    publish: Annotated[str | None, typer.Option(help="Override the publish target, e.g. local:./registry.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON on stdout.")] = False,
    gate: Annotated[
        list[str] | None,
        typer.Option("--gate", help="Eval gate in percent, added to the spec's gates; repeatable: --gate kmmlu>=78."),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print which steps would run or skip, and why; write nothing.")
    ] = False,
    force: Annotated[
        list[str] | None, typer.Option("--force", help="Re-run this step even if done (repeatable).")
    ] = None,
    jobs: Annotated[
        int | None, typer.Option("--jobs", "-j", min=1, help="Most steps at once (default: cores, bounded by memory).")
    ] = None,
) -> None:
    """Merge, export, verify, gate and publish a release described by SPEC; resumes where a run stopped."""
    from kollm.config import load_release_spec
    from kollm.release.pipeline import plan_release, run_release

    loaded = load_release_spec(spec, {"output_dir": output_dir, "publish": publish})
    if gate:
        loaded = load_release_spec(
            spec, {"output_dir": output_dir, "publish": publish, "gates": [*loaded.gates, *gate]}
        )
    if dry_run:
        planned = plan_release(loaded, force=tuple(force or ()))
        if as_json:
            out.print_json(json.dumps([{"step": p.step.name, "action": p.action, "reason": p.reason} for p in planned]))
            return
        table = Table(title=f"kollm release {loaded.name}: plan (dry run, nothing written)")
        for column in ("step", "action", "why"):
            table.add_column(column)
        for item in planned:
            table.add_row(item.step.name, item.action, item.reason)
        out.print(table)
        return
    result = run_release(loaded, spec_path=spec, show_progress=not as_json, force=tuple(force or ()), max_workers=jobs)
    if as_json:
        rows = [vars(r) for r in result.rows]
        out.print_json(
            json.dumps(
                {
                    "manifest": str(result.manifest_path),
                    "artifacts": rows,
                    "gates": result.gates,
                    "published": result.published,
                    "ran": result.ran,
                    "skipped": [p.step.name for p in result.plan if p.step.name not in result.ran],
                }
            )
        )
        return
    table = Table(title=f"kollm release {loaded.name}  ({result.seconds:.1f} s)")
    for column in ("artifact", "file", "size", "seconds", "check"):
        table.add_column(column, justify="right" if column in ("size", "seconds") else "left")
    for row in result.rows:
        table.add_row(row.artifact, Path(row.path).name, _human(row.size), f"{row.seconds:.2f}", row.check)
    out.print(table)
    out.print(f"manifest: {result.manifest_path}")
    out.print(f"report: {result.out_dir / 'report.html'}")
    out.print(f"steps run: {', '.join(result.ran) or 'none (everything was done and verified)'}")
    for repo in result.published:
        out.print(f"published: {repo}")


@app.command()
def merge(
    base: Annotated[Path, typer.Argument(help="Base model directory (HF safetensors).")],
    adapters: Annotated[list[Path], typer.Argument(help="LoRA adapter directories, applied in order.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Directory for the merged checkpoint.")],
    shard_size: Annotated[str, typer.Option(help="Largest output shard, e.g. 2GB or 500MB.")] = "2GB",
    allow_pickle: Annotated[
        bool, typer.Option(help="Accept pickle (.bin) checkpoints, loaded tensors-only (weights_only).")
    ] = False,
    dequantize_base: Annotated[
        bool,
        typer.Option(
            help="Accept a bitsandbytes 4-bit base: dequantize it with bitsandbytes, then merge (warns: its "
            "quantization error stays in the merged model; the original 16-bit base is better)."
        ),
    ] = False,
) -> None:
    """Merge LoRA adapters into a base model, streaming shard by shard (bounded memory)."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeElapsedColumn

    from kollm.release import merge as merge_stage

    cfg = merge_stage.MergeConfig(
        max_shard_bytes=_parse_size(shard_size), allow_pickle=allow_pickle, dequantize_base=dequantize_base
    )
    with Progress("merge", BarColumn(), DownloadColumn(), TimeElapsedColumn(), console=err) as progress:
        task = progress.add_task("merge", total=None)
        result = merge_stage.run(
            cfg,
            base=base,
            adapters=adapters,
            out_dir=output,
            progress=lambda done, total: progress.update(task, completed=done, total=total),
        )
    out.print(
        f"merged {len(adapters)} adapter(s) into {result.merged_tensors} tensors"
        f" ({result.replaced_tensors} replaced) in {result.seconds:.1f} s → {output}"
    )


@app.command()
def export(
    model: Annotated[Path, typer.Argument(help="Merged HF model directory.")],
    gguf_types: Annotated[str, typer.Option("--gguf", help="Comma-separated GGUF types, e.g. f16,q8_0,q4_k_m.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Directory for the GGUF files.")],
    name: Annotated[str | None, typer.Option(help="File name stem (default: the model directory's name).")] = None,
    pre_tokenizer: Annotated[str | None, typer.Option(help="llama.cpp pre-tokenizer (default: derived).")] = None,
    llama_cpp_dir: Annotated[
        Path | None,
        typer.Option(help="llama.cpp checkout whose converter to use (and build whose llama-imatrix/llama-quantize)."),
    ] = None,
    imatrix: Annotated[
        bool, typer.Option(help="Quantize K-quants with an importance matrix computed on Korean text.")
    ] = False,
    imatrix_calibration: Annotated[
        Path | None, typer.Option(help="Importance-matrix calibration .txt/.jsonl (default: bundled Korean).")
    ] = None,
    verify: Annotated[bool, typer.Option(help="Check every file against the HF model.")] = True,
) -> None:
    """Export GGUF files with llama.cpp's converter and quantizer, then verify them."""
    from kollm.config import DEFAULT_VERIFY_PROMPTS, GGUF_FLOAT_TYPES, ExportsSpec, format_validation_errors
    from kollm.errors import SpecError
    from kollm.release import gguf, verify_gguf

    try:
        exports = ExportsSpec(
            gguf=[t.strip() for t in gguf_types.split(",") if t.strip()],
            gguf_imatrix=imatrix,
            gguf_imatrix_calibration=imatrix_calibration,
        )
    except Exception as e:  # pydantic.ValidationError
        raise SpecError("--gguf/--imatrix", format_validation_errors(e)) from e  # type: ignore[arg-type]
    cfg = gguf.GgufConfig(
        name=name or model.resolve().name,
        types=exports.gguf,
        pre_tokenizer=pre_tokenizer,
        llama_cpp_dir=llama_cpp_dir,
        imatrix=exports.gguf_imatrix,
        imatrix_calibration=exports.gguf_imatrix_calibration,
    )
    with err.status("converting with llama.cpp"):
        result = gguf.run(cfg, model_dir=model, out_dir=output, work_dir=output / ".work")
    reference = verify_gguf.hf_reference(model, DEFAULT_VERIFY_PROMPTS) if verify else None
    table = Table(title=f"GGUF export (pre-tokenizer {result.pre_tokenizer}, {result.converter})")
    for column in ("file", "size", "seconds", "tensor types", "check"):
        table.add_column(column)
    for item in result.files:
        verdict = "not verified"
        if reference is not None:
            atol = 0.05 if item.gguf_type in GGUF_FLOAT_TYPES and item.gguf_type != "bf16" else None
            check = verify_gguf.check_gguf(item.path, reference, atol=atol)
            verdict = f"ok, Δlogit {check.max_logit_diff:.3f}, top-1 {check.top1_agreement:.0%}"
        types_text = ", ".join(f"{k}×{v}" for k, v in sorted(item.tensor_types.items()))
        if item.imatrix:
            types_text += " (imatrix)"
        table.add_row(item.path.name, _human(item.path.stat().st_size), f"{item.seconds:.2f}", types_text, verdict)
    out.print(table)
    if result.imatrix is not None:
        im = result.imatrix
        out.print(
            f"importance matrix {im.path} ({im.entries} weights, {im.chunks} chunks of {im.chunk_tokens} tokens "
            f"of {im.calibration}; {im.tools})"
        )


@app.command("eval")
def eval_(
    model: Annotated[str, typer.Argument(help="HF model directory, .gguf file, or OpenAI-compatible base URL.")],
    suite: Annotated[
        str, typer.Option(help="Comma-separated suites from evalsuites/suites.yaml.")
    ] = "kmmlu,click,ko_ifeval",
    limit: Annotated[int | None, typer.Option(help="Questions per task (CPU smoke runs).", min=1)] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="Offline data folder (default offline: the bundled samples).")
    ] = None,
    offline: Annotated[
        bool | None, typer.Option("--offline/--hub", help="Bundled/local data, or the Hub data sets.")
    ] = None,
    gate: Annotated[
        list[str] | None, typer.Option("--gate", help="Gate in percent, repeatable: --gate kmmlu>=78.")
    ] = None,
    tokenizer: Annotated[
        str | None, typer.Option(help="HF tokenizer for a server URL (default: the server's).")
    ] = None,
    max_gen_toks: Annotated[int | None, typer.Option(help="Cap on generated tokens.", min=1)] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write results.json + scores.png here.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print scores and gates as JSON on stdout.")] = False,
) -> None:
    """Evaluate a model on Korean suites (KMMLU, CLIcK, Ko-IFEval) with lm-eval; one model load for all suites.

    Scores are percentages. A server URL needs OPENAI_API_KEY in the environment if it checks keys.
    """
    from kollm.errors import GateFailedError, GateSyntaxError
    from kollm.evals import gates as gates_mod
    from kollm.evals import report, runner

    parsed = gates_mod.parse_gates(gate or [], default_artifact="model")
    for g in parsed:
        if any(o.artifact != "model" for o in g.operands):
            raise GateSyntaxError(
                g.text,
                "`kollm eval` scores one model, so gates cannot name artifacts",
                hint="Use artifact gates (q4_k_m.kmmlu>=bf16.kmmlu-1.5) in `kollm release`.",
            )
    names = list(dict.fromkeys([s.strip() for s in suite.split(",") if s.strip()] + [g.left.suite for g in parsed]))
    cfg = runner.EvalConfig(
        suites=names, limit=limit, data_dir=data_dir, offline=offline, tokenizer=tokenizer, max_gen_toks=max_gen_toks
    )
    with err.status(f"kollm eval: {', '.join(names)} (lm-eval shows per-request progress)") as status:
        result = runner.run(
            cfg, model=model, progress=lambda names_, done, total: status.update(f"done {names_} ({done}/{total})")
        )
    scores = {("model", s): (v.score, v.stderr) for s, v in result.scores.items()}
    outcomes = gates_mod.check(parsed, scores)
    if output is not None:
        files = report.write(output, {"model": result}, outcomes)
        err.print(f"results: {files.results}  chart: {files.chart}")
    if as_json:
        body = report.payload({"model": result}, outcomes)
        body.pop("lm_eval_raw")
        out.print_json(json.dumps(body, default=str))
    else:
        table = Table(title=f"kollm eval {model}  ({result.seconds:.1f} s, {result.kind})")
        for column in ("suite", "score ± stderr", "n", "protocol"):
            table.add_column(column)
        for name, s in result.scores.items():
            p = s.protocol
            spread = f" ± {s.stderr:.2f}" if s.stderr is not None else ""
            protocol = (
                f"{','.join(p['tasks'])} {p['num_fewshot']}-shot, chat template {'on' if p['chat_template'] else 'off'}, "
                f"{p['metric']} {p['aggregation']}, {p['dataset']}" + (f"@{p['revision']}" if p["revision"] else "")
            )
            table.add_row(name, f"{s.score:.2f}{spread}", str(s.n_samples), protocol)
        out.print(table)
        for row in report.gate_rows(outcomes):
            out.print(
                f"gate {row['gate']}: {row['score']:.2f} {row['op']} {row['threshold']:.2f} → "
                + ("pass" if row["passed"] else "FAIL")
            )
    failed = [o for o in outcomes if not o.passed]
    if failed:
        raise GateFailedError(
            failed[0].gate.text, failed[0].threshold, failed[0].actual, failed=[o.gate.text for o in failed]
        )


@app.command()
def publish(
    spec: Annotated[Path, typer.Argument(help="Release spec (YAML) of a release already built with `kollm release`.")],
    to: Annotated[
        str | None, typer.Option("--to", help="Override the target: hf://org/name, local:DIR, mirror:DIR.")
    ] = None,
    version: Annotated[str | None, typer.Option(help="Override the version tag, e.g. v1.2.0.")] = None,
    output_dir: Annotated[Path | None, typer.Option("--output-dir", "-o", help="Override output_dir.")] = None,
    scores: Annotated[Path | None, typer.Option(help="Gate score records (JSON/YAML list) for the card.")] = None,
    private: Annotated[bool | None, typer.Option("--private/--public", help="Hub visibility of new repos.")] = None,
    endpoint: Annotated[
        str | None, typer.Option(help="Hub endpoint URL (default: HF_ENDPOINT or huggingface.co).")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print every file and card; touch no network.")] = False,
) -> None:
    """Publish a built release: one verified, tagged commit per repo. Token: HF_TOKEN or `hf auth login`."""
    from kollm.config import load_release_spec
    from kollm.errors import SpecError
    from kollm.publish import publisher
    from kollm.publish.plan import publish_config

    loaded = load_release_spec(spec, {"output_dir": output_dir, "publish": to, "version": version, "private": private})
    if not loaded.publish:
        raise SpecError(spec, ["'publish' is empty: set it in the spec or pass --to hf://org/name"])
    cfg = publish_config(loaded)
    records = publisher.load_scores(scores) if scores else None
    with err.status(f"publishing {loaded.name} {cfg.version} to {cfg.target}"):
        result = publisher.run(
            cfg, out_dir=loaded.out_dir.resolve(), scores=records, dry_run=dry_run, endpoint=endpoint
        )
    for plan in result.plans:
        table = Table(title=f"{plan.repo_id} @ {cfg.version}" + ("  (dry run)" if dry_run else ""))
        for column in ("file", "size", "sha256 / source"):
            table.add_column(column)
        for name, source in plan.contents().items():
            size = len(source) if isinstance(source, bytes) else source.stat().st_size
            record = next((r for r in plan.records if r.path == name), None)
            table.add_row(name, _human(size), record.sha256 if record else "generated")
        out.print(table)
        if dry_run:
            out.print(plan.generated["README.md"].decode("utf-8"), markup=False, highlight=False)
    for repo in result.repos:
        out.print(f"{repo.status}: {repo.repo}@{repo.revision} → {repo.location}")


@app.command()
def pull(
    ref: Annotated[str, typer.Argument(help="org/name-GGUF[:QUANT], QUANT as in `llama-cli -hf` (default Q4_K_M).")],
    to: Annotated[Path, typer.Option("--to", help="Directory for the GGUF and its Ollama Modelfile.")] = Path("models"),
    registry: Annotated[str | None, typer.Option(help="Pull from a local registry: local:DIR.")] = None,
    endpoint: Annotated[str | None, typer.Option(help="Hub-compatible server URL (default: huggingface.co).")] = None,
    revision: Annotated[str, typer.Option(help="Branch or release tag, e.g. v1.2.0.")] = "main",
) -> None:
    """Download one GGUF, verify its sha256 against the release manifest, write an Ollama Modelfile."""
    from kollm.publish import pull as pull_stage

    root = Path(registry.removeprefix("local:")).expanduser() if registry else None
    if registry and not registry.startswith("local:"):
        raise KollmError(f"--registry '{registry}' is not a local registry.", hint="Use --registry local:DIR.")
    cfg = pull_stage.PullConfig(ref=ref, to=to, registry=root, endpoint=endpoint, revision=revision)
    with err.status(f"pulling {ref}"):
        result = pull_stage.run(cfg)
    out.print(f"verified {result.path} ({_human(result.path.stat().st_size)}, sha256 {result.sha256})")
    out.print(f"release {result.repo}@{result.revision}; stop tokens: {', '.join(result.stops)}")
    out.print(f"Ollama Modelfile: {result.modelfile}")
    for label, command in result.commands.items():
        out.print(f"  {label}: {command}", markup=False, highlight=False)


@app.command()
def serve(
    artifact: Annotated[Path | None, typer.Argument(help="Model directory (vLLM) or .gguf file (llama.cpp).")] = None,
    check: Annotated[
        str | None, typer.Option(help="Smoke-test a running endpoint instead, e.g. http://h:8000/v1.")
    ] = None,
    print_deploy: Annotated[bool, typer.Option(help="Print a production recipe instead of serving.")] = False,
    target: Annotated[str, typer.Option(help="Recipe for --print-deploy: docker, compose, k8s or ray.")] = "k8s",
    repo_id: Annotated[str | None, typer.Option(help="Hub repo of the release (for --print-deploy).")] = None,
    revision: Annotated[str, typer.Option(help="Release tag to pin (for --print-deploy).")] = "main",
    setup_env: Annotated[
        bool, typer.Option(help="Create kollm's dedicated vLLM environment (CPU hosts) and exit.")
    ] = False,
    served_model_name: Annotated[str | None, typer.Option(help="Name clients pass as `model`.")] = None,
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int | None, typer.Option(help="Port (default: a free one).")] = None,
    api_key: Annotated[
        str | None, typer.Option(envvar="KOLLM_API_KEY", help="Bearer key clients must send (default: generated).")
    ] = None,
    max_model_len: Annotated[int | None, typer.Option(help="Longest context served.")] = None,
    dtype: Annotated[str, typer.Option(help="vLLM dtype: auto, bfloat16, float16, float32.")] = "auto",
    tensor_parallel_size: Annotated[int, typer.Option(help="vLLM tensor parallel size.")] = 1,
    kv_cache_bytes: Annotated[int | None, typer.Option(help="vLLM KV-cache memory in bytes.")] = None,
    lora: Annotated[list[str] | None, typer.Option(help="LoRA adapter served by name (vLLM): name=DIR.")] = None,
) -> None:
    """Serve an artifact on an OpenAI-compatible endpoint (vLLM or llama.cpp), or check / deploy one."""
    if setup_env:
        from kollm.serve.environment import setup_env as make_env

        runtime = make_env()
        out.print(f"vLLM ready: {runtime.version} ({runtime.origin})")
        return
    if check:
        from kollm.serve.check import check_endpoint

        result = check_endpoint(check, api_key=api_key, model=served_model_name)
        out.print(
            f"ok: {result.url} serves {', '.join(result.models)}; chat {result.chat_tokens} tokens in "
            f"{result.chat_seconds:.2f} s; stream first token after {result.first_token_seconds:.2f} s"
        )
        return
    if artifact is None:
        raise KollmError("Nothing to serve.", hint="Give an ARTIFACT, or --check URL, or --setup-env.")
    if print_deploy:
        from kollm.serve.deploy import TEMPLATES, DeployConfig, render

        if target not in TEMPLATES:
            raise KollmError(f"--target '{target}' is not a recipe.", hint=f"Use one of: {', '.join(TEMPLATES)}.")
        name = served_model_name or artifact.name.removesuffix(".gguf")
        cfg = DeployConfig(
            name=name.lower().replace("_", "-").replace(".", "-"),
            repo_id=repo_id or f"<org>/{name}",
            revision=revision,
            max_model_len=max_model_len or 8192,
            tensor_parallel_size=tensor_parallel_size,
        )
        typer.echo(render(target, cfg), nl=False)  # type: ignore[arg-type]
        return
    import secrets
    import signal

    from kollm.serve.launch import ServeConfig
    from kollm.serve.launch import serve as start_server
    from kollm.serve.process import stop

    loras = {}
    for item in lora or []:
        lora_name, sep, path = item.partition("=")
        if not sep or not lora_name or not path:
            raise KollmError(f"--lora '{item}' is not name=DIR.", hint="Example: --lora ko-sft=./adapters/sft")
        loras[lora_name] = Path(path)
    generated = api_key is None
    key = api_key or f"sk-kollm-{secrets.token_urlsafe(18)}"
    cfg = ServeConfig(
        served_model_name=served_model_name,
        host=host,
        port=port,
        api_key=key,
        max_model_len=max_model_len,
        dtype=dtype,
        tensor_parallel_size=tensor_parallel_size,
        kv_cache_bytes=kv_cache_bytes,
        loras=loras,
    )
    with err.status(f"starting the server for {artifact} (waiting for a real completion)"):
        handle = start_server(artifact, cfg)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    out.print(f"[bold]serving[/bold] {handle.model} ({handle.backend}) at {handle.base_url}")
    if generated:
        out.print(f"API key (generated for this run; pass --api-key or KOLLM_API_KEY to choose one): {key}")
    out.print(
        f"""
curl {handle.base_url}/chat/completions -H "Authorization: Bearer $KEY" -H "Content-Type: application/json" \\
  -d '{{"model": "{handle.model}", "messages": [{{"role": "user", "content": "안녕하세요"}}]}}'

from openai import OpenAI
client = OpenAI(base_url="{handle.base_url}", api_key=KEY)
client.chat.completions.create(model="{handle.model}", messages=[{{"role": "user", "content": "안녕하세요"}}])
""",
        highlight=False,
    )
    out.print(f"log: {handle.log}   (Ctrl-C stops the server)")
    try:
        code = handle.process.wait()
    except KeyboardInterrupt:
        err.print("stopping the server")
        return
    finally:
        stop(handle)
    raise KollmError(f"The {handle.backend} server exited on its own (code {code}).", hint=f"See {handle.log}.")


@app.command()
def doctor(
    prepare: Annotated[
        bool,
        typer.Option(help="Also fetch the llama.cpp converter and build llama-imatrix/llama-quantize (once)."),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show what is installed and usable: torch, CUDA, llama.cpp converter and tools, vLLM, lm-eval …"""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from kollm.doctor import collect

    with Progress(
        "building llama-imatrix, llama-quantize", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=err
    ) as progress:
        task = progress.add_task("build", total=None, visible=False)

        def step(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total, visible=True)

        report = collect(prepare=prepare, progress=step)
    if as_json:
        out.print_json(json.dumps(report))
    else:
        table = Table(title="kollm doctor")
        table.add_column("component")
        table.add_column("status")
        table.add_column("detail")
        for item in report["components"]:
            colour = {"ok": "green", "missing": "yellow", "error": "red"}.get(item["status"], "white")
            table.add_row(item["name"], f"[{colour}]{item['status']}[/{colour}]", item["detail"])
        out.print(table)
    failed = [item["name"] for item in report["components"] if item["status"] == "error"]
    if prepare and failed:  # `make setup` must stop here rather than leave a release to fail later
        raise KollmError(
            f"kollm doctor --prepare could not prepare: {', '.join(failed)}.", hint="See the detail column above."
        )


train_app = typer.Typer(help="Train LoRA adapters: cpt → sft → dpo, each from a YAML spec.", no_args_is_help=True)
data_app = typer.Typer(help="Prepare Korean training data.", no_args_is_help=True)
app.add_typer(train_app, name="train")
app.add_typer(data_app, name="data")
_SPEC_HELP = "Train spec (YAML), e.g. release/train/ko-tiny-sft.yaml."
_OUT_HELP = "Override output_dir."


def _train(stage: str, spec: Path, output_dir: Path | None, backend: str | None) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from kollm.errors import SpecError
    from kollm.train.spec import load_train_spec
    from kollm.train.stages import run_stage

    loaded = load_train_spec(spec, {"output_dir": output_dir, "backend": backend})
    if loaded.stage != stage:
        raise SpecError(spec, [f"'stage' is {loaded.stage}, but this is `kollm train {stage}`"])
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, TextColumn("loss {task.fields[loss]}"), console=err) as progress:
        task = progress.add_task(f"{stage} {loaded.name}", total=loaded.training.max_steps, loss="-")
        result = run_stage(
            loaded,
            on_backend=lambda name: err.print(f"backend: [bold]{name}[/bold]"),
            on_step=lambda step, total, loss: progress.update(task, completed=step, loss=f"{loss:.4f}"),
        )
    if not result.main_process:
        return  # under accelerate launch, rank 0 reports
    loss = f"{result.final_loss:.4f}" if result.final_loss is not None else "n/a"
    out.print(
        f"{stage} done with {result.backend} in {result.seconds:.1f} s: final loss {loss}, "
        f"{result.tokens_seen} tokens → {result.adapter_dir}"
    )
    out.print(f"manifest: {result.manifest_path}")


@train_app.command("cpt")
def train_cpt(
    spec: Annotated[Path, typer.Argument(help=_SPEC_HELP)],
    output_dir: Annotated[Path | None, typer.Option("--output-dir", "-o", help=_OUT_HELP)] = None,
    backend: Annotated[str | None, typer.Option(help="Override backend: auto, hf or unsloth.")] = None,
) -> None:
    """Continued pre-training on raw Korean text (packed blocks)."""
    _train("cpt", spec, output_dir, backend)


@train_app.command("sft")
def train_sft(
    spec: Annotated[Path, typer.Argument(help=_SPEC_HELP)],
    output_dir: Annotated[Path | None, typer.Option("--output-dir", "-o", help=_OUT_HELP)] = None,
    backend: Annotated[str | None, typer.Option(help="Override backend: auto, hf or unsloth.")] = None,
) -> None:
    """Supervised fine-tuning on chat or instruction data; loss on assistant tokens only."""
    _train("sft", spec, output_dir, backend)


@train_app.command("dpo")
def train_dpo(
    spec: Annotated[Path, typer.Argument(help=_SPEC_HELP)],
    output_dir: Annotated[Path | None, typer.Option("--output-dir", "-o", help=_OUT_HELP)] = None,
    backend: Annotated[str | None, typer.Option(help="Override backend: auto, hf or unsloth.")] = None,
) -> None:
    """Direct preference optimisation on prompt/chosen/rejected pairs."""
    _train("dpo", spec, output_dir, backend)


@train_app.command("tokenizer")
def train_tokenizer(
    base: Annotated[Path, typer.Argument(help="Base model directory (HF, byte-level BPE tokenizer).")],
    corpus: Annotated[Path, typer.Argument(help="Korean corpus, one document a line.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="New base directory (extended tokenizer + model).")],
    new_tokens: Annotated[int, typer.Option(help="How many Korean tokens to add.")] = 256,
) -> None:
    """Optional stage: add Korean tokens learned from CORPUS to BASE's tokenizer and resize its embeddings."""
    from kollm.train.tokenizer import TokenizerConfig, extend_tokenizer

    with err.status("learning Korean tokens"):
        result = extend_tokenizer(TokenizerConfig(new_tokens=new_tokens), base_dir=base, corpus=corpus, out_dir=output)
    out.print(
        f"added {len(result.added)} tokens; Korean characters per token {result.chars_per_token_before:.3f} → "
        f"{result.chars_per_token_after:.3f} → {result.out_dir}"
    )
    out.print("next: train CPT on it with lora.modules_to_save: [embed_tokens] (and lm_head if untied)")


@data_app.command("prep")
def data_prep(
    input_path: Annotated[Path, typer.Argument(metavar="IN", help="Raw data: .txt (one document a line) or JSONL.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Cleaned file (same format as IN).")],
    report: Annotated[Path | None, typer.Option(help="Also write the drop report as JSON here.")] = None,
    min_korean_ratio: Annotated[float, typer.Option(help="Drop texts whose Hangul share of letters is lower.")] = 0.5,
    min_chars: Annotated[int, typer.Option(help="Drop texts shorter than this (characters).")] = 10,
    max_chars: Annotated[int, typer.Option(help="Drop texts longer than this (characters).")] = 20000,
    near_dup_threshold: Annotated[
        float, typer.Option(help="MinHash Jaccard above which texts are near-duplicates.")
    ] = 0.8,
    nfkc: Annotated[bool, typer.Option(help="NFKC instead of NFC (also folds full-width forms).")] = False,
) -> None:
    """Clean Korean data: normalise, strip HTML, dedupe (exact + MinHash), filter, mask PII; report drops."""
    from kollm.train.prep import PrepConfig, run_prep

    cfg = PrepConfig(
        min_korean_ratio=min_korean_ratio,
        min_chars=min_chars,
        max_chars=max_chars,
        near_dup_threshold=near_dup_threshold,
        normalization="NFKC" if nfkc else "NFC",
    )
    result = run_prep(cfg, input_path=input_path, output_path=output, report_path=report)
    table = Table(title=f"kollm data prep {input_path.name}: kept {result.kept} of {result.total}")
    table.add_column("reason")
    table.add_column("dropped / masked", justify="right")
    for reason, count in sorted(result.dropped.items()):
        table.add_row(f"dropped: {reason}", str(count))
    for kind, count in sorted(result.masked.items()):
        table.add_row(f"masked: {kind}", str(count))
    out.print(table)
    out.print(f"wrote {result.output_path}" + (f", report {report}" if report else ""))


def _parse_size(text: str) -> int:
    units = {"KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4, "B": 1}
    upper = text.strip().upper()
    for unit, factor in units.items():
        if upper.endswith(unit) and upper[: -len(unit)].strip().replace(".", "", 1).isdigit():
            return int(float(upper[: -len(unit)]) * factor)
    if upper.isdigit():
        return int(upper)
    raise KollmError(f"--shard-size '{text}' is not a size.", hint="Use a number with a unit, e.g. 2GB or 500MB.")


def _print_error(e: KollmError) -> None:
    err.print(f"[bold red]error:[/bold red] {e.message}", highlight=False, soft_wrap=True)
    if e.hint:
        err.print(f"[dim]→[/dim] {e.hint}", highlight=False, soft_wrap=True)


class _WarningsToConsole(logging.Handler):
    """Library modules log warnings (``logging.getLogger(__name__)``); the CLI prints them like its errors."""

    def emit(self, record: logging.LogRecord) -> None:
        from rich.markup import escape

        err.print(f"[bold yellow]warning:[/bold yellow] {escape(record.getMessage())}", highlight=False, soft_wrap=True)


def main() -> None:
    """Console entry point: map KollmError to a message and its exit code, never a traceback."""
    logger = logging.getLogger("kollm")
    if not any(isinstance(h, _WarningsToConsole) for h in logger.handlers):
        logger.addHandler(_WarningsToConsole(logging.WARNING))
    try:
        code = app(standalone_mode=False)
    except KollmError as e:
        _print_error(e)
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        err.print("interrupted")
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except typer.TyperException as e:  # typer >= 0.29 vendors click: its usage errors are not click's classes
        if isinstance(e, typer.Abort):
            err.print("interrupted; re-run the same command to resume")
            sys.exit(130)
        e.show()  # type: ignore[attr-defined]
        sys.exit(getattr(e, "exit_code", 2))
    except KeyboardInterrupt:
        err.print("interrupted; re-run the same command to resume")
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":  # `accelerate launch -m kollm.cli train ...` runs the CLI as a module
    main()
