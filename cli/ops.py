"""The operator subcommands of ``emotion-pipeline``: ``pools`` and ``doctor``.

Registered by ``cli/main.py``; heavy imports (Prefect, boto3, torch) happen inside each command.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


def _cmd_pools(args: argparse.Namespace) -> int:
    from deployments.pools import (
        apply_pool,
        default_specs,
        ecs_defaults_from_outputs,
        parse_assignments,
        stack_outputs,
    )

    kinds = [args.only] if args.only else ["ecs", "process"]
    ecs_values: dict[str, Any] = {}
    if args.stack and "ecs" in kinds:
        kw = {"region_name": args.region} if args.region else {}
        ecs_values.update(ecs_defaults_from_outputs(stack_outputs(args.stack, **kw)))
    ecs_values.update(parse_assignments(args.ecs_set))
    specs = default_specs(
        ecs_values=ecs_values, process_values=parse_assignments(args.process_set),
        ecs_name=args.ecs_pool, process_name=args.process_pool,
        ecs_concurrency=args.ecs_concurrency, process_concurrency=args.process_concurrency,
        kinds=kinds,
    )
    for spec in specs:
        if spec.type == "ecs" and not spec.base_job_template["variables"]["properties"][
                "task_definition_arn"].get("default"):
            print(f"warning: {spec.name}: no task_definition_arn (use --stack or --ecs-set)",
                  file=sys.stderr)
        print(f"{apply_pool(spec)}  {spec.type} work pool {spec.name}")
    return 0


def _cmd_doctor(args: argparse.Namespace) -> int:
    from deployments.doctor import run_checks

    checks = run_checks(
        aws=not args.no_aws, read_uris=args.s3, write_uris=args.output, model=args.model,
        prefect=not args.no_prefect, pools=args.pool, endpoint_url=args.endpoint_url,
        report=lambda check: print(check.line(), flush=True),
    )
    failed = sum(not c.ok for c in checks)
    print(f"{len(checks) - failed} ok, {failed} failed")
    return 1 if failed else 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``pools`` and ``doctor`` subcommands to the CLI's subparsers."""
    p = sub.add_parser(
        "pools", help="create or update the Prefect work pools (ECS GPU, process)",
        description="Create the work pools, or update them when their base job template "
        "differs; running it twice changes nothing. The ECS pool's defaults (cluster, GPU "
        "task definition, capacity provider, roles, Prefect secret) come from the "
        "CloudFormation stacks' outputs (--stack) and --ecs-set KEY=VALUE.",
    )
    p.add_argument("--only", choices=["ecs", "process"], help="one pool (default: both)")
    p.add_argument("--ecs-pool", default="emotion-gpu-ecs", help="ECS pool name")
    p.add_argument("--process-pool", default="emotion-gpu-process", help="process pool name")
    p.add_argument("--stack", action="append", default=[], metavar="NAME",
                   help="CloudFormation stack whose outputs fill the ECS defaults "
                   "(repeat: --stack emotion-iam --stack emotion-compute)")
    p.add_argument("--region", help="AWS region of the stacks (default: the AWS environment)")
    p.add_argument("--ecs-set", action="append", default=[], metavar="KEY=VALUE",
                   help="an ECS job variable default (JSON values allowed); wins over --stack")
    p.add_argument("--process-set", action="append", default=[], metavar="KEY=VALUE",
                   help="a process job variable default, e.g. working_dir=/opt/emotion-pipeline")
    p.add_argument("--ecs-concurrency", type=int, default=None,
                   help="flow runs at once in the ECS pool (default: unlimited; the Auto "
                   "Scaling group's MaxInstances bounds it anyway)")
    p.add_argument("--process-concurrency", type=int, default=1,
                   help="flow runs at once in the process pool (default 1: one GPU host)")
    p.set_defaults(func=_cmd_pools)

    p = sub.add_parser(
        "doctor", help="check credentials, buckets, the model, the Prefect API and pools",
        description="Run readiness checks and print one line each (ok, or what is wrong); "
        "exit 0 when all pass, 1 otherwise. Secrets are never printed.",
    )
    p.add_argument("--s3", action="append", default=[], metavar="URI",
                   help="s3://bucket/prefix that must be readable (repeatable)")
    p.add_argument("--output", action="append", default=[], metavar="URI",
                   help="output folder or s3:// prefix that must be writable (repeatable)")
    p.add_argument("--model", help="model registry folder, its production.json, or a "
                   "deployment file: must resolve and load")
    p.add_argument("--pool", action="append", default=[], metavar="NAME",
                   help="work pool that must exist with a worker online (repeatable)")
    p.add_argument("--endpoint-url", help="S3 endpoint (default: the AWS environment)")
    p.add_argument("--no-aws", action="store_true", help="skip the AWS credentials check")
    p.add_argument("--no-prefect", action="store_true", help="skip the Prefect API check")
    p.set_defaults(func=_cmd_doctor)
