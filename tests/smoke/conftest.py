"""tests/smoke runs from the installed wheel (run.sh), never from this tree: nothing to collect."""

collect_ignore_glob = ["*.py"]
