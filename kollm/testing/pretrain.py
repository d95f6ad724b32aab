"""A short, deterministic pre-training run that teaches the fixture some Korean.

Quantization error measured on random weights says little (every format looks equally bad or equally fine);
a model that has learned the bundled corpus has peaked next-token distributions that quantization visibly
blurs, so perplexity and top-1 agreement tell formats apart. The held-out lines
(``kollm.release.calibration.heldout_korean_lines``) are never trained on, so perplexity measured on them is honest.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from kollm.release.calibration import training_korean_lines

log = logging.getLogger(__name__)


def pretrain(model: Any, tokenizer: Any, *, steps: int, seed: int, seq_len: int = 128, batch_size: int = 8) -> float:
    """Train a float32 causal LM in place on the training lines (packed sequences).

    Args:
        model: a transformers causal LM in float32.
        tokenizer: its tokenizer.
        steps: optimizer steps.
        seed: seeds torch and the batch order, so the result is the same on every build.
        seq_len: tokens per packed sequence.
        batch_size: sequences per step.

    Returns:
        The mean training loss over the last 10% of steps.
    """
    import torch

    eos = tokenizer.eos_token_id
    stream: list[int] = []
    for line in training_korean_lines():
        stream.extend(tokenizer(line)["input_ids"] + [eos])
    tokens = torch.tensor(stream[: len(stream) // seq_len * seq_len]).view(-1, seq_len)

    # use_cache=False: packed sequences must not leak into each other through a KV cache.
    model.config.use_cache = False
    model.train()
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01, betas=(0.9, 0.95))
    warmup = max(1, steps // 20)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    tail: list[float] = []
    for step in range(steps):
        batch = tokens[torch.randint(len(tokens), (batch_size,), generator=generator)]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= steps - max(1, steps // 10):
            tail.append(loss.item())
        if step % 50 == 0:
            log.info("pretrain step %d/%d loss %.3f", step, steps, loss.item())
    model.config.use_cache = True
    model.eval()
    return sum(tail) / len(tail)
