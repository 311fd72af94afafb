"""Where a newcomer looks (issue 9, item 15): off a board, PYNQ delivers the notebooks only with
--ignore-overlays; the command line's help, `lora-qta info` and the README quick start say so."""

from pathlib import Path

import pytest

from lora_qta.cli import main


def test_ignore_overlays_is_said_where_users_look(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "--ignore-overlays" in capsys.readouterr().out
    assert main(["info"]) == 0
    assert "pynq get-notebooks lora-qta -p DIR --ignore-overlays" in capsys.readouterr().out
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    quick = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    assert "pynq get-notebooks lora-qta -p ~/notebooks --ignore-overlays" in quick
