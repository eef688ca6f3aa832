"""app.federation.resume: a run's per-round state, found again by the same run-config, damaged states skipped."""

import json

import torch

from app.federation.resume import FINISHED, STATE_DIR, RoundState, find_unfinished_run, load_round_state, mark_finished, save_round_state

CONFIG = {"num-server-rounds": 3, "lr": 0.001, "resume-from": "latest"}


def run_dir(base, name, config=CONFIG):
    path = base / name
    path.mkdir(parents=True)
    (path / "run_config.json").write_text(json.dumps({"run-id": 1, "run-config": config}))
    return path


def state(server_round):
    return RoundState(server_round, {"observation.state.mean": [0.5]}, best_loss=1.5, stale=1)


def test_the_newest_round_state_is_loaded_and_older_ones_removed(tmp_path):
    run = run_dir(tmp_path, "2026-01-01_00-00-00")
    save_round_state(run, state(1), {"w": torch.zeros(2)})
    save_round_state(run, state(2), {"w": torch.ones(2)})
    loaded, arrays, _ = load_round_state(run)
    assert loaded == state(2) and torch.equal(arrays["w"], torch.ones(2))
    assert sorted(p.name for p in (run / STATE_DIR).iterdir()) == ["round_2"]


def test_a_damaged_state_is_skipped_for_the_one_before(tmp_path):
    run = run_dir(tmp_path, "2026-01-01_00-00-00")
    save_round_state(run, state(1), {"w": torch.zeros(2)})
    older = run / STATE_DIR / "round_1"
    kept = tmp_path / "kept"
    older.rename(kept)
    save_round_state(run, state(2), {"w": torch.ones(2)})
    kept.rename(older)  # as if the removal of round 1 had not happened yet
    (run / STATE_DIR / "round_2" / "arrays.safetensors").write_bytes(b"garbage")
    loaded, arrays, _ = load_round_state(run)
    assert loaded.round == 1 and torch.equal(arrays["w"], torch.zeros(2))


def test_only_an_unfinished_run_with_the_same_run_config_is_carried_on(tmp_path):
    assert find_unfinished_run(tmp_path, CONFIG) is None
    other = run_dir(tmp_path, "2026-01-01_00-00-03", {**CONFIG, "lr": 0.01})
    save_round_state(other, state(1), {"w": torch.zeros(2)})
    fresh = run_dir(tmp_path, "2026-01-01_00-00-02")  # no round completed yet: nothing to carry on
    interrupted = run_dir(tmp_path, "2026-01-01_00-00-01")
    save_round_state(interrupted, state(1), {"w": torch.zeros(2)})
    assert fresh and find_unfinished_run(tmp_path, {**CONFIG, "resume-from": ""}) == interrupted
    mark_finished(interrupted)
    assert (interrupted / STATE_DIR / FINISHED).exists()
    assert find_unfinished_run(tmp_path, CONFIG) is None


def test_the_server_optimizers_state_is_kept_with_the_round(tmp_path):
    import numpy as np

    from app.federation.resume import SERVER_OPTIMIZER_FILE

    run = run_dir(tmp_path, "2026-01-01_00-00-00")
    save_round_state(run, state(1), {"w": torch.zeros(2)})
    assert load_round_state(run)[2] == {}  # none without a server optimizer
    momentum = {"m_t/w": np.full(2, 0.25, np.float32), "v_t/w": np.full(2, 0.5, np.float32)}
    save_round_state(run, state(2), {"w": torch.ones(2)}, momentum)
    assert (run / STATE_DIR / "round_2" / SERVER_OPTIMIZER_FILE).is_file()
    _, _, loaded = load_round_state(run)
    assert loaded.keys() == momentum.keys() and all(np.array_equal(loaded[k], momentum[k]) for k in momentum)
