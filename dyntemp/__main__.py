"""The command line: ``python -m dyntemp train|eval|bench``."""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
import types
import typing

from dyntemp import checks

BENCHMARKS = ("loss", "augment", "train", "gpu")


def _bench(args: argparse.Namespace, rest: list[str]) -> int:
    import importlib

    module = importlib.import_module(f"dyntemp.bench.{args.what}")
    return module.main([*args.options, *rest])


def _train(args: argparse.Namespace, rest: list[str]) -> int:
    from dyntemp import config as configs
    from dyntemp import runs, train

    given = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(configs.TrainConfig)
        if hasattr(args, f.name)
    }
    config = configs.preset(args.preset, **given) if args.preset else configs.TrainConfig(**given)
    config.check()
    earlier = runs.is_finished(config.out) and not config.force
    command = shlex.join(["python", "-m", "dyntemp", *args.argv])
    results = train.train(config, command=command)
    where = f"{config.out}/{runs.RESULTS_FILE}"
    accuracy = results.get("knn_top1")
    said = f"kNN top-1 {accuracy:.2f} % " if accuracy is not None else ""
    if results.get("val_knn_top1") is not None:
        said += f"(validation {results['val_knn_top1']:.2f} %) "
    if earlier:
        print(f"the run in {config.out} finished earlier: {said}after {results['epochs']} epochs")
    else:
        print(f"{said}after {results['epochs']} epochs; results in {where}")
    return 0


def _eval(args: argparse.Namespace, rest: list[str]) -> int:
    from dyntemp import run_metrics, runs

    if args.long_tail:
        report = run_metrics.long_tail_report(
            args.run_dir, device=args.device, data_root=args.data_root
        )
        for name, entry in report["classifiers"].items():
            print(
                f"{name:<16} top-1 {entry['top1']:6.2f} %  head {entry['head']:6.2f}  "
                f"medium {entry['medium']:6.2f}  tail {entry['tail']:6.2f}"
            )
        print(f"written to {args.run_dir}/{runs.LONG_TAIL_FILE}")
        return 0
    metrics = run_metrics.evaluate_run(
        args.run_dir,
        linear=args.linear,
        device=args.device,
        data_root=args.data_root,
        batch_size=args.batch_size,
        unfinished=args.unfinished,
    )
    print(run_metrics.summary(metrics))
    print(f"written to {args.run_dir}/{runs.EVAL_FILE}")
    return 0


def _field_type(annotation: typing.Any) -> type:
    """``int`` for ``int`` and ``int | None``, and so on."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        (inner,) = [a for a in typing.get_args(annotation) if a is not type(None)]
        return inner
    return annotation


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field, named after it; absent flags keep the default."""
    from dyntemp.config import PRESETS, TrainConfig, flag

    parser.add_argument(
        "--preset",
        choices=tuple(PRESETS),
        help="named settings; the other flags change them",
    )
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        kind = _field_type(hints[f.name])
        text = f.metadata.get("help", "")
        if f.default is not None and "default" not in text:  # None: the text says what
            text = f"{text} (default: {f.default})"
        if kind is bool:
            parser.add_argument(
                flag(f.name),
                dest=f.name,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=text,
            )
        else:
            parser.add_argument(
                flag(f.name),
                dest=f.name,
                type=_parse(kind),
                default=argparse.SUPPRESS,
                metavar=f.name.upper(),
                help=text,
            )


def _parse(kind: type) -> typing.Callable[[str], typing.Any]:
    """int and float as argparse uses them, named for its messages ("invalid int value")."""
    if kind is int:

        def whole(text: str) -> int:
            try:
                return int(text)
            except ValueError:
                number = float(text)  # "1e3" is a whole number too; "abc" stays an error
                if not number.is_integer():
                    raise
                return int(number)

        whole.__name__ = "int"
        return whole
    return kind


def build_parser() -> argparse.ArgumentParser:
    parser = checks.ArgumentParser(prog="python -m dyntemp", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser(
        "train",
        help="train a model; rerun the same command to resume",
        description="Train SimCLR with a temperature rule; writes config.json, checkpoint.pt, "
        "metrics.jsonl and results.json into --out. Rerunning the command resumes the run.",
    )
    _add_config_flags(train)
    train.set_defaults(handler=_train)
    evaluate = commands.add_parser(
        "eval",
        help="all metrics of a finished run",
        description="kNN accuracies, alignment, uniformity, tolerance, inter-class uniformity "
        "and similarity histograms of a run's backbone; writes RUN_DIR/eval.json.",
    )
    evaluate.add_argument("run_dir", metavar="RUN_DIR")
    evaluate.add_argument("--linear", action="store_true", help="also train a linear probe")
    evaluate.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    evaluate.add_argument("--data-root", default=None, help="data folder, if it moved")
    evaluate.add_argument("--batch-size", type=int, default=512, help="images per forward pass")
    evaluate.add_argument(
        "--unfinished",
        action="store_true",
        help="evaluate the last checkpoint of an unfinished run",
    )
    evaluate.add_argument(
        "--long-tail",
        action="store_true",
        help="only the long-tailed protocol: majority 1-NN and 10-NN and the weighted 200-NN, "
        "overall, per class and over head / medium / tail classes; writes RUN_DIR/longtail.json",
    )
    evaluate.set_defaults(handler=_eval)
    bench = commands.add_parser("bench", help="benchmarks, side by side in one run")
    bench.add_argument("what", choices=BENCHMARKS, metavar="{" + ",".join(BENCHMARKS) + "}")
    bench.add_argument("options", nargs=argparse.REMAINDER, help="the benchmark's own options")
    bench.set_defaults(handler=_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    args.argv = argv
    if rest and args.command != "bench":
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    from dyntemp.train import NonFiniteLossError

    try:
        return args.handler(args, rest)
    except NonFiniteLossError as error:  # the run failed, not the command
        print(f"error: {error}", file=sys.stderr)
        return 1
    except (ValueError, OverflowError, OSError) as error:  # what a user can cause and fix
        print(f"error: {_one_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        resume = "; rerun the same command to resume" if args.command == "train" else ""
        print(f"interrupted{resume}", file=sys.stderr)
        return 130


def _one_line(error: BaseException) -> str:
    """The message of ``error`` on one line (an OSError with the file it concerns)."""
    if isinstance(error, OSError) and error.strerror:
        where = f": {error.filename}" if error.filename else ""
        text = f"{error.strerror}{where}"
    else:
        text = str(error) or type(error).__name__
    return " ".join(text.split())


if __name__ == "__main__":
    sys.exit(main())
