"""Start the whole shop on one machine: Redis, SMTP sink, local Stripe, a worker and the web app.

Every child runs in its own process group and is stopped by its PID on Ctrl-C.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from dotenv import dotenv_values

ROOT = Path(__file__).resolve().parent.parent
INSTANCE = ROOT / "instance"
PYTHON = sys.executable


@dataclass
class Child:
    """A process the launcher started."""

    name: str
    process: subprocess.Popen[bytes]
    stop: Callable[[], None] | None = None  # its own way to stop, when it has one


def _pairs(command: list[str]) -> list[tuple[str, str]]:
    """Each argument with the one before it, so a secret's value is known by its flag."""
    return list(zip(["", *command[:-1]], command, strict=True))


@dataclass
class Launcher:
    """Starts children, watches them, and stops them all."""

    children: list[Child] = field(default_factory=list)

    def start(self, name: str, command: list[str], env: dict[str, str]) -> Child:
        # A secret's value (the local webhook secret) is not printed.
        shown = " ".join("…" if "secret" in flag else part for flag, part in _pairs(command))
        print(f"  starting {name}: {shown}", flush=True)
        process = subprocess.Popen(command, cwd=ROOT, env=env, start_new_session=True)
        child = Child(name, process)
        self.children.append(child)
        return child

    def stop_all(self) -> None:
        # A second Ctrl-C or SIGTERM must not cut this short and leave children running: `make`
        # passes its SIGTERM on, so `timeout make run` or `kill` of the group sends two.
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_IGN)
        # Last started first, each waited for, so the worker finishes before Redis goes away.
        for child in reversed(self.children):
            if child.stop is not None:
                child.stop()
            elif child.process.poll() is None:
                os.killpg(child.process.pid, signal.SIGTERM)
                try:
                    child.process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.killpg(child.process.pid, signal.SIGKILL)
                    child.process.wait()
            print(f"  stopped {child.name} (pid {child.process.pid})", flush=True)

    def watch(self) -> None:
        while True:
            for child in self.children:
                code = child.process.poll()
                if code is not None:
                    print(f"{child.name} exited with {code}; stopping everything.", flush=True)
                    return
            time.sleep(0.5)


def wait_for_port(host: str, port: int, name: str, timeout: float = 20.0) -> None:
    """Wait until `name` accepts connections, or give up with a clear message."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.3):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{name} did not start listening on {host}:{port} within {timeout:.0f}s")


def port_is_free(port: int) -> bool:
    """Whether nothing listens on a loopback port."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def settings() -> dict[str, str]:
    """The environment the children get: this one, `.env`, and the launcher's defaults."""
    env = {k: v for k, v in dotenv_values(ROOT / ".env").items() if v is not None}
    env.update(os.environ)
    return env


def secret_key() -> str:
    """A development secret kept under instance/, so links survive a restart."""
    path = INSTANCE / "dev-secret-key"
    if not path.exists():
        path.write_text(secrets.token_hex(32))
        path.chmod(0o600)
    return path.read_text().strip()


def start_local_s3(launcher: Launcher, env: dict[str, str]) -> str:
    """Start SeaweedFS with its data under instance/seaweedfs/ and point the S3 settings at it."""
    from devservers.seaweed import LocalS3, StartError, hermetic_aws_environment, stored_keys

    folder = INSTANCE / "seaweedfs"
    port = int(env.get("SMI_S3_PORT", "8333"))
    if not port_is_free(port):
        raise SystemExit(f"port {port} is taken; set SMI_S3_PORT or S3_ENDPOINT_URL")
    access_key, secret_key = stored_keys(folder / "keys.env")
    local = LocalS3(
        folder / "data",
        folder / "logs",
        access_key,
        secret_key,
        s3_port=port,
        volume_size_mb=1024,
        max_volumes=0,  # as many as the disk holds
    )
    print(f"  starting seaweedfs: S3 on 127.0.0.1:{port}, logs in {local.log_dir}", flush=True)
    try:
        local.start()
        bucket = env.get("S3_BUCKET") or "smi-local"
        local.create_bucket(bucket)
    except StartError as exc:
        raise SystemExit(f"SeaweedFS did not start: {exc}") from None
    finally:
        if local.process is not None:
            launcher.children.append(Child("seaweedfs", local.process, local.stop))
    env.update(local.settings(bucket, env.get("S3_PREFIX", "")))
    # The web app and the worker read no ~/.aws and ask no instance metadata service.
    env.update(hermetic_aws_environment(folder))
    return (
        f"Files go to bucket {bucket} of a local S3 store (SeaweedFS) at {local.endpoint_url};"
        f" browse it at {local.filer_url}{bucket}/\n"
        f"Its data is under {local.data_dir}, its keys in {folder / 'keys.env'}."
    )


def default_upscaler() -> tuple[str, str]:
    """`neural` when its model loads here, `local` otherwise, with the reason."""
    try:
        from worker.engines.neural import neural_model_status
    except ImportError as exc:
        return "local", f"the neural engine cannot load: {exc}"
    ok, message = neural_model_status()
    return ("neural", message) if ok else ("local", f"the neural model did not load: {message}")


