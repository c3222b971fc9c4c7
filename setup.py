import os

from setuptools import find_packages, setup

# configs/ stays at the top of the repository (one file per experiment) and ships inside the wheel
# as graphbridge.configs, so `graphbridge-train --config=digits` works from any directory.
setup(
  name="graphbridge",
  version="0.1.0",
  description=(
    "Align pre-computed embeddings of many modalities through a graph of Flax translators."
  ),
  long_description=open("README.md").read() if os.path.exists("README.md") else "",
  long_description_content_type="text/markdown",
  license="Apache-2.0",
  license_files=["LICENSE"],
  packages=find_packages(include=["graphbridge", "graphbridge.*"]) + ["graphbridge.configs"],
  package_dir={"graphbridge.configs": "configs"},
  package_data={
    "graphbridge.datasets.digits": ["digits.npz", "README.md", "LICENSE"],
    "graphbridge.datasets.mv6": ["mv6.npz", "README.md"],
    "graphbridge.datasets.mv8": ["mv8.npz", "README.md"],
    "graphbridge.datasets.fsdd_chain": ["fsdd_chain.npz", "README.md", "LICENSE"],
  },
  python_requires=">=3.10",
  # floors: orbax-checkpoint 0.6.x fails at the first save; 0.7.0 is the oldest that works.
  install_requires=[
    "jax>=0.4.30",
    "flax>=0.8",
    "optax>=0.2",
    "orbax-checkpoint>=0.7",
    "chex>=0.1.86",
    "numpy>=1.24",
    "ml-collections>=0.1.1",
    "absl-py>=1.0",
  ],
  extras_require={
    "plots": ["matplotlib>=3.7"],
    "tensorboard": ["tensorboardX>=2.6"],
    "search": [
      "faiss-cpu>=1.8"
    ],  # Run.index(..., backend="faiss"): approximate search, millions of rows
    "test": [
      "pytest>=7",
      "matplotlib>=3.7",
      "scipy>=1.10",
      "scikit-learn>=1.2",
      "tensorboardX>=2.6",
      "faiss-cpu>=1.8",
      "ruff>=0.6",  # tests/test_style.py: the formatter's check and the linter
    ],
    "dev": ["ruff>=0.6", "build>=1.0"],
  },
  entry_points={
    "console_scripts": [
      "graphbridge-train=graphbridge.cli.train:main",
      "graphbridge-evaluate=graphbridge.cli.evaluate:main",
      "graphbridge-compare=graphbridge.cli.compare:main",
      "graphbridge-graft=graphbridge.cli.graft:main",
    ]
  },
)
