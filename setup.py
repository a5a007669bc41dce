"""evit_mm: EfficientViT (MSRA M-series and MIT B/L/XL, EfficientViT-SAM) for the OpenMMLab 2.x stack."""
import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(r"__version__ = '([^']+)'", (HERE / 'evit_mm' / 'version.py').read_text()).group(1)

setup(
    name='evit_mm',
    version=VERSION,
    description='EfficientViT M/B/L/XL and EfficientViT-SAM for mmdet, mmseg, mmagic and segment-anything',
    long_description=(HERE / 'README.md').read_text(encoding='utf-8'),
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    python_requires='>=3.9',
    packages=find_packages(include=['evit_mm', 'evit_mm.*']),
    # The model core needs only torch; each adapter needs its own library (see tools/env/ for the pinned stack).
    install_requires=['torch>=2.1', 'numpy'],
    extras_require={
        'mmdet': ['mmengine>=0.10.6', 'mmdet>=3.0,<4'],
        'mmseg': ['mmengine>=0.10.6', 'mmsegmentation>=1.0,<2'],
        'mmagic': ['mmengine>=0.10.6', 'mmagic>=1.0,<2'],
        'sam': ['segment-anything>=1.0'],
    },
    classifiers=[
        'Programming Language :: Python :: 3.11',
        'License :: OSI Approved :: Apache Software License',
        'Topic :: Scientific/Engineering :: Artificial Intelligence',
    ],
)
