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
