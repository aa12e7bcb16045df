"""Training: pre-tokenisation, FP-SFT / Omni-SFT on accelerate, VQ tokenizer training, checkpoints.

Modules: records.py (data in), pretokenize.py (records -> shards), data.py (shards -> batches),
train.py (the accelerate loop, stages, export), vq_train.py (VQ tokenizer), diffusion_train.py
(the ShapesWorld diffusion baseline), text_tokenizer.py
(small BPE tokenizers), checkpoints.py (atomic checkpoints, metrics.jsonl), config.py (YAML + --set),
cli.py / launch.py (commands), plot.py (loss curves). See docs/training.md.
"""
