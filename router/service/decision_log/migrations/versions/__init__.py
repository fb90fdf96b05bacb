"""One module per revision, oldest first: ``v0001_baseline`` is the schema before migrations existed."""
