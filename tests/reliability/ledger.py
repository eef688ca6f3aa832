"""The reliability ledger: tests that inject faults into real processes and real files (tests/reliability/, and
the container test's secret scans) book what they did in the `ledger` fixture (tests/conftest.py); the session
ends with one table of faults injected, runs completed, rounds lost, corrupt checkpoints loaded and secrets found
(the last three must be 0), also written to $FEDVLA_RELIABILITY_SUMMARY when set. Under pytest-xdist each worker
books into its own ledger and hands its entries to the controller when it finishes (tests/conftest.py), so the
table covers every worker."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field

COLUMNS = ("faults", "runs_completed", "rounds_lost", "corrupt_loaded", "secrets_found")


@dataclass
class Entry:
    check: str
    faults: int = 0
    runs_completed: int = 0
    rounds_lost: int = 0
    corrupt_loaded: int = 0
    secrets_found: int = 0


@dataclass
class Ledger:
    entries: list[Entry] = field(default_factory=list)

    def book(self, check: str, **counts: int) -> Entry:
        """Adds what one check did; call it before asserting, so a failing check still shows in the table."""
        entry = Entry(check, **counts)
        self.entries.append(entry)
        return entry

    def dump(self, indent: int | None = None) -> str:
        return json.dumps([asdict(e) for e in self.entries], indent=indent)

    def merge(self, dumped: str) -> None:
        self.entries.extend(Entry(**e) for e in json.loads(dumped))

    def table(self) -> list[str]:
        width = max([len("check"), *(len(e.check) for e in self.entries)])
        header = f"{'check':<{width}}  " + "  ".join(f"{c:>14}" for c in COLUMNS)
        rows = [f"{e.check:<{width}}  " + "  ".join(f"{getattr(e, c):>14}" for c in COLUMNS) for e in self.entries]
        totals = {c: sum(getattr(e, c) for e in self.entries) for c in COLUMNS}
        total = f"{'total':<{width}}  " + "  ".join(f"{totals[c]:>14}" for c in COLUMNS)
        return [header, "-" * len(header), *rows, "-" * len(header), total]


LEDGER = Ledger()


def write_summary(terminalreporter) -> None:
    if not LEDGER.entries:
        return
    terminalreporter.section("reliability summary (rounds lost, corrupt loaded, secrets found must be 0)")
    for line in LEDGER.table():
        terminalreporter.write_line(line)
    if path := os.environ.get("FEDVLA_RELIABILITY_SUMMARY"):
        with open(path, "w") as f:
            f.write(LEDGER.dump(indent=2))
