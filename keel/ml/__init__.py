"""ML: training sets, models of every tier, evaluation, batch scoring and lineage."""
