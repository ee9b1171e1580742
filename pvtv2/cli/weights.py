"""``pvt weights list | download NAME... | import NAME FILE``: the official release's pretrained weights.

Weights are cached in $PVT_HOME (default: torch.hub's cache, $TORCH_HOME/hub/checkpoints). Set
PVT_WEIGHTS_MIRROR to a base URL or a shared folder to read NAME.pth from there instead of the release.
On a machine without internet access, download the file elsewhere and import it: ``pvt weights import
NAME FILE`` checks it against the model and caches it.

The trained detectors and segmenters of the paper (``--task detection|segmentation``) were released as
MMDetection / MMSegmentation checkpoints on pages that need a browser: download one from its page, then
``pvt weights import NAME FILE`` checks that it is that model and caches it, and ``--checkpoint NAME`` finds
it offline afterwards (det-predict, det-eval, seg-predict, seg-eval, show).
"""

from __future__ import annotations

import argparse
import fnmatch
from pathlib import Path

from ..engine.release import released_cache_path, released_models
from ..models import download
from .common import CommandError, format_table, select_models

TASKS = ("classification", "detection", "segmentation")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "weights", help="list, download or import the pretrained weights", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    listing = actions.add_parser("list", help="each model's weights: source, size, top-1 (or AP, mIoU), cached or not")
    listing.add_argument("patterns", nargs="*", metavar="PATTERN", help="shell-style filters (default: all)")
    listing.add_argument("--task", choices=TASKS, default="classification",
                         help="classification: the ImageNet weights (default); detection, segmentation: the trained "
                              "detectors and segmenters of the paper, with their published AP / mIoU")
    listing.set_defaults(handler=run_list)

    downloading = actions.add_parser("download", help="fetch weights into the cache (a no-op when cached)")
    downloading.add_argument("patterns", nargs="+", metavar="NAME", help="model names or shell-style patterns")
    downloading.set_defaults(handler=run_download)

    importing = actions.add_parser("import", help="check a weights file against a model and cache it")
    importing.add_argument("name", help="model name (see 'pvt weights list', also with --task)")
    importing.add_argument("file", type=Path,
                           help="a .pth or .safetensors file or an HF folder, in official, timm or HF layout; for a "
                                "detector or segmenter, the released MMDetection / MMSegmentation file")
    importing.set_defaults(handler=run_import)


def run_list(args: argparse.Namespace) -> int:
    if args.task != "classification":
        return _list_released(args.task, args.patterns)
    chosen = select_models(args.patterns)
    names = [name for name in chosen if name in download.RELEASES]  # -Li beyond B2: no released weights
    if not names:
        raise CommandError(f"no official weights were released for {', '.join(chosen)}; released: "
                           f"{', '.join(download.RELEASES)}")
    sources = {name: download.source_of(name) for name in names}
    # URLs read best left-aligned; format_table right-aligns all but the first column, so pad them.
    width = max(len(source) for source in sources.values())
    rows = []
    for name in names:
        release = download.release_file(name)
        rows.append(dict(
            model=name, size=f"~{release.approx_size_bytes / 1e6:.0f} MB", top1=f"{release.top1:.1f}",
            cached="yes" if download.is_cached(name) else "no", source=sources[name].ljust(width),
        ))
    headers = dict(model="model", size="size (approx.)", top1="top-1 (paper)", cached="cached",
                   source="source".ljust(width))
    print(format_table(rows, headers))
    print(f"cache: {download.cache_dir()}")
    return 0


def run_download(args: argparse.Namespace) -> int:
    for name in select_models(args.patterns):
        try:
            print(f"{name}: {download.fetch(name)}")
        except download.WeightsUnavailableError as error:
            raise CommandError(str(error)) from error
    return 0


def run_import(args: argparse.Namespace) -> int:
    if args.name in released_models():
        return _import_released(args.name, args.file)
    print(f"{args.name}: {download.import_weights(args.name, args.file)} (checked, from {args.file})")
    return 0


def _list_released(task: str, patterns: list[str]) -> int:
    chosen = [r for r in released_models().values()
              if r.task == task and (not patterns or any(fnmatch.fnmatch(r.name, p) for p in patterns))]
    if not chosen:
        raise CommandError(f"no released {task} model matches {' '.join(patterns)}")
    rows = [dict(name=r.name, model=r.model, backbone=r.backbone, published=r.published,
                 cached="yes" if released_cache_path(r.name).is_file() else "no",
                 page=r.page or f"- ({r.note})") for r in chosen]
    headers = dict(name="name", model="model", backbone="backbone", published="published", cached="cached",
                   page="download page")
    print(format_table(rows, headers, left=("name", "model", "backbone", "published", "page")))
    print(f"cache: {released_cache_path('NAME').parent}; after downloading: pvt weights import NAME FILE")
    return 0


def _import_released(name: str, file: Path) -> int:
    from ..released import import_released

    target = import_released(name, file)
    release = released_models()[name]
    print(f"{name}: {target} (checked: {release.model} with {release.backbone}; published {release.published})")
    return 0
