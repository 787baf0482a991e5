"""fedprompt clusterer: groups federation members by public metadata with stable cluster ids.

The domain lives in :mod:`~fedprompt_clusterer.features` and
:mod:`~fedprompt_clusterer.clustering`; :mod:`~fedprompt_clusterer.servicer` serves it as
``fedprompt.v1.Clusterer`` and :mod:`~fedprompt_clusterer.__main__` runs the process.
"""
