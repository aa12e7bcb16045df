"""Pre-tokenised data out: verified memory-mapped shards, mixtures, length-grouped batches, collation.

Batches are a pure function of (seed, stage, step): each dataset of a stage's mixture contributes a
fixed number of rows per step (its ratio of the global batch), read from a per-epoch permutation at
a cursor `step * count`; the global batch is sorted by length and cut into micro-batches, and
process `r` of `W` takes micro-batches `r, r + W, ...`. So the data position of a run is its step,
a resumed run sees exactly the batches it would have seen, and 1 or N processes see the same global
batch. Prompt dropout (for classifier-free guidance) is drawn per row from the same key.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..conversation import IGNORE_INDEX
from .pretokenize import FORMAT_VERSION, MANIFEST, sha256_file


class CorruptDataError(ValueError):
    """Pre-tokenised data that is missing, truncated or altered."""


class PretokenizedDataset:
    """Rows of a `pretokenize` output folder, memory-mapped; every shard verified on open."""

    def __init__(self, folder: str | Path, verify: bool = True):
        from safetensors import safe_open

        self.folder = Path(folder)
        path = self.folder / MANIFEST
        if not path.is_file():
            raise CorruptDataError(f"{self.folder} has no {MANIFEST}: pre-tokenisation did not finish; "
                                   "re-run `lumina-mgpt pretokenize` with the same arguments to complete it")
        try:
            self.manifest = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise CorruptDataError(f"{path} is corrupt ({err}); re-run pretokenize into a new folder") from err
        if self.manifest.get("format") != FORMAT_VERSION:
            raise CorruptDataError(f"{self.folder} has data format {self.manifest.get('format')}, this version reads "
                                   f"{FORMAT_VERSION}; re-run pretokenize")
        self.ids: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []
        offsets, self.tasks = [], []
        for shard in self.manifest["shards"]:
            file = self.folder / shard["file"]
            if not file.is_file():
                raise CorruptDataError(f"{file} is missing; re-run pretokenize with the same arguments to rebuild it")
            if verify and sha256_file(file) != shard["sha256"]:
                raise CorruptDataError(f"{file} is corrupt or truncated (sha256 mismatch); delete it and its .json "
                                       "sidecar, then re-run pretokenize with the same arguments")
            try:
                with safe_open(str(file), "np") as f:
                    ids, labels, off = f.get_tensor("input_ids"), f.get_tensor("labels"), f.get_tensor("offsets")
            except Exception as err:  # safetensors raises its own error types for bad headers
                raise CorruptDataError(f"{file} cannot be read ({err}); delete it and re-run pretokenize") from err
            if len(off) != shard["rows"] + 1 or int(off[-1]) != len(ids) or len(ids) != len(labels):
                raise CorruptDataError(f"{file} does not match its manifest entry; re-run pretokenize")
            for k in range(shard["rows"]):
                offsets.append((len(self.ids), int(off[k]), int(off[k + 1])))
            self.ids.append(ids)
            self.labels.append(labels)
            self.tasks += shard["tasks"]
        self.index = np.array(offsets, dtype=np.int64).reshape(-1, 3)  # (rows, [shard, start, end])
        self.lengths = self.index[:, 2] - self.index[:, 1]
        if len(self) == 0:
            raise CorruptDataError(f"{self.folder} holds no rows (every record was skipped; see skipped.jsonl)")

    def __len__(self) -> int:
        return len(self.index)

    def row(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        s, a, b = self.index[i]
        return self.ids[s][a:b], self.labels[s][a:b]


def mixture_counts(ratios: list[float], batch_size: int) -> list[int]:
    """Rows per step of each dataset: largest-remainder rounding of ratio * batch, each at least 1."""
    total = float(sum(ratios))
    if total <= 0 or any(r < 0 for r in ratios):
        raise ValueError(f"mixture ratios must be non-negative with a positive sum, got {ratios}")
    if batch_size < len(ratios):
        raise ValueError(f"batch_size {batch_size} is smaller than the number of datasets ({len(ratios)})")
    exact = [r / total * batch_size for r in ratios]
    counts = [max(1, int(e)) for e in exact]
    order = sorted(range(len(ratios)), key=lambda i: exact[i] - int(exact[i]), reverse=True)
    k = 0
    while sum(counts) < batch_size:
        counts[order[k % len(order)]] += 1
        k += 1
    while sum(counts) > batch_size:
        i = max(range(len(counts)), key=lambda j: counts[j] - exact[j])
        counts[i] -= 1
    return counts


@dataclass
class Row:
    ids: np.ndarray
    labels: np.ndarray
    task: str = ""
    weight: float = 1.0  # its source's loss_weight: each supervised token counts this many times


class MixtureBatches:
    """Global batches of a stage (see the module docstring)."""

    def __init__(self, datasets: list[PretokenizedDataset], ratios: list[float], batch_size: int, seed: int,
                 stage: int, prompt_dropout: float, boi_id: int, eoi_id: int,
                 dropout_tasks: list[str] | None = None, loss_weights: list[float] | None = None):
        self.datasets = datasets
        self.loss_weights = [1.0] * len(datasets) if loss_weights is None else [float(w) for w in loss_weights]
        if len(self.loss_weights) != len(datasets) or any(not w > 0 for w in self.loss_weights):
            raise ValueError(f"loss_weights must hold one positive number per dataset, got {loss_weights!r}")
        self.weighted = any(w != 1.0 for w in self.loss_weights)
        self.counts = mixture_counts(ratios, batch_size)
        self.seed, self.stage = seed, stage
        self.prompt_dropout = prompt_dropout
        # tasks whose rows may lose their prompt (None: all); the CFG context models these rows' images
        self.dropout_tasks = None if dropout_tasks is None else frozenset(dropout_tasks)
        # False when no row of any dataset has one of those tasks (e.g. a misspelt name): nothing is dropped
        self.can_drop = self.dropout_tasks is None or any(not self.dropout_tasks.isdisjoint(ds.tasks) for ds in datasets)
        self.boi_id, self.eoi_id = boi_id, eoi_id
        self._perms: dict[tuple[int, int], np.ndarray] = {}

    def _perm(self, d: int, epoch: int) -> np.ndarray:
        key = (d, epoch)
        if key not in self._perms:
            if len(self._perms) > 4 * len(self.datasets):
                self._perms.clear()
            rng = np.random.default_rng([self.seed, self.stage, d, epoch])
            self._perms[key] = rng.permutation(len(self.datasets[d]))
        return self._perms[key]

    def global_batch(self, step: int) -> list[Row]:
        rows = []
        for d, (ds, count) in enumerate(zip(self.datasets, self.counts)):
            for k in range(step * count, (step + 1) * count):
                epoch, pos = divmod(k, len(ds))
                i = int(self._perm(d, epoch)[pos])
                rows.append(Row(*ds.row(i), ds.tasks[i], self.loss_weights[d]))
        rng = np.random.default_rng([self.seed, self.stage, 1_000_003, step])
        drop = rng.random(len(rows)) < self.prompt_dropout
        if self.dropout_tasks is not None:
            drop &= np.array([r.task in self.dropout_tasks for r in rows], dtype=bool)
        rows = [self._drop_prompt(r) if dropped else r for r, dropped in zip(rows, drop)]
        rows.sort(key=lambda r: len(r.ids))
        return rows

    def _drop_prompt(self, row: Row) -> Row:
        """The unconditional form of a row whose last answer is an image: that image block alone (from
        BOI), as Lumina-mGPT's CFG context is the image without any text. Other rows are unchanged."""
        boi = np.flatnonzero(row.ids == self.boi_id)
        if not len(boi) or row.labels[boi[-1]] == IGNORE_INDEX:
            return row
        start = int(boi[-1])
        eoi = np.flatnonzero(row.ids[start:] == self.eoi_id)
        end = start + int(eoi[0]) + 1 if len(eoi) else len(row.ids)
        ids = row.ids[start:end]
        return Row(ids, ids.copy(), row.task, row.weight)

    def micro_batches(self, step: int, micro_batch_size: int, rank: int, world: int, by_length: bool = False,
                      pad_to_multiple_of: int = 1) -> tuple[list[list[Row]], float]:
        """This process's micro-batches of the step, and the supervised-token count of the whole global batch
        (each token counted its row's `weight` times: the loss is the weighted mean over tokens).

        The length-sorted global batch is cut into runs of `micro_batch_size` rows, or with `by_length` into
        runs of at most that many rows chosen by `length_split`; either way the loss is the same sum over the
        same rows (only its floating-point rounding differs)."""
        rows = self.global_batch(step)
        if by_length:
            chunks = length_split([len(r.ids) for r in rows], micro_batch_size, world, pad_to_multiple_of)
            chunks = [rows[a:b] for a, b in chunks]
        else:
            chunks = [rows[i:i + micro_batch_size] for i in range(0, len(rows), micro_batch_size)]
        if len(chunks) % world:
            raise ValueError(f"a global batch of {len(rows)} rows makes {len(chunks)} micro-batches of "
                             f"{micro_batch_size}, which {world} processes cannot share; make batch_size a "
                             f"multiple of micro_batch_size * num_processes")
        supervised = sum(r.weight * int((r.labels[1:] != IGNORE_INDEX).sum()) for r in rows)
        return chunks[rank::world], supervised


