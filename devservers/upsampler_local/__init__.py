"""A local Upsampler-compatible server for development and tests (never part of the production app).

It speaks the part of Upsampler.com's API the storefront uses: `POST /api/v1/precise-upscale`
(queues a job; checks the Bearer key if one is configured), `GET /api/v1/status/<id>`, and the
webhook callback (the job object POSTed when a job ends). A background thread fetches `imageUrl`,
upscales it with libvips (lanczos3), and serves the results from `/results/<id>.png` and
`/results/<id>-compressed.jpg`. Only `UPSAMPLER_API_BASE` differs from production.

Command line::

    python -m devservers.upsampler_local --port 12112 --api-key dev-key
    # then UPSAMPLER_API_BASE=http://127.0.0.1:12112/api/v1

In process (tests)::

    with start_server(api_key="test-key") as local:
        client = UpsamplerClient("test-key", local.api_base)
        local.next_job(fail="Out of credits")      # or POST {local.url}/_local/next-job
        local.fail_next(429, count=2, retry_after=3)
        local.wait_idle()                          # until every job and callback is done

Behaviours (see `Behaviour`) bend jobs per server (`set_behaviour`, `POST /_local/behaviour`) or
for the next job (`next_job`, `POST /_local/next-job`). The `/_local/...` endpoints (see
`control.py`) drive and inspect the same state over HTTP.
"""

from .server import LocalUpsampler, create_app, start_server
from .store import Behaviour, UpsamplerState

__all__ = ["Behaviour", "LocalUpsampler", "UpsamplerState", "create_app", "start_server"]
