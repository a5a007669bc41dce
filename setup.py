"""evit_mm: EfficientViT (MSRA M-series and MIT B/L/XL, EfficientViT-SAM) for the OpenMMLab 2.x stack."""
import os
import re
import shutil
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py
from setuptools.command.develop import develop

HERE = Path(__file__).parent.resolve()
VERSION = re.search(r"__version__ = '([^']+)'", (HERE / 'evit_mm' / 'version.py').read_text()).group(1)

# configs/ and tools/ are installed as evit_mm/.mim/configs and evit_mm/.mim/tools, where mim (`mim train
# evit_mm ...`, `mim run evit_mm ...`) and mmengine (`Config.fromfile('evit_mm::efficientvit_m/...')`) look, as
# OpenMMLab packages do: copied into wheels, symlinked into the source tree for editable installs. So is the
# model-zoo index (`mim search evit_mm`, `mim download evit_mm --config ...`), whose metafiles are in configs/.
MIM_DIRS = ('configs', 'tools')
MIM_FILES = ('model-index.yml',)


def _ignore(_, names):
    return [n for n in names if n == '__pycache__' or n.endswith(('.pyc', '.pyo'))]


def link_mim_dirs(root: Path = HERE) -> None:
    """Make ``root/evit_mm/.mim/{configs,tools,model-index.yml}`` relative symlinks to those of ``root`` (copies
    where the file system has no symlinks). For editable installs, whose package is the source tree."""
    mim = root / 'evit_mm' / '.mim'
    mim.mkdir(exist_ok=True)
    for name in MIM_DIRS:
        src, dst = root / name, mim / name
        if not src.is_dir():
            continue
        if dst.is_symlink() and dst.resolve() == src.resolve():
            continue
        if dst.is_symlink() or dst.is_file():
            dst.unlink()
        elif dst.is_dir():
            shutil.rmtree(dst)
        try:
            os.symlink(os.path.join('..', '..', name), dst, target_is_directory=True)
        except OSError:  # e.g. Windows without the symlink privilege
            shutil.copytree(src, dst, ignore=_ignore)
    for name in MIM_FILES:
        src, dst = root / name, mim / name
        if not src.is_file() or (dst.is_symlink() and dst.resolve() == src.resolve()):
            continue
        if dst.is_symlink() or dst.exists():
            dst.unlink()
        try:
            os.symlink(os.path.join('..', '..', name), dst)
        except OSError:
            shutil.copy2(src, dst)


def copy_mim_dirs(package_dir: Path, root: Path = HERE) -> None:
    """Copy ``root/{configs,tools,model-index.yml}`` into ``package_dir/.mim/`` (the built package of a wheel)."""
    for name in MIM_DIRS:
        src, dst = root / name, package_dir / '.mim' / name
        if not src.is_dir():
            raise FileNotFoundError(f'{src} is missing: an evit_mm source tree or sdist has configs/ and tools/')
        if dst.is_dir() and not dst.is_symlink():
            shutil.rmtree(dst)
        elif dst.exists() or dst.is_symlink():
            dst.unlink()
        shutil.copytree(src, dst, ignore=_ignore)
    for name in MIM_FILES:
        src, dst = root / name, package_dir / '.mim' / name
        if not src.is_file():
            raise FileNotFoundError(f'{src} is missing: an evit_mm source tree or sdist has it (the model-zoo index; '
                                    'python tools/gen_model_index.py writes it)')
        if dst.is_symlink() or dst.exists():
            dst.unlink()
        shutil.copy2(src, dst)


class BuildPyWithMim(build_py):
    """build_py that also installs configs/, tools/ and model-index.yml as ``evit_mm/.mim/``."""

    def run(self):
        super().run()
        if getattr(self, 'editable_mode', False):  # PEP 660 editable install: the package is the source tree
            link_mim_dirs()
        else:
            copy_mim_dirs(Path(self.build_lib) / 'evit_mm')


