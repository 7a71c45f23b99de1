"""Templates on remotes: ``vboxlab remote`` and ``vboxlab sync`` (see :mod:`.store`)."""
