"""The `radlint` command line (a stable contract: scripts and scheduled jobs call it)."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import sys
import tempfile
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from radlint.tasks.options import AuditOptions

EXIT_OK = 0
EXIT_INCOMPLETE = 1
EXIT_CANNOT_RUN = 2


class CannotRun(Exception):
    """A one-line reason the command could not run."""


def _seed_list(text: str) -> list[int]:
    try:
        seeds = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"give distinct seeds: {text!r}")
    return seeds


def _lake_target(text: str) -> tuple[str, tuple[float, float]]:
    from radlint.planted import FIELDS  # here, not at import: planted imports the lake generator

    field, _, rest = text.partition(":")
    precision, _, recall = rest.partition(":")
    try:
        target = (float(precision), float(recall))
    except ValueError:
        target = None
    if field not in FIELDS or target is None or not all(0 < v <= 1 for v in target):
        raise argparse.ArgumentTypeError(f"not FIELD:PRECISION:RECALL ({', '.join(FIELDS)}, two numbers in "
                                         f"(0, 1]): {text!r}")
    return field, target


def _positive(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return n


def _seconds(value: str) -> float:
    try:
        x = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds (a number >= 0), got {value!r}") from None
    if not math.isfinite(x) or x < 0:  # NaN would compare false with every deadline: never wait, never fail
        raise argparse.ArgumentTypeError(f"expected seconds (a number >= 0), got {value!r}")
    return x


def _check_writable_file(path: str | Path, flag: str) -> None:
    """A file can be written at ``path``, checked before any work (its folder is never created).

    Raises:
        CannotRun: with one line naming ``flag`` and the reason.
    """

    path = Path(path)
    if path.is_dir():
        raise CannotRun(f"{flag} {path} is a directory, expected a file")
    parent = path.parent
    if not parent.is_dir():
        raise CannotRun(f"folder of {flag} does not exist: {parent}")
    try:
        if path.exists():
            with open(path, "ab"):
                pass
        else:  # permissions alone do not tell (root, read-only mounts): try it
            fd, probe = tempfile.mkstemp(dir=parent, prefix=".radlint-write-check-")
            os.close(fd)
            os.unlink(probe)
    except OSError as exc:
        raise CannotRun(f"cannot write {flag} {path}: {exc.strerror or exc}") from None


def _check_writable_folder(path: str | Path, flag: str) -> None:
    """``path`` is a folder that can be written, or can be created under its nearest existing parent."""

    folder = Path(path)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise CannotRun(f"{flag} {path} is not a folder: {folder} is a file")
    try:
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as exc:
        raise CannotRun(f"cannot write {flag} {path}: {exc.strerror or exc}") from None


def _check_writable_out(out: str) -> None:
    """``--out`` is a folder that can be written, or a store URL where an object can be put."""

    from radlint.tasks.parts import out_store

    try:
        fs, root, local = out_store(out)
    except (ImportError, ValueError) as exc:
        raise CannotRun(f"cannot open --out {out}: {exc}") from None
    if local:
        _check_writable_folder(root, "--out")
        return
    probe = f"{root}/.radlint-write-check-{uuid.uuid4().hex}"
    try:
        fs.pipe_file(probe, b"")
        fs.rm_file(probe)
    except Exception as exc:
        reason = " ".join(str(exc).split())[:200]
        raise CannotRun(f"cannot write --out {out}: {type(exc).__name__}: {reason}") from None


def _megabytes(value: str) -> int:
    return _positive(value) * 1024 * 1024


def _add_audit_args(p: argparse.ArgumentParser) -> None:
    """The audit's options; every default is AuditOptions' (dest = its field name)."""
    from radlint.tasks.options import DEVICES, EXECUTORS, AuditOptions

    d = AuditOptions.default
    p.add_argument("lake", help="lake URL: a folder, file:///path, s3://bucket/prefix or any fsspec URL")
    p.add_argument("--db", required=True, help="DuckDB file to write (created if missing)")
    p.add_argument("--out", default=d("out"), help="folder or fsspec URL (s3://bucket/prefix) for Parquet parts and manifests "
                   "(default: <db>_parts beside the database)")
    p.add_argument("--labels", dest="labels_file", default=d("labels_file"),
                   help="CSV or Parquet label table keyed by sop_instance_uid or uri")
    p.add_argument("--dask-address", default=d("dask_address"),
                   help="attach to an existing Dask scheduler, e.g. tcp://host:8786")
    p.add_argument("--workers", type=_positive, default=d("workers"),
                   help="local Dask worker processes (default: CPU count, at most 4)")
    p.add_argument("--executor", choices=EXECUTORS, default=d("executor"),
                   help="where shards run: on Dask, in this process (local), or auto (default: in this "
                   "process when decoding the new objects takes less than about 20 s on 2 cores, else Dask)")
    p.add_argument("--batch-size", type=_positive, default=d("batch_size"),
                   help=f"images per inference batch (default {d('batch_size')})")
    p.add_argument("--shard-size", type=_positive, default=d("shard_size"),
                   help="objects per Prefect task (default: about a minute of work each, 500-5,000 objects)")
    p.add_argument("--device", choices=DEVICES, default=d("device"), help="ONNX Runtime device")
    p.add_argument("--max-pixels", type=_positive, default=d("max_pixels"),
                   help=f"refuse frames larger than this (default {d('max_pixels'):,})")
    p.add_argument("--max-inflight-mb", dest="max_inflight_bytes", type=_megabytes, default=d("max_inflight_bytes"),
                   metavar="MB", help=f"object bytes each worker holds at once (default {d('max_inflight_bytes') >> 20}); "
                   "larger objects are skipped as too_large")
    p.add_argument("--registry", default=d("registry"),
                   help="model registry YAML (default: the packaged models/registry.yaml)")
    p.add_argument("--report", default=d("report"), help="also write the HTML review report here when the run ends")
    p.add_argument(
        "--wait-lock", dest="lock_wait_seconds", type=_seconds, default=d("lock_wait_seconds"), metavar="SECONDS",
        help="when another audit or process (a reader) holds the database, at the start or for the final "
        "load, wait up to this long instead of stopping",
    )


def audit_options(args: argparse.Namespace) -> AuditOptions:
    """The AuditOptions of parsed ``radlint audit`` arguments."""
    from radlint.tasks.options import AuditOptions

    return AuditOptions(**{name: getattr(args, name) for name in AuditOptions.names()})


def _check_audit_inputs(opts: AuditOptions) -> None:
    from radlint.tasks import database, discover
    from radlint.tasks.labels import LabelFileError, read_label_file

    if opts.labels_file:
        try:
            read_label_file(opts.labels_file)
        except LabelFileError as exc:
            raise CannotRun(str(exc)) from None
    if opts.registry:
        from radlint.tasks import infer

        try:
            infer.default_model(opts.registry)
        except infer.RegistryError:
            raise
        except Exception as exc:  # YAML syntax, a binary file, another structure: none is a registry
            reason = " ".join(str(exc).split())[:200]
            raise CannotRun(f"--registry {opts.registry} is not a radlint model registry (YAML): "
                            f"{type(exc).__name__}: {reason}") from None
    db = Path(opts.db)
    _check_writable_file(db, "--db")
    if opts.report:
        _check_writable_file(opts.report, "--report")
    if opts.out:
        _check_writable_out(opts.out)
    try:
        fs, root, _ = discover.open_lake(opts.lake)
        # info(), not exists(): exists() reports a connection failure as "not there".
        fs.info(root)
    except FileNotFoundError:
        raise CannotRun(f"lake not found: {opts.lake}") from None
    except Exception as exc:
        raise CannotRun(f"lake not reachable: {opts.lake}: {type(exc).__name__}: {exc}") from None
    try:
        with database.audit_lock(db, wait_seconds=opts.lock_wait_seconds):
            database.connect(db).close()
    except database.DatabaseError as exc:
        raise CannotRun(str(exc)) from None


def run_audit(opts: AuditOptions, quiet: bool = False) -> dict:
    """Validate ``opts`` (an AuditOptions), then run the audit_lake flow; returns its summary."""

    from radlint.flows.prefect_env import prefect_api

    _check_audit_inputs(opts)
    opts = dataclasses.replace(opts, db=str(Path(opts.db).resolve()))
    with prefect_api(warm_imports=("radlint.flows.audit_lake",)):
        from radlint.flows.audit_lake import audit_lake

        return audit_lake(**opts.parameters())


# Control characters (ESC sequences can rewrite a terminal's screen or title) and bidirectional
# overrides (they reorder what is shown); uris and header values come from the lake and may hold them.
_UNPRINTABLE = {c: f"\\x{c:02x}" for c in [*range(0x00, 0x0A), *range(0x0B, 0x20), *range(0x7F, 0xA0)]}
_UNPRINTABLE.update({c: f"\\u{c:04x}" for c in [*range(0x202A, 0x202F), *range(0x2066, 0x206A)]})


def terminal_safe(text: str) -> str:
    """``text`` with every control character but the newline, and every bidi override, escaped."""
    return text.translate(_UNPRINTABLE)


def _print_summary(summary: dict) -> None:
    from radlint.tasks.findings import summary_markdown

    print(terminal_safe(summary_markdown(summary)))


def cmd_audit(args) -> int:
    summary = run_audit(audit_options(args))
    _print_summary(summary)
    if summary.get("status") != "completed":
        print(
            f"radlint: audit incomplete: {summary.get('n_failed_shards')} shard(s) failed; re-run to finish",
            file=sys.stderr,
        )
        return EXIT_INCOMPLETE
    return EXIT_OK


def cmd_export_corrections(args) -> int:
    from radlint.tasks import database, findings

    if not Path(args.db).exists():
        raise CannotRun(f"database not found: {args.db}")
    _check_writable_file(args.out, "--out")
    con = database.connect(args.db, read_only=True)
    try:
        have = {r[0] for r in con.execute("select table_name from information_schema.tables").fetchall()}
        if not {"findings", "images"} <= have:
            raise CannotRun(f"{args.db} holds no radlint audit (no findings or images table); is it the --db of an audit?")
        n = findings.export_corrections(con, args.out, args.min_severity)
    finally:
        con.close()
    print(f"wrote {n} corrections to {args.out}")
    return EXIT_OK


def cmd_report(args) -> int:
    from radlint.tasks import report

    if not Path(args.db).exists():
        raise CannotRun(f"database not found: {args.db}")
    _check_writable_file(args.out, "--out")
    path = report.write_report(args.db, args.out)
    print(f"report: {path}")
    return EXIT_OK


def cmd_demo(args) -> int:
    from radlint import demo

    return demo.run(args)


def cmd_evaluate_planted(args) -> int:
    from radlint import demo

    return demo.run_planted(args)


def cmd_choose_lake_gates(args) -> int:
    from radlint import demo

    return demo.choose_gates(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="radlint", description=__doc__)
    parser.add_argument("--version", action="version", version="radlint 0.1.0")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("audit", help="audit a lake into a DuckDB file")
    _add_audit_args(p)
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser("report", help="write a self-contained HTML report of a database")
    p.add_argument("--db", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("export-corrections", help="CSV of suggested corrections for PACS/RIS administrators")
    p.add_argument("--db", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--min-severity", type=float, default=0.0)
    p.set_defaults(func=cmd_export_corrections)

    p = sub.add_parser("demo", help="build a small lake with planted label errors and audit it")
    p.add_argument("--dir", default="radlint-demo", help="working folder (default ./radlint-demo)")
    p.add_argument("--n", type=_positive, default=160, help="images in the demo lake")
    p.add_argument("--error-rate", type=float, default=0.1, help="planted error rate per field")
    p.add_argument("--workers", type=_positive, default=2)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--registry", help="model registry YAML (default: the packaged one)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "evaluate-planted",
        help="build a lake from a labeled image folder with planted errors, audit it, score the findings",
    )
    p.add_argument("--labels", required=True, help="labels.csv of a labeled image folder")
    p.add_argument("--split-file", help="patient split CSV (patient_id,split)")
    p.add_argument("--split", default="test", help="split to use with --split-file (default test)")
    p.add_argument("--overrides", help="CSV keyed by file whose non-empty cells replace the labels' "
                   "values (an orientation column: images not stored upright)")
    p.add_argument("--dir", required=True, help="working folder for the lake and database")
    p.add_argument("--n", type=_positive, default=100000, help="at most this many images")
    p.add_argument("--error-rate", type=float, default=0.1)
    p.add_argument("--workers", type=_positive, default=2)
    seeds = p.add_mutually_exclusive_group()
    seeds.add_argument("--seed", type=int, default=11)
    seeds.add_argument("--seeds", type=_seed_list, metavar="S1,S2,...",
                       help="build and audit one lake per seed (other planted draws, folds and salt), each in "
                       "DIR/seed-S; print every build, the builds pooled, and the lake gates chosen over all")
    p.add_argument("--plot", help="write a precision-recall plot (PNG) here (with --seeds: one per build, "
                   "named after its seed)")
    p.add_argument("--unseen-source", help="keep every image of this source whatever its split: a lake imitating a "
                   "new hospital for a model trained with --exclude-source SOURCE")
    p.add_argument("--systematic", metavar="TRUE:WRONG", help="label every image of body part TRUE as WRONG under "
                   "one protocol (a systematic error that group_findings should show), e.g. abdomen:spine")
    p.add_argument("--registry", help="model registry YAML (default: the packaged one)")
    p.set_defaults(func=cmd_evaluate_planted)

    p = sub.add_parser(
        "choose-lake-gates",
        help="the lake gates that do best over several evaluate-planted folders together (pooled flags)",
    )
    p.add_argument("dirs", nargs="+", metavar="DIR", help="an evaluate-planted --dir (radlint.duckdb and "
                   "planted_errors.csv inside, or the seed-S builds of --seeds: one lake, several builds), each "
                   "audited by a model that did not train on its lake")
    p.add_argument("--target", action="append", type=_lake_target, metavar="FIELD:PRECISION:RECALL",
                   help="what a field's flags must reach (repeatable; default body_part:0.95:0.95, "
                   "orientation:0.95:0.95, projection:0.9:0.85): among settings that reach both, the one "
                   "furthest past them, else the most recall among those that reach the precision, else the "
                   "best F1")
    p.add_argument("--registry", help="model registry YAML whose first model's gate.lake_confusable class sets "
                   "may get a gate of their own (default: the packaged one)")
    p.add_argument("--write-registry", metavar="OUT.yaml", help="also write a copy of that registry with the "
                   "chosen lake gates for its first model (for radlint audit --registry)")
    p.set_defaults(func=cmd_choose_lake_gates)

    # A missing optional dependency must be named when its subcommand is used, not make the
    # subcommand vanish from the parser.
    try:
        from radlint import evaluate
    except ImportError as exc:
        evaluate = _Unavailable("evaluate", exc)
    p = sub.add_parser("evaluate", help="AUC per class of the models on a labeled image folder")
    evaluate.add_arguments(p)
    p.set_defaults(func=evaluate.run)
    try:
        from radlint import checkpoint
    except ImportError as exc:
        checkpoint = _Unavailable("import-checkpoint", exc)
    p = sub.add_parser("import-checkpoint", help="convert a published PyTorch checkpoint to ONNX")
    checkpoint.add_arguments(p)
    p.set_defaults(func=checkpoint.run)
    return parser


class _Unavailable:
    """Stands in for a subcommand's module that could not be imported."""

    def __init__(self, name: str, exc: ImportError):
        self.name, self.exc = name, exc

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        # Take whatever follows, so that run() says what is missing instead of argparse rejecting
        # options it cannot know without the module.
        p.parse_known_args = lambda args=None, namespace=None: (argparse.Namespace(func=self.run), [])

    def run(self, args) -> int:
        raise CannotRun(f"{self.name} cannot run: {self.exc} "
                        "(pip install 'radlint[train]' installs the optional packages)")


