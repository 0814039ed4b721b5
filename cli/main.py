"""The ``emotion-pipeline`` command line: one entry point, a subcommand per job, one exit code
convention (0 done, 1 the run failed, 2 a bad parameter or input).

Subcommands: ``cli/model.py`` (predict, export, new-model, make-sample-data), ``cli/run.py``
(run), ``cli/demo.py`` (demo), ``cli/train.py`` (train), ``cli/distill.py`` (distill),
``cli/ops.py`` (pools, doctor), ``cli/reports.py`` (report, timeline), ``cli/annotate.py``
(annotate). Heavy imports (torch,
Prefect) happen inside each subcommand, so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from rich.console import Console

from cli import annotate, demo, distill, model, ops, reports, run, train

console = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, soft_wrap=True)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="emotion-pipeline",
        description="Batch inference and retraining for a SlowFast-R50 video emotion "
        "classifier (angry, disgust, fearful, happy, neutral, sad).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    model.register(sub)  # predict, export, new-model, make-sample-data
    annotate.register(sub)
    run.register(sub)
    demo.register(sub)
    train.register(sub)
    distill.register(sub)
    ops.register(sub)  # pools, doctor
    reports.register(sub)  # report, timeline
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``emotion-pipeline`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    from emotion_model.errors import EmotionModelError
    from tasks.errors import error_line

    try:
        return int(args.func(args) or 0)
    except EmotionModelError as exc:
        err.print(f"error: {exc}", markup=False, highlight=False)
        return 2
    except (ValueError, FileNotFoundError) as exc:
        err.print(f"error: {exc}", markup=False, highlight=False)
        return 2
    except Exception as exc:  # the run itself failed (its summary says why)
        err.print(f"error: {error_line(exc, None)}", markup=False, highlight=False)
        return 1
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
