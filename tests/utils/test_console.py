"""The run's lines go through `say`, which a rank that does not speak for the run silences."""

from __future__ import annotations

from utils.console import say, silenced


def test_a_silenced_block_says_nothing_and_the_lines_after_it_show(capsys):
    say("before")
    with silenced():
        say("hidden")
        with silenced(False):  # the main rank's block: not silent
            say("inner")
        say("hidden again")
    say("after")
    assert capsys.readouterr().out.splitlines() == ["before", "inner", "after"]
