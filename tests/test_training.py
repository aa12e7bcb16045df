"""Training: records and skips, pre-tokenisation (resume, corruption), batches, the loop (overfit,
SIGKILL resume, 2 processes), export, VQ training, CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from diffusers_lumina_mgpt.conversation import IGNORE_INDEX
from diffusers_lumina_mgpt.training.checkpoints import MetricsLog, checkpoint_dirs, read_metrics, save_checkpoint
from diffusers_lumina_mgpt.training.data import (
    CorruptDataError, MixtureBatches, PretokenizedDataset, collate, mixture_counts,
)
from diffusers_lumina_mgpt.training.pretokenize import pretokenize
from diffusers_lumina_mgpt.training.records import open_source, set_t2i_size
from diffusers_lumina_mgpt.training.train import learning_rate, load_train_config

CLI = [sys.executable, "-m", "diffusers_lumina_mgpt"]


# ----------------------------------------------------------------------------- shared tiny base
@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    """tokenizer/ + vqvae/ (random 8x VQ, 64 codes) for a new ShapesWorld model."""
    from diffusers_lumina_mgpt.shapes.tasks import make_records
    from diffusers_lumina_mgpt.training.text_tokenizer import train_text_tokenizer
    from diffusers_lumina_mgpt.training.vq_train import vq_model_from_config

    base = tmp_path_factory.mktemp("base")
    torch.manual_seed(0)
    vq = vq_model_from_config({"block_out_channels": [8, 8, 8, 8], "layers_per_block": 1, "latent_channels": 4,
                               "num_vq_embeddings": 64, "vq_embed_dim": 4, "norm_num_groups": 4})
    vq.save_pretrained(str(base / "vqvae"))
    texts = [t["value"] for r in make_records("all", 200, seed=0) for t in r.conversations]
    train_text_tokenizer(texts, 350, 64, 8).save_pretrained(str(base / "tokenizer"))
    return base


def write_config(path: Path, base: Path, **train) -> Path:
    config = {
        "seed": 0,
        "model": {"new": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                          "max_position_embeddings": 512, "z_loss_weight": 1e-5},
                  "vqvae": str(base / "vqvae"), "text_vocab_size": 350},
        "train": {"batch_size": 8, "micro_batch_size": 2, "lr": 3e-3, "warmup": 2, "checkpoint_every": 3,
                  "keep_checkpoints": 2, "threads": 1, **train},
        "stages": [
            {"name": "low", "size": 48, "steps": 4,
             "data": [{"source": "shapes:t2i", "n": 24, "ratio": 0.5}, {"source": "shapes:vqa", "n": 12, "ratio": 0.5}]},
            {"name": "high", "size": 64, "steps": 4, "lr": 2e-3,
             "data": [{"source": "shapes:t2i", "n": 24, "ratio": 1.0}]},
        ],
    }
    path.write_text(yaml.safe_dump(config))
    return path


def run_cli(args: list[str], **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(CLI + args, capture_output=True, text=True, env=env, timeout=600, **kw)


def losses(run: Path) -> list[float]:
    return [r["loss"] for r in read_metrics(run)]


# ----------------------------------------------------------------------------- records
def test_bad_records_are_skipped_and_counted(tiny_base, tmp_path):
    good = tmp_path / "good.png"
    Image.new("RGB", (64, 64), (200, 10, 10)).save(good)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    Image.new("RGB", (8, 8)).save(tmp_path / "tiny.png")
    lines = [
        {"conversations": [{"from": "human", "value": "Describe. <|image|>"}, {"from": "gpt", "value": "Red."}], "image": ["good.png"]},
        {"conversations": [{"from": "human", "value": "Describe. <|image|>"}, {"from": "gpt", "value": "x"}], "image": ["nowhere.png"]},
        {"conversations": [{"from": "human", "value": "Describe. <|image|>"}, {"from": "gpt", "value": "x"}], "image": ["broken.png"]},
        {"conversations": [{"from": "human", "value": "Two <|image|> <|image|>"}, {"from": "gpt", "value": "x"}], "image": ["good.png"]},
        {"conversations": [], "image": []},
        {"conversations": [{"from": "human", "value": "Describe. <|image|>"}, {"from": "gpt", "value": "x"}], "image": ["tiny.png"]},
    ]
    src = tmp_path / "records.jsonl"
    src.write_text("\n".join(json.dumps(x) for x in lines) + "\nnot json\n")
    manifest = pretokenize(open_source(str(src)), tiny_base, 64, tmp_path / "out", progress=False)
    assert manifest["rows"] == 1
    assert manifest["skipped"] == {"missing_image": 1, "unreadable_image": 1, "placeholders": 1, "empty": 1,
                                   "small_image": 1, "bad_json": 1}
    log = [json.loads(x) for x in (tmp_path / "out" / "skipped.jsonl").read_text().splitlines()]
    assert {r["reason"] for r in log} == set(manifest["skipped"]) and len(log) == 6
    # the CLI prints the table and exits 0: one bad record never stops a run
    res = run_cli(["pretokenize", str(src), "--model", str(tiny_base), "--size", "64", "--out", str(tmp_path / "out2")])
    assert res.returncode == 0, res.stderr
    assert "kept 1 of 7 records" in res.stdout and "image file missing" in res.stdout


def test_caption_folder_and_t2i_size_rewrite(tiny_base, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("RGB", (128, 64), (0, 0, 200)).save(folder / "a.png")
    (folder / "a.txt").write_text("a blue picture")
    Image.new("RGB", (64, 64)).save(folder / "b.png")  # no caption: skipped
    manifest = pretokenize(open_source(str(folder)), tiny_base, 64, tmp_path / "out", progress=False)
    assert manifest["rows"] == 1 and manifest["skipped"] == {"missing_image": 1}
    ds = PretokenizedDataset(tmp_path / "out")
    from transformers import AutoTokenizer

    text = AutoTokenizer.from_pretrained(str(tiny_base / "tokenizer")).decode(ds.row(0)[0][:40].tolist())
    assert "Generate an image of 80x48 according to" in text  # the 128x64 image went to the 80x48 bucket
    conv = [{"from": "human", "value": "Generate an image of 1x1 according to the following prompt:\nhi"},
            {"from": "gpt", "value": "<|image|>"}]
    assert set_t2i_size(conv, [(32, 48)])[0]["value"].startswith("Generate an image of 32x48 according")


# ----------------------------------------------------------------------------- pretokenisation
def test_pretokenize_labels_match_conversation_tokenizer(tiny_base, tmp_path):
    from transformers import AutoTokenizer

    from diffusers_lumina_mgpt.vocab import LuminaVocab

    pretokenize(open_source("shapes:caption", 3, seed=1), tiny_base, 64, tmp_path / "out", progress=False)
    ds = PretokenizedDataset(tmp_path / "out")
    ids, labels = ds.row(0)
    vocab = LuminaVocab.from_tokenizer(AutoTokenizer.from_pretrained(str(tiny_base / "tokenizer")))
    # human turn (with its image) is masked; the answer and its <sep> are supervised
    sup = labels != IGNORE_INDEX
    assert not sup[: np.flatnonzero(ids == vocab.eoi_id)[0] + 1].any()
    assert (labels[sup] == ids[sup]).all() and ids[-1] == vocab.eot_id and sup[-1]


def test_batched_tokenising_equals_one_record_at_a_time(tiny_base):
    """`Tokenizing.many` encodes the images of many records together (in batches of same-sized images); each
    row equals the row of its record tokenised alone, for every task and mixed sizes, and a record it
    skips stays in its place."""
    from diffusers_lumina_mgpt.training.pretokenize import Tokenizing, load_components
    from diffusers_lumina_mgpt.training.records import Record, Skip

    tok = Tokenizing(*load_components(tiny_base), 64, max_length=250)
    records = [r for spec in ("shapes:t2i@80x48,64x64", "shapes:edit", "shapes:multiedit", "shapes:vqa", "shapes:noedit")
               for r in open_source(spec, 4, seed=3).chunk(0)]
    records.insert(3, Record(key="tiny", conversations=records[0].conversations, images=[records[0].images[0].resize((8, 8))],
                             task="t2i"))
    together = tok.many(records, batch_images=5)
    alone = [tok.many([r])[0] for r in records]
    assert isinstance(together[3], Skip) and together[3].reason == "small_image"
    assert any(isinstance(r, Skip) and r.reason == "too_long" for r in alone)  # multi-turn edits over 250 tokens
    for a, b in zip(together, alone):
        if isinstance(b, Skip):
            assert isinstance(a, Skip) and a.reason == b.reason
        else:
            assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_shapes_source_of_one_prompt_family():
    source = open_source("shapes:t2i:position", 4, seed=1, chunk_size=2)
    records = source.chunk(0) + source.chunk(1)
    assert [r.task for r in records] == ["t2i"] * 4  # prompt dropout and metrics see text-to-image rows
    assert [r.key for r in records] == [f"shapes:t2i:position:{i}" for i in range(4)]
    relations = ("left of", "right of", "above", "below")
    assert all(any(r in rec.conversations[0]["value"] for r in relations) for rec in records)
    assert records[0].conversations == open_source("shapes:t2i:position", 4, seed=1, chunk_size=2).chunk(0)[0].conversations
    for bad in ("shapes:t2i:positions", "shapes:caption:position", "shapes:vqa:exist"):
        with pytest.raises(ValueError, match="shapes:t2i:FAMILY with FAMILY one of single_object.*shapes:vqa:KIND"):
            open_source(bad, 4)
    # VQA records of one question kind
    source = open_source("shapes:vqa:exists", 6, seed=1, chunk_size=3)
    records = source.chunk(0) + source.chunk(1)
    assert [r.task for r in records] == ["vqa"] * 6
    questions = [t["value"] for r in records for t in r.conversations[::2]]
    assert len(questions) > 6 and all(q.startswith("Is there ") for q in questions)
    # edits of one kind, single and multi-turn
    records = open_source("shapes:edit:move", 3, seed=1).chunk(0) + open_source("shapes:multiedit:add", 3, seed=1).chunk(0)
    assert [r.task for r in records] == ["edit"] * 3 + ["multiedit"] * 3
    instructions = [[t["value"] for t in r.conversations[::2]] for r in records]
    assert all(i.startswith(("Move the ", "Place the ")) for r in instructions[:3] for i in r), instructions
    assert all(i.startswith(("Add a", "Put a")) for r in instructions[3:] for i in r) and len(instructions[3]) >= 2
    with pytest.raises(ValueError, match="shapes:edit:KIND and shapes:multiedit:KIND with KIND one of recolor"):
        open_source("shapes:edit:moves", 4)


def test_shapes_source_of_chosen_sizes():
    from diffusers_lumina_mgpt.shapes.tasks import TASKS

    source = open_source("shapes:t2i:position@80x48", 6, seed=1, chunk_size=3)
    records = source.chunk(0) + source.chunk(1)
    assert [r.task for r in records] == ["t2i"] * 6 and records[0].key == "shapes:t2i:position@80x48:0"
    assert all(im.size == (80, 48) for r in records for im in r.images)
    assert all(r.conversations[0]["value"].startswith("Generate an image of 80x48 according to") for r in records)
    assert all(any(w in r.conversations[0]["value"] for w in ("left of", "right of", "above", "below")) for r in records)
    # two sizes are drawn evenly, a record's pictures (an edit's before and after) share one
    records = open_source("shapes:edit@48x80,64x64", 12, seed=2, chunk_size=12).chunk(0)
    sizes = [{im.size for im in r.images} for r in records]
    assert all(len(s) == 1 for s in sizes) and set().union(*sizes) == {(48, 80), (64, 64)}
    for task in TASKS:  # every task takes a size, the narrowest bucket too
        assert all(im.size == (32, 128) for r in open_source(f"shapes:{task}@32x128", 2, seed=0).chunk(0) for im in r.images)
    assert all(im.size == (128, 32) for r in open_source("shapes:vqa:position@128x32", 3).chunk(0) for im in r.images)
    for bad in ("shapes:t2i@81x48", "shapes:t2i@80", "shapes:t2i@", "shapes:caption@64x64,96x96"):
        with pytest.raises(ValueError, match=r"sizes among ShapesWorld's buckets.*the buckets are 64x64, 80x48"):
            open_source(bad, 4)
    with pytest.raises(ValueError, match="unknown ShapesWorld task 'captions'"):
        open_source("shapes:captions@64x64", 4)

def test_pretokenize_resumes_without_duplicates(tiny_base, tmp_path):
    src = open_source("shapes:t2i", 10, seed=3, chunk_size=4)
    full = pretokenize(src, tiny_base, 64, tmp_path / "a", progress=False)
    # simulate an interruption: the last shard never finished, the manifest was never written
    out = tmp_path / "b"
    pretokenize(src, tiny_base, 64, out, progress=False)
    (out / "shard-00002.json").unlink()
    (out / "manifest.json").unlink()
    with pytest.raises(CorruptDataError, match="did not finish"):
        PretokenizedDataset(out)
    resumed = pretokenize(src, tiny_base, 64, out, num_proc=2, progress=False)
    assert resumed["rows"] == full["rows"] == 10
    assert [s["sha256"] for s in resumed["shards"]] == [s["sha256"] for s in full["shards"]]
    with pytest.raises(ValueError, match="another source or size"):
        pretokenize(src, tiny_base, 48, out, progress=False)


def test_one_worker_pool_serves_sources_of_several_sizes(tiny_base, tmp_path):
    """`worker_pool` processes outlive a `pretokenize` call: a second source at another size gets its own
    settings in the same workers (a worker that kept the first size would write other shards), and every
    shard equals the one written in this process."""
    from diffusers_lumina_mgpt.training.pretokenize import worker_pool

    sources = [(open_source("shapes:t2i", 6, seed=1, chunk_size=2), 64), (open_source("shapes:edit", 4, seed=1, chunk_size=2), 48)]
    with worker_pool(2) as pool:
        shared = [pretokenize(src, tiny_base, size, tmp_path / f"pool{k}", progress=False, pool=pool)
                  for k, (src, size) in enumerate(sources)]
    alone = [pretokenize(src, tiny_base, size, tmp_path / f"alone{k}", progress=False) for k, (src, size) in enumerate(sources)]
    for a, b in zip(shared, alone):
        assert a["rows"] == b["rows"] > 0 and [s["sha256"] for s in a["shards"]] == [s["sha256"] for s in b["shards"]]


def test_corrupt_or_truncated_data_is_detected(tiny_base, tmp_path):
    pretokenize(open_source("shapes:t2i", 6, seed=0, chunk_size=3), tiny_base, 64, tmp_path / "d", progress=False)
    shard = tmp_path / "d" / "shard-00001.safetensors"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptDataError, match="corrupt or truncated"):
        PretokenizedDataset(tmp_path / "d")
    shard.unlink()
    with pytest.raises(CorruptDataError, match="missing"):
        PretokenizedDataset(tmp_path / "d")


# ----------------------------------------------------------------------------- batches
def test_mixture_counts_and_batches_are_a_function_of_step(tiny_base, tmp_path):
    assert mixture_counts([0.35, 0.65], 8) == [3, 5]
    assert sum(mixture_counts([1, 1, 1], 32)) == 32
    pretokenize(open_source("shapes:t2i", 12, seed=0), tiny_base, 64, tmp_path / "a", progress=False)
    ds = PretokenizedDataset(tmp_path / "a")
    mix = lambda: MixtureBatches([ds], [1.0], 8, seed=0, stage=0, prompt_dropout=0.5, boi_id=4, eoi_id=5)  # noqa: E731
    a, b = mix(), mix()
    assert [r.ids.tolist() for r in a.global_batch(5)] == [r.ids.tolist() for r in b.global_batch(5)]
    lengths = [len(r.ids) for r in a.global_batch(1)]
    assert lengths == sorted(lengths)  # length-grouped
    # a dropped prompt leaves the answer image block alone, starting at BOI, fully supervised
    dropped = [r for s in range(6) for r in a.global_batch(s) if r.ids[0] == 4]
    assert dropped and all(r.ids[-1] == 5 and (r.labels == r.ids).all() for r in dropped)
    # 2 processes split the same global batch
    one, count = a.micro_batches(3, 2, 0, 1)
    r0, c0 = a.micro_batches(3, 2, 0, 2)
    r1, c1 = a.micro_batches(3, 2, 1, 2)
    assert count == c0 == c1 and sorted(map(id, sum(one, []))) != []
    assert sorted(len(r.ids) for m in r0 + r1 for r in m) == sorted(len(r.ids) for m in one for r in m)
    # by length: the same rows and count, in runs of at most 3 rows that keep the length order
    for world in (1, 2):
        parts = [a.micro_batches(3, 3, rank, world, by_length=True, pad_to_multiple_of=16) for rank in range(world)]
        assert all(c == count for _, c in parts) and len({len(m) for m, _ in parts}) == 1
        runs = [m for p, _ in parts for m in p]
        assert all(0 < len(m) <= 3 for m in runs)
        assert [len(r.ids) for m in runs for r in m] != [] and \
            sorted(len(r.ids) for m in runs for r in m) == sorted(len(r.ids) for m in one for r in m)
    ids, labels = collate(one[0], pad_id=0)
    assert ids.shape == labels.shape and (labels[ids == 0] == IGNORE_INDEX).all()
    assert ids.shape[1] == max(len(r.ids) for r in one[0])
    padded, padded_labels = collate(one[0], pad_id=0, pad_to_multiple_of=64)
    assert padded.shape[1] % 64 == 0 and torch.equal(padded[:, :ids.shape[1]], ids)
    assert (padded_labels[:, ids.shape[1]:] == IGNORE_INDEX).all() and (padded[:, ids.shape[1]:] == 0).all()


def test_length_split_cuts_the_sorted_batch_where_padding_costs_most():
    from diffusers_lumina_mgpt.training.data import MICRO_BATCH_COST, length_split

    lengths = [82, 87, 95, 96, 97, 100, 101, 106, 106, 122, 151, 157, 159, 253, 367]  # ShapesWorld's Omni mixture

    def cost(runs, pad):
        return sum((b - a) * -(-lengths[b - 1] // pad) * pad + MICRO_BATCH_COST for a, b in runs)

    def every_split(n, max_rows):  # all ways to cut n sorted rows into runs of at most max_rows
        if n == 0:
            yield []
        for k in range(1, min(n, max_rows) + 1):
            for rest in every_split(n - k, max_rows):
                yield rest + [(n - k, n)]

    for max_rows, world, pad in ((8, 1, 64), (16, 1, 16), (4, 2, 64), (16, 3, 1)):
        runs = length_split(lengths, max_rows, world, pad)
        assert runs[0][0] == 0 and runs[-1][1] == len(lengths) and all(a[1] == b[0] for a, b in zip(runs, runs[1:]))
        assert all(0 < b - a <= max_rows for a, b in runs) and len(runs) % world == 0
        allowed = [r for r in every_split(len(lengths), max_rows) if len(r) % world == 0]
        assert cost(runs, pad) == min(cost(r, pad) for r in allowed)
    # the long multi-turn edits share no run with short rows (two runs of 8 would pad seven short rows to 384)
    assert length_split(lengths, 8, 1, 64)[-1] == (13, 15)
    with pytest.raises(ValueError, match="ascending"):
        length_split([5, 3], 2)
    with pytest.raises(ValueError, match="multiple of 2 micro-batches of at most 1 rows"):
        length_split([1, 2, 3], 1, world=2)


def test_prompt_dropout_can_be_limited_to_some_tasks(tiny_base, tmp_path):
    for task in ("t2i", "segmentation"):
        pretokenize(open_source(f"shapes:{task}", 8, seed=0), tiny_base, 64, tmp_path / task, progress=False)
    datasets = [PretokenizedDataset(tmp_path / t) for t in ("t2i", "segmentation")]

    def mix(dropout_tasks):
        return MixtureBatches(datasets, [0.5, 0.5], 8, seed=0, stage=0, prompt_dropout=0.5, boi_id=4, eoi_id=5,
                              dropout_tasks=dropout_tasks)

    def dropped_tasks(dropout_tasks):
        return Counter(r.task for s in range(6) for r in mix(dropout_tasks).global_batch(s) if r.ids[0] == 4)

    assert set(dropped_tasks(None)) == {"t2i", "segmentation"}
    only_t2i = dropped_tasks(["t2i"])
    # the same rows of t2i lose their prompt; no segmentation row does
    assert set(only_t2i) == {"t2i"} and only_t2i["t2i"] == dropped_tasks(None)["t2i"]
    # a task name no row has (a typo) drops nothing, which the trainer reports per stage
    assert mix(["t2i"]).can_drop and mix(None).can_drop and not mix(["T2I"]).can_drop
    path = tmp_path / "c.yaml"
    stage = {"name": "a", "size": 64, "steps": 1, "data": [{"source": "shapes:t2i", "n": 8}]}
    path.write_text(yaml.safe_dump({"model": {"new": {"hidden_size": 8}}, "stages": [stage]}))
    assert load_train_config(path, ["train.prompt_dropout_tasks=[t2i]"])["train"]["prompt_dropout_tasks"] == ["t2i"]
    with pytest.raises(ValueError, match="prompt_dropout_tasks must be a non-empty list"):
        load_train_config(path, ["train.prompt_dropout_tasks=t2i"])


def test_loss_weight_weighs_each_token_of_a_source(tiny_base, tmp_path):
    from diffusers_lumina_mgpt.transformer import causal_lm_loss

    # the loss: a weighted mean over supervised tokens, each row's tokens weighted by its row weight
    torch.manual_seed(0)
    logits, labels = torch.randn(3, 6, 11), torch.randint(0, 11, (3, 6))
    labels[0, :3] = IGNORE_INDEX
    weights = torch.tensor([1.0, 4.0, 0.5])
    ce = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1),
                                           ignore_index=IGNORE_INDEX, reduction="none").view(3, 5)
    mask = (labels[:, 1:] != IGNORE_INDEX).float() * weights[:, None]
    assert causal_lm_loss(logits, labels, row_weights=weights) == pytest.approx(float((ce * mask).sum() / mask.sum()))
    assert causal_lm_loss(logits, labels, row_weights=torch.ones(3)) == pytest.approx(float(causal_lm_loss(logits, labels)))
    small = torch.full((3,), 0.01)  # weights summing below one token still give the plain mean
    assert causal_lm_loss(logits, labels, row_weights=small) == pytest.approx(float(causal_lm_loss(logits, labels)))
    # a batch's rows carry their source's weight, and its supervised count is weighted alike
    for task in ("t2i", "vqa"):
        pretokenize(open_source(f"shapes:{task}", 8, seed=0), tiny_base, 64, tmp_path / task, progress=False)
    datasets = [PretokenizedDataset(tmp_path / t) for t in ("t2i", "vqa")]
    plain, weighted = (MixtureBatches(datasets, [0.5, 0.5], 8, seed=0, stage=0, prompt_dropout=0.5, boi_id=4, eoi_id=5,
                                      loss_weights=w) for w in (None, [1.0, 3.0]))
    rows = weighted.global_batch(2)
    assert {(r.task, r.weight) for r in rows} == {("t2i", 1.0), ("vqa", 3.0)} and not plain.weighted and weighted.weighted
    count = lambda r: int((r.labels[1:] != IGNORE_INDEX).sum())  # noqa: E731
    assert weighted.micro_batches(2, 4, 0, 1)[1] == sum(r.weight * count(r) for r in rows)
    assert plain.micro_batches(2, 4, 0, 1)[1] == sum(count(r) for r in rows)
    with pytest.raises(ValueError, match="one positive number per dataset"):
        MixtureBatches(datasets, [0.5, 0.5], 8, 0, 0, 0.0, 4, 5, loss_weights=[1.0, 0.0])
    # the config names a bad weight; the trainer's loss is a weighted mean: the same for a uniform weight of 2,
    # another for unequal weights
    from diffusers_lumina_mgpt.training.train import train

    cfg = write_config(tmp_path / "c.yaml", tiny_base, checkpoint_every=1000)
    with pytest.raises(ValueError, match=r"stages\[0\].data\[1\].loss_weight must be a positive number"):
        load_train_config(cfg, ["stages.0.data.1.loss_weight=0"])
    curves = {}
    for name, w in (("one", None), ("two", (2, 2)), ("vqa", (1, 8))):
        sets = [] if w is None else [f"stages.0.data.{k}.loss_weight={v}" for k, v in enumerate(w)]
        config = load_train_config(cfg, [*sets, "stages.0.steps=3"])
        config["stages"] = config["stages"][:1]  # the stage that mixes text-to-image and VQA
        train(config, tmp_path / name, progress=False)
        curves[name] = losses(tmp_path / name)
    assert curves["two"] == pytest.approx(curves["one"], rel=1e-4) and curves["vqa"] != pytest.approx(curves["one"], rel=1e-3)


def test_learning_rate_schedule_per_stage():
    cfg = {"train": {"lr": 1.0, "warmup": 2, "min_lr_ratio": 0.1},
           "stages": [{"steps": 10}, {"steps": 10, "lr": 0.5}]}
    lrs = [learning_rate(cfg, s) for s in range(20)]
    assert lrs[0] == 0.5 and lrs[1] == 1.0 and lrs[10] == 0.25 and lrs[11] == 0.5
    assert lrs[9] < 0.2 and all(a >= b for a, b in zip(lrs[1:10], lrs[2:10]))


def test_auto_precision_is_bf16_only_where_the_hardware_has_it(monkeypatch):
    from diffusers_lumina_mgpt.training import precision

    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file() and "flags" in cpuinfo.read_text():  # the detector agrees with the kernel's CPU flags
        flags = set(next(x for x in cpuinfo.read_text().splitlines() if x.startswith("flags")).split())
        assert precision.cpu_has_native_bf16() == bool({"avx512_bf16", "amx_tile"} & flags)
    for native, expected in ((True, "bf16"), (False, "no")):
        monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda native=native: native)
        assert precision.resolve_mixed_precision("auto", cuda=False) == expected
        assert precision.resolve_mixed_precision("no", cuda=False) == "no"
    with pytest.warns(UserWarning, match="no native bf16"):  # still bf16, as asked, but said to be slow
        assert precision.resolve_mixed_precision("bf16", cuda=False) == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert precision.resolve_mixed_precision("auto", cuda=True) == "bf16"


# ----------------------------------------------------------------------------- checkpoints
def test_checkpoint_writes_are_atomic_and_pruned(tmp_path):
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, {"stage": "a"}, lambda d: (d / "w").write_text("x"), keep=2)
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["step-2", "step-3"]

    def crash(d):
        (d / "w").write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, 4, {"stage": "a"}, crash, keep=2)
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["step-2", "step-3"]  # the half-written one is ignored
    log = tmp_path / "metrics.jsonl"
    log.write_text('{"step": 1}\n{"step": 2}\n{"step": 3}\n{"step": 4, "lo')
    MetricsLog(log, resume_step=2)
    assert [json.loads(x)["step"] for x in log.read_text().splitlines()] == [1, 2]


def test_config_errors_name_the_key(tmp_path, tiny_base):
    cfg = write_config(tmp_path / "c.yaml", tiny_base)
    with pytest.raises(ValueError, match="'lrr' is not a key of train"):
        load_train_config(cfg, ["train.lrr=1"])
    with pytest.raises(ValueError, match="multiple of train.micro_batch_size"):
        load_train_config(cfg, ["train.micro_batch_size=3"])
    with pytest.raises(ValueError, match="train.micro_batching must be 'length'.*or 'fixed'.*got 'lengths'"):
        load_train_config(cfg, ["train.micro_batching=lengths"])
    with pytest.raises(ValueError, match="train.compile must be true or false, got 'sometimes'"):
        load_train_config(cfg, ["train.compile=sometimes"])
    assert load_train_config(cfg, ["train.lr=0.5", "stages.1.steps=7"])["stages"][1]["steps"] == 7
    # YAML reads a bare `no` as false; a text setting keeps the word, a boolean one the boolean
    config = load_train_config(cfg, ["train.mixed_precision=no", "train.gradient_checkpointing=yes"])
    assert config["train"]["mixed_precision"] == "no" and config["train"]["gradient_checkpointing"] is True
    res = run_cli(["train", str(cfg), "--output-dir", str(tmp_path / "r"), "--set", "train.nope=1"])
    assert res.returncode == 2 and "'nope' is not a key of train" in res.stderr and "Traceback" not in res.stderr


# ----------------------------------------------------------------------------- the loop
def test_tiny_model_overfits_a_handful_of_records(tiny_base, tmp_path):
    from diffusers_lumina_mgpt.training.train import train

    cfg = write_config(tmp_path / "c.yaml", tiny_base, batch_size=8, micro_batch_size=8, lr=1e-2, prompt_dropout=0.0,
                       checkpoint_every=1000)
    config = load_train_config(cfg, ["stages=[{name: fit, size: 64, steps: 60, data: [{source: 'shapes:t2i', n: 8}]}]",
                                      "model.new.hidden_size=64", "model.new.intermediate_size=128"])
    train(config, tmp_path / "run", progress=False)
    curve = losses(tmp_path / "run")
    assert curve[0] > 4.0 and np.mean(curve[-5:]) < 0.5  # 8 records memorised: per-token loss below 0.5 nats


def test_compiled_training_matches_eager(tiny_base, tmp_path):
    """`train.compile: true` compiles the forward and loss (inductor, dynamic shapes): the same losses as eager
    to float tolerance, micro-batches of several lengths and sizes through one graph, and checkpoints and
    the exported pipeline keep the module's own parameter names."""
    import torch._dynamo

    from diffusers_lumina_mgpt.training.train import train

    runs = {}
    for compiled in (False, True):
        cfg = write_config(tmp_path / f"c{compiled}.yaml", tiny_base, compile=compiled, micro_batch_size=4,
                           checkpoint_every=1000)
        config = load_train_config(cfg, ["stages=[{name: mix, size: 48, steps: 3, data: [{source: 'shapes:t2i', n: 16, "
                                         "ratio: 0.5}, {source: 'shapes:edit', n: 8, ratio: 0.5}]}]"])
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
        train(config, tmp_path / f"run{compiled}", progress=False)
        runs[compiled] = losses(tmp_path / f"run{compiled}")
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        assert (graphs > 0) is compiled
    assert runs[True] == pytest.approx(runs[False], rel=1e-4)
    from safetensors.torch import load_file

    exported = load_file(str(tmp_path / "runTrue" / "pipeline" / "transformer" / "diffusion_pytorch_model.safetensors"))
    reference = load_file(str(tmp_path / "runFalse" / "pipeline" / "transformer" / "diffusion_pytorch_model.safetensors"))
    assert exported.keys() == reference.keys()
    for key in reference:
        torch.testing.assert_close(exported[key], reference[key], rtol=1e-3, atol=1e-4)


