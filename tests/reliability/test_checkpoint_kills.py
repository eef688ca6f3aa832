"""SIGKILL in the middle of checkpoint saves: whatever a kill leaves on disk, the loader never hands out an
incomplete or corrupt checkpoint, and the next save is not disturbed by the leftovers."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from app.learning import checkpoint
from tests.reliability.checkpoint_saver import REPLACED_ROUND

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
KILLS = 20
SEED = 20260917
# A kill lands after a random delay of up to this many save durations, so most land inside a save, spread over
# all of its steps (policy, processors, card, fsyncs, manifest, renames), and some between two saves.
DELAY_IN_SAVES = 3.0
# What the ServerApp writes into every checkpoint (app.federation.global_model.GlobalModel.save_checkpoint).
REQUIRED = {"config.json", "model.safetensors", "policy_preprocessor.json", "policy_postprocessor.json", "README.md",
            "metrics.json", "manifest.json"}


class SaverProcess:
    """tests/reliability/checkpoint_saver.py, driven over its stdin and stdout."""

    def __init__(self, work: Path):
        self.stderr = open(work / "saver.stderr", "w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.reliability.checkpoint_saver", str(work)], cwd=REPO, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr,
        )
        self.work = work

    def send(self, line: str) -> None:
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def receive(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            raise AssertionError("the saver died: " + (self.work / "saver.stderr").read_text()[-3000:])
        return json.loads(line)

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)
        self.stderr.close()


def problem(directory: Path) -> str | None:
    """Why `directory` is not a complete checkpoint, judged without app.learning.checkpoint's own verification: every
    required file is there, and the files are exactly those of the manifest, with its sizes and SHA-256."""
    try:
        files = json.loads((directory / "manifest.json").read_text())["files"]
    except (OSError, ValueError, KeyError) as exc:
        return f"no readable manifest: {exc}"
    present = {p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file()}
    if missing := REQUIRED - present:
        return f"missing {sorted(missing)}"
    if present != set(files) | {"manifest.json"}:
        return f"files {sorted(present)} are not the manifest's {sorted(files)}"
    for name, expected in files.items():
        data = (directory / name).read_bytes()
        if len(data) != expected["bytes"] or hashlib.sha256(data).hexdigest() != expected["sha256"]:
            return f"{name} does not match the manifest"
    return None


def load_problem(directory: Path, reference: dict | None) -> tuple[str | None, dict | None]:
    """Why the checkpoint the loader chose does not load as saved (None if it does), and the weights it loaded.
    Every save wrote the same weights: the first load is the `reference` for the others."""
    try:
        policy, _, _ = checkpoint.load_checkpoint(directory)
    except Exception as exc:  # a checkpoint the loader vouched for, and that does not load
        return f"{type(exc).__name__}: {exc}", None
    state = policy.state_dict()
    reference = reference or state
    if state.keys() != reference.keys() or not all(torch.equal(state[k], reference[k]) for k in state):
        return "its weights differ from the saved ones", state
    return problem(directory), state


def where_it_landed(progress: Path) -> tuple[bool, int | None]:
    """(whether the kill hit inside a save, the round that save was writing)."""
    lines = progress.read_text().splitlines() if progress.exists() else []
    if not lines:
        return False, None
    state, server_round = lines[-1].split()
    return state == "start", int(server_round)


def leftovers(models: Path) -> set[str]:
    """Temporary directories of interrupted saves (a staging directory, or a replaced version set aside)."""
    return {p.name for p in models.iterdir() if p.name.startswith(".checkpoint_round_")}


@pytest.mark.timeout(600)
def test_checkpoints_survive_sigkill_at_random_moments_of_a_save(tmp_path, ledger):
    saver = SaverProcess(tmp_path)
    models = tmp_path / "run" / "models"
    rng = random.Random(SEED)
    reference = None
    killed, corrupt_loaded, mid_save, replacing, left_behind, loads = 0, 0, 0, 0, 0, 0
    problems = []
    try:
        ready = saver.receive()
        save_seconds = statistics.median(ready["save_seconds"])
        for kill in range(KILLS):
            first_round = 1000 * (kill + 1)
            before = leftovers(models)
            saver.send(f"save {first_round}")
            pid = saver.receive()["pid"]
            time.sleep(rng.uniform(0.0, DELAY_IN_SAVES * save_seconds))
            os.kill(pid, signal.SIGKILL)
            if (gone := saver.receive())["signal"] != signal.SIGKILL:
                problems.append(f"kill {kill}: the child ended by itself ({gone}); see {tmp_path}/saver.stderr")
                break
            killed += 1
            inside, server_round = where_it_landed(tmp_path / f"progress_{first_round}.log")
            mid_save += inside
            replacing += inside and server_round == REPLACED_ROUND
            left_behind += bool(leftovers(models) - before)
            target = models / f"checkpoint_round_{server_round}"

            # Every checkpoint the loader lists is complete ...
            for _, listed in checkpoint.list_checkpoints(models):
                if (why := problem(listed)) is not None:
                    corrupt_loaded += 1
                    problems.append(f"kill {kill}: listed {listed.name}: {why}")
            # ... and resuming from the checkpoint the killed save was writing loads a complete one (that one, the
            # version it was replacing, or the newest earlier one), with every weight as saved.
            if server_round is None:
                continue
            usable = checkpoint.usable_checkpoint(target)
            why, state = load_problem(usable, reference)
            reference, loads = reference or state, loads + (state is not None)
            if why:
                corrupt_loaded += 1
                problems.append(f"kill {kill}: resumed from {usable.name}: {why}")

        # The saves after all those kills, into targets with leftovers beside them, complete and load.
        interrupted = sorted({int(name.split("-")[0].removeprefix(".checkpoint_round_")) for name in leftovers(models)})
        saver.send("final " + " ".join(str(n) for n in [REPLACED_ROUND, *interrupted]))
        saver.receive()
        final_problems = {n: problem(models / f"checkpoint_round_{n}") for n in [REPLACED_ROUND, *interrupted]}
        checkpoint.load_checkpoint(models / f"checkpoint_round_{REPLACED_ROUND}")
    finally:
        saver.close()

    ledger.book(f"checkpoint save SIGKILLed {KILLS}x ({mid_save} mid-save)", faults=killed,
                corrupt_loaded=corrupt_loaded)
    landed = (f"a save takes {save_seconds * 1000:.1f} ms (median); {mid_save} of {KILLS} kills hit a save "
              f"({replacing} of them replacing an existing checkpoint), {left_behind} left a temporary directory; "
              f"{loads} resumes loaded")
    assert killed == KILLS and corrupt_loaded == 0, [landed, *problems]
    assert mid_save >= KILLS // 2 and left_behind > 0, f"the kills must land inside saves to test anything: {landed}"
    assert not any(final_problems.values()), final_problems
    assert set(final_problems) <= {n for n, _ in checkpoint.list_checkpoints(models)}
