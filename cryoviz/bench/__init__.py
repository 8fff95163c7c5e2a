"""The benchmark harness: a versioned simulated suite, modular tasks, a leaderboard.

* :mod:`cryoviz.bench.suite`: the datasets (``cryoviz simulate`` configurations);
* :mod:`cryoviz.bench.tasks`: tasks and scorers;
* :mod:`cryoviz.bench.entries`: the registry of benchmarked recipes;
* :mod:`cryoviz.bench.runner`: runs entries on datasets (wall time, peak memory);
* :mod:`cryoviz.bench.leaderboard`: ``results.json``, markdown and HTML tables;
* :mod:`cryoviz.bench.external`: runs and imports of external tools (cryoDRGN);
* :mod:`cryoviz.bench.diagnostics`: error-propagation curves and sweeps;
* :mod:`cryoviz.bench.cli`: the ``cryoviz bench`` command.

Definitions and how to regenerate the tables: ``docs/bench.md``.
"""
