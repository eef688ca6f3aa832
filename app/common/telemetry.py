"""Logging: structlog to the console and, optionally, JSON lines to a file, with secrets redacted everywhere.

The console is for what a user acts on: this project's own records, and other libraries' only from ERROR up. Their
warnings and chatter (torchcodec falling back to PyAV, Flower's INFO lines inside our processes, Python `warnings`)
go to the log files alone. `output_to` does the same for what C libraries write straight to the process's stderr.

Secrets (HF_TOKEN, WANDB_API_KEY, private keys) must never reach a log. The code never logs one on purpose; as
defense in depth, any event field whose name looks secret is masked, and wherever they appear inside a string, so
are the current values of the known secret variables and of every environment variable named *_TOKEN, *_KEY or
*_SECRET, anything shaped like a Hugging Face token, and PEM private key blocks.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import structlog

SECRET_ENV_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "WANDB_API_KEY")
# A field named like a secret (hf_token, api_key); not one that merely mentions it (tokenizer_name, private_key_file).
_SECRET_KEY = re.compile(r"(token|secret|password|api_key|private_key)$", re.IGNORECASE)
_SECRET_ENV_NAME = re.compile(r"_(TOKEN|KEY|SECRET)$", re.IGNORECASE)
# Shorter values of variables that merely look secret are left alone: masking "true" or "1" everywhere would garble
# the logs and protect nothing.
MIN_SECRET_LENGTH = 8
_HF_TOKEN_SHAPE = re.compile(r"hf_[A-Za-z0-9]{20,}")
_PRIVATE_KEY_BLOCK = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(-----END [A-Z ]*PRIVATE KEY-----|$)", re.DOTALL)
REDACTED = "***"
# Loggers of this project: its modules (app.*), the CLI, and a module run with `python -m`.
OWN_LOGGERS = ("app", "fedvla", "__main__")


def secret_values() -> list[str]:
    """The values to mask, read from the environment at each call (a token may be set after logging starts),
    longest first so a secret containing another is masked whole."""
    values = {os.environ.get(name, "") for name in SECRET_ENV_VARS}
    values |= {v for k, v in os.environ.items() if _SECRET_ENV_NAME.search(k) and len(v) >= MIN_SECRET_LENGTH}
    return sorted((v for v in values if len(v) >= 4), key=len, reverse=True)


def redact_text(text: str) -> str:
    for value in secret_values():
        text = text.replace(value, REDACTED)
    return _PRIVATE_KEY_BLOCK.sub(REDACTED, _HF_TOKEN_SHAPE.sub(REDACTED, text))


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {k: REDACTED if _SECRET_KEY.search(str(k)) else _redact_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_redact_value(v) for v in value)
    return value


def redact_secrets(_logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: mask secret-looking fields and secret values inside any field."""
    return {
        key: REDACTED if _SECRET_KEY.search(key) and value not in (None, "") else _redact_value(value)
        for key, value in event_dict.items()
    }


class _RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact_text(super().format(record))


_SHARED_PROCESSORS = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
    redact_secrets,
]
_FOREIGN_PRE_CHAIN = [structlog.stdlib.ExtraAdder(), *_SHARED_PROCESSORS]


def for_console(record: logging.LogRecord) -> bool:
    """Whether a record is shown on the console (every record goes to the log files)."""
    return record.levelno >= logging.ERROR or record.name.partition(".")[0] in OWN_LOGGERS


def configure_logging(
    level: str = "INFO", log_file: Path | None = None, console: bool = True, app_log_file: Path | None = None
) -> None:
    """Route structlog and stdlib logging (Flower, LeRobot) to the console and optional JSON-lines files:
    `log_file` gets every record, `app_log_file` only this project's (loggers named app.*). The console shows
    what `for_console` lets through, or everything at DEBUG.

    Call once per process; calling again (say, with a log file once the run directory is known) replaces the
    handlers instead of adding to them.
    """
    structlog.configure(
        processors=[*_SHARED_PROCESSORS, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_fedvla", False):
            root.removeHandler(handler)
            handler.close()
    logging.captureWarnings(False)
    if console:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            structlog.stdlib.ProcessorFormatter(
                processors=[
                    structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()),
                ],
                foreign_pre_chain=_FOREIGN_PRE_CHAIN,
            )
        )
        if level != "DEBUG":
            handler.addFilter(for_console)
        handler._fedvla = True  # type: ignore[attr-defined]
        handler._fedvla_console = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    if log_file is not None:
        add_log_file(log_file)
    if app_log_file is not None:
        add_log_file(app_log_file, only="app")
    root.setLevel(level)
    for chatty in ("httpx", "httpcore", "filelock", "urllib3"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    # Foreign records are formatted by our handlers; make sure their text is redacted too.
    for handler in root.handlers:
        if not getattr(handler, "_fedvla", False) and handler.formatter is not None:
            handler.setFormatter(_RedactingFormatter(handler.formatter._fmt))


def add_log_file(path: Path, only: str | None = None) -> None:
    """Also write records as JSON lines to `path` (appended): every record, or with `only`, that logger's and its
    children's. Replaced, with the console, by the next `configure_logging`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.dict_tracebacks,
                structlog.processors.JSONRenderer(),
            ],
            foreign_pre_chain=_FOREIGN_PRE_CHAIN,
        )
    )
    if only is not None:
        handler.addFilter(logging.Filter(only))
    else:
        # Python `warnings` (deprecations and the like in libraries) become records, kept off the console by
        # `for_console`; only where a file receives them, so that none is lost.
        logging.captureWarnings(True)
    handler._fedvla = True  # type: ignore[attr-defined]
    logging.getLogger().addHandler(handler)


@contextlib.contextmanager
def output_to(path: Path) -> Iterator[None]:
    """Send whatever this process writes to stdout and stderr meanwhile to `path` (appended), at the file
    descriptor level: C libraries (ffmpeg's SVT-AV1 encoder, as LeRobot writes videos) write there directly, past
    any Python filter. This project's console log lines still reach the console."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    console = next((h for h in logging.getLogger().handlers if getattr(h, "_fedvla_console", False)), None)
    # A console handler writing to fd 2 (not, say, a test's capture) moves to a copy of the original fd 2.
    moved = console is not None and _writes_to_fd(console.stream, 2)
    terminal = open(saved[2], "w", encoding="utf-8", errors="replace", closefd=False) if moved else None  # noqa: SIM115
    previous = console.setStream(terminal) if terminal is not None else None
    try:
        with open(path, "ab") as sink:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        if terminal is not None:
            console.setStream(previous)
            terminal.close()
        for fd, copy in saved.items():
            os.dup2(copy, fd)
            os.close(copy)


def _writes_to_fd(stream: Any, fd: int) -> bool:
    try:
        return stream.fileno() == fd
    except (AttributeError, OSError, ValueError):  # no file descriptor behind it (io.StringIO, a capture)
        return False


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name)
