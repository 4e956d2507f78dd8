"""hpo-service: hyperparameter optimization studies for fine-tuning transformer classifiers."""

from importlib.metadata import version

__version__ = version("hpo-service")
