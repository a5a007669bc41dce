"""Hardening of SAM's annotation decoding and of the zero-shot tool, on real and deliberately bad inputs.

* Bad segmentations (a polygon coordinate of 1e9, RLE runs summing past height x width) in SA-1B / COCO training
  data and in zero-shot ground truth are counted and skipped, naming the annotation id, **before pycocotools
  sees them**: the ``guarded_pycocotools`` fixture makes pycocotools fail the test (instead of crashing the
  process) if it is ever handed such data.
* The zero-shot tool fails a run that evaluated no image; the clicker's stopping and tie rules; the oracle on
  nested masks."""
import numpy as np

H, W = 64, 80  # the test image: a crop of skimage's astronaut


def _encode(mask):
    from pycocotools import mask as mask_utils
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {'size': [int(v) for v in rle['size']], 'counts': rle['counts'].decode('ascii')}


def rect(shape, y0, y1, x0, x1):
    m = np.zeros(shape, bool)
    m[y0:y1 + 1, x0:x1 + 1] = True
    return m


def write_image(folder, name='img.png'):
    from PIL import Image
    from skimage import data
    image = data.astronaut()[:H, :W]
    Image.fromarray(image).save(folder / name)
    return image
