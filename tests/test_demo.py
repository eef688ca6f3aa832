import json

from app.demo import ServerProgress, find_run_dir


def test_progress_follows_the_server_log_line_by_line(tmp_path):
    run_dir = tmp_path / "2026-01-01_00-00-00"
    (run_dir / "server").mkdir(parents=True)
    (run_dir / "run_config.json").write_text(json.dumps({"run-id": 7, "run-config": {}}))
    seen = []
    progress = ServerProgress(tmp_path, 7, seen.append)
    progress.poll()  # no log yet
    log = run_dir / "server" / "server.log"
    log.write_text(json.dumps({"event": "round_start", "round": 1}) + "\n" + json.dumps({"event": "other"}) + "\n")
    progress.poll()
    with open(log, "a") as f:
        f.write(json.dumps({"event": "round_done", "round": 1}) + "\n" + '{"event": "round_st')
    progress.poll()
    assert [r["event"] for r in seen] == ["round_start", "round_done"]
    assert find_run_dir(tmp_path, 7) == run_dir
