"""Monitoring: drift against the reference, the monitoring store and the retraining trigger."""
