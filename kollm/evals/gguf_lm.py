"""An lm-eval model over a GGUF file, in process through llama-cpp-python.

llama.cpp's HTTP server cannot score choices correctly (its echo logprobs drop the last token, so every
choice gets the same score and lm-eval silently reports the share of "A" answers). Here the model runs with
``logits_all=True``: one forward pass over context + continuation gives the logits of every position, and the
continuation's log-probability is the sum of log-softmax(logits[i-1])[token[i]].
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from lm_eval.api.model import TemplateLM

from kollm.llamacpp import open_llama


def _log_softmax(row: np.ndarray) -> np.ndarray:
    shifted = row.astype(np.float64) - row.max()
    return shifted - np.log(np.exp(shifted).sum())


def _training_context(path: Path) -> int | None:
    from gguf import GGUFReader

    reader = GGUFReader(path)
    arch_field = reader.fields.get("general.architecture")
    if arch_field is None:
        return None
    arch = bytes(arch_field.parts[arch_field.data[0]]).decode()
    field = reader.fields.get(f"{arch}.context_length")
    return int(field.parts[field.data[0]][0]) if field is not None else None


class GGUFLM(TemplateLM):
    """Loglikelihood and greedy generation over one loaded GGUF model."""

    def __init__(self, path: Path, *, n_ctx: int = 2048, max_gen_toks: int = 256, n_threads: int | None = None) -> None:
        """Load the model once for every suite.

        Args:
            path: the .gguf file.
            n_ctx: context window, capped at the model's training context; prompts longer than this are cut from
                the left. Kept small because ``logits_all`` holds n_ctx x vocabulary floats.
            max_gen_toks: default generation budget when a task sets none.
            n_threads: CPU threads (default: llama.cpp's choice).
        """
        super().__init__()
        self.path = Path(path)
        n_ctx = min(n_ctx, _training_context(self.path) or n_ctx)
        self.llm = open_llama(self.path, n_ctx=n_ctx, logits_all=True, n_threads=n_threads)
        self.n_ctx = n_ctx
        self.max_gen_toks = max_gen_toks
        self._template = self.llm.metadata.get("tokenizer.chat_template")

    # --- tokens ----------------------------------------------------------------------------------------

    @property
    def eot_token_id(self) -> int:
        return int(self.llm.token_eos())

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        # special=True: chat-template markers in the text (<|im_start|>) become their single token, as in HF.
        return self.llm.tokenize(string.encode("utf-8"), add_bos=bool(add_special_tokens), special=True)

    # --- scoring ----------------------------------------------------------------------------------------

    def _score(self, context: list[int], continuation: list[int]) -> tuple[float, bool]:
        ids = (context + continuation)[-self.n_ctx :]
        start = len(ids) - len(continuation)
        if start < 1:
            raise ValueError("the continuation fills the whole context window; nothing to condition on")
        self.llm.reset()
        self.llm.eval(ids)
        logits = np.asarray(self.llm.scores[: len(ids)])
        total, greedy = 0.0, True
        for i in range(start, len(ids)):
            row = logits[i - 1]
            total += float(_log_softmax(row)[ids[i]])
            greedy = greedy and int(row.argmax()) == ids[i]
        return total, greedy

    def _loglikelihood_tokens(
        self, requests: list, disable_tqdm: bool = False, **kwargs: Any
    ) -> list[tuple[float, bool]]:
        from tqdm import tqdm

        results = []
        for request in tqdm(requests, desc="GGUF loglikelihood", disable=disable_tqdm):
            _, context, continuation = request
            result = self._score(context, continuation)
            self.cache_hook.add_partial("loglikelihood", request[0], result)
            results.append(result)
        return results

    def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = False) -> list[float]:
        results = []
        for request in requests:
            (text,) = request.args
            ids = self.tok_encode(text)
            results.append(self._score([self.prefix_token_id], ids)[0])
        return results

    # --- generation -----------------------------------------------------------------------------------

    def generate_until(self, requests: list, disable_tqdm: bool = False) -> list[str]:
        from tqdm import tqdm

        outputs = []
        for request in tqdm(requests, desc="GGUF generate", disable=disable_tqdm):
            context, gen_kwargs = request.args
            until = gen_kwargs.get("until") or []
            if isinstance(until, str):
                until = [until]
            budget = int(gen_kwargs.get("max_gen_toks", self.max_gen_toks))
            self.llm.reset()
            completion = self.llm.create_completion(
                context, max_tokens=budget, temperature=0.0, top_k=1, stop=list(until) or None
            )
            text = completion["choices"][0]["text"]
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
            outputs.append(text)
        return outputs

    # --- chat template ----------------------------------------------------------------------------------

    @property
    def tokenizer_name(self) -> str:
        return self.path.name

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return self._template

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """Render the chat template embedded in the GGUF (the one the converter copied from the tokenizer)."""
        if not self._template:
            raise ValueError(f"{self.path} carries no chat template (tokenizer.chat_template)")
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        vocab = self.llm
        return env.from_string(self._template).render(
            messages=chat_history,
            add_generation_prompt=add_generation_prompt,
            bos_token=vocab.detokenize([vocab.token_bos()], special=True).decode("utf-8", "replace"),
            eos_token=vocab.detokenize([vocab.token_eos()], special=True).decode("utf-8", "replace"),
        )
