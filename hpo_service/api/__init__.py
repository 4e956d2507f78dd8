"""The REST service: FastAPI routes, the Optuna dashboard beside them, and the scheduler."""
