"""Election: the loop and its rules (elector, round, terms, lock states, spread, watchdog).

May import: jobs, store and the shared modules; never worker or ops.
"""
