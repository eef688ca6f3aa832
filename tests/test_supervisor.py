"""app.supervisor: the main process decides the exit code; the companion (the node's worker) is kept alive."""

import os

from app.supervisor import Companion, run


def test_the_main_processs_exit_code_is_returned_and_the_companion_stopped():
    helper = Companion(["sleep", "60"], os.environ, "worker")
    helper.tend()
    assert run(["sh", "-c", "exit 7"], os.environ, helper=helper) == 7
    assert helper.process.poll() is not None


def test_a_companion_that_dies_is_started_again():
    helper = Companion(["sh", "-c", "exit 3"], os.environ, "worker")
    helper.tend()
    assert run(["sleep", "2.5"], os.environ, helper=helper) == 0
    assert helper.starts >= 2


def test_a_main_process_killed_by_a_signal_reports_it_as_a_shell_does():
    assert run(["sh", "-c", "kill -TERM $$"], os.environ) == 128 + 15


def test_watch_sees_each_line_of_the_commands_output_without_colour_codes(capfdbinary):
    lines = []
    assert run(["sh", "-c", r"printf '\033[91mERROR \033[0m: one\ntwo\n'; exit 1"], os.environ, watch=lines.append) == 1
    assert lines == ["ERROR : one", "two"]
    assert b"\x1b[91mERROR" in capfdbinary.readouterr().out  # passed through unchanged
