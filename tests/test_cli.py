import subprocess
import sys

from diffusers_lumina_mgpt import __version__
from diffusers_lumina_mgpt.cli import main


def test_version(capsys):
    try:
        main(["--version"])
    except SystemExit as exc:
        assert exc.code == 0
    assert __version__ in capsys.readouterr().out


def test_module_help():
    out = subprocess.run([sys.executable, "-m", "diffusers_lumina_mgpt", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    assert "lumina-mgpt" in out.stdout


def test_edit_and_chat_commands(tiny_pipe_dir, tmp_path, capsys, monkeypatch):
    import io

    from PIL import Image

    scene = tmp_path / "scene.png"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(scene)
    out = tmp_path / "edited.png"
    assert main(["edit", str(scene), "Make it blue.", "--model", str(tiny_pipe_dir), "-o", str(out)]) == 0
    assert Image.open(out).size == (64, 64)
    assert main(["edit", str(scene), "--task", "denoise", "--model", str(tiny_pipe_dir), "-o", str(out)]) == 0
    assert main(["edit", str(tmp_path / "missing.png"), "x", "--model", str(tiny_pipe_dir), "-o", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err
    # one message, then a stdin session with an attached image
    assert main(["chat", "Describe this image. <|image|>", "--image", str(scene), "--model", str(tiny_pipe_dir),
                 "--max-new-tokens", "4"]) == 0
    assert capsys.readouterr().out.strip()
    monkeypatch.setattr("sys.stdin", io.StringIO(f"/image {scene}\nWhat is this?\n/reset\nHello\n"))
    assert main(["chat", "--model", str(tiny_pipe_dir), "--max-new-tokens", "3", "--out-dir", str(tmp_path)]) == 0
    assert len([line for line in capsys.readouterr().out.splitlines() if line.strip()]) >= 1
