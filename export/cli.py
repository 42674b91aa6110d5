"""`recblr-export model.pt [-o cell.onnx] [--top-k K] [--verify]` (also `recblr export`).

Exit codes: 0 done, 1 the exported cell failed verification (nothing written),
2 bad input (one line on stderr naming the input and the fix).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from recblr.errors import RecblrError, user_errors
from recblr.runtime.cli import choices

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Export a trained RecBLR checkpoint's per-step cell to ONNX.",
)


class VerificationFailed(RecblrError):
    """The exported cell does not reproduce the PyTorch model (exit code 1)."""

    exit_code = 1


def _histories(ckpt, n: int, seed: int) -> tuple[list, str]:
    import numpy as np

    from recblr.data import dataset_from_spec
    from recblr.export.verify import random_histories

    data = None
    try:
        data = dataset_from_spec(ckpt.data)
    except RecblrError:
        data = None
    if data is not None and data.n_items == ckpt.config.n_items:
        hist, _ = data.split_histories("test")
        hist = [h for h in hist if len(h) > 0]
        if hist:
            rng = np.random.default_rng(seed)
            pick = rng.choice(len(hist), size=min(n, len(hist)), replace=False)
            return [hist[i] for i in sorted(pick)], "held-out test histories from the training data"
    return random_histories(ckpt.config.n_items, n, seed=seed), "random histories (training data not at hand)"


def _check_agreement(tmp_path, ckpt, histories, k, precision, source, out, summary) -> None:
    """Reduced precision: top-min(10,K) overlap with the fp32 model must stay >= the bar."""
    import numpy as np
    import torch

    from recblr.export.onnx_export import MIN_TOP10_AGREEMENT
    from recblr.export.verify import cpu_session, reference_scores, step_session

    _, items, _ = step_session(cpu_session(tmp_path), histories)
    ref = reference_scores(ckpt.model, histories)
    n = min(10, k)
    ref_top = torch.topk(torch.from_numpy(ref), n, dim=1).indices.numpy()
    agree = float(np.mean([len(set(items[u, :n]) & set(ref_top[u])) / n for u in range(len(histories))]))
    if agree < MIN_TOP10_AGREEMENT:
        raise VerificationFailed(
            f"verification failed on {len(histories)} {source}: {precision} top-{n} agreement "
            f"{agree:.3f} with the fp32 model is below {MIN_TOP10_AGREEMENT}; {out} was not written"
        )
    summary.append(f"verified on {len(histories)} {source}: {precision} top-{n} agreement {agree:.3f}")


Retrieval = choices("Retrieval", ("exact", "ann"))


@app.command()
@user_errors
def export(
    checkpoint: Annotated[Path, typer.Argument(help="model.pt written by `recblr train`.")],
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="Where to write the cell. Default: cell.onnx next to the checkpoint.")] = None,
    top_k: Annotated[int, typer.Option(
        "--top-k", "-k", help="Items returned per step (capped at the catalog size).")] = 100,
    opset: Annotated[int, typer.Option(help="ONNX opset of the graph (18 to 25).")] = 18,
    fp16: Annotated[bool, typer.Option(
        "--fp16", help="Weights and compute in float16 (state and scores stay float32).")] = False,
    int8: Annotated[bool, typer.Option(
        "--int8", help="Dynamic int8 quantisation of the weight matrices (onnxruntime).")] = False,
    verify: Annotated[bool, typer.Option(
        "--verify", help="Check the cell against the PyTorch model before writing it.")] = False,
    verify_users: Annotated[int, typer.Option(help="Histories checked by --verify.")] = 64,
    seed: Annotated[int, typer.Option(help="Which histories --verify picks.")] = 0,
    retrieval: Annotated[Retrieval, typer.Option(
        help="exact: the cell scores the whole catalog; ann: the cell outputs the user vector and "
        "the runtime asks an HNSW index written beside it (<cell>.hnsw) for the top-K.")] = Retrieval("exact"),
    ann_m: Annotated[int, typer.Option(help="--retrieval ann: HNSW links per node (M).")] = 16,
    ann_ef_construction: Annotated[int, typer.Option(help="--retrieval ann: build beam.")] = 100,
    ann_ef: Annotated[int, typer.Option(help="--retrieval ann: search beam (higher: better recall, slower).")] = 64,
    min_recall: Annotated[float, typer.Option(
        help="--retrieval ann --verify: lowest recall@10 against exact top-10 accepted.")] = 0.95,
) -> None:
    """Write the per-step cell (item, state, exclude) -> (next_state, top_items, top_scores)."""
    from recblr.extras import EXPORT_MODULES, require_extra

    require_extra("recblr export", EXPORT_MODULES)
    from recblr.checkpoint import load_checkpoint
    from recblr.export.onnx_export import check_opset, export_cell
    from recblr.export.verify import verify_cell

    check_opset(opset)
    if top_k < 1:
        raise RecblrError(f"--top-k {top_k}: must be at least 1")
    if verify_users < 1:
        raise RecblrError(f"--verify-users {verify_users}: must be at least 1")
    if fp16 and int8:
        raise RecblrError("--fp16 and --int8 exclude each other; pick one")
    precision = "fp16" if fp16 else "int8" if int8 else "fp32"
    retrieval = retrieval.value
    if retrieval == "ann" and precision != "fp32":
        raise RecblrError("--retrieval ann exports an fp32 cell; drop --fp16/--int8")
    if not 0 < min_recall <= 1:
        raise RecblrError(f"--min-recall {min_recall}: must be in (0, 1]")
    out = output if output is not None else checkpoint.parent / "cell.onnx"
    ckpt = load_checkpoint(checkpoint)
    k = min(top_k, ckpt.config.n_items)
    if retrieval == "ann":
        _export_ann(ckpt, out, k, opset, verify, verify_users, seed, ann_m, ann_ef_construction, ann_ef, min_recall)
        return

    check = None
    summary: list[str] = []
    if verify:
        histories, source = _histories(ckpt, verify_users, seed)

        def check(tmp_path: Path) -> None:
            if precision != "fp32":
                _check_agreement(tmp_path, ckpt, histories, k, precision, source, out, summary)
                return
            rep = verify_cell(tmp_path, ckpt.model, histories)
            if not rep.ok:
                raise VerificationFailed(
                    f"verification failed on {len(histories)} {source}: "
                    + "; ".join(rep.problems[:3])
                    + f"; {out} was not written"
                )
            summary.append(
                f"verified on {len(histories)} {source}: top-{k} identical "
                f"({rep.swapped} tie swaps), max |score diff| {rep.max_score_diff:.2e}"
            )

    # export_cell raises unless the graph imports exactly `opset` (also its recblr.opset).
    path = export_cell(ckpt, out, top_k=k, opset=opset, precision=precision, check=check)
    size = path.stat().st_size
    typer.echo(
        f"wrote {path} ({size / 1e6:.1f} MB; {ckpt.config.n_items} items, state {ckpt.config.state_size} "
        f"floats, top-{k}, opset {opset}, {precision})"
    )
    for line in summary:
        typer.echo(line)


def _export_ann(ckpt, out, k, opset, verify, n_users, seed, m, ef_construction, ef, min_recall) -> None:
    from recblr.export.ann import export_retrieval, item_vectors, recall_at_10, user_vectors

    summary: list[str] = []
    check = None
    if verify:
        histories, source = _histories(ckpt, n_users, seed)

        def check(ann) -> None:
            recall = recall_at_10(ann, user_vectors(ckpt.model, histories), item_vectors(ckpt.model))
            if recall < min_recall:
                raise VerificationFailed(
                    f"verification failed on {len(histories)} {source}: ANN recall@10 {recall:.3f} "
                    f"against exact top-10 is below --min-recall {min_recall}; raise --ann-ef (now {ef}) "
                    f"or --ann-m; {out} was not written"
                )
            summary.append(f"verified on {len(histories)} {source}: ANN recall@10 {recall:.3f} (>= {min_recall})")

    path, build = export_retrieval(ckpt.model, ckpt.item_ids, out, top_k=k, opset=opset, m=m,
                                   ef_construction=ef_construction, ef_search=ef, verify=check)
    typer.echo(
        f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB; retrieval cell, {ckpt.config.n_items} items, "
        f"top-{k}) and its HNSW index ({build.bytes_on_disk / 1e6:.1f} MB, M={m}, "
        f"ef_construction={ef_construction}, ef={ef}, built in {build.seconds:.1f}s)"
    )
    for line in summary:
        typer.echo(line)


def main(argv: list[str] | None = None) -> int:
    """`recblr-export`: returns the exit code (0 ok, 1 verification failed, 2 bad input)."""
    try:
        app(args=sys.argv[1:] if argv is None else list(argv), prog_name="recblr-export")
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
