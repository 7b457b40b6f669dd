"""Batch jobs over the same core as serving: `python -m batch.classify` classifies folders on Spark."""
