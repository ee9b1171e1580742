"""bfloat16 against float32 inference of a trained classifier on its held-out set: top-1 accuracy of each
and how often their top-1 classes agree, for a bfloat16 model and for float32 weights under bf16 autocast.

    python benchmarks/bf16_agreement.py runs/digits/pvt_v2_b0/last.pth      # after `make demo`

The checkpoint's own held-out data (scikit-learn's digits for the demo's) and preprocessing. On a CPU with
bf16 kernels (AVX512-BF16, AMX) both bfloat16 variants run on the fused oneDNN path.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from pvtv2.classification.digits import Digits
from pvtv2.classification.inference import load_classifier
from pvtv2.classification.transforms import eval_transform
from pvtv2.errors import PvtError
from pvtv2.models import cpu_inference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a pvt train checkpoint of the digits demo")
    args = parser.parse_args()
    try:
        classifier = load_classifier(args.checkpoint)
    except PvtError as error:  # a user's mistake (missing file, not a classifier checkpoint): one line
        sys.exit(f"bf16_agreement.py: error: {error}")
    transform = eval_transform(classifier.img_size, classifier.crop_pct, classifier.interpolation)
    held_out = Digits("val", classifier.img_size, transform)
    images = torch.stack([image for image, _ in held_out])
    labels = torch.tensor(held_out.targets)
    model = classifier.model.eval()
    with torch.inference_mode():
        full = model(images).argmax(1)
        with torch.autocast("cpu", torch.bfloat16):
            autocast = model(images).argmax(1)
        bf16_model = model.to(torch.bfloat16)(images.bfloat16()).argmax(1)
    report = dict(
        checkpoint=args.checkpoint, images=len(labels), fused_bf16_kernels=cpu_inference.ONEDNN_BF16,
        top1_fp32=100 * float((full == labels).float().mean()),
        top1_bf16_autocast=100 * float((autocast == labels).float().mean()),
        top1_bf16_model=100 * float((bf16_model == labels).float().mean()),
        agreement_bf16_autocast=100 * float((autocast == full).float().mean()),
        agreement_bf16_model=100 * float((bf16_model == full).float().mean()),
    )
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
