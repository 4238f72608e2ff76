"""Jobs: what a master job is and how one term of it runs (job, runner, HA beat).

May import: store and the shared modules; never election, worker or ops.
"""
