"""Keel, the framework: a production ML pipeline's logic, in layers.

Each subpackage may import only the ones below it (``tests/test_layers.py`` reads the
imports and fails on a violation)::

    app          the keel command, the main job, simulate, status (may load definitions)
    serving      the real-time API
    monitoring   drift, reference profiles, the monitoring store, the retraining trigger
    registry     MLflow tracking, the registry, promotion gates
    ml           datasets, models, evaluation, scoring, lineage
    data         landing zone, replay, ingestion, contracts, gates
    render       every plot and table a person sees
    core         the use-case spec, settings, the warehouse, dates

No framework package imports ``definitions``, ``assets``, ``resources``, ``sensors`` or a
use-case module by name; only ``keel.app`` loads the definitions.
"""
