"""The deterministic simulation of the election (``bench/simulate.py``): one seed, one interleaving.

``sched`` runs the package's real threads one at a time on virtual time;
``world`` builds workers, the lease database and the faults around the real
elector; ``checks`` judges every promise after each step; ``schedule`` draws
a run's faults from its seed; ``scale`` measures the spread at scale.
"""
