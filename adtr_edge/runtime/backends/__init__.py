"""Inference backends (one module each); see ``base.Backend`` for the contract."""
