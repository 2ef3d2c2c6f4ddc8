"""dsprep: from a raw image dump to training-ready HDF5 files, generators and trained CNNs.

Importing the package stays light: Keras and TensorFlow load only in ``dsprep.adapters`` and
``dsprep.train``.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