def test_stage_average_shared_records_and_export_defaults(tiny_base, tmp_path):
    """`export.average_stages` exports the mean of the weights at the end of those stages; a data entry that an
    earlier stage holds is tokenised once and read from there; `export` writes the sampling defaults."""
    from safetensors.torch import load_file

    from diffusers_lumina_mgpt.pipelines import LuminaMGPTPipeline
    from diffusers_lumina_mgpt.training.train import stage_data_folders, train

    cfg = write_config(tmp_path / "c.yaml", tiny_base, checkpoint_every=1000)
    stages = ("stages=[{name: a, size: 48, steps: 3, data: [{source: 'shapes:t2i', n: 16}]},"
              "{name: b, size: 64, steps: 3, data: [{source: 'shapes:t2i', n: 16, ratio: 0.5}, {source: 'shapes:vqa', n: 8}]},"
              "{name: c, size: 64, steps: 3, lr: 0.001, data: [{source: 'shapes:t2i', n: 16}, {source: 'shapes:vqa', n: 8, seed: 5}]}]")
    export = ["export.average_stages=[b, c]", "export.guidance_scale=2.0", "export.image_top_k=3",
              "export.edit_image_top_k=1"]
    config = load_train_config(cfg, [stages, *export])
    run = tmp_path / "run"
    train(config, run, progress=False)
    assert stage_data_folders(config, run, 2) == [run / "data" / "b" / "0", run / "data" / "c" / "1"]
    assert stage_data_folders(config, run, 1)[0] != stage_data_folders(config, run, 0)[0]  # another size
    assert sorted(p.name for p in (run / "data" / "c").iterdir()) == ["1"]
    b, c = (load_file(str(run / "stage-weights" / f"{n}.safetensors")) for n in "bc")
    ends = {n: load_file(str(run / "checkpoints" / f"step-{step}" / "model.safetensors")) for n, step in (("b", 6), ("c", 9))}
    assert all(torch.equal(b[k], ends["b"][k]) and torch.equal(c[k], ends["c"][k]) for k in b)  # each stage's end
    pipe = LuminaMGPTPipeline.from_pretrained(str(run / "pipeline"))
    exported = pipe.transformer.state_dict()
    assert exported.keys() == b.keys() == c.keys()
    for key in b:
        torch.testing.assert_close(exported[key], 0.5 * b[key] + 0.5 * c[key], rtol=0, atol=0)
    assert not torch.equal(exported[key], c[key])  # not the last stage's weights
    # every weights file of the run (data shards, checkpoints, stage weights, base, export) has the mode the
    # run's JSON files have, not the 0600 safetensors 0.8 creates its files with
    from diffusers_lumina_mgpt.file_modes import default_file_mode

    written = sorted(run.rglob("*.safetensors"))
    assert {p.relative_to(run).parts[0] for p in written} == {"base", "checkpoints", "data", "pipeline", "stage-weights"}
    assert {p.stat().st_mode & 0o777 for p in [*written, run / "config.json"]} == {default_file_mode()}
    assert pipe.config.default_guidance_scale == 2.0 and pipe.config.default_edit_image_top_k == 1
    assert pipe.scheduler.config.image_top_k == 3
    # a checkpoint exports as the weights it holds (the last stage's), with the run's sampling defaults
    from diffusers_lumina_mgpt.training.checkpoints import latest_checkpoint
    from diffusers_lumina_mgpt.training.train import export_checkpoint

    single = LuminaMGPTPipeline.from_pretrained(str(export_checkpoint(latest_checkpoint(run), tmp_path / "ckpt")))
    assert all(torch.equal(v, c[k]) for k, v in single.transformer.state_dict().items())
    assert single.config.default_guidance_scale == 2.0 and single.scheduler.config.image_top_k == 3
    # the sampling defaults may change when a finished run is re-run; what it trains on may not
    train(load_train_config(cfg, [stages, *export, "export.guidance_scale=1.5"]), run, progress=False)
    assert LuminaMGPTPipeline.from_pretrained(str(run / "pipeline")).config.default_guidance_scale == 1.5
    with pytest.raises(ValueError, match=r"export\.average_stages\.0: 'b' -> 'a'"):
        train(load_train_config(cfg, [stages, *export[1:], "export.average_stages=[a, c]"]), run, progress=False)
    for bad, match in (("export.average_stages=[b]", "two or more different stage names"),
                       ("export.average_stages=[b, zz]", r"names \['zz'\], which are not stages"),
                       ("export.guidance_scale=0.5", "export.guidance_scale must be a number >= 1"),
                       ("export.image_top_k=0", "export.image_top_k must be a whole number >= 1")):
        with pytest.raises(ValueError, match=match):
            load_train_config(cfg, [stages, bad])


