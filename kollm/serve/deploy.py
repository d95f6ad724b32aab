"""`kollm serve --print-deploy`: render the production recipes in serve/ for a released model."""

from __future__ import annotations

from pathlib import Path
from string import Template
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from kollm.errors import InputNotFoundError

DeployTarget = Literal["docker", "compose", "k8s", "ray"]
TEMPLATES: dict[str, str] = {
    "docker": "Dockerfile",
    "compose": "compose.yaml",
    "k8s": "kubernetes.yaml",
    "ray": "ray-multinode.sh",
}


class DeployConfig(BaseModel):
    """Values substituted into the recipes."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Served model name and resource names.")
    repo_id: str = Field(description="Hub repo of the release, e.g. org/ko-7b.")
    revision: str = Field("main", description="Release tag to pin, e.g. v1.2.0.")
    vllm_version: str = Field("v0.32.0", description="vllm/vllm-openai image tag.")
    max_model_len: int = Field(8192, gt=0)
    tensor_parallel_size: int = Field(1, ge=1)
    pipeline_parallel_size: int = Field(2, ge=1, description="Nodes in the Ray recipe.")
    replicas: int = Field(1, ge=1)
    max_replicas: int = Field(4, ge=1)


def templates_dir() -> Path:
    """serve/ next to the kollm package (the repository checkout kollm is installed from)."""
    return Path(__file__).resolve().parents[2] / "serve"


def render(target: DeployTarget, cfg: DeployConfig, *, directory: Path | None = None) -> str:
    """Render one recipe.

    Raises:
        InputNotFoundError: the template is missing.
    """
    path = (directory or templates_dir()) / TEMPLATES[target]
    if not path.is_file():
        raise InputNotFoundError("deployment template", path, hint="Run kollm from its repository checkout.")
    return Template(path.read_text(encoding="utf-8")).substitute(cfg.model_dump())
