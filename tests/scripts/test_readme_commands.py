"""Every stage and grid command printed in the README's shell blocks (quick start, released
checkpoints, the essential notebook, relic's runs, reproduce.py's grids...) is accepted by that
script's parser as it stands."""

from __future__ import annotations

import re
import shlex

import pytest

import reproduce
from experiments import cli, evaluation_cli
from tests.helpers import REPO

STAGE_PARSERS = {
    "train_unsupervised.py": cli.stage1_parser,
    "train_linear_evaluation.py": evaluation_cli.stage2_parser,
    "test.py": evaluation_cli.stage3_parser,
}
PARSERS = {**STAGE_PARSERS, "reproduce.py": reproduce.parser}


def readme_commands() -> list[list[str]]:
    readme = (REPO / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", readme, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if len(words) > 1 and words[0].endswith("python") and words[1] in PARSERS:
                commands.append(words[1:])
    return commands


def test_the_readme_shows_the_stages_commands():
    scripts = [command[0] for command in readme_commands()]
    assert all(scripts.count(script) >= 4 for script in STAGE_PARSERS), scripts
    assert scripts.count("reproduce.py") >= 2, scripts


@pytest.mark.parametrize("command", readme_commands(), ids=lambda command: " ".join(command)[:80])
def test_a_readme_command_parses(command):
    script, *argv = command
    PARSERS[script]().parse_args(argv)  # a bad flag or value exits with status 2
