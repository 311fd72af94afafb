"""The README and CI stay true to the code."""

import re
from pathlib import Path

from lora_qta.hw.config import config
from lora_qta.hw.generate import register_table
from lora_qta.hw.resources import resource_table

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def test_readme_register_map_is_the_generated_one():
    block = re.search(r"<!-- regmap:begin -->\n(.*?)<!-- regmap:end -->", README, re.S).group(1)
    assert block == register_table(), "README register map is stale: regenerate with lora-qta config regmap"


def test_readme_resource_table_is_the_generated_one():
    block = re.search(r"<!-- resources:begin -->\n(.*?)<!-- resources:end -->", README, re.S).group(1)
    assert block == resource_table(), "README resource table is stale: regenerate with lora-qta config resources"


def test_readme_commands_are_make_targets_and_ci_runs_the_test_command():
    cmds = re.findall(r"^make (\w+)\s", README, re.M)
    assert cmds[:2] == ["run", "test"]
    makefile = (ROOT / "Makefile").read_text()
    for target in cmds:
        assert re.search(rf"^{target}:", makefile, re.M), target
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, re.M)


def test_readme_names_every_board_of_the_configuration():
    for b in config().boards.values():
        assert b.part.split("-")[0][:7].upper()[:6] in README.upper() or b.name.upper() in README.upper()
