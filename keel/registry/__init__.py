"""Registry: MLflow tracking, registered models and aliases, the promotion gates."""


def _load_pyfunc(data_path: str):
    """MLflow's pyfunc entry point for models logged when the loader lived at ``keel.registry``.

    Imported lazily: ``keel.registry.promotion`` is read by commands that never load a model,
    and the store pulls in MLflow and LightGBM (about a second).
    """
    # Lazy: MLflow and LightGBM load only when a model does.
    from keel.registry.store import _load_pyfunc as load

    return load(data_path)
