#!/usr/bin/env bash
# Multi-node vLLM for models that outgrow one host: tensor parallel inside a node, pipeline parallel across
# nodes, over a Ray cluster. Rendered by `kollm serve --print-deploy --target ray`.
# On the head node:    ray start --head --port=6379
# On every worker:     ray start --address=<head-ip>:6379
# Then, on the head node (needs ${tensor_parallel_size} GPUs x ${pipeline_parallel_size} nodes):
set -euo pipefail
: "$${VLLM_API_KEY:?set VLLM_API_KEY}"
exec vllm serve ${repo_id} \
  --revision ${revision} \
  --served-model-name ${name} \
  --host 0.0.0.0 --port 8000 \
  --api-key "$${VLLM_API_KEY}" \
  --max-model-len ${max_model_len} \
  --tensor-parallel-size ${tensor_parallel_size} \
  --pipeline-parallel-size ${pipeline_parallel_size} \
  --distributed-executor-backend ray
