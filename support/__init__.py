"""What the test suite and the benchmarks share, so that neither borrows the other's private
helpers: the ``imagebuilder`` command-line runner (:mod:`support.cli`), loopback servers and free
ports (:mod:`support.servers`, :mod:`support.registry`), the Java apps they build images of
(:mod:`support.java_apps`, :mod:`support.wars`, :mod:`support.corpus`), the download cache of
their inputs (:mod:`support.inputs`), timing and medians (:mod:`support.measure`) and facts
about the machine a figure was measured on (:mod:`support.machine`).

``tests/`` imports it as the repository's root is on ``sys.path`` under pytest; ``bench/``
scripts put the root there themselves. Nothing here imports from ``tests/`` or ``bench/``.
"""
