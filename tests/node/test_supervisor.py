"""app.node.supervisor: the main process decides the exit code; the companion (the node's worker) is kept alive."""

import os
import signal

from app.node.supervisor import Companion, run


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


def test_with_a_log_file_the_console_gets_our_lines_and_flowers_warnings_the_file_everything(tmp_path, capfdbinary):
    output = [
        r"\033[92mINFO \033[0m:      Starting Flower SuperNode",
        "INFO:     Uvicorn running on http://127.0.0.1:34391",
        "Reducing the number of VLM layers to 4 ...",
        r"\033[93mWARNING \033[0m:   Connection attempt failed, retrying in 0.32 seconds",
        "2026-01-01T00:00:00.000000Z [info     ] message_served                 [app.node.worker] op=train",
        "2026-01-01T00:00:00.000000Z [error    ] reply_failed                   [app.federation.client_app] why=x",
    ]
    script = "".join(f"printf '{line}\\n'; " for line in output)
    seen = []
    log_file = tmp_path / "node" / "supernode.log"
    assert run(["sh", "-c", script], os.environ, watch=seen.append, log_file=log_file) == 0
    console = capfdbinary.readouterr().out.decode()
    for shown in ("\x1b[93mWARNING \x1b[0m:   Connection attempt failed", "message_served", "reply_failed"):
        assert shown in console
    for kept_to_the_file in ("Starting Flower SuperNode", "Uvicorn", "Reducing"):
        assert kept_to_the_file not in console
    assert len(log_file.read_text().splitlines()) == len(output) == len(seen)  # the file and `watch` see everything


def test_a_companion_asked_to_stop_is_not_reported_as_failed():
    helper = Companion(["sleep", "60"], os.environ, "worker")
    helper.tend()
    helper.signal(signal.SIGTERM)
    helper.process.wait()
    helper.tend()
    assert helper.process is None and helper.backoff == 1.0
    helper.tend()
    assert helper.starts == 1, "stopped for good"
