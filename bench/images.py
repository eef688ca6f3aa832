"""The compose images: their sizes, how long `docker compose build` takes after a change to the app's code (the
layer order and cache mounts are meant to make that seconds, not a reinstall of torch), and how long a Python
process in the app image takes to import what it needs, as the unprivileged user it runs as: the
`flwr-clientapp` that Flower starts for every message, and a node's warm worker (median of 5 starts each).

    python -m bench.images          # needs Docker; builds the images first if they are missing

Writes bench/results/images.json. The code change is a comment appended to app/__init__.py and removed again.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from bench.common import save

REPO = Path(__file__).resolve().parent.parent
IMAGES = ("fedvla-app:dev", "fedvla-superlink:dev", "fedvla-prometheus:dev")


def compose_build() -> float:
    started = time.perf_counter()
    subprocess.run(["docker", "compose", "build", "--quiet"], cwd=REPO, check=True, capture_output=True)
    return time.perf_counter() - started


# what each kind of process imports before it does anything
STARTUPS = {
    "flwr-clientapp, every message": "import flwr.supernode.cli.flwr_clientapp, app.federation.client_app",
    "warm worker, every node start": "import app.node.worker, torch, lerobot.policies.smolvla.modeling_smolvla",
}
MEDIAN_OF = """
import statistics, subprocess, sys, time
def once():
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", sys.argv[1]], check=True)
    return time.perf_counter() - started
print(statistics.median(once() for _ in range(5)))
"""


def startup_seconds(image: str, statement: str) -> float:
    run = subprocess.run(["docker", "run", "--rm", "--entrypoint", "python", "--workdir", "/tmp", image, "-c",
                          MEDIAN_OF, statement], check=True, capture_output=True, text=True)
    return round(float(run.stdout), 2)


def image_size(image: str) -> int:
    inspect = subprocess.run(["docker", "image", "inspect", image], check=True, capture_output=True, text=True)
    return int(json.loads(inspect.stdout)[0]["Size"])


def main() -> None:
    compose_build()  # warm: everything cached
    unchanged = compose_build()
    probe = REPO / "app" / "__init__.py"
    original = probe.read_text()
    probe.write_text(original + "# bench.images: a code change\n")
    try:
        after_code_change = compose_build()
    finally:
        probe.write_text(original)
    compose_build()  # back to the committed code
    result = {
        "rebuild_seconds_after_code_change": round(after_code_change, 1),
        "rebuild_seconds_unchanged": round(unchanged, 1),
        "image_bytes": {image: image_size(image) for image in IMAGES},
        "app_image_import_seconds": {what: startup_seconds(IMAGES[0], statement) for what, statement in STARTUPS.items()},
    }
    print(json.dumps(result, indent=2))
    print(f"written to {save('images', result)}")


if __name__ == "__main__":
    main()
