#!/usr/bin/env python
"""Export EfficientViT-SAM to ONNX (image encoder and prompt decoder, two files) and check them in onnxruntime.

    python tools/sam_export_onnx.py --model efficientvit_sam_l0 [--pretrained | --checkpoint FILE] --out-dir onnx/
                                    [--return-single-mask] [--no-check] [--opset 17] [--image-size N]

Writes ``OUT_DIR/efficientvit_sam_{model}_encoder.onnx`` (``input_image`` (B, 3, S, S), normalised and padded,
-> ``image_embeddings`` (B, 256, 64, 64)) and ``..._decoder.onnx`` (segment-anything's ONNX decoder interface:
``image_embeddings, point_coords, point_labels, mask_input, has_mask_input, orig_im_size`` -> ``masks,
iou_predictions, low_res_masks``; prompts in the 1024 frame, see evit_mm/sam/onnx.py). Unless ``--no-check``,
both graphs are run in onnxruntime on a real photograph (scikit-image's chelsea) with a point and a box prompt,
and compared with PyTorch; the tool fails if any output differs by more than ``--atol`` (1e-4).
``--pretrained``: the published weights (downloaded once, cached; docs/model_zoo.md); ``--checkpoint``: a path,
URL or ``evit://`` name. With neither the weights are random (fine for checking the export, not for use).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--model', default='efficientvit_sam_l0', help='efficientvit_sam_l0 ... _xl1 (or l0 ... xl1)')
    ap.add_argument('--pretrained', action='store_true', help='the published weights (downloaded once, cached)')
    ap.add_argument('--checkpoint', help='weights: a path, a URL or evit://NAME (default: random weights)')
    ap.add_argument('--out-dir', required=True)
    ap.add_argument('--image-size', type=int, help='encoder input size (default: the variant\'s, 512 or 1024)')
    ap.add_argument('--return-single-mask', action='store_true', help='decoder returns only the best mask')
    ap.add_argument('--opset', type=int, default=17)
    ap.add_argument('--static-batch', action='store_true', help='encoder with a fixed batch of 1')
    ap.add_argument('--no-check', action='store_true', help='skip the onnxruntime comparison')
    ap.add_argument('--atol', type=float, default=1e-4)
    args = ap.parse_args(argv)

    import torch
    from evit_mm.sam import EfficientViTSamPredictor, build_efficientvit_sam, preprocess_image
    from evit_mm.sam.onnx import check_onnx, decoder_inputs, export_decoder, export_encoder

    if args.checkpoint is None and not args.pretrained:
        print('warning: neither --pretrained nor --checkpoint: exporting random weights', file=sys.stderr)
    try:
        model = build_efficientvit_sam(args.model, args.checkpoint, image_size=args.image_size,
                                       pretrained=args.pretrained)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        raise SystemExit(f'error: {e}')
    stem = os.path.join(args.out_dir, f'efficientvit_sam_{model.variant}')
    t0 = time.perf_counter()
    enc = export_encoder(model, stem + '_encoder.onnx', dynamic_batch=not args.static_batch, opset=args.opset)
    dec = export_decoder(model, stem + '_decoder.onnx', return_single_mask=args.return_single_mask, opset=args.opset)
    print(f'wrote {enc} and {dec} ({time.perf_counter() - t0:.1f} s)')
    if args.no_check:
        return 0

    import skimage.data
    img = skimage.data.chelsea()
    x = preprocess_image(img, model.image_encoder.img_size)
    with torch.no_grad():
        emb = model.image_encoder(x)
    _, diff = check_onnx(enc, {'input_image': x.numpy()}, [emb], atol=args.atol)
    print(f'encoder: onnxruntime vs PyTorch max abs diff {diff:.2e}')
    pred = EfficientViTSamPredictor(model)
    pred.set_image(img)
    prompts = {'point': dict(point_coords=np.array([[210.0, 140.0]]), point_labels=np.array([1])),
               'box': dict(box=np.array([60.0, 30.0, 320.0, 280.0]))}
    for name, kw in prompts.items():
        feeds = decoder_inputs(img.shape[:2], pred.features, **kw)
        outs, _ = check_onnx(dec, feeds)
        if args.return_single_mask:
            # SAM's ONNX selection: the single-mask output for more than 2 prompt points (padding point and box
            # corners included), else the multimask output with the highest predicted IoU
            if feeds['point_coords'].shape[1] > 2:
                want = pred.predict(multimask_output=False, return_logits=True, **kw)
            else:
                masks, iou, low = pred.predict(return_logits=True, **kw)
                i = int(np.argmax(iou))
                want = (masks[i:i + 1], iou[i:i + 1], low[i:i + 1])
            got = (outs[0][0], outs[1][0], outs[2][0])
        else:
            want = pred.predict(return_logits=True, **kw)
            got = (outs[0][0, 1:], outs[1][0, 1:], outs[2][0, 1:])
        diff = max(float(np.abs(g - w).max()) for g, w in zip(got, want))
        print(f'decoder ({name}): onnxruntime vs PyTorch max abs diff {diff:.2e}')
        if diff > args.atol:
            print(f'error: decoder differs by more than {args.atol}', file=sys.stderr)
            return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
