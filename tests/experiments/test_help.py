"""`--help` of the three stages: every flag has a help text that states its default (or that
it is required)."""

from __future__ import annotations

import argparse

import pytest

from experiments import cli, evaluation_cli

PARSERS = [cli.stage1_parser, evaluation_cli.stage2_parser, evaluation_cli.stage3_parser]


@pytest.mark.parametrize("make_parser", PARSERS, ids=["stage1", "stage2", "stage3"])
def test_every_flag_has_help_with_its_default(make_parser):
    parser = make_parser()
    formatter = parser._get_formatter()
    missing = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        text = formatter._expand_help(action) if action.help else ""
        if not text.strip() or not ("default" in text or (action.required and "(required)" in text)):
            missing.append(action.option_strings[0])
    assert not missing, f"flags without help or default: {missing}"


@pytest.mark.parametrize(
    "make_parser,flag,shown",
    [
        (cli.stage1_parser, "--dataset", "(default: cifar10)"),
        (cli.stage1_parser, "--backbone", "(default: conv4)"),
        (cli.stage1_parser, "--method", "(default: relationnet)"),
        (cli.stage1_parser, "--seed", "(default: -1)"),
        (cli.stage1_parser, "--id", "(default: none)"),
        (cli.stage1_parser, "--overwrite", "(default: off)"),
        (cli.stage1_parser, "--relation_loss", "(default focal)"),
        (evaluation_cli.stage2_parser, "--epochs", "(default 100;"),
        (evaluation_cli.stage2_parser, "--id", "(default: none)"),
        (evaluation_cli.stage2_parser, "--checkpoint", "(required)"),
        (evaluation_cli.stage3_parser, "--map_points", "(default: 2000)"),
    ],
)
def test_help_output_shows_the_default(make_parser, flag, shown, capsys):
    with pytest.raises(SystemExit):
        make_parser().parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    text = text[text.index("options:") :]  # past the usage line
    entry = text[text.index(flag + " ") :]
    assert shown in entry[:600], entry[:600]


def test_the_batch_default_in_the_help_is_read_from_the_methods():
    from experiments.cli import method_batch_defaults
    from methods import METHODS

    common, *others = method_batch_defaults().removeprefix("the method's: ").split("; ")
    named = {}
    for other in others:
        names, size = other.rsplit(" ", 1)
        named.update(dict.fromkeys(names.split(", "), int(size)))
    assert {name: named.get(name, int(common)) for name in METHODS} == {
        name: method.default_batch_size for name, method in METHODS.items()
    }
    assert named.get("byol", int(common)) == 256  # not the 128 of the paper's methods
    assert {int(common), *named.values()} == {128, 256}
