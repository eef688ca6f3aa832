"""The container module's images: one `docker compose build` per session, started in the background by
tests/containers/conftest.py once the session's tests are collected, and waited for by the module's fixture."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FAKE_TOKEN = "hf_ContainerLeakCheck0123456789abcdefXYZ"  # in the build's and the containers' environment; must appear
# in no image, layer or log


def docker_ready() -> bool:
    try:
        return all(subprocess.run(cmd, capture_output=True, timeout=30).returncode == 0
                   for cmd in (["docker", "info"], ["docker", "compose", "version"]))
    except (OSError, subprocess.TimeoutExpired):
        return False


def trust_this_machines_extra_cas() -> None:
    """A build behind a TLS-intercepting proxy needs its CA (images/ca-certificates/README.md): the CAs this
    machine added locally are exactly those."""
    for cert in Path("/usr/local/share/ca-certificates").glob("*.crt"):
        shutil.copy(cert, REPO / "images" / "ca-certificates" / cert.name)


@dataclass
class ImageBuild:
    """One `docker compose build` of compose.yaml's images, its output in `log`."""

    log: Path
    process: subprocess.Popen | None = None
    started: float = field(default_factory=time.monotonic)

    def start(self) -> ImageBuild:
        trust_this_machines_extra_cas()
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(["docker", "compose", "build"], cwd=REPO, stdout=out,
                                            stderr=subprocess.STDOUT, start_new_session=True,
                                            env={**os.environ, "HF_TOKEN": FAKE_TOKEN})
        return self

    def wait(self, timeout: float) -> None:
        """Until the build has ended; raises with the end of its output if it failed or is still running at
        `timeout` seconds after it started."""
        try:
            code = self.process.wait(timeout=max(1.0, timeout - (time.monotonic() - self.started)))
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = f"still running after {timeout:.0f} s"
        if code != 0:
            raise AssertionError(f"docker compose build: {code}\n{self.log.read_text(errors='replace')[-5000:]}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()


background: ImageBuild | None = None  # set by the conftest; a module of its own, so that pytest's importing of
# conftests gives the fixture the same object


def image_build(log: Path) -> ImageBuild:
    """The session's image build: the one started in the background, or else one started now."""
    return background or ImageBuild(log).start()
