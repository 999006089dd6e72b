"""What a before/after sample costs a worker: seconds per sample, by engine, image and tier.

Seeds the demo catalog (and a 12 MP JPEG of noise) into a temporary SQLite database and storage
folder, then makes each image's 4x and 8x samples with the `local` and the `neural` engine through
`worker.samples.make_sample`, as the `samples` queue's task does: region search, the crop, both
images, storage and the database row. Each sample is made `--runs` times (its row removed in
between); the median is printed. The machine's 2 cores are shared, so run it twice.

    .venv/bin/python bench/samples_bench.py [--runs 3 --engines local,neural]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
from pathlib import Path

import pyvips

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from storefront import create_app  # noqa: E402
from storefront.catalog.library import add_image, seed_demo  # noqa: E402
from storefront.extensions import db  # noqa: E402
from storefront.models import Attachment, ImageSample, Post  # noqa: E402
from worker.samples import make_sample  # noqa: E402


def _noise_jpeg(path: Path, width: int, height: int) -> Path:
    pyvips.Image.gaussnoise(width, height, sigma=40, mean=128).bandjoin(
        [pyvips.Image.gaussnoise(width, height, sigma=40, mean=128)] * 2
    ).cast("uchar").copy(interpretation="srgb").jpegsave(str(path), Q=90)
    return path


def bench_engine(engine: str, runs: int, folder: Path) -> list[tuple[str, str, str, float]]:
    """(image, size, resolution, median seconds) of every sample made by `engine`."""
    from flask_migrate import upgrade

    app = create_app(
        {
            "TESTING": True,
            "SECRET_KEY": "bench",
            "DATABASE_URL": f"sqlite:///{folder / f'{engine}.db'}",
            "STORAGE_DIR": str(folder / f"storage-{engine}"),
            "WORK_DIR": str(folder / "work"),
            "REDIS_URL": "redis://127.0.0.1:1/0",  # never reached: nothing is queued
            "UPSCALER": engine,
        }
    )
    results = []
    with app.app_context():
        upgrade(directory=str(ROOT / "migrations"))
        seed_demo(app)
        post = db.session.query(Post).first()
        assert post is not None
        big = _noise_jpeg(folder / "noise-12mp.jpg", 4000, 3000)
        add_image(app, post, big, title="noise", alt_text="noise")
        db.session.commit()
        for attachment in db.session.query(Attachment).order_by(Attachment.id).all():
            for resolution in ("4x", "8x"):
                times = []
                for _ in range(runs):
                    db.session.query(ImageSample).delete()
                    db.session.commit()
                    if "no sample" in make_sample(app, attachment.id, resolution):
                        break  # a tier not offered (past MAX_OUTPUT_MEGAPIXELS)
                    row = db.session.query(ImageSample).one()
                    assert row.engine == engine, (row.engine, attachment.original_filename)
                    times.append(row.seconds)
                if not times:
                    continue
                size = f"{attachment.width}x{attachment.height}"
                results.append(
                    (attachment.original_filename, size, resolution, statistics.median(times))
                )
        db.engine.dispose()
    return results


def main() -> None:
    """Print a table of seconds per sample."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--engines", default="local,neural")
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # no Redis here: the catalog version is not bumped
    print(f"load average before: {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory(prefix="smi-samples-bench-") as tmp:
        for engine in args.engines.split(","):
            for name, size, resolution, seconds in bench_engine(engine, args.runs, Path(tmp)):
                print(f"{engine:7} {name:24} {size:>10} {resolution}  {seconds:6.2f} s", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
