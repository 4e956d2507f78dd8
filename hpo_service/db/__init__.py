"""hpo-service's own tables, beside Optuna's in one database."""
