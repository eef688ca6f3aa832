"""Synthetic SO-100 recordings in LeRobotDataset v3 format, one dataset per simulated operator.

Each episode the arm moves from a random start pose toward a goal pose. The goal is drawn from the operator's own
task family (so operators are non-IID) and is *shown* in the cameras: the front camera draws a coloured marker
whose position encodes the first two goal joints, the wrist camera a bar whose height encodes the third. Actions
are the next commanded joint positions, so they depend on the state and on what the images show: a policy that
learns sees its loss fall, and one that ignores the images cannot reach the bottom.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SO100_JOINTS = (
    "shoulder_pan.pos",
    "shoulder_lift.pos",
    "elbow_flex.pos",
    "wrist_flex.pos",
    "wrist_roll.pos",
    "gripper.pos",
)
CAMERAS = ("front", "wrist")
FPS = 30
IMAGE_HEIGHT, IMAGE_WIDTH = 48, 64
ROBOT_TYPE = "so100_follower"


@dataclass(frozen=True)
class TaskFamily:
    instruction: str
    colour: tuple[int, int, int]
    goal_centre: tuple[float, ...]  # degrees, one per joint


# Operators take these in turn: operator i records task i mod 4, so two operators never share a family unless
# there are more than four of them.
TASK_FAMILIES = (
    TaskFamily("pick the red cube and place it in the bowl", (220, 40, 40), (-40.0, 30.0, -20.0, 10.0, 0.0, 30.0)),
    TaskFamily("stack the green block on the blue block", (40, 200, 60), (35.0, 10.0, 25.0, -15.0, 20.0, 5.0)),
    TaskFamily("push the yellow box to the left", (230, 210, 40), (-10.0, -30.0, 40.0, 25.0, -25.0, 0.0)),
    TaskFamily("put the blue cup into the tray", (50, 80, 220), (20.0, 45.0, -35.0, -5.0, 10.0, 40.0)),
)
GOAL_SPREAD_DEG = 25.0  # per-episode variation of the goal around the family centre, on the visible joints
STEP_GAIN = 0.15  # fraction of the remaining distance the commanded position covers each frame


def so100_features(use_videos: bool = True) -> dict:
    """LeRobot feature spec of an SO-100 follower with a front and a wrist camera."""
    visual = "video" if use_videos else "image"
    features = {
        "observation.state": {"dtype": "float32", "shape": (6,), "names": list(SO100_JOINTS)},
        "action": {"dtype": "float32", "shape": (6,), "names": list(SO100_JOINTS)},
    }
    for camera in CAMERAS:
        features[f"observation.images.{camera}"] = {
            "dtype": visual,
            "shape": (IMAGE_HEIGHT, IMAGE_WIDTH, 3),
            "names": ["height", "width", "channels"],
        }
    return features


def _render_front(goal: np.ndarray, family: TaskFamily) -> np.ndarray:
    image = np.full((IMAGE_HEIGHT, IMAGE_WIDTH, 3), 90, dtype=np.uint8)
    centre = np.asarray(family.goal_centre)
    # The marker's position is the goal's offset from the family centre on joints 0 and 1, scaled to the frame.
    u = np.clip((goal[0] - centre[0]) / (2 * GOAL_SPREAD_DEG) + 0.5, 0.0, 1.0)
    v = np.clip((goal[1] - centre[1]) / (2 * GOAL_SPREAD_DEG) + 0.5, 0.0, 1.0)
    x = int(round(u * (IMAGE_WIDTH - 12)))
    y = int(round(v * (IMAGE_HEIGHT - 12)))
    image[y : y + 12, x : x + 12] = family.colour
    return image


def _render_wrist(goal: np.ndarray, family: TaskFamily) -> np.ndarray:
    image = np.full((IMAGE_HEIGHT, IMAGE_WIDTH, 3), 30, dtype=np.uint8)
    centre = np.asarray(family.goal_centre)
    w = np.clip((goal[2] - centre[2]) / (2 * GOAL_SPREAD_DEG) + 0.5, 0.0, 1.0)
    top = int(round(w * (IMAGE_HEIGHT - 8)))
    image[top : top + 8, :] = family.colour
    return image


def write_dataset(
    root: Path,
    repo_id: str,
    task_families: Sequence[int],
    num_episodes: int,
    frames_per_episode: int,
    seed: int,
    use_videos: bool = True,
) -> Path:
    """Record `num_episodes` synthetic episodes into a new LeRobotDataset at `root`.

    Episode e shows task family `task_families[e % len(task_families)]`: one family for an operator's dataset,
    several for a held-out set that covers the whole federation.
    """
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    rng = np.random.default_rng(seed)
    dataset = LeRobotDataset.create(
        repo_id=repo_id,
        fps=FPS,
        features=so100_features(use_videos),
        root=root,
        robot_type=ROBOT_TYPE,
        use_videos=use_videos,
    )
    for episode in range(num_episodes):
        family = TASK_FAMILIES[task_families[episode % len(task_families)] % len(TASK_FAMILIES)]
        goal = np.asarray(family.goal_centre, dtype=np.float64)
        goal[:3] += rng.uniform(-GOAL_SPREAD_DEG, GOAL_SPREAD_DEG, size=3)
        front, wrist = _render_front(goal, family), _render_wrist(goal, family)
        state = rng.uniform(-60.0, 60.0, size=6)
        for _ in range(frames_per_episode):
            command = state + STEP_GAIN * (goal - state)
            dataset.add_frame(
                {
                    "observation.state": state.astype(np.float32),
                    "action": command.astype(np.float32),
                    "observation.images.front": front,
                    "observation.images.wrist": wrist,
                    "task": family.instruction,
                }
            )
            # The follower tracks the command with a little servo noise.
            state = command + rng.normal(0.0, 0.3, size=6)
        dataset.save_episode()
    dataset.finalize()
    return root
