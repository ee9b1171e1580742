"""``pvt weights list | download NAME... | import NAME FILE``: the official release's pretrained weights.

Weights are cached in $PVT_HOME (default: torch.hub's cache, $TORCH_HOME/hub/checkpoints). Set
PVT_WEIGHTS_MIRROR to a base URL or a shared folder to read NAME.pth from there instead of the release.
On a machine without internet access, download the file elsewhere and import it: ``pvt weights import
NAME FILE`` checks it against the model and caches it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..models import download
from .common import CommandError, format_table, select_models


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "weights", help="list, download or import the pretrained weights", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    listing = actions.add_parser("list", help="each model's weights: source, size, top-1, cached or not")
    listing.add_argument("patterns", nargs="*", metavar="PATTERN", help="shell-style filters (default: all)")
    listing.set_defaults(handler=run_list)

    downloading = actions.add_parser("download", help="fetch weights into the cache (a no-op when cached)")
    downloading.add_argument("patterns", nargs="+", metavar="NAME", help="model names or shell-style patterns")
    downloading.set_defaults(handler=run_download)

    importing = actions.add_parser("import", help="check a weights file against a model and cache it")
    importing.add_argument("name", help="model name (see 'pvt weights list')")
    importing.add_argument("file", type=Path,
                           help="a .pth or .safetensors file or an HF folder, in official, timm or HF layout")
    importing.set_defaults(handler=run_import)


def run_list(args: argparse.Namespace) -> int:
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
    print(f"{args.name}: {download.import_weights(args.name, args.file)} (checked, from {args.file})")
    return 0
