from setuptools import find_packages, setup

setup(
    name="graphbridge",
    version="0.1.0",
    description="Align pre-computed embeddings of many modalities through a graph of Flax translators.",
    long_description=open("README.md").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    packages=find_packages(include=["graphbridge", "graphbridge.*"]),
    package_data={"graphbridge.datasets.digits": ["digits.npz", "README.md", "LICENSE"]},
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.4.30",
        "flax>=0.8",
        "optax>=0.2",
        "orbax-checkpoint>=0.6",
        "chex>=0.1.86",
        "numpy>=1.24",
        "ml-collections>=0.1.1",
        "absl-py>=1.0",
    ],
    extras_require={
        "plots": ["matplotlib>=3.7"],
        "test": ["pytest>=7", "matplotlib>=3.7", "scipy>=1.10", "scikit-learn>=1.2"],
    },
    entry_points={"console_scripts": [
        "graphbridge-train=graphbridge.cli.train:main",
        "graphbridge-evaluate=graphbridge.cli.evaluate:main",
        "graphbridge-compare=graphbridge.cli.compare:main",
        "graphbridge-graft=graphbridge.cli.graft:main",
    ]},
)