def main(argv: Sequence[str] | None = None) -> int:
    from radlint.flows.prefect_env import apply_quiet_defaults

    apply_quiet_defaults()
    parser = build_parser()
    args = parser.parse_args(argv)
    from radlint import interrupt
    from radlint.tasks.database import DatabaseError
    from radlint.tasks.discover import LakeError
    from radlint.tasks.infer import RegistryError
    from radlint.tasks.labels import LabelFileError

    try:
        if args.command != "audit":
            return int(args.func(args) or 0)
        with interrupt.audit_interrupts(args.db):
            return int(args.func(args) or 0)
    except (CannotRun, LakeError, DatabaseError, RegistryError, LabelFileError) as exc:
        print(terminal_safe(f"radlint: {exc}").replace("\n", " "), file=sys.stderr)
        return EXIT_CANNOT_RUN
    except KeyboardInterrupt:
        print(interrupt.MESSAGE, file=sys.stderr)
        return interrupt.EXIT_INTERRUPTED


_exit_code = 1


def entry() -> None:
    """The console script: ``main``, then an exit that skips the interpreter's teardown.

    Once a command returns, its files are written and closed, the servers it started are stopped
    or left running on purpose, and every library's exit handler still runs; what remains is
    Python freeing the modules and objects of Prefect, Dask, DuckDB and ONNX Runtime one by one,
    0.3-0.5 s of every call on 2 cores (bench/README.md, "Fixed cost").
    """
    global _exit_code
    import atexit

    from radlint import kept_client

    # Registered first, so it runs last of all exit handlers; a forked child that inherited it
    # keeps its own exit.
    atexit.register(_exit_now, os.getpid())
    argv = sys.argv[1:]
    # An audit in an environment where one ran recently is run by that call's kept runner, whose
    # imports are loaded already (radlint/kept_runner.py); the first runs here and leaves one.
    plan = kept_client.plan(argv)
    served = kept_client.call(plan, argv) if plan else None
    if served is not None:
        _exit_code = served
        sys.exit(_exit_code)
    try:
        _exit_code = main(argv)
    except SystemExit as exc:
        _exit_code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        raise
    finally:
        if plan:
            kept_client.leave_one(plan)
    sys.exit(_exit_code)


def _exit_now(pid: int) -> None:
    if os.getpid() != pid:
        return
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(_exit_code)


if __name__ == "__main__":
    entry()
