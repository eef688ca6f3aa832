import json
import logging

from app.common.telemetry import configure_logging, get_logger, redact_text


def test_secret_values_and_fields_never_reach_the_log(tmp_path, monkeypatch, capsys):
    token = "hf_" + "a1B2c3D4e5F6g7H8i9J0kLmNoPqR"
    monkeypatch.setenv("HF_TOKEN", token)
    monkeypatch.setenv("WANDB_API_KEY", "wandb-secret-value-123")
    log_file = tmp_path / "run.log"
    configure_logging(log_file=log_file)
    log = get_logger("test")
    log.info("pushing", token=token, repo="me/model", note=f"using {token}", headers={"authorization": "x", "api_key": "k"})
    log.info("wandb", detail="key is wandb-secret-value-123")
    logging.getLogger("flwr").warning("stdlib record with %s", token)
    for handler in logging.getLogger().handlers:
        handler.flush()
    text = log_file.read_text() + capsys.readouterr().err
    assert token not in text
    assert "wandb-secret-value-123" not in text
    assert "me/model" in text
    records = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert records[0]["token"] == "***"
    configure_logging()


def test_token_shaped_strings_are_masked_even_when_not_in_env(monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    assert redact_text("token hf_abcdefghijklmnopqrstuvwxyz123 here") == "token *** here"


def test_values_of_any_token_key_or_secret_variable_are_masked_in_every_event_field(monkeypatch):
    from app.common.telemetry import redact_secrets

    monkeypatch.setenv("WANDB_API_KEY", "wandb-0123456789abcdef")
    monkeypatch.setenv("ACME_REGISTRY_TOKEN", "acme-tok-31337")
    monkeypatch.setenv("FEDVLA_S3_SECRET", "s3-secret-value")
    monkeypatch.setenv("FEDVLA_FLAG_KEY", "short")  # under 8 characters: masking it would garble every log
    monkeypatch.setenv("FEDVLA_NOTE", "not-a-secret-value")  # a name that does not look secret
    event = {
        "event": "upload failed: acme-tok-31337 rejected",
        "detail": ["wandb-0123456789abcdef", {"url": "s3://bucket?sig=s3-secret-value"}],
        "hint": "short and not-a-secret-value stay",
    }
    redacted = redact_secrets(None, "info", event)
    assert redacted == {
        "event": "upload failed: *** rejected",
        "detail": ["***", {"url": "s3://bucket?sig=***"}],
        "hint": "short and not-a-secret-value stay",
    }


def test_a_private_key_block_is_masked_whole():
    pem = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIBx2c2VjcmV0\n-----END EC PRIVATE KEY-----"
    assert redact_text(f"loaded key {pem} from disk") == "loaded key *** from disk"
    assert redact_text(f"truncated {pem[:40]}") == "truncated ***"


def test_the_console_shows_our_records_and_others_errors_while_the_file_gets_everything(tmp_path, capsys):
    import warnings

    log_file = tmp_path / "run.log"
    configure_logging(log_file=log_file)
    get_logger("app.ops.demo").info("phase_done")
    logging.getLogger("lerobot.utils.import_utils").warning("torchcodec cannot be loaded, falling back to pyav")
    logging.getLogger("flwr").info("flower chatter")
    logging.getLogger("flwr").error("flower failed")
    warnings.warn("a deprecation nobody here can act on", DeprecationWarning, stacklevel=1)
    for handler in logging.getLogger().handlers:
        handler.flush()
    console = capsys.readouterr().err
    assert "phase_done" in console and "flower failed" in console
    for quiet in ("torchcodec", "flower chatter", "deprecation"):
        assert quiet not in console
    events = [json.loads(line)["event"] for line in log_file.read_text().splitlines()]
    assert events[:4] == ["phase_done", "torchcodec cannot be loaded, falling back to pyav", "flower chatter",
                          "flower failed"]
    assert "a deprecation nobody here can act on" in events[4]
    configure_logging()


def test_at_debug_the_console_shows_everything(capsys):
    configure_logging("DEBUG")
    logging.getLogger("lerobot").warning("third-party warning")
    assert "third-party warning" in capsys.readouterr().err
    configure_logging()


OUTPUT_TO_SCRIPT = """
import os, sys
from pathlib import Path
from app.common.telemetry import configure_logging, get_logger, output_to

configure_logging()
log = get_logger("app.test")
with output_to(Path(sys.argv[1])):
    os.write(2, b"Svt[info]: encoder chatter on fd 2\\n")
    os.write(1, b"chatter on fd 1\\n")
    print("a library's print")
    log.info("our_phase_line")
log.info("after")
print("stdout is back")
"""


def test_output_to_takes_fd_level_chatter_to_its_file_and_keeps_our_lines_on_the_console(tmp_path):
    import subprocess
    import sys

    output = tmp_path / "logs" / "chatter.log"
    result = subprocess.run([sys.executable, "-c", OUTPUT_TO_SCRIPT, str(output)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert "our_phase_line" in result.stderr and "after" in result.stderr
    assert "chatter" not in result.stderr + result.stdout and "print" not in result.stdout
    assert result.stdout == "stdout is back\n"
    assert output.read_text().splitlines() == ["Svt[info]: encoder chatter on fd 2", "chatter on fd 1",
                                               "a library's print"]
