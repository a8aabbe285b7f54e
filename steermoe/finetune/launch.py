"""Entry point each process of the ``deepspeed`` launcher runs: ``--module steermoe.finetune.launch --job JOB.json``.

:func:`steermoe.finetune.finetune_experts` writes the job (config, paths, examples) and starts the
launcher when ``finetune.num_processes`` > 1. To run it by hand (several GPUs or a hostfile):

    deepspeed --num_gpus 8 --module steermoe.finetune.launch --job runs/x/job/job.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m steermoe.finetune.launch")
    parser.add_argument("--job", required=True, help="job.json written by finetune_experts")
    parser.add_argument("--local_rank", type=int, default=None, help="set by the deepspeed launcher (LOCAL_RANK is read instead)")
    args, _ = parser.parse_known_args(argv)
    from steermoe.finetune.data import load_examples
    from steermoe.finetune.runner import run_job

    job_path = Path(args.job)
    job = json.loads(job_path.read_text(encoding="utf-8"))
    examples = load_examples(job_path.parent / "examples.jsonl")
    heldout = load_examples(job_path.parent / "heldout.jsonl")
    run_job(job, examples, heldout, progress=job.get("progress", True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
