"""Named experiment configs: ``python -m deep_nets.train --config NAME [flags that override]``.

Each module states, airbench-style, the claim it reproduces, the paper's number, the command, and
what it measured here, and defines ``FLAGS`` (flag name -> value, the names of ``--help``).
"""
