"""``fuxictr-chime compress train|export|controls``: argument parsing only (logic in train.py / export.py /
controls.py)."""
from __future__ import annotations

import argparse
import json
import logging

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``compress`` command with its ``train``, ``export`` and ``controls`` sub-commands."""
    parser = subparsers.add_parser("compress", help="train a stage-1 compressor (CHIME, LEARN) or export "
                                                    "its user feature column",
                                   description="Stage 1: train a compressor on a prepared folder's "
                                               "representation set, then export one vector per user.")
    sub = parser.add_subparsers(dest="compress_command", metavar="ACTION", required=True)

    tr = sub.add_parser("train", help="train a compressor from a FuxiCTR-style experiment YAML",
                        description="Train the experiment EXPID of CONFIG_DIR/model_config.yaml "
                                    "(Base: + one block per experiment id). Data-parallel: "
                                    "torchrun --nproc_per_node N -m fuxictr_chime.cli compress train ... "
                                    "(see docs/SCALING.md).")
    tr.add_argument("--config", required=True, metavar="DIR",
                    help="folder holding model_config.yaml (e.g. model_zoo/CHIME/config)")
    tr.add_argument("--expid", required=True, help="experiment id, e.g. CHIME_movielens")
    tr.add_argument("--data", metavar="DIR", help="prepared data folder (overrides data_dir)")
    tr.add_argument("--output", metavar="DIR", help="run folder for log.csv and checkpoints "
                                                    "(overrides output_dir)")
    tr.add_argument("--resume", action="store_true", help="continue from OUTPUT/last")
    tr.add_argument("--max-steps", type=int, metavar="N", help="override optim.max_steps")
    tr.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    tr.set_defaults(func=_train)

    ex = sub.add_parser("export", help="write the user feature column (chime_hist) into a prepared folder",
                        description="Run a trained compressor over every user's representation-set "
                                    "sequence and write the feature column into user_info.parquet, "
                                    "its spec into dataset_config.yaml and codebook stats into "
                                    "<column>_codebooks.json.")
    ex.add_argument("--checkpoint", required=True, metavar="DIR", help="checkpoint folder, e.g. RUN/best")
    ex.add_argument("--data", required=True, metavar="DIR", help="prepared data folder to write into")
    ex.add_argument("--counts", action="store_true", help="raw code counts instead of frequencies")
    ex.add_argument("--h5", action="store_true", help="also write <column>.h5")
    ex.add_argument("--column", help="feature column name (default: the compressor's, e.g. chime_hist)")
    ex.add_argument("--batch-size", type=int, metavar="N", help="users per forward pass")
    ex.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    ex.add_argument("--engine", choices=("local", "ray"), default="local",
                    help="local: one process (default); ray: Ray Data actor pool (docs/SCALING.md)")
    ex.add_argument("--num-workers", type=int, metavar="N", help="Ray workers (default 2; --engine ray)")
    ex.add_argument("--address", metavar="ADDR", help="join this Ray cluster, e.g. auto (--engine ray; "
                                                      "default: a local Ray)")
    ex.add_argument("--rows-per-task", type=int, metavar="N", help="users per Ray block (default 50 batches)")
    from .slices import register_export_options

    register_export_options(ex)
    ex.set_defaults(func=_export)

    co = sub.add_parser("controls", help="write the non-learned control columns (hist_ctrl, stats_ctrl) "
                                         "into a prepared folder; no training",
                        description="Non-learned controls with chime_hist's budget, from the same "
                                    "representation set (behaviors before t1): hist_ctrl = the 64-bin "
                                    "frequency histogram of the categories of the user's positive "
                                    "behaviors (the 63 most frequent categories + 'other' when there "
                                    "are more than 64; item ids by popularity rank without a "
                                    "categorical item attribute); stats_ctrl = [positive rate, "
                                    "log(1 + history length)]. Users without history get zeros. "
                                    "Written like `compress export`: the column into "
                                    "user_info.parquet, its spec into dataset_config.yaml, and "
                                    "<column>.json. Models <Model>_HIST / <Model>_STATS read them.")
    co.add_argument("--data", required=True, metavar="DIR", help="prepared data folder to write into")
    co.add_argument("--which", default="hist,stats", metavar="LIST",
                    help="comma-separated subset of hist,stats (default: both)")
    co.add_argument("--attribute", metavar="NAME",
                    help="item_info attribute of the histogram (default: its first categorical column, "
                         "e.g. cate_id)")
    co.add_argument("--counts", action="store_true", help="hist_ctrl as raw counts instead of frequencies")
    co.set_defaults(func=_controls)


def _train(args: argparse.Namespace) -> int:
    from .config import load_experiment
    from .distributed import is_main_process
    from .registry import get_compressor
    from .train import train

    name = _compressor_of(args.config, args.expid)
    config, _ = load_experiment(args.config, args.expid, config_class=get_compressor(name).config_class)
    if args.data:
        config.data_dir = args.data
    if args.output:
        config.output_dir = args.output
    result = train(config, resume=args.resume, progress=not args.no_progress, max_steps=args.max_steps,
                   compressor=name)
    best = f"{result.best_checkpoint} (step {result.best_step}, eval metric {result.best_metric:.4f})" \
        if result.best_checkpoint else "none"
    if not is_main_process():  # torchrun: rank 0 reports
        return 0
    print(f"trained {result.compressor} for {result.step} steps; log: {result.log_path}\n"
          f"last checkpoint: {result.last_checkpoint}\nbest checkpoint: {best}")
    return 0


def _controls(args: argparse.Namespace) -> int:
    from .controls import export_controls

    which = [w.strip() for w in args.which.split(",") if w.strip()]
    for name, stats in export_controls(args.data, which=which, attribute=args.attribute,
                                       normalize=not args.counts).items():
        print(f"wrote {stats['column']} ({stats['width']} floats) for {stats['users']} users "
              f"({stats['users_with_history']} with history): {stats['definition']}")
    return 0


def _compressor_of(config_dir: str, expid: str) -> str:
    """The experiment's ``model:`` (FuxiCTR dialect; from its block, else Base), default CHIME."""
    from .config import read_experiment_blocks

    blocks, _ = read_experiment_blocks(config_dir)
    return str((blocks.get(expid) or {}).get("model") or (blocks.get("Base") or {}).get("model") or "CHIME")


def _export(args: argparse.Namespace) -> int:
    from .export import export, format_codebook_table

    if args.slices is not None or args.cuts is not None:
        if args.engine == "ray":
            from ..errors import ConfigError

            raise ConfigError("--slices / --cuts run with --engine local only")
        from .slices import export_slices

        return export_slices(args)
    options = dict(column=args.column, normalize=not args.counts, h5=args.h5, batch_size=args.batch_size,
                   progress=not args.no_progress)
    if args.engine == "ray":
        from .ray_export import export_ray

        stats = export_ray(args.checkpoint, args.data, num_workers=2 if args.num_workers is None else args.num_workers,
                           address=args.address, rows_per_task=args.rows_per_task, **options)
    elif args.num_workers is not None or args.address or args.rows_per_task is not None:
        from ..errors import ConfigError

        raise ConfigError("--num-workers, --address and --rows-per-task need --engine ray")
    else:
        stats = export(args.checkpoint, args.data, **options)
    print(f"wrote {stats['column']} ({stats['width']} floats) for {stats['users']} users "
          f"({stats['users_with_history']} with history) in {stats['seconds']:.1f} s")
    print(format_codebook_table(stats))
    print(json.dumps(stats["files"], indent=2))
    return 0
