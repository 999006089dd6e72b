"""The life of a job, one module per step, shared by the web app and the worker.

state (transitions, timeline) · checkout (the Checkout Session) · stripe_events (Stripe's word on
payments, refunds, disputes) · refunds · queueing (RQ ids, enqueueing) · delivery (download tokens
and links) · emails · outcomes (complete, fail) · recovery (the sweeper) · estimates (engine time) ·
upsampler_links (signed URLs for Upsampler.com) · actions (what the admin may do to a job).
"""
