"""Errors kollm raises for things a user can fix.

Every error carries a one-paragraph message that names the file or field at fault and says what to do.
The library raises them; only ``kollm.cli`` turns them into a printed message and an exit code.
"""

from __future__ import annotations

from pathlib import Path


class KollmError(Exception):
    """Base class: a user-facing message plus the exit code the CLI uses."""

    exit_code: int = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} {self.hint}" if self.hint else self.message


# --- specs and configuration -------------------------------------------------------------------------


class SpecError(KollmError):
    """A spec file (release, train, serve, suites) failed validation. Lists every problem at once."""

    exit_code = 2

    def __init__(self, path: Path | str, problems: list[str]) -> None:
        self.path = str(path)
        self.problems = problems
        listed = "; ".join(problems)
        super().__init__(
            f"{self.path} is not a valid spec: {listed}.",
            hint="Fix the field(s) named above; `kollm release --help` lists every field.",
        )


class UnknownQuantError(KollmError):
    """A requested export format or quantization type is not one kollm can produce."""

    exit_code = 2

    def __init__(self, name: str, known: list[str], *, where: str) -> None:
        self.name = name
        self.known = known
        from difflib import get_close_matches

        close = get_close_matches(name.lower(), known, n=1)
        suggestion = f" Did you mean '{close[0]}'?" if close else ""
        super().__init__(
            f"{where}: unknown quantization type '{name}'.{suggestion} Known types: {', '.join(known)}.",
        )


# --- inputs ---------------------------------------------------------------------------------------------


class InputNotFoundError(KollmError):
    """A base model, adapter or data file named by the user does not exist or is incomplete."""

    exit_code = 3

    def __init__(self, what: str, path: Path | str, *, hint: str) -> None:
        self.what = what
        self.path = str(path)
        super().__init__(f"{what} not found: {self.path}.", hint=hint)


class UnsafeCheckpointError(KollmError):
    """A checkpoint is only available as pickle (.bin/.pt), which can run code when loaded."""

    exit_code = 3

    def __init__(self, path: Path | str, *, detail: str | None = None) -> None:
        self.path = str(path)
        if detail:  # --allow-pickle was given, but the file is not a plain tensor checkpoint
            super().__init__(
                f"{self.path} could not be read safely: {detail}.",
                hint="Re-save it as safetensors with the tool that wrote it; kollm never unpickles arbitrary objects.",
            )
            return
        super().__init__(
            f"{self.path} holds only pickle weights (.bin/.pt), which can execute code when loaded.",
            hint="Convert it to safetensors, or pass --allow-pickle if you trust its origin "
            "(kollm then loads tensors only, with torch.load(weights_only=True)).",
        )


class AdapterMismatchError(KollmError):
    """An adapter does not fit the base it is being merged into (made for another base)."""

    exit_code = 3

    def __init__(self, adapter: Path | str, detail: str) -> None:
        self.adapter = str(adapter)
        self.detail = detail
        super().__init__(
            f"Adapter {self.adapter} does not fit this base: {detail}.",
            hint="Check that the adapter was trained on this base (adapter_config.json → base_model_name_or_path) "
            "and that adapters are listed in training order.",
        )


class QuantizedBaseError(KollmError):
    """The base is a 4-bit checkpoint; merging onto it loses quality."""

    exit_code = 3

    def __init__(self, base: Path | str) -> None:
        self.base = str(base)
        super().__init__(
            f"{self.base} is a bitsandbytes 4-bit checkpoint; merging LoRA weights onto a dequantized 4-bit base "
            "raises perplexity noticeably (peft#2321, unsloth#1519).",
            hint="Point `base` at the original 16-bit model, or pass --dequantize-base (`dequantize_base: true` in "
            "a release spec) to merge onto its dequantized weights and accept the loss.",
        )


