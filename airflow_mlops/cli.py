"""``airflow-mlops`` command line. One ``add_<name>_command`` function per subcommand.

To add a subcommand (``lint``, ``schema``, ...): write ``add_<name>_command(subparsers)``
that adds its parser and sets ``handler=<function(args) -> exit code>``, then append it to
:data:`SUBCOMMANDS`. Handlers import heavy modules inside themselves, so ``--help`` is fast.
Errors raised on purpose (:class:`~airflow_mlops.core.errors.MlopsError`) print one
``error: ...`` line and exit 1; no traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from airflow_mlops import __version__
from airflow_mlops.core.errors import ConfigError, MlopsError

if TYPE_CHECKING:
    from airflow_mlops.core.storage import Storage

__all__ = ["EXIT_ERROR", "EXIT_OK", "SUBCOMMANDS", "build_parser", "main"]

EXIT_OK = 0
EXIT_ERROR = 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``airflow-mlops`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except MlopsError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_ERROR


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="airflow-mlops",
        description="Tools for airflow-mlops pipelines (continuous training on Airflow).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_command in SUBCOMMANDS:
        add_command(subparsers)
    return parser


# -- shared helpers ---------------------------------------------------------------------------
def storage_for(uri: str, aws_conn_id: str | None) -> Storage:
    """Local paths need nothing. ``s3://`` uses the Airflow AWS connection when one is named,
    else boto3's default credential chain (env vars, profile; ``AWS_ENDPOINT_URL`` honoured)."""
    from airflow_mlops.core.storage import Storage, is_s3_uri

    if not is_s3_uri(uri):
        return Storage()
    if aws_conn_id:
        from airflow_mlops.hooks.storage import StorageHook

        return StorageHook(aws_conn_id=aws_conn_id).get_storage()

    def boto3_client() -> Any:
        import boto3

        return boto3.client("s3")

    return Storage(s3_client_factory=boto3_client)


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 0:  # also refuses NaN
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


# -- infer-suite ------------------------------------------------------------------------------
def add_infer_suite_command(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "infer-suite",
        help="bootstrap a Great Expectations 1.x suite from reference data",
        description=(
            "Write a GX 1.x expectation suite inferred from reference data: column set and "
            "types, not-null for complete columns, numeric/datetime ranges widened by a "
            "margin, value sets for low-cardinality columns, a row-count range. Review and "
            "edit it before relying on it."
        ),
    )
    parser.add_argument(
        "data_uri",
        metavar="DATA_URI",
        help="reference table: path or s3:// URI (.parquet, .csv, .csv.gz)",
    )
    parser.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="SUITE.json",
        help="suite file to write (path or s3:// URI; '-' for stdout)",
    )
    parser.add_argument(
        "--margin",
        type=_non_negative_float,
        default=0.1,
        help="widen numeric/datetime ranges by this share of the observed range on each side (default 0.1)",
    )
    parser.add_argument(
        "--max-categories",
        type=_non_negative_int,
        default=20,
        help="value sets for string/boolean columns with at most this many distinct values (default 20)",
    )
    parser.add_argument(
        "--row-count-margin",
        type=_non_negative_float,
        default=0.5,
        help="accept row counts within +/- this share of the reference's (default 0.5)",
    )
    parser.add_argument("--name", help="suite name (default: the output file's name)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing suite file")
    parser.add_argument(
        "--aws-conn-id",
        help="Airflow AWS connection for s3:// URIs (default: boto3's credential chain)",
    )
    parser.set_defaults(handler=run_infer_suite)


def run_infer_suite(args: argparse.Namespace) -> int:
    from pathlib import PurePosixPath

    from airflow_mlops.core.suite_inference import infer_suite, suite_to_json

    to_stdout = args.output == "-"
    output_storage = None if to_stdout else storage_for(args.output, args.aws_conn_id)
    if output_storage is not None and not args.force and output_storage.exists(args.output):
        raise ConfigError(
            f"{args.output} already exists (suites are edited by hand): pass --force to overwrite."
        )
    table = storage_for(args.data_uri, args.aws_conn_id).read_table(args.data_uri)
    name = args.name or (
        "inferred_suite" if to_stdout else PurePosixPath(args.output).name.removesuffix(".json")
    )
    suite = infer_suite(
        table.frame,
        name=name,
        margin=args.margin,
        max_categories=args.max_categories,
        row_count_margin=args.row_count_margin,
    )
    suite["meta"]["airflow_mlops"]["reference"] = table.lineage()
    text = suite_to_json(suite)
    if output_storage is None:
        sys.stdout.write(text)
        return EXIT_OK
    output_storage.write_text(args.output, text)
    print(
        f"Wrote {len(suite['expectations'])} expectations for {table.frame.shape[1]} columns "
        f"({table.rows} reference rows) to {args.output}. Review the bounds before use.",
        file=sys.stderr,
    )
    return EXIT_OK


