"""Command line: `python -m pipeline run|status|report|models|export|release|remove|decide|review|generate`.

User mistakes, bad configs and bad run directories print one `error:` line and exit 2; only a bug in our
code shows a traceback, and a command working on a run also writes it to the run's log.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
from contextlib import AbstractContextManager, nullcontext
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ValidationError

from pipeline.core.config import PipelineConfig, load_config, resolve_profile
from pipeline.core.errors import UserError
from pipeline.core.names import Identity, read_names
from pipeline.core.rundir import RunDir
from pipeline.core.runlock import run_lock
from pipeline.core.schema import OK
from pipeline.engine.registry import SHARD, STAGE_NAMES, STAGES, check_backends, check_contracts, selected
from pipeline.export import FORMAT_NAMES
from pipeline.dataset.release_write import FORMATS as RELEASE_FORMATS

if TYPE_CHECKING:
    from pipeline.engine.stats import StageCounts

RUN_INFO = "run.json"
RUN_CONFIG = "config.yaml"  # the resolved config of the run's last `run`
LEVELS = ("debug", "info", "warning", "error")
ERROR_CHARS = 500  # longest `error:` line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description="Build an ID-centric image dataset.")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run one stage or all of them (resumes finished work)")
    run.add_argument("--stage", default="all", choices=("all", *STAGE_NAMES), help="stage to run (default: all)")
    _config_options(run)
    run.add_argument("--names", help="names file, one name a line (config run.names)")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                     help="override a config key; repeatable")
    run.add_argument("--force", action="store_true", help="re-run the selected stages even where done")
    run.add_argument("--retry-failed", action="store_true", help="re-run only rows that failed transiently")
    run.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS, else a local instance)")
    run.add_argument("--offline", action="store_true",
                     help="never download model files: a missing one is an error (config models.offline)")
    run.add_argument("--accept-licenses", action="store_true",
                     help="accept the licences of model files fetched first that require it (else asked, or refused)")
    _console_options(run)

    status = commands.add_parser("status", help="per stage: tasks done, rows kept and dropped by reason")
    _config_options(status)

    report = commands.add_parser("report", help="write the QA report: DIR/report/index.html and summary.json")
    _config_options(report)
    _console_options(report)

    models = commands.add_parser("models", help="the profile's model files: list them, fetch the missing, verify sha256")
    models.add_argument("action", choices=("list", "fetch", "verify"))
    models.add_argument("--config", help="YAML profile: a path or a name in configs/ (default: default)")
    models.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a config key; repeatable")
    models.add_argument("--mirror", metavar="URL", help="fetch every file as URL/<file> (config models.mirror)")
    models.add_argument("--offline", action="store_true", help="never download (config models.offline)")
    models.add_argument("--accept-licenses", action="store_true",
                        help="accept the licences of the files fetched that require it (else asked, or refused)")
    models.set_defaults(out=None)

    export = commands.add_parser("export", help="the shards as WebDataset tars or JSONL for trainers")
    export.add_argument("--format", required=True, choices=FORMAT_NAMES, help="what to write")
    _config_options(export)
    export.add_argument("--dest", help="destination folder or URI (default: <run>/exports/<format>)")
    _console_options(export)

    release = commands.add_parser("release", help="a copy of the dataset safe to publish (docs/release.md)")
    _config_options(release)
    _release_arguments(release)
    _console_options(release)

    remove = commands.add_parser("remove", help="take an identity, photo, URL, domain or face out of a run for good (takedown)")
    _config_options(remove)
    from pipeline.remove import add_arguments as remove_arguments

    remove_arguments(remove)
    _console_options(remove)

    decide = commands.add_parser("decide", help="a curator's decision about a photo or identity; --list; --apply")
    _config_options(decide)
    from pipeline.decide import add_arguments as decide_arguments

    decide_arguments(decide)
    _console_options(decide)

    review = commands.add_parser("review", help="the review app: triage what the run decided, one key an answer")
    _config_options(review)
    review.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    review.add_argument("--port", type=int, default=8765, help="port to listen on (default: 8765; 0: any free port)")

    generate = commands.add_parser("generate", help="PhotoMaker-style images of an identity, scored against its photos")
    _config_options(generate)
    from pipeline.generator.cli import add_arguments  # here: argparse only, no torch

    add_arguments(generate)
    _console_options(generate)
    return parser


def _release_arguments(release: argparse.ArgumentParser) -> None:
    release.add_argument("--dest", required=True, help="the release's folder or URI (empty, or an earlier release)")
    release.add_argument("--since", metavar="PREV", help="an earlier release: write deletions.txt, the keys it "
                         "holds that this one does not (what its holders must delete)")
    release.add_argument("--keep-names", action="store_true", help="keep people's names (public figures); "
                         "default: identities are keyed hashes")
    release.add_argument("--with-embeddings", action="store_true", help="keep the face-recognition embeddings: "
                         "the release is then a face index")
    release.add_argument("--format", default="parquet", choices=RELEASE_FORMATS, help="Parquet (the shards' "
                         "layout) or WebDataset tars")
    release.add_argument("--contact", help="where removal requests go (an address or URL), for the card")


def _config_options(command: argparse.ArgumentParser) -> None:
    command.add_argument("--config", help="YAML profile: a path or a name in configs/ (default: default)")
    command.add_argument("--out", help="run directory or URI (default: runs/<config name>)")


def _console_options(command: argparse.ArgumentParser) -> None:
    """What a command that works on a run shows; everything else goes to its log, <run>/logs/<command>-<time>.log."""
    command.add_argument("--quiet", action="store_true", help="no progress bars or tables: warnings, errors, results")
    command.add_argument("--log-level", default="warning", choices=LEVELS,
                         help="our log records shown on the console; the log file has all")


def _logged(run: RunDir, args: argparse.Namespace) -> AbstractContextManager[str]:
    from pipeline.engine.progress import logged

    return logged(run, args.command, args.log_level, args.quiet)


def _settings(args: argparse.Namespace) -> tuple[PipelineConfig, Path]:
    profile = resolve_profile(args.config)
    # Flags are set as typed values, not through the YAML of --set: a path such as "runs/trial #1",
    # "@foo", "null" or "2024-01-01" is a path.
    flags = {"run.names": getattr(args, "names", None), "run.out": args.out, "run.address": getattr(args, "address", None),
             "models.mirror": getattr(args, "mirror", None), "models.offline": getattr(args, "offline", False)}
    config = load_config(profile, getattr(args, "overrides", []), {key: value for key, value in flags.items() if value})
    check_backends(config)
    return config, profile


def _run_dir(config: PipelineConfig, profile: Path, create: bool = False) -> RunDir:
    """The run directory, checked: one error line for a file, a folder that cannot be made, a store out of reach."""
    run = RunDir(config.run.out or f"runs/{profile.stem}")
    run.check(create)
    return run


class RunInfo(BaseModel):
    """What run.json must hold for the commands that read a run."""

    profile: str
    stage_hashes: dict[str, str]
    identities: list[tuple[str, str]]


def _run_info(run: RunDir) -> RunInfo:
    if not run.exists(RUN_INFO):
        raise UserError(f"no run in {run.uri}", "pass --out DIR of a run, or start one with `python -m pipeline run`")
    try:
        return RunInfo.model_validate_json(run.read_bytes(RUN_INFO))
    except ValidationError as exc:
        problem = exc.errors()[0]["msg"]
        raise UserError(f"{run.uri}/{RUN_INFO} is unreadable ({problem})",
                        "run `python -m pipeline run` on this --out again, which rewrites it") from exc


def _existing_run(config: PipelineConfig, profile: Path, required: bool = True) -> RunDir:
    """The run directory of a run made before, with a readable run.json and a config.yaml (report, remove);
    not `required`, only its run.json, if any, is checked (generate also reads shards copied without their run)."""
    run = _run_dir(config, profile)
    if required or run.exists(RUN_INFO):
        _run_info(run)
    if required and not run.exists(RUN_CONFIG):
        raise UserError(f"{run.uri} has a run.json but no {RUN_CONFIG}",
                        "run `python -m pipeline run` on this --out again, which rewrites both")
    return run


def _save_run_info(run: RunDir, config: PipelineConfig, profile: Path, identities: list[Identity]) -> None:
    hashes = {stage.name: stage.fingerprint(config) for stage in STAGES}
    header = f"# resolved from {profile}; stage config hashes: {hashes}\n"
    run.write_bytes(RUN_CONFIG, (header + config.to_yaml()).encode())
    run.write_json(RUN_INFO, {
        "profile": str(profile),
        "stage_hashes": hashes,
        "identities": [[identity.slug, identity.name] for identity in identities],
        "updated_at": datetime.now(timezone.utc).isoformat(),
    })


def _ray_environment(config: PipelineConfig) -> None:
    """Settings Ray reads once, at import, so they are made before it is imported.

    A private run: Ray binds even a one-machine instance to the network address unless told it
    is no cluster (a flag named for Windows/macOS, honoured everywhere); ours listens on loopback.
    Joining a cluster: Ray enables token auth for clusters it starts, but a joining driver sends
    the token only when told to; present it whenever one is available.
    """
    if not (config.run.address or os.environ.get("RAY_ADDRESS")):
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        return
    token_file = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token"))
    if "RAY_AUTH_TOKEN" in os.environ or token_file.is_file():
        os.environ.setdefault("RAY_AUTH_MODE", "token")


def command_run(args: argparse.Namespace) -> int:
    config, profile = _settings(args)
    _ray_environment(config)
    from pipeline.dataset.write import write_dataset
    from pipeline.engine.driver import run_stages
    from pipeline.models import ensure_models

    identities = read_names(config.run.names)
    chosen = selected(args.stage)
    ensure_models(config, chosen, args.config, args.accept_licenses)
    run = _run_dir(config, profile, create=True)
    with run_lock(run, "run"), _logged(run, args) as log:  # refused: no log left behind
        for stage in chosen:  # inside the log: a preflight's warnings (names without folders) show as such
            stage.preflight(config)
            stage.check_identities(config, identities)
        _save_run_info(run, config, profile, identities)
        summaries = run_stages(chosen, config, run, identities, args.force, args.retry_failed)
        if args.stage in ("all", SHARD):
            summaries.append(write_dataset(config, run, identities, args.force))
        failed = sum(summary.tasks_failed for summary in summaries)
        if args.stage == "all" and not failed:
            _write_report(run, changed=any(summary.tasks_done for summary in summaries))
    _run_summary(run, args, summaries, identities, log)
    return 1 if failed else 0


def _write_report(run: RunDir, changed: bool) -> None:
    """After a whole run, the QA report, unless the run did no work and has one (the report reads every
    identity's rows: a resume at 100k identities must not)."""
    from pipeline.report import INDEX, write_report

    if changed or not run.exists(INDEX):
        write_report(run)


def _run_summary(run: RunDir, args: argparse.Namespace, summaries: list[StageCounts], identities: list[Identity],
                 log: str) -> None:
    """The table (unless --quiet), then what came out, where it is, and what to run next."""
    from pipeline.engine.progress import console
    from pipeline.engine.stats import counts_table, redo_lines

    if not args.quiet:
        console.print(counts_table(f"run {run.uri}", summaries))
    for line in redo_lines(summaries, "redone: their markers were not trusted"):
        console.print(line)
    failed = sum(summary.tasks_failed for summary in summaries)
    if failed:
        console.print(f"[red]{failed} tasks failed[/] (their tracebacks are in the log); run the same command "
                      "again to retry them")
    elif args.stage == "all":
        _dataset_lines(run, identities)
    elif args.stage != SHARD:
        following = STAGE_NAMES[STAGE_NAMES.index(args.stage) + 1]
        console.print(f"next: the same command with --stage {following} (or --stage all)")
    if log:
        console.print(f"log: {log}", markup=False, highlight=False)


def _dataset_lines(run: RunDir, identities: list[Identity]) -> None:
    """Where the shards and the report are, the names that got no photo, and the next command."""
    from pipeline.core.markers import read_markers
    from pipeline.engine.progress import console
    from pipeline.dataset.shards import shard_counts
    from pipeline.report import index_uri

    rows = shard_counts(run).statuses[OK]
    if rows:
        console.print(f"shards: {run.uri_of('shards/')} ({rows:,} rows)", markup=False, highlight=False)
    else:
        console.print("[yellow]warning:[/] the dataset is empty: no image passed every stage; "
                      "the report's funnel shows where they dropped")
    console.print(f"QA report: {index_uri(run)}", markup=False, highlight=False)
    crawled = read_markers(run, STAGES[0].name)
    none = [identity.name for identity in identities if identity.slug in crawled and not crawled[identity.slug].kept]
    if none:
        named = ", ".join(none[:10]) + (f" and {len(none) - 10} more" if len(none) > 10 else "")
        console.print(f"no photo found for {len(none)} of {len(identities)} names: {named}", markup=False,
                      highlight=False)
    if rows:
        console.print(f"next: python -m pipeline export --format {FORMAT_NAMES[0]} --out {shlex.quote(run.uri)}",
                      markup=False, highlight=False)


def command_status(args: argparse.Namespace) -> int:
    from pipeline.core.removals import TAKEN_DOWN, load_ledger, removals_line
    from pipeline.engine.progress import console
    from pipeline.dataset.shards import shard_counts
    from pipeline.engine.stats import counts_from_markers, counts_table, redo_lines

    config, profile = _settings(args)
    run = _run_dir(config, profile)
    info = _run_info(run)
    ledger = load_ledger(run)  # first: a torn request stops the command before it prints anything
    tasks = {slug for slug, _ in info.identities}
    rows = [counts_from_markers(run, stage.name, tasks, info.stage_hashes.get(stage.name)) for stage in STAGES]
    console.print(counts_table(f"status of {run.uri}", [*rows, shard_counts(run)]))
    for line in redo_lines(rows, "to redo at the next run: their markers are not trusted"):
        console.print(line)
    console.print(removals_line(ledger, sum(row.reasons[TAKEN_DOWN] for row in rows)))
    return 0


def command_report(args: argparse.Namespace) -> int:
    config, profile = _settings(args)
    run = _existing_run(config, profile)
    from pipeline.report import index_uri, write_report  # matplotlib: only once the run is known

    with _logged(run, args):
        write_report(run)
    print(index_uri(run))
    return 0


def command_models(args: argparse.Namespace) -> int:
    from pipeline.models import models_command

    config, _ = _settings(args)
    return models_command(args.action, config, args.accept_licenses, args.config)


def command_export(args: argparse.Namespace) -> int:
    config, profile = _settings(args)
    _ray_environment(config)
    from pipeline.export.run import default_dest, export_dataset, export_format

    run = _run_dir(config, profile)
    dest = RunDir(args.dest or default_dest(run, args.format))
    with _logged(run, args):
        done = export_dataset(run, dest, export_format(args.format, config), config.run.address)
    print(f"{done.dest}: {done.samples} samples; {done.written} shards written, {done.unchanged} unchanged, "
          f"{done.removed} removed")
    return 0


def command_remove(args: argparse.Namespace) -> int:
    from pipeline.remove import command_remove as remove

    config, profile = _settings(args)
    run = _existing_run(config, profile)
    with run_lock(run, "remove"), _logged(run, args):
        return remove(run, args)


def command_decide(args: argparse.Namespace) -> int:
    """Record, undo or list decisions, or apply them (under the run's lock, as `run`)."""
    from pipeline.decide import list_lines, record, requested

    if args.apply:
        return _apply_decisions(args)
    config, profile = _settings(args)
    run = _existing_run(config, profile)
    if args.list:
        print("\n".join(list_lines(run, args.all)))
        return 0
    # a local append is atomic (a run picks the row up when it plans); a store's object is rewritten: one at a time
    with run_lock(run, "decide") if run.object_store else nullcontext():
        row = record(run, requested(args, run))
    print(f"row {row} recorded; apply it with: python -m pipeline decide --apply --out {shlex.quote(run.uri)}")
    return 0


def _apply_decisions(args: argparse.Namespace) -> int:
    """verify and every stage after it, the shards and the report, under the run's own config unless --config
    names one: tasks whose identity has no new decision are done already, so only touched identities run."""
    from pipeline.dataset.write import write_dataset
    from pipeline.engine.driver import run_stages
    from pipeline.models import ensure_models
    from stages.verify import VerifyStage

    if args.config is None and args.out:
        args.config = _saved_config(RunDir(args.out))
    config, profile = _settings(args)
    _ray_environment(config)
    run = _existing_run(config, profile)
    identities = [Identity(slug, name) for slug, name in _run_info(run).identities]
    chosen = STAGES[STAGES.index(VerifyStage):]
    ensure_models(config, chosen, args.config)
    with run_lock(run, "decide"), _logged(run, args) as log:
        for stage in chosen:
            stage.preflight(config)
            stage.check_identities(config, identities)  # the run's identities: the names file may have moved
        summaries = run_stages(chosen, config, run, identities, force=False, retry_failed=False)
        summaries.append(write_dataset(config, run, identities, False))
        failed = sum(summary.tasks_failed for summary in summaries)
        if not failed:
            _write_report(run, changed=any(summary.tasks_done for summary in summaries))
    args.stage = "all"
    _run_summary(run, args, summaries, identities, log)
    return 1 if failed else 0


def _saved_config(run: RunDir) -> str | None:
    """The resolved config the run saved (its config.yaml; a store's, copied to a local file), so apply keeps the
    run's fingerprints; None before a first run."""
    if not run.exists(RUN_CONFIG):
        return None
    if not run.object_store:
        return run.path(RUN_CONFIG)
    with tempfile.NamedTemporaryFile("wb", suffix=".yaml", delete=False) as copy:
        copy.write(run.read_bytes(RUN_CONFIG))
    return copy.name


def command_release(args: argparse.Namespace) -> int:
    config, profile = _settings(args)
    _ray_environment(config)
    from pipeline.release import ReleaseRequest, make_release

    run = _existing_run(config, profile)
    identities = [Identity(slug, name) for slug, name in _run_info(run).identities]
    if args.with_embeddings:
        print("warning: --with-embeddings: with names or faces, this release is a face index (EU AI Act "
              "Art. 5(1)(e) bans building one from scraped faces)", file=sys.stderr)
    request = ReleaseRequest(args.format, args.keep_names, args.with_embeddings, args.since, args.contact)
    with _logged(run, args):
        done = make_release(run, RunDir(args.dest), config, identities, request)
    deletions = "" if done.deletions is None else f"; {done.deletions} keys to delete in deletions.txt"
    print(f"{done.dest}: {done.identities} identities, {done.images} images, {done.withheld} withheld by takedowns; "
          f"{done.written} shards written, {done.unchanged} unchanged{deletions}")
    return 0


def command_review(args: argparse.Namespace) -> int:
    config, profile = _settings(args)
    run = _existing_run(config, profile)
    from pipeline.review.serve import serve  # Flask: only for this command

    serve(run, args.host, args.port)
    return 0


def command_generate(args: argparse.Namespace) -> int:
    from pipeline.generator.cli import overrides, request

    args.overrides = [*args.overrides, *overrides(args)]
    config, profile = _settings(args)
    run = _existing_run(config, profile, required=False)
    from pipeline.generator.run import run_generate  # torch and diffusers: seconds to import, so only now

    with _logged(run, args):
        made = run_generate(config, run, request(args, config))
    print(f"{run.uri}/{made}")
    return 0


def one_line(text: str, limit: int = ERROR_CHARS) -> str:
    """An error as one line of at most `limit` characters (a message can quote a whole input)."""
    flat = " ".join(text[: 4 * limit].split())
    return flat if len(flat) <= limit and len(text) <= 4 * limit else f"{flat[: limit - 3]}..."


def main(argv: list[str] | None = None) -> int:
    check_contracts()
    args = build_parser().parse_args(argv)
    try:
        return {"run": command_run, "status": command_status, "report": command_report,
                "generate": command_generate, "models": command_models,
                "export": command_export, "remove": command_remove, "decide": command_decide, "review": command_review,
                "release": command_release}[args.command](args)
    except UserError as exc:
        print(one_line(f"error: {exc}"), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished tasks are kept; run the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