class DequantizeError(KollmError):
    """--dequantize-base was given, but this quantized base cannot be dequantized (8-bit, or a broken layout)."""

    exit_code = 3

    def __init__(self, base: Path | str, detail: str) -> None:
        self.base = str(base)
        self.detail = detail
        super().__init__(
            f"Cannot dequantize the base {self.base}: {detail}.",
            hint="Merge onto the original 16-bit base (recommended). kollm dequantizes bitsandbytes 4-bit "
            "(NF4/FP4) checkpoints as transformers' save_pretrained writes them; for anything else, load it with "
            "transformers, call `model.dequantize()`, `save_pretrained` the result and pass that directory.",
        )


# --- tools and exports ------------------------------------------------------------------------------------


class ToolMissingError(KollmError):
    """An optional dependency that a step needs is not installed."""

    exit_code = 4

    def __init__(self, tool: str, *, install: str) -> None:
        self.tool = tool
        super().__init__(f"{tool} is not installed, and this step needs it.", hint=f"Install it with: {install}")


class ConverterError(KollmError):
    """The llama.cpp converter or quantizer failed."""

    exit_code = 5

    def __init__(self, step: str, detail: str, *, hint: str | None = None) -> None:
        self.step = step
        self.detail = detail
        super().__init__(f"{step} failed: {detail}", hint=hint)


class LlamaToolsError(KollmError):
    """llama.cpp's llama-imatrix / llama-quantize are unavailable and could not be built."""

    exit_code = 4

    def __init__(self, message: str, *, hint: str) -> None:
        super().__init__(message, hint=hint)


class FusedMergeError(KollmError):
    """The fused GGUF path's in-memory merged model does not match the model class its config names."""

    exit_code = 5

    def __init__(self, model_class: str, detail: str) -> None:
        self.model_class = model_class
        self.detail = detail
        super().__init__(
            f"The merged model could not be built in memory as {model_class}: {detail}.",
            hint="Write the merged checkpoint instead: set `exports.fused_gguf: false` in the release spec.",
        )


class PreTokenizerError(KollmError):
    """kollm could not determine which llama.cpp pre-tokenizer matches a tokenizer."""

    exit_code = 5

    def __init__(self, tokenizer_json: Path | str, detail: str) -> None:
        self.tokenizer_json = str(tokenizer_json)
        super().__init__(
            f"Cannot tell which llama.cpp pre-tokenizer matches {self.tokenizer_json}: {detail}.",
            hint="Set `gguf_pre_tokenizer:` in the release spec to the llama.cpp name (e.g. qwen2, llama-bpe); "
            "kollm still proves it by comparing llama.cpp and HF token ids before accepting the export.",
        )


class VerificationError(KollmError):
    """An artifact was produced but failed a check (tokenization parity, logits, metadata, checksum)."""

    exit_code = 6

    def __init__(self, artifact: Path | str, check: str, detail: str) -> None:
        self.artifact = str(artifact)
        self.check = check
        self.detail = detail
        super().__init__(
            f"{self.artifact} failed the '{check}' check: {detail}.",
            hint="The artifact was not published. Report this with the manifest attached.",
        )


class OutputPathError(KollmError):
    """A path in a spec would write outside the release's output directory."""

    exit_code = 2

    def __init__(self, field: str, path: str) -> None:
        self.field = field
        self.path = path
        super().__init__(
            f"{field} = '{path}' points outside the output directory.",
            hint="Use a relative path without '..' under output_dir.",
        )


# --- release pipeline (plan, state, resume) --------------------------------------------------------------


class DiskFullError(KollmError):
    """The disk filled up while a step was writing; finished steps and the state file are intact."""

    exit_code = 7

    def __init__(self, path: Path | str, *, step: str, needed: int | None, free: int | None) -> None:
        self.path = str(path)
        self.step = step
        self.needed = needed
        self.free = free

        def gb(n: int | None) -> str:
            return "unknown" if n is None else f"{n / 1024**2:.1f} MiB"

        super().__init__(
            f"No space left on device while step '{step}' was writing {self.path} (it needs about {gb(needed)}, "
            f"{gb(free)} was free). Nothing half-written was kept; steps finished earlier are intact and recorded "
            "in kollm-state.json.",
            hint="Free some space or pick another --output-dir, then re-run the same command: finished steps "
            "are verified and skipped.",
        )


