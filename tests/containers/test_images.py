"""The image build's own helpers, without Docker: a download that fails TLS verification names the fix."""

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HINT = REPO / "images" / "tls-hint.sh"


def hinted(command: str) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", str(HINT), "sh", "-c", command], capture_output=True, text=True, timeout=30)


def test_a_download_failing_certificate_verification_names_the_proxy_fix():
    pip = hinted("echo \"SSLError(SSLCertVerificationError(1, '[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify "
                 "failed: self-signed certificate in certificate chain')\" >&2; exit 1")
    uv = hinted("echo 'error: invalid peer certificate: UnknownIssuer' >&2; exit 2")
    for result, code in ((pip, 1), (uv, 2)):
        assert result.returncode == code
        (hint,) = [line for line in result.stderr.splitlines() if line.startswith("fedvla image build: error:")]
        assert "images/ca-certificates/" in hint and (REPO / "images" / "ca-certificates").is_dir()


def test_other_failures_and_successes_pass_through_untouched():
    failed = hinted("echo 'No matching distribution found for uv==9' >&2; exit 1")
    assert failed.returncode == 1 and "fedvla image build" not in failed.stderr
    assert "No matching distribution" in failed.stderr
    ok = hinted("echo fine")
    assert ok.returncode == 0 and ok.stdout == "fine\n" and ok.stderr == ""
