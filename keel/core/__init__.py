"""Core: the use-case spec, the deployment settings, the warehouse, dates, plain values and gate verdicts; imports nothing else of Keel."""
