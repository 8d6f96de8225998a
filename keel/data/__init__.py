"""Data: the landing zone, replay of upstream files, ingestion, data contracts and the gates."""
