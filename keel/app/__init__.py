"""App: the ``keel`` command, the main job, ``keel simulate`` and ``keel status``; the one layer that loads the definitions."""
