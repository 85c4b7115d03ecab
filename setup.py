"""The one thing pyproject.toml cannot say: the wheel carries the shipped model inside the package.

weights/ stays at the checkout's root (the project's layout); the wheel holds it as covidxr/weights, where
covidxr.classifier.DEFAULT_WEIGHTS finds it once installed, so `covidxr.load()` with no argument works after a
plain `pip install .`. Only what load() reads goes in (about 17 MB): the networks (model.pt), the model card and
the gate's and out-of-distribution statistics (*.npz), all named and hashed in the card. Everything else about
the package is declared in pyproject.toml.
"""
from setuptools import find_namespace_packages, setup

setup(packages=[*find_namespace_packages(include=["covidxr*", "webapp*"]), "covidxr.weights"],
      package_dir={"covidxr.weights": "weights"},
      package_data={"covidxr.weights": ["model.pt", "model_card.json", "*.npz"]})