def test_sigkill_resume_and_two_processes_match_one(tiny_base, tmp_path):
    cfg = write_config(tmp_path / "c.yaml", tiny_base)
    whole = tmp_path / "whole"
    res = run_cli(["train", str(cfg), "--output-dir", str(whole), "--no-progress"])
    assert res.returncode == 0, res.stderr[-2000:]
    reference = losses(whole)
    assert len(reference) == 8

    # kill -9 after the first checkpoint, then run the same command again
    killed = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(CLI + ["train", str(cfg), "--output-dir", str(killed), "--no-progress",
                                   "--set", "train.checkpoint_every=2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 300
    while not checkpoint_dirs(killed) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert checkpoint_dirs(killed), "the run ended before its first checkpoint"
    first = len(read_metrics(killed)) if (killed / "metrics.jsonl").exists() else 0
    assert first < 8
    res = run_cli(["train", str(cfg), "--output-dir", str(killed), "--no-progress", "--set", "train.checkpoint_every=2"])
    assert res.returncode == 0, res.stderr[-2000:]
    assert losses(killed) == pytest.approx(reference, rel=1e-6, abs=0)
    assert [r["step"] for r in read_metrics(killed)] == list(range(1, 9))

    # two processes (gloo) with the same global batch
    two = tmp_path / "two"
    res = run_cli(["train", str(cfg), "--output-dir", str(two), "--no-progress", "--num-processes", "2"])
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    assert losses(two) == pytest.approx(reference, rel=1e-4)

    # the exported folder loads and generates; `export` writes the same from a checkpoint
    from diffusers_lumina_mgpt import LuminaMGPTPipeline

    pipe = LuminaMGPTPipeline.from_pretrained(str(whole / "pipeline"))
    out = pipe("a red circle", height=48, width=80, generator=torch.Generator().manual_seed(0), guidance_scale=2.0)
    assert out.images[0].size == (80, 48)
    res = run_cli(["export", str(whole / "checkpoints" / "step-8"), "--out", str(tmp_path / "exported")])
    assert res.returncode == 0, res.stderr
    again = LuminaMGPTPipeline.from_pretrained(str(tmp_path / "exported"))
    for a, b in zip(pipe.transformer.state_dict().values(), again.transformer.state_dict().values()):
        assert torch.equal(a, b)
    assert again.config.default_size == 64


# ----------------------------------------------------------------------------- VQ
def test_train_vq_learns_resumes_and_reports(tmp_path):
    from diffusers_lumina_mgpt.training.vq_train import load_vq_config, train_vq

    overrides = ["train.steps=40", "data.shapes=60", "data.eval_images=8", "train.batch_size=8",
                 "train.checkpoint_every=20", "train.restart_every=10", "model.block_out_channels=[8, 8, 16, 16]",
                 "model.num_vq_embeddings=64", "model.latent_channels=8", "train.threads=1"]
    whole = train_vq(load_vq_config(None, overrides), tmp_path / "a", progress=False)
    rows = read_metrics(tmp_path / "a")
    assert np.mean([r["recon"] for r in rows[-5:]]) < 0.8 * np.mean([r["recon"] for r in rows[:5]])
    assert whole["codes_used"] > 1 and whole["perplexity"] > 1 and 5 < whole["psnr"] < 60
    # stop after 20 steps, resume: the same losses as one go
    train_vq(load_vq_config(None, [*overrides, "train.steps=40"]), tmp_path / "b", progress=False)
    import shutil

    shutil.rmtree(tmp_path / "b" / "vqvae")
    (tmp_path / "b" / "vq_eval.json").unlink()
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "step-40")
    with pytest.raises(ValueError, match="pixel_norm"):  # other model settings: refused, nothing trained
        train_vq(load_vq_config(None, [*overrides, "model.pixel_norm=false"]), tmp_path / "b", progress=False)
    resumed = train_vq(load_vq_config(None, overrides), tmp_path / "b", progress=False)
    assert [r["loss"] for r in read_metrics(tmp_path / "b")] == pytest.approx([r["loss"] for r in rows], rel=1e-6)
    assert resumed == whole
    from diffusers_lumina_mgpt.vq import ChameleonVQModel, PixelNorm

    reloaded = ChameleonVQModel.from_pretrained(str(tmp_path / "a" / "vqvae"))
    assert reloaded.config.num_vq_embeddings == 64 and reloaded.config.pixel_norm is True
    assert any(isinstance(m, PixelNorm) for m in reloaded.modules())
    from diffusers_lumina_mgpt.file_modes import default_file_mode  # readable like its JSON files

    assert {p.stat().st_mode & 0o777 for p in (tmp_path / "a").rglob("*.safetensors")} == {default_file_mode()}
    assert whole["flat_code_entropy"] is None or whole["flat_code_entropy"] >= 0


def test_train_vq_in_bf16_autocast_keeps_code_search_in_float32(tmp_path):
    """`train.mixed_precision: bf16` runs the VQ encoder and decoder in autocast; the latents, the nearest-code
    search and the losses stay float32."""
    from diffusers_lumina_mgpt.training.vq_train import (load_vq_config, shapes_images, to_pixels, train_vq,
                                                         vq_losses, vq_model_from_config)
    from diffusers_lumina_mgpt.vq import vq_nearest_codes

    config = load_vq_config(None, ["model.block_out_channels=[8, 8, 16, 16]", "model.num_vq_embeddings=64",
                                   "model.latent_channels=8"])
    torch.manual_seed(0)
    vqvae = vq_model_from_config(config["model"])
    pixels = torch.stack([to_pixels(im.crop((0, 0, 32, 32))) for im in shapes_images(4, 0, [1.0])])
    loss, parts, codes, latents = vq_losses(vqvae, pixels, 0.25, 1.0, torch.bfloat16)
    fp32 = vq_losses(vqvae, pixels, 0.25, 1.0)
    assert latents.dtype == loss.dtype == torch.float32
    assert not torch.equal(latents, fp32[3]) and torch.allclose(latents, fp32[3], atol=0.1, rtol=0.05)  # autocast ran
    # the code search ran outside autocast (in it, the distance matmul would run in bf16 and flip near-ties)
    codebook = vqvae.quantize.embedding.weight.detach()
    assert torch.equal(codes, vq_nearest_codes(codebook, latents.detach()))
    loss.backward()
    assert all(p.grad is not None for p in vqvae.encoder.parameters())
    overrides = ["train.steps=4", "data.shapes=20", "data.eval_images=4", "train.batch_size=4", "train.threads=1",
                 "model.block_out_channels=[8, 8, 16, 16]", "model.num_vq_embeddings=64", "model.latent_channels=8"]
    report = train_vq(load_vq_config(None, [*overrides, "train.mixed_precision=bf16"]), tmp_path / "a", progress=False)
    train_vq(load_vq_config(None, [*overrides, "train.mixed_precision=no"]), tmp_path / "f", progress=False)
    bf16, full = ([r["loss"] for r in read_metrics(tmp_path / d)] for d in "af")
    assert len(bf16) == 4 and 5 < report["psnr"] < 60
    assert bf16 != full and bf16 == pytest.approx(full, rel=0.05)  # the setting reaches the step
    with pytest.raises(ValueError, match="train.mixed_precision of train-vq must be 'no'.*got 'fp8'"):
        train_vq(load_vq_config(None, [*overrides, "train.mixed_precision=fp8"]), tmp_path / "b", progress=False)


def test_train_vq_with_cell_encoder_and_decoder(tmp_path):
    """`model.cell_encoder` / `model.cell_decoder` train, and the saved tokenizer keeps both flags."""
    from diffusers_lumina_mgpt.training.vq_train import load_vq_config, train_vq
    from diffusers_lumina_mgpt.vq import ChameleonVQModel

    overrides = ["train.steps=30", "data.shapes=40", "data.eval_images=4", "train.batch_size=8", "train.crop_grid=8",
                 "train.restart_every=10", "model.block_out_channels=[8, 8, 16, 16]", "model.num_vq_embeddings=64",
                 "model.latent_channels=8", "train.threads=1", "model.cell_encoder=true", "model.cell_decoder=true"]
    report = train_vq(load_vq_config(None, overrides), tmp_path / "run", progress=False)
    rows = read_metrics(tmp_path / "run")
    assert np.mean([r["recon"] for r in rows[-5:]]) < 0.9 * np.mean([r["recon"] for r in rows[:5]])
    vq = ChameleonVQModel.from_pretrained(str(tmp_path / "run" / "vqvae"))
    assert vq.config.cell_encoder is True and vq.config.cell_decoder is True and report["codes_used"] > 1


def test_vq_crops_on_a_grid_start_on_its_multiples():
    from diffusers_lumina_mgpt.training.vq_train import random_crops

    pool = [torch.arange(3 * 64 * 80, dtype=torch.float32).reshape(3, 64, 80)]
    for grid, expect_aligned in ((8, True), (1, False)):
        crops = random_crops(pool, 200, 32, np.random.default_rng(0), grid)
        corners = [(int(c[0, 0, 0]) // 80, int(c[0, 0, 0]) % 80) for c in crops]  # the crop's top-left pixel
        aligned = all(y % 8 == 0 and x % 8 == 0 for y, x in corners)
        assert aligned == expect_aligned and max(y for y, _ in corners) <= 32 and max(x for _, x in corners) <= 48


def test_flat_code_entropy_counts_codes_of_flat_patches():
    from diffusers_lumina_mgpt.training.vq_train import flat_code_entropy, flat_patch_codes

    pixels = torch.full((3, 28, 28), 128, dtype=torch.uint8)
    pixels[:, :4, :4] = 0  # a dark corner: its neighbourhood is not flat
    codes = torch.zeros(7, 7, dtype=torch.long)
    found = flat_patch_codes(pixels, codes, radius=1)
    # interior patches (not on the border) whose 3x3 patch window is all grey: 5x5 minus the corner's neighbour
    assert len(found) == 24 and {c for c, _ in found} == {(128, 128, 128)}
    assert flat_code_entropy({}) is None and flat_code_entropy({(128,) * 3: [5] * 10}) == 0.0
    assert flat_code_entropy({(128,) * 3: [1, 2] * 5, (0,) * 3: [7] * 10}) == pytest.approx(np.log(2) / 2)


def test_round_trip_ceiling_is_reported_per_family(monkeypatch):
    """A lossless tokenizer passes every family's ground truth; one that blanks images passes none."""
    from diffusers_lumina_mgpt.shapes.language import FAMILIES
    from diffusers_lumina_mgpt.training import vq_train

    def exact(vqvae, image):
        pixels = vq_train.to_pixels(image)[None]
        return pixels, None, pixels

    monkeypatch.setattr(vq_train, "round_trip", exact)
    report = vq_train.shapes_round_trip(None, 6)
    assert report["families"] == {family: 1.0 for family in FAMILIES} and report["t2i"] == 1.0
    monkeypatch.setattr(vq_train, "round_trip", lambda vqvae, image: (None, None, torch.full_like(exact(None, image)[0], -1.0)))
    assert set(vq_train.shapes_round_trip(None, 6)["families"].values()) == {0.0}


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps({"step": i, "stage": "a" if i < 5 else "b",
                                                                "loss": 5.0 / i}) + "\n" for i in range(1, 10)))
    res = run_cli(["plot", str(tmp_path), "-o", str(tmp_path / "l.png")])
    assert res.returncode == 0, res.stderr
    assert Image.open(tmp_path / "l.png").size[0] > 100


def test_average_is_the_weighted_mean_of_fine_tunes_and_refuses_mismatches(tiny_pipe_dir, tmp_path, capsys):
    import shutil

    from diffusers_lumina_mgpt.cli import main as cli
    from diffusers_lumina_mgpt.pipelines import LuminaMGPTPipeline
    from diffusers_lumina_mgpt.training.average import average_pipelines
    from diffusers_lumina_mgpt.training.pretokenize import load_vqvae
    from diffusers_lumina_mgpt.transformer import LuminaMGPTTransformer

    a = tmp_path / "a"
    shutil.copytree(tiny_pipe_dir, a)
    cfg = json.loads((a / "model_index.json").read_text())
    cfg["default_guidance_scale"] = 2.5  # settings of the first folder that the mean must keep
    cfg["default_edit_image_top_k"] = 1
    (a / "model_index.json").write_text(json.dumps(cfg))
    b = tmp_path / "b"
    shutil.copytree(a, b)
    tb = LuminaMGPTTransformer.from_pretrained(str(b), subfolder="transformer")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in tb.parameters():
            p.add_(torch.randn(p.shape, generator=g))
    tb.save_pretrained(str(b / "transformer"))

    assert cli(["average", str(a), str(b), "--weights", "0.75", "0.25", "--out", str(tmp_path / "soup")]) == 0
    soup = LuminaMGPTPipeline.from_pretrained(str(tmp_path / "soup"))
    sa = LuminaMGPTTransformer.from_pretrained(str(a), subfolder="transformer").state_dict()
    sb, ss = tb.state_dict(), soup.transformer.state_dict()
    assert ss.keys() == sa.keys()
    for k in sa:
        torch.testing.assert_close(ss[k], 0.75 * sa[k] + 0.25 * sb[k], rtol=0, atol=1e-6)
    assert not torch.equal(ss[k], sa[k])
    assert soup.config.default_guidance_scale == 2.5 and soup.config.default_edit_image_top_k == 1
    assert (tmp_path / "soup/scheduler/scheduler_config.json").read_text() == (
        a / "scheduler/scheduler_config.json").read_text()
    # equal weights by default
    average_pipelines([a, b], tmp_path / "mean")
    sm = LuminaMGPTTransformer.from_pretrained(str(tmp_path / "mean"), subfolder="transformer").state_dict()
    torch.testing.assert_close(sm[k], 0.5 * sa[k] + 0.5 * sb[k], rtol=0, atol=1e-6)

    # a different VQ tokenizer, bad weights, one folder, writing over an input: refused with the reason
    c = tmp_path / "c"
    shutil.copytree(a, c)
    vq = load_vqvae(c / "vqvae")
    with torch.no_grad():
        next(vq.parameters()).add_(1.0)
    vq.save_pretrained(str(c / "vqvae"))
    with pytest.raises(ValueError, match="vqvae differs"):
        average_pipelines([a, c], tmp_path / "x")
    with pytest.raises(ValueError, match="sum to 1"):
        average_pipelines([a, b], tmp_path / "x", [0.5, 0.6])
    with pytest.raises(ValueError, match="one weight per folder"):
        average_pipelines([a, b], tmp_path / "x", [1.0])
    with pytest.raises(ValueError, match="at least two"):
        average_pipelines([a], tmp_path / "x")
    with pytest.raises(ValueError, match="new folder"):
        average_pipelines([a, b], b)
    with pytest.raises(ValueError, match="is or holds"):  # the folder above an input: it would be deleted
        average_pipelines([a, b], tmp_path)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes/keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="would delete them"):
        average_pipelines([a, b], tmp_path / "notes")
    assert (tmp_path / "notes/keep.txt").read_text() == "mine"
    average_pipelines([a, b], tmp_path / "mean", [0.25, 0.75])  # an earlier mean is replaced
    sm = LuminaMGPTTransformer.from_pretrained(str(tmp_path / "mean"), subfolder="transformer").state_dict()
    torch.testing.assert_close(sm[k], 0.25 * sa[k] + 0.75 * sb[k], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="no vqvae/ or tokenizer/"):
        average_pipelines([a, b / "transformer"], tmp_path / "x")
    assert cli(["average", str(a), str(c), "--out", str(tmp_path / "x")]) == 2
    assert "vqvae differs" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


