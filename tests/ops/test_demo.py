import json

from app.ops.demo import ServerProgress, find_run_dir


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


def test_writing_an_embedded_artifact_keeps_its_chatter_in_the_embedded_log(tmp_path, monkeypatch, capfd):
    import os

    from app.learning import embedded
    monkeypatch.setenv("FEDVLA_HOME", str(tmp_path / "home"))

    def build(out):
        os.write(2, b"Svt[info]: SVT [version]: SVT-AV1 Encoder Lib\n")
        os.write(1, b"Reducing the number of VLM layers to 4 ...\n")
        out.mkdir()

    target = embedded._materialize(tmp_path / "artifact", build)
    assert target.is_dir()
    captured = capfd.readouterr()
    assert "Svt" not in captured.err and "Reducing" not in captured.out
    assert embedded.output_log() == tmp_path / "home" / "logs" / "embedded.log"
    assert embedded.output_log().read_text().splitlines() == ["Svt[info]: SVT [version]: SVT-AV1 Encoder Lib",
                                                              "Reducing the number of VLM layers to 4 ..."]
