"""Standalone training on the embedded default: held-out loss before/after 200 steps, time and peak memory.

    python -m bench.standalone_tiny      -> bench/results/standalone_tiny.json
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from app.learning.standalone import StandaloneConfig, run_standalone
from rich.console import Console

from app.common.telemetry import configure_logging
from bench.common import peak_rss_mib, save


def main() -> None:
    configure_logging("WARNING")
    cfg = StandaloneConfig(model="embedded:tiny", dataset="embedded:operator-0", steps=200, batch_size=8, lr=1e-3,
                           output_dir=Path(tempfile.mkdtemp()))
    summary = run_standalone(cfg)
    path = save("standalone_tiny", {
        "steps": cfg.steps, "batch_size": cfg.batch_size, "lr": cfg.lr,
        "initial_heldout_loss": summary.initial_heldout_loss, "final_heldout_loss": summary.final_heldout_loss,
        "final_over_initial": summary.final_heldout_loss / summary.initial_heldout_loss,
        "train_seconds": summary.seconds, "steps_per_second": cfg.steps / summary.seconds,
        "peak_rss_mib": peak_rss_mib(),
    })
    Console().print_json(path.read_text())


if __name__ == "__main__":
    main()