# ----------------------------------------------------------------------------- shipped examples
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_example_configs_are_valid():
    from diffusers_lumina_mgpt.training.vq_train import load_vq_config

    for name in ("smoke.yaml", "fpsft.yaml", "default.yaml"):
        config = load_train_config(EXAMPLES / "shapesworld" / name)
        assert [s["size"] for s in config["stages"]] == sorted(s["size"] for s in config["stages"])  # FP-SFT: low -> high
        load_vq_config(Path(config["_config_dir"]) / config["vq_recipe"])
    # the FP-SFT control differs from the FP-SFT recipe only in its stages: one, at the final size
    default, control = (load_train_config(EXAMPLES / "shapesworld" / n) for n in ("fpsft.yaml", "one-stage.yaml"))
    assert control["train"] == default["train"] and control["model"] == default["model"]
    assert [s["size"] for s in control["stages"]] == [default["stages"][-1]["size"]]
    more = {}
    for name in ("default-continue.yaml", "default-position.yaml", "default-position-2.yaml", "default-balance.yaml",
                 "default-yesno.yaml", "default-refine.yaml", "default-wide.yaml", "default-vqa.yaml",
                 "default-vqa-2.yaml", "default-vqa-3.yaml"):
        more[name] = load_train_config(EXAMPLES / "shapesworld" / name, ["model.pretrained=/a/pipeline"])
        assert more[name]["model"]["pretrained"] == "/a/pipeline" and more[name]["stages"][0]["size"] == 64
        assert {k: v for k, v in more[name]["train"].items() if k not in ("lr", "warmup")} == \
            {k: v for k, v in default["train"].items() if k not in ("lr", "warmup")}
    first, second = (more[n]["stages"][0]["data"] for n in ("default-position.yaml", "default-position-2.yaml"))
    assert {"source": "shapes:t2i:position", "n": 7000, "ratio": 0.18, "seed": 3} in first
    assert {"source": "shapes:t2i:position", "n": 7000, "ratio": 0.30, "seed": 3} in second
    # the second position stage trains on the first one's records, in new proportions
    assert [(d["source"], d["n"], d["seed"]) for d in first] == [(d["source"], d["n"], d["seed"]) for d in second]
    assert abs(sum(d["ratio"] for d in second) - 1.0) < 1e-9
    # the balancing stage keeps those records except fresh questions and edits (seed 4), more of them
    third = {d["source"]: d for d in more["default-balance.yaml"]["stages"][0]["data"]}
    fresh = {"shapes:vqa", "shapes:edit", "shapes:multiedit"}
    assert set(third) == {d["source"] for d in second} and abs(sum(d["ratio"] for d in third.values()) - 1.0) < 1e-9
    assert all((d["n"], d["seed"]) == (third[d["source"]]["n"], third[d["source"]]["seed"])
               for d in second if d["source"] not in fresh)
    assert all(third[s]["seed"] == 4 and third[s]["ratio"] > d["ratio"] for d in second for s in fresh if d["source"] == s)
    assert {s: d.get("loss_weight", 1) for s, d in third.items() if d.get("loss_weight", 1) != 1} == {"shapes:vqa": 6}
    # the yes/no probe: the second stage's records plus yes/no-only VQA records, every VQA source weighted 6x
    probe = {d["source"]: d for d in more["default-yesno.yaml"]["stages"][0]["data"]}
    assert set(probe) == set(third) | {"shapes:vqa:exists", "shapes:vqa:position"}
    assert {s for s, d in probe.items() if d.get("loss_weight", 1) == 6} == {s for s in probe if s.startswith("shapes:vqa")}
    assert abs(sum(d["ratio"] for d in probe.values()) - 1.0) < 1e-9
    # the refining stage: the probe's sources on fresh records (new seeds), every VQA source still weighted 6x
    refine = {d["source"]: d for d in more["default-refine.yaml"]["stages"][0]["data"]}
    assert set(refine) == set(probe) and abs(sum(d["ratio"] for d in refine.values()) - 1.0) < 1e-9
    assert all(refine[s]["seed"] != probe[s]["seed"] and refine[s].get("loss_weight", 1) == probe[s].get("loss_weight", 1)
               for s in probe)
    # the one-command recipe is the FP-SFT stages, then each stage of the chain that made the shipped folder with
    # that run's learning rate and warmup, exported as the mean of the three VQA stages with the shipped sampling;
    # its VQA stages weight VQA answers 10x (not 6x) and move 0.04 of the rows from captions, segmentation, depth
    # and no-edit to yes/no questions and edits
    recipe = load_train_config(EXAMPLES / "shapesworld" / "default.yaml")
    chain = ["default-position.yaml", "default-position-2.yaml", "default-yesno.yaml", "default-wide.yaml",
             "default-vqa.yaml", "default-vqa-2.yaml", "default-vqa-3.yaml"]
    assert recipe["stages"][:2] == default["stages"] and len(recipe["stages"]) == 2 + len(chain)
    moved = {"shapes:caption": -0.01, "shapes:segmentation": -0.01, "shapes:depth": -0.01, "shapes:noedit": -0.01,
             "shapes:vqa:exists": 0.02, "shapes:edit": 0.02}
    for st, name in zip(recipe["stages"][2:], chain):
        ran = {**more[name]["stages"][0], "lr": more[name]["train"]["lr"], "warmup": more[name]["train"]["warmup"]}
        if name.startswith("default-vqa"):
            ran["data"] = [{**d, "ratio": pytest.approx(d["ratio"] + moved.get(d["source"], 0)),
                            **({"loss_weight": 10} if d["source"].startswith("shapes:vqa") else {})}
                           for d in ran["data"]]
            assert abs(sum(d["ratio"] for d in st["data"]) - 1.0) < 1e-9
        assert {k: v for k, v in st.items() if k != "name"} == {k: v for k, v in ran.items() if k != "name"}
    # the same training as the chain's, compiled and in bigger, less padded micro-batches (speed settings only)
    speed = {"compile": True, "micro_batch_size": 16, "pad_to_multiple_of": 16}
    assert {**recipe["train"], **{k: default["train"][k] for k in speed}} == default["train"]
    assert {k: recipe["train"][k] for k in speed} == speed
    assert recipe["model"] == default["model"] and recipe["vq_recipe"] == default["vq_recipe"]
    assert recipe["export"] == {"average_stages": [st["name"] for st in recipe["stages"][-3:]], "guidance_scale": 2.0,
                                "image_top_k": 3, "edit_image_top_k": 1}
    # the wide stage: the probe's records plus 80x48 text-to-image ones (seed 5), taken from the text-to-image shares
    wide = {d["source"]: d for d in more["default-wide.yaml"]["stages"][0]["data"]}
    assert set(wide) == set(probe) | {"shapes:t2i@80x48", "shapes:t2i:position@80x48"}
    assert all(wide[s] == d for s, d in probe.items() if not s.startswith("shapes:t2i"))
    assert sum(d["ratio"] for s, d in wide.items() if s.startswith("shapes:t2i")) == \
        pytest.approx(sum(d["ratio"] for s, d in probe.items() if s.startswith("shapes:t2i")))
    assert abs(sum(d["ratio"] for d in wide.values()) - 1.0) < 1e-9
    # the VQA stages: the wide stage's sources plus colour questions, every VQA source weighted 6x; the second and
    # third stages ask fresh yes/no and colour questions in the same proportions
    vqa, vqa2, vqa3 = ({d["source"]: d for d in more[n]["stages"][0]["data"]}
                       for n in ("default-vqa.yaml", "default-vqa-2.yaml", "default-vqa-3.yaml"))
    assert set(vqa) == set(wide) | {"shapes:vqa:color"} and abs(sum(d["ratio"] for d in vqa.values()) - 1.0) < 1e-9
    assert {s for s, d in vqa.items() if d.get("loss_weight", 1) == 6} == {s for s in vqa if s.startswith("shapes:vqa")}
    assert sum(d["ratio"] for s, d in vqa.items() if s.startswith("shapes:vqa")) > \
        sum(d["ratio"] for s, d in wide.items() if s.startswith("shapes:vqa"))
    asked_anew = {"shapes:vqa:exists", "shapes:vqa:position", "shapes:vqa:color"}
    for later in (vqa2, vqa3):
        assert {s for s in vqa if vqa[s] != later[s]} == asked_anew
        assert all({**later[s], "seed": vqa[s]["seed"]} == vqa[s] for s in asked_anew)
    assert all(vqa2[s]["seed"] != vqa3[s]["seed"] for s in asked_anew)
    for n in (1, 8, 32):
        acc = yaml.safe_load((EXAMPLES / "accelerate" / f"fsdp-{n}gpu.yaml").read_text())
        assert acc["distributed_type"] == "FSDP" and acc["num_processes"] == n
        assert acc["fsdp_config"]["fsdp_transformer_layer_cls_to_wrap"] == "DecoderLayer"


