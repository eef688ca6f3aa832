import numpy as np
import pandas as pd

from app.learning.embedded.datasets import write_dataset


def _frames(root):
    return pd.concat(pd.read_parquet(p) for p in sorted((root / "data").rglob("*.parquet")))


def test_generation_is_deterministic(tmp_path):
    a = write_dataset(tmp_path / "a", "t/a", [0], num_episodes=2, frames_per_episode=5, seed=1, use_videos=False)
    b = write_dataset(tmp_path / "b", "t/b", [0], num_episodes=2, frames_per_episode=5, seed=1, use_videos=False)
    fa, fb = _frames(a), _frames(b)
    assert np.array_equal(np.stack(fa["action"]), np.stack(fb["action"]))
    assert np.array_equal(np.stack(fa["observation.state"]), np.stack(fb["observation.state"]))


def test_operators_are_non_iid(operator0, tiny_config):
    from app.learning import data, model
    other = data.load_node_data(
        "embedded:operator-1", model.policy_schema(tiny_config, 30),
        lambda meta: model.delta_timestamps(tiny_config, meta), 0.2, 0,
    )
    assert operator0.meta.tasks.index.tolist() != other.meta.tasks.index.tolist()
    assert not np.allclose(operator0.meta.stats["action"]["mean"], other.meta.stats["action"]["mean"], atol=5)


def test_actions_follow_the_state_toward_a_goal_shown_in_the_images(operator0):
    sample = operator0.train[0]
    first_action, state = sample["action"][0], sample["observation.state"]
    # the command moves a fraction of the way to the goal: close to, but not equal to, the state
    assert 0 < (first_action - state).abs().max() < 30
    front = sample["observation.images.front"]
    assert front.std() > 0, "the front camera must show the goal marker"


def test_videos_are_real_mp4_files(operator0):
    from lerobot.datasets.video_utils import decode_video_frames, get_video_info

    root = operator0.ref.root
    videos = list((root / "videos").rglob("*.mp4"))
    assert {p.parts[-3] for p in videos} == {"observation.images.front", "observation.images.wrist"}
    for video in videos:
        height, width, _ = operator0.meta.features[video.parts[-3]]["shape"]
        info = get_video_info(video)
        assert (info["video.height"], info["video.width"], info["video.fps"]) == (height, width, operator0.meta.fps)
        (frame,) = decode_video_frames(video, [0.0], tolerance_s=1e-3)  # LeRobot's own decoder, as training reads it
        assert frame.shape == (3, height, width) and frame.std() > 0, video
