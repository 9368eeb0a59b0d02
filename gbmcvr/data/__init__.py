"""Dataset profiles, ingest into the raw store, generated data and day splits."""
