import json
import logging

from app.telemetry import configure_logging, get_logger, redact_text


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
    from app.telemetry import redact_secrets

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
