"""Detection errors of DETR seen through reconstructions (paper Sec. 4.6, Fig. 10), with an error-detection score.

``modinv analyze errors --model detr-r50 --inverse CHAIN --data coco:ROOT[:split] --out DIR
[--threshold 0.7] [--iou 0.5] [--figure-images 4]`` writes ``DIR/errors.png`` and
``DIR/errors.json`` (:class:`modinv.analysis.errors.DetectionErrorResult` plus ``data``,
``inverse``, ``figure``).
"""

from __future__ import annotations

import argparse
from typing import Any

from modinv.analysis.errors import DEFAULT_THRESHOLD, IOU_THRESHOLD, detection_error_analysis, detection_error_figure
from modinv.cli.analyze.common import run_record, single_chain_inputs, write_result, wrote
from modinv.cli.common import number_in, positive_int
from modinv.metrics import format_ci


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threshold", type=number_in(0, 1, high_open=True), default=DEFAULT_THRESHOLD,
                        help="score above which a DETR query counts as a detection (default: 0.7)")
    parser.add_argument("--iou", type=number_in(0, 1, low_open=True), default=IOU_THRESHOLD,
                        help="IoU at which a detection matches a ground-truth object (default: 0.5)")
    parser.add_argument("--figure-images", type=positive_int, default=4, help="images shown in the figure (default: 4)")


def run(args: argparse.Namespace) -> dict[str, Any]:
    out, model, chain, source = single_chain_inputs(args, "detection-error")
    result = detection_error_analysis(model, chain, source, threshold=args.threshold, iou_threshold=args.iou,
                                      batch_size=args.batch, limit=args.limit, amp=args.amp,
                                      figure_images=args.figure_images)
    payload = write_result(out, "errors", result, plot=detection_error_figure, extra=run_record(args))
    print(f"{payload['n_objects']} objects: {payload['n_found']} found, {payload['n_missed']} missed "
          f"(score > {args.threshold:g}, IoU >= {args.iou:g})")
    for stage, r in payload["stages"].items():
        interval = r["auroc_ci95"] or (None, None)
        print(f"  {stage:<6} AUROC(missed | relative box discrepancy) {format_ci(r['auroc'], *interval, digits=3)}")
    wrote(out, "errors")
    return payload
