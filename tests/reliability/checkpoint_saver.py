"""The process that test_checkpoint_kills.py SIGKILLs: it saves checkpoints exactly as the ServerApp does
(app.federation.global_model.GlobalModel.save_checkpoint: the tiny embedded policy, its processors with the federation's stats, the
model card, metrics.json, the manifest), back to back, until it is killed.

Importing torch and LeRobot and building the policy takes seconds, a save about 10 ms: so the policy is built once,
and each kill's victim is a child forked from this process, which saves until the test kills it.

    python -m tests.reliability.checkpoint_saver <work dir>

Protocol, one JSON object per line on stdout: {"ready": true, "save_seconds": [...]} once the policy is built and
a few saves were timed; then, for each line "save <first round>" on stdin, {"pid": <child>} as the child starts and
{"signal": <n>, "exit": <code>} once it is gone; for "final <round> <round>...", those rounds are saved here (not
killed) and {"saved": [...]} answered. The child alternates a new round (first round, first round + 1, ...) with
replacing REPLACED_ROUND, so both ways of writing a checkpoint get killed. Before and after each save it appends
"start N" / "done N" to <work dir>/progress_<first round>.log: the test learns where each kill landed.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path

REPLACED_ROUND = 1
TIMED_SAVES = 6


class Saver:
    def __init__(self, work: Path):
        import torch

        from app.common.config import EMBEDDED_OVERRIDES, RunConfig
        from app.federation.global_model import GlobalModel
        from app.learning.learner import flatten_stats
        from app.learning.report import RunOutputs

        torch.set_num_threads(1)  # no thread pools for the forked children to inherit half-alive
        self.server = GlobalModel.build(RunConfig.from_mapping(EMBEDDED_OVERRIDES))
        self.stats = flatten_stats(self.server.data.meta.stats)
        self.arrays = self.server.arrays()
        self.outputs = RunOutputs(work / "run")
        self.work = work
        self.saves = 0

    def save(self, server_round: int) -> None:
        self.saves += 1  # every save's metrics differ, so a replaced checkpoint's files change
        summary = {"round": server_round, "train-loss": 1.0 / self.saves}
        self.server.save_checkpoint(self.arrays, self.stats, self.outputs, summary,
                              {"operator_0": "embedded:operator-0"}, None)

    def save_until_killed(self, first_round: int) -> None:
        with open(self.work / f"progress_{first_round}.log", "a", buffering=1) as progress:
            server_round = first_round
            while True:
                for target in (server_round, REPLACED_ROUND):
                    progress.write(f"start {target}\n")
                    self.save(target)
                    progress.write(f"done {target}\n")
                server_round += 1


def main(work: Path) -> None:
    from app.common.telemetry import configure_logging

    # LeRobot prints to stdout: the protocol gets the real stdout to itself, everything else goes to stderr.
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    configure_logging(log_file=work / "saver.log", console=False)
    saver = Saver(work)
    timings = []
    for _ in range(TIMED_SAVES):
        started = time.perf_counter()
        saver.save(REPLACED_ROUND)
        timings.append(time.perf_counter() - started)
    protocol.write(json.dumps({"ready": True, "save_seconds": timings}) + "\n")
    for line in sys.stdin:
        command, *rounds = line.split()
        if command == "final":
            for server_round in rounds:
                saver.save(int(server_round))
            protocol.write(json.dumps({"saved": rounds}) + "\n")
            continue
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            try:
                saver.save_until_killed(int(rounds[0]))
            except BaseException:
                traceback.print_exc()
            os._exit(1)  # only a kill may end a child; never the parent's cleanup in a child
        protocol.write(json.dumps({"pid": pid}) + "\n")
        _, status = os.waitpid(pid, 0)
        protocol.write(json.dumps({"signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0,
                                   "exit": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None}) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
