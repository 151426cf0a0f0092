"""Install the perception toolkit: one network for detection, segmentation and depth."""
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent

setup(
    name="perception",
    version="0.1.0",
    description="Multi-task perception: one timm backbone + FPN shared by detection, segmentation and depth heads",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8") if (ROOT / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["perception", "perception.*"]),
    install_requires=[
        "torch>=2.4",
        "torchvision>=0.19",
        "timm>=1.0.3",
        "numpy>=1.24",
        "albumentations>=1.4.18",
        "opencv-python-headless>=4.8",
        "pycocotools>=2.0.7",
        "cityscapesscripts>=2.2",
        "h5py>=3.8",
        "scipy>=1.10",
        "PyYAML>=6.0",
        "tqdm>=4.64",
        "tensorboard>=2.14",
    ],
    extras_require={
        "export": ["onnx>=1.15", "onnxruntime>=1.17", "onnxscript>=0.1"],
        "plot": ["matplotlib>=3.7"],  # tools/compare_methods.py's figures
        "dev": [
            "matplotlib>=3.7",
            "pytest>=7.4",
            "pytest-xdist>=3.3",
            "hypothesis>=6.0",
            "onnx>=1.15",
            "onnxruntime>=1.17",
            "onnxscript>=0.1",
        ],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Image Recognition",
    ],
)
