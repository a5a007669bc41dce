"""evit_mm.sam.coco_masks on deliberately bad inputs: bad segmentations (a polygon coordinate of 1e9, RLE runs
summing past height x width) in SA-1B / COCO training data and in zero-shot ground truth are counted and skipped,
naming the annotation id, **before pycocotools sees them**: the ``guarded_pycocotools`` fixture makes pycocotools
fail the test (instead of crashing the process) if it is ever handed such data."""
import json

import numpy as np
import pytest
from conftest import load_tool

from evit_mm.sam.coco_masks import BadAnnotation, decode_segmentation, polygon_margin, rle_counts

from .conftest import H, W, _encode, rect, write_image

HUGE = 1e9  # a polygon coordinate that crashes pycocotools (1e7 makes it allocate > 1 GB for a small mask)


def overflowing_rle():
    """A compressed RLE labelled ``[H, W]`` whose runs add up to H x (W + 1): a valid encoding of a wider mask."""
    rle = _encode(rect((H, W + 1), 10, 20, 10, 30))
    assert sum(rle_counts(rle['counts'])) == H * (W + 1)
    return {'size': [H, W], 'counts': rle['counts']}


@pytest.fixture
def guarded_pycocotools(monkeypatch):
    """pycocotools that raises AssertionError, instead of crashing, when asked to draw a polygon coordinate beyond
    1e5 or to decode an RLE whose runs do not add up to height x width. Returns the list of its calls."""
    from pycocotools import mask as mask_utils
    fr_py_objects, decode, calls = mask_utils.frPyObjects, mask_utils.decode, []

    def guarded_fr_py_objects(obj, h, w):
        if isinstance(obj, list) and obj and isinstance(obj[0], list):
            assert all(abs(v) < 1e5 for poly in obj for v in poly), f'pycocotools got polygon {obj}'
        calls.append(('frPyObjects', obj))
        return fr_py_objects(obj, h, w)

    def guarded_decode(rle):
        for r in (rle if isinstance(rle, list) else [rle]):
            counts = r['counts'].decode() if isinstance(r['counts'], bytes) else r['counts']
            assert sum(rle_counts(counts)) == r['size'][0] * r['size'][1], f'pycocotools got RLE {r}'
        calls.append(('decode', rle))
        return decode(rle)

    monkeypatch.setattr(mask_utils, 'frPyObjects', guarded_fr_py_objects)
    monkeypatch.setattr(mask_utils, 'decode', guarded_decode)
    return calls


@pytest.mark.parametrize('x, y', [(HUGE, 10), (10, -HUGE), (1e7, 1e7), (W + polygon_margin(W) + 1, 10),
                                  (10, -polygon_margin(H) - 0.5)])
def test_polygon_far_outside_the_image_is_rejected_before_pycocotools(guarded_pycocotools, x, y):
    with pytest.raises(BadAnnotation, match=f'outside the {W}x{H} image'):
        decode_segmentation([[1, 1, 20, 1, x, y, 1, 20]], H, W)
    assert guarded_pycocotools == []


def test_polygon_slightly_outside_the_image_decodes_as_pycocotools_does(guarded_pycocotools):
    """Vertices within the margin (max(4 px, 5 % of the side)) go to pycocotools unchanged; it clips to the image."""
    from pycocotools import mask as mask_utils
    assert polygon_margin(W) == 4 and polygon_margin(1000) == 50
    poly = [-3.5, -1, W + 4, -1, W + 4, H + 0.5, -3.5, H + 0.5]
    mask = decode_segmentation([poly], H, W)
    assert mask.all()  # the polygon covers the whole image
    rle = mask_utils.merge(mask_utils.frPyObjects([[10, 5, W + 2, 30, 12, H + 3]], H, W))
    np.testing.assert_array_equal(decode_segmentation([[10, 5, W + 2, 30, 12, H + 3]], H, W),
                                  mask_utils.decode(rle).astype(bool))


def test_rle_runs_past_height_x_width_are_rejected_before_pycocotools(guarded_pycocotools):
    with pytest.raises(BadAnnotation, match=f'add up to {H * (W + 1)}'):
        decode_segmentation(overflowing_rle(), H, W)
    with pytest.raises(BadAnnotation, match='add up to'):
        decode_segmentation({'size': [H, W], 'counts': [H * W, 5]}, H, W)
    assert guarded_pycocotools == []


def test_coco_training_skips_and_counts_absurd_polygons_and_bad_rle(coins_coco, tmp_path, guarded_pycocotools):
    from mmengine.registry import DATASETS

    import evit_mm.sam.training  # noqa: F401  (registers SamCocoDataset)
    record = json.load(open(coins_coco['train_ann']))
    anns = record['annotations']
    image_id = anns[0]['image_id']
    img = next(i for i in record['images'] if i['id'] == image_id)
    h, w = img['height'], img['width']
    huge = dict(anns[0], id=900001, segmentation=[[1, 1, 30, 1, HUGE, 40]])
    bad_rle = dict(anns[0], id=900002, segmentation={'size': [h, w], 'counts': [h * w - 3, 10]})
    record['annotations'] = anns + [huge, bad_rle]
    ann_file = tmp_path / 'instances.json'
    ann_file.write_text(json.dumps(record))
    ds = DATASETS.build(dict(type='SamCocoDataset', ann_file=str(ann_file),
                             data_prefix=dict(img=coins_coco['train_img']), num_masks=8, pipeline=[]))
    samples = [ds[i] for i in range(len(ds))]  # the bad annotations' image is still used, with its other masks
    assert all(s['gt_masks'].shape[0] == 8 for s in samples)
    assert ds.bad_counts == {'invalid annotation': 2}, ds.bad_files
    reasons = ds.bad_files[f'{ann_file} (image {image_id})']
    assert any('annotation id 900001' in r and f'outside the {w}x{h} image' in r for r in reasons), reasons
    assert any('annotation id 900002' in r and 'add up to' in r for r in reasons), reasons


