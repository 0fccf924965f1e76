"""Shipped models (installed as ``sorter.models``); ``default/`` is the model sorter uses unless told otherwise."""
