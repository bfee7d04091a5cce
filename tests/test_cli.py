"""The command line as a whole: documented commands, instant help, lazy TensorFlow."""

import subprocess
import sys

from tlcli.cli import app


def test_every_command_is_documented_with_an_example(cli):
    for command in app.registered_commands:
        doc = command.callback.__doc__ or ""
        assert doc.strip(), command.name
        assert "Example:" in doc, command.name
        name = command.name or command.callback.__name__
        result = cli([name, "--help"])
        assert result.exit_code == 0 and "Example:" in result.output


def test_help_and_backbones_do_not_import_tensorflow():
    code = ("import sys; from typer.testing import CliRunner; from tlcli.cli import app; r = CliRunner();"
            "assert r.invoke(app, ['--help']).exit_code == 0;"
            "assert r.invoke(app, ['backbones']).exit_code == 0;"
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'imported TF'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_backbones_table_lists_every_entry(cli):
    result = cli(["backbones"])
    assert result.exit_code == 0
    for name in ("xception", "mobilenet_v2", "convnext_xlarge", "efficientnetv2_l"):
        assert name in result.output


def test_python_dash_m_works():
    result = subprocess.run([sys.executable, "-m", "tlcli", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and "tlcli" in result.stdout


def test_augment_preview_command(cli, image_folder, tmp_path):
    result = cli(["augment-preview", image_folder, "-o", tmp_path / "p.png", "--samples", "2", "--image-size", "32"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "p.png").exists()
    bad = cli(["augment-preview", tmp_path / "nothing"])
    assert bad.exit_code == 2