def _stop_on_sigterm(*_: object) -> None:
    # Once: `timeout … make run` signals make and the launcher, and make passes it on, which
    # would otherwise interrupt the stopping of the children.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def main() -> None:
    """Start every part, print the URL, and stop everything on Ctrl-C."""
    INSTANCE.mkdir(exist_ok=True)
    env = settings()
    env.setdefault("SMI_ENV", "development")
    env.setdefault("SECRET_KEY", secret_key())
    env.setdefault("FLASK_APP", "wsgi")
    web_port = int(env.get("SMI_WEB_PORT", "5000"))
    env.setdefault("PUBLIC_BASE_URL", f"http://127.0.0.1:{web_port}")
    launcher = Launcher()

    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    storage = ""
    try:
        if env.get("STORAGE_BACKEND") == "s3" and not env.get("S3_ENDPOINT_URL"):
            # Before the database step: the demo catalog's images go to the store.
            print("Sell My Images: starting the local S3 store", flush=True)
            storage = start_local_s3(launcher, env)
        print("Sell My Images: preparing the database", flush=True)
        for step in (["db", "upgrade"], ["smi", "seed-demo"]):
            subprocess.run([PYTHON, "-m", "flask", *step], cwd=ROOT, env=env, check=True)
        if "UPSCALER" not in env:
            env["UPSCALER"], why = default_upscaler()
            print(f"Upscaler: {env['UPSCALER']} ({why}); set UPSCALER to choose.", flush=True)
        else:
            print(f"Upscaler: {env['UPSCALER']} (from UPSCALER)", flush=True)
        print("Sell My Images: starting the embedded shop", flush=True)
        if "REDIS_URL" not in env:
            port = int(env.get("SMI_REDIS_PORT", "6390"))
            if not port_is_free(port):
                raise SystemExit(f"port {port} is taken; set SMI_REDIS_PORT or REDIS_URL")
            binary = shutil.which("redis-server") or "/usr/bin/redis-server"
            launcher.start(
                "redis",
                [
                    binary,
                    "--port",
                    str(port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(INSTANCE),
                ],
                env,
            )
            wait_for_port("127.0.0.1", port, "redis-server")
            env["REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
        if "MAIL_SERVER" not in env:
            mail_port = int(env.get("MAIL_PORT", "8025"))
            launcher.start(
                "smtp-sink",
                [
                    PYTHON,
                    "-m",
                    "devservers.smtp_sink",
                    "--port",
                    str(mail_port),
                    "--save-dir",
                    str(INSTANCE / "mail"),
                ],
                env,
            )
            wait_for_port("127.0.0.1", mail_port, "SMTP sink")
            env["MAIL_SERVER"], env["MAIL_PORT"] = "127.0.0.1", str(mail_port)
        if "STRIPE_API_BASE" not in env and importlib.util.find_spec("devservers.stripe_local"):
            stripe_port = int(env.get("SMI_STRIPE_PORT", "12111"))
            env.setdefault("STRIPE_SECRET_KEY", "sk_test_local")
            env.setdefault("STRIPE_WEBHOOK_SECRET", "whsec_local_" + secret_key()[:24])
            launcher.start(
                "stripe-local",
                [
                    PYTHON,
                    "-m",
                    "devservers.stripe_local",
                    "--port",
                    str(stripe_port),
                    "--webhook-url",
                    f"{env['PUBLIC_BASE_URL']}/webhooks/stripe",
                    "--webhook-secret",
                    env["STRIPE_WEBHOOK_SECRET"],
                ],
                env,
            )
            wait_for_port("127.0.0.1", stripe_port, "local Stripe server")
            env["STRIPE_API_BASE"] = f"http://127.0.0.1:{stripe_port}"
        if env.get("UPSCALER") == "upsampler" and "UPSAMPLER_API_BASE" not in env:
            # Try the Upsampler engine by hand against the local stand-in.
            upsampler_port = int(env.get("SMI_UPSAMPLER_PORT", "12112"))
            env.setdefault("UPSAMPLER_API_KEY", "local-upsampler-key")
            launcher.start(
                "upsampler-local",
                [
                    PYTHON,
                    "-m",
                    "devservers.upsampler_local",
                    "--port",
                    str(upsampler_port),
                    "--api-key",
                    env["UPSAMPLER_API_KEY"],
                ],
                env,
            )
            wait_for_port("127.0.0.1", upsampler_port, "local Upsampler server")
            env["UPSAMPLER_API_BASE"] = f"http://127.0.0.1:{upsampler_port}/api/v1"
            env.setdefault("UPSAMPLER_RESULT_HOSTS", "127.0.0.1")
        launcher.start("worker", [PYTHON, "-m", "worker"], env)
        launcher.start(
            "web",
            [
                PYTHON,
                "-m",
                "flask",
                "run",
                "--host",
                "127.0.0.1",
                "--port",
                str(web_port),
                "--with-threads",
                "--no-reload",
            ],
            env,
        )
        wait_for_port("127.0.0.1", web_port, "web app")
        print(f"\nThe shop is running at {env['PUBLIC_BASE_URL']}/", flush=True)
        print(f"Mail it sends is printed here and saved under {INSTANCE / 'mail'}.", flush=True)
        if storage:
            print(storage, flush=True)
        if not env.get("ADMIN_EMAIL"):
            print(
                "Admin area: /admin; create an account with "
                "`.venv/bin/flask --app wsgi smi create-admin --email you@example.com`.",
                flush=True,
            )
        print("Press Ctrl-C to stop everything.\n", flush=True)
        launcher.watch()
    except KeyboardInterrupt:
        print("\nStopping…", flush=True)
    finally:
        launcher.stop_all()


if __name__ == "__main__":
    main()
