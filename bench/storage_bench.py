"""A worker's data path on each storage backend: time and peak memory of one upscale.

The path is the worker's own: take a local copy of the original (a download from the bucket with
`s3`), run the local engine into WORK_DIR, store the result (a rename with `local`, a multipart
upload with `s3`). Each case runs in a fresh interpreter, and VmHWM is that case's peak alone.
The `s3` cases use a local SeaweedFS on loopback.

Run: .venv/bin/python bench/storage_bench.py [--megapixels 12] [--factor 8]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from devservers.seaweed import LocalS3, hermetic_aws_environment  # noqa: E402

CHILD = """
import json, sys, time
from pathlib import Path
from bench.processes import own_peak_rss_mib
from storefront import create_app
from storefront.storage import backend, temporary_path
from worker.engines.local import LocalEngine

settings, key, factor = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3])
app = create_app(settings)
with app.app_context():
    storage = backend(app)
    started = time.perf_counter()
    with storage.local_copy(key) as source:
        fetched = time.perf_counter()
        output = temporary_path(app, ".jpg")
        LocalEngine().upscale(source, factor, output)
        made = time.perf_counter()
        size = output.stat().st_size
        storage.put_file("deliveries/bench/out.jpg", output, "image/jpeg")
        stored = time.perf_counter()
print(json.dumps({
    "fetch": fetched - started, "upscale": made - fetched, "store": stored - made,
    "total": stored - started, "bytes": size,
    "peak_rss_mib": own_peak_rss_mib(),
}))
"""


def _make_photo(megapixels: int, path: Path) -> None:
    spec = importlib.util.spec_from_file_location("upscale_bench", ROOT / "bench/upscale_bench.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    width = int((megapixels * 1e6 * 4 / 3) ** 0.5)
    module.make_photo((width, width * 3 // 4), path)


def _settings(folder: Path, extra: dict[str, str]) -> dict[str, str]:
    return {
        "SMI_ENV": "development",
        "SECRET_KEY": "bench",
        "DATABASE_URL": f"sqlite:///{folder / 'unused.db'}",
        "STORAGE_DIR": str(folder / "storage"),
        "WORK_DIR": str(folder / "work"),
        **extra,
    }


def _run(settings: dict[str, str], key: str, factor: int, env: dict[str, str]) -> dict[str, float]:
    run = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(settings), key, str(factor)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        check=False,
    )
    if run.returncode != 0:
        raise SystemExit(f"the upscale failed:\n{run.stderr[-3000:]}")
    result: dict[str, float] = json.loads(run.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    """Measure both backends and print one line each, then the ratio."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--megapixels", type=int, default=12)
    parser.add_argument("--factor", type=int, default=8, choices=(4, 8))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="smi-storage-bench-") as raw:
        folder = Path(raw)
        photo = folder / "original.jpg"
        _make_photo(args.megapixels, photo)
        key = "originals/bench/original.jpg"
        env = {**os.environ, **hermetic_aws_environment(folder)}
        results = {}
        local = _settings(folder / "local", {"STORAGE_BACKEND": "local"})
        target = Path(local["STORAGE_DIR"]) / key
        target.parent.mkdir(parents=True)
        target.write_bytes(photo.read_bytes())
        results["local"] = _run(local, key, args.factor, env)
        with LocalS3(folder / "s3-data", folder / "s3-logs", volume_size_mb=1024) as s3:
            bucket = f"bench-{uuid.uuid4().hex[:8]}"
            s3.create_bucket(bucket)
            s3.client().upload_file(str(photo), bucket, key)
            remote = _settings(folder / "s3", s3.settings(bucket))
            results["s3"] = _run(remote, key, args.factor, env)
        print(f"{args.megapixels} MP original at {args.factor}x, local engine, JPEG output")
        for name, result in results.items():
            print(
                f"  {name:5}  total {result['total']:6.1f} s  (fetch {result['fetch']:5.2f} s, "
                f"upscale {result['upscale']:6.1f} s, store {result['store']:5.2f} s)  "
                f"output {result['bytes'] / 2**20:6.1f} MiB  "
                f"peak RSS {result['peak_rss_mib']:6.0f} MiB"
            )
        ratio = results["s3"]["total"] / results["local"]["total"]
        print(f"  s3 / local time: {ratio:.2f}×; peak memory cap 512 MiB")


if __name__ == "__main__":
    main()
