"""The ``shelf`` command. Every subcommand has --help; a bad input exits non-zero with one line."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from shelf.errors import ShelfError
from shelf.settings import Settings

EXIT_BAD_INPUT = 2


@dataclass
class _App:
    settings: Settings

    def lake(self, create: bool = True) -> Any:
        from shelf.lake import Lake

        return Lake.open(self.settings.home, create=create)

    def pseudonymizer(self) -> Any:
        from shelf.privacy import Pseudonymizer

        return Pseudonymizer(self.settings.require_pseudonym_key())


class _ShelfGroup(click.Group):
    """Turns ShelfError into one line on stderr and a non-zero exit, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ShelfError as error:
            click.echo(f"shelf: error: {error}", err=True)
            ctx.exit(EXIT_BAD_INPUT)


@click.group(cls=_ShelfGroup)
@click.option(
    "--home",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Workspace folder (env SHELF_HOME, default ./shelf-home).",
)
@click.option("--dev", is_flag=True, default=None, help="Development mode: allows the built-in pseudonym key (env SHELF_DEV).")
@click.pass_context
def main(ctx: click.Context, home: Path | None, dev: bool | None) -> None:
    """shelf: a self-hosted recommendation engine for online shops."""
    ctx.obj = _App(Settings.load(home=home, dev_mode=dev))


def _app(ctx: click.Context) -> _App:
    app = ctx.find_object(_App)
    assert app is not None
    return app


# ------------------------------------------------------------------------------------------------
# ingest


@main.group()
def ingest() -> None:
    """Load events, items or users from files into the lake."""


def _read_options(
    fmt: str | None,
    mapping: str | None,
    types: str | None,
    no_header: bool,
    columns: str | None,
    delimiter: str | None,
    encoding: str,
) -> Any:
    from shelf.datasets.readers import ReadOptions, parse_pairs

    return ReadOptions(
        format=fmt,
        mapping=parse_pairs(mapping) if mapping else {},
        type_map=parse_pairs(types) if types else {},
        no_header=no_header,
        columns=[c.strip() for c in columns.split(",")] if columns else None,
        delimiter=delimiter,
        encoding=encoding,
    )


# Short names on the command line → folder names in the shared data directory.
_PUBLIC = {
    "rees46": "rees46-oct2019-head",
    "movielens": "movielens-100k",
    "yoochoose": "yoochoose-rsc15-100k",
    "otto": "otto-sample",
}


def _default_data_dir() -> Path:
    import os

    env = os.environ.get("SHELF_SHARED_DATA")
    return Path(env) if env else Path("../shared/data")


