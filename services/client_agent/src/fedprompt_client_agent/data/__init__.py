"""A silo's data: text silos (CSV/JSONL), image silos (``.npz``) and the files they share.

Nothing here leaves the silo; only the public ``metadata.json`` is sent to the clusterer.
"""
