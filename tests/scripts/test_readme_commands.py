"""The documentation as a newcomer follows it: every stage and grid command printed in the shell
blocks of README.md and docs/*.md (quick start, released checkpoints, the essential notebook,
relic's runs, reproduce.py's grids...) is accepted by that script's parser as it stands, and
every relative link of those pages (a file, a folder, a heading) resolves."""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from pathlib import Path

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
PAGES = ["README.md", *sorted(str(path.relative_to(REPO)) for path in (REPO / "docs").glob("*.md"))]


def documented_commands(page: str) -> list[list[str]]:
    """The commands of a page's ```bash blocks that run a stage or reproduce.py, in order, as
    words from the script's name on."""
    text = (REPO / page).read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):  # VARIABLE=value before the command
                words = words[1:]
            if len(words) > 1 and words[0].endswith("python") and words[1] in PARSERS:
                commands.append(words[1:])
    return commands


def all_commands() -> list[tuple[str, list[str]]]:
    return [(page, command) for page in PAGES for command in documented_commands(page)]


def test_the_documentation_shows_the_stages_commands():
    scripts = [command[0] for _, command in all_commands()]
    assert all(scripts.count(script) >= 4 for script in STAGE_PARSERS), scripts
    assert scripts.count("reproduce.py") >= 2, scripts


def test_the_readme_starts_with_the_two_commands():
    first_block = re.search(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), re.S).group(1)
    commands = [shlex.split(line, comments=True) for line in first_block.splitlines()]
    assert commands == [["bash", "quickstart.sh"], ["bash", ".ci/run"]]
    assert (REPO / "quickstart.sh").is_file() and (REPO / ".ci" / "run").is_file()


@pytest.mark.parametrize("page,command", all_commands(), ids=lambda value: " ".join(value)[:80])
def test_a_documented_command_parses(page, command):
    script, *argv = command
    PARSERS[script]().parse_args(argv)  # a bad flag or value exits with status 2


def anchors(page: Path) -> Iterator[str]:
    """The anchors GitHub gives a page's headings: lower case, punctuation but '-' and '_'
    dropped, spaces as '-', a repeated one suffixed -1, -2, ..."""
    seen: dict[str, int] = {}
    for heading in re.findall(r"^#{1,6} +(.+?) *$", without_code(page.read_text()), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        seen[slug] = seen.get(slug, -1) + 1
        yield slug if seen[slug] == 0 else f"{slug}-{seen[slug]}"


def without_code(text: str) -> str:
    return re.sub(r"```.*?```", "", text, flags=re.S)


def relative_links(page: str) -> list[str]:
    targets = re.findall(r"\]\(([^)\s]+)\)", without_code((REPO / page).read_text()))
    return [target for target in targets if not re.match(r"[a-z]+:", target)]


@pytest.mark.parametrize("page", PAGES)
def test_every_relative_link_resolves(page):
    links = relative_links(page)
    broken = []
    for link in links:
        path, _, anchor = link.partition("#")
        target = (REPO / page).parent / path if path else REPO / page
        if not target.exists() or REPO not in target.resolve().parents and target.resolve() != REPO:
            broken.append(link)
        elif anchor and (target.suffix != ".md" or anchor not in set(anchors(target))):
            broken.append(link)
    assert not broken, f"{page}: {broken}"


def test_the_readme_reaches_every_docs_page():
    linked = {(REPO / link.partition("#")[0]).resolve() for link in relative_links("README.md")}
    assert {(REPO / page).resolve() for page in PAGES[1:]} <= linked


def test_anchors_follow_githubs_rules(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Reproducing the paper: `reproduce.py`\n## Tests\n```\n# not a heading\n```\n## Tests\n")
    assert list(anchors(page)) == ["reproducing-the-paper-reproducepy", "tests", "tests-1"]
