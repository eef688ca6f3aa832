"""The container module runs last, and its images build in the background from the moment the session's tests are
collected: a cold `docker compose build` is mostly downloads and disk writes, which overlap the other modules'
federations instead of adding to them; the module's fixture waits for that build.

Under pytest-xdist a worker builds in the foreground when the fixture asks, as no one process would hold the
background build for every worker.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from tests.containers import images

HERE = Path(__file__).resolve().parent


def in_this_directory(item) -> bool:
    return HERE in item.path.parents


def pytest_collection_modifyitems(items):
    items.sort(key=in_this_directory)  # stable: the container module last, everything else in its order


def pytest_collection_finish(session):
    if (any(map(in_this_directory, session.items)) and not hasattr(session.config, "workerinput")
            and not session.config.option.collectonly and images.docker_ready()):
        log = Path(tempfile.gettempdir()) / f"fedvla-image-build-{os.getpid()}.log"
        images.background = images.ImageBuild(log).start()


def pytest_sessionfinish():
    if images.background is not None:
        images.background.stop()
