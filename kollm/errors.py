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

    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        super().__init__(
            f"{self.path} holds only pickle weights (.bin/.pt), which can execute code when loaded.",
            hint="Convert it to safetensors, or pass --allow-pickle if you trust its origin.",
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
            hint="Point `base` at the original 16-bit model, or pass --dequantize-base to accept the loss.",
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


# --- quantized exports (gptq, bnb-4bit) and their quality report -----------------------------------------


class CalibrationDataError(KollmError):
    """A calibration file for GPTQ (or an imatrix) cannot be used."""

    exit_code = 2

    def __init__(self, path: Path | str, detail: str) -> None:
        self.path = str(path)
        self.detail = detail
        super().__init__(
            f"Calibration data {self.path} cannot be used: {detail}.",
            hint="Give a .txt file (one Korean text per line) or a .jsonl file with 'text', 'messages' or "
            "'prompt' + 'completion' per line in `exports.gptq.calibration`, or leave it empty for kollm's "
            "bundled Korean sample.",
        )


class QuantizationError(KollmError):
    """A quantization library (llm-compressor, bitsandbytes) failed on this model."""

    exit_code = 5

    def __init__(self, fmt: str, detail: str, *, hint: str | None = None) -> None:
        self.fmt = fmt
        self.detail = detail
        super().__init__(f"{fmt} quantization failed: {detail}.", hint=hint)