def test_sa1b_skips_and_counts_absurd_polygons_and_bad_rle(tmp_path, guarded_pycocotools):
    from mmengine.registry import DATASETS
    from PIL import Image
    from skimage import data

    import evit_mm.sam.training  # noqa: F401  (registers SA1BDataset)
    from evit_mm.sample_data.sa1b import encode_sa1b_annotation
    Image.fromarray(data.astronaut()[:H, :W]).save(tmp_path / 'sa_1.jpg')
    good = encode_sa1b_annotation(rect((H, W), 5, 30, 5, 40), 7)
    anns = [good, dict(good, id=8, segmentation=[[1, 1, 30, 1, 10, -HUGE]]),
            dict(good, id=9, segmentation=overflowing_rle())]
    json.dump({'image': {'image_id': 1, 'width': W, 'height': H, 'file_name': 'sa_1.jpg'}, 'annotations': anns},
              open(tmp_path / 'sa_1.json', 'w'))
    ds = DATASETS.build(dict(type='SA1BDataset', data_root=str(tmp_path), num_masks=3, pipeline=[]))
    sample = ds[0]
    assert sample['gt_masks'].shape == (3, H, W) and all(np.array_equal(m, rect((H, W), 5, 30, 5, 40))
                                                         for m in sample['gt_masks'])
    assert ds.bad_counts == {'invalid annotation': 2}, ds.bad_files
    reasons = ds.bad_files[str(tmp_path / 'sa_1.json')]
    assert any(r.startswith('invalid annotation: annotation id 8: polygon 0') for r in reasons), reasons
    assert any('annotation id 9: RLE run lengths add up to' in r for r in reasons), reasons


def bad_gt_set(tmp_path):
    """One image, one good annotation (id 1) and three whose segmentation pycocotools cannot decode safely."""
    write_image(tmp_path)
    good = {'image_id': 1, 'category_id': 1, 'bbox': [10, 10, 21, 11], 'area': 231, 'iscrowd': 0,
            'segmentation': _encode(rect((H, W), 10, 20, 10, 30))}
    anns = [dict(good, id=1),
            dict(good, id=2, segmentation=[[10, 10, 30, 10, HUGE, 20]]),                      # absurd polygon
            dict(good, id=3, segmentation=overflowing_rle()),                                # runs past H x W
            dict(good, id=4, segmentation={'size': [H, W], 'counts': [H * W, 7]}, iscrowd=1)]  # same, uncompressed
    ann_file = tmp_path / 'gt.json'
    json.dump({'images': [{'id': 1, 'file_name': 'img.png', 'height': H, 'width': W}], 'annotations': anns,
               'categories': [{'id': 1, 'name': 'thing'}]}, open(ann_file, 'w'))
    dets = tmp_path / 'dets.json'
    json.dump([{'image_id': 1, 'category_id': 1, 'bbox': [10, 10, 21, 11], 'score': 0.9}], open(dets, 'w'))
    return str(ann_file), str(dets)


def test_zero_shot_counts_and_skips_bad_gt_segmentations(tmp_path, guarded_pycocotools, capsys):
    from evit_mm.sam.zero_shot import ZeroShotDataset
    ann_file, dets = bad_gt_set(tmp_path)
    ds = ZeroShotDataset(ann_file, str(tmp_path))
    assert ds.issues.counts == {'invalid_segmentation': 3} and ds.dropped_ann_ids == {2, 3, 4}
    assert [a['id'] for a in ds.gt_dict()['annotations']] == [1]  # not ground truth for the AP modes either
    messages = ds.issues.examples['invalid_segmentation']
    assert 'annotation id 2' in messages[0] and 'outside the 80x64 image' in messages[0]
    assert 'annotation id 3' in messages[1] and f'add up to {H * (W + 1)}' in messages[1]
    assert 'annotation id 4' in messages[2] and f'add up to {H * W + 7}' in messages[2]

    out, tool = tmp_path / 'out', load_tool('eval_sam_zero_shot')
    assert tool.main(['--ann-file', ann_file, '--image-dir', str(tmp_path), '--model', 'oracle', '--mode',
                      'box', 'points', 'detector', '--det-file', dets, '--out-dir', str(out),
                      '--no-progress']) == 0
    res = json.load(open(out / 'results.json'))
    assert res['images_evaluated'] == 1 and res['box']['count'] == 1 and res['box']['mIoU'] == 100
    assert res['points']['1_click']['mIoU'] == 100 and res['detector']['AP'] == pytest.approx(1.0)
    assert res['issues']['invalid_segmentation']['count'] == 3
    assert 'invalid_segmentation: 3' in capsys.readouterr().out