@pytest.mark.slow
def test_smoke_example_runs_end_to_end(tmp_path):
    """The documented smoke run (about two minutes); the tiny-config tests above cover the same code."""
    res = run_cli(["train", str(EXAMPLES / "shapesworld" / "smoke.yaml"), "--output-dir", str(tmp_path / "run"),
                   "--no-progress"])
    assert res.returncode == 0, res.stderr[-2000:]
    assert (tmp_path / "run" / "pipeline" / "model_index.json").is_file()
    assert [r["stage"] for r in read_metrics(tmp_path / "run")][::10] == ["low", "high"]


def test_bf16_checkpointing_freezing_and_dropout_options(tiny_base, tmp_path):
    """Run as a command: accelerate's state is one per process, so a precision differing from an earlier
    in-process run must start its own process (as every real run does)."""
    from safetensors.torch import load_file

    from diffusers_lumina_mgpt.training.train import build_transformer

    cfg = write_config(tmp_path / "c.yaml", tiny_base, mixed_precision="bf16", gradient_checkpointing=True)
    sets = ["model.freeze=['embed_tokens']", "model.new.residual_dropout=0.1",
            "stages=[{name: a, size: 64, steps: 2, data: [{source: 'shapes:t2i', n: 8}]}]"]
    res = run_cli(["train", str(cfg), "--output-dir", str(tmp_path / "run"), "--no-progress",
                   *sum((["--set", x] for x in sets), [])])
    assert res.returncode == 0, res.stderr[-2000:]
    rows = read_metrics(tmp_path / "run")
    assert len(rows) == 2 and all(np.isfinite(r["loss"]) for r in rows)
    from accelerate.utils import set_seed

    config = load_train_config(cfg, sets)
    set_seed(config["seed"])  # the run's initial weights
    start = build_transformer(config, tmp_path / "run" / "base")
    end = load_file(str(tmp_path / "run" / "pipeline" / "transformer" / "diffusion_pytorch_model.safetensors"))
    assert torch.equal(end["model.embed_tokens.weight"], start.state_dict()["model.embed_tokens.weight"])
    assert not torch.equal(end["lm_head.weight"], start.state_dict()["lm_head.weight"])
    res = run_cli(["train", str(cfg), "--output-dir", str(tmp_path / "run2"), "--set", "model.freeze=['nothing_like']"])
    assert res.returncode == 2 and "match no parameter" in res.stderr
