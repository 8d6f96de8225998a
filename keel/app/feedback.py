"""``keel feedback``: correct a label, or add one, from the command line or a CSV file.

    keel feedback add --key K --label 0|1 --reason TEXT [--actor A] [--id ID] [--json]
    keel feedback import FILE.csv [--actor A] [--json]
    keel feedback list [--key K] [--json]

Every record is validated before any is stored (``keel.data.feedback``), then appended to
the home's feedback log and fsynced before the command says it is recorded. Exit codes: 0
recorded (or already recorded under the same id), 2 refused, with the reason on stderr and
nothing stored.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys

from keel.core.config import current
from keel.core.settings import keel_home
from keel.core.warehouse import connect_for_reading
from keel.data.feedback import FeedbackRejected, counts, known_keys, read_csv, read_log, submit


def _known(paths, spec):
    def known(keys):
        if not paths.warehouse.exists():
            return set()
        with connect_for_reading(paths.warehouse) as con:
            return known_keys(con, spec, keys)
    return known


def _submit(args: argparse.Namespace, items: list[dict], source: str) -> int:
    deployment = current()
    spec = deployment.usecase.model
    command = f"keel feedback {args.feedback_command}"
    if spec is None or spec.corrections_relation is None:
        print(f"{command}: the use case {deployment.usecase.name} takes no label feedback", file=sys.stderr)
        return 2
    if not keel_home().is_dir():
        print(f"{command}: no Keel home at {keel_home()} (set KEEL_HOME, or run: keel run)", file=sys.stderr)
        return 2
    try:
        new, repeated = submit(deployment.paths.home, items, source, _known(deployment.paths, spec))
    except FeedbackRejected as exc:
        for where, why in exc.problems[:20]:
            print(f"{command}: {where}: {why}", file=sys.stderr)
        print(f"{command}: {len(exc.problems)} problem(s); nothing was recorded", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"recorded": [r.feedback_id for r in new],
                          "already_recorded": [r.feedback_id for r in repeated]}))
    else:
        for r in new:
            print(f"recorded {r.feedback_id}: {spec.key} {r.key} is {r.label} ({r.actor}: {r.reason})")
        for r in repeated:
            print(f"already recorded {r.feedback_id} at {r.received_at} UTC; nothing changed")
        if new:
            print("the next feature build (keel run, or the feedback sensor under keel dev) loads it")
    return 0


def cmd_feedback(args: argparse.Namespace) -> int:
    actor = args.actor or getpass.getuser()
    if args.feedback_command == "add":
        item = {"key": args.key, "label": args.label, "reason": args.reason, "actor": actor}
        if args.id:
            item["feedback_id"] = args.id
        return _submit(args, [item], "cli")
    if args.feedback_command == "import":
        try:
            items = read_csv(args.file, actor)
        except FeedbackRejected as exc:
            for where, why in exc.problems:
                print(f"keel feedback import: {where}: {why}", file=sys.stderr)
            return 2
        if not items:
            print(f"keel feedback import: {args.file} holds no rows", file=sys.stderr)
            return 2
        return _submit(args, items, "csv")
    records = [r for r in read_log(keel_home()) if args.key is None or r.key == args.key]
    if args.json:
        print(json.dumps({"feedback": [r.__dict__ for r in records], "per_day": counts(records)}))
        return 0
    for r in records:
        print(f"{r.received_at}  {r.feedback_id}  {r.key}  label {r.label}  {r.source}  {r.actor}: {r.reason}")
    print(f"{len(records)} feedback record(s)")
    return 0


def _label(text: str) -> int:
    if text not in ("0", "1"):
        raise argparse.ArgumentTypeError(f"label must be 0 or 1, got {text!r}")
    return int(text)


def add_parser(sub) -> None:
    p = sub.add_parser("feedback", help="correct a label or add one (by key), from the CLI or a CSV file")
    commands = p.add_subparsers(dest="feedback_command", required=True)
    add = commands.add_parser("add", help="record one label correction")
    add.add_argument("--key", required=True, help="the key whose label this is (the use case's ModelSpec.key)")
    add.add_argument("--label", required=True, type=_label, help="0 or 1")
    add.add_argument("--reason", required=True, help="why (at most 500 characters)")
    add.add_argument("--id", help="a feedback id of your choosing: resubmitting it records nothing new")
    imp = commands.add_parser("import", help="record every row of a CSV (key,label,reason[,actor,feedback_id])")
    imp.add_argument("file")
    listing = commands.add_parser("list", help="what has been recorded")
    listing.add_argument("--key")
    for q in (add, imp, listing):
        q.add_argument("--json", action="store_true", help="machine-readable output")
    for q in (add, imp):
        q.add_argument("--actor", help="who says so (default: your user name)")
    listing.set_defaults(actor=None)
    p.set_defaults(func=cmd_feedback)
