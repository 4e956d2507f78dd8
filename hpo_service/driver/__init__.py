"""A study's driver: runs its trials on Ray Tune with an Optuna sampler and records them.

``python -m hpo_service.driver STUDY`` is the process the service starts for each study.
"""