class DevelopWithMim(develop):
    """Legacy ``setup.py develop`` / old-setuptools editable installs: link ``evit_mm/.mim`` too."""

    def run(self):
        super().run()
        link_mim_dirs()


MM = ['mmengine>=0.10.6', 'mmcv>=2.0.0,<2.2.0']  # mmdet/mmseg/mmagic assert mmcv < 2.2.0; it needs compiled ops
SAM = ['segment-anything>=1.0']
EXTRAS = {
    # each adapter imports evit_mm.models.sam, hence segment_anything, besides its own library
    'mmdet': MM + ['mmdet>=3.0,<4'] + SAM,
    # mmsegmentation imports ftfy and regex without declaring them (mmseg#3704)
    'mmseg': MM + ['mmsegmentation>=1.0,<2', 'ftfy', 'regex'] + SAM,
    'mmagic': MM + ['mmagic>=1.0,<2', 'numpy<2'],  # mmagic 1.2 breaks on numpy 2
    # evit_mm.sam: predictor, automatic masks (segment_anything, scipy), COCO masks (pycocotools), training
    # datasets (Pillow) and loop (mmengine)
    'sam': SAM + ['scipy', 'pycocotools', 'Pillow', 'mmengine>=0.10.6'],
    # zero-shot COCO/LVIS evaluation (evit_mm.sam.zero_shot)
    'zero-shot': SAM + ['scipy', 'pycocotools', 'lvis', 'tqdm', 'Pillow'],
    # evit_mm.onnx / evit_mm.sam.onnx: torch.onnx's exporter needs onnx and onnxscript; the check runs onnxruntime
    'onnx': ['onnx', 'onnxscript', 'onnxruntime'],
    # evit_mm.benchmark (tools/benchmark*.py): timm's models as peers, plots, ONNX Runtime timings; the peers of
    # the other families (mmseg, mmagic, segment-anything) come with their own extras
    'benchmark': ['timm', 'matplotlib', 'tqdm', 'onnx', 'onnxscript', 'onnxruntime', 'mmengine>=0.10.6'],
    # evit_mm.sample_data: the small datasets built from scikit-image's photographs
    'sample-data': ['scikit-image', 'scipy', 'Pillow', 'opencv-python', 'pycocotools'],
    # evit_mm.sam.app (`evit-sam-app`, tools/sam_app.py): the browser app; FastAPI + uvicorn serve a static page,
    # the sample photos come from scikit-image, the masks download as COCO RLE (pycocotools)
    'app': SAM + ['fastapi', 'uvicorn', 'Pillow', 'pycocotools', 'scikit-image'],
}
EXTRAS['all'] = sorted({req for reqs in EXTRAS.values() for req in reqs})

setup(
    name='evit_mm',
    version=VERSION,
    description='EfficientViT M/B/L/XL and EfficientViT-SAM for mmdet, mmseg, mmagic and segment-anything',
    long_description=(HERE / 'README.md').read_text(encoding='utf-8'),
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    license_files=['LICENSE', 'NOTICE'],  # NOTICE credits Cream and mit-han-lab's EfficientViT
    python_requires='>=3.9',
    packages=find_packages(include=['evit_mm', 'evit_mm.*']),
    # The model core needs torch and numpy (safetensors: timm's checkpoint files); each adapter and tool family
    # has an extra (tools/env/ holds the pinned, tested stack).
    install_requires=['torch>=2.1', 'numpy', 'safetensors', 'huggingface_hub'],
    extras_require=EXTRAS,
    package_data={'evit_mm.sam.app': ['static/*']},  # the app's page (HTML, JS, CSS)
    entry_points={'console_scripts': ['evit-sam-app = evit_mm.sam.app:main']},
    cmdclass={'build_py': BuildPyWithMim, 'develop': DevelopWithMim},
    zip_safe=False,
    classifiers=[
        'Programming Language :: Python :: 3.11',
        'License :: OSI Approved :: Apache Software License',
        'Topic :: Scientific/Engineering :: Artificial Intelligence',
    ],
)
