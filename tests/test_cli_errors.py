"""Every user mistake the command line knows of: one line on stderr naming the fix, exit status 2, no
traceback (unless --debug), and no model work before the check."""

import json
import shutil
import subprocess
import sys

import pytest
from PIL import Image

from diffusers_lumina_mgpt.cli import main


def _one_line_error(capsys, *needles: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err, "no error message"
    last = err[-1]
    assert "error:" in last and "Traceback" not in "\n".join(err)
    for needle in needles:
        assert needle in last, (needle, last)
    return last


@pytest.fixture()
def afile(tmp_path):
    path = tmp_path / "afile"
    path.write_text("not a folder")
    return path


def test_generate_mistakes(tiny_pipe_dir, tmp_path, afile, capsys, monkeypatch):
    model = ["--model", str(tiny_pipe_dir)]
    # a folder missing a component names that component
    broken = tmp_path / "no-vqvae"
    shutil.copytree(tiny_pipe_dir, broken)
    shutil.rmtree(broken / "vqvae")
    assert main(["generate", "a", "--model", str(broken), "-o", str(tmp_path / "a.png")]) == 2
    _one_line_error(capsys, "vqvae/", "model_index.json")
    # outputs that cannot be written are refused before the model loads
    loaded = []
    monkeypatch.setattr("diffusers_lumina_mgpt.pipelines.LuminaMGPTPipeline.from_pretrained",
                        lambda *a, **k: loaded.append(1))
    assert main(["generate", "a", *model, "-o", str(afile / "a.png")]) == 2
    _one_line_error(capsys, "is a file")
    assert main(["generate", "a", *model, "-o", str(tmp_path)]) == 2
    _one_line_error(capsys, "must end in .png")
    assert main(["generate", "a", *model, "-o", str(tmp_path / "a.png"), "--device", "nonsense"]) == 2
    _one_line_error(capsys, "--device 'nonsense' is not a device")
    import torch

    if not torch.cuda.is_available():
        assert main(["generate", "a", *model, "-o", str(tmp_path / "a.png"), "--device", "cuda"]) == 2
        _one_line_error(capsys, "no CUDA GPU")
    assert not loaded


def test_size_errors_suggest_sizes_the_model_can_hold(tiny_pipe_dir, tmp_path, capsys):
    from diffusers_lumina_mgpt import LuminaMGPTPipeline

    assert main(["generate", "a", "--model", str(tiny_pipe_dir), "-o", str(tmp_path / "a.png"),
                 "--height", "4000", "--width", "4000"]) == 2
    line = _one_line_error(capsys, "Nearest valid sizes")
    pipe = LuminaMGPTPipeline.from_pretrained(tiny_pipe_dir)
    sizes = [tuple(int(v) for v in hw.split("x")) for hw in line.split("(height x width): ")[1].split(" (")[0].split(", ")]
    assert sizes
    for h, w in sizes:  # every suggestion really generates (tokens only: no decode needed)
        out = pipe("a", height=h, width=w, output_type="tokens", image_top_k=1)
        assert out.images.shape[0] == 1


def test_encoder_only_vq_fails_before_decoding(tmp_path, fixture_dir, capsys, monkeypatch):
    out = tmp_path / "enc-only"
    assert main(["convert", "--model", str(fixture_dir / "model"), "--out", str(out), "--default-size", "64"]) == 0
    capsys.readouterr()
    steps = []
    monkeypatch.setattr("diffusers_lumina_mgpt.pipelines.text_to_image.decode_image_blocks",
                        lambda *a, **k: steps.append(1))
    assert main(["generate", "a", "--model", str(out), "-o", str(tmp_path / "a.png")]) == 2
    _one_line_error(capsys, "encoder-only", "--vqgan-ckpt")
    assert not steps  # refused before any decoding work


@pytest.mark.parametrize("size", ["100", "-5", "0"])
def test_convert_refuses_bad_default_size(fixture_dir, tmp_path, capsys, size):
    out = tmp_path / "out"
    assert main(["convert", "--model", str(fixture_dir / "model"), "--out", str(out), f"--default-size={size}"]) == 2
    _one_line_error(capsys, "--default-size", "multiple of 32")
    assert not out.exists()


def test_convert_default_size_beyond_the_vocabulary(fixture_dir, tmp_path):
    from diffusers_lumina_mgpt.convert import convert_checkpoint

    with pytest.raises(ValueError, match="default_size 8192.*grid tokens"):
        convert_checkpoint(fixture_dir / "model", tmp_path / "out", default_size=8192)


def test_eval_and_shapes_mistakes(tiny_pipe_dir, tmp_path, afile, capsys):
    assert main(["eval", "shapes", "--model", str(tiny_pipe_dir), "--num-inference-steps", "30", "--n", "1",
                 "--no-progress"]) == 2
    _one_line_error(capsys, "--num-inference-steps does not apply to LuminaMGPTPipeline")
    assert main(["eval", "shapes", "--model", str(tiny_pipe_dir), "--device", "nonsense"]) == 2
    _one_line_error(capsys, "not a device")
    assert main(["eval", "shapes", "--ground-truth", "--json", str(afile / "x.json")]) == 2
    _one_line_error(capsys, "is a file")
    assert main(["shapes", "make", "--task", "t2i", "--n", "1", "--out", str(afile)]) == 2
    _one_line_error(capsys, "is a file")
    assert main(["edit", str(afile), "x", "--task", "nonsense", "--model", str(tiny_pipe_dir),
                 "-o", str(tmp_path / "b.png")]) == 2
    _one_line_error(capsys, "unknown task 'nonsense'")
    assert main(["chat", "hi", "--model", str(tiny_pipe_dir), "--out-dir", str(afile)]) == 2
    _one_line_error(capsys, "is a file")


def test_shapes_examples_writes_only_where_asked(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(["shapes", "examples"])  # --out is required: nothing lands in the working tree by default
    assert exc.value.code == 2
    assert "--out" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_debug_shows_the_traceback(tmp_path):
    cmd = [sys.executable, "-m", "diffusers_lumina_mgpt", "generate", "a", "--model", str(tmp_path), "-o", "x.png"]
    plain = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr
    assert len(plain.stderr.strip().splitlines()) == 1 and "model_index.json" in plain.stderr
    debug = subprocess.run(cmd + ["--debug"], capture_output=True, text=True, cwd=tmp_path)
    assert debug.returncode == 1 and "Traceback" in debug.stderr


def test_generate_json_output(tiny_pipe_dir, tmp_path, capsys):
    out = tmp_path / "sub" / "a.png"
    assert main(["generate", "a red circle", "--model", str(tiny_pipe_dir), "-o", str(out), "--json",
                 "--image-top-k", "1"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    record = json.loads(line)
    assert record["output"] == str(out) and record["num_forward_passes"] > 0
    assert json.loads(Image.open(out).info["lumina-mgpt"])["prompt"] == "a red circle"


def test_generate_keeps_the_folders_scheduler(fixture_dir, tmp_path, capsys):
    folder = tmp_path / "jacobi"
    assert main(["convert", "--model", str(fixture_dir / "model"), "--vqgan-ckpt", str(fixture_dir / "tokenizer/vqgan.ckpt"),
                 "--vqgan-config", str(fixture_dir / "tokenizer/vqgan.yaml"), "--out", str(folder),
                 "--default-size", "64", "--scheduler", "jacobi"]) == 0
    cfg = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    cfg["num_drafts"] = 5
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(cfg))
    capsys.readouterr()
    assert main(["generate", "a", "--model", str(folder), "-o", str(tmp_path / "a.png"), "--json"]) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["scheduler"] == "jacobi"
    from diffusers_lumina_mgpt import LuminaMGPTPipeline

    assert LuminaMGPTPipeline.from_pretrained(folder).scheduler.config.num_drafts == 5  # not reset
    assert main(["generate", "a", "--model", str(folder), "-o", str(tmp_path / "b.png"), "--json",
                 "--scheduler", "ar"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["scheduler"] == "ar"


def test_every_command_help_shows_an_example_and_its_defaults():
    import argparse

    from diffusers_lumina_mgpt.cli import build_parser

    def leaves(parser, path=()):
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            yield path, parser
        for action in subs:
            for name, child in action.choices.items():
                yield from leaves(child, (*path, name))

    commands = dict(leaves(build_parser()))
    assert {("generate",), ("edit",), ("chat",), ("convert",), ("eval", "shapes"), ("shapes", "make"), ("demo",),
            ("compare",), ("train",)} <= set(commands)
    for path, parser in commands.items():
        text = parser.format_help()
        assert "example" in text.lower(), f"`lumina-mgpt {' '.join(path)} --help` shows no example"
        has_defaults = any(a.default not in (None, False, argparse.SUPPRESS) and a.option_strings and a.help
                           for a in parser._actions)
        if has_defaults:
            assert "(default:" in text, f"`lumina-mgpt {' '.join(path)} --help` hides its defaults"
