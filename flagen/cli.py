"""The `flagen` command: build, check and inspect generated kernels."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _progress(n, total, name, changed):
    print(f"[{n:>2}/{total}] {name}{' (written)' if changed else ''}", file=sys.stderr, flush=True)


def cmd_build(args) -> int:
    from flagen.codegen import build, cache
    if args.variants:
        for path in args.variants:
            for spec in build.load_user_specs(Path(path)):
                module = cache.load(spec)
                print(f"{spec.name}: {module.__file__}")
        return 0
    changed = build.build_builtins(check=args.check, progress=None if args.quiet else _progress)
    if args.check:
        if changed:
            print(f"generated/ is stale: {', '.join(changed)} (run `flagen build`)", file=sys.stderr)
            return 1
        print("generated/ is up to date")
        return 0
    print(f"generated/: {len(changed)} module(s) written or removed")
    return 0


def cmd_show(args) -> int:
    from flagen.codegen import build, cache
    from flagen.ir.library import BUILTINS
    spec = BUILTINS.get(args.name)
    if spec is None and args.variant_file:
        spec = {s.name: s for s in build.load_user_specs(Path(args.variant_file))}.get(args.name)
    if spec is None:
        print(f"unknown variant {args.name!r}; built-ins: {', '.join(sorted(BUILTINS))}", file=sys.stderr)
        return 2
    print(spec.ir_text())
    if spec.doc:
        print(f"  doc: {spec.doc}")
    if args.name in BUILTINS:
        print(f"source: {build.GENERATED_DIR / (spec.name + '.py')}")
    else:
        print(f"source: {cache.entry_path(spec)}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="flagen", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="render the built-in variants into generated/, or build user variants")
    b.add_argument("variants", nargs="*", help="python files defining flagen.ir.Recurrence specs")
    b.add_argument("--check", action="store_true", help="exit non-zero if generated/ is stale; write nothing")
    b.add_argument("-q", "--quiet", action="store_true")
    b.set_defaults(func=cmd_build)
    s = sub.add_parser("show", help="print a variant's IR and where its generated source is")
    s.add_argument("name")
    s.add_argument("--variant-file", help="a user variant file to look the name up in")
    s.set_defaults(func=cmd_show)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
