"""Shared by the benchmarks: where results go and what machine produced them."""

from __future__ import annotations

import datetime as dt
import os
import platform
import resource
from pathlib import Path

from app.common.files import write_json_atomic

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    import torch

    return {
        "date": dt.date.today().isoformat(),
        "cpu_count": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def peak_rss_mib(children: bool = False) -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF)
    return round(usage.ru_maxrss / 1024, 1)  # Linux reports KiB


def save(name: str, result: dict) -> Path:
    path = RESULTS / f"{name}.json"
    write_json_atomic(path, {"machine": machine(), **result})
    return path


def figure(metric: str, target: float, measured: float | None, unit: str, note: str = "",
           higher_is_better: bool = False) -> dict:
    """One benchmark figure against its target; `measured` None: not measured, and `note` says why."""
    met = measured is not None and (measured >= target if higher_is_better else measured <= target)
    return {"metric": metric, "target": target, "measured": None if measured is None else round(measured, 3),
            "unit": unit, "met": met, **({"note": note} if note else {})}
