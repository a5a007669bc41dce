"""What a benchmark ran on: CPU, GPU, library versions."""
from __future__ import annotations

import os
import platform
from typing import Sequence

import torch


def cpu_model_name() -> str:
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or 'unknown'


def loadavg() -> float | None:
    """The 1-minute load average, or None where the platform has none."""
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return None


def machine_info(devices: Sequence[str]) -> dict:
    import evit_mm
    try:
        import timm
        timm_version = timm.__version__
    except ImportError:  # the GPU check runs without timm (and says so)
        timm_version = None
    info = dict(machine=platform.machine(), cpu=cpu_model_name(), cpu_count=os.cpu_count(),
                torch_default_threads=torch.get_num_threads(), platform=platform.platform(),
                python=platform.python_version(), torch=torch.__version__, timm=timm_version,
                evit_mm=evit_mm.__version__)
    try:
        import onnxruntime
        info['onnxruntime'] = onnxruntime.__version__
    except ImportError:
        pass
    if 'cuda' in devices and torch.cuda.is_available():
        info['gpu'] = torch.cuda.get_device_name(0)
        info['cuda'] = torch.version.cuda
    return info
