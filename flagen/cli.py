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


def cmd_tune(args) -> int:
    import shlex as _shlex

    import torch

    from flagen import tune
    from flagen.codegen import build, cache
    from flagen.runtime import tuning
    if args.device == "cuda" and not torch.cuda.is_available():
        raise _UserError("`flagen tune` times kernels on a CUDA GPU, and torch sees none here")
    kinds = args.kinds.split(",")
    unknown = [k for k in kinds if k not in tune.CANDIDATES]
    if unknown:
        raise _UserError(f"--kinds: unknown {', '.join(unknown)}; kinds: {', '.join(tune.CANDIDATES)}")
    try:
        shapes = [tuple(int(x) for x in s.split(",")) for s in args.shapes.split(";")]
        assert all(len(s) == 4 for s in shapes)
    except (ValueError, AssertionError) as e:
        raise _UserError(f"--shapes must be B,T,H,D[;B,T,H,D...], got {args.shapes!r}") from e
    if args.device == "cuda":
        name, arch = tuning.device_key(torch.device("cuda"))
        device_name = torch.cuda.get_device_name()
    else:
        name, arch, device_name = "cpu", "cpu", "cpu (interpreter: nothing tuned)"
    # a table made for user variants sets their launch options only (flagen.runtime.tuning)
    variants = sorted(args.variants.split(",")) if args.variant_file else None
    if args.out:
        out = Path(args.out)
    elif variants:
        out = cache.cache_dir() / "tuning" / f"{name}@{'+'.join(variants)}.json"
    elif build.generated_dir() != build.GENERATED_DIR:
        out = cache.cache_dir() / "tuning" / f"{name}.json"
    else:
        out = build.GENERATED_DIR / "tuning" / f"{name}.json"
    try:
        result = tune.sweep(args.variants.split(","), shapes, kinds, path=args.path, workers=args.workers,
                            reps=args.reps, candidates=args.candidates, variant_file=args.variant_file,
                            device=args.device)
    except ValueError as e:
        raise _UserError(str(e)) from e
    command = "flagen tune " + " ".join(_shlex.quote(a) for a in args.argv)
    data = tune.table(result, device_name, arch, command, variants)
    tune.write_table(data, out)
    for entry, w in sorted(result["winners"].items()):
        default = w["default_ms"]
        print(f"{entry}: {tuple(w['tiles'])} {w['ms']:.4f} ms" + (f" (default {default:.4f})" if default else ""))
    print(f"table: {out}")
    return 0


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def main(argv=None) -> int:
    from flagen import tune  # (its candidate lists: no torch import)
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
    t = sub.add_parser("tune", help="time the chunked kernels' launch options on this GPU and write its tuning "
                                    "table (looked up at run time)")
    t.add_argument("--variants", default="simple_gla,gla,delta_rule_l2norm,gated_delta_rule_l2norm,kda_l2norm",
                   help="comma-separated variants whose chunked kernels are timed")
    t.add_argument("--variant-file", help="a user variant file the variants come from (the table, for those "
                                          "variants only, goes to the user cache)")
    t.add_argument("--shapes", default="2,16384,16,128;4,2048,16,128", help="B,T,H,D;... (bf16)")
    t.add_argument("--kinds", default=",".join(tune.DECAY_KINDS + tune.DELTA_KINDS),
                   help="chunked.TILES kinds to sweep")
    t.add_argument("--path", choices=["key", "scalar", "none"],
                   help="tune that decay path's own entries (e.g. h:key)")
    t.add_argument("--candidates", action="append", default=[], help="KIND=BK,BV,W,S/...: a kind's candidates")
    t.add_argument("--workers", type=int, default=8, help="processes compiling the rounds first (0: none)")
    t.add_argument("--reps", type=int, default=5)
    t.add_argument("--out", help="the table's path (default: generated/tuning/<gpu>.json in a checkout, else "
                                 "the user cache's tuning/)")
    t.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help=argparse.SUPPRESS)
    t.set_defaults(func=cmd_tune)
    args = parser.parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])[1:]
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
