"""r2p1d-batch: label actions in video collections with R(2+1)D-18 on Ray."""
__version__ = "0.1.0"
