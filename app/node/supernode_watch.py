"""Reads flower-supernode's output as it runs, for what an operator can fix.

Flower reports a refused connection as an exit code and a block of text ("[code: 2004] Failed to activate
SuperNode"), and an unreachable SuperLink as "Connection attempt failed, retrying in 7.67 seconds" without saying
where. `SuperNodeWatch` turns those into log lines that name the address, the file and the fix; `fedvla node`
exits with the refusal's one line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from app.common.telemetry import get_logger

log = get_logger(__name__)

RETRY = re.compile(r"Connection attempt failed, retrying in ([0-9.]+) seconds")


@dataclass
class SuperNodeWatch:
    superlink: str
    root_certificates: Path | None = None  # None: --insecure
    auth_private_key: Path | None = None
    connected: bool = False
    attempts: int = 0
    problem: str | None = None  # why the SuperLink refused this node, and the fix

    def __call__(self, line: str) -> None:
        if "SuperNode ID:" in line:
            self.connected = True
            log.info("superlink_connected", superlink=self.superlink, attempts=self.attempts + 1)
        elif (retry := RETRY.search(line)) and not self.connected:
            self.attempts += 1
            log.warning("superlink_unreachable", superlink=self.superlink, attempt=self.attempts,
                        retry_in_seconds=float(retry.group(1)),
                        hint=None if self.root_certificates else
                        "if the federation uses TLS, pass --root-certificates <ca.crt> instead of --insecure")
        elif problem := self.refusal(line):
            self.problem = problem
            log.error("superlink_refused_node", superlink=self.superlink, why=problem)

    def refusal(self, line: str) -> str | None:
        if "certificate has expired" in line:
            return (f"the SuperLink at {self.superlink} presents an expired TLS certificate: its owner must renew it "
                    "(`fedvla certs` renews with the same CA, nodes need no change)")
        if "CERTIFICATE_VERIFY_FAILED" in line or "BAD_SIGNATURE" in line or "certificate signature failure" in line:
            return (f"the SuperLink at {self.superlink} presents a TLS certificate not signed by --root-certificates "
                    f"{self.root_certificates}: get the federation's current ca.crt from its owner")
        if "[code: 2001]" in line:
            return (f"the SuperLink at {self.superlink} only admits registered SuperNodes: make a key with "
                    "`fedvla keys --name <node>`, send the .pub file to the federation's owner, and start with "
                    "--auth-private-key <node>.key")
        if "[code: 2004]" in line:
            public = self.auth_private_key.with_suffix(".pub") if self.auth_private_key else "<node>.pub"
            return (f"the SuperLink at {self.superlink} does not know this node's key ({self.auth_private_key}): "
                    f"it was never registered or has been revoked; send {public} to the federation's owner, who runs "
                    "`flwr supernode register <node>.pub <federation>`")
        return None
