"""``keel rollout``: take a gated challenger through shadow and canary steps to champion, by hand.

    keel rollout start VERSION [--note TEXT] [--actor A] [--json]
    keel rollout status [--json]
    keel rollout advance [--note TEXT] [--actor A] [--json]
    keel rollout abort [--note TEXT] [--actor A] [--json]

The record and its transitions are ``keel.registry.rollout``'s; a command that moves a
rollout holds the Keel home (as ``keel rollback`` does), records the decision in the registry,
then materializes ``rollout/decisions`` so that the decision is in ``audit.rollout_decisions``
and in Dagster at once (if that run fails, the decision is kept and the next materialization
records it). Exit codes: 0 done, 1 refused (the gates did not pass, nothing to advance, a
rollout already active), 2 anything else, with the reason on stderr.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from collections.abc import Mapping
from types import ModuleType
from typing import Any

from keel.core.config import current
from keel.core.lock import hold
from keel.core.process import run_tags
from keel.core.settings import keel_home, prepare_environment
from keel.registry import rollout
from keel.registry.promotion import registered_names
from keel.registry.tracking import registry_or_none

DECISIONS_SHOWN = 10


def status_doc(registry: ModuleType | None, names: Mapping[str, str], limit: int = DECISIONS_SHOWN) -> dict[str, Any]:
    """``{"active": record or None, "last": the latest rollout or None, "decisions": the last
    ``limit`` decisions, oldest first}``: the ``rollout`` of ``keel status --json``."""
    if registry is None:
        return {"active": None, "last": None, "decisions": []}
    last = rollout.last_rollout(registry, names)
    return {
        "active": last.to_dict() if last is not None and last.active else None,
        "last": last.to_dict() if last is not None else None,
        "decisions": [d.to_dict() for d in rollout.decisions(registry, names)[-limit:]],
    }


def _registry(command: str):
    registry = registry_or_none(current().tracking)
    if registry is None:
        print(f"keel rollout {command}: no model registry at {current().tracking.tracking_uri} yet; run: keel run",
              file=sys.stderr)
    return registry


def _record_decisions() -> str | None:
    """Materialize rollout/decisions; None when it succeeded, else why not."""
    # Dagster and the definitions take about 5 s to load; keel rollout status needs neither.
    import dagster as dg

    from definitions import defs

    result = defs.resolve_job_def("record_rollout_decisions").execute_in_process(
        instance=dg.DagsterInstance.get(), raise_on_error=False, tags=run_tags())
    if result.success:
        return None
    errors = [e.event_specific_data.error for e in result.all_events if e.is_step_failure]
    return "; ".join((e.message or "").strip().splitlines()[0] for e in errors if e.message) or "the run failed"


def _line(moved: rollout.Rollout) -> str:
    where = {"shadow": "in shadow", "canary": f"canary at {moved.share:.0%} of keys",
             "champion": "the champion set", "aborted": "aborted; the champion serves every key"}[moved.stage]
    return f"rollout {moved.id} of v{moved.primary}: {where}"


def _move(args: argparse.Namespace) -> int:
    command = args.rollout_command
    paths = prepare_environment()
    registry = _registry(command)
    if registry is None:
        return 2
    names = registered_names(current().usecase.name)
    actor = args.actor or getpass.getuser()
    note = args.note or f"keel rollout {command}"
    evidence = {"by_hand": True, "command": f"keel rollout {command}"}
    with hold(paths.home, f"keel rollout {command}", on_wait=lambda line: print(f"keel rollout {command}: {line}",
                                                                                file=sys.stderr)):
        try:
            if command == "start":
                if not args.model_version.isdigit():
                    print("keel rollout start: give the primary model's version number", file=sys.stderr)
                    return 2
                moved = rollout.start(registry, names, int(args.model_version), actor=actor, reason=note,
                                      evidence=evidence)
            elif command == "advance":
                moved = rollout.advance(registry, names, current().rollout, actor=actor, reason=note, evidence=evidence)
            else:
                moved = rollout.abort(registry, names, actor=actor, reason=note, evidence=evidence)
        except (PermissionError, ValueError, LookupError) as exc:
            print(f"keel rollout {command}: {exc}", file=sys.stderr)
            return 1
        failure = _record_decisions()
    if failure:
        print(f"keel rollout {command}: the decision is recorded in the registry, but rollout/decisions did not "
              f"materialize ({failure}); the next materialization records it", file=sys.stderr)
    if args.json:
        print(json.dumps({"rollout": moved.to_dict(), "decision": rollout.decisions(registry, names)[-1].to_dict()}))
    else:
        print(_line(moved))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    home = keel_home()
    if not home.is_dir():
        print(f"keel rollout status: no Keel home at {home} (set KEEL_HOME, or run: keel run)", file=sys.stderr)
        return 2
    deployment = current()
    registry = registry_or_none(deployment.tracking)
    doc = {"promotion_policy": deployment.promotion.policy, "policy": deployment.rollout.to_dict(),
           **status_doc(registry, registered_names(deployment.usecase.name))}
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    print(f"promotion policy {doc['promotion_policy']}; canary steps "
          + (", ".join(f"{s:.0%}" for s in deployment.rollout.canary_steps) or "none")
          + f"; shadow {deployment.rollout.shadow_hours:g} h, each step {deployment.rollout.canary_hours:g} h")
    last = doc["last"]
    if last is None:
        print("no rollout yet")
        return 0
    print(_line(rollout.Rollout.from_dict(last)) + f" since {last['stage_since']} (started {last['started_at']} by {last['by']})")
    for d in doc["decisions"]:
        print(f"  {d['at']}  {d['rollout_id']}  {d['action']:<7} {d['from_stage'] or '-'} -> {d['to_stage']} "
              f"({d['to_share']:g})  {d['actor']}: {d['reason']}")
    return 0


def cmd_rollout(args: argparse.Namespace) -> int:
    return cmd_status(args) if args.rollout_command == "status" else _move(args)


def add_parser(sub) -> None:
    p = sub.add_parser("rollout", help="take a challenger through shadow and canary steps to champion (staged policy)")
    commands = p.add_subparsers(dest="rollout_command", required=True)
    start = commands.add_parser("start", help="put a gated primary version and its siblings in shadow")
    start.add_argument("model_version", metavar="VERSION", help="version of the primary model")
    status = commands.add_parser("status", help="the active rollout, the last one and the last decisions")
    advance = commands.add_parser("advance", help="move the active rollout one stage on (the last step: champion)")
    abort = commands.add_parser("abort", help="stop the active rollout; the champion serves every key")
    for q in (start, status, advance, abort):
        q.add_argument("--json", action="store_true", help="machine-readable output")
    for q in (start, advance, abort):
        q.add_argument("--note", help="why")
        q.add_argument("--actor", help="who decides (default: your user name)")
    p.set_defaults(func=cmd_rollout)
