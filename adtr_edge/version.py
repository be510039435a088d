"""The toolkit version, in a module of its own: modules record it in what they write (manifests,
metadata, checkpoints) without importing the package's public face (``adtr_edge/__init__.py``)."""

__version__ = "0.1.0"
