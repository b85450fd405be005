"""The `flagen` command: build, check and inspect generated kernels."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path


class _UserError(Exception):
    """A mistake in the command's arguments or files: reported in one line, no traceback."""


def _progress(n, total, name, changed):
    print(f"[{n:>2}/{total}] {name}{' (written)' if changed else ''}", file=sys.stderr, flush=True)


def cmd_build(args) -> int:
    from flagen.codegen import build, cache
    from flagen.codegen.printer import PrintError
    if args.variants:
        # load (and check) every file before building anything
        specs = [(path, spec) for path in args.variants for spec in build.load_user_specs(Path(path))]
        for path, spec in specs:
            try:
                module = cache.load(spec)
            except PrintError as e:
                raise _UserError(f"{path}: cannot generate kernels for {spec.name!r}: {e}") from e
            print(f"{spec.name}: {module.__file__}")
        return 0
    if build.generated_dir() != build.GENERATED_DIR:
        raise _UserError("`flagen build` renders the built-ins into a checkout's generated/; this flagen is an "
                         f"installed wheel, whose kernels ({build.PACKAGED_DIR}) came with it. Build user "
                         "variants with `flagen build FILE`")
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
    user = {}
    if args.variant_file:
        user = {s.name: s for s in build.load_user_specs(Path(args.variant_file))}
    spec = user.get(args.name) or BUILTINS.get(args.name)
    if spec is None:
        where = f" in {args.variant_file} nor among" if args.variant_file else "; see"
        print(f"flagen: error: unknown variant {args.name!r}{where} the built-ins: {', '.join(sorted(BUILTINS))}",
              file=sys.stderr)
        return 2
    print(spec.ir_text())
    if spec.doc:
        print(f"  doc: {spec.doc}")
    if args.name in BUILTINS:
        print(f"source: {build.generated_dir() / (spec.name + '.py')}")
        return 0
    path = cache.entry_path(spec)
    try:
        built = cache.verify(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        built = False
    if not built:
        print(f"flagen: error: {args.name!r} is not built yet; build it with "
              f"`flagen build {shlex.quote(args.variant_file)}`", file=sys.stderr)
        return 1
    print(f"source: {path}")
    return 0


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


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
    try:
        return args.func(args)
    except Exception as e:
        # user errors (bad variant files, invalid specs) in one line; anything else is a bug: traceback
        from flagen.codegen.build import VariantFileError
        from flagen.ir.spec import SpecError
        if isinstance(e, (_UserError, VariantFileError, SpecError)):
            print(f"flagen: error: {_one_line(e)}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