# What one more forward and backward costs beyond its tokens, in padded tokens (a 5.9M-parameter model on 2
# CPU cores: 100 to 200 gave the same step time, 0 was 4% slower; docs/training.md, "Length-aware micro-batches").
MICRO_BATCH_COST = 200


def length_split(lengths: list[int], max_rows: int, world: int = 1, pad_to_multiple_of: int = 1) -> list[tuple[int, int]]:
    """Cut ascending `lengths` into consecutive (start, end) runs of at most `max_rows` rows, their number a
    multiple of `world`, minimising the padded tokens (rows x the run's longest length, rounded up to
    `pad_to_multiple_of`) plus `MICRO_BATCH_COST` per run.

    A global batch of ShapesWorld's Omni mixture (16 rows of 80 to 370 tokens) cut into two runs of 8 pads
    to about 3,600 tokens for 2,000 real ones; a long multi-turn edit pads seven short rows to its length."""
    n = len(lengths)
    if any(b < a for a, b in zip(lengths, lengths[1:])):
        raise ValueError("length_split needs lengths sorted in ascending order")
    padded = [-(-x // pad_to_multiple_of) * pad_to_multiple_of for x in lengths]
    inf = float("inf")
    # best[r][j]: the least cost of cutting the first j rows into a number of runs = r (mod world)
    best = [[inf] * (n + 1) for _ in range(world)]
    cut = [[0] * (n + 1) for _ in range(world)]
    best[0][0] = 0.0
    for j in range(1, n + 1):
        for r in range(world):
            for i in range(max(0, j - max_rows), j):
                cost = best[(r - 1) % world][i] + (j - i) * padded[j - 1] + MICRO_BATCH_COST
                if cost < best[r][j]:
                    best[r][j], cut[r][j] = cost, i
    if best[0][n] == inf:
        raise ValueError(f"a global batch of {n} rows cannot make a multiple of {world} micro-batches of at most "
                         f"{max_rows} rows; make batch_size a multiple of micro_batch_size * num_processes")
    runs, j, r = [], n, 0
    while j:
        runs.append((cut[r][j], j))
        j, r = cut[r][j], (r - 1) % world
    return runs[::-1]


def collate(rows: list[Row], pad_id: int, pad_to_multiple_of: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (B, T) input ids and labels (-100 on padding); causal attention needs no mask.

    T is rounded up to a multiple of `pad_to_multiple_of`: on CPU every new sequence length costs
    memory that is never given back (a 5.9M-parameter model in bf16 grew to 7 GB of RSS and 1.6x
    slower steps within minutes on ShapesWorld's lengths), and a few fixed lengths keep it flat."""
    length = max(len(r.ids) for r in rows)
    length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r.ids)] = torch.from_numpy(r.ids.astype(np.int64))
        labels[i, :len(r.labels)] = torch.from_numpy(r.labels.astype(np.int64))
    return ids, labels


__all__ = ["CorruptDataError", "MixtureBatches", "PretokenizedDataset", "collate", "length_split", "mixture_counts"]