class ReleaseLockedError(KollmError):
    """Another `kollm release` is writing to the same output directory."""

    exit_code = 8

    def __init__(self, out_dir: Path | str) -> None:
        self.out_dir = str(out_dir)
        super().__init__(
            f"Another kollm release is running in {self.out_dir} (it holds a lock on that directory).",
            hint="Wait for it to finish, or use another --output-dir.",
        )


class UnknownStepError(KollmError):
    """--force named a step that is not in this release's plan."""

    exit_code = 2

    def __init__(self, name: str, known: list[str]) -> None:
        from difflib import get_close_matches

        self.name = name
        close = get_close_matches(name, known, n=1)
        suggestion = f" Did you mean '{close[0]}'?" if close else ""
        super().__init__(
            f"--force {name}: no such step in this release.{suggestion} Steps: {', '.join(known)}.",
            hint="`kollm release SPEC --dry-run` prints the plan with every step's name.",
        )


class StateFileError(KollmError):
    """kollm-state.json exists but cannot be read (edited by hand, or from an incompatible kollm)."""

    exit_code = 2

    def __init__(self, path: Path | str, detail: str) -> None:
        self.path = str(path)
        super().__init__(
            f"{self.path} cannot be read: {detail}.",
            hint="Delete it to rebuild every step from scratch (artifacts are re-created and re-verified).",
        )


# --- publish and pull -----------------------------------------------------------------------------------


class PublishError(KollmError):
    """A publish target refused the release or could not be reached."""

    exit_code = 8

    def __init__(self, target: str, detail: str, *, hint: str | None = None) -> None:
        self.target = target
        self.detail = detail
        super().__init__(f"Publishing to {target} failed: {detail}", hint=hint)


class TagConflictError(KollmError):
    """The release's version tag already exists in a repo with different content; tags are never overwritten."""

    exit_code = 8

    def __init__(self, repo: str, tag: str, detail: str) -> None:
        self.repo = repo
        self.tag = tag
        super().__init__(
            f"{repo} already has tag {tag} with different content ({detail}); kollm never moves a published tag.",
            hint="Bump `version:` in the release spec (e.g. v1.2.1) and re-run.",
        )


class PullError(KollmError):
    """A model could not be found or downloaded."""

    exit_code = 9

    def __init__(self, repo: str, detail: str, *, hint: str | None = None) -> None:
        self.repo = repo
        self.detail = detail
        super().__init__(f"Cannot pull {repo}: {detail}", hint=hint)


class ChecksumMismatchError(KollmError):
    """A downloaded file does not match the sha256 the release manifest records for it."""

    exit_code = 9

    def __init__(self, path: str, expected: str, actual: str) -> None:
        self.path = path
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"{path} has sha256 {actual}, but the release manifest records {expected}; the file was deleted.",
            hint="Re-run the pull; if it fails again the repo or a mirror is corrupt — report it to the publisher.",
        )


# --- training ---------------------------------------------------------------------------------------------


class DataFormatError(KollmError):
    """A training or prep data file has a bad record; names the file and the 1-based line."""

    exit_code = 2

    def __init__(self, path: Path | str, line: int | None, detail: str, *, hint: str | None = None) -> None:
        self.path = str(path)
        self.line = line
        where = f"{self.path}, line {line}" if line is not None else self.path
        super().__init__(f"{where}: {detail}.", hint=hint or "Fix or remove that record and run again.")


class BackendUnavailableError(KollmError):
    """The requested training backend cannot run here (e.g. Unsloth without a CUDA GPU)."""

    exit_code = 4

    def __init__(self, backend: str, detail: str, *, hint: str) -> None:
        self.backend = backend
        super().__init__(f"training backend '{backend}' is unavailable: {detail}.", hint=hint)


# --- evaluation and gates ---------------------------------------------------------------------------------


