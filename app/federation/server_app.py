"""ServerApp: the run-config in, the run's outputs directory, logging, then the rounds (app.federation.rounds).

Flower starts this app once per run (`flwr run`). A run carried on with `resume-from = "latest"` reopens the
outputs directory of the interrupted run instead of creating one.
"""

from __future__ import annotations

from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from app.common.config import RunConfig
from app.common.telemetry import configure_logging, get_logger
from app.federation.resume import LATEST

log = get_logger(__name__)
app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    from app.federation.resume import find_unfinished_run
    from app.federation.rounds import federate
    from app.learning.report import RunOutputs

    run = RunConfig.from_mapping(context.run_config)
    interrupted = find_unfinished_run(Path(run.output_dir), context.run_config) if run.resume_from == LATEST else None
    if interrupted is not None:
        outputs = RunOutputs.reopen(interrupted, run_id=context.run_id)
    else:
        outputs = RunOutputs.create(Path(run.output_dir), context.run_config, run_id=context.run_id)
    configure_logging(log_file=outputs.run_log, app_log_file=outputs.server_log)
    log.info("run_start", outputs=str(outputs.root), run_config=dict(context.run_config),
             continues=interrupted is not None)
    try:
        federate(grid, run, outputs, dict(context.run_config), context.run_id)
    except Exception:
        log.exception("run_failed", outputs=str(outputs.root))
        raise
