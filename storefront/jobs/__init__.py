"""The life of a job, one module per step, shared by the web app and the worker.

In the order a job lives them: offers (what may be bought of an image, priced, with its engine) ·
checkout (the job and its Checkout Session) · stripe_events (Stripe's word: paid, expired,
refunded, disputed) · queueing (RQ ids and enqueueing) · outcomes (claimed, completed, failed) ·
emails and outbox (each email a row first) · delivery (download tokens, the deliverable rule,
counting) · refunds · recovery (the sweeper). Beside them: state (conditional transitions and the
timeline), stripe_api, estimates (engine time, plain arithmetic), upsampler_links (signed URLs for
Upsampler.com), actions (what the owner may do to a job) and metrics (the shop's figures for
Prometheus, counted where each event happens).
"""
