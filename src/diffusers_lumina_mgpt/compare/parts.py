"""Several processes: each writes what it did to `DIR/parts/rank-K.json`; the main process merges."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

PARTS_DIR = "parts"


def part_path(out: str | Path, rank: int) -> Path:
    return Path(out) / PARTS_DIR / f"rank-{rank}.json"


def write_part(out: str | Path, rank: int, num_processes: int, pipelines: list[dict[str, Any]],
               records: list[dict[str, Any]]) -> Path:
    path = part_path(out, rank)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"rank": rank, "num_processes": num_processes, "pipelines": pipelines,
                               "records": records}, indent=1) + "\n")
    tmp.replace(path)  # a reader never sees half a file
    return path


def merge_pipelines(entries: list[dict[str, Any]], order: list[str]) -> list[dict[str, Any]]:
    """One entry per pipeline name, in `order`. Every process lists every pipeline; the entry of a
    process that loaded it (parameters known) wins, then one that failed to (error known)."""
    def rank(e: dict[str, Any]) -> tuple[bool, bool]:  # loaded > failed to load > only described
        return e["parameters"] is not None, e["error"] is not None

    best: dict[str, dict[str, Any]] = {}
    for e in entries:
        if e["name"] not in best or rank(e) > rank(best[e["name"]]):
            best[e["name"]] = e
    missing = [n for n in order if n not in best]
    if missing:
        raise ValueError(f"no process reported pipeline {missing[0]!r}; rerun the comparison")
    return [best[n] for n in order]


def merge_parts(out: str | Path, num_processes: int, pipeline_order: list[str],
                num_items: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(pipelines, records sorted by item) from every rank's part; ValueError if a part is missing,
    comes from another run's process count, or the records do not cover each planned item once."""
    entries, records = [], []
    for rank in range(num_processes):
        path = part_path(out, rank)
        if not path.is_file():
            raise ValueError(f"{path} is missing: process {rank} did not finish; see its error above and rerun")
        part = json.loads(path.read_text())
        if part.get("num_processes") != num_processes or part.get("rank") != rank:
            raise ValueError(f"{path} comes from another run ({part.get('num_processes')} processes); rerun")
        entries += part["pipelines"]
        records += part["records"]
    records.sort(key=lambda r: r["item"])
    items = [r["item"] for r in records]
    if items != list(range(num_items)):
        seen = set()
        dupes = sorted({i for i in items if i in seen or seen.add(i)})
        gone = sorted(set(range(num_items)) - set(items))
        raise ValueError(f"the parts in {Path(out) / PARTS_DIR} do not cover the {num_items} planned items once "
                         f"(missing {gone[:5]}, repeated {dupes[:5]}); rerun the comparison")
    return merge_pipelines(entries, pipeline_order), records