def add_lint_command(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "lint",
        help="validate pipeline YAML files; name every bad field",
        description="Validate pipeline config files (the YAML under include/pipelines/).",
    )
    parser.add_argument("files", nargs="+", metavar="FILE.yaml")
    parser.set_defaults(handler=run_lint)


def run_lint(args: argparse.Namespace) -> int:
    from airflow_mlops.factories.config import load_config

    failed = 0
    for path in args.files:
        try:
            config = load_config(path)
        except MlopsError as err:
            failed += 1
            print(f"{path}: INVALID\n{err}", file=sys.stderr)
            continue
        print(f"{path}: ok ({config.ct_dag_id}, model {config.registered_model_name})")
    return EXIT_ERROR if failed else EXIT_OK


def add_schema_command(subparsers: Any) -> None:
    parser = subparsers.add_parser("schema", help="print the JSON schema of pipeline config files")
    parser.set_defaults(handler=run_schema)


def run_schema(args: argparse.Namespace) -> int:
    from airflow_mlops.factories.config import json_schema

    print(json_schema())
    return EXIT_OK


def add_sync_dags_command(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "sync-dags",
        help="write one DAG file per pipeline YAML (and remove stale generated ones)",
        description=(
            "Airflow reports import errors per DAG file, so each pipeline YAML gets its own "
            "three-line DAG file: a broken YAML then fails only its own file."
        ),
    )
    parser.add_argument("--pipelines", default="include/pipelines", help="folder of *.yaml")
    parser.add_argument("--dags", default="dags", help="Airflow DAGs folder")
    parser.set_defaults(handler=run_sync_dags)


def run_sync_dags(args: argparse.Namespace) -> int:
    from pathlib import Path

    from airflow_mlops.factories.loader import sync_dag_files

    pipelines = Path(args.pipelines)
    if not pipelines.is_dir():
        raise ConfigError(f"--pipelines {pipelines} is not a folder.")
    result = sync_dag_files(pipelines, Path(args.dags))
    for name in result["written"]:
        print(f"wrote {Path(args.dags) / name}")
    for name in result["removed"]:
        print(f"removed {Path(args.dags) / name}")
    if not result["written"] and not result["removed"]:
        print("DAG files already in sync.")
    return EXIT_OK


def add_model_card_command(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "model-card",
        help="print or save the model card of a registered model version",
        description=(
            "Reads the card the promote task wrote on the version's run, checked against the "
            "sha256 tagged on the version. MLflow is reached through an Airflow connection."
        ),
    )
    parser.add_argument("model", help="registered model name")
    parser.add_argument("version", help="model version")
    parser.add_argument("--format", choices=("json", "html"), default="json")
    parser.add_argument("--output", help="write to this file instead of printing")
    parser.add_argument(
        "--mlflow-conn-id", default="mlflow_default", help="Airflow connection of MLflow"
    )
    parser.set_defaults(handler=run_model_card)


def run_model_card(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from airflow_mlops.core.model_card import read_model_card, render_html
    from airflow_mlops.hooks.mlflow import MlflowHook

    with MlflowHook(mlflow_conn_id=args.mlflow_conn_id).client() as client:
        card = read_model_card(client, args.model, args.version)
    text = render_html(card) if args.format == "html" else json.dumps(card, indent=1)
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
        print(f"wrote {args.output}")
    else:
        print(text)
    return EXIT_OK


#: Every subcommand, in ``--help`` order.
SUBCOMMANDS: tuple[Callable[[Any], None], ...] = (
    add_infer_suite_command,
    add_lint_command,
    add_model_card_command,
    add_schema_command,
    add_sync_dags_command,
)
