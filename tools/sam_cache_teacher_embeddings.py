#!/usr/bin/env python
"""Precompute the phase-1 teacher's image embeddings (SAM ViT-H) into a sharded, resumable disk cache.

    python tools/sam_cache_teacher_embeddings.py CONFIG [--out DIR] [--shard-size 256] [--batch-size 8]
        [--dtype float16|float32] [--hflip] [--device cuda] [--amp] [--part K --num-parts N] [--cfg-options ...]

CONFIG is a phase-1 config: its ``teacher`` (or ``model.teacher``) says which SAM image encoder to run, its
``train_dataloader.dataset`` which images (in the dataset's order), ``embedding_cache`` where to write (or
``--out``). Shard ``k`` holds images ``k * shard_size ...``; shards are written atomically, and a shard that
exists is skipped, so an interrupted run continues where it stopped. ``--part K --num-parts N`` processes the
shards ``k % N == K`` (one process per GPU or per node). ``--hflip`` also embeds the horizontally flipped images
(for ``SamRandomFlip(prob > 0)``). The teacher's input is made exactly as for the online teacher: longest side
resized to the teacher's size (PIL bilinear), padded, normalised with SAM's mean/std.
"""
import argparse
import copy
import os.path as osp
import sys
import time

import numpy as np
import torch

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from _runner_utils import load_config  # noqa: E402


def parse_args(argv=None):
    from mmengine.config import DictAction
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='a phase-1 config')
    parser.add_argument('--out', help='cache folder (default: the config\'s embedding_cache)')
    parser.add_argument('--shard-size', type=int, default=256, help='images per shard (default 256, ~512 MiB fp16)')
    parser.add_argument('--batch-size', type=int, default=8)
    parser.add_argument('--dtype', choices=['float16', 'float32'], default='float16', help='storage dtype')
    parser.add_argument('--hflip', action='store_true', help='also embed the horizontally flipped images')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--amp', action='store_true', help='run the teacher under bfloat16 autocast')
    parser.add_argument('--part', type=int, default=0, help='which part of the shards this process writes')
    parser.add_argument('--num-parts', type=int, default=1, help='into how many parts the shards are split')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, help='override config settings')
    args = parser.parse_args(argv)
    if not 0 <= args.part < args.num_parts:
        parser.error(f'--part must lie in [0, {args.num_parts})')
    if args.shard_size < 1 or args.batch_size < 1:
        parser.error('--shard-size and --batch-size must be >= 1')
    return args


def teacher_input(image: np.ndarray, size: int) -> torch.Tensor:
    """``(3, size, size)`` float tensor, before normalisation: what SamResizeLongestSide + SamPad (teacher_size)
    + SamPackInputs make of the image for the online teacher."""
    from evit_mm.sam.training.pipeline import pad_image
    from evit_mm.sam.transforms import resize_longest_side
    return torch.from_numpy(np.ascontiguousarray(pad_image(resize_longest_side(image, size), size).transpose(2, 0, 1)))


def main(argv=None):
    args = parse_args(argv)
    cfg = load_config(args.config, args.cfg_options)
    from mmengine.registry import DATASETS, init_default_scope
    from tqdm import tqdm

    from evit_mm.sam.training import BadSample, SamDataPreprocessor, build_sam_teacher
    from evit_mm.sam.training.cache import read_meta, shard_files, write_meta, write_shard

    init_default_scope(cfg.get('default_scope', 'mmengine'))
    teacher_cfg = cfg.get('teacher') or cfg.model.get('teacher')
    if not teacher_cfg:
        raise SystemExit(f'{args.config} names no teacher (set `teacher = dict(arch=..., checkpoint=...)`)')
    ds_cfg = copy.deepcopy(cfg.train_dataloader.dataset)
    out = args.out or ds_cfg.get('embedding_cache')
    if not out:
        raise SystemExit('no cache folder: pass --out or set train_dataloader.dataset.embedding_cache')
    ds_cfg.update(embedding_cache=None, with_masks=False, pipeline=[])
    dataset = DATASETS.build(ds_cfg)

    teacher = build_sam_teacher(**teacher_cfg).to(args.device)
    normalize = SamDataPreprocessor().to(args.device).normalize
    size = teacher.img_size
    with torch.no_grad():
        shape = list(teacher(torch.zeros(1, 3, size, size, device=args.device)).shape[1:])
    meta = dict(version=1, teacher=teacher.name, teacher_cfg=str(teacher_cfg), teacher_size=size, shape=shape,
                dtype=args.dtype, shard_size=args.shard_size, hflip=args.hflip, num_images=len(dataset))
    write_meta(out, meta)
    read_meta(out)

    n = len(dataset)
    num_shards = -(-n // args.shard_size)
    mine = [k for k in range(num_shards) if k % args.num_parts == args.part]
    rows = {k: min(args.shard_size, n - k * args.shard_size) for k in mine}
    done = [k for k in mine if osp.isfile(shard_files(out, k)['index'])]
    todo = [k for k in mine if k not in done]
    print(f'{len(dataset)} images, {num_shards} shards of {args.shard_size}; this part: {len(mine)} shards, '
          f'{len(done)} already done, {len(todo)} to go -> {out}', flush=True)
    dtype = np.float16 if args.dtype == 'float16' else np.float32
    bar = tqdm(total=sum(rows.values()), initial=sum(rows[k] for k in done), unit='img', desc='teacher embeddings')
    start = time.time()

    def embed(batch):
        x = normalize(torch.stack(batch).to(args.device))
        with torch.no_grad(), torch.autocast(device_type=torch.device(args.device).type, dtype=torch.bfloat16,
                                             enabled=args.amp):
            return teacher(x).float().cpu().numpy().astype(dtype)

    for k in todo:
        ids, skipped, inputs, flipped = [], [], [], []
        for idx in range(k * args.shard_size, k * args.shard_size + rows[k]):
            info = dataset.get_data_info(idx)
            try:
                image = dataset.read_image(info)
            except BadSample as err:
                dataset.report_bad(info['img_path'], 'bad sample', str(err))
                skipped.append(info['img_id'])
                bar.update(1)
                continue
            ids.append(info['img_id'])
            inputs.append(teacher_input(image, size))
            if args.hflip:
                flipped.append(teacher_input(np.ascontiguousarray(image[:, ::-1]), size))
        embeddings, hflip = [], []
        for i in range(0, len(inputs), args.batch_size):
            embeddings.append(embed(inputs[i:i + args.batch_size]))
            if args.hflip:
                hflip.append(embed(flipped[i:i + args.batch_size]))
            bar.update(len(inputs[i:i + args.batch_size]))
        empty = np.zeros((0, *shape), dtype)
        write_shard(out, k, ids, np.concatenate(embeddings) if embeddings else empty,
                    (np.concatenate(hflip) if hflip else empty) if args.hflip else None, skipped)
    bar.close()
    print(f'done: {len(todo)} shards written in {time.time() - start:.1f} s; {dataset.summary()}', flush=True)


if __name__ == '__main__':
    main()
