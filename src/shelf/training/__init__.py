"""Jobs: snapshot → fit → evaluate → register. Submodules are imported where used."""
