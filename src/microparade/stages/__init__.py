"""One package per pipeline stage (``stages/<name>/``), each exposing ``run(ctx)``.

The stages' facts (inputs, fingerprinted config, resources) live in :mod:`microparade.engine.registry`.
"""
