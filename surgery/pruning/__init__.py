"""Pruning: deciding which channels go and carrying the decision out.

``criteria`` scores channels, ``policies`` reconciles the members of a channel group,
``planning`` turns scores and a budget into a :class:`~surgery.pruning.planning.PrunePlan`,
and ``execution`` applies a plan (one surgery pass) and verifies it against the zeroing
oracle.
"""
