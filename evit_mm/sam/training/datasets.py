"""Datasets for EfficientViT-SAM training: SA-1B (folders or the distributed ``.tar`` shards) and COCO-format
instance annotations (fine-tuning on your own data), plus the samplers that make their randomness resumable.

**Random choices** (which masks, flip, prompts) come from ``numpy.random.default_rng([seed, pass, index])``:
the samplers below yield *virtual* indices ``pass * len(dataset) + index``, so a sample drawn again in a later
pass gets new masks and prompts, and a resumed run (mmengine replays the sampler) draws exactly what the
uninterrupted run drew, whatever the number of dataloader workers.

**Bad data never stops a run.** A missing annotation file is reported and counted when the dataset is listed;
an unreadable image or annotation file, or one without a single valid mask, is reported (a warning naming the
file and the reason), counted and skipped when it is first loaded (the next index is used instead, so the
choice stays deterministic); a single bad annotation (invalid RLE or polygon, size mismatch, empty mask) is
reported (naming its annotation id), counted and left out while the image's other masks are used. Every
segmentation is checked before pycocotools sees it (:mod:`evit_mm.sam.coco_masks`): RLE runs must add up to
height x width, polygon coordinates must be finite and within a small margin of the image.
``dataset.bad_counts`` holds the counts by reason, ``dataset.bad_files`` the reasons by file (each
process/worker counts what it loaded itself).
"""
from __future__ import annotations

import io
import itertools
import json
import logging
import os
import os.path as osp
import tarfile
from collections import Counter
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from mmengine.dataset import BaseDataset, DefaultSampler, InfiniteSampler
from mmengine.logging import print_log
from mmengine.registry import DATA_SAMPLERS, DATASETS
from PIL import Image

from ..coco_masks import BadAnnotation, decode_segmentation
from ..transforms import as_rgb_uint8
from .cache import EmbeddingCache

__all__ = ['BadSample', 'SamMaskDataset', 'SA1BDataset', 'SamCocoDataset', 'SamInfiniteSampler',
           'SamDefaultSampler']


class BadSample(RuntimeError):
    """A sample that cannot be used at all (unreadable image or annotation file, no valid mask)."""


def _ann_name(ann: Any, index: int) -> str:
    """How reports name an annotation: by its ``id``, else by its position in the file's list."""
    if isinstance(ann, dict) and 'id' in ann:
        return f'annotation id {ann["id"]}'
    return f'annotations[{index}]'


def _read_bytes(source: Sequence) -> bytes:
    """``('file', path)`` or ``('tar', tar_path, offset, size)`` -> the file's bytes."""
    if source[0] == 'file':
        with open(source[1], 'rb') as f:
            return f.read()
    tar_path, offset, size = source[1:4]
    with open(tar_path, 'rb') as f:
        f.seek(offset)
        data = f.read(size)
    if len(data) != size:
        raise OSError(f'{tar_path} is truncated')
    return data