class UnknownSuiteError(KollmError):
    """A requested eval suite is not defined in evalsuites/suites.yaml."""

    exit_code = 2

    def __init__(self, name: str, known: list[str]) -> None:
        from difflib import get_close_matches

        self.name = name
        self.known = known
        close = get_close_matches(name, known, n=1)
        suggestion = f" Did you mean '{close[0]}'?" if close else ""
        super().__init__(
            f"Unknown eval suite '{name}'.{suggestion} Known suites: {', '.join(known)}.",
            hint="Pick suites from evalsuites/suites.yaml, e.g. `kollm eval MODEL --suite kmmlu,click,ko_ifeval`.",
        )


class EvalDataMissingError(KollmError):
    """An offline suite's data file is missing or unusable."""

    exit_code = 3

    def __init__(self, suite: str, path: Path | str, detail: str) -> None:
        self.suite = suite
        self.path = str(path)
        super().__init__(
            f"Suite '{suite}' cannot run offline: {self.path} {detail}.",
            hint="Point --data-dir at a folder with the suite's files (names in evalsuites/suites.yaml → offline.files), "
            "or unset HF_DATASETS_OFFLINE/HF_HUB_OFFLINE and drop --data-dir to read the data set from the Hub.",
        )


class GateSyntaxError(KollmError):
    """A gate expression cannot be parsed or is on the wrong scale."""

    exit_code = 2

    def __init__(self, gate: str, detail: str, *, hint: str | None = None) -> None:
        self.gate = gate
        self.detail = detail
        super().__init__(
            f"Gate '{gate}': {detail}.",
            hint=hint
            or "Write gates as SUITE>=PERCENT (kmmlu>=78) or ARTIFACT.SUITE>=ARTIFACT.SUITE-POINTS "
            "(q4_k_m.kmmlu>=bf16.kmmlu-1.5).",
        )


class EvalRunError(KollmError):
    """lm-eval failed, or produced results kollm refuses to trust (e.g. every choice scored the same)."""

    exit_code = 10

    def __init__(self, detail: str, *, hint: str | None = None) -> None:
        self.detail = detail
        super().__init__(f"Evaluation failed: {detail}", hint=hint)


class GateFailedError(KollmError):
    """A release gate did not pass; nothing was published."""

    exit_code = 7

    def __init__(self, metric: str, threshold: float | None, actual: float, *, failed: list[str] | None = None) -> None:
        self.metric = metric
        self.gate = metric  # the publish stage's name for it
        self.threshold = threshold
        self.actual = actual
        self.failed = failed or [metric]
        more = f" ({len(self.failed)} gates failed: {'; '.join(self.failed)})" if len(self.failed) > 1 else ""
        super().__init__(
            f"Gate '{metric}' failed: scored {actual:.2f}"
            + (f", needs {threshold:.2f}" if threshold is not None else "")
            + f"{more}.",
            hint="A release publishes nothing when a gate fails. See the gate table and eval/results.json next to "
            "the artifacts; fix the model or the gate, then re-run the command.",
        )


# --- quantized exports (gptq, bnb-4bit) and their quality report -----------------------------------------


class CalibrationDataError(KollmError):
    """A calibration file for GPTQ (or an imatrix) cannot be used."""

    exit_code = 2

    def __init__(self, path: Path | str, detail: str, *, field: str = "exports.gptq_calibration") -> None:
        self.path = str(path)
        self.detail = detail
        self.field = field
        super().__init__(
            f"Calibration data {self.path} ({field}) cannot be used: {detail}.",
            hint="Give a .txt file (one Korean text per line) or a .jsonl file with 'text', 'messages' or "
            f"'prompt' + 'completion' per line in `{field}`, or leave it empty for kollm's bundled Korean sample.",
        )


class QuantizationError(KollmError):
    """A quantization library (llm-compressor, bitsandbytes) failed on this model."""

    exit_code = 5

    def __init__(self, fmt: str, detail: str, *, hint: str | None = None) -> None:
        self.fmt = fmt
        self.detail = detail
        super().__init__(f"{fmt} quantization failed: {detail}.", hint=hint)
