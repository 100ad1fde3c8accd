"""suite: the reproduction's shared infrastructure (not part of the ``sharpness`` library).

- ``suite.rundir``: the results format, run directories, atomic writes, provenance.
- ``suite.claims``: claims tables and the one verdict function every family uses.
- ``suite.cli``: argparse parents, progress bars, devices, seeds, Ctrl-C handling.

``sharpness`` (what a researcher installs for ``from sharpness import SAM``) never imports this.
"""
