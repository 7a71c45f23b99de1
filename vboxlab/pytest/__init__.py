"""The pytest plugin, one module per concern.

``plugin`` holds the hooks and wires the others together; ``options`` the
command-line options, ini keys and markers; ``policy`` the skip-outside-CI /
fail-under-CI rule tests import; ``fixtures`` the ``lab``, ``vm``, ``network``
and ``boot_media`` fixtures; ``rollback`` the shared machine and baselines;
``schedules`` the failure, every-N and interval snapshots; ``reports`` what a
failing test's report carries, the snapshot timelines and the summary.
"""
