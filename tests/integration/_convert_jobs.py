"""Run several f16 conversions in one converter process (the tests' saving: imports dominate each run).

Usage: python _convert_jobs.py CONVERTER_DIR JOBS_JSON, where JOBS_JSON lists
{"model_dir", "outfile", "base"?, "adapters"?}; checkpoint jobs (no "base") must come first, because a fused
job installs the merged tensor source for the rest of the process, exactly as ``fused_entry`` does.
"""

import json
import sys
from pathlib import Path

from kollm.release.convert_entry import load_converter, run_converter
from kollm.release.fused_entry import install_merged_source
from kollm.release.merge import MergeConfig, TensorReader, prepare


def main(converter_dir: str, jobs_json: str) -> None:
    conversion = load_converter(Path(converter_dir), "qwen2")
    cfg = MergeConfig()
    for job in json.loads(Path(jobs_json).read_text()):
        args = [job["model_dir"], "--outfile", job["outfile"], "--outtype", "f16"]
        if "base" not in job:
            run_converter(args)
            continue
        merged = prepare(cfg, base=Path(job["base"]), adapters=[Path(a) for a in job["adapters"]])
        with TensorReader() as read:
            calls = install_merged_source(conversion, merged, read, cfg.block_bytes)
            run_converter(args)
        assert calls[0], "the hook was bypassed"


if __name__ == "__main__":
    main(*sys.argv[1:])
