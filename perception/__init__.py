"""perception: one network, one forward pass, three answers (detection, segmentation, depth)."""
__version__ = "0.1.0"
