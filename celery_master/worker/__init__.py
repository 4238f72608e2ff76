"""Worker: what lives inside a Celery worker (bootstep, wiring, control, hints, events, metrics).

May import: election, jobs, store and the shared modules; only ops and the public API import it.
"""
