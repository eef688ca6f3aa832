"""What the commands' parsers share: one-line errors, positive numbers, the federation's settings a dataset is
checked against."""

from __future__ import annotations

import argparse


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line instead of usage + message
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def add_federation_settings(p) -> None:
    """The run-config settings a dataset is checked against: `fedvla check` and `fedvla node` share them."""
    p.add_argument("--model", default=None, help="the federation's `model` (default lerobot/smolvla_base)")
    p.add_argument("--fps", type=positive_int, default=30, help="the federation's `fps` (default 30)")
    p.add_argument("--cameras", default="auto",
                   help="the federation's policy `cameras`, as its run-config says (default auto: see README)")
    p.add_argument("--camera-map", default=None,
                   help="your camera names -> the policy's, e.g. top=camera1,wrist=camera2 (default: the run's)")


def checked_settings(args: argparse.Namespace, dataset_uri: str) -> dict:
    from app.common.config import RunConfig

    defaults = RunConfig()
    return {"dataset-uri": dataset_uri, "model": args.model or defaults.model, "fps": args.fps, "cameras": args.cameras,
            "camera-map": defaults.camera_map if args.camera_map is None else args.camera_map}