def _file_options(fn: Any) -> Any:
    options = [
        click.argument("path", type=click.Path(dir_okay=False, path_type=Path)),
        click.option("--format", "fmt", type=click.Choice(["csv", "tsv", "jsonl", "parquet"]), default=None, help="File format (default: from the file name)."),
        click.option("--map", "mapping", default=None, help="field=column pairs, e.g. user=visitorid,item=itemid,type=event,timestamp=ts"),
        click.option("--no-header", is_flag=True, help="The file has no header row (name the columns with --columns)."),
        click.option("--columns", default=None, help="Column names for a file without a header, e.g. user,item,category,type,timestamp"),
        click.option("--delimiter", default=None, help="CSV delimiter (default , or tab for .tsv)."),
        click.option("--encoding", default="utf-8", show_default=True, help="Text encoding, e.g. latin-1."),
        click.option("--timezone", default=None, help="Declare the zone of naive timestamps (e.g. Europe/Berlin); without it they are refused."),
        click.option("--max-rejects", type=int, default=None, help="Abort, ingesting nothing, if more records than this are refused."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _run_ingest(app: _App, kind: str, path: Path, batches: Iterable[Any], rules: Any, max_rejects: int | None) -> None:
    from shelf.ingest import ingest as run

    lake = app.lake()
    with _progress(f"ingest {kind}") as tick:
        report = run(
            lake,
            kind,  # type: ignore[arg-type]
            batches,
            pseudonymizer=app.pseudonymizer(),
            home=app.settings.home,
            source=str(path),
            rules=rules,
            max_rejects=max_rejects,
            progress=tick,
        )
    click.echo(report.summary())


@ingest.command("events")
@_file_options
@click.option("--types", default=None, help="source=canonical event-type pairs, e.g. pv=view,buy=purchase")
@click.option("--time-unit", type=click.Choice(["s", "ms", "us"]), default="s", show_default=True, help="Unit of numeric (epoch) timestamps.")
@click.option("--event-type", "extra_types", multiple=True, help="Accept an extra event type besides the built-in ones (repeatable).")
@click.pass_context
def ingest_events(ctx: click.Context, path: Path, fmt: str | None, mapping: str | None, no_header: bool, columns: str | None,
                  delimiter: str | None, encoding: str, timezone: str | None, max_rejects: int | None, types: str | None,
                  time_unit: str, extra_types: tuple[str, ...]) -> None:
    """Ingest events (views, carts, purchases, ratings...) from CSV, TSV, JSONL or Parquet."""
    from shelf.datasets.readers import read_records
    from shelf.schema import BUILTIN_EVENT_TYPES, EventRules

    app = _app(ctx)
    options = _read_options(fmt, mapping, types, no_header, columns, delimiter, encoding)
    rules = EventRules(
        event_types=frozenset(BUILTIN_EVENT_TYPES) | frozenset(extra_types),
        time_unit=time_unit,  # type: ignore[arg-type]
        assume_timezone=timezone,
    )
    _run_ingest(app, "events", path, read_records(path, kind="events", options=options), rules, max_rejects)


@ingest.command("items")
@_file_options
@click.pass_context
def ingest_items(ctx: click.Context, path: Path, fmt: str | None, mapping: str | None, no_header: bool, columns: str | None,
                 delimiter: str | None, encoding: str, timezone: str | None, max_rejects: int | None) -> None:
    """Ingest catalogue records (a changed price or stock becomes a new version from updated_at)."""
    from shelf.datasets.readers import read_records
    from shelf.schema import EventRules

    app = _app(ctx)
    options = _read_options(fmt, mapping, None, no_header, columns, delimiter, encoding)
    _run_ingest(app, "items", path, read_records(path, kind="items", options=options), EventRules(assume_timezone=timezone), max_rejects)


@ingest.command("users")
@_file_options
@click.pass_context
def ingest_users(ctx: click.Context, path: Path, fmt: str | None, mapping: str | None, no_header: bool, columns: str | None,
                 delimiter: str | None, encoding: str, timezone: str | None, max_rejects: int | None) -> None:
    """Ingest user profiles (ids are pseudonymized with the same key as events)."""
    from shelf.datasets.readers import read_records
    from shelf.schema import EventRules

    app = _app(ctx)
    options = _read_options(fmt, mapping, None, no_header, columns, delimiter, encoding)
    _run_ingest(app, "users", path, read_records(path, kind="users", options=options), EventRules(assume_timezone=timezone), max_rejects)


@ingest.command("dataset")
@click.argument("name", type=click.Choice(sorted(_PUBLIC)))
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder holding the public data sets (env SHELF_SHARED_DATA, default ../shared/data).")
@click.pass_context
def ingest_dataset(ctx: click.Context, name: str, data_dir: Path | None) -> None:
    """Load a public data set (events, and items and users where it has them)."""
    _ingest_public(_app(ctx), name, data_dir)


def _ingest_public(app: _App, name: str, data_dir: Path | None) -> None:
    from shelf.datasets import public_dataset

    folder = data_dir or _default_data_dir()
    source = public_dataset(_PUBLIC[name], folder)
    for note in source.notes:
        click.echo(f"note ({source.name}): {note}")
    for kind in ("items", "users", "events"):
        batches = getattr(source, kind)
        if batches is None:
            continue
        _run_ingest(app, kind, folder / _PUBLIC[name], batches(), source.rules, None)


# ------------------------------------------------------------------------------------------------
# simulate


@main.command()
@click.option("--users", type=int, default=2_000, show_default=True)
@click.option("--items", type=int, default=1_000, show_default=True)
@click.option("--days", type=int, default=14, show_default=True)
@click.option("--seed", type=int, default=7, show_default=True)
@click.pass_context
def simulate(ctx: click.Context, users: int, items: int, days: int, seed: int) -> None:
    """Simulate a shop (catalogue, shoppers, sessions) and write it straight into the lake."""
    _simulate(_app(ctx), users=users, items=items, days=days, seed=seed)


def _simulate(app: _App, *, users: int, items: int, days: int, seed: int) -> None:
    from shelf.datasets.simulate import SimulationConfig, Simulator

    try:
        config = SimulationConfig(users=users, items=items, days=days, seed=seed)
    except ValueError as error:
        raise click.BadParameter(str(error)) from error
    sim = Simulator(config)
    label = f"simulated shop (seed {seed})"
    _run_ingest(app, "items", Path(label), _whole(sim.items()), None, 0)
    _run_ingest(app, "users", Path(label), _whole(sim.users()), None, 0)
    _run_ingest(app, "events", Path(label), _chunks(sim.events()), None, 0)


def _whole(table: Any) -> Iterator[Any]:
    yield from _chunks([table])


def _chunks(tables: Iterable[Any]) -> Iterator[Any]:
    import numpy as np
    import pyarrow as pa

    first = 1
    for table in tables:
        positions = pa.array(np.arange(first, first + table.num_rows, dtype=np.int64))
        first += table.num_rows
        yield _Batch(table, positions, [])


@dataclass(frozen=True)
class _Batch:
    """Generated records, numbered in order (satisfies shelf.ingest.RawInput)."""

    table: Any
    positions: Any
    problems: list[Any]


# ------------------------------------------------------------------------------------------------
# lake


@main.group()
def lake() -> None:
    """Inspect the lake."""


@lake.command("stats")
@click.pass_context
def lake_stats(ctx: click.Context) -> None:
    """Counts by event type, time span, users, items, sessions."""
    stats = _app(ctx).lake(create=False).stats()
    click.echo(str(stats))


# ------------------------------------------------------------------------------------------------
# evaluate and batch recommendations


def _csv_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _parse_time(text: str) -> Any:
    from datetime import datetime

    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as error:
        raise click.BadParameter(f"{text!r} is not an ISO 8601 time") from error
    if value.tzinfo is None:
        raise click.BadParameter(f"{text!r} has no time zone; write e.g. {text}Z or {text}+02:00")
    return value


def build_split(kind: str, source: Any, *, test_days: float, cut: str | None, include_cold: bool) -> Any:
    """The split the CLI names, with the cut defaulting to ``end of data - test_days``."""
    from datetime import timedelta

    from shelf.evaluation import LastNDays, LeaveLastOut, SessionNextItem, TemporalSplit
    from shelf.evaluation.splits import end_of_data

    window = timedelta(days=test_days)
    if kind == "leave-last-out":
        return LeaveLastOut()
    if kind == "last-days" and cut is None:
        return LastNDays(test_days, include_cold=include_cold)
    at = _parse_time(cut) if cut else end_of_data(source) - window
    if kind == "session":
        return SessionNextItem(at, window)
    return TemporalSplit(at, window, include_cold=include_cold)


@main.command()
@click.option("--split", "split_kind", type=click.Choice(["temporal", "last-days", "leave-last-out", "session"]), default="temporal", show_default=True)
@click.option("--test-days", type=float, default=1.0, show_default=True, help="Length of the test window in days (fractions allowed).")
@click.option("--cut", default=None, help="ISO time of the cut (default: end of data minus --test-days).")
@click.option("--k", "ks", default="10,20", show_default=True, help="Cut-offs, comma-separated.")
@click.option("--models", default="popularity,trending,recent+popular,als,bpr,shelf-blend,shelf-twostage", show_default=True,
              help="Comma-separated model names (default: the peers, shelf's retrieval alone, and the two-stage pipeline).")
@click.option("--target", type=click.Choice(["engagement", "cart_or_purchase", "purchase", "weighted"]), default="engagement", show_default=True,
              help="What counts as relevant.")
@click.option("--views", default="all,new", show_default=True, help="all: re-engagement counts; new: only items the user never touched.")
@click.option("--include-cold", is_flag=True, help="Also evaluate users with no history before the cut, as their own segment.")
@click.option("--no-tune", is_flag=True, help="Skip tuning the ALS/BPR peers on the validation cut.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--report", type=click.Path(file_okay=False, path_type=Path), default=None, help="Write report.html and PNG plots here.")
@click.option("--ablate", "ablate_groups", default=None,
              help="Feature groups (e.g. user,item,context) to drop one at a time from the two-stage ranker of --models "
                   "(a shelf-twostage* model); reports the NDCG change with a paired-bootstrap 95% CI.")
@click.pass_context
def evaluate(ctx: click.Context, split_kind: str, test_days: float, cut: str | None, ks: str, models: str, target: str,
             views: str, include_cold: bool, no_tune: bool, seed: int, report: Path | None, ablate_groups: str | None = None) -> None:
    """Evaluate recommenders side by side on one split of the lake (read through snapshots)."""
    import time

    from shelf.evaluation import TARGETS, write_report
    from shelf.evaluation import evaluate as run
    from shelf.training.zoo import pick

    app = _app(ctx)
    lake = app.lake(create=False)
    cutoffs = [int(k) for k in _csv_list(ks)]
    split = build_split(split_kind, lake, test_days=test_days, cut=cut, include_cold=include_cold)
    factories = pick(_csv_list(models), seed=seed, tune=not no_tune)
    ablated: list[tuple[str, str]] = []
    if ablate_groups:
        from shelf.features import GROUPS
        from shelf.models.twostage import ablation_models

        groups = _csv_list(ablate_groups)
        unknown = sorted(set(groups) - set(GROUPS))
        two_stage = [name for name in factories if name.startswith("shelf-twostage")]
        if unknown or not two_stage:
            raise click.BadParameter(f"give groups among {', '.join(GROUPS)} and a shelf-twostage* model in --models", param_hint="--ablate")
        for name in two_stage:
            factories.update(ablation_models(factories[name], groups, name=name))
            ablated += [(name, group) for group in groups]
    started = time.perf_counter()
    result = run(lake, split, factories, ks=cutoffs, target=TARGETS[target], views=tuple(_csv_list(views)))
    click.echo(result.table())
    click.echo(f"evaluation wall time {time.perf_counter() - started:.1f} s")
    for name, group in ablated:
        for view in result.views:
            ci = result.compare(f"{name} without {group}", name, "ndcg", cutoffs[0], view)
            click.echo(f"ablation {name} without {group} ({view}): ndcg@{cutoffs[0]} change {ci.difference:+.4f} "
                       f"[{ci.low:+.4f}, {ci.high:+.4f}] 95% CI (paired bootstrap over users)")
    if report is not None:
        page = write_report(result, report)
        click.echo(f"report: {page}")


@main.command("recommend-batch")
@click.option("--users", "users_file", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="File with one raw user id per line (a header line 'user' is skipped).")
@click.option("--sessions", "sessions_file", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="CSV of session events so far: session,item,type,ts.")
@click.option("--k", type=int, default=20, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--bundle", "bundle_version", default=None, help="Bundle version to use (default: the promoted one).")
@click.option("--model", "model_name", default=None, help="Instead of a bundle, fit this model on the whole lake now.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.pass_context
def recommend_batch(ctx: click.Context, users_file: Path | None, sessions_file: Path | None, k: int, out: Path,
                    bundle_version: str | None, model_name: str | None, seed: int) -> None:
    """Write recommendations for many shoppers (user,item,rank,score) or sessions (session,item,rank,score).

    User ids in the file and in the output are the shop's raw ids; they are pseudonymized inside
    with the same key as ingest. Answers are what the live API would give for each query.
    """
    from shelf.evaluation import recommend_sessions_csv
    from shelf.training.batch import recommend_users

    if (users_file is None) == (sessions_file is None):
        raise click.UsageError("give exactly one of --users FILE or --sessions EVENTS.csv")
    if k < 1:
        raise click.BadParameter("--k must be at least 1")
    app = _app(ctx)
    if model_name is not None:
        from shelf.models.base import Interactions
        from shelf.training.zoo import pick

        snap = app.lake(create=False).snapshot(None)
        data = Interactions.from_events(snap.events(), item_table=snap.items(), user_table=snap.users())
        model = pick([model_name], seed=seed, tune=False)[model_name]().fit(data)
        label = f"model {model_name} fitted now"
    else:
        from shelf.registry import Registry
        from shelf.registry.loader import load_bundle

        loaded = load_bundle(Registry(app.settings.home), bundle_version)
        model, label = loaded.model, f"bundle {loaded.card.version}"
    if users_file is not None:
        lines = [line.strip() for line in users_file.read_text(encoding="utf-8").splitlines() if line.strip()]
        if lines and lines[0].lower() in {"user", "user_id"}:
            lines = lines[1:]
        rows = recommend_users(model, lines, app.pseudonymizer().one, out, n=k)
    else:
        assert sessions_file is not None
        rows = recommend_sessions_csv(model, sessions_file, out, n=k)
    click.echo(f"wrote {rows:,} rows to {out} ({label})")


# ------------------------------------------------------------------------------------------------
# train and the model registry


@main.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None, help="pipeline.toml")
@click.option("--as-of", "as_of", default=None, help="Train on the lake as of this ISO time (default: everything).")
@click.option("--model", "model_name", default=None, help="Override the config's model (e.g. shelf-blend).")
@click.option("--promote", is_flag=True, help="Promote the new bundle once it is published.")
@click.pass_context
def train(ctx: click.Context, config_path: Path | None, as_of: str | None, model_name: str | None, promote: bool) -> None:
    """Train from a snapshot and publish a versioned bundle with its card."""
    from dataclasses import replace

    from shelf.registry import Registry
    from shelf.training.config import TrainConfig
    from shelf.training.job import train as run

    app = _app(ctx)
    config = TrainConfig.from_toml(config_path) if config_path else TrainConfig()
    if model_name:
        config = replace(config, model=model_name)
    registry = Registry(app.settings.home)
    card = run(app.lake(create=False), registry, config, as_of=_parse_time(as_of) if as_of else None)
    click.echo(f"published bundle {card.version}: {card.parameters['model']}, {card.data_counts['events']:,} events, "
               f"fit {card.parameters.get('fit_seconds')} s")
    if card.parameters["model"] != config.model:
        click.echo(f"note: {card.notes.split('; ', 1)[-1]}", err=True)
    for name, value in sorted(card.metrics.items()):
        click.echo(f"  validation {name} = {value}")
    if promote:
        registry.promote(card.version)
        click.echo(f"promoted {card.version}")


@main.group()
def models() -> None:
    """List, inspect, promote and roll back model bundles."""


def _registry(ctx: click.Context) -> Any:
    from shelf.registry import Registry

    return Registry(_app(ctx).settings.home)


@models.command("list")
@click.pass_context
def models_list(ctx: click.Context) -> None:
    """Every bundle, newest last; * marks the promoted one."""
    from shelf.registry import BundleError

    registry = _registry(ctx)
    promoted = registry.promoted()
    versions = registry.versions()
    if not versions:
        click.echo("no bundles yet; run `shelf train`")
        return
    for version in versions:
        try:
            card = registry.card(version)
            ndcg = card.metrics.get("all/ndcg@10")
            line = f"{card.created_at[:19]}  {card.parameters.get('model', '?'):<14} events {card.data_counts.get('events', 0):>10,}  ndcg@10 {ndcg if ndcg is not None else '-'}"
        except BundleError as error:
            line = f"damaged: {error}"
        click.echo(f"{'*' if version == promoted else ' '} {version}  {line}")


@models.command("show")
@click.argument("version")
@click.pass_context
def models_show(ctx: click.Context, version: str) -> None:
    """A bundle's card (JSON)."""
    click.echo(_registry(ctx).card(version).to_json().decode())


@models.command("promote")
@click.argument("version")
@click.pass_context
def models_promote(ctx: click.Context, version: str) -> None:
    """Verify a bundle's files and point serving at it (one atomic change)."""
    card = _registry(ctx).promote(version)
    click.echo(f"promoted {card.version}")


@models.command("rollback")
@click.pass_context
def models_rollback(ctx: click.Context) -> None:
    """Return to the previously promoted bundle."""
    click.echo(f"rolled back to {_registry(ctx).rollback()}")


# ------------------------------------------------------------------------------------------------
# demo


@main.command()
@click.option("--dataset", type=click.Choice(["simulated", "rees46", "movielens", "yoochoose"]), default="simulated", show_default=True,
              help="Which shop to run on: a simulated one, or a public data set from ../shared/data.")
@click.option("--users", type=int, default=2_000, show_default=True, help="Simulated shoppers.")
@click.option("--items", type=int, default=1_000, show_default=True, help="Simulated catalogue size.")
@click.option("--days", type=int, default=14, show_default=True, help="Simulated days.")
@click.option("--model", "model_name", default="shelf-twostage", show_default=True,
              help="What to train and promote (the default: retrieve with the blend, rank with the engagement ranker).")
@click.option("--no-serve", is_flag=True, help="Stop after the evaluation instead of serving the shop on 127.0.0.1:8000.")
@click.option("--port", type=int, default=8000, show_default=True, help="Port of the demo service (on 127.0.0.1).")
@click.pass_context
def demo(ctx: click.Context, dataset: str, users: int, items: int, days: int, model_name: str, no_serve: bool = False, port: int = 8000) -> None:
    """The main job on the embedded default: build a shop's lake, train, evaluate against peers."""
    from shelf.registry import Registry
    from shelf.training.config import TrainConfig
    from shelf.training.job import train as run_training

    app = _app(ctx)
    click.echo(f"== shelf demo: workspace {app.settings.home.resolve()}")
    if app.lake().stats().events:
        click.echo("the lake already holds events; ingest is idempotent, so nothing is added twice")
    click.echo(f"== 1. ingest ({dataset})")
    if dataset == "simulated":
        _simulate(app, users=users, items=items, days=days, seed=7)
    else:
        _ingest_public(app, dataset, None)
    lake = app.lake(create=False)
    click.echo("")
    click.echo(str(lake.stats()))
    click.echo(f"\n== 2. train {model_name} from the latest snapshot")
    registry = Registry(app.settings.home)
    card = run_training(lake, registry, TrainConfig(model=model_name))
    registry.promote(card.version)
    click.echo(f"published and promoted bundle {card.version} (fit {card.parameters.get('fit_seconds')} s); "
               f"validation ndcg@10 all={card.metrics.get('all/ndcg@10')} new={card.metrics.get('new/ndcg@10')}")
    click.echo("\n== 3. evaluate against peers on the last day (temporal split, read through snapshots)")
    ctx.invoke(evaluate, split_kind="session" if dataset == "yoochoose" else "temporal", test_days=1.0, cut=None, ks="10,20",
               # A two-stage model is shown beside its retrieval stage alone, so its gain is visible.
               models=f"popularity,recent+popular,als{',shelf-blend' if model_name.startswith('shelf-twostage') else ''},{model_name}",
               target="engagement",
               views="all" if dataset == "yoochoose" else "all,new", include_cold=False, no_tune=False, seed=0,
               report=app.settings.home / "report")
    click.echo(f"\nnext: shelf --home {app.settings.home} models list | shelf --home {app.settings.home} recommend-batch --users FILE --out recs.csv")
    if not no_serve:
        _demo_serve(app, lake, port)


def _demo_serve(app: _App, lake: Any, port: int) -> None:
    """Step 4 of the demo: an admin key, three curl commands that work, and the service."""
    import json
    from datetime import UTC, datetime
    from urllib.parse import quote

    from shelf.serving.auth import create_key

    with lake.snapshot() as snap:
        top = snap.sql("SELECT item_id FROM events GROUP BY item_id ORDER BY count(*) DESC LIMIT 1")
    item = top["item_id"][0].as_py()
    _, secret = create_key(app.settings.home, "admin")
    base = f"http://127.0.0.1:{port}"
    auth = f"-H 'Authorization: Bearer {secret}'"
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    event = json.dumps({"events": [{"user_id": "demo-shopper", "session_id": "demo-session", "item_id": item, "type": "view", "timestamp": now}]})
    click.echo(f"\n== 4. serve the shop on {base} (Ctrl-C stops it); with the admin key just created, try:\n")
    click.echo(f"curl -s -X POST {base}/events {auth} -H 'Content-Type: application/json' -d '{event}'")
    click.echo(f"curl -s '{base}/recommendations?user_id=demo-shopper&session_id=demo-session&k=5' {auth}")
    click.echo(f"curl -s '{base}/items/{quote(str(item), safe='')}/similar?k=5' {auth}\n")
    _serve(app, "127.0.0.1", port)


# ------------------------------------------------------------------------------------------------
# serve and API keys


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind (0.0.0.0: every interface).")
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("--access-log/--no-access-log", default=False, show_default=True,
              help="One log line per request (costs throughput at peak; /metrics has per-route latency histograms either way).")
@click.option("--limit-concurrency", type=click.IntRange(min=1), default=None,
              help="Answer 503 at once (uvicorn's own response, before the app) once this many connections "
                   "(the asking one included) or requests are open, instead of queueing without bound: overload sheds load fast, with no "
                   "event acknowledged (clients retry). Size it above the callers' keep-alive pool. Default: no limit.")
@click.pass_context
def serve(ctx: click.Context, host: str, port: int, access_log: bool, limit_concurrency: int | None) -> None:
    """Run the HTTP API (events, recommendations, similar items) on the promoted bundle.

    One process per workspace (it holds the write-ahead log's lock); stop it with Ctrl-C or
    SIGTERM, which drains requests in flight. Create a key first: shelf keys create --role admin.
    """
    _serve(_app(ctx), host, port, access_log=access_log, limit_concurrency=limit_concurrency)


def _serve(app: _App, host: str, port: int, *, access_log: bool = False, limit_concurrency: int | None = None) -> None:
    try:
        import uvicorn

        from shelf.serving import create_app, list_keys
    except ImportError as error:  # pragma: no cover - the serve extra is missing
        raise click.ClickException(f"serving needs the serve extra: pip install 'shelf[serve]' ({error})") from error
    if not 0 < port < 65536:
        raise click.BadParameter(f"{port} is not a TCP port", param_hint="--port")
    app.settings.require_pseudonym_key()  # the published development key is refused outside --dev
    if not any(key.active for key in list_keys(app.settings.home)):
        click.echo("note: no active API key yet; every route but /health, /ready and /metrics answers 401. "
                   "Create one with: shelf keys create --role admin", err=True)
    click.echo(f"shelf serving {app.settings.home.resolve()} on http://{host}:{port} (docs: /docs)", err=True)
    # loop/http stay "auto": uvloop and httptools (uvicorn[standard]) where installed, as benchmarked.
    uvicorn.run(create_app(app.settings), host=host, port=port, log_level="info", access_log=access_log,
                timeout_graceful_shutdown=10, limit_concurrency=limit_concurrency)


@main.group()
def keys() -> None:
    """Create, list and revoke the API keys the HTTP service accepts."""


@keys.command("create")
@click.option("--role", required=True, type=click.Choice(["admin", "events:write", "recommendations:read"]),
              help="admin may call everything; events:write sends events and item updates; recommendations:read reads.")
@click.pass_context
def keys_create(ctx: click.Context, role: str) -> None:
    """Create a key and print its secret (the only time it is shown; only a hash is stored)."""
    from shelf.serving.auth import create_key

    key_id, secret = create_key(_app(ctx).settings.home, role)
    click.echo(f"created key {key_id} ({role}); the secret is shown once, store it now:", err=True)
    click.echo(secret)


@keys.command("list")
@click.pass_context
def keys_list(ctx: click.Context) -> None:
    """Every key (never a secret), oldest first, with its role and whether it is revoked."""
    from shelf.serving.auth import list_keys

    found = list_keys(_app(ctx).settings.home)
    if not found:
        click.echo("no keys yet; create one with: shelf keys create --role admin")
        return
    for key in found:
        state = "active" if key.active else f"revoked {key.revoked}"
        click.echo(f"{key.id}  {key.role:<20}  created {key.created}  {state}")


@keys.command("revoke")
@click.argument("key_id")
@click.pass_context
def keys_revoke(ctx: click.Context, key_id: str) -> None:
    """Revoke a key; a running service refuses it from its next request."""
    from shelf.serving.auth import revoke_key

    key = revoke_key(_app(ctx).settings.home, key_id)
    click.echo(f"revoked {key.id} ({key.role}) at {key.revoked}")


# ------------------------------------------------------------------------------------------------
# helpers


class _progress:
    """A tqdm bar on stderr, only when stderr is a terminal (logs stay clean in CI)."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.bar: Any = None

    def __enter__(self) -> Any:
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(desc=self.label, unit=" rec", unit_scale=True, file=sys.stderr)
            return self.bar.update
        return lambda n: None

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()


if __name__ == "__main__":  # pragma: no cover
    main()
