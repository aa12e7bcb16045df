"""Compare text-to-image pipelines — ours (autoregressive, any decoding scheduler) against any
diffusers pipeline — on the same prompts, seeds and sizes: wall time, model forwards, peak memory,
parameters, ShapesWorld accuracy and CLIP score, with a report; and export images for GenEval.

```
compare/
  specs.py       pipeline arguments ([NAME=]PATH[@ar|@jacobi]), --sweep, --call-arg
  prompts.py     prompt files, prompt lists, ShapesWorld prompt families
  pipelines.py   what a folder holds, loading it, one measured call
  measure.py     wall time, peak memory (RSS sampler / CUDA), forward counter, parameter count
  clip_score.py  CLIP score from a local CLIPModel folder
  runner.py      run_comparison: plan, run this process's share, merge, write
  parts.py       per-process part files and their merge
  summary.py     per-run figures
  schema.py      RESULTS_SCHEMA (results.json) and its validator
  figures.py     image grid, quality-vs-time plot
  report.py      report.md
  geneval.py     GenEval export
  cli.py         `lumina-mgpt compare`, `lumina-mgpt eval geneval-export`
  launch.py      the accelerate entry point of `compare --num-processes N`
```

Nothing here imports torch or diffusers at import time.
"""

from __future__ import annotations

from .geneval import export_geneval
from .parts import merge_parts
from .runner import run_comparison
from .schema import RESULTS_SCHEMA, SCHEMA_VERSION, validate_results
from .specs import PipelineSpec, Sweep

__all__ = ["RESULTS_SCHEMA", "SCHEMA_VERSION", "PipelineSpec", "Sweep", "export_geneval", "merge_parts",
           "run_comparison", "validate_results"]