class SamMaskDataset(BaseDataset):
    """What SA-1B and COCO-format datasets share: image reading, mask sampling, bad-data accounting, seeding.

    Args:
        num_masks: masks per image (64 in the reference): drawn without replacement, repeated (at random) to
            fill up when the image has fewer valid masks, so that every sample holds exactly ``num_masks``.
        with_masks: decode masks (phase 2); phase 1 needs only the images.
        embedding_cache: a folder written by ``tools/sam_cache_teacher_embeddings.py``; adds the teacher's
            embedding (``teacher_embedding``) to each sample.
        seed: the base of every sample's random stream.
        max_refetch: give up (with an error) after this many consecutive bad samples.
        Other arguments: mmengine's ``BaseDataset``.
    """

    def __init__(self, *, num_masks: int = 64, with_masks: bool = True, embedding_cache: Optional[str] = None,
                 seed: int = 0, max_refetch: int = 100, **kwargs):
        if num_masks < 1:
            raise ValueError(f'num_masks must be >= 1, got {num_masks}')
        self.num_masks = int(num_masks)
        self.with_masks = bool(with_masks)
        self.seed = int(seed)
        self.bad_counts: Counter = Counter()
        self.bad_files: Dict[str, List[str]] = {}
        self._bad_indices: set = set()
        self.embedding_cache = EmbeddingCache(embedding_cache) if embedding_cache else None
        super().__init__(max_refetch=max_refetch, **kwargs)

    # -- bad data ------------------------------------------------------------------------------------------------
    def report_bad(self, file: str, kind: str, detail: str = '') -> None:
        """Count and log one problem with ``file`` (once per process: a file met again is not counted again)."""
        reason = f'{kind}: {detail}' if detail else kind
        if reason in self.bad_files.get(file, ()):
            return
        self.bad_counts[kind] += 1
        self.bad_files.setdefault(file, []).append(reason)
        print_log(f'{type(self).__name__}: {file}: {reason} (skipped)', logger='current', level=logging.WARNING)

    # -- reading -------------------------------------------------------------------------------------------------
    def read_image(self, info: dict) -> np.ndarray:
        """The RGB uint8 image of a data-list entry. Raises :class:`BadSample` if it cannot be decoded."""
        try:
            with Image.open(io.BytesIO(_read_bytes(info['img_source']))) as im:
                return as_rgb_uint8(np.asarray(im.convert('RGB')))
        except Exception as err:  # noqa: BLE001 - PIL raises many types for broken files
            raise BadSample(f'unreadable image ({type(err).__name__}: {err})') from err

    def load_segmentations(self, info: dict) -> List[Tuple[str, Any]]:
        """The raw segmentations of an entry as ``(name, segmentation)`` pairs, the name saying which annotation
        it is in reports (``'annotation id 7'``) (subclasses). Raises :class:`BadSample` for an unusable file."""
        raise NotImplementedError

    def sample_masks(self, info: dict, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
        """``(num_masks, height, width)`` bool masks drawn from the entry's valid annotations."""
        segmentations = self.load_segmentations(info)
        ann_file = info.get('ann_path', info['img_path'])
        masks: List[np.ndarray] = []
        for k in rng.permutation(len(segmentations)):
            name, segmentation = segmentations[k]
            try:
                mask = decode_segmentation(segmentation, height, width)
            except BadAnnotation as err:
                self.report_bad(ann_file, 'invalid annotation', f'{name}: {err}')
                continue
            if not mask.any():
                self.report_bad(ann_file, 'empty mask', name)
                continue
            masks.append(mask)
            if len(masks) == self.num_masks:
                break
        if not masks:
            raise BadSample('no valid mask')
        if len(masks) < self.num_masks:
            masks += [masks[i] for i in rng.integers(len(masks), size=self.num_masks - len(masks))]
        return np.stack(masks)

    def load_sample(self, idx: int, epoch: int = 0) -> dict:
        """Everything a pipeline needs for index ``idx`` in pass ``epoch`` (raises :class:`BadSample`)."""
        info = self.get_data_info(idx)
        rng = np.random.default_rng([self.seed, int(epoch), int(idx)])
        image = self.read_image(info)
        results = dict(info, img=image, ori_shape=image.shape[:2], rng=rng,
                       sample_seed=int(rng.integers(2 ** 31 - 1)))
        if self.with_masks:
            results['gt_masks'] = self.sample_masks(info, image.shape[0], image.shape[1], rng)
        if self.embedding_cache is not None:
            results.update(self.embedding_cache.get(info['img_id']))
        return results

    def __getitem__(self, idx: int) -> dict:
        if not self._fully_initialized:
            self.full_init()
        n = len(self)
        if n == 0:
            raise IndexError(f'{type(self).__name__} is empty')
        epoch, first = divmod(int(idx), n)
        for attempt in range(self.max_refetch + 1):
            i = (first + attempt) % n
            if i in self._bad_indices:
                continue
            try:
                return self.pipeline(self.load_sample(i, epoch))
            except BadSample as err:
                info = self.get_data_info(i)
                self.report_bad(info.get('ann_path') or info['img_path'], 'bad sample', str(err))
                self._bad_indices.add(i)
        raise RuntimeError(f'{type(self).__name__}: {self.max_refetch + 1} consecutive unusable samples from index '
                           f'{first}; bad files so far: {dict(list(self.bad_files.items())[:10])}')

    def summary(self) -> str:
        """One line: how many problems of each kind were met so far."""
        if not self.bad_counts:
            return f'{type(self).__name__}: no bad data'
        kinds = ', '.join(f'{k}: {v}' for k, v in sorted(self.bad_counts.items()))
        return f'{type(self).__name__}: {kinds} (in {len(self.bad_files)} files)'


@DATASETS.register_module()
class SA1BDataset(SamMaskDataset):
    """SA-1B in its official layout: pairs ``sa_<id>.jpg`` + ``sa_<id>.json`` (COCO RLE masks).

    The pairs are read from ``data_root`` (``img_dir``/``ann_dir`` sub-folders, both ``''`` by default, i.e.
    extracted shards side by side; ``img_dir='images', ann_dir='masks'`` is the reference trainer's layout) and
    from the ``.tar`` shards as distributed (``shards``: a list of paths, or the ``*.tar`` files of
    ``data_root/shard_dir``), read in place: each member is located once (offset and size) and read with one
    ``seek`` + ``read``. ``ann_file`` may list the image stems to use (one per line, e.g. ``sa_1``), in order.
    """

    def __init__(self, data_root: str = '', img_dir: str = '', ann_dir: Optional[str] = None,
                 shards: Optional[Sequence[str]] = None, shard_dir: Optional[str] = None, ann_file: str = '',
                 **kwargs):
        self.img_dir, self.ann_dir = img_dir, img_dir if ann_dir is None else ann_dir
        self.shards, self.shard_dir = shards, shard_dir
        super().__init__(data_root=data_root, ann_file=ann_file, **kwargs)

    def _shard_paths(self) -> List[str]:
        if self.shards is not None:
            return [osp.join(self.data_root, s) for s in self.shards]
        if self.shard_dir is not None:
            folder = osp.join(self.data_root, self.shard_dir)
            return sorted(osp.join(folder, f) for f in os.listdir(folder) if f.endswith('.tar'))
        return []

    def _folder_pairs(self) -> Dict[str, dict]:
        img_folder = osp.join(self.data_root, self.img_dir)
        ann_folder = osp.join(self.data_root, self.ann_dir)
        if not (self.shards or self.shard_dir) and not osp.isdir(img_folder):
            raise FileNotFoundError(f'SA1BDataset: no image folder {img_folder}')
        pairs = {}
        if osp.isdir(img_folder):
            for name in sorted(os.listdir(img_folder)):
                stem, ext = osp.splitext(name)
                if ext.lower() != '.jpg':
                    continue
                ann = osp.join(ann_folder, stem + '.json')
                pairs[stem] = dict(img=('file', osp.join(img_folder, name)),
                                   ann=('file', ann) if osp.isfile(ann) else None,
                                   img_path=osp.join(img_folder, name), ann_path=ann)
        return pairs

    @staticmethod
    def _scan_tar(tar_path: str) -> List[list]:
        """``[name, offset, size]`` of every ``.jpg``/``.json`` member, read once and then kept beside the shard in
        ``<shard>.index.json`` (if the folder is writable): scanning 1000 SA-1B shards reads 22M tar headers,
        which every rank of every run would otherwise repeat."""
        stat = os.stat(tar_path)
        key = [stat.st_size, int(stat.st_mtime)]
        index_path = tar_path + '.index.json'
        try:
            with open(index_path) as f:
                index = json.load(f)
            if index.get('tar') == key:
                return index['members']
        except (OSError, ValueError):
            pass
        with tarfile.open(tar_path, 'r:') as tar:
            members = [[m.name, m.offset_data, m.size] for m in tar
                       if m.isfile() and osp.splitext(m.name)[1].lower() in ('.jpg', '.json')]
        try:
            tmp = f'{index_path}.{os.getpid()}.tmp'
            with open(tmp, 'w') as f:
                json.dump({'tar': key, 'members': members}, f)
            os.replace(tmp, index_path)
        except OSError:
            pass  # a read-only dataset folder: scan again next time
        return members

    def _tar_pairs(self, tar_path: str) -> Dict[str, dict]:
        members: Dict[str, dict] = {}
        for name, offset, size in self._scan_tar(tar_path):
            stem, ext = osp.splitext(osp.basename(name))
            entry = members.setdefault(stem, {})
            key = 'img' if ext.lower() == '.jpg' else 'ann'
            entry[key] = ('tar', tar_path, offset, size, name)
            entry[key + '_path'] = f'{tar_path}:{name}'
        pairs = {}
        for stem, e in members.items():
            if 'img' not in e:
                continue  # a json without its image: nothing to train on
            pairs[stem] = dict(img=e['img'], ann=e.get('ann'), img_path=e['img_path'],
                               ann_path=e.get('ann_path', f'{tar_path}:{stem}.json'))
        return pairs

    def load_data_list(self) -> List[dict]:
        pairs = self._folder_pairs()
        for tar_path in self._shard_paths():
            for stem, pair in self._tar_pairs(tar_path).items():
                pairs.setdefault(stem, pair)
        stems = sorted(pairs, key=lambda s: (len(s), s))
        if self.ann_file:
            with open(self.ann_file) as f:
                wanted = [line.strip() for line in f if line.strip()]
            missing = [s for s in wanted if s not in pairs]
            for s in missing:
                self.report_bad(s, 'missing image', f'listed in {self.ann_file}')
            stems = [s for s in wanted if s in pairs]
        data_list = []
        for stem in stems:
            p = pairs[stem]
            if self.with_masks and p['ann'] is None:
                self.report_bad(p['ann_path'], 'missing json', f'no annotation file for {p["img_path"]}')
                continue
            data_list.append(dict(img_id=stem, img_path=p['img_path'], ann_path=p['ann_path'],
                                  img_source=p['img'], ann_source=p['ann']))
        if not data_list:
            raise FileNotFoundError(f'SA1BDataset: no usable sa_*.jpg/.json pairs under {self.data_root!r}')
        return data_list

    def load_segmentations(self, info: dict) -> List[Tuple[str, Any]]:
        try:
            record = json.loads(_read_bytes(info['ann_source']))
        except (OSError, ValueError) as err:
            raise BadSample(f'unreadable annotation file ({type(err).__name__}: {err})') from err
        anns = record.get('annotations') if isinstance(record, dict) else None
        if not isinstance(anns, list):
            raise BadSample('the annotation file has no "annotations" list')
        segs = []
        for k, ann in enumerate(anns):
            if isinstance(ann, dict) and 'segmentation' in ann:
                segs.append((_ann_name(ann, k), ann['segmentation']))
            else:
                self.report_bad(info['ann_path'], 'invalid annotation',
                                f'{_ann_name(ann, k)} has no segmentation')
        return segs


@DATASETS.register_module()
class SamCocoDataset(SamMaskDataset):
    """Instance masks from a COCO-format annotation file (polygons or RLE), for fine-tuning on your own data.

    ``ann_file`` (relative to ``data_root``) and ``data_prefix=dict(img='train2017/')`` as in mmdet's
    ``CocoDataset``. Every non-crowd annotation is a mask to learn (categories are ignored: SAM is class
    agnostic); crowd regions are left out unless ``with_crowd``. Images without annotations are not listed.
    """

    def __init__(self, ann_file: str, data_prefix: dict = dict(img=''), with_crowd: bool = False, **kwargs):
        self.with_crowd = with_crowd
        super().__init__(ann_file=ann_file, data_prefix=data_prefix, **kwargs)

    def load_data_list(self) -> List[dict]:
        from pycocotools.coco import COCO
        try:
            with open(self.ann_file) as f:
                record = json.load(f)
            coco = COCO()
            coco.dataset = record
            coco.createIndex()
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ValueError(f'SamCocoDataset: cannot read the COCO annotation file {self.ann_file}: '
                             f'{type(err).__name__}: {err}') from err
        prefix = self.data_prefix.get('img', '')
        data_list = []
        for img_id in sorted(coco.getImgIds()):
            img = coco.imgs[img_id]
            segs = []
            for ann in coco.imgToAnns.get(img_id, []):
                if ann.get('iscrowd', 0) and not self.with_crowd:
                    continue
                if 'segmentation' not in ann:
                    self.report_bad(f'{self.ann_file} (annotation {ann.get("id")})', 'invalid annotation',
                                    'no segmentation')
                    continue
                segs.append((_ann_name(ann, len(segs)), ann['segmentation']))
            if not segs:
                continue
            path = osp.join(prefix, img['file_name'])
            data_list.append(dict(img_id=str(img_id), img_path=path, ann_path=f'{self.ann_file} (image {img_id})',
                                  img_source=('file', path), segmentations=segs,
                                  height=img.get('height'), width=img.get('width')))
        if not data_list:
            raise ValueError(f'SamCocoDataset: {self.ann_file} has no image with usable annotations')
        return data_list

    def load_segmentations(self, info: dict) -> List[Tuple[str, Any]]:
        return info['segmentations']


def _virtual(indices: Iterator[int], size: int) -> Iterator[int]:
    """``index`` -> ``pass * size + index``, counting passes by position in the stream."""
    for position, index in enumerate(indices):
        yield (position // size) * size + int(index)


@DATA_SAMPLERS.register_module()
class SamInfiniteSampler(InfiniteSampler):
    """mmengine's ``InfiniteSampler`` (iteration-based training) yielding virtual indices
    ``pass * len(dataset) + index``, so that :class:`SamMaskDataset` draws new masks and prompts in every pass.
    Shuffling, seeding and rank slicing are mmengine's."""

    def _infinite_indices(self) -> Iterator[int]:
        return _virtual(super()._infinite_indices(), self.size)

    def skip(self, num_samples: int) -> None:
        """Restart this rank's stream ``num_samples`` indices in, without loading anything (for resuming, see
        :class:`~evit_mm.sam.training.loops.SamIterBasedTrainLoop`)."""
        self.indices = itertools.islice(self._indices_of_rank(), int(num_samples), None)


@DATA_SAMPLERS.register_module()
class SamDefaultSampler(DefaultSampler):
    """mmengine's ``DefaultSampler`` (epoch-based training) yielding ``epoch * len(dataset) + index``."""

    def __iter__(self) -> Iterator[int]:
        size = len(self.dataset)
        return (self.epoch * size + int(i) for i in super().__iter__())
