"""mmengine DDP on machines without CUDA (CPU processes with the gloo backend).

mmengine 0.10.7's ``pytorch`` launcher always calls ``torch.cuda.set_device`` and wraps the model with
``device_ids=[LOCAL_RANK]``; both fail without a GPU. The Runner skips its own process-group set-up when one
exists, and takes ``model_wrapper_cfg`` for the wrapper, so a CPU run only needs both prepared beforehand.
Useful for smoke-testing distributed configs anywhere; real training uses GPUs and NCCL as usual.
"""
from __future__ import annotations

import torch


def prepare_cpu_distributed(cfg) -> bool:
    """If ``cfg.launcher`` is distributed and there is no CUDA, start a gloo process group from torchrun's
    environment and make mmengine's DDP wrap the CPU model. Returns whether it did. Call before building the
    Runner."""
    if cfg.get('launcher', 'none') == 'none' or torch.cuda.is_available():
        return False
    import torch.distributed as dist
    if cfg.launcher != 'pytorch':
        raise RuntimeError(f"launcher '{cfg.launcher}' needs GPUs; without CUDA only torchrun "
                           "(--launcher pytorch, tools/dist_train.sh) runs distributed on CPU processes")
    if not dist.is_initialized():
        dist.init_process_group(backend='gloo')  # rank, world size and master address from torchrun's env
    # the config the Runner logs (and dumps into the work dir) says what runs: gloo, not the bases' nccl
    env_cfg = cfg.get('env_cfg') or {}
    cfg.env_cfg = dict(env_cfg, dist_cfg=dict(env_cfg.get('dist_cfg') or {}, backend=dist.get_backend()))
    if cfg.get('sync_bn'):  # torch's SyncBatchNorm runs on GPUs only; per-process BN statistics instead
        cfg.sync_bn = None
    wrapper = dict(cfg.get('model_wrapper_cfg') or dict(type='MMDistributedDataParallel'))
    wrapper.setdefault('device_ids', None)  # a CPU module takes no device ids
    cfg.model_wrapper_cfg = wrapper
    return True
