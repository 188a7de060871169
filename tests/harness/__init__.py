"""Starting real components for tests: the edgehub CLI and daemons as subprocesses."""
